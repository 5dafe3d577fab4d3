// Pull-style reads from a gRPC server stream, with an idle timeout (like Python's context.read()).
import type { EventEmitter } from "node:events";
import { deadlineExceeded } from "./errors.js";

export const EOF: unique symbol = Symbol("EOF");

/** The client cancelled the call (or its deadline passed): nothing can be sent any more. */
export class Cancelled extends Error {
  constructor() {
    super("the call was cancelled");
  }
}

interface Waiter<T> {
  resolve: (value: T | typeof EOF) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export class StreamReader<T> {
  private readonly queue: T[] = [];
  private ended = false;
  private cancelled = false;
  private waiter: Waiter<T> | undefined;

  constructor(stream: EventEmitter) {
    stream.on("data", (item: T) => {
      this.queue.push(item);
      this.wake();
    });
    stream.on("end", () => {
      this.ended = true;
      this.wake();
    });
    stream.on("cancelled", () => {
      this.cancelled = true;
      this.wake();
    });
  }

  get isCancelled(): boolean {
    return this.cancelled;
  }

  /** The next message, EOF after the client half-closed; IDLE_TIMEOUT after idleS quiet seconds (0 = never). */
  read(idleS: number): Promise<T | typeof EOF> {
    if (this.waiter) return Promise.reject(new Error("one read at a time"));
    return new Promise((resolve, reject) => {
      const timeout = () => {
        this.waiter = undefined;
        const seconds = String(idleS);
        reject(
          deadlineExceeded("IDLE_TIMEOUT", `no message from the client for ${seconds} s; episode closed`, {
            idle_timeout_s: seconds,
          }),
        );
      };
      const timer = idleS > 0 ? setTimeout(timeout, idleS * 1000) : undefined;
      this.waiter = { resolve, reject, timer };
      this.wake();
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    let settle: () => void;
    if (this.cancelled) settle = () => waiter.reject(new Cancelled());
    else if (this.queue.length) {
      const item = this.queue.shift() as T;
      settle = () => waiter.resolve(item);
    } else if (this.ended) settle = () => waiter.resolve(EOF);
    else return;
    clearTimeout(waiter.timer);
    this.waiter = undefined;
    settle();
  }
}
