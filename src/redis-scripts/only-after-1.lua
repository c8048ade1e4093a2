--[[
  only-after: celery-heimdall's only_after. True at most once per interval for a key, across
  every worker, on the Redis clock: the first caller takes the key for `intervalMs`, and every
  caller until it lapses is told no. The key names who took it (a task id), for inspection.

  KEYS[1] the key           <prefix>:{<queue>}:after:<key>

  ARGV[1] the calling task's id
  ARGV[2] the interval in ms (a whole number >= 1)

  Returns 1 (go ahead: the interval starts now) or 0 (taken within the interval).
]]
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
