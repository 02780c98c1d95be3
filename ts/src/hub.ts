/**
 * Models by Hugging Face Hub id: `owner/name`, `owner/name@revision`, `owner/name/file.gguf`
 * (and `owner/name@revision/file.gguf`), downloaded with the Hub's own conventions so that the
 * files are shared with Python's huggingface_hub:
 *
 * - the cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
 *   `models--owner--name/blobs/<etag>`, `snapshots/<commit>/<file>` (relative symlinks to the
 *   blobs) and `refs/<revision>` (the commit a branch or tag resolved to);
 * - the endpoint: `$HF_ENDPOINT` (default https://huggingface.co), with `resolve/` and
 *   `api/models/` URLs; `Authorization: Bearer $HF_TOKEN` (or the token `huggingface-cli login`
 *   saved) sent to the endpoint only, never to the CDN it redirects to;
 * - `HF_HUB_OFFLINE=1`: the cache only, with an error naming what is missing.
 *
 * Files already in the cache are used without asking the Hub (name a revision, or delete
 * `refs/<revision>`, to pick up a newer commit). Downloads go to `blobs/<etag>.incomplete`, are
 * resumed with a Range request after a dropped connection (and restarted cleanly when the
 * server ignores Range), checked by size and, for LFS files, by sha256, then renamed into place.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { copyFile, mkdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";

import type { ProgressCallback } from "./backend.js";
import { LigerError, type LigerErrorCode } from "./errors.js";
import { pipeToFile } from "./stream-to-file.js";

// ---- ids -----------------------------------------------------------------------------------

export interface HubModelId {
  owner: string;
  name: string;
  /** `owner/name`. */
  repo: string;
  /** The branch, tag or commit (default "main"). */
  revision: string;
  /** A .gguf file inside the repository, or undefined for a Hugging Face model directory. */
  file?: string;
}

const SEGMENT = "[A-Za-z0-9._-]+";
const ID_PATTERN = new RegExp(`^(${SEGMENT})/(${SEGMENT})(?:@(${SEGMENT}))?((?:/${SEGMENT})*/${SEGMENT}\\.gguf)?$`);
const COMMIT_PATTERN = /^[0-9a-f]{40}$/;

/**
 * Parse `owner/name[@revision][/path/to/file.gguf]`; undefined when the string does not follow
 * that grammar. Says nothing about local paths: see `hubModelId`.
 */
export function parseHubId(text: string): HubModelId | undefined {
  const match = ID_PATTERN.exec(text);
  if (!match) return undefined;
  const [, owner, name, revision = "main", filePath] = match;
  const file = filePath?.slice(1);
  const segments = [owner, name, revision, ...(file ? file.split("/") : [])];
  if (segments.some((s) => s === "." || s === ".." || s.startsWith("-") || s.endsWith(".incomplete"))) {
    return undefined;
  }
  return { owner, name, repo: `${owner}/${name}`, revision, file };
}

/** A Hub id, when `text` is not an existing local path and follows the id grammar. */
export function hubModelId(text: string): HubModelId | undefined {
  if (existsSync(text)) return undefined;
  return parseHubId(text);
}

// ---- options and environment --------------------------------------------------------------

export interface HubOptions {
  /** Called with stage "download" and the fraction of this model's bytes fetched so far. */
  onProgress?: ProgressCallback;
  /** The Hub's URL (default: `$HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** The access token (default: `$HF_TOKEN`, else the token file `huggingface-cli login` writes). */
  token?: string;
  /** The cache (default: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). */
  cacheDir?: string;
  /** Use only the cache (default: `$HF_HUB_OFFLINE` set to 1/true/yes/on). */
  offline?: boolean;
}

const truthy = (value: string | undefined) => ["1", "true", "yes", "on"].includes((value ?? "").toLowerCase());

function hfHome(): string {
  return process.env.HF_HOME || join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface");
}

/** Where huggingface_hub keeps its cache: `$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`. */
export function hubCacheDir(): string {
  return process.env.HF_HUB_CACHE || process.env.HUGGINGFACE_HUB_CACHE || join(hfHome(), "hub");
}

function defaultToken(): string | undefined {
  const fromEnv = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv) return fromEnv.trim();
  try {
    const saved = readFileSync(process.env.HF_TOKEN_PATH || join(hfHome(), "token"), "utf8").trim();
    return saved || undefined;
  } catch {
    return undefined;
  }
}

interface Context {
  endpoint: string;
  token: string | undefined;
  offline: boolean;
  repoDir: string;
  id: HubModelId;
  onProgress?: ProgressCallback;
}

// ---- errors --------------------------------------------------------------------------------

/** Why a Hub download failed. */
export type HubErrorReason =
  "unauthorized" | "not_found" | "offline" | "network" | "integrity" | "no_usable_files" | "server";

/** A LigerError (code MODEL_FETCH_FAILED, or INVALID_FILE for a repository with no usable files) with its reason. */
export class HubError extends LigerError {
  constructor(
    code: LigerErrorCode,
    readonly reason: HubErrorReason,
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.name = "HubError";
  }
}

const fetchFailed = (reason: HubErrorReason, message: string, status?: number, cause?: unknown) =>
  new HubError("MODEL_FETCH_FAILED", reason, message, status, { cause });

function statusError(ctx: Context, url: string, response: Response): HubError {
  const { status } = response;
  const hubCode = response.headers.get("x-error-code");
  const hubMessage = response.headers.get("x-error-message");
  const detail = `${url}: HTTP ${status}${hubCode ? ` ${hubCode}` : ""}${hubMessage ? ` (${hubMessage})` : ""}`;
  if (status === 401 || status === 403) {
    const advice = ctx.token
      ? "the token in HF_TOKEN has no access to it: check the token, and accept the model's terms on its Hub page if it is gated"
      : "the repository is private or gated: set HF_TOKEN to an access token (https://huggingface.co/settings/tokens) with access to it";
    return fetchFailed("unauthorized", `not allowed to download ${ctx.id.repo}: ${advice}. ${detail}`, status);
  }
  if (status === 404) {
    const what =
      hubCode === "RevisionNotFound" ? `revision "${ctx.id.revision}"` : hubCode === "EntryNotFound" ? "file" : "";
    return fetchFailed(
      "not_found",
      `${ctx.id.repo}${what ? ` (${what})` : ""} was not found on ${ctx.endpoint}: check the id (owner/name, ` +
        `@revision, /file.gguf), or set HF_TOKEN if it is private. ${detail}`,
      status,
    );
  }
  return fetchFailed("server", `the Hub answered ${detail}; try again later, or set HF_ENDPOINT to a mirror`, status);
}

// ---- the entry point -----------------------------------------------------------------------

const DIRECTORY_REQUIRED = ["config.json", "tokenizer.json"];
const DIRECTORY_OPTIONAL = ["tokenizer_config.json", "generation_config.json"];
const SAFETENSORS_INDEX = "model.safetensors.index.json";
const SAFETENSORS_SINGLE = "model.safetensors";

/**
 * Make sure the model named by a Hub id is in the cache and return its local path: the
 * snapshot's .gguf file, or the snapshot directory of a Hugging Face model.
 */
export async function downloadHubModel(idOrText: HubModelId | string, options: HubOptions = {}): Promise<string> {
  const id = typeof idOrText === "string" ? parseHubId(idOrText) : idOrText;
  if (!id) {
    throw new LigerError(
      "INVALID_ARGUMENT",
      `${JSON.stringify(idOrText)} is not a Hub model id: use owner/name, owner/name@revision or owner/name/file.gguf`,
    );
  }
  const ctx: Context = {
    endpoint: (options.endpoint || process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, ""),
    token: options.token ?? defaultToken(),
    offline: options.offline ?? truthy(process.env.HF_HUB_OFFLINE),
    repoDir: join(options.cacheDir || hubCacheDir(), `models--${id.owner}--${id.name}`),
    id,
    onProgress: options.onProgress,
  };

  // What the cache already has: used without asking the Hub.
  const cachedCommit = await cachedCommitFor(ctx);
  const missing = cachedCommit ? await missingFromSnapshot(ctx, cachedCommit) : undefined;
  if (cachedCommit && missing!.length === 0) return snapshotPath(ctx, cachedCommit);
  if (ctx.offline) {
    const what = cachedCommit
      ? `the cache has commit ${cachedCommit} of ${id.repo} but not ${missing!.join(", ")}`
      : `the cache has no ${COMMIT_PATTERN.test(id.revision) ? `snapshot ${id.revision}` : `refs/${id.revision}`} for ${id.repo}`;
    throw fetchFailed(
      "offline",
      `HF_HUB_OFFLINE is set and ${what} (in ${ctx.repoDir}): download it once online, or unset HF_HUB_OFFLINE`,
    );
  }

  try {
    return id.file ? await downloadSingleFile(ctx, id.file) : await downloadDirectory(ctx);
  } catch (err) {
    if (err instanceof LigerError) throw err;
    throw fetchFailed("network", `could not download ${id.repo}: ${describe(err)}`, undefined, err);
  }
}

async function downloadSingleFile(ctx: Context, file: string): Promise<string> {
  const meta = await fileMetadata(ctx, ctx.id.revision, file);
  const commit = meta.commit ?? (COMMIT_PATTERN.test(ctx.id.revision) ? ctx.id.revision : undefined);
  if (!commit) throw fetchFailed("server", `${meta.url} sent no X-Repo-Commit header: is ${ctx.endpoint} a Hub?`);
  const progress = new ByteProgress(ctx.onProgress, meta.size);
  await fetchBlob(ctx, meta, progress);
  await linkSnapshot(ctx, commit, file, meta.etag);
  await writeRef(ctx, commit);
  return snapshotPath(ctx, commit);
}

async function downloadDirectory(ctx: Context): Promise<string> {
  const { id } = ctx;
  const infoUrl = `${ctx.endpoint}/api/models/${id.owner}/${id.name}/revision/${encodeURIComponent(id.revision)}`;
  const response = await hubRequest(ctx, infoUrl, "GET", {}, true);
  if (!response.ok) throw statusError(ctx, infoUrl, response);
  const info = (await response.json()) as { sha?: string; siblings?: { rfilename: string }[] };
  const commit = info.sha;
  if (!commit || !Array.isArray(info.siblings))
    throw fetchFailed("server", `${infoUrl} did not list a commit and files`);
  const available = new Set(info.siblings.map((s) => s.rfilename));

  const lacking = DIRECTORY_REQUIRED.filter((f) => !available.has(f));
  const weights = available.has(SAFETENSORS_INDEX)
    ? [SAFETENSORS_INDEX]
    : available.has(SAFETENSORS_SINGLE)
      ? [SAFETENSORS_SINGLE]
      : [];
  if (lacking.length > 0 || weights.length === 0) {
    const ggufs = [...available].filter((f) => f.endsWith(".gguf"));
    throw new HubError(
      "INVALID_FILE",
      "no_usable_files",
      `${id.repo}@${id.revision} is not a model this library loads as a directory: it lacks ` +
        `${[...lacking, ...(weights.length ? [] : [`${SAFETENSORS_SINGLE} or ${SAFETENSORS_INDEX}`])].join(", ")}` +
        (ggufs.length
          ? `. It has GGUF files: name one, e.g. ${id.repo}${id.revision === "main" ? "" : `@${id.revision}`}/${ggufs[0]}`
          : ""),
    );
  }

  // The index first: it names the shards.
  const wanted = [...DIRECTORY_REQUIRED, ...DIRECTORY_OPTIONAL.filter((f) => available.has(f)), ...weights];
  const metas = new Map<string, FileMetadata>();
  for (const file of wanted) metas.set(file, await fileMetadata(ctx, commit, file));
  if (weights[0] === SAFETENSORS_INDEX) {
    const indexMeta = metas.get(SAFETENSORS_INDEX)!;
    await fetchBlob(ctx, indexMeta, new ByteProgress(undefined, indexMeta.size));
    await linkSnapshot(ctx, commit, SAFETENSORS_INDEX, indexMeta.etag);
    for (const shard of await shardsOf(join(snapshotPath(ctx, commit), SAFETENSORS_INDEX))) {
      if (!available.has(shard)) {
        throw new HubError(
          "INVALID_FILE",
          "no_usable_files",
          `${id.repo}: ${SAFETENSORS_INDEX} names ${shard}, which the repository lacks`,
        );
      }
      if (!metas.has(shard)) metas.set(shard, await fileMetadata(ctx, commit, shard));
    }
  }

  const progress = new ByteProgress(
    ctx.onProgress,
    [...metas.values()].reduce((sum, m) => sum + m.size, 0),
  );
  for (const [file, meta] of metas) {
    await fetchBlob(ctx, meta, progress);
    await linkSnapshot(ctx, commit, file, meta.etag);
  }
  await writeRef(ctx, commit);
  return snapshotPath(ctx, commit);
}

// ---- the cache -----------------------------------------------------------------------------

function snapshotPath(ctx: Context, commit: string): string {
  const dir = join(ctx.repoDir, "snapshots", commit);
  return ctx.id.file ? join(dir, ...ctx.id.file.split("/")) : dir;
}

async function cachedCommitFor(ctx: Context): Promise<string | undefined> {
  if (COMMIT_PATTERN.test(ctx.id.revision)) return ctx.id.revision;
  const ref = await readFile(join(ctx.repoDir, "refs", ctx.id.revision), "utf8").catch(() => undefined);
  const commit = ref?.trim();
  return commit && COMMIT_PATTERN.test(commit) ? commit : undefined;
}

const isFile = async (path: string) => (await stat(path).catch(() => undefined))?.isFile() === true;

/** The needed files the snapshot lacks (following its symlinks). */
async function missingFromSnapshot(ctx: Context, commit: string): Promise<string[]> {
  const dir = join(ctx.repoDir, "snapshots", commit);
  if (ctx.id.file) return (await isFile(join(dir, ctx.id.file))) ? [] : [ctx.id.file];
  const missing: string[] = [];
  for (const file of DIRECTORY_REQUIRED) if (!(await isFile(join(dir, file)))) missing.push(file);
  if (await isFile(join(dir, SAFETENSORS_INDEX))) {
    const shards = await shardsOf(join(dir, SAFETENSORS_INDEX)).catch(() => undefined);
    if (!shards) missing.push(SAFETENSORS_INDEX);
    for (const shard of shards ?? []) if (!(await isFile(join(dir, shard)))) missing.push(shard);
  } else if (!(await isFile(join(dir, SAFETENSORS_SINGLE)))) {
    missing.push(`${SAFETENSORS_SINGLE} (or ${SAFETENSORS_INDEX} and its shards)`);
  }
  return missing;
}

async function shardsOf(indexPath: string): Promise<string[]> {
  const index = JSON.parse(await readFile(indexPath, "utf8")) as { weight_map?: Record<string, string> };
  const shards = [...new Set(Object.values(index.weight_map ?? {}))].sort();
  if (shards.length === 0 || shards.some((s) => typeof s !== "string" || s.split("/").includes(".."))) {
    throw new HubError("INVALID_FILE", "no_usable_files", `${indexPath} lists no usable weight_map`);
  }
  return shards;
}

async function linkSnapshot(ctx: Context, commit: string, file: string, etag: string): Promise<void> {
  const pointer = join(ctx.repoDir, "snapshots", commit, ...file.split("/"));
  const blob = join(ctx.repoDir, "blobs", etag);
  await mkdir(dirname(pointer), { recursive: true });
  // Made under a temporary name and renamed over the old one: never a moment without it.
  const temp = `${pointer}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`;
  try {
    await symlink(relative(dirname(pointer), blob), temp);
  } catch {
    // Where symlinks are not allowed (as huggingface_hub does there): a copy.
    await copyFile(blob, temp);
  }
  await rename(temp, pointer);
}

async function writeRef(ctx: Context, commit: string): Promise<void> {
  if (ctx.id.revision === commit) return;
  const ref = join(ctx.repoDir, "refs", ctx.id.revision);
  await mkdir(dirname(ref), { recursive: true });
  await writeFile(ref, commit);
}

// ---- HTTP ----------------------------------------------------------------------------------

const USER_AGENT = "liger (huggingface_hub-compatible)";

/**
 * A request that follows redirects itself: the token goes only to the endpoint's origin.
 * With `followCdn` false, a redirect to another origin is returned as is (its headers carry
 * the file's metadata, as the Hub's resolve answers do).
 */
async function hubRequest(
  ctx: Context,
  url: string,
  method: "GET" | "HEAD",
  headers: Record<string, string>,
  followCdn: boolean,
): Promise<Response> {
  const origin = new URL(ctx.endpoint).origin;
  let current = url;
  for (let hop = 0; hop < 10; hop++) {
    const sameOrigin = new URL(current).origin === origin;
    const all: Record<string, string> = { "user-agent": USER_AGENT, ...headers };
    if (ctx.token && sameOrigin) all.authorization = `Bearer ${ctx.token}`;
    let response: Response;
    try {
      response = await fetch(current, { method, headers: all, redirect: "manual" });
    } catch (err) {
      throw fetchFailed(
        "network",
        `could not reach ${current}: ${describe(err)}. Check the connection, or set HF_ENDPOINT to a mirror ` +
          `(or HF_HUB_OFFLINE=1 to use only the cache)`,
        undefined,
        err,
      );
    }
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || !location) return response;
    const next = new URL(location, current).toString();
    if (!followCdn && new URL(next).origin !== origin) return response;
    await response.body?.cancel().catch(() => {});
    current = next;
  }
  throw fetchFailed("server", `too many redirects from ${url}`);
}

interface FileMetadata {
  url: string;
  commit: string | undefined;
  /** The blob's name: the sha256 for LFS files, the git blob id otherwise. */
  etag: string;
  size: number;
}

function normalizeEtag(value: string | null): string | undefined {
  if (!value) return undefined;
  return value.replace(/^W\//, "").replace(/^"|"$/g, "") || undefined;
}

async function fileMetadata(ctx: Context, revision: string, file: string): Promise<FileMetadata> {
  const url = `${ctx.endpoint}/${ctx.id.owner}/${ctx.id.name}/resolve/${encodeURIComponent(revision)}/${file
    .split("/")
    .map(encodeURIComponent)
    .join("/")}`;
  const response = await hubRequest(ctx, url, "HEAD", { "accept-encoding": "identity" }, false);
  if (response.status >= 400) throw statusError(ctx, url, response);
  const headers = response.headers;
  const etag = normalizeEtag(headers.get("x-linked-etag")) ?? normalizeEtag(headers.get("etag"));
  const size = Number(headers.get("x-linked-size") ?? headers.get("content-length"));
  if (!etag || !/^[A-Za-z0-9._-]+$/.test(etag) || !Number.isSafeInteger(size) || size < 0) {
    throw fetchFailed("server", `${url} sent no usable ETag and size: is ${ctx.endpoint} a Hub?`);
  }
  return { url, commit: headers.get("x-repo-commit") ?? undefined, etag, size };
}

class ByteProgress {
  private done = 0;
  private last = -1;
  constructor(
    private readonly onProgress: ProgressCallback | undefined,
    private readonly total: number,
  ) {}

  add(bytes: number): void {
    this.done += bytes;
    this.report();
  }

  /** Bytes counted for a download that restarts from scratch. */
  subtract(bytes: number): void {
    this.done = Math.max(0, this.done - bytes);
  }

  report(): void {
    if (!this.onProgress) return;
    const fraction = this.total > 0 ? Math.min(1, this.done / this.total) : 1;
    if (fraction - this.last >= 0.005 || (fraction === 1 && this.last !== 1)) {
      this.last = fraction;
      this.onProgress({ stage: "download", fraction });
    }
  }
}

const MAX_ATTEMPTS = 6;

/** Download a blob into `blobs/<etag>` (resuming `.incomplete`), checked by size and sha256. */
async function fetchBlob(ctx: Context, meta: FileMetadata, progress: ByteProgress): Promise<void> {
  const blob = join(ctx.repoDir, "blobs", meta.etag);
  if (await isFile(blob)) {
    progress.add(meta.size);
    return;
  }
  // Loads of the same model at once share one download (and one `.incomplete` file).
  const running = inFlight.get(blob);
  if (running) {
    await running;
    progress.add(meta.size);
    return;
  }
  const download = downloadBlob(ctx, meta, blob, progress);
  inFlight.set(blob, download);
  try {
    await download;
  } finally {
    inFlight.delete(blob);
  }
}

const inFlight = new Map<string, Promise<void>>();

async function downloadBlob(ctx: Context, meta: FileMetadata, blob: string, progress: ByteProgress): Promise<void> {
  await mkdir(dirname(blob), { recursive: true });
  const partial = `${blob}.incomplete`;
  let counted = 0; // bytes of this file counted in progress
  let lastError: unknown;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    let have = (await stat(partial).catch(() => undefined))?.size ?? 0;
    if (have > meta.size) {
      await rm(partial, { force: true });
      have = 0;
    }
    if (have !== counted) {
      progress.subtract(counted);
      progress.add(have);
      counted = have;
    }
    if (have === meta.size) break;
    const response = await hubRequest(ctx, meta.url, "GET", have > 0 ? { range: `bytes=${have}-` } : {}, true);
    if (response.status >= 400) {
      await response.body?.cancel().catch(() => {});
      throw statusError(ctx, meta.url, response);
    }
    let append = false;
    if (response.status === 206) {
      const range = /^bytes (\d+)-/.exec(response.headers.get("content-range") ?? "");
      append = range !== null && Number(range[1]) === have;
    }
    if (!append) {
      // The server ignored the Range request (or answered another range): start over.
      progress.subtract(counted);
      counted = 0;
      if (response.status === 206) {
        await response.body?.cancel().catch(() => {});
        await rm(partial, { force: true });
        continue;
      }
    }
    if (!response.body) throw fetchFailed("server", `${meta.url} sent no body`);
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        counted += chunk.length;
        progress.add(chunk.length);
        callback(null, chunk);
      },
    });
    try {
      const body = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>);
      await pipeToFile(body, counter, partial, append ? "a" : "w");
      lastError = undefined;
    } catch (err) {
      // A dropped connection: what arrived stays in `.incomplete`, and the next try resumes it.
      lastError = err;
      continue;
    }
  }
  const size = (await stat(partial).catch(() => undefined))?.size ?? 0;
  if (size !== meta.size) {
    if (lastError !== undefined) {
      throw fetchFailed(
        "network",
        `the download of ${meta.url} broke off at ${size} of ${meta.size} bytes (${describe(lastError)}); ` +
          `run again to resume it`,
        undefined,
        lastError,
      );
    }
    await rm(partial, { force: true });
    throw fetchFailed("integrity", `${meta.url} gave ${size} bytes, the Hub says ${meta.size}; run again`);
  }
  if (/^[0-9a-f]{64}$/.test(meta.etag)) {
    const hash = createHash("sha256");
    await pipeline(createReadStream(partial), hash);
    const digest = hash.digest("hex");
    if (digest !== meta.etag) {
      await rm(partial, { force: true });
      throw fetchFailed(
        "integrity",
        `${meta.url} has sha256 ${digest}, the Hub says ${meta.etag} (corrupt download?); run again`,
      );
    }
  }
  await rename(partial, blob);
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
}
