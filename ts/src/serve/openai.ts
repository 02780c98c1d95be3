/**
 * The OpenAI API's shapes: request validation (every bad field becomes an ApiError with the
 * status and `{ error: { message, type, param, code } }` body OpenAI's clients expect), and the
 * completion / chunk objects the server sends back.
 */
import type { ChatMessage, FinishReason, GenerateResult } from "../backend.js";
import type { LigerError } from "../errors.js";

export type ApiErrorType = "invalid_request_error" | "authentication_error" | "server_error" | "timeout_error";

/** An error answered to the client as OpenAI's error object. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ApiErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): { error: { message: string; type: ApiErrorType; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A library error met while serving: the caller's fault (4xx) or ours (500), with its code. */
export function fromLigerError(err: LigerError): ApiError {
  switch (err.code) {
    case "INVALID_ARGUMENT":
      return new ApiError(400, err.message, "invalid_request_error", null, err.code);
    case "CONTEXT_OVERFLOW":
      return new ApiError(400, err.message, "invalid_request_error", null, "context_length_exceeded");
    default:
      return new ApiError(500, err.message, "server_error", null, err.code);
  }
}

const invalid = (param: string, message: string, code: string | null = "invalid_value") =>
  new ApiError(400, message, "invalid_request_error", param, code);

/** Sampling and length settings common to both endpoints, validated. */
export interface SamplingRequest {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  /** undefined: as many as the context and the server's cap allow. */
  maxTokens: number | undefined;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stop?: string[];
}

export interface ChatRequest extends SamplingRequest {
  kind: "chat";
  messages: ChatMessage[];
}

export interface CompletionRequest extends SamplingRequest {
  kind: "completion";
  prompt: string;
}

export type ParsedRequest = ChatRequest | CompletionRequest;

/** Parse a request body as JSON; anything else is a 400. */
export function parseJson(body: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    throw invalid("", `the request body is not valid JSON: ${(err as Error).message}`, "invalid_json");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw invalid("", "the request body must be a JSON object", "invalid_json");
  }
  return value as Record<string, unknown>;
}

/** A field that may be absent or null (clients send null for "unset"). */
function optional<T>(
  body: Record<string, unknown>,
  name: string,
  check: (v: unknown) => v is T,
  expected: string,
): T | undefined {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (!check(value)) throw invalid(name, `${name} must be ${expected}, got ${JSON.stringify(value)}`, "invalid_type");
  return value;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isInteger = (v: unknown): v is number => Number.isSafeInteger(v);
const isBoolean = (v: unknown): v is boolean => typeof v === "boolean";
const isString = (v: unknown): v is string => typeof v === "string";

function inRange(name: string, value: number | undefined, ok: (v: number) => boolean, expected: string): void {
  if (value !== undefined && !ok(value)) throw invalid(name, `${name} must be ${expected}, got ${value}`);
}

function parseSampling(body: Record<string, unknown>, servedModel: string, maxTokensCap: number): SamplingRequest {
  const model = optional(body, "model", isString, "a string") ?? servedModel;
  if (model !== servedModel) {
    throw new ApiError(
      404,
      `the model ${JSON.stringify(model)} does not exist; this server serves ${JSON.stringify(servedModel)}`,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  }
  const n = optional(body, "n", isInteger, "an integer");
  inRange("n", n, (v) => v === 1, "1 (one choice per request)");

  // max_completion_tokens is the newer name of the chat endpoint's max_tokens.
  const maxName = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const maxTokens = optional(body, maxName, isInteger, "an integer");
  inRange(maxName, maxTokens, (v) => v >= 1 && v <= maxTokensCap, `an integer in [1, ${maxTokensCap}]`);

  const temperature = optional(body, "temperature", isNumber, "a number");
  inRange("temperature", temperature, (v) => v >= 0 && v <= 2, "a number in [0, 2]");
  const topP = optional(body, "top_p", isNumber, "a number");
  inRange("top_p", topP, (v) => v > 0 && v <= 1, "a number in (0, 1]");
  const topK = optional(body, "top_k", isInteger, "an integer");
  inRange("top_k", topK, (v) => v >= 0, "an integer >= 0 (0 disables top-k)");
  const seed = optional(body, "seed", isInteger, "an integer");
  inRange("seed", seed, (v) => v >= 0, "an integer >= 0");

  const stream = optional(body, "stream", isBoolean, "a boolean") ?? false;
  const streamOptions = body.stream_options;
  const includeUsage =
    streamOptions !== null &&
    typeof streamOptions === "object" &&
    (streamOptions as Record<string, unknown>).include_usage === true;

  return { model, stream, includeUsage, maxTokens, temperature, topP, topK, seed, stop: parseStop(body.stop) };
}

function parseStop(stop: unknown): string[] | undefined {
  if (stop === undefined || stop === null) return undefined;
  const list = typeof stop === "string" ? [stop] : stop;
  if (!Array.isArray(list) || list.length > 4 || list.some((s) => typeof s !== "string" || s.length === 0)) {
    throw invalid(
      "stop",
      `stop must be a non-empty string or an array of up to 4 of them, got ${JSON.stringify(stop)}`,
    );
  }
  return list.length === 0 ? undefined : (list as string[]);
}

/** The text of a message's content: a string, or an array of `{ type: "text", text }` parts. */
function messageText(content: unknown, i: number): string {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        if (part === null || typeof part !== "object" || part.type !== "text" || typeof part.text !== "string") {
          throw invalid(
            `messages[${i}].content[${j}]`,
            "only text content parts ({ type: 'text', text }) are supported",
          );
        }
        return part.text as string;
      })
      .join("");
  }
  throw invalid(`messages[${i}].content`, `messages[${i}].content must be a string or an array of text parts`);
}

export function parseChatRequest(
  body: Record<string, unknown>,
  servedModel: string,
  maxTokensCap: number,
): ChatRequest {
  const sampling = parseSampling(body, servedModel, maxTokensCap);
  const { messages } = body;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalid("messages", "messages must be a non-empty array of { role, content }");
  }
  const parsed = messages.map((m: unknown, i): ChatMessage => {
    if (m === null || typeof m !== "object" || typeof (m as ChatMessage).role !== "string") {
      throw invalid(`messages[${i}]`, `messages[${i}] must be an object with a string role`);
    }
    return { role: (m as ChatMessage).role, content: messageText((m as ChatMessage).content, i) };
  });
  return { kind: "chat", ...sampling, messages: parsed };
}

export function parseCompletionRequest(
  body: Record<string, unknown>,
  servedModel: string,
  maxTokensCap: number,
): CompletionRequest {
  const sampling = parseSampling(body, servedModel, maxTokensCap);
  // One prompt per request: a string, or an array holding one string.
  const raw = Array.isArray(body.prompt) && body.prompt.length === 1 ? body.prompt[0] : body.prompt;
  if (typeof raw !== "string" || raw.length === 0) {
    throw invalid("prompt", "prompt must be a non-empty string (or an array of one such string)");
  }
  return { kind: "completion", ...sampling, prompt: raw };
}

/** OpenAI's finish reasons: the end-of-sequence token and a stop string are both "stop". */
export function openaiFinishReason(reason: FinishReason): "stop" | "length" {
  return reason === "length" ? "length" : "stop";
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(result: GenerateResult): Usage {
  const completion = result.tokens.length;
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: completion,
    total_tokens: result.promptTokens + completion,
  };
}

/** The identity every object of one response shares. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
}

export function completionObject(req: ParsedRequest, meta: ResponseMeta, result: GenerateResult): object {
  const finish_reason = openaiFinishReason(result.finishReason);
  const choice =
    req.kind === "chat"
      ? { index: 0, message: { role: "assistant", content: result.text }, logprobs: null, finish_reason }
      : { index: 0, text: result.text, logprobs: null, finish_reason };
  return {
    ...meta,
    object: req.kind === "chat" ? "chat.completion" : "text_completion",
    choices: [choice],
    usage: usageOf(result),
  };
}

/**
 * One streamed chunk: `text` (with `first` set, the chat endpoint's opening role delta) or,
 * with `finish` set, the closing chunk.
 */
export function chunkObject(
  req: ParsedRequest,
  meta: ResponseMeta,
  part: { text?: string; first?: boolean; finish?: "stop" | "length" },
): object {
  const finish_reason = part.finish ?? null;
  if (req.kind === "chat") {
    const delta: Record<string, string> = {};
    if (part.first) delta.role = "assistant";
    if (part.text !== undefined) delta.content = part.text;
    return { ...meta, object: "chat.completion.chunk", choices: [{ index: 0, delta, logprobs: null, finish_reason }] };
  }
  return {
    ...meta,
    object: "text_completion",
    choices: [{ index: 0, text: part.text ?? "", logprobs: null, finish_reason }],
  };
}

/** The last chunk when `stream_options.include_usage` is set: usage, no choices. */
export function usageChunk(req: ParsedRequest, meta: ResponseMeta, result: GenerateResult): object {
  const object = req.kind === "chat" ? "chat.completion.chunk" : "text_completion";
  return { ...meta, object, choices: [], usage: usageOf(result) };
}
