/**
 * Models by Hub id, against a local stand-in for the Hugging Face Hub on 127.0.0.1: a "hub"
 * server with the Hub's URL layout (resolve/, api/models/, redirects of renamed repositories,
 * 401/404 with X-Error-Code) and a "cdn" server on another origin that LFS files redirect to,
 * with Range support, and faults to inject (a dropped connection, Range ignored). Each test
 * points HF_ENDPOINT and HF_HOME at the server and a fresh folder, through the environment.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";

import {
  DEFAULT_MODEL_SHA256,
  downloadHubModel,
  HubError,
  hubModelId,
  LigerError,
  linearize,
  loadModel,
  parseHubId,
  type LinearizeEvent,
} from "../ts/dist/index.js";
import { modelPath, sharedModel } from "./helpers.js";

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const gitSha1 = (data: Buffer) =>
  createHash("sha1")
    .update(Buffer.concat([Buffer.from(`blob ${data.length}\0`), data]))
    .digest("hex");

interface RepoFile {
  data: Buffer;
  lfs: boolean;
}
interface Repo {
  commit: string;
  files: Map<string, RepoFile>;
  token?: string;
}

const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKEN = "hf_test_secret";

const tiny = randomBytes(3 * 1024 * 1024 + 123);
const ggufRepoFiles = (): Map<string, RepoFile> =>
  new Map([
    [GGUF, { data: readFileSync(modelPath()), lfs: true }],
    ["tiny.gguf", { data: tiny, lfs: true }],
    ["README.md", { data: Buffer.from("# a model\n"), lfs: false }],
  ]);

const shards = [randomBytes(200_000), randomBytes(150_000)];
const shardNames = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
const json = (value: unknown) => Buffer.from(JSON.stringify(value));

const repos = new Map<string, Repo>();

interface Hit {
  server: "hub" | "cdn";
  method: string;
  url: string;
  range?: string;
  authorization?: string;
  status?: number;
}
const hits: Hit[] = [];
/** Faults for the next CDN requests: close the socket after N bytes, or ignore Range. */
const faults = { dropAfter: [] as number[], ignoreRange: false };

let hub: Server;
let cdn: Server;
let hubUrl = "";
let cdnUrl = "";
const blobsBySha = new Map<string, Buffer>();
const work = mkdtempSync(join(tmpdir(), "liger-hub-"));

function record(server: Hit["server"], req: IncomingMessage, res: ServerResponse): void {
  const hit: Hit = {
    server,
    method: req.method ?? "",
    url: req.url ?? "",
    range: req.headers.range,
    authorization: req.headers.authorization,
  };
  hits.push(hit);
  res.on("finish", () => (hit.status = res.statusCode));
}

function hubHandler(req: IncomingMessage, res: ServerResponse): void {
  record("hub", req, res);
  const url = new URL(req.url ?? "/", hubUrl);
  const notFound = (code: string) => {
    res.writeHead(404, { "x-error-code": code, "x-error-message": `${code} (test server)` });
    res.end();
  };
  // A renamed repository: the Hub answers with a relative redirect to its new name.
  if (url.pathname.startsWith("/old-org/tiny-gguf/")) {
    res.writeHead(307, { location: url.pathname.replace("/old-org/", "/test-org/") });
    res.end();
    return;
  }
  const api = /^\/api\/models\/([^/]+)\/([^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  const resolve = /^\/([^/]+)\/([^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  const match = api ?? resolve;
  if (!match) return notFound("RepoNotFound");
  const repo = repos.get(`${match[1]}/${match[2]}`);
  if (!repo) return notFound("RepoNotFound");
  if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) {
    res.writeHead(401, { "x-error-code": "GatedRepo", "x-error-message": "Access restricted (test server)" });
    res.end();
    return;
  }
  const revision = decodeURIComponent(match[3]);
  if (revision !== "main" && revision !== repo.commit) return notFound("RevisionNotFound");
  if (api) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        id: `${match[1]}/${match[2]}`,
        sha: repo.commit,
        siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })),
      }),
    );
    return;
  }
  const file = repo.files.get(decodeURIComponent(match[4]));
  if (!file) return notFound("EntryNotFound");
  if (file.lfs) {
    const sha = sha256(file.data);
    blobsBySha.set(sha, file.data);
    res.writeHead(302, {
      location: `${cdnUrl}/blobs/${sha}`,
      "x-repo-commit": repo.commit,
      "x-linked-etag": `"${sha}"`,
      "x-linked-size": String(file.data.length),
      etag: `"${gitSha1(file.data)}"`,
    });
    res.end();
    return;
  }
  res.writeHead(200, {
    "x-repo-commit": repo.commit,
    etag: `"${gitSha1(file.data)}"`,
    "content-length": file.data.length,
  });
  res.end(req.method === "HEAD" ? undefined : file.data);
}

function cdnHandler(req: IncomingMessage, res: ServerResponse): void {
  record("cdn", req, res);
  const data = blobsBySha.get((req.url ?? "").replace(/^\/blobs\//, ""));
  if (!data) {
    res.writeHead(404);
    res.end();
    return;
  }
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  const start = range && !faults.ignoreRange ? Number(range[1]) : 0;
  const body = data.subarray(start);
  res.writeHead(start > 0 ? 206 : 200, {
    "content-length": body.length,
    ...(start > 0 ? { "content-range": `bytes ${start}-${data.length - 1}/${data.length}` } : {}),
  });
  if (req.method === "HEAD") return void res.end();
  const dropAfter = faults.dropAfter.shift();
  if (dropAfter !== undefined) {
    res.write(body.subarray(0, dropAfter), () => res.socket?.destroy());
    return;
  }
  res.end(body);
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no server address");
  return `http://127.0.0.1:${address.port}`;
}

const savedEnv = { ...process.env };
const HF_VARS = ["HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"];

beforeAll(async () => {
  repos.set("test-org/tiny-gguf", { commit: COMMIT, files: ggufRepoFiles() });
  repos.set("private-org/tiny-gguf", { commit: COMMIT, files: ggufRepoFiles(), token: TOKEN });
  const weightMap = { "model.embed_tokens.weight": shardNames[0], "lm_head.weight": shardNames[1] };
  repos.set("test-org/tiny-hf", {
    commit: "fedcba9876543210fedcba9876543210fedcba98",
    files: new Map<string, RepoFile>([
      ["config.json", { data: json({ model_type: "llama" }), lfs: false }],
      ["tokenizer.json", { data: json({ model: { type: "BPE" } }), lfs: false }],
      ["tokenizer_config.json", { data: json({ bos_token: "<s>" }), lfs: false }],
      ["model.safetensors.index.json", { data: json({ metadata: {}, weight_map: weightMap }), lfs: false }],
      [shardNames[0], { data: shards[0], lfs: true }],
      [shardNames[1], { data: shards[1], lfs: true }],
      ["pytorch_model.bin", { data: randomBytes(1000), lfs: true }],
      ["onnx/model.onnx", { data: randomBytes(1000), lfs: true }],
      ["README.md", { data: Buffer.from("readme"), lfs: false }],
    ]),
  });
  repos.set("test-org/no-weights", {
    commit: COMMIT,
    files: new Map<string, RepoFile>([
      ["README.md", { data: Buffer.from("readme"), lfs: false }],
      ["model.Q8_0.gguf", { data: tiny, lfs: true }],
    ]),
  });
  hub = createServer(hubHandler);
  cdn = createServer(cdnHandler);
  hubUrl = await listen(hub);
  cdnUrl = await listen(cdn);
});

afterAll(async () => {
  await Promise.all([hub, cdn].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  rmSync(work, { recursive: true, force: true });
});

let home = "";
beforeEach(() => {
  hits.length = 0;
  faults.dropAfter = [];
  faults.ignoreRange = false;
  for (const name of HF_VARS) delete process.env[name];
  home = mkdtempSync(join(work, "hf-home-"));
  process.env.HF_HOME = home;
  process.env.HF_ENDPOINT = hubUrl;
});

afterEach(() => {
  for (const name of HF_VARS) {
    if (savedEnv[name] === undefined) delete process.env[name];
    else process.env[name] = savedEnv[name];
  }
});

const repoDir = (repo: string) => join(home, "hub", `models--${repo.replace("/", "--")}`);

async function failure(work: Promise<unknown>): Promise<HubError> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LigerError);
  expect(err).toBeInstanceOf(HubError);
  return err as HubError;
}

describe("Hub ids", () => {
  it("parses owner/name[@revision][/file.gguf] and leaves local paths alone", () => {
    expect(parseHubId("HuggingFaceTB/SmolLM2-135M-Instruct")).toEqual({
      owner: "HuggingFaceTB",
      name: "SmolLM2-135M-Instruct",
      repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
      revision: "main",
      file: undefined,
    });
    expect(parseHubId("a/b@v1.0/sub/dir/m.Q4_0.gguf")).toMatchObject({ revision: "v1.0", file: "sub/dir/m.Q4_0.gguf" });
    expect(parseHubId("a/b/m.gguf")).toMatchObject({ repo: "a/b", revision: "main", file: "m.gguf" });
    for (const notAnId of [
      "a",
      "/abs/b",
      "./a/b",
      "../a/b",
      "a/b/c",
      "a/b/c.bin",
      "a b/c",
      "a/b@",
      "a/../b.gguf",
      "a/b/",
    ]) {
      expect(parseHubId(notAnId), notAnId).toBeUndefined();
    }
    // An existing local path is never an id, even when it reads as one.
    expect(parseHubId("test/fixtures")).toBeDefined();
    expect(hubModelId("test/fixtures")).toBeUndefined();
  });

  it("a missing local path that is not an id keeps its old error", async () => {
    const err = await loadModel(join(work, "missing", "model.gguf")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LigerError);
    expect((err as LigerError).code).not.toBe("MODEL_FETCH_FAILED");
    expect(hits).toEqual([]);
  });
});

describe("downloading a .gguf by Hub id", () => {
  it("downloads into huggingface_hub's cache layout, loads, and generates as the local file does", async () => {
    const stages: { stage: string; fraction: number }[] = [];
    const model = await loadModel(`test-org/tiny-gguf/${GGUF}`, { onProgress: (e) => stages.push(e) });
    const dir = repoDir("test-org/tiny-gguf");
    expect(model.path).toBe(join(dir, "snapshots", COMMIT, GGUF));
    const downloads = stages.filter((e) => e.stage === "download");
    expect(downloads.length).toBeGreaterThan(1);
    expect(downloads.at(-1)!.fraction).toBe(1);

    // blobs/<sha256>, snapshots/<commit>/<file> as a relative symlink, refs/main.
    expect(readdirSync(join(dir, "blobs"))).toEqual([DEFAULT_MODEL_SHA256]);
    const pointer = join(dir, "snapshots", COMMIT, GGUF);
    expect(lstatSync(pointer).isSymbolicLink()).toBe(true);
    expect(readlinkSync(pointer)).toBe(join("..", "..", "blobs", DEFAULT_MODEL_SHA256));
    expect(readFileSync(join(dir, "refs", "main"), "utf8")).toBe(COMMIT);
    expect(sha256(readFileSync(pointer))).toBe(DEFAULT_MODEL_SHA256);
    // Only the file asked for; the token is never sent anywhere when unset.
    expect(hits.some((h) => h.url.includes("README.md") || h.url.includes("tiny.gguf"))).toBe(false);
    expect(hits.every((h) => h.authorization === undefined)).toBe(true);

    const local = await sharedModel();
    const options = { temperature: 0, maxTokens: 24 };
    const prompt = "The capital of France is";
    const fromHub = await model.generate(prompt, options).result;
    const fromFile = await local.generate(prompt, options).result;
    expect(fromHub.text).toBe(fromFile.text);
    expect(fromHub.text.length).toBeGreaterThan(0);

    // A second load asks the Hub nothing.
    hits.length = 0;
    const again = await loadModel(`test-org/tiny-gguf/${GGUF}`);
    expect(again.path).toBe(model.path);
    expect(hits).toEqual([]);
    // By commit, too.
    expect(await downloadHubModel(`test-org/tiny-gguf@${COMMIT}/${GGUF}`)).toBe(model.path);
    expect(hits).toEqual([]);

    // linearize takes the same id: an untrained conversion of the cached file.
    const events: LinearizeEvent[] = [];
    const out = join(mkdtempSync(join(tmpdir(), "liger-hub-run-")), "run");
    await linearize(`test-org/tiny-gguf/${GGUF}`, {
      out,
      data: null,
      sample: false,
      onProgress: (e) => events.push(e),
    });
    expect(events).toContainEqual({ kind: "stage", stage: `downloading test-org/tiny-gguf/${GGUF}` });
    expect(hits).toEqual([]);
    expect((await loadModel(out)).info.liger).toBeTruthy();
    rmSync(dirname(out), { recursive: true, force: true });
  }, 120_000);

  it("follows the Hub's relative redirect of a renamed repository, and the CDN's absolute one", async () => {
    const path = await downloadHubModel("old-org/tiny-gguf/tiny.gguf");
    expect(sha256(readFileSync(path))).toBe(sha256(tiny));
    expect(hits.find((h) => h.url.startsWith("/old-org/"))?.status).toBe(307);
    expect(hits.some((h) => h.server === "hub" && h.url.startsWith("/test-org/tiny-gguf/resolve/main/tiny.gguf"))).toBe(
      true,
    );
    expect(hits.some((h) => h.server === "cdn" && h.method === "GET")).toBe(true);
    expect(path).toBe(join(repoDir("old-org/tiny-gguf"), "snapshots", COMMIT, "tiny.gguf"));
  });

  it("resumes a download whose connection dropped mid-file with a Range request", async () => {
    const dropAt = 1024 * 1024;
    faults.dropAfter = [dropAt];
    const path = await downloadHubModel("test-org/tiny-gguf/tiny.gguf");
    expect(sha256(readFileSync(path))).toBe(sha256(tiny));
    const gets = hits.filter((h) => h.server === "cdn" && h.method === "GET");
    // The first request, then resumed ones. More than one resume can happen: the client's
    // connection pool may hand a retry a socket the server has just closed.
    expect(gets.length).toBeGreaterThanOrEqual(2);
    expect(gets[0].range).toBeUndefined();
    const resumedAt = gets.slice(1).map((h) => Number(/^bytes=(\d+)-$/.exec(h.range ?? "")?.[1]));
    // Every retry resumes: none starts the file over (a late write of the broken try once
    // made the file longer than the blob, and the next try started from zero).
    expect(resumedAt.every((at) => at > 0)).toBe(true);
    expect(resumedAt[0]).toBeLessThanOrEqual(dropAt);
    // Each resume starts where the file on disk ends: never earlier than the one before.
    expect(resumedAt).toEqual([...resumedAt].sort((a, b) => a - b));
    expect(gets.at(-1)!.status).toBe(206);
    const blobs = readdirSync(join(repoDir("test-org/tiny-gguf"), "blobs"));
    expect(blobs).toEqual([sha256(tiny)]); // no .incomplete left
  });

  it("resumes a partial file a previous run left behind", async () => {
    const blobs = join(repoDir("test-org/tiny-gguf"), "blobs");
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, `${sha256(tiny)}.incomplete`), tiny.subarray(0, 500_000));
    const path = await downloadHubModel("test-org/tiny-gguf/tiny.gguf");
    expect(sha256(readFileSync(path))).toBe(sha256(tiny));
    const gets = hits.filter((h) => h.server === "cdn" && h.method === "GET");
    expect(gets.map((g) => [g.range, g.status])).toEqual([["bytes=500000-", 206]]);
  });

  it("loads of the same id at once share one download", async () => {
    const paths = await Promise.all([1, 2, 3].map(() => downloadHubModel("test-org/tiny-gguf/tiny.gguf")));
    expect(new Set(paths).size).toBe(1);
    expect(sha256(readFileSync(paths[0]))).toBe(sha256(tiny));
    expect(hits.filter((h) => h.server === "cdn" && h.method === "GET").length).toBe(1);
  });

  it("restarts cleanly when the server ignores Range", async () => {
    faults.dropAfter = [777_777];
    faults.ignoreRange = true;
    const path = await downloadHubModel("test-org/tiny-gguf/tiny.gguf");
    expect(sha256(readFileSync(path))).toBe(sha256(tiny));
    const gets = hits.filter((h) => h.server === "cdn" && h.method === "GET");
    expect(gets.length).toBe(2);
    expect(gets[1].status).toBe(200);
    expect(gets[1].range).toMatch(/^bytes=\d+-$/);
  });

  it("401 without a token says to set HF_TOKEN; with HF_TOKEN it downloads, never sending the token to the CDN", async () => {
    const err = await failure(downloadHubModel("private-org/tiny-gguf/tiny.gguf"));
    expect(err.code).toBe("MODEL_FETCH_FAILED");
    expect(err.reason).toBe("unauthorized");
    expect(err.status).toBe(401);
    expect(err.message).toMatch(/HF_TOKEN/);

    process.env.HF_TOKEN = TOKEN;
    hits.length = 0;
    const path = await downloadHubModel("private-org/tiny-gguf/tiny.gguf");
    expect(sha256(readFileSync(path))).toBe(sha256(tiny));
    expect(hits.filter((h) => h.server === "hub").every((h) => h.authorization === `Bearer ${TOKEN}`)).toBe(true);
    expect(hits.filter((h) => h.server === "cdn").every((h) => h.authorization === undefined)).toBe(true);

    process.env.HF_TOKEN = "hf_wrong";
    const wrong = await failure(downloadHubModel("private-org/tiny-gguf@" + COMMIT.replace("0", "f") + "/tiny.gguf"));
    expect(wrong.reason).toBe("unauthorized");
    expect(wrong.message).toMatch(/token in HF_TOKEN has no access/);
  });

  it("404 for an unknown repository, file or revision says to check the id", async () => {
    for (const id of [
      "test-org/nope/tiny.gguf",
      "test-org/tiny-gguf/nope.gguf",
      "test-org/tiny-gguf@v9/tiny.gguf",
      "test-org/nope",
    ]) {
      const err = await failure(loadModel(id));
      expect(err.code, id).toBe("MODEL_FETCH_FAILED");
      expect(err.reason, id).toBe("not_found");
      expect(err.status, id).toBe(404);
      expect(err.message, id).toMatch(/check the id/);
    }
    expect(existsSync(join(repoDir("test-org/nope"), "refs"))).toBe(false);
  });

  it("HF_HUB_OFFLINE=1 uses the cache only: fails naming what is missing, succeeds once cached", async () => {
    process.env.HF_HUB_OFFLINE = "1";
    const err = await failure(downloadHubModel("test-org/tiny-gguf/tiny.gguf"));
    expect(err.reason).toBe("offline");
    expect(err.message).toMatch(/refs\/main/);
    expect(err.message).toMatch(/test-org\/tiny-gguf/);
    expect(hits).toEqual([]);

    delete process.env.HF_HUB_OFFLINE;
    const path = await downloadHubModel("test-org/tiny-gguf/tiny.gguf");
    process.env.HF_HUB_OFFLINE = "1";
    hits.length = 0;
    expect(await downloadHubModel("test-org/tiny-gguf/tiny.gguf")).toBe(path);
    const other = await failure(downloadHubModel(`test-org/tiny-gguf/${GGUF}`));
    expect(other.reason).toBe("offline");
    expect(other.message).toMatch(new RegExp(`not ${GGUF.replace(/\./g, "\\.")}`));
    expect(hits).toEqual([]);
  });
});

describe("downloading a Hugging Face model directory by Hub id", () => {
  it("fetches only the config, tokenizer files and the shards the index names", async () => {
    const dir = await downloadHubModel("test-org/tiny-hf");
    const commit = "fedcba9876543210fedcba9876543210fedcba98";
    expect(dir).toBe(join(repoDir("test-org/tiny-hf"), "snapshots", commit));
    expect(readdirSync(dir).sort()).toEqual(
      ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", ...shardNames].sort(),
    );
    expect(sha256(readFileSync(join(dir, shardNames[1])))).toBe(sha256(shards[1]));
    expect(readFileSync(join(repoDir("test-org/tiny-hf"), "refs", "main"), "utf8")).toBe(commit);
    expect(hits.some((h) => /pytorch_model|onnx|README/.test(h.url))).toBe(false);
    expect(hits[0].url).toBe("/api/models/test-org/tiny-hf/revision/main");

    hits.length = 0;
    expect(await downloadHubModel("test-org/tiny-hf")).toBe(dir);
    expect(hits).toEqual([]);
  });

  it("takes the endpoint, token, cache and offline mode as options instead of the environment", async () => {
    process.env.HF_ENDPOINT = "http://127.0.0.1:9";
    process.env.HF_HUB_OFFLINE = "1";
    const cacheDir = mkdtempSync(join(work, "custom-cache-"));
    const hub = { endpoint: hubUrl, token: TOKEN, cacheDir, offline: false };
    const path = await downloadHubModel("private-org/tiny-gguf/tiny.gguf", hub);
    expect(path).toBe(join(cacheDir, "models--private-org--tiny-gguf", "snapshots", COMMIT, "tiny.gguf"));
    expect(existsSync(join(home, "hub"))).toBe(false);
  });

  it("refuses a repository with no usable files, pointing at its GGUF files", async () => {
    const err = await failure(downloadHubModel("test-org/no-weights"));
    expect(err.code).toBe("INVALID_FILE");
    expect(err.reason).toBe("no_usable_files");
    expect(err.message).toMatch(/config\.json/);
    expect(err.message).toMatch(/test-org\/no-weights\/model\.Q8_0\.gguf/);
  });
});
