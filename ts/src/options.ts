/** Validation of user options: every bad value becomes an INVALID_ARGUMENT LigerError. */
import type { BackendGenerateOptions, ChatMessage } from "./backend.js";
import { invalidArgument } from "./errors.js";

export interface GenerateOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  /** Sampling temperature; 0 means greedy (default 0.8). */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 disables (default 40). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 disables (default 0.95). */
  topP?: number;
  /** Seed of the sampler; same seed, same options, same prompt: same text (default: random). */
  seed?: number;
  /** Stop when the text contains one of these strings (it is cut from the result). */
  stop?: string | string[];
  /** Keep going past the end-of-sequence token (default false). */
  ignoreEos?: boolean;
  /** Treat a string prompt as one user message and apply the chat template (default false). */
  chat?: boolean;
  /** Aborting stops generation; the result then has finishReason "aborted". */
  signal?: AbortSignal;
}

export const DEFAULT_MAX_TOKENS = 256;

function checkNumber(name: string, value: unknown, rule: (v: number) => boolean, expected: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || !rule(value)) {
    throw invalidArgument(`${name} must be ${expected}, got ${JSON.stringify(value)}`);
  }
  return value;
}

const isNonNegativeInt = (v: number) => Number.isSafeInteger(v) && v >= 0;

export function resolveGenerateOptions(options: GenerateOptions): BackendGenerateOptions {
  if (options === null || typeof options !== "object") {
    throw invalidArgument(`generate options must be an object, got ${JSON.stringify(options)}`);
  }
  const maxTokens = checkNumber(
    "maxTokens",
    options.maxTokens ?? DEFAULT_MAX_TOKENS,
    (v) => Number.isSafeInteger(v) && v >= 1,
    "an integer >= 1",
  );
  const temperature = checkNumber("temperature", options.temperature ?? 0.8, (v) => v >= 0, "a number >= 0");
  const topK = checkNumber("topK", options.topK ?? 40, isNonNegativeInt, "an integer >= 0 (0 disables top-k)");
  const topP = checkNumber("topP", options.topP ?? 0.95, (v) => v > 0 && v <= 1, "a number in (0, 1]");
  const seed = checkNumber(
    "seed",
    options.seed ?? Math.floor(Math.random() * 2 ** 32),
    isNonNegativeInt,
    "an integer in [0, 2^53)",
  );
  const stopList = options.stop === undefined ? [] : Array.isArray(options.stop) ? options.stop : [options.stop];
  for (const s of stopList) {
    if (typeof s !== "string" || s.length === 0) {
      throw invalidArgument(`stop strings must be non-empty strings, got ${JSON.stringify(s)}`);
    }
  }
  if (options.ignoreEos !== undefined && typeof options.ignoreEos !== "boolean") {
    throw invalidArgument(`ignoreEos must be a boolean, got ${JSON.stringify(options.ignoreEos)}`);
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw invalidArgument("signal must be an AbortSignal");
  }
  return { maxTokens, temperature, topK, topP, seed, stop: stopList, ignoreEos: options.ignoreEos ?? false };
}

export function checkMessages(messages: unknown): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalidArgument("messages must be a non-empty array of { role, content }");
  }
  for (const [i, m] of messages.entries()) {
    if (m === null || typeof m !== "object" || typeof m.role !== "string" || typeof m.content !== "string") {
      throw invalidArgument(`messages[${i}] must be { role: string, content: string }, got ${JSON.stringify(m)}`);
    }
  }
  return messages.map((m: ChatMessage) => ({ role: m.role, content: m.content }));
}

/** Token ids from a number[] or Uint32Array, checked against the vocabulary. */
export function checkTokens(tokens: unknown, vocabSize: number, what = "tokens"): Uint32Array {
  if (!(tokens instanceof Uint32Array) && !Array.isArray(tokens)) {
    throw invalidArgument(`${what} must be an array of token ids or a Uint32Array`);
  }
  const ids = tokens instanceof Uint32Array ? tokens : Uint32Array.from(tokens as number[]);
  for (let i = 0; i < ids.length; i++) {
    const raw = tokens instanceof Uint32Array ? ids[i] : (tokens as unknown[])[i];
    if (typeof raw !== "number" || !Number.isInteger(raw) || raw < 0 || raw >= vocabSize) {
      throw invalidArgument(`${what}[${i}] = ${JSON.stringify(raw)} is not a token id in [0, ${vocabSize})`);
    }
  }
  return ids;
}
