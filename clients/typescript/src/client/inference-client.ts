// A client of an inference server (InferenceService, spec 9): token-exact generation with
// per-token logprobs, tokenization with the model's chat template, model info.
import {
  GenerateRequest,
  type GenerateResponse,
  GetModelInfoRequest,
  type GetModelInfoResponse,
  InferenceServiceClient,
  type Sample,
  TokenizeRequest,
  type TokenizeResponse,
} from "../gen/rollmesh/v1/inference.js";
import { type DeepPartial, SamplingParams, type ToolCall, ToolSpec } from "../gen/rollmesh/v1/messages.js";
import { type CallOptions, channelArgs, checkTimeout, type ClientOptions, DEFAULT_TIMEOUT_S, unary } from "./call.js";
import { type MessageInit, type SamplingInit, toMessages } from "./types.js";

/** The prompt: chat messages (the server applies the chat template) or token ids, used as they are. */
export type PromptInput =
  | {
      messages: readonly MessageInit[];
      tools?: readonly DeepPartial<ToolSpec>[];
      chatTemplateKwargs?: Record<string, unknown>;
      promptIds?: never;
    }
  | { promptIds: readonly number[]; messages?: never };

export type GenerateInput = PromptInput & {
  /** e.g. { maxTokens: 64, temperature: 0, logprobs: true, n: 1, seed: 1 } */
  sampling?: SamplingInit;
  /** Must match the served model when set. */
  model?: string;
  requestId?: string;
  /** Requests with the same key share a replica (prefix caching). */
  sessionId?: string;
};

export interface Completion {
  index: number;
  text: string;
  completionIds: number[];
  /** One per completion token when sampling.logprobs was set; empty otherwise. */
  logprobs: number[];
  /** "stop", "length" or "abort". */
  finishReason: string;
  /** The weights version that produced it. */
  policyVersion: number;
  toolCalls: ToolCall[];
}

/** The samples, with the first one's fields also at the top (the usual n = 1 case). */
export interface GenerateResult extends Completion {
  model: string;
  promptIds: number[];
  samples: Completion[];
  usage: { promptTokens: number; completionTokens: number };
}

export interface ModelInfo {
  model: string;
  /** "vllm" or "hf". */
  backend: string;
  contextLength: number;
  tokenizer: string;
  chatTemplate: string;
  policyVersion: number;
  vocabSize: number;
  eosTokenIds: number[];
  paused: boolean;
}

export class InferenceClient {
  readonly stub: InferenceServiceClient;
  private readonly timeoutS: number;

  /** `address` is host:port. Nothing connects before the first call. */
  constructor(
    readonly address: string,
    opts: ClientOptions = {},
  ) {
    this.stub = new InferenceServiceClient(address, ...channelArgs(opts, "inference"));
    this.timeoutS = checkTimeout(opts.timeoutS ?? DEFAULT_TIMEOUT_S);
  }

  async generate(input: GenerateInput, opts: CallOptions = {}): Promise<GenerateResult> {
    const request: GenerateRequest = {
      input: chatOrTokens(input),
      sampling: SamplingParams.fromPartial(input.sampling ?? {}),
      model: input.model ?? "",
      requestId: input.requestId ?? "",
      sessionId: input.sessionId ?? "",
    };
    const r = await unary<GenerateResponse>((md, o, cb) => this.stub.generate(request, md, o, cb), opts, this.timeoutS);
    const samples = r.samples.map(toCompletion);
    const first = samples[0];
    if (!first) throw new Error(`the inference server at ${this.address} returned no sample`);
    return {
      ...first,
      model: r.model,
      promptIds: r.promptIds,
      samples,
      usage: { promptTokens: r.usage?.promptTokens ?? 0, completionTokens: r.usage?.completionTokens ?? 0 },
    };
  }

  /** Token ids of a text, or of chat messages after the chat template (with the generation prompt when asked). */
  async tokenize(
    input:
      | { text: string }
      | { messages: readonly MessageInit[]; tools?: readonly DeepPartial<ToolSpec>[]; addGenerationPrompt?: boolean },
    opts: CallOptions = {},
  ): Promise<{ tokenIds: number[]; text: string }> {
    const request: TokenizeRequest =
      "text" in input
        ? { input: { $case: "text", value: input.text } }
        : {
            input: {
              $case: "chat",
              value: {
                messages: toMessages(input.messages),
                tools: (input.tools ?? []).map((t) => ToolSpec.fromPartial(t)),
                addGenerationPrompt: input.addGenerationPrompt ?? false,
                chatTemplateKwargs: undefined,
              },
            },
          };
    const r = await unary<TokenizeResponse>((md, o, cb) => this.stub.tokenize(request, md, o, cb), opts, this.timeoutS);
    return { tokenIds: r.tokenIds, text: r.text };
  }

  async modelInfo(opts: CallOptions = {}): Promise<ModelInfo> {
    const r = await unary<GetModelInfoResponse>(
      (md, o, cb) => this.stub.getModelInfo(GetModelInfoRequest.fromPartial({}), md, o, cb),
      opts,
      this.timeoutS,
    );
    return { ...r };
  }

  close(): void {
    this.stub.close();
  }
}

function chatOrTokens(input: PromptInput): GenerateRequest["input"] {
  if (input.promptIds !== undefined && input.messages !== undefined) {
    throw new Error("generate takes messages or promptIds, not both");
  }
  if (input.promptIds !== undefined) return { $case: "tokens", value: { promptIds: [...input.promptIds] } };
  if (input.messages !== undefined) {
    return {
      $case: "chat",
      value: {
        messages: toMessages(input.messages),
        tools: (input.tools ?? []).map((t) => ToolSpec.fromPartial(t)),
        addGenerationPrompt: true,
        chatTemplateKwargs: input.chatTemplateKwargs,
      },
    };
  }
  throw new Error("generate needs messages or promptIds");
}

function toCompletion(s: Sample): Completion {
  return {
    index: s.index,
    text: s.text,
    completionIds: s.completionIds,
    logprobs: s.logprobs,
    finishReason: s.finishReason,
    policyVersion: s.policyVersion,
    toolCalls: s.toolCalls,
  };
}
