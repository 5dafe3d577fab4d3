// One episode from the client's side (spec 3): start, then one step per action, then close.
import { type ClientDuplexStream, status, type StatusObject } from "@grpc/grpc-js";
import type { EpisodeRequest, EpisodeResponse, EpisodeStarted } from "../gen/rollmesh/v1/environment.js";
import type { Message, Task, ToolSpec } from "../gen/rollmesh/v1/messages.js";
import { RollmeshError, toRollmeshError } from "./errors.js";
import { type ActionInit, type StepResult, toAction, toStepResult, toTask } from "./types.js";

type Outcome = EpisodeResponse | Error;

/** The responses of one Episode stream, awaited one at a time. */
class Responses {
  private readonly queue: EpisodeResponse[] = [];
  private waiter: ((r: Outcome) => void) | undefined;
  /** How the stream ended: undefined while open, "ok", or the error. */
  ended: "ok" | Error | undefined;

  constructor(call: ClientDuplexStream<EpisodeRequest, EpisodeResponse>) {
    call.on("data", (r: EpisodeResponse) => this.deliver(r));
    call.on("error", () => undefined); // the status event says how the call ended
    call.on("status", (s: StatusObject) => {
      this.ended = s.code === status.OK ? "ok" : (toRollmeshError(s) as Error);
      this.wake();
    });
  }

  private deliver(r: EpisodeResponse): void {
    this.queue.push(r);
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    const next = this.queue.shift() ?? (this.ended === "ok" ? endedEarly() : this.ended);
    if (next === undefined) return;
    this.waiter = undefined;
    waiter(next);
  }

  /** The next response, the error the stream ended with, or a timeout error. */
  next(timeoutS: number, what: string): Promise<EpisodeResponse> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(
          new RollmeshError(status.DEADLINE_EXCEEDED, `no ${what} from the environment server within ${timeoutS} s`),
        );
      }, timeoutS * 1000);
      this.waiter = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      this.wake();
    });
  }
}

function endedEarly(): Error {
  return new RollmeshError(status.UNAVAILABLE, "the environment server ended the episode stream without a reply");
}

export class EpisodeSession {
  readonly episodeId: string;
  /** The task being played, as the environment holds it (it may include the answer: do not show it to the policy). */
  readonly task: Task;
  /** What the policy sees first: the full prompt, system prompt included. */
  readonly prompt: Message[];
  readonly tools: ToolSpec[];
  readonly maxTurns: number;
  /** The whole conversation so far: prompt, actions and the environment's messages. */
  readonly messages: Message[];
  readonly steps: StepResult[] = [];

  private constructor(
    private readonly call: ClientDuplexStream<EpisodeRequest, EpisodeResponse>,
    private readonly responses: Responses,
    private readonly stepTimeoutS: number,
    started: EpisodeStarted,
  ) {
    this.episodeId = started.episodeId;
    this.task = toTask(started.task);
    this.prompt = started.messages;
    this.tools = started.tools;
    this.maxTurns = started.maxTurns;
    this.messages = [...started.messages];
  }

  /** Sends `start` and waits for `started`; the stream is cancelled if that fails. */
  static async start(
    call: ClientDuplexStream<EpisodeRequest, EpisodeResponse>,
    start: EpisodeRequest,
    stepTimeoutS: number,
  ): Promise<EpisodeSession> {
    const responses = new Responses(call);
    try {
      call.write(start);
      const r = await responses.next(stepTimeoutS, "`started`");
      if (r.kind?.$case !== "started") throw unexpected("started", r);
      return new EpisodeSession(call, responses, stepTimeoutS, r.kind.value);
    } catch (e) {
      call.cancel();
      throw e;
    }
  }

  get done(): boolean {
    return this.steps.at(-1)?.done ?? false;
  }

  /** Number of actions answered so far. */
  get turn(): number {
    return this.steps.length;
  }

  /** The last step (undefined before the first action). */
  get last(): StepResult | undefined {
    return this.steps.at(-1);
  }

  /** Sends one assistant action (text or a message with tool calls) and returns the environment's step. */
  async act(action: ActionInit, opts: { timeoutS?: number } = {}): Promise<StepResult> {
    if (this.responses.ended) throw this.responses.ended === "ok" ? endedEarly() : this.responses.ended;
    const message = toAction(action);
    this.call.write({ kind: { $case: "action", value: { message } } });
    const r = await this.responses.next(opts.timeoutS ?? this.stepTimeoutS, "step");
    if (r.kind?.$case !== "step") throw unexpected("step", r);
    const step = toStepResult(r.kind.value);
    this.messages.push(message, ...step.messages);
    this.steps.push(step);
    return step;
  }

  /**
   * Half-closes the stream and waits for the server to end it (OK). Before the final step this
   * ends the episode early; an episode that already failed rejects with its error.
   */
  async close(opts: { timeoutS?: number } = {}): Promise<void> {
    if (!this.responses.ended) this.call.end();
    const timeoutS = opts.timeoutS ?? this.stepTimeoutS;
    try {
      const r = await this.responses.next(timeoutS, "end of stream");
      throw unexpected("the end of the stream", r);
    } catch (e) {
      if (this.responses.ended !== "ok") throw e;
    }
  }

  /** Drops the episode at once (the server frees it; no error is reported here). */
  cancel(): void {
    this.call.cancel();
  }
}

function unexpected(expected: string, r: EpisodeResponse): RollmeshError {
  return new RollmeshError(
    status.INTERNAL,
    `expected ${expected} from the environment server, got ${r.kind?.$case ?? "an empty reply"}`,
  );
}
