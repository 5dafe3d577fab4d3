// Tools the policy can call: a JSON schema for the model, an async function for the environment.
import type { Message, ToolCall, ToolSpec } from "./gen/rollmesh/v1/messages.js";
import { toMessage } from "./messages.js";

export interface Tool {
  name: string;
  description: string;
  /** JSON Schema of the arguments object. */
  parameters: Record<string, unknown>;
  fn: (args: Record<string, unknown>) => unknown | Promise<unknown>;
  /** Seconds one call may take; the result is an error text after that (default 30). */
  timeoutS?: number;
}

export function toolSpec(tool: Tool): ToolSpec {
  return { name: tool.name, description: tool.description, parametersJsonSchema: JSON.stringify(tool.parameters) };
}

/** Runs the calls concurrently; every call gets one "tool" message (errors as text, like Python). */
export async function runToolCalls(tools: ReadonlyMap<string, Tool>, calls: ToolCall[]): Promise<Message[]> {
  const results = await Promise.all(calls.map((call) => runToolCall(tools, call)));
  return calls.map((call, i) =>
    toMessage({ role: "tool", toolCallId: call.id, name: call.name, content: results[i] ?? "" }),
  );
}

async function runToolCall(tools: ReadonlyMap<string, Tool>, call: ToolCall): Promise<string> {
  const tool = tools.get(call.name);
  if (!tool) return `Error: unknown tool "${call.name}". Available tools: ${[...tools.keys()].join(", ")}.`;
  let args: unknown;
  try {
    args = call.argumentsJson.trim() ? JSON.parse(call.argumentsJson) : {};
  } catch (e) {
    return `Error: the arguments of ${call.name} are not valid JSON: ${(e as Error).message}`;
  }
  if (typeof args !== "object" || args === null || Array.isArray(args)) {
    return `Error: the arguments of ${call.name} must be a JSON object`;
  }
  const timeoutS = tool.timeoutS ?? 30;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`Error: ${call.name} timed out after ${timeoutS} s`), timeoutS * 1000);
  });
  try {
    const run = Promise.resolve().then(() => tool.fn(args as Record<string, unknown>));
    const result = await Promise.race([run.then(asText), timeout]);
    return result;
  } catch (e) {
    return `Error: ${call.name} failed: ${e instanceof Error ? e.message : String(e)}`;
  } finally {
    clearTimeout(timer);
  }
}

function asText(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value ?? null);
}
