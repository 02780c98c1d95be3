/**
 * Runs generations with at most `maxBatch` at once; the rest wait in a first-come queue.
 *
 * The CPU engine runs each generation on a thread of its own over the shared weights, so up to
 * `maxBatch` requests decode at the same time (in parallel, not batched into one matrix
 * product: each sequence is its own forward pass). The wasm engine interleaves them on the
 * event loop. Either way the limit keeps a burst of requests from oversubscribing the CPU.
 * On the GPU the admitted generations take turns: the model's GPU copy runs one whole
 * generation at a time (batched GPU decoding across requests is not built yet).
 */

export interface SchedulerStats {
  /** Requests waiting for a slot. */
  queueDepth: number;
  /** Generations running now. */
  active: number;
  maxBatch: number;
  /** Generations that ended normally (stop, end of sequence or length). */
  requestsServed: number;
  /** Generations cut short: the client went away or the request timed out. */
  requestsAborted: number;
  /** Generations that ended in an error. */
  requestsFailed: number;
  tokensGenerated: number;
  /** Tokens generated per second of time with at least one generation running. */
  tokensPerSecond: number;
}

/** How a job ended, for the counters. */
export type JobOutcome = { kind: "served" | "aborted" | "failed"; tokens: number };

export class Scheduler {
  private readonly waiting: (() => void)[] = [];
  private active = 0;
  private served = 0;
  private aborted = 0;
  private failed = 0;
  private tokens = 0;
  private busyMs = 0;
  private busySince = 0;

  constructor(readonly maxBatch: number) {}

  /**
   * Run `job` once a slot is free. If `signal` fires while the job still waits, it leaves the
   * queue and the promise rejects with the signal's reason.
   */
  run<T>(job: () => Promise<{ value: T; outcome: JobOutcome }>, signal: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        signal.removeEventListener("abort", cancel);
        this.begin();
        job().then(
          ({ value, outcome }) => {
            this.end(outcome);
            resolve(value);
          },
          (err) => {
            this.end({ kind: "failed", tokens: 0 });
            reject(err);
          },
        );
      };
      const cancel = () => {
        const i = this.waiting.indexOf(start);
        if (i >= 0) this.waiting.splice(i, 1);
        this.aborted++;
        reject(signal.reason);
      };
      if (signal.aborted) return cancel();
      if (this.active < this.maxBatch) return start();
      signal.addEventListener("abort", cancel, { once: true });
      this.waiting.push(start);
    });
  }

  stats(): SchedulerStats {
    const busyMs = this.busyMs + (this.active > 0 ? performance.now() - this.busySince : 0);
    return {
      queueDepth: this.waiting.length,
      active: this.active,
      maxBatch: this.maxBatch,
      requestsServed: this.served,
      requestsAborted: this.aborted,
      requestsFailed: this.failed,
      tokensGenerated: this.tokens,
      tokensPerSecond: busyMs > 0 ? this.tokens / (busyMs / 1000) : 0,
    };
  }

  private begin(): void {
    if (this.active === 0) this.busySince = performance.now();
    this.active++;
  }

  private end(outcome: JobOutcome): void {
    this.active--;
    if (this.active === 0) this.busyMs += performance.now() - this.busySince;
    this.tokens += outcome.tokens;
    if (outcome.kind === "served") this.served++;
    else if (outcome.kind === "aborted") this.aborted++;
    else this.failed++;
    // Hand the freed slot to the oldest waiting request.
    this.waiting.shift()?.();
  }
}
