import type { RedisClient } from '../protocol/connection.js';

/** A subscription to one task's done channel. */
export interface Watch {
  /** Resolves when the channel fires or after `ms`, whichever comes first. */
  next(ms: number): Promise<void>;
  close(): void;
}

/**
 * One subscriber connection shared by every `get()` of a dispatcher. Workers announce the end
 * of a task on its own channel, so a waiter wakes at once instead of polling; the caller
 * still re-reads the state now and then in case a message was lost in a reconnect.
 * Every channel is sharded Pub/Sub (SSUBSCRIBE): on a Cluster the messages stay on the shard of
 * the queue whose hash tag the channel carries (docs/decisions.md).
 */
export class ResultWaiter {
  private readonly listeners = new Map<string, Set<(message: string) => void>>();
  /** The SUBSCRIBE in flight (or done) for each watched channel, so a second watcher awaits it too. */
  private readonly subscribed = new Map<string, Promise<unknown>>();
  /** Resolves when the subscriber connection's handshake in progress ends. */
  private handshake: Promise<void> | undefined;

  constructor(private readonly subscriber: RedisClient) {
    subscriber.on('smessage', (channel: string, message: string) => {
      for (const fire of this.listeners.get(channel) ?? []) fire(message);
    });
  }

  /**
   * ioredis writes SSUBSCRIBE (which Redis allows while loading) on a connection still in its
   * handshake, before its ready check; the reply switches the connection to subscriber mode,
   * the ready check's INFO then fails, and ioredis rejects the pending commands and reconnects.
   * So wait for the handshake to end. In other states commands wait in the offline queue,
   * which is flushed only once the connection is ready.
   */
  private handshakeDone(): Promise<void> {
    const sub = this.subscriber;
    if (sub.status !== 'connect') return Promise.resolve();
    this.handshake ??= new Promise<void>((resolve) => {
      const done = (): void => {
        sub.off('ready', done);
        sub.off('close', done);
        this.handshake = undefined;
        resolve();
      };
      sub.on('ready', done);
      sub.on('close', done);
    });
    return this.handshake;
  }

  /**
   * Calls `onMessage` with each message on `channel` until the returned function is called.
   * Resolves once subscribed, so a reply published after it is not missed.
   */
  async listen(channel: string, onMessage: (message: string) => void): Promise<() => void> {
    let set = this.listeners.get(channel);
    if (!set) {
      set = new Set();
      this.listeners.set(channel, set);
    }
    set.add(onMessage);
    let subscribing = this.subscribed.get(channel);
    if (!subscribing) {
      subscribing = this.handshakeDone().then(() => this.subscriber.ssubscribe(channel));
      this.subscribed.set(channel, subscribing);
    }
    try {
      await subscribing;
    } catch (err) {
      set.delete(onMessage);
      if (this.subscribed.get(channel) === subscribing) this.subscribed.delete(channel);
      throw err;
    }
    return () => {
      const current = this.listeners.get(channel);
      if (!current) return;
      current.delete(onMessage);
      if (current.size === 0) {
        this.listeners.delete(channel);
        this.subscribed.delete(channel);
        if (this.subscriber.status === 'ready') this.subscriber.sunsubscribe(channel).catch(() => undefined);
      }
    };
  }

  async watch(channel: string): Promise<Watch> {
    let fired = false;
    let wake: (() => void) | undefined;
    const stop = await this.listen(channel, () => {
      fired = true;
      wake?.();
    });
    return {
      next: (ms) =>
        new Promise<void>((resolve) => {
          if (fired) {
            fired = false;
            resolve();
            return;
          }
          const timer = setTimeout(done, ms);
          function done(): void {
            clearTimeout(timer);
            fired = false;
            wake = undefined;
            resolve();
          }
          wake = done;
        }),
      close: stop,
    };
  }
}
