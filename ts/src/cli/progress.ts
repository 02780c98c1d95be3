/** Progress of fetch and load on stderr: a bar per stage on a terminal, nothing otherwise. */
import cliProgress from "cli-progress";

import type { ProgressEvent } from "../backend.js";

export class StageProgress {
  private bar: cliProgress.SingleBar | undefined;
  private stage: string | undefined;
  private readonly enabled = process.stderr.isTTY === true;

  readonly update = (event: ProgressEvent): void => {
    if (!this.enabled) return;
    if (event.stage !== this.stage) {
      this.stop();
      this.stage = event.stage;
      this.bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `${event.stage.padEnd(10)} [{bar}] {percentage}%`,
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(100, 0);
    }
    this.bar?.update(Math.round(event.fraction * 100));
  };

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
    this.stage = undefined;
  }
}
