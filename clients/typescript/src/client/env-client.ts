// A client of an environment server (EnvironmentService, spec 3-6).
import type { ClientReadableStream } from "@grpc/grpc-js";
import {
  DescribeRequest,
  type DescribeResponse,
  EnvironmentServiceClient,
  type EpisodeRequest,
  ListTasksRequest,
  type ListTasksResponse,
  RunEpisodeRequest,
  type RunEpisodeResponse,
  ScoreRequest,
  type ScoreResponse,
} from "../gen/rollmesh/v1/environment.js";
import { Task } from "../gen/rollmesh/v1/messages.js";
import {
  type CallOptions,
  callArgs,
  cancelOnAbort,
  channelArgs,
  checkTimeout,
  type ClientOptions,
  DEFAULT_TIMEOUT_S,
  unary,
} from "./call.js";
import { EpisodeSession } from "./episode.js";
import { toRollmeshError } from "./errors.js";
import {
  type EnvironmentDescription,
  type MessageInit,
  type Message,
  type SamplingInit,
  type StopReasonName,
  type TaskInit,
  toEnvironmentDescription,
  toMessages,
  toStopReason,
  toTask,
} from "./types.js";

export interface EnvClientOptions extends ClientOptions {
  /** Longest an episode stream may stay open, in seconds (default 3600). */
  episodeTimeoutS?: number;
  /** Longest wait for one reply of an episode (`started`, a step), in seconds (default 120). */
  stepTimeoutS?: number;
}

export interface ServerDescription {
  server: { protocolVersion: string; language: string; sdkVersion: string; instanceId: string };
  environments: EnvironmentDescription[];
  limits: { maxConcurrentEpisodes: number; maxMessageBytes: number; episodeIdleTimeoutS: number };
  activeEpisodes: number;
}

export interface StartOptions extends CallOptions {
  /** A task of the environment's dataset... */
  taskId?: string;
  /** ...in this split (default: the environment's default split). */
  split?: string;
  /** ...or an inline task (it takes precedence over taskId/split). */
  task?: TaskInit;
  seed?: number;
  /** Your id for the episode (default: the server picks one). */
  episodeId?: string;
  /** Options for the environment. */
  options?: Record<string, unknown>;
  /** Longest wait for each reply of this episode, in seconds (default: the client's stepTimeoutS). */
  stepTimeoutS?: number;
}

export interface RunEpisodeOptions extends Omit<StartOptions, "stepTimeoutS"> {
  /** The caller's OpenAI-compatible endpoint (ends in /v1) the environment sends its model calls to. */
  openaiBaseUrl: string;
  /** The bearer token of this episode's model calls. */
  sessionKey: string;
  /** The model name the environment sends ("" = the endpoint's served model). */
  model?: string;
  /** The run's sampling (the endpoint applies it to every call). */
  sampling?: SamplingInit;
  /** Default: the client's episodeTimeoutS. */
  timeoutS?: number;
}

export interface RunEpisodeResult {
  /** The episode id (the trajectory's id). */
  episodeId: string;
  task: Task;
  /** The whole conversation, prompt included. */
  messages: Message[];
  rewards: Record<string, number>;
  reward: number;
  metrics: Record<string, number>;
  stopReason: StopReasonName | undefined;
  state: Record<string, unknown>;
}

export interface TaskPage {
  tasks: Task[];
  /** Pass it back for the next page; "" when no more tasks remain. */
  nextPageToken: string;
  /** Tasks in the split. */
  total: number;
}

export interface ScoreResult {
  rewards: Record<string, number>;
  /** Weighted by the environment's own weights. */
  reward: number;
  metrics: Record<string, number>;
}

export class EnvClient {
  readonly stub: EnvironmentServiceClient;
  private readonly timeoutS: number;
  private readonly episodeTimeoutS: number;
  private readonly stepTimeoutS: number;

  /** `address` is host:port. Nothing connects before the first call. */
  constructor(
    readonly address: string,
    opts: EnvClientOptions = {},
  ) {
    this.stub = new EnvironmentServiceClient(address, ...channelArgs(opts, "env"));
    this.timeoutS = checkTimeout(opts.timeoutS ?? DEFAULT_TIMEOUT_S);
    this.episodeTimeoutS = checkTimeout(opts.episodeTimeoutS ?? 3600, "episodeTimeoutS");
    this.stepTimeoutS = checkTimeout(opts.stepTimeoutS ?? 120, "stepTimeoutS");
  }

  /** What the server hosts, its limits and its load. */
  async describe(opts: CallOptions = {}): Promise<ServerDescription> {
    const r = await unary<DescribeResponse>(
      (md, o, cb) => this.stub.describe(DescribeRequest.fromPartial({}), md, o, cb),
      opts,
      this.timeoutS,
    );
    return {
      server: {
        protocolVersion: r.server?.protocolVersion ?? "",
        language: r.server?.language ?? "",
        sdkVersion: r.server?.sdkVersion ?? "",
        instanceId: r.server?.instanceId ?? "",
      },
      environments: r.environments.map(toEnvironmentDescription),
      limits: {
        maxConcurrentEpisodes: r.limits?.maxConcurrentEpisodes ?? 0,
        maxMessageBytes: r.limits?.maxMessageBytes ?? 0,
        episodeIdleTimeoutS: r.limits?.episodeIdleTimeoutS ?? 0,
      },
      activeEpisodes: r.activeEpisodes,
    };
  }

  /**
   * Every task of a split (default: the environment's default split), `pageSize` per call, as an
   * async iterator; `limit` stops early. Each page call has the deadline of `timeoutS`.
   */
  async *listTasks(
    env: string,
    opts: CallOptions & { split?: string; pageSize?: number; limit?: number } = {},
  ): AsyncGenerator<Task> {
    let yielded = 0;
    let pageToken = "";
    const limit = opts.limit ?? Infinity;
    do {
      const pageSize = Math.min(opts.pageSize ?? 256, limit - yielded);
      const call = this.listCall(env, opts.split ?? "", pageSize, pageToken, opts);
      pageToken = "";
      try {
        for await (const r of call as AsyncIterable<ListTasksResponse>) {
          for (const task of r.tasks) {
            yield toTask(task);
            if (++yielded >= limit) return;
          }
          pageToken = r.nextPageToken || pageToken;
        }
      } catch (e) {
        throw toRollmeshError(e);
      } finally {
        call.cancel(); // a no-op once the call has ended
      }
    } while (pageToken);
  }

  /** One page of tasks: `pageSize` 0 = all remaining; `pageToken` from a previous page. */
  async tasksPage(
    env: string,
    opts: CallOptions & { split?: string; pageSize?: number; pageToken?: string } = {},
  ): Promise<TaskPage> {
    const page: TaskPage = { tasks: [], nextPageToken: "", total: 0 };
    const call = this.listCall(env, opts.split ?? "", opts.pageSize ?? 0, opts.pageToken ?? "", opts);
    try {
      for await (const r of call as AsyncIterable<ListTasksResponse>) {
        page.tasks.push(...r.tasks.map(toTask));
        page.nextPageToken = r.nextPageToken;
        page.total = r.total;
      }
    } catch (e) {
      throw toRollmeshError(e);
    }
    return page;
  }

  private listCall(
    env: string,
    split: string,
    pageSize: number,
    pageToken: string,
    opts: CallOptions,
  ): ClientReadableStream<ListTasksResponse> {
    const [metadata, options] = callArgs(opts, this.timeoutS);
    const call = this.stub.listTasks(
      ListTasksRequest.fromPartial({ env, split, pageSize, pageToken }),
      metadata,
      options,
    );
    cancelOnAbort(call, opts.signal);
    return call;
  }

  /**
   * Starts an episode of `env` (a task by `taskId`/`split`, or an inline `task`) and waits for the
   * server's `started`. Play it with `act()`, end it with `close()`.
   */
  async episode(env: string, opts: StartOptions = {}): Promise<EpisodeSession> {
    const [metadata, options] = callArgs(
      { ...opts, timeoutS: opts.timeoutS ?? this.episodeTimeoutS },
      this.episodeTimeoutS,
    );
    const call = this.stub.episode(metadata, options);
    cancelOnAbort(call, opts.signal);
    const start: EpisodeRequest = {
      kind: {
        $case: "start",
        value: {
          env,
          taskId: opts.taskId ?? "",
          split: opts.split ?? "",
          task: opts.task ? Task.fromPartial(opts.task) : undefined,
          seed: opts.seed ?? 0,
          episodeId: opts.episodeId ?? "",
          options: opts.options,
        },
      },
    };
    return EpisodeSession.start(call, start, checkTimeout(opts.stepTimeoutS ?? this.stepTimeoutS, "stepTimeoutS"));
  }

  /**
   * Has the environment play a whole episode with its own agent loop (when its hasRunEpisode):
   * its model calls go to `openaiBaseUrl` with `sessionKey` as the bearer token.
   */
  async runEpisode(env: string, opts: RunEpisodeOptions): Promise<RunEpisodeResult> {
    const request = RunEpisodeRequest.fromPartial({
      start: {
        env,
        taskId: opts.taskId ?? "",
        split: opts.split ?? "",
        task: opts.task,
        seed: opts.seed ?? 0,
        episodeId: opts.episodeId ?? "",
        options: opts.options,
      },
      model: opts.model ?? "",
      sampling: opts.sampling,
      openaiBaseUrl: opts.openaiBaseUrl,
      sessionKey: opts.sessionKey,
    });
    const r = await unary<RunEpisodeResponse>(
      (md, o, cb) => this.stub.runEpisode(request, md, o, cb),
      opts,
      this.episodeTimeoutS,
    );
    const t = r.trajectory;
    return {
      episodeId: t?.trajectoryId ?? "",
      task: toTask(t?.task),
      messages: t?.messages ?? [],
      rewards: { ...t?.rewards },
      reward: t?.reward ?? 0,
      metrics: { ...t?.metrics },
      stopReason: toStopReason(t?.stopReason ?? 0),
      state: t?.state ?? {},
    };
  }

  /** The environment's own reward logic on a finished conversation (prompt included). */
  async score(
    env: string,
    input: { task: TaskInit; messages: readonly MessageInit[]; state?: Record<string, unknown> },
    opts: CallOptions = {},
  ): Promise<ScoreResult> {
    const request = ScoreRequest.fromPartial({ env, task: Task.fromPartial(input.task), state: input.state });
    request.messages = toMessages(input.messages);
    const r = await unary<ScoreResponse>((md, o, cb) => this.stub.score(request, md, o, cb), opts, this.timeoutS);
    return { rewards: { ...r.rewards }, reward: r.reward, metrics: { ...r.metrics } };
  }

  close(): void {
    this.stub.close();
  }
}
