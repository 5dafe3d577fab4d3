// EnvironmentService over grpc-js (spec 3-7): limits on concurrent episodes, an idle timeout per
// episode, reply sizes; every error status carries its ErrorInfo reason (errors.ts).
import { randomUUID } from "node:crypto";
import type {
  sendUnaryData,
  ServerDuplexStream,
  ServerUnaryCall,
  ServerWritableStream,
  UntypedServiceImplementation,
} from "@grpc/grpc-js";
import {
  DescribeRequest,
  DescribeResponse,
  EpisodeRequest,
  EpisodeResponse,
  ListTasksRequest,
  ListTasksResponse,
  RunEpisodeRequest,
  RunEpisodeResponse,
  ScoreRequest,
  ScoreResponse,
  StartEpisode,
} from "./gen/rollmesh/v1/environment.js";
import type { Task } from "./gen/rollmesh/v1/messages.js";
import { ChatAgent } from "./agent.js";
import { Undecodable } from "./decoding.js";
import { asRewards, type Environment, weightedReward } from "./environment.js";
import { Episode } from "./episode.js";
import {
  deadlineExceeded,
  describeError,
  internal,
  invalidArgument,
  notFound,
  quoted,
  resourceExhausted,
  RpcError,
  toServiceError,
  unavailable,
  unimplemented,
} from "./errors.js";
import { pageOffset, pageToken } from "./page-token.js";
import { runEpisode } from "./run-episode.js";
import { Cancelled, EOF, StreamReader } from "./stream.js";
import { PROTOCOL_VERSION, VERSION } from "./version.js";

export { PROTOCOL_VERSION };
export const SDK_VERSION = `rollmesh-typescript ${VERSION}`;
export const LIST_BATCH = 64; // tasks per ListTasks message

export interface EpisodeLimits {
  maxConcurrentEpisodes: number;
  /** 0 = no idle timeout. */
  idleTimeoutS: number;
  maxMessageBytes: number;
  /** The longest one RunEpisode may take (0 = only the caller's deadline). */
  runTimeoutS: number;
  /** The longest one model call of a RunEpisode may take (0 = no limit of its own). */
  modelTimeoutS: number;
}

type In<T> = T | Undecodable;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyEnvironment = Environment<any>;

export class EnvironmentServiceImpl {
  readonly envs: Map<string, AnyEnvironment>;
  readonly instanceId = randomUUID().replaceAll("-", "").slice(0, 12);
  active = 0;
  draining = false;

  constructor(
    envs: AnyEnvironment[],
    readonly limits: EpisodeLimits,
  ) {
    this.envs = new Map(envs.map((e) => [e.name, e]));
    if (!envs.length || this.envs.size !== envs.length) {
      throw new Error(`need at least one environment, with unique names; got ${envs.map((e) => e.name)}`);
    }
  }

  /** The handlers, for server.addService(withLenientDecoding(EnvironmentServiceService), ...). */
  handlers(): UntypedServiceImplementation {
    return {
      describe: (call: ServerUnaryCall<In<DescribeRequest>, DescribeResponse>, cb: sendUnaryData<DescribeResponse>) =>
        unary(call.request, cb, "Describe", async () => this.describe()),
      listTasks: (call: ServerWritableStream<In<ListTasksRequest>, ListTasksResponse>) => this.listTasks(call),
      episode: (call: ServerDuplexStream<In<EpisodeRequest>, EpisodeResponse>) => void this.episode(call),
      score: (call: ServerUnaryCall<In<ScoreRequest>, ScoreResponse>, cb: sendUnaryData<ScoreResponse>) =>
        unary(call.request, cb, "Score", (request) => this.score(request)),
      runEpisode: (
        call: ServerUnaryCall<In<RunEpisodeRequest>, RunEpisodeResponse>,
        cb: sendUnaryData<RunEpisodeResponse>,
      ) => unary(call.request, cb, "RunEpisode", (request) => this.runEpisode(request, call)),
    };
  }

  private env(name: string): AnyEnvironment {
    const environments = [...this.envs.keys()].sort().join(",");
    if (!name)
      throw invalidArgument("NO_ENVIRONMENT", `no environment named; this server hosts ${environments}`, {
        environments,
      });
    const env = this.envs.get(name);
    if (!env) {
      throw notFound("UNKNOWN_ENVIRONMENT", `no environment ${quoted(name)} on this server; it hosts ${environments}`, {
        environments,
      });
    }
    return env;
  }

  describe(): DescribeResponse {
    return {
      server: {
        protocolVersion: PROTOCOL_VERSION,
        language: "typescript",
        sdkVersion: SDK_VERSION,
        instanceId: this.instanceId,
      },
      environments: [...this.envs.values()].map((e) => e.info()),
      limits: {
        maxConcurrentEpisodes: this.limits.maxConcurrentEpisodes,
        maxMessageBytes: this.limits.maxMessageBytes,
        episodeIdleTimeoutS: this.limits.idleTimeoutS,
      },
      activeEpisodes: this.active,
    };
  }

  private listTasks(call: ServerWritableStream<In<ListTasksRequest>, ListTasksResponse>): void {
    try {
      const request = decoded(call.request, "ListTasksRequest");
      const env = this.env(request.env);
      const split = request.split || env.defaultSplit;
      const tasks = env.tasks(split);
      if (request.pageSize < 0) {
        throw invalidArgument("INVALID_PAGE_SIZE", `page_size must be >= 0, got ${request.pageSize}`, {
          field: "page_size",
        });
      }
      const total = tasks.length;
      const start = pageOffset(request.pageToken, env.name, split, total);
      const end = request.pageSize === 0 ? total : Math.min(total, start + request.pageSize);
      if (start === end) call.write({ tasks: [], nextPageToken: "", total });
      for (let i = start; i < end; i += LIST_BATCH) {
        const j = Math.min(i + LIST_BATCH, end);
        const nextPageToken = j === end && end < total ? pageToken(env.name, split, end) : "";
        const response = { tasks: tasks.slice(i, j).map((t) => ({ ...t, env: env.name })), nextPageToken, total };
        this.checkSize(ListTasksResponse.encode(response).finish().length);
        call.write(response);
      }
      call.end();
    } catch (e) {
      call.emit("error", statusOf(e, "ListTasks"));
    }
  }

  private async score(request: ScoreRequest): Promise<ScoreResponse> {
    const env = this.env(request.env);
    const score = env.spec.score;
    if (!score) {
      throw unimplemented("NOT_SUPPORTED", `environment "${env.name}" does not implement Score (has_score is false)`);
    }
    const task = this.taskForScore(env, request.task);
    let rewards: Record<string, number>;
    try {
      rewards = asRewards(await score({ task, messages: request.messages, state: request.state ?? {} }));
    } catch (e) {
      if (e instanceof RpcError) throw e;
      console.error(`environment "${env.name}" failed in score():`, e);
      throw internal("ENVIRONMENT_FAILED", `environment "${env.name}" failed in score(): ${String(e)}`);
    }
    return { rewards, reward: weightedReward(rewards, env.spec.rewardWeights), metrics: {} };
  }

  private taskForScore(env: AnyEnvironment, task: Task | undefined): Task {
    if (task && (task.prompt.length || task.answer)) {
      return { ...task, env: env.name, split: task.split || env.defaultSplit };
    }
    if (task?.taskId) return env.getTask(task.taskId, task.split);
    throw invalidArgument("NO_TASK", "Score needs the task (inline, or its task_id and split)");
  }

  /**
   * The environment's harness plays the whole episode (spec 7). It counts as an episode against
   * the limit until the harness returns. A cancelled call, a passed deadline or the run timeout
   * aborts agent.signal and the model call in flight; each model call waits at most modelTimeoutS.
   */
  private async runEpisode(
    request: RunEpisodeRequest,
    call: ServerUnaryCall<unknown, unknown>,
  ): Promise<RunEpisodeResponse> {
    if (this.draining) throw unavailable("DRAINING", "server is shutting down; run the episode on another replica");
    const start = request.start ?? StartEpisode.fromPartial({});
    const env = this.env(start.env);
    if (!env.hasRunEpisode) {
      throw unimplemented(
        "NOT_SUPPORTED",
        `environment "${env.name}" does not run episodes itself (has_run_episode is false); drive them with the Episode stream`,
      );
    }
    const openaiBaseUrl = checkBaseUrl(request.openaiBaseUrl);
    if (!request.sessionKey) {
      const message = "RunEpisode needs session_key, the bearer token of the episode's model calls";
      throw invalidArgument("MISSING_FIELD", message, { field: "session_key" });
    }
    const task = this.taskOf(env, start);
    this.checkRoom();
    this.active += 1;
    const abort = new AbortController();
    const cancel = () => abort.abort();
    call.on("cancelled", cancel);
    if (call.cancelled) cancel();
    const { runTimeoutS } = this.limits;
    let timedOut = false;
    const timer =
      runTimeoutS > 0
        ? setTimeout(() => {
            timedOut = true;
            cancel();
          }, runTimeoutS * 1000)
        : undefined;
    const episodeId = start.episodeId || randomUUID().replaceAll("-", "");
    const agent = new ChatAgent({
      openaiBaseUrl,
      apiKey: request.sessionKey,
      model: request.model,
      maxCalls: env.maxTurns,
      signal: abort.signal,
      timeoutS: this.limits.modelTimeoutS,
      maxReplyBytes: this.limits.maxMessageBytes,
    });
    try {
      const trajectory = await runEpisode(env, task, agent, {
        episodeId,
        seed: start.seed,
        options: start.options ?? {},
      });
      if (abort.signal.aborted) throw new Cancelled();
      const response = { trajectory: { ...trajectory, trajectoryId: episodeId } };
      this.checkSize(RunEpisodeResponse.encode(response).finish().length);
      return response;
    } catch (e) {
      if (timedOut) {
        const message = `environment "${env.name}" did not finish the episode within ${runTimeoutS} s`;
        throw deadlineExceeded("TIMEOUT", message, { timeout_s: String(runTimeoutS) });
      }
      if (e instanceof RpcError || e instanceof Cancelled) throw e;
      console.error(`environment "${env.name}" failed in runEpisode():`, e);
      throw internal("ENVIRONMENT_FAILED", `environment "${env.name}" failed in runEpisode(): ${describeError(e)}`);
    } finally {
      clearTimeout(timer);
      call.removeListener("cancelled", cancel);
      this.active -= 1;
    }
  }

  private checkRoom(): void {
    const limit = this.limits.maxConcurrentEpisodes;
    if (this.active >= limit) {
      throw resourceExhausted(
        "EPISODE_LIMIT",
        `server at its limit of ${limit} concurrent episodes; retry later or use another replica`,
        { limit: String(limit) },
      );
    }
  }

  private async episode(call: ServerDuplexStream<In<EpisodeRequest>, EpisodeResponse>): Promise<void> {
    const reader = new StreamReader<In<EpisodeRequest>>(call);
    let episode: Episode | undefined;
    let counted = false;
    const release = () => {
      if (counted) this.active -= 1;
      counted = false;
    };
    call.on("cancelled", release); // a dropped stream frees its slot at once
    try {
      const first = await this.read(reader);
      if (first === EOF) return void call.end(); // closed without starting: nothing to do
      if (this.draining) {
        throw unavailable("DRAINING", "server is shutting down; start the episode on another replica");
      }
      this.checkRoom();
      this.active += 1;
      counted = true;
      episode = this.newEpisode(first);
      const messages = await episode.start();
      const task = { ...episode.task, env: episode.env.name };
      const started = {
        episodeId: episode.episodeId,
        task,
        messages,
        tools: episode.env.info().tools,
        maxTurns: episode.env.maxTurns,
      };
      this.write(call, reader, { kind: { $case: "started", value: started } });
      for (;;) {
        const request = await this.read(reader);
        if (request === EOF) break;
        if (request.kind?.$case !== "action") {
          throw invalidArgument("ALREADY_STARTED", "the episode has started; send actions, not another start");
        }
        const message = request.kind.value.message;
        if (!message) throw invalidArgument("EMPTY_ACTION", "an action needs a message");
        const step = await episode.step(message);
        this.write(call, reader, { kind: { $case: "step", value: step } });
      }
      call.end();
    } catch (e) {
      if (!(e instanceof Cancelled) && !reader.isCancelled) {
        call.emit("error", statusOf(e, episode ? `environment "${episode.env.name}"` : "episode start"));
      }
    } finally {
      release();
      await episode
        ?.close()
        .catch((e: unknown) => console.error(`cleanup failed for episode ${episode?.episodeId}:`, e));
    }
  }

  /** The next request (idle timeout included: before start, between actions, after done). */
  private async read(reader: StreamReader<In<EpisodeRequest>>): Promise<EpisodeRequest | typeof EOF> {
    const request = await reader.read(this.limits.idleTimeoutS);
    if (request instanceof Undecodable) {
      throw invalidArgument("MALFORMED_REQUEST", "the message is not a valid rollmesh.v1.EpisodeRequest");
    }
    return request;
  }

  private write(
    call: ServerDuplexStream<unknown, EpisodeResponse>,
    reader: { readonly isCancelled: boolean },
    response: EpisodeResponse,
  ): void {
    if (reader.isCancelled) throw new Cancelled();
    this.checkSize(EpisodeResponse.encode(response).finish().length);
    call.write(response);
  }

  /** gRPC would refuse an oversized reply with an opaque error; name the cause instead. */
  private checkSize(size: number): void {
    const limit = this.limits.maxMessageBytes;
    if (size > limit) {
      throw resourceExhausted(
        "MESSAGE_TOO_LARGE",
        `the server's reply is ${size} bytes, over the ${limit}-byte message limit`,
        { limit_bytes: String(limit) },
      );
    }
  }

  private newEpisode(request: EpisodeRequest): Episode {
    if (request.kind?.$case !== "start") {
      throw invalidArgument("NOT_STARTED", "the first message of an episode must be `start`");
    }
    const start = request.kind.value;
    const env = this.env(start.env);
    const task = this.taskOf(env, start);
    return new Episode(env, task, { seed: start.seed, options: start.options ?? {}, episodeId: start.episodeId });
  }

  private taskOf(env: AnyEnvironment, start: StartEpisode): Task {
    if (start.task) {
      // an inline task takes precedence: task_id and split are ignored
      if (!start.task.prompt.length) throw invalidArgument("INVALID_TASK", "an inline task needs a prompt");
      return { ...start.task, env: env.name, split: start.task.split || env.defaultSplit };
    }
    if (start.taskId) return { ...env.getTask(start.taskId, start.split), env: env.name };
    throw invalidArgument("NO_TASK", "start needs a task_id (see ListTasks) or an inline task");
  }
}

/** The caller's OpenAI-compatible base URL: present, and an http(s) URL. */
function checkBaseUrl(value: string): string {
  if (!value) {
    throw invalidArgument(
      "MISSING_FIELD",
      "RunEpisode needs openai_base_url, the caller's OpenAI-compatible endpoint (this server does not call inference_address)",
      { field: "openai_base_url" },
    );
  }
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || !["http:", "https:"].includes(url.protocol)) {
    throw invalidArgument("INVALID_FIELD", `openai_base_url ${quoted(value)} is not an http(s) URL`, {
      field: "openai_base_url",
    });
  }
  return value;
}

function decoded<T>(request: In<T>, type: string): T {
  if (request instanceof Undecodable) {
    throw invalidArgument("MALFORMED_REQUEST", `the message is not a valid rollmesh.v1.${type}`);
  }
  return request;
}

/** The status for an error; INTERNAL ones (the environment's code raised) are logged with their stack. */
function statusOf(error: unknown, where: string): ReturnType<typeof toServiceError> {
  if (!(error instanceof RpcError || error instanceof Cancelled)) console.error(`${where} failed:`, error);
  return toServiceError(error, where);
}

function unary<Req, Res>(request: In<Req>, cb: sendUnaryData<Res>, method: string, fn: (r: Req) => Promise<Res>): void {
  Promise.resolve()
    .then(() => fn(decoded(request, `${method}Request`)))
    .then(
      (response) => cb(null, response),
      (e: unknown) => cb(statusOf(e, method)),
    );
}
