// Chat messages: authors write partial ones, the wire carries complete rollmesh.v1.Message.
import { Message, type ToolCall } from "./gen/rollmesh/v1/messages.js";
import { invalidArgument, quoted } from "./errors.js";

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

/** Checks a policy action as the Python reference does; returns it with role "assistant". */
export function validateAction(action: Message): Message {
  const role = action.role || "assistant";
  if (role !== "assistant") throw invalidArgument(`an action is an assistant message, got role ${quoted(role)}`);
  if (action.toolCalls.some((call) => !call.name)) throw invalidArgument("every tool call needs a function name");
  if (!action.content && action.toolCalls.length === 0) {
    throw invalidArgument("an action needs content or tool calls; got an empty message");
  }
  return { ...action, role: "assistant" };
}
