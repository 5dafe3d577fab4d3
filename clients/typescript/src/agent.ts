// The model a RunEpisode harness talks to (spec 7): the caller's OpenAI-compatible endpoint, called
// with the episode's session key. The caller records every call's tokens under that key, so the
// harness only sends the conversation; the caller applies the run's sampling.
import { status } from "@grpc/grpc-js";
import type { Message } from "./gen/rollmesh/v1/messages.js";
import { quoted, type ReasonName, RpcError } from "./errors.js";
import { toMessage, type MessageInit } from "./messages.js";
import { Cancelled } from "./stream.js";

/** A tool the model may call: its name, what it does, the JSON Schema of its arguments. */
export interface ChatTool {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

/** What a `runEpisode` harness gets to call the model with. */
export interface Agent {
  /** The caller's OpenAI-compatible base URL (ends in /v1), for programs of your own. */
  readonly openaiBaseUrl: string;
  /** The episode's session key: send it as `Authorization: Bearer <apiKey>`; never log it. */
  readonly apiKey: string;
  /** The model name to send ("" = the endpoint's served model). */
  readonly model: string;
  /** Aborted when the call is cancelled or its deadline passes: stop the episode then. */
  readonly signal: AbortSignal;
  /** Model calls made so far through `chat`. */
  readonly calls: number;
  /** The most calls `chat` makes (the environment's maxTurns); the next one throws TurnLimitReached. */
  readonly maxCalls: number;
  /** The last call's messages followed by its reply: the conversation as the model last saw it. */
  readonly transcript: readonly Message[];
  /** One chat completion: POST {openaiBaseUrl}/chat/completions; resolves to the assistant message. */
  chat(messages: readonly MessageInit[], tools?: readonly ChatTool[]): Promise<Message>;
  /** OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL: the environment of an agent program that uses this endpoint. */
  openaiEnv(): Record<string, string>;
}

/** `chat` was called more than maxCalls times; uncaught, the episode ends with stop reason max_turns. */
export class TurnLimitReached extends Error {
  constructor(readonly maxCalls: number) {
    super(`the environment's limit of ${maxCalls} model calls (maxTurns) is reached`);
    this.name = "TurnLimitReached";
  }
}

/** A model call that failed: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or INTERNAL with a reason. */
export class ModelCallError extends RpcError {
  /** The endpoint's HTTP status, when it answered. */
  httpStatus: number | undefined;
}

export interface ChatAgentOptions {
  openaiBaseUrl: string;
  apiKey: string;
  model?: string;
  maxCalls: number;
  signal: AbortSignal;
  /** Longest one call may take, reply included, in seconds (0 = no limit of its own). */
  timeoutS: number;
  /** Largest reply body accepted, in bytes. */
  maxReplyBytes: number;
}

const ERROR_BODY_BYTES = 64 * 1024; // of an error reply, only the start is read
const ERROR_TEXT_CHARS = 300; // and quoted

/** The OpenAI-format client behind `Agent`, over Node's fetch. */
export class ChatAgent implements Agent {
  readonly openaiBaseUrl: string;
  readonly apiKey: string;
  readonly model: string;
  readonly signal: AbortSignal;
  readonly maxCalls: number;
  calls = 0;
  transcript: readonly Message[] = [];
  private readonly url: string;

  constructor(private readonly opts: ChatAgentOptions) {
    this.openaiBaseUrl = opts.openaiBaseUrl;
    this.apiKey = opts.apiKey;
    this.model = opts.model ?? "";
    this.signal = opts.signal;
    this.maxCalls = opts.maxCalls;
    this.url = `${opts.openaiBaseUrl.replace(/\/+$/, "")}/chat/completions`;
  }

  async chat(messages: readonly MessageInit[], tools: readonly ChatTool[] = []): Promise<Message> {
    if (this.calls >= this.maxCalls) throw new TurnLimitReached(this.maxCalls);
    this.calls += 1;
    const sent = messages.map(toMessage);
    const body: Record<string, unknown> = { messages: sent.map(toOpenAI) };
    if (this.model) body.model = this.model;
    if (tools.length) body.tools = tools.map(toolToOpenAI);
    const reply = await this.post(JSON.stringify(body));
    this.transcript = [...sent, reply];
    return reply;
  }

  openaiEnv(): Record<string, string> {
    return { OPENAI_BASE_URL: this.openaiBaseUrl, OPENAI_API_KEY: this.apiKey, OPENAI_MODEL: this.model };
  }

  private async post(body: string): Promise<Message> {
    const { timeoutS } = this.opts;
    const timeout = timeoutS > 0 ? AbortSignal.timeout(timeoutS * 1000) : undefined;
    const signal = timeout ? AbortSignal.any([this.signal, timeout]) : this.signal;
    try {
      const res = await fetch(this.url, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${this.apiKey}` },
        body,
        signal,
        redirect: "error", // the session key goes to the caller's endpoint and nowhere else
      });
      if (!res.ok) throw this.refused(res.status, await readBody(res, ERROR_BODY_BYTES, false));
      return this.parse(await readBody(res, this.opts.maxReplyBytes, true));
    } catch (e) {
      if (this.signal.aborted) throw new Cancelled();
      if (timeout?.aborted) {
        throw failure(status.DEADLINE_EXCEEDED, "TIMEOUT", `${this.where()} did not answer within ${timeoutS} s`, {
          timeout_s: String(timeoutS),
        });
      }
      if (e instanceof RpcError) throw e;
      throw failure(status.UNAVAILABLE, "INFERENCE_UNREACHABLE", `${this.where()} is unreachable: ${networkCause(e)}`);
    }
  }

  /** 5xx: the endpoint cannot serve now (UNAVAILABLE); 4xx: it refused this call (INTERNAL). */
  private refused(httpStatus: number, text: string): ModelCallError {
    const message = `${this.where()} answered HTTP ${httpStatus}: ${errorText(text)}`;
    const error =
      httpStatus >= 500
        ? failure(status.UNAVAILABLE, "INFERENCE_UNREACHABLE", message, { http_status: String(httpStatus) })
        : failure(status.INTERNAL, "ENVIRONMENT_FAILED", message, { http_status: String(httpStatus) });
    error.httpStatus = httpStatus;
    return error;
  }

  private parse(text: string): Message {
    let message: unknown;
    try {
      message = (JSON.parse(text) as { choices?: { message?: unknown }[] }).choices?.[0]?.message;
    } catch {
      message = undefined;
    }
    if (typeof message !== "object" || message === null) {
      throw failure(
        status.UNAVAILABLE,
        "INFERENCE_UNREACHABLE",
        `${this.where()} answered with no chat completion (choices[0].message): ${quoted(text, ERROR_TEXT_CHARS)}`,
      );
    }
    return fromOpenAI(message as OpenAIMessage);
  }

  private where(): string {
    return `the model endpoint ${quoted(this.url)}`;
  }
}

function failure(code: status, reason: ReasonName, message: string, metadata?: Record<string, string>) {
  return new ModelCallError(code, reason, message, metadata);
}

/** The body, at most `limit` bytes: over it, a reply is MESSAGE_TOO_LARGE and an error text is cut. */
async function readBody(res: Response, limit: number, strict: boolean): Promise<string> {
  const tooLarge = () =>
    failure(status.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", `the model's reply is over the ${limit}-byte limit`, {
      limit_bytes: String(limit),
    });
  if (strict && Number(res.headers.get("content-length") ?? 0) > limit) {
    await res.body?.cancel();
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body?.getReader();
  for (;;) {
    const next = await reader?.read();
    if (!next || next.done) break;
    chunks.push(next.value);
    size += next.value.byteLength;
    if (size > limit) {
      await reader?.cancel();
      if (strict) throw tooLarge();
      break;
    }
  }
  return Buffer.concat(chunks)
    .toString("utf8")
    .slice(0, strict ? undefined : limit);
}

/** The message of an OpenAI-style error body ({"error": {"message"}}), else the text, quoted and cut. */
function errorText(text: string): string {
  try {
    const error = (JSON.parse(text) as { error?: { message?: unknown } | string }).error;
    const message = typeof error === "string" ? error : error?.message;
    if (typeof message === "string") return quoted(message, ERROR_TEXT_CHARS);
  } catch {
    // not JSON: quote the text
  }
  return quoted(text, ERROR_TEXT_CHARS);
}

/** What a failed fetch says about the connection (ECONNREFUSED, ENOTFOUND...), not the whole stack. */
function networkCause(e: unknown): string {
  const cause = (e as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  const text = cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : e);
  return String(text).slice(0, ERROR_TEXT_CHARS);
}

interface OpenAIMessage {
  role?: string;
  content?: string | null;
  tool_calls?: { id?: string; type?: string; function?: { name?: string; arguments?: string } }[];
  tool_call_id?: string;
  name?: string;
  reasoning_content?: string | null;
}

function toOpenAI(m: Message): OpenAIMessage {
  const out: OpenAIMessage = { role: m.role, content: m.content };
  if (m.toolCalls.length) {
    out.tool_calls = m.toolCalls.map((c) => ({
      id: c.id,
      type: "function",
      function: { name: c.name, arguments: c.argumentsJson || "{}" },
    }));
  }
  if (m.toolCallId) out.tool_call_id = m.toolCallId;
  if (m.name) out.name = m.name;
  return out;
}

function fromOpenAI(m: OpenAIMessage): Message {
  return toMessage({
    role: "assistant",
    content: typeof m.content === "string" ? m.content : "",
    toolCalls: (m.tool_calls ?? []).map((c) => ({
      id: c.id ?? "",
      name: c.function?.name ?? "",
      argumentsJson: c.function?.arguments ?? "",
    })),
    reasoningContent: typeof m.reasoning_content === "string" ? m.reasoning_content : "",
  });
}

function toolToOpenAI(tool: ChatTool): Record<string, unknown> {
  return {
    type: "function",
    function: {
      name: tool.name,
      description: tool.description ?? "",
      parameters: tool.parameters ?? { type: "object", properties: {} },
    },
  };
}
