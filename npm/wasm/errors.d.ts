/** An error from the engine: `code` is one of liger's error codes (e.g. "INVALID_FILE"). */
export declare class LigerWasmError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown });
}
