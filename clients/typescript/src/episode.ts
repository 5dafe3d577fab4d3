// One episode: the state machine the gRPC service drives. Start, then one step per action until done.
import { randomUUID } from "node:crypto";
import type { Step } from "./gen/rollmesh/v1/environment.js";
import type { Message, Task } from "./gen/rollmesh/v1/messages.js";
import { StopReason } from "./gen/rollmesh/v1/trajectory.js";
import {
  asRewards,
  type Environment,
  type EpisodeContext,
  type State,
  type StepOutcome,
  weightedReward,
} from "./environment.js";
import { failedPrecondition } from "./errors.js";
import { toMessage, validateAction } from "./messages.js";
import { jsonClone } from "./tasks.js";
import { runToolCalls } from "./tools.js";

export interface EpisodeOptions {
  seed?: number;
  options?: Record<string, unknown>;
  episodeId?: string;
}

export class Episode<S extends State = State> {
  readonly episodeId: string;
  readonly messages: Message[];
  turn = 0;
  done = false;
  private state = {} as S;
  private started = false;
  private closed = false;

  constructor(
    readonly env: Environment<S>,
    readonly task: Task,
    private readonly opts: EpisodeOptions = {},
  ) {
    this.episodeId = opts.episodeId || randomUUID().replaceAll("-", "");
    this.messages = [...task.prompt];
  }

  private context(): EpisodeContext {
    return {
      task: this.task,
      episodeId: this.episodeId,
      seed: this.opts.seed ?? 0,
      options: this.opts.options ?? {},
      turn: this.turn,
      messages: this.messages,
    };
  }

  /** Runs onStart; returns the messages the policy sees first. */
  async start(): Promise<Message[]> {
    this.state = (await this.env.spec.onStart?.(this.context())) ?? ({} as S);
    this.started = true;
    return [...this.messages];
  }

  async step(action: Message): Promise<Step> {
    if (!this.started) throw failedPrecondition("NOT_STARTED", "the episode has not started");
    if (this.done) {
      throw failedPrecondition(
        "EPISODE_DONE",
        `episode ${this.episodeId} is done (turn ${this.turn}); start a new episode`,
      );
    }
    const message = validateAction(action);
    this.messages.push(message);
    this.turn += 1;
    const outcome = await this.respond(message);
    const replies = (outcome.messages ?? []).map(toMessage);
    this.messages.push(...replies);
    const stopReason = outcome.done
      ? StopReason.STOP_REASON_DONE
      : this.turn >= this.env.maxTurns
        ? StopReason.STOP_REASON_MAX_TURNS
        : StopReason.STOP_REASON_UNSPECIFIED;
    const step: Step = {
      messages: replies,
      done: stopReason !== StopReason.STOP_REASON_UNSPECIFIED,
      stopReason,
      rewards: {},
      reward: 0,
      hasReward: false,
      metrics: {},
      state: undefined,
      turn: this.turn,
    };
    if (step.done) await this.finish(step, outcome);
    return step;
  }

  private async respond(message: Message): Promise<StepOutcome> {
    if (this.env.tools.size && message.toolCalls.length) {
      return { messages: await runToolCalls(this.env.tools, message.toolCalls) };
    }
    const onAction = this.env.spec.onAction;
    return onAction ? onAction(message, this.state, this.context()) : { done: true };
  }

  private async finish(step: Step, outcome: StepOutcome): Promise<void> {
    this.done = true;
    const score = this.env.spec.score;
    const rewards =
      outcome.rewards ??
      (score ? asRewards(await score({ task: this.task, messages: this.messages, state: this.state })) : undefined);
    const reward = outcome.reward ?? (rewards ? weightedReward(rewards, this.env.spec.rewardWeights) : undefined);
    step.rewards = rewards ?? {};
    if (reward !== undefined) {
      step.reward = reward;
      step.hasReward = true;
    }
    step.metrics = { turns: this.turn, ...outcome.metrics };
    step.state = jsonClone(this.state);
  }

  /** Runs onClose once, however the episode ended. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.started) await this.env.spec.onClose?.(this.state, this.context());
  }
}
