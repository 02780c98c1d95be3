/** Progress bars of long jobs on stderr (a terminal only; plain log lines otherwise for training). */
import cliProgress from "cli-progress";

import type { EvalEvent } from "../eval.js";
import type { LinearizeEvent } from "../linearize.js";

const isTerminal = () => process.stderr.isTTY === true;

/** One bar per evaluation task: items scored of the task's total. */
export class TaskProgress {
  private bar: cliProgress.SingleBar | undefined;

  readonly update = (event: EvalEvent): void => {
    if (!isTerminal()) return;
    if (event.kind === "task") {
      this.stop();
      this.bar = new cliProgress.SingleBar(
        { stream: process.stderr, format: `${event.task.padEnd(16)} [{bar}] {value}/{total}`, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(1, 0);
    } else if (event.kind === "progress") {
      this.bar?.setTotal(event.total);
      this.bar?.update(event.done);
    }
  };

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  return s >= 3600
    ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
    : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

/**
 * Training: a bar with step, loss, tokens/s and ETA on a terminal; otherwise one line per
 * stage, evaluation and (every tenth) step, so logs stay readable.
 */
export class TrainProgress {
  private bar: cliProgress.SingleBar | undefined;
  private readonly terminal = isTerminal();

  readonly update = (event: LinearizeEvent): void => {
    switch (event.kind) {
      case "step": {
        const values = {
          loss: event.loss.toFixed(3),
          speed: event.tokensPerSecond.toFixed(0),
          eta: duration(event.etaSeconds),
        };
        if (this.terminal) {
          if (!this.bar) {
            this.bar = new cliProgress.SingleBar(
              {
                stream: process.stderr,
                format: "training [{bar}] step {value}/{total}  loss {loss}  {speed} tokens/s  ETA {eta}",
                hideCursor: true,
              },
              cliProgress.Presets.shades_classic,
            );
            this.bar.start(event.totalSteps, 0, values);
          }
          this.bar.update(event.step, values);
        } else if (event.step === 1 || event.step % 10 === 0 || event.step === event.totalSteps) {
          process.stderr.write(
            `step ${event.step}/${event.totalSteps}  loss ${values.loss}  ${values.speed} tokens/s  ETA ${values.eta}\n`,
          );
        }
        break;
      }
      case "stage":
        this.stop();
        process.stderr.write(`${event.stage}...\n`);
        break;
      case "eval":
        this.stop();
        process.stderr.write(
          `  ${event.name}: validation loss ${event.loss.toFixed(4)}, perplexity ${event.ppl.toFixed(2)}\n`,
        );
        break;
      case "saved":
        this.stop();
        process.stderr.write(`  saved ${event.path}\n`);
        break;
      case "sample":
        break;
    }
  };

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
