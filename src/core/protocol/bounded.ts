import { fromRedis, TimeoutError } from '../errors.js';

/**
 * `work`, or a TimeoutError after `ms` (`late`, or a message naming `what`); its own errors in
 * heimdall's terms (fromRedis). For calls to Redis that must not outlast a deadline (the testing kit's hooks, a metrics scrape).
 */
export async function bounded<T>(work: Promise<T>, ms: number, what: string, late = `${what}: Redis did not answer within ${ms} ms (is it running?)`): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(late)), ms);
  });
  work.catch(() => undefined);
  try {
    return await Promise.race([work.catch((err: unknown) => Promise.reject(fromRedis(err, what))), expired]);
  } finally {
    clearTimeout(timer);
  }
}
