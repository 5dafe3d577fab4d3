// The scores of production traces (spec 11): rollmesh.v1.MonitorScore on "rollmesh.scores.<app>",
// read through a JetStream ordered consumer on the SCORES stream filtered to one app.
import { type ConsumerMessages, DeliverPolicy, type NatsConnection } from "nats";
import { MonitorScore } from "./gen/rollmesh/v1/bus.js";
import { requireStream, SCORES_STREAM, scoresSubject } from "./streams.js";

export interface ReadScoresOptions {
  /** "new" (default): scores published from now on; "all": also those the stream still holds. */
  deliver?: "new" | "all";
  /** Create the SCORES stream when no stream stores the subject (default: fail with how to create it). */
  createStream?: boolean;
}

/** Decoded MonitorScores as an async iterator; `next(timeoutMs)` to wait a bounded time; close() when done. */
export class ScoreReader implements AsyncIterable<MonitorScore> {
  private pending: Promise<IteratorResult<{ data: Uint8Array }>> | undefined;
  private readonly iterator: AsyncIterator<{ data: Uint8Array }>;

  constructor(
    readonly subject: string,
    readonly stream: string,
    private readonly messages: ConsumerMessages,
  ) {
    this.iterator = messages[Symbol.asyncIterator]();
  }

  /** The next score; rejects after `timeoutMs` without one (the wait can be resumed with another next()). */
  async next(timeoutMs?: number): Promise<MonitorScore> {
    this.pending ??= this.iterator.next();
    const pending = this.pending;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => reject(new Error(`no score on ${this.subject} within ${timeoutMs} ms`)), timeoutMs);
      }
    });
    try {
      const result = await Promise.race([pending, timeout]);
      this.pending = undefined;
      if (result.done) throw new Error(`the score reader of ${this.subject} is closed`);
      return MonitorScore.decode(result.value.data);
    } finally {
      clearTimeout(timer);
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<MonitorScore> {
    for (;;) {
      this.pending ??= this.iterator.next();
      const result = await this.pending;
      this.pending = undefined;
      if (result.done) return;
      yield MonitorScore.decode(result.value.data);
    }
  }

  /** Stops the consumer (it is deleted on the server). */
  async close(): Promise<void> {
    await this.messages.close();
  }
}

/**
 * Reads the scores of `app`. The consumer exists when this resolves, so with deliver "new" every
 * score published afterwards is seen. Throws when no stream stores rollmesh.scores.<app> (unless
 * `createStream`: then SCORES is created with the spec's config).
 */
export async function readScores(nc: NatsConnection, app: string, opts: ReadScoresOptions = {}): Promise<ScoreReader> {
  const deliver = opts.deliver ?? "new";
  if (deliver !== "new" && deliver !== "all") throw new Error(`deliver must be "new" or "all", got "${deliver}"`);
  const subject = scoresSubject(app);
  const stream = await requireStream(nc, subject, SCORES_STREAM, opts.createStream ?? false);
  // An ordered consumer starts at stream sequence 1 (= deliver all) unless told "new"; nats.js
  // rejects DeliverPolicy.All together with the start sequence it always sets.
  const consumer = await nc.jetstream().consumers.get(stream, {
    filterSubjects: subject,
    ...(deliver === "new" ? { deliver_policy: DeliverPolicy.New } : {}),
  });
  return new ScoreReader(subject, stream, await consumer.consume());
}
