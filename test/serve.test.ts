/**
 * `serve()`: the OpenAI-compatible server on the CPU engine with the default model, driven by
 * the official `openai` client (and plain fetch for requests no client would send); the
 * device options, and `liger serve` as a separate process. serve-gpu.test.ts serves on a GPU.
 */
import { spawn } from "node:child_process";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { gpuInfo, serve, type LigerModel, type LigerServer } from "../ts/dist/index.js";
import { cliPath, liger, modelPath, sharedModel } from "./helpers.js";

const API_KEY = "test-key";
let model: LigerModel;
let server: LigerServer;
let client: OpenAI;

beforeAll(async () => {
  model = await sharedModel();
  server = await serve({ model, port: 0, maxBatch: 4, apiKey: API_KEY, maxTokens: 256, maxBodyBytes: 64 * 1024 });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await server?.close();
});

const chatMessages = [{ role: "user" as const, content: "What is the capital of France?" }];

/** A raw request with the key, for bodies the client would not send. */
function post(path: string, body: string | object, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** The status and OpenAI error object of a failed request. */
async function errorOf(response: Response): Promise<{ status: number; error: Record<string, unknown> }> {
  const body = (await response.json()) as { error: Record<string, unknown> };
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(typeof body.error.message).toBe("string");
  return { status: response.status, error: body.error };
}

async function metrics(): Promise<Record<string, number>> {
  const response = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } });
  return (await response.json()) as Record<string, number>;
}

describe("serve: the OpenAI API", () => {
  it("lists the one model, named after the file", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["SmolLM2-135M-Instruct.Q4_1"]);
    expect(server.modelName).toBe("SmolLM2-135M-Instruct.Q4_1");
  });

  it("answers /health without a key, with the device and how generations share it", async () => {
    const response = await fetch(`${server.url}/health`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: "ok", device: "cpu", decoding: "concurrent" });
    expect(server.device).toBe("cpu");
  });

  it("completes a chat as generate() with the chat template does, with usage", async () => {
    const completion = await client.chat.completions.create({
      model: server.modelName,
      messages: chatMessages,
      max_tokens: 12,
      temperature: 0,
    });
    const expected = await model.generate(chatMessages, { maxTokens: 12, temperature: 0 }).result;
    const choice = completion.choices[0];
    expect(completion.object).toBe("chat.completion");
    expect(choice.message.role).toBe("assistant");
    expect(choice.message.content).toBe(expected.text);
    expect(choice.finish_reason).toBe(expected.finishReason === "length" ? "length" : "stop");
    expect(completion.usage).toEqual({
      prompt_tokens: expected.promptTokens,
      completion_tokens: expected.tokens.length,
      total_tokens: expected.promptTokens + expected.tokens.length,
    });
  });

  it("streams a chat: the deltas add up to the non-streamed answer, then a finish reason, usage and [DONE]", async () => {
    const request = { model: server.modelName, messages: chatMessages, max_tokens: 12, temperature: 0 };
    const whole = await client.chat.completions.create(request);
    const stream = await client.chat.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? "";
        finishes.push(choice.finish_reason);
      }
    }
    expect(text).toBe(whole.choices[0].message.content);
    expect(finishes.at(-1)).toBe(whole.choices[0].finish_reason);
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true);
    expect(usage).toEqual(whole.usage);

    // The raw stream ends with the sentinel OpenAI's clients wait for.
    const raw = await (await post("/v1/chat/completions", { ...request, stream: true })).text();
    expect(raw.trimEnd().endsWith("data: [DONE]")).toBe(true);
  });

  it("completes a plain prompt, streamed and not, with a stop string", async () => {
    const prompt = "The three primary colors are";
    const completion = await client.completions.create({
      model: server.modelName,
      prompt,
      max_tokens: 10,
      temperature: 0,
    });
    const expected = await model.generate(prompt, { maxTokens: 10, temperature: 0 }).result;
    expect(completion.object).toBe("text_completion");
    expect(completion.choices[0].text).toBe(expected.text);
    expect(completion.usage?.completion_tokens).toBe(expected.tokens.length);

    const stream = await client.completions.create({
      model: server.modelName,
      prompt,
      max_tokens: 10,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(expected.text);

    // Cut at the first word the greedy answer contains: finish reason "stop", the stop string left out.
    const word = expected.text.trim().split(/\s+/)[1];
    const stopped = await client.completions.create({
      model: server.modelName,
      prompt,
      max_tokens: 10,
      temperature: 0,
      stop: [word],
    });
    expect(stopped.choices[0].finish_reason).toBe("stop");
    expect(stopped.choices[0].text).toBe(expected.text.slice(0, expected.text.indexOf(word)));
  });

  it("gives 8 concurrent greedy requests the same outputs as one at a time", async () => {
    // Twice the server's max batch: half of them wait in the queue.
    const prompts = [
      "Once upon a time",
      "The best way to learn is",
      "Water boils at",
      "My favourite food is",
      "The capital of France is",
      "In the morning I",
      "A good friend is",
      "The sky is blue because",
    ];
    const ask = (prompt: string) =>
      client.completions
        .create({ model: server.modelName, prompt, max_tokens: 12, temperature: 0 })
        .then((c) => c.choices[0].text);
    const sequential: string[] = [];
    for (const prompt of prompts) sequential.push(await ask(prompt));
    const concurrent = await Promise.all(prompts.map(ask));
    expect(concurrent).toEqual(sequential);
  });

  it("aborts a streaming generation when the client goes away, and keeps serving", async () => {
    const before = await metrics();
    const controller = new AbortController();
    const stream = await client.completions.create(
      {
        model: server.modelName,
        prompt: "Count from one to a hundred: one, two,",
        stream: true,
        max_tokens: 200,
        temperature: 0,
      },
      { signal: controller.signal },
    );
    let chunks = 0;
    // The client ends the stream quietly or with an abort error, depending on its version.
    try {
      for await (const _chunk of stream) {
        if (++chunks === 3) controller.abort();
      }
    } catch {
      expect(controller.signal.aborted).toBe(true);
    }
    expect(chunks).toBe(3);

    // The server notices the closed connection and ends the generation early.
    let after = await metrics();
    for (let i = 0; i < 100 && (after.active > 0 || after.requestsAborted === before.requestsAborted); i++) {
      await new Promise((r) => setTimeout(r, 50));
      after = await metrics();
    }
    expect(after.active).toBe(0);
    expect(after.queueDepth).toBe(0);
    expect(after.requestsAborted).toBe(before.requestsAborted + 1);
    expect(after.tokensGenerated - before.tokensGenerated).toBeLessThan(200);

    const next = await client.completions.create({ model: server.modelName, prompt: "Hi", max_tokens: 4 });
    expect(next.choices).toHaveLength(1);
  });

  it("queues requests beyond --max-batch and reports the queue depth", async () => {
    const single = await serve({ model, port: 0, maxBatch: 1 });
    try {
      const ask = (prompt: string) =>
        fetch(`${single.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ prompt, max_tokens: 12, temperature: 0 }),
        }).then(async (r) => ((await r.json()) as OpenAI.Completion).choices[0].text);
      const prompts = ["Once upon a time", "Water boils at", "My favourite food is"];
      const answers = Promise.all(prompts.map(ask));
      let deepest = 0;
      while (single.metrics().requestsServed < prompts.length) {
        const m = single.metrics();
        expect(m.active).toBeLessThanOrEqual(1);
        deepest = Math.max(deepest, m.queueDepth);
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(deepest).toBeGreaterThan(0);
      const expected = [];
      for (const prompt of prompts)
        expected.push((await model.generate(prompt, { maxTokens: 12, temperature: 0 }).result).text);
      expect(await answers).toEqual(expected);
    } finally {
      await single.close();
    }
  });

  it("reports metrics as JSON", async () => {
    const m = await metrics();
    expect(m).toMatchObject({
      model: server.modelName,
      device: "cpu",
      decoding: "concurrent",
      queueDepth: 0,
      active: 0,
      maxBatch: 4,
    });
    expect(m.requestsServed).toBeGreaterThan(0);
    expect(m.tokensGenerated).toBeGreaterThan(0);
    expect(m.tokensPerSecond).toBeGreaterThan(0);
  });
});

describe("serve: auth and bad requests", () => {
  it("rejects requests without the key (401), accepts them with it", async () => {
    const missing = await fetch(`${server.url}/v1/models`);
    expect(await errorOf(missing)).toMatchObject({
      status: 401,
      error: { type: "authentication_error", code: "invalid_api_key" },
    });
    const wrong = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    await expect(
      wrong.chat.completions.create({ model: server.modelName, messages: chatMessages, max_tokens: 2 }),
    ).rejects.toMatchObject({ status: 401 });
    expect((await client.models.list()).data).toHaveLength(1);
  });

  const valid = { model: "SmolLM2-135M-Instruct.Q4_1", messages: chatMessages, max_tokens: 4 };
  const cases: [string, string | object, number, Record<string, unknown>][] = [
    ["invalid JSON", "{ not json", 400, { code: "invalid_json" }],
    ["a JSON array", "[1, 2]", 400, { code: "invalid_json" }],
    ["temperature of the wrong type", { ...valid, temperature: "hot" }, 400, { param: "temperature" }],
    ["temperature out of range", { ...valid, temperature: 5 }, 400, { param: "temperature" }],
    ["stream of the wrong type", { ...valid, stream: "yes" }, 400, { param: "stream" }],
    ["stop of the wrong type", { ...valid, stop: [1] }, 400, { param: "stop" }],
    ["an unknown model", { ...valid, model: "gpt-4" }, 404, { code: "model_not_found", param: "model" }],
    ["max_tokens 0", { ...valid, max_tokens: 0 }, 400, { param: "max_tokens" }],
    ["max_tokens over the cap", { ...valid, max_tokens: 100_000 }, 400, { param: "max_tokens" }],
    ["max_tokens not an integer", { ...valid, max_tokens: 1.5 }, 400, { param: "max_tokens" }],
    ["empty messages", { ...valid, messages: [] }, 400, { param: "messages" }],
    ["messages of the wrong shape", { ...valid, messages: [{ content: "hi" }] }, 400, { param: "messages[0]" }],
    ["n > 1", { ...valid, n: 2 }, 400, { param: "n" }],
  ];
  for (const [name, body, status, error] of cases) {
    it(`answers ${name} with ${status} in OpenAI's error shape`, async () => {
      expect(await errorOf(await post("/v1/chat/completions", body))).toMatchObject({ status, error });
    });
  }

  it("answers a completion without a prompt with 400", async () => {
    const response = await post("/v1/completions", { model: valid.model, max_tokens: 4 });
    expect(await errorOf(response)).toMatchObject({ status: 400, error: { param: "prompt" } });
  });

  it("answers a prompt longer than the context with 400 context_length_exceeded", async () => {
    const prompt = "hello ".repeat(model.info.contextLength + 10);
    await expect(client.completions.create({ model: server.modelName, prompt, max_tokens: 4 })).rejects.toMatchObject({
      status: 400,
      code: "context_length_exceeded",
    });
  });

  it("answers a body over the limit with 413", async () => {
    const response = await post("/v1/completions", { ...valid, prompt: "x".repeat(100 * 1024) });
    expect(await errorOf(response)).toMatchObject({ status: 413, error: { code: "request_too_large" } });
  });

  it("answers an unknown route with 404 and a wrong method with 405", async () => {
    const headers = { authorization: `Bearer ${API_KEY}` };
    expect(await errorOf(await fetch(`${server.url}/v1/nothing`, { headers }))).toMatchObject({ status: 404 });
    const wrongMethod = await fetch(`${server.url}/v1/chat/completions`, { headers });
    expect(wrongMethod.headers.get("allow")).toBe("POST");
    expect(await errorOf(wrongMethod)).toMatchObject({ status: 405, error: { code: "method_not_allowed" } });
  });

  it("aborts a request past its time limit with 504", async () => {
    const slow = await serve({ model, port: 0, timeoutMs: 1 });
    try {
      const response = await fetch(`${slow.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 64, temperature: 0 }),
      });
      expect(await errorOf(response)).toMatchObject({ status: 504, error: { code: "timeout" } });
      expect((await fetch(`${slow.url}/health`)).status).toBe(200);
    } finally {
      await slow.close();
    }
  });

  it("is still healthy after every bad request", async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const m = await metrics();
    expect(m.active).toBe(0);
  });
});

const gpu = gpuInfo();

describe("serve: the device", () => {
  it("refuses a device other than cpu, cuda or auto", async () => {
    await expect(serve({ model, port: 0, device: "tpu" as "cpu" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: 'device must be "cpu", "cuda" or "auto", got "tpu"',
    });
  });

  it("refuses to serve a loaded model on a device it was not loaded on", async () => {
    await expect(serve({ model, port: 0, device: "cuda" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringMatching(/^the model was loaded with device cpu, not cuda/),
    });
    const auto = await serve({ model, port: 0, device: "auto" });
    try {
      expect(auto.device).toBe("cpu");
    } finally {
      await auto.close();
    }
  });

  it.skipIf(gpu.available)("without a usable GPU, cuda is DEVICE_UNAVAILABLE and auto serves on the CPU", async () => {
    await expect(serve({ model: modelPath(), port: 0, device: "cuda" })).rejects.toMatchObject({
      code: "DEVICE_UNAVAILABLE",
    });
    const auto = await serve({ model: modelPath(), port: 0, device: "auto" });
    try {
      expect(auto.device).toBe("cpu");
      expect(await (await fetch(`${auto.url}/health`)).json()).toEqual({
        status: "ok",
        device: "cpu",
        decoding: "concurrent",
      });
      const text = (await auto.model.generate("Water boils at", { maxTokens: 6, temperature: 0 }).result).text;
      expect(text).toBe((await model.generate("Water boils at", { maxTokens: 6, temperature: 0 }).result).text);
    } finally {
      await auto.close();
    }
  });
});

describe("liger serve", () => {
  it("--device cpu serves, says where, and stops on SIGTERM", async () => {
    const child = spawn(process.execPath, [cliPath, "serve", "-m", modelPath(), "--port", "0", "--device", "cpu"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exit = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const listening = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        stdout += d;
        const url = /^liger: serving \S+ at (http:\S+)\/v1 on cpu$/m.exec(stdout)?.[1];
        if (url) resolve(url);
      });
      exit.then((code) => reject(new Error(`liger serve exited with ${code}: ${stderr}`)));
    });
    try {
      const health = await (await fetch(`${listening}/health`)).json();
      expect(health).toEqual({ status: "ok", device: "cpu", decoding: "concurrent" });
    } finally {
      child.kill("SIGTERM");
    }
    expect(await exit).toBe(0);
  });

  it("--device with an unknown value is INVALID_ARGUMENT", () => {
    const run = liger(["serve", "-m", modelPath(), "--port", "0", "--device", "tpu"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: INVALID_ARGUMENT: device must be "cpu", "cuda" or "auto", got "tpu"/m);
  });

  it.skipIf(gpu.available)("--device cuda without a usable GPU is DEVICE_UNAVAILABLE", () => {
    const run = liger(["serve", "-m", modelPath(), "--port", "0", "--device", "cuda"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: DEVICE_UNAVAILABLE: /m);
  });
});
