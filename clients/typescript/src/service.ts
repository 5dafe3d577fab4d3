// EnvironmentService over grpc-js with the Python reference server's semantics: limits on
// concurrent episodes, an idle timeout per episode, reply sizes; statuses with actionable messages.
import { randomUUID } from "node:crypto";
import {
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  status,
  type UntypedServiceImplementation,
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
} from "./gen/rollmesh/v1/environment.js";
import type { Task } from "./gen/rollmesh/v1/messages.js";
import { Undecodable } from "./decoding.js";
import { asRewards, type Environment, weightedReward } from "./environment.js";
import { Episode } from "./episode.js";
import {
  invalidArgument,
  notFound,
  quoted,
  resourceExhausted,
  RpcError,
  toStatus,
  unavailable,
  unimplemented,
} from "./errors.js";
import { Cancelled, EOF, StreamReader } from "./stream.js";

export const PROTOCOL_VERSION = "v1";
export const SDK_VERSION = "rollmesh-typescript 0.1.0";
export const LIST_BATCH = 64; // tasks per ListTasks message

export interface EpisodeLimits {
  maxConcurrentEpisodes: number;
  idleTimeoutS: number;
  maxMessageBytes: number;
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
      ) =>
        unary(call.request, cb, "RunEpisode", async () => {
          throw unimplemented(
            "this TypeScript server does not drive episodes itself; drive them with the Episode stream",
          );
        }),
    };
  }

  private env(name: string): AnyEnvironment {
    const hosted = [...this.envs.keys()].sort().join(", ");
    if (!name) throw invalidArgument(`no environment named; this server hosts ${hosted}`);
    const env = this.envs.get(name);
    if (!env) throw notFound(`no environment ${quoted(name)} on this server; it hosts ${hosted}`);
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
      const tasks = env.tasks(request.split);
      if (request.pageSize < 0) throw invalidArgument(`page_size must be >= 0, got ${request.pageSize}`);
      const start = request.pageToken ? Number(request.pageToken) : 0;
      if (!/^\d*$/.test(request.pageToken) || start > tasks.length) {
        throw invalidArgument(`invalid page_token ${quoted(request.pageToken)}; pass a previous next_page_token`);
      }
      const end = request.pageSize === 0 ? tasks.length : Math.min(tasks.length, start + request.pageSize);
      const total = tasks.length;
      if (start === end) call.write({ tasks: [], nextPageToken: "", total });
      for (let i = start; i < end; i += LIST_BATCH) {
        const j = Math.min(i + LIST_BATCH, end);
        const nextPageToken = j === end && end < total ? String(end) : "";
        call.write({ tasks: tasks.slice(i, j).map((t) => ({ ...t, env: env.name })), nextPageToken, total });
      }
      call.end();
    } catch (e) {
      call.emit("error", statusOf(e, "ListTasks"));
    }
  }

  private async score(request: ScoreRequest): Promise<ScoreResponse> {
    const env = this.env(request.env);
    const score = env.spec.score;
    if (!score) throw unimplemented(`environment "${env.name}" does not implement Score`);
    const task = this.taskForScore(env, request.task);
    let rewards: Record<string, number>;
    try {
      rewards = asRewards(await score({ task, messages: request.messages, state: request.state ?? {} }));
    } catch (e) {
      if (e instanceof RpcError) throw e;
      console.error(`environment "${env.name}" failed in score():`, e);
      throw new RpcError(status.INTERNAL, `environment "${env.name}" failed in score(): ${toStatus(e, "").details}`);
    }
    return { rewards, reward: weightedReward(rewards, env.spec.rewardWeights), metrics: {} };
  }

  private taskForScore(env: AnyEnvironment, task: Task | undefined): Task {
    if (task && (task.prompt.length || task.answer)) return { ...task, env: env.name, split: task.split || "train" };
    if (task?.taskId) return env.getTask(task.taskId, task.split);
    throw invalidArgument("Score needs the task (inline, or its task_id and split)");
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
      if (this.draining) throw unavailable("server is shutting down; start the episode on another replica");
      if (this.active >= this.limits.maxConcurrentEpisodes) {
        throw resourceExhausted(
          `server at its limit of ${this.limits.maxConcurrentEpisodes} concurrent episodes; retry later or use another replica`,
        );
      }
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
          throw invalidArgument("the episode has started; send actions, not another start");
        }
        if (!request.kind.value.message) throw invalidArgument("an action needs a message");
        const step = await episode.step(request.kind.value.message);
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

  private async read(reader: StreamReader<In<EpisodeRequest>>): Promise<EpisodeRequest | typeof EOF> {
    const request = await reader.read(this.limits.idleTimeoutS);
    if (request instanceof Undecodable) throw invalidArgument("the message is not a valid rollmesh.v1.EpisodeRequest");
    return request;
  }

  private write(
    call: ServerDuplexStream<unknown, EpisodeResponse>,
    reader: { readonly isCancelled: boolean },
    response: EpisodeResponse,
  ): void {
    if (reader.isCancelled) throw new Cancelled();
    // gRPC would refuse an oversized reply with an opaque error; name the cause instead
    const size = EpisodeResponse.encode(response).finish().length;
    if (size > this.limits.maxMessageBytes) {
      throw resourceExhausted(
        `the environment's reply is ${size} bytes, over the ${this.limits.maxMessageBytes}-byte message limit`,
      );
    }
    call.write(response);
  }

  private newEpisode(request: EpisodeRequest): Episode {
    if (request.kind?.$case !== "start") throw invalidArgument("the first message of an episode must be `start`");
    const start = request.kind.value;
    const env = this.env(start.env);
    let task: Task;
    if (start.task) {
      if (!start.task.prompt.length) throw invalidArgument("an inline task needs a prompt");
      task = { ...start.task, env: env.name, split: start.task.split || "train" };
    } else if (start.taskId) {
      task = env.getTask(start.taskId, start.split);
    } else {
      throw invalidArgument("start needs a task_id (see ListTasks) or an inline task");
    }
    return new Episode(env, task, { seed: start.seed, options: start.options ?? {}, episodeId: start.episodeId });
  }
}

function decoded<T>(request: In<T>, type: string): T {
  if (request instanceof Undecodable) throw invalidArgument(`the message is not a valid rollmesh.v1.${type}`);
  return request;
}

/** A status for the error; INTERNAL ones (the environment's code raised) are logged with their stack. */
function statusOf(error: unknown, where: string): { code: number; details: string } {
  const status = toStatus(error, where);
  if (!(error instanceof RpcError)) console.error(`${where} failed:`, error);
  return status;
}

function unary<Req, Res>(request: In<Req>, cb: sendUnaryData<Res>, method: string, fn: (r: Req) => Promise<Res>): void {
  Promise.resolve()
    .then(() => fn(decoded(request, `${method}Request`)))
    .then(
      (response) => cb(null, response),
      (e: unknown) => cb(statusOf(e, method)),
    );
}
