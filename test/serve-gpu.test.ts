/**
 * `serve()` on the GPU: the default model loaded with device cuda, driven by the official
 * `openai` client. Greedy answers must equal `generate()` on the same GPU model, whether the
 * requests come one at a time or together (they take turns on the GPU), and a client that
 * goes away must free the GPU for the requests behind it. Skipped where no usable GPU is
 * found; the CPU side of the device options is tested in serve.test.ts.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { gpuInfo, serve, type LigerModel, type LigerServer } from "../ts/dist/index.js";
import { modelPath } from "./helpers.js";

const gpu = gpuInfo();

describe.skipIf(!gpu.available)("serve on the GPU", () => {
  let server: LigerServer;
  let model: LigerModel;
  let client: OpenAI;

  beforeAll(async () => {
    server = await serve({ model: modelPath(), device: "cuda", port: 0, maxBatch: 4, maxTokens: 2048 });
    model = server.model;
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });

  afterAll(async () => {
    await server?.close();
  });

  const greedy = { maxTokens: 16, temperature: 0 };
  const chatMessages = [{ role: "user" as const, content: "What is the capital of France?" }];

  const complete = (prompt: string) =>
    client.completions
      .create({ model: server.modelName, prompt, max_tokens: greedy.maxTokens, temperature: 0 })
      .then((c) => c.choices[0].text);

  async function metrics(): Promise<Record<string, number>> {
    return (await (await fetch(`${server.url}/metrics`)).json()) as Record<string, number>;
  }

  it("serves on cuda and says that GPU generations take turns", async () => {
    expect(server.device).toBe("cuda");
    expect(model.info.device).toBe("cuda");
    expect(await (await fetch(`${server.url}/health`)).json()).toEqual({
      status: "ok",
      device: "cuda",
      decoding: "sequential",
    });
    expect(await metrics()).toMatchObject({ device: "cuda", decoding: "sequential", maxBatch: 4 });
  });

  it("answers a chat, streamed and not, as generate() on the same GPU model", async () => {
    const expected = await model.generate(chatMessages, greedy).result;
    expect(expected.tokens.length).toBeGreaterThan(0);
    const request = { model: server.modelName, messages: chatMessages, max_tokens: greedy.maxTokens, temperature: 0 };
    const whole = await client.chat.completions.create(request);
    expect(whole.choices[0].message.content).toBe(expected.text);
    expect(whole.usage?.completion_tokens).toBe(expected.tokens.length);

    const stream = await client.chat.completions.create({ ...request, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(text).toBe(expected.text);
  });

  it("answers a plain prompt, streamed and not, as generate() on the same GPU model", async () => {
    const prompt = "The three primary colors are";
    const expected = (await model.generate(prompt, greedy).result).text;
    expect(await complete(prompt)).toBe(expected);

    const stream = await client.completions.create({
      model: server.modelName,
      prompt,
      max_tokens: greedy.maxTokens,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(expected);
  });

  it("gives 4 concurrent greedy requests the same answers as one at a time", async () => {
    const prompts = ["Once upon a time", "Water boils at", "My favourite food is", "The sky is blue because"];
    const sequential: string[] = [];
    for (const prompt of prompts) sequential.push(await complete(prompt));
    for (let i = 0; i < prompts.length; i++) {
      expect(sequential[i]).toBe((await model.generate(prompts[i], greedy).result).text);
    }
    const concurrent = await Promise.all(prompts.map(complete));
    expect(concurrent).toEqual(sequential);
  });

  it("stops a streaming generation when its client goes away, and serves the request waiting behind it", async () => {
    const before = await metrics();
    const controller = new AbortController();
    const stream = await client.completions.create(
      {
        model: server.modelName,
        // Long enough that the GPU cannot finish it before the client's abort arrives.
        prompt: "Count from one to a thousand: one, two, three, four, five,",
        stream: true,
        max_tokens: 2000,
        temperature: 0,
      },
      { signal: controller.signal },
    );
    // Sent while the stream holds the GPU: it waits its turn.
    const waiting = complete("Water boils at");
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

    expect(await waiting).toBe((await model.generate("Water boils at", greedy).result).text);
    let after = await metrics();
    for (let i = 0; i < 100 && (after.active > 0 || after.requestsAborted === before.requestsAborted); i++) {
      await new Promise((r) => setTimeout(r, 50));
      after = await metrics();
    }
    expect(after.active).toBe(0);
    expect(after.queueDepth).toBe(0);
    expect(after.requestsAborted).toBe(before.requestsAborted + 1);
    expect(after.requestsServed).toBe(before.requestsServed + 1);
    // The stopped generation made far fewer than its 2000 tokens.
    expect(after.tokensGenerated - before.tokensGenerated).toBeLessThan(1000);

    expect(await complete("Once upon a time")).toBe((await model.generate("Once upon a time", greedy).result).text);
  });
});
