/** A Redis for tests and the demo; see redis-launcher.mjs. */
export interface LaunchedRedis {
  url: string;
  started: boolean;
  port?: number;
  dir?: string;
  bin?: string;
  stop(): Promise<void>;
}
export function startRedis(options?: { log?: (message: string) => void; args?: string[] }): Promise<LaunchedRedis>;
/** A free loopback port: the OS picks it, and it is free again once this resolves. */
export function freePort(): Promise<number>;
/** The redis-server to run, found (PATH or the usual places) or installed with apt-get as root on Debian; throws with advice otherwise. */
export function redisServerBin(options?: { log?: (message: string) => void }): string;
