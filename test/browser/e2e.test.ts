/**
 * End to end in a real browser: a small page served on localhost loads the default model's
 * Liger conversion (the int8 bundle) with the wasm engine and streams tokens into the page,
 * driven in headless Chromium (Debian's `chromium`, installed by setup) with playwright-core.
 */
import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join } from "node:path";

import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { bundlePath, repoRoot, wasmPackageFiles } from "../helpers.js";

const TYPES: Record<string, string> = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".wasm": "application/wasm",
  ".bundle": "application/octet-stream",
};

/** Serves the page, the wasm package and the bundle (nothing else) on a free port. */
function serve(): Promise<Server> {
  const files: Record<string, string> = {
    "/": join(repoRoot, "test", "browser", "index.html"),
    "/page.js": join(repoRoot, "test", "browser", "page.js"),
    ...Object.fromEntries(Object.entries(wasmPackageFiles()).map(([url, [path]]) => [url, path])),
    "/model.bundle": bundlePath("int8"),
  };
  const server = createServer((req, res) => {
    const path = files[new URL(req.url ?? "/", "http://localhost").pathname];
    if (!path || !existsSync(path)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "text/html", "content-length": statSync(path).size });
    createReadStream(path).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const chromiumPath = process.env.LIGER_CHROMIUM || "/usr/bin/chromium";

let server: Server;
let browser: Browser;
beforeAll(async () => {
  if (!existsSync(chromiumPath))
    throw new Error(
      `Chromium is missing at ${chromiumPath}: run scripts/setup.sh (apt install chromium) or set LIGER_CHROMIUM`,
    );
  server = await serve();
  browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu"] });
});

afterAll(async () => {
  await browser?.close();
  await new Promise((resolve) => server?.close(resolve));
});

describe("the wasm engine in headless Chromium", () => {
  it("loads the int8 Liger bundle by URL and streams tokens into the page", async () => {
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const { port } = server.address() as AddressInfo;
    await page.goto(
      `http://127.0.0.1:${port}/?bundle=/model.bundle&tokens=16&prompt=${encodeURIComponent("The capital of France is")}`,
    );
    await page.waitForFunction(() => (window as any).ligerRun?.done === true, undefined, { timeout: 240_000 });
    const run = await page.evaluate(() => (window as any).ligerRun);
    const shown = await page.textContent("#output");
    console.log(
      `browser: ${run.updates.length} tokens streamed, text ${JSON.stringify(run.result?.text)}, wasm memory ${(run.memoryBytes / 2 ** 20).toFixed(1)} MiB`,
    );
    expect(run.error).toBeNull();
    expect(pageErrors).toEqual([]);
    expect(run.info.quantization).toBe("int8");
    expect(run.info.numLayers).toBe(30);
    // One page update per token, each showing the text so far, ending with the whole result.
    expect(run.updates.length).toBe(run.result.tokens.length);
    expect(run.updates.length).toBeGreaterThan(0);
    expect(run.updates.map((u: { id: number }) => u.id)).toEqual(run.result.tokens);
    expect(shown).toBe(run.result.text);
    expect(await page.textContent("#status")).toBe("done");
    expect(run.memoryBytes).toBeLessThanOrEqual(256 * 2 ** 20);
    await page.close();
  });

  it("reports a file that is not a bundle as a typed error in the page", async () => {
    const page = await browser.newPage();
    const { port } = server.address() as AddressInfo;
    // A URL that is not a bundle: the page's loader must fail with a code, not a trap.
    await page.goto(`http://127.0.0.1:${port}/?bundle=/page.js`);
    await page.waitForFunction(() => (window as any).ligerRun?.done === true, undefined, { timeout: 60_000 });
    const run = await page.evaluate(() => (window as any).ligerRun);
    expect(run.error).toMatchObject({ name: "LigerWasmError", code: "INVALID_FILE" });
    await page.close();
  });
});
