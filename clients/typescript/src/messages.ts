// Chat messages: authors write partial ones, the wire carries complete rollmesh.v1.Message.
import { Message, type ToolCall } from "./gen/rollmesh/v1/messages.js";
import { invalidArgument, quoted } from "./errors.js";

/** A message as callers write it: a role, the rest optional. */
export interface MessageInit {
  role: string;
  content?: string;
  toolCalls?: Partial<ToolCall>[];
  toolCallId?: string;
  name?: string;
  reasoningContent?: string;
}

export function toMessage(init: MessageInit): Message {
  return Message.fromPartial(init);
}

/**
 * Checks a policy action; returns it with role "assistant". Empty content without tool calls is a
 * valid move (a model that said nothing): the environment answers it like any other reply.
 */
export function validateAction(action: Message): Message {
  const role = action.role || "assistant";
  if (role !== "assistant") {
    throw invalidArgument("INVALID_FIELD", `an action is an assistant message, got role ${quoted(role)}`, {
      field: "action.message.role",
    });
  }
  if (action.toolCalls.some((call) => !call.name)) {
    throw invalidArgument("INVALID_FIELD", "every tool call needs a function name", {
      field: "action.message.tool_calls.name",
    });
  }
  return { ...action, role: "assistant" };
}
