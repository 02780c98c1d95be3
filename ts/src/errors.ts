/**
 * One error class for everything the library throws. `code` is stable and machine-readable;
 * the message says what went wrong and what to do about it.
 */

/** Codes raised by the Rust core: those of `ErrorCode::as_str` there, in order (test/error-codes.test.ts checks). */
export const CORE_ERROR_CODES = [
  "IO_ERROR",
  "INVALID_FILE",
  "UNSUPPORTED_ARCHITECTURE",
  "UNSUPPORTED_TENSOR_TYPE",
  "MISSING_TOKENIZER",
  "CONTEXT_OVERFLOW",
  "INVALID_ARGUMENT",
  "SHAPE_MISMATCH",
  "ABORTED",
  "OUT_OF_MEMORY",
  "NON_FINITE_LOSS",
  "DEVICE_UNAVAILABLE",
  "INTERNAL",
] as const;

/** Codes raised only by the TypeScript layer. */
export const TS_ERROR_CODES = ["MODEL_FETCH_FAILED", "NATIVE_ADDON_MISSING"] as const;

export type LigerErrorCode = (typeof CORE_ERROR_CODES)[number] | (typeof TS_ERROR_CODES)[number];

const KNOWN_CODES: ReadonlySet<string> = new Set([...CORE_ERROR_CODES, ...TS_ERROR_CODES]);

export class LigerError extends Error {
  readonly code: LigerErrorCode;

  constructor(code: LigerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LigerError";
    this.code = code;
  }
}

export function isLigerErrorCode(code: unknown): code is LigerErrorCode {
  return typeof code === "string" && KNOWN_CODES.has(code);
}

/**
 * The native addon reports errors as `[liger:CODE] message` (napi-rs errors carry only a
 * message across the boundary). Turn such an error, or anything else thrown, into a
 * LigerError; what we cannot classify is a bug and becomes INTERNAL.
 */
export function toLigerError(err: unknown): LigerError {
  if (err instanceof LigerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const tagged = /^\[liger:([A-Z_]+)\] ([\s\S]*)$/.exec(message);
  if (tagged && isLigerErrorCode(tagged[1])) {
    return new LigerError(tagged[1], tagged[2], { cause: err });
  }
  return new LigerError("INTERNAL", `unexpected error: ${message}`, { cause: err });
}

/** Shorthand for the most common TS-side error. */
export function invalidArgument(message: string): LigerError {
  return new LigerError("INVALID_ARGUMENT", message);
}
