// The shapes the clients take and return: plain objects with every field present, so callers meet
// none of the generated code's traps (oneof {$case, value}, absent sub-messages, has_* flags).
import { EnvironmentKind, type EnvironmentInfo, type Step } from "../gen/rollmesh/v1/environment.js";
import { type DeepPartial, Message, type SamplingParams, Task, type ToolCall } from "../gen/rollmesh/v1/messages.js";
import { StopReason } from "../gen/rollmesh/v1/trajectory.js";
import type { MessageInit } from "../messages.js";

export type { Message, MessageInit, Task, ToolCall };

/** A task as callers write it (an inline task needs a prompt). */
export type TaskInit = DeepPartial<Task>;
/** Sampling parameters; unset ones take the server's defaults. */
export type SamplingInit = DeepPartial<SamplingParams>;

export type EnvironmentKindName = "single_turn" | "multi_turn" | "tool" | "unspecified";
export type StopReasonName = "done" | "max_turns" | "length" | "error" | "cancelled";

export interface EnvironmentDescription {
  name: string;
  version: string;
  description: string;
  kind: EnvironmentKindName;
  tools: { name: string; description: string; parametersJsonSchema: string }[];
  maxTurns: number;
  /** Number of tasks per split. */
  splits: Record<string, number>;
  /** The split used when a request names none. */
  defaultSplit: string;
  rewardNames: string[];
  hasScore: boolean;
  hasRunEpisode: boolean;
  digest: string;
  /** Sampling the environment recommends (only the fields it sets). */
  defaultSampling: SamplingInit;
}

export interface StepResult {
  /** The environment's new messages (feedback, tool results, the next user turn). */
  messages: Message[];
  done: boolean;
  /** Set on the final step. */
  stopReason: StopReasonName | undefined;
  /** The environment's (weighted) reward; undefined = not scored here, never "0". */
  reward: number | undefined;
  rewards: Record<string, number>;
  metrics: Record<string, number>;
  /** The environment's state at the end (final step), for Score. */
  state: Record<string, unknown> | undefined;
  /** 1-based count of the actions so far. */
  turn: number;
}

const KIND_NAMES: Record<number, EnvironmentKindName> = {
  [EnvironmentKind.ENVIRONMENT_KIND_SINGLE_TURN]: "single_turn",
  [EnvironmentKind.ENVIRONMENT_KIND_MULTI_TURN]: "multi_turn",
  [EnvironmentKind.ENVIRONMENT_KIND_TOOL]: "tool",
};

const STOP_NAMES: Record<number, StopReasonName> = {
  [StopReason.STOP_REASON_DONE]: "done",
  [StopReason.STOP_REASON_MAX_TURNS]: "max_turns",
  [StopReason.STOP_REASON_LENGTH]: "length",
  [StopReason.STOP_REASON_ERROR]: "error",
  [StopReason.STOP_REASON_CANCELLED]: "cancelled",
};

export function toEnvironmentDescription(info: EnvironmentInfo): EnvironmentDescription {
  const sampling = info.defaultSampling;
  const defaultSampling: SamplingInit = {};
  for (const key of ["temperature", "topP", "topK", "maxTokens", "minP", "seed"] as const) {
    if (sampling?.[key] !== undefined) defaultSampling[key] = sampling[key];
  }
  return {
    name: info.name,
    version: info.version,
    description: info.description,
    kind: KIND_NAMES[info.kind] ?? "unspecified",
    tools: info.tools.map(({ name, description, parametersJsonSchema }) => ({
      name,
      description,
      parametersJsonSchema,
    })),
    maxTurns: info.maxTurns,
    splits: { ...info.splits },
    defaultSplit: info.defaultSplit,
    rewardNames: [...info.rewardNames],
    hasScore: info.hasScore,
    hasRunEpisode: info.hasRunEpisode,
    digest: info.digest,
    defaultSampling,
  };
}

export function toStopReason(reason: StopReason): StopReasonName | undefined {
  return STOP_NAMES[reason];
}

export function toStepResult(step: Step): StepResult {
  return {
    messages: step.messages,
    done: step.done,
    stopReason: toStopReason(step.stopReason),
    reward: step.hasReward ? step.reward : undefined,
    rewards: { ...step.rewards },
    metrics: { ...step.metrics },
    state: step.state,
    turn: step.turn,
  };
}

/** A task with every field present (`info` {} when absent). */
export function toTask(task: Task | undefined): Task {
  const full = Task.fromPartial(task ?? {});
  full.info ??= {};
  return full;
}

/** An assistant action: text, or a message with content and/or tool calls. */
export type ActionInit = string | (Omit<MessageInit, "role"> & { role?: "assistant" });

export function toAction(action: ActionInit): Message {
  return typeof action === "string"
    ? Message.fromPartial({ role: "assistant", content: action })
    : Message.fromPartial({ ...action, role: "assistant" });
}

export function toMessages(messages: readonly MessageInit[]): Message[] {
  return messages.map((m) => Message.fromPartial(m));
}
