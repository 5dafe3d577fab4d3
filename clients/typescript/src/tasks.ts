// Task rows as authors write them, turned into rollmesh.v1.Task messages.
import type { Message, Task } from "./gen/rollmesh/v1/messages.js";
import { toMessage, type MessageInit } from "./messages.js";

/** One task: `prompt` (text or messages) or `question` (text), optional answer and info. */
export interface TaskRow {
  taskId?: string;
  /** Alias of taskId; the row's index when neither is given. */
  id?: string | number;
  prompt?: string | MessageInit[];
  question?: string;
  answer?: string;
  info?: Record<string, unknown>;
}

export type TaskSource = TaskRow[] | Record<string, TaskRow[]>;

export function toTask(row: TaskRow, index: number, env: string, split: string, systemPrompt?: string): Task {
  const prompt = row.prompt ?? row.question;
  if (prompt === undefined) throw new Error(`task row ${index} of ${env}/${split} has neither prompt nor question`);
  const messages: Message[] =
    typeof prompt === "string" ? [toMessage({ role: "user", content: prompt })] : prompt.map(toMessage);
  if (systemPrompt && messages[0]?.role !== "system") {
    messages.unshift(toMessage({ role: "system", content: systemPrompt }));
  }
  return {
    env,
    taskId: String(row.taskId ?? row.id ?? index),
    prompt: messages,
    answer: row.answer ?? "",
    info: jsonClone(row.info ?? {}),
    split,
  };
}

/** Splits of tasks keyed by name; a plain array is the "train" split. */
export function loadSplits(source: TaskSource, env: string, systemPrompt?: string): Map<string, Task[]> {
  const entries = Array.isArray(source) ? [["train", source] as const] : Object.entries(source);
  const splits = new Map<string, Task[]>();
  for (const [split, rows] of entries) {
    const tasks = rows.map((row, i) => toTask(row, i, env, split, systemPrompt));
    const ids = new Set(tasks.map((t) => t.taskId));
    if (ids.size !== tasks.length) throw new Error(`duplicate task ids in ${env}/${split}`);
    splits.set(split, tasks);
  }
  return splits;
}

/** Plain JSON data (what a google.protobuf.Struct can hold); drops functions and undefined. */
export function jsonClone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value ?? {})) as T;
}
