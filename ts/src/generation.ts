/**
 * A running generation: an async iterator of tokens as they are produced, plus `result`, a
 * promise of the whole outcome. Tokens arrive from the backend through a GenerationSink and
 * wait in a queue until the iterator asks for them, so nothing is lost if the caller only
 * awaits `result`.
 */
import type { GenerateResult, GenerationHandle, GenerationSink } from "./backend.js";

export interface GeneratedToken {
  id: number;
  /** The text this token adds (may be empty while a multi-byte character is incomplete). */
  text: string;
}

type Waiter = { resolve: (r: IteratorResult<GeneratedToken>) => void; reject: (e: unknown) => void };

export class Generation implements AsyncIterable<GeneratedToken> {
  /** Resolves when generation ends (also when aborted); rejects on error. */
  readonly result: Promise<GenerateResult>;

  private readonly queue: GeneratedToken[] = [];
  private readonly waiters: Waiter[] = [];
  private finished = false;
  private failure: unknown = undefined;
  private handle: GenerationHandle | undefined;
  private abortRequested = false;
  private settle!: { resolve: (r: GenerateResult) => void; reject: (e: unknown) => void };

  constructor() {
    this.result = new Promise<GenerateResult>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Callers that only iterate still see errors there; do not also crash the process
    // with an unhandled rejection of `result`.
    this.result.catch(() => {});
  }

  /** The sink the backend reports to. */
  sink(): GenerationSink {
    return {
      token: (id, text) => this.push({ id, text }),
      done: (result) => this.finish(undefined, result),
      error: (err) => this.finish(err, undefined),
    };
  }

  /** Attach the backend's handle (an abort requested before this is forwarded now). */
  attach(handle: GenerationHandle): void {
    this.handle = handle;
    if (this.abortRequested) handle.abort();
  }

  /** Ask the backend to stop; the result then has finishReason "aborted". */
  abort(): void {
    if (this.finished) return;
    this.abortRequested = true;
    this.handle?.abort();
  }

  [Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    return {
      next: () => this.next(),
      // Leaving a for-await loop early stops the generation.
      return: async () => {
        this.abort();
        return { done: true, value: undefined };
      },
    };
  }

  private next(): Promise<IteratorResult<GeneratedToken>> {
    const token = this.queue.shift();
    if (token) return Promise.resolve({ done: false, value: token });
    if (this.finished) {
      return this.failure === undefined
        ? Promise.resolve({ done: true, value: undefined })
        : Promise.reject(this.failure);
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private push(token: GeneratedToken): void {
    if (this.finished) return;
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve({ done: false, value: token });
    else this.queue.push(token);
  }

  private finish(error: unknown, result: GenerateResult | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.failure = error;
    for (const waiter of this.waiters.splice(0)) {
      if (error === undefined) waiter.resolve({ done: true, value: undefined });
      else waiter.reject(error);
    }
    if (error === undefined) this.settle.resolve(result!);
    else this.settle.reject(error);
  }
}
