import { createWriteStream } from "node:fs";
import type { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";

/**
 * Pipe `source` through `meter` into the file at `path` ("w" truncates, "a" appends). On an
 * error the promise rejects only once the file is closed: a pipeline rejects first, and a write
 * still under way would otherwise land after the caller has read the file's size or removed it.
 */
export async function pipeToFile(source: Readable, meter: Transform, path: string, flags: "w" | "a"): Promise<void> {
  const file = createWriteStream(path, { flags });
  try {
    await pipeline(source, meter, file);
  } catch (err) {
    if (!file.closed) await new Promise<void>((resolve) => file.once("close", () => resolve()));
    throw err;
  }
}
