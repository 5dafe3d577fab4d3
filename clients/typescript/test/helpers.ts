// Test helpers: a server on loopback and a promise-based Episode stream over the generated client.
import { credentials, status, type ClientDuplexStream, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import {
  type DescribeResponse,
  EnvironmentServiceClient,
  type EpisodeRequest,
  type RunEpisodeRequest,
  type RunEpisodeResponse,
  type ScoreRequest,
  type ScoreResponse,
  type EpisodeResponse,
  type Step,
} from "../src/gen/rollmesh/v1/environment.js";
import { Message } from "../src/gen/rollmesh/v1/messages.js";

export function client(address: string): EnvironmentServiceClient {
  return new EnvironmentServiceClient(address, credentials.createInsecure());
}

function unary<Res>(start: (cb: (err: ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => start((err, res) => (err ? reject(err) : resolve(res))));
}

export const describeServer = (c: EnvironmentServiceClient) => unary<DescribeResponse>((cb) => c.describe({}, cb));
export const score = (c: EnvironmentServiceClient, req: ScoreRequest) => unary<ScoreResponse>((cb) => c.score(req, cb));
export const runEpisode = (c: EnvironmentServiceClient, req: RunEpisodeRequest) =>
  unary<RunEpisodeResponse>((cb) => c.runEpisode(req, cb));

export function collect<T>(stream: NodeJS.ReadableStream): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const items: T[] = [];
    stream.on("data", (item: T) => items.push(item));
    stream.on("error", reject);
    stream.on("end", () => resolve(items));
  });
}

/** One Episode call: send requests, await each response, or the status the call ended with. */
export class EpisodeStream {
  private readonly responses: EpisodeResponse[] = [];
  private waiting: ((r: EpisodeResponse | Error | "end") => void) | undefined;
  private finished: EpisodeResponse | Error | "end" | undefined;
  readonly call: ClientDuplexStream<EpisodeRequest, EpisodeResponse>;

  constructor(c: EnvironmentServiceClient, deadlineS = 10) {
    this.call = c.episode({ deadline: Date.now() + deadlineS * 1000 });
    this.call.on("data", (r: EpisodeResponse) => this.push(r));
    this.call.on("error", () => undefined); // the status event below says how the call ended
    this.call.on("status", (s: StatusObject) =>
      this.finish(
        s.code === status.OK ? "end" : Object.assign(new Error(s.details), { code: s.code, details: s.details }),
      ),
    );
  }

  private push(r: EpisodeResponse): void {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w(r);
    } else this.responses.push(r);
  }

  private finish(how: Error | "end"): void {
    this.finished ??= how;
    const w = this.waiting;
    this.waiting = undefined;
    w?.(how);
  }

  /** The next response; rejects with the call's error, or "end" when it ended with OK. */
  next(): Promise<EpisodeResponse> {
    const ready = this.responses.shift() ?? this.finished;
    const settle = (r: EpisodeResponse | Error | "end", ok: (v: EpisodeResponse) => void, ko: (e: unknown) => void) =>
      r instanceof Error || r === "end" ? ko(r) : ok(r);
    return new Promise((ok, ko) => (ready ? settle(ready, ok, ko) : (this.waiting = (r) => settle(r, ok, ko))));
  }

  start(env: string, taskId: string): Promise<EpisodeResponse> {
    this.call.write({
      kind: {
        $case: "start",
        value: { env, taskId, split: "", task: undefined, seed: 0, episodeId: "", options: undefined },
      },
    });
    return this.next();
  }

  async act(content: string): Promise<Step> {
    this.call.write({
      kind: { $case: "action", value: { message: Message.fromPartial({ role: "assistant", content }) } },
    });
    const r = await this.next();
    if (r.kind?.$case !== "step") throw new Error(`expected a step, got ${r.kind?.$case}`);
    return r.kind.value;
  }

  /** Half-closes and resolves with the final status code (0 = OK). */
  async close(): Promise<number> {
    this.call.end();
    try {
      await this.next();
      throw new Error("a response after half-close");
    } catch (e) {
      return e === "end" ? 0 : (e as ServiceError).code;
    }
  }
}

/** The gRPC status code a promise rejects with. */
export async function codeOf(p: Promise<unknown>): Promise<number | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return (e as ServiceError).code;
  }
}
