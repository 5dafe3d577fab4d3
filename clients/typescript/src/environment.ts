// An environment: tasks + a harness (episode hooks, tools) + rewards, free of any transport.
import { createHash } from "node:crypto";
import type { Agent } from "./agent.js";
import { type EnvironmentInfo, EnvironmentKind } from "./gen/rollmesh/v1/environment.js";
import { type Message, SamplingParams, type Task } from "./gen/rollmesh/v1/messages.js";
import { notFound, quoted } from "./errors.js";
import type { MessageInit } from "./messages.js";
import { loadSplits, type TaskSource } from "./tasks.js";
import { type Tool, toolSpec } from "./tools.js";

export type Rewards = Record<string, number>;
export type State = Record<string, unknown>;
export type EnvironmentKindName = "single_turn" | "multi_turn" | "tool";

/** What the hooks see of the running episode. */
export interface EpisodeContext {
  readonly task: Task;
  readonly episodeId: string;
  readonly seed: number;
  readonly options: Record<string, unknown>;
  /** 1-based index of the assistant turn being answered (0 in onStart). */
  readonly turn: number;
  /** The conversation so far, prompt included. */
  readonly messages: readonly Message[];
}

/** The environment's answer to one assistant message. */
export interface StepOutcome {
  messages?: MessageInit[];
  done?: boolean;
  /** Inline rewards (on the final step); otherwise `score` is asked, when defined. */
  rewards?: Rewards;
  /** The total; defaults to the weighted sum of `rewards` (see rewardWeights). */
  reward?: number;
  metrics?: Record<string, number>;
}

/** What a runEpisode harness knows of its episode besides the task. */
export interface RunContext {
  readonly episodeId: string;
  readonly seed: number;
  readonly options: Record<string, unknown>;
}

export type RunStopReason = "done" | "max_turns" | "length" | "cancelled";

/** The end of an episode a runEpisode harness played. */
export interface RunOutcome<S> {
  /** The whole conversation, prompt included (default: agent.transcript, or the prompt). */
  messages?: MessageInit[];
  /** Named rewards; otherwise `score` is asked, when defined. */
  rewards?: Rewards;
  /** The total; defaults to the weighted sum of `rewards`. */
  reward?: number;
  metrics?: Record<string, number>;
  /** Default "done". */
  stopReason?: RunStopReason;
  /** JSON data, returned in the trajectory and passed to score. */
  state?: S;
}

export interface ScoreInput<S> {
  task: Task;
  messages: Message[];
  state: S;
}

export interface EnvironmentSpec<S extends State = State> {
  name: string;
  version?: string;
  description?: string;
  /** Default: "tool" with tools, "single_turn" when maxTurns is 1, else "multi_turn". */
  kind?: EnvironmentKindName;
  /** Upper bound on assistant turns (default 10). */
  maxTurns?: number;
  tasks: TaskSource;
  /** Default: the first split. */
  defaultSplit?: string;
  systemPrompt?: string;
  /** Tool calls in an action are run by the helper; onAction sees the other actions. */
  tools?: Tool[];
  /** Names (and weights, default 1) of the rewards the environment reports. */
  rewardWeights?: Rewards;
  sampling?: Partial<Pick<SamplingParams, "temperature" | "topP" | "topK" | "maxTokens">>;
  /** The episode's initial state (JSON data: it is sent back in the final step). */
  onStart?: (ctx: EpisodeContext) => S | Promise<S>;
  /** Default: the episode ends at the first action without tool calls. */
  onAction?: (message: Message, state: S, ctx: EpisodeContext) => StepOutcome | Promise<StepOutcome>;
  /** Frees the episode's resources; runs however the episode ends. */
  onClose?: (state: S, ctx: EpisodeContext) => void | Promise<void>;
  /** Rewards of a finished conversation: the Score RPC, and the final step when it has none inline. */
  score?: (input: ScoreInput<S>) => Rewards | number | Promise<Rewards | number>;
  /**
   * Plays a whole episode with the harness's own agent loop (the RunEpisode RPC): every model call
   * goes through `agent` (agent.chat, or a program given agent.openaiBaseUrl and agent.apiKey).
   */
  runEpisode?: (task: Task, agent: Agent, ctx: RunContext) => RunOutcome<S> | Promise<RunOutcome<S>>;
}

const KINDS: Record<EnvironmentKindName, EnvironmentKind> = {
  single_turn: EnvironmentKind.ENVIRONMENT_KIND_SINGLE_TURN,
  multi_turn: EnvironmentKind.ENVIRONMENT_KIND_MULTI_TURN,
  tool: EnvironmentKind.ENVIRONMENT_KIND_TOOL,
};

export class Environment<S extends State = State> {
  readonly name: string;
  readonly maxTurns: number;
  readonly kind: EnvironmentKindName;
  readonly defaultSplit: string;
  readonly splits: Map<string, Task[]>;
  readonly tools: ReadonlyMap<string, Tool>;
  readonly digest: string;
  private readonly byId: Map<string, Map<string, Task>>;

  constructor(readonly spec: EnvironmentSpec<S>) {
    if (!spec.name || /[.\s*>]/.test(spec.name)) throw new Error(`invalid environment name "${spec.name}"`);
    this.name = spec.name;
    this.maxTurns = spec.maxTurns ?? 10;
    if (!Number.isInteger(this.maxTurns) || this.maxTurns < 1) throw new Error(`maxTurns must be >= 1`);
    this.tools = new Map((spec.tools ?? []).map((t) => [t.name, t]));
    if (this.tools.size !== (spec.tools ?? []).length) throw new Error("tool names must be unique");
    this.kind = spec.kind ?? (this.tools.size ? "tool" : this.maxTurns === 1 ? "single_turn" : "multi_turn");
    this.splits = loadSplits(spec.tasks, spec.name, spec.systemPrompt);
    this.defaultSplit = spec.defaultSplit ?? this.splits.keys().next().value ?? "train";
    if (!this.splits.has(this.defaultSplit)) {
      throw new Error(`defaultSplit "${this.defaultSplit}" is not one of the splits: ${[...this.splits.keys()]}`);
    }
    this.byId = new Map([...this.splits].map(([split, ts]) => [split, new Map(ts.map((t) => [t.taskId, t]))]));
    this.digest = this.computeDigest();
  }

  get hasScore(): boolean {
    return this.spec.score !== undefined;
  }

  get hasRunEpisode(): boolean {
    return this.spec.runEpisode !== undefined;
  }

  tasks(split = ""): Task[] {
    const name = split || this.defaultSplit;
    const tasks = this.splits.get(name);
    if (!tasks) {
      const splits = [...this.splits.keys()].join(",");
      throw notFound("UNKNOWN_SPLIT", `environment "${this.name}" has no split ${quoted(name)}; splits: ${splits}`, {
        splits,
      });
    }
    return tasks;
  }

  getTask(taskId: string, split = ""): Task {
    const name = split || this.defaultSplit;
    const task = this.byId.get(name)?.get(taskId);
    if (!task) {
      const count = this.tasks(name).length; // NOT_FOUND for the split first
      throw notFound(
        "UNKNOWN_TASK",
        `environment "${this.name}" has no task ${quoted(taskId)} in split ${quoted(name)} (${count} tasks; list them with ListTasks)`,
      );
    }
    return task;
  }

  info(): EnvironmentInfo {
    const sampling = this.spec.sampling ?? {};
    return {
      name: this.name,
      version: this.spec.version ?? "0.1.0",
      description: this.spec.description ?? "",
      kind: KINDS[this.kind],
      tools: [...this.tools.values()].map(toolSpec),
      maxTurns: this.maxTurns,
      splits: Object.fromEntries([...this.splits].map(([split, ts]) => [split, ts.length])),
      rewardNames: Object.keys(this.spec.rewardWeights ?? {}),
      hasScore: this.hasScore,
      digest: this.digest,
      defaultSampling: SamplingParams.fromPartial(sampling),
      hasRunEpisode: this.hasRunEpisode,
      defaultSplit: this.defaultSplit,
    };
  }

  /** sha256 of the hooks' code, the tools, the limits and the tasks: changes whenever any does. */
  private computeDigest(): string {
    const { tasks: _tasks, tools, ...rest } = this.spec;
    const code = Object.entries(rest).map(([k, v]) => [k, typeof v === "function" ? v.toString() : v]);
    const toolCode = (tools ?? []).map((t) => [toolSpec(t), t.fn.toString()]);
    const h = createHash("sha256").update(JSON.stringify([code, toolCode, this.maxTurns]));
    for (const [split, tasks] of [...this.splits].sort(([a], [b]) => a.localeCompare(b))) {
      for (const t of tasks) h.update(JSON.stringify([split, t.taskId, t.prompt, t.answer, t.info]));
    }
    return h.digest("hex");
  }
}

export function defineEnvironment<S extends State = State>(spec: EnvironmentSpec<S>): Environment<S> {
  return new Environment(spec);
}

/** Weighted sum of rewards (weight 1 for names without one). */
export function weightedReward(rewards: Rewards, weights: Rewards = {}): number {
  return Object.entries(rewards).reduce((sum, [name, value]) => sum + value * (weights[name] ?? 1), 0);
}

/** A score function's answer as named rewards: a bare number is {score: n}. */
export function asRewards(value: Rewards | number): Rewards {
  return typeof value === "number" ? { score: value } : value;
}
