/** `liger chat`: the conversation module, and the command run as a separate process. */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

import { ChatSession } from "../ts/dist/cli/chat-session.js";
import { gpuInfo } from "../ts/dist/index.js";
import { cliPath, liger, modelPath, sharedModel } from "./helpers.js";

type Message = { role: string; content: string };

/** One token per character of content, plus 2 per message: enough to test the trimming. */
const countChars = (messages: Message[]) => messages.reduce((n, m) => n + m.content.length + 2, 0);

describe("ChatSession", () => {
  it("keeps the system message first, then the turns in order", async () => {
    const session = new ChatSession({ system: "be brief", promptBudget: 1000, countTokens: countChars });
    const first = await session.prepare("hi");
    expect(first).toEqual({
      ok: true,
      dropped: 0,
      promptTokens: 14,
      messages: [
        { role: "system", content: "be brief" },
        { role: "user", content: "hi" },
      ],
    });
    session.commit("hi", "hello");
    const second = await session.prepare("how are you?");
    expect(second.ok && second.messages).toEqual([
      { role: "system", content: "be brief" },
      { role: "user", content: "hi" },
      { role: "assistant", content: "hello" },
      { role: "user", content: "how are you?" },
    ]);
    expect(session.turnCount).toBe(1);
  });

  it("reset clears the turns and keeps the system message", async () => {
    const session = new ChatSession({ system: "sys", promptBudget: 1000, countTokens: countChars });
    session.commit("a", "b");
    session.commit("c", "d");
    session.reset();
    expect(session.turnCount).toBe(0);
    expect(session.messages).toEqual([{ role: "system", content: "sys" }]);
    const noSystem = new ChatSession({ promptBudget: 1000, countTokens: countChars });
    noSystem.commit("a", "b");
    noSystem.reset();
    expect(noSystem.messages).toEqual([]);
  });

  it("drops the oldest turns, whole, until the conversation fits", async () => {
    // system 5+2, each turn (10+2)+(10+2) = 24, a new message 10+2.
    const session = new ChatSession({ system: "sys12", promptBudget: 7 + 24 * 2 + 12, countTokens: countChars });
    const ten = (c: string) => c.repeat(10);
    session.commit(ten("a"), ten("A"));
    session.commit(ten("b"), ten("B"));
    const fits = await session.prepare(ten("c"));
    expect(fits.ok && fits.dropped).toBe(0);
    session.commit(ten("c"), ten("C"));
    const trimmed = await session.prepare(ten("d"));
    expect(trimmed.ok).toBe(true);
    if (!trimmed.ok) return;
    expect(trimmed.dropped).toBe(1);
    expect(trimmed.promptTokens).toBe(7 + 24 * 2 + 12);
    expect(trimmed.messages.map((m) => m.content)).toEqual(["sys12", ten("b"), ten("B"), ten("c"), ten("C"), ten("d")]);
    // The dropped turn is gone from the history for good.
    expect(session.turnCount).toBe(2);
    // A long message drops as many turns as it needs, the system message always stays.
    const long = await session.prepare("x".repeat(40));
    expect(long.ok && long.dropped).toBe(2);
    expect(long.ok && long.messages.map((m) => m.role)).toEqual(["system", "user"]);
  });

  it("a message too long on its own is refused and the history is kept", async () => {
    const session = new ChatSession({ system: "sys", promptBudget: 30, countTokens: countChars });
    session.commit("a", "b");
    const refused = await session.prepare("x".repeat(40));
    expect(refused).toEqual({ ok: false, promptTokens: 5 + 42 });
    expect(session.turnCount).toBe(1);
  });

  it("accepts an async token counter and rejects a budget below 1", async () => {
    const session = new ChatSession({ promptBudget: 5, countTokens: async (m) => m.length });
    expect((await session.prepare("x")).ok).toBe(true);
    expect(() => new ChatSession({ promptBudget: 0, countTokens: countChars })).toThrow(RangeError);
  });
});

/** Run `liger chat` with `input` on its stdin (ended after it). */
function chat(args: string[], input: string) {
  return liger(["chat", ...args], { input });
}

const greedy = ["-t", "0", "--max-tokens", "8"];
const apiOptions = { temperature: 0, maxTokens: 8 };

describe("liger chat", () => {
  it("answers two lines as a two-turn conversation, the same as the library", async () => {
    const first = "What is the capital of France?";
    const second = "And of Germany?";
    const run = chat(["-m", modelPath(), ...greedy], `${first}\n${second}\n`);
    expect(run.code, run.stderr).toBe(0);
    const model = await sharedModel();
    const reply1 = (await model.generate([{ role: "user", content: first }], apiOptions).result).text;
    const history = [
      { role: "user", content: first },
      { role: "assistant", content: reply1 },
      { role: "user", content: second },
    ];
    const reply2 = (await model.generate(history, apiOptions).result).text;
    expect(reply1.length).toBeGreaterThan(0);
    expect(run.stdout).toBe(`${reply1}\n${reply2}\n`);
    // No prompt when stdin is not a terminal.
    expect(run.stdout).not.toMatch(/^> /m);
  });

  it("/reset starts over and keeps the system message", async () => {
    const system = "You are a helpful assistant.";
    const run = chat(["-m", modelPath(), ...greedy, "--system", system], "Hi\n/reset\nHi\n/exit\nignored\n");
    expect(run.code, run.stderr).toBe(0);
    const model = await sharedModel();
    const expected = (
      await model.generate(
        [
          { role: "system", content: system },
          { role: "user", content: "Hi" },
        ],
        apiOptions,
      ).result
    ).text;
    expect(run.stdout).toBe(`${expected}\n${expected}\n`);
    expect(run.stderr).toMatch(/conversation cleared/);
  });

  it("a message too long for the context is an error line, and the chat goes on", async () => {
    const run = chat(["-m", modelPath(), ...greedy], `${"word ".repeat(9000)}\nHi\n`);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/^liger: CONTEXT_OVERFLOW: this message takes \d+ tokens/m);
    const model = await sharedModel();
    const expected = (await model.generate([{ role: "user", content: "Hi" }], apiOptions).result).text;
    expect(run.stdout).toBe(`${expected}\n`);
  });

  it("rejects bad options with INVALID_ARGUMENT", () => {
    const negative = chat(["-m", modelPath(), "--max-tokens", "-5"], "");
    expect(negative.code).toBe(1);
    expect(negative.stderr).toMatch(/^liger: INVALID_ARGUMENT: maxTokens/);
    const notNumber = chat(["-m", modelPath(), "--top-p", "high"], "");
    expect(notNumber.code).toBe(1);
    expect(notNumber.stderr).toMatch(/^liger: INVALID_ARGUMENT: --top-p expects a number/);
    const noRoom = chat(["-m", modelPath(), "--max-tokens", "100000"], "");
    expect(noRoom.code).toBe(1);
    expect(noRoom.stderr).toMatch(/^liger: INVALID_ARGUMENT: --max-tokens 100000 leaves no room/);
  });

  it("--device cpu answers as the library does; an unknown device is INVALID_ARGUMENT", async () => {
    const run = chat(["-m", modelPath(), ...greedy, "--device", "cpu"], "Hi\n");
    expect(run.code, run.stderr).toBe(0);
    const model = await sharedModel();
    const expected = (await model.generate([{ role: "user", content: "Hi" }], apiOptions).result).text;
    expect(run.stdout).toBe(`${expected}\n`);
    const unknown = chat(["-m", modelPath(), "--device", "tpu"], "Hi\n");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^liger: INVALID_ARGUMENT: device must be "cpu", "cuda" or "auto", got "tpu"/m);
  });

  it.skipIf(gpuInfo().available)("--device cuda without a usable GPU is DEVICE_UNAVAILABLE", () => {
    const run = chat(["-m", modelPath(), "--device", "cuda"], "Hi\n");
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^liger: DEVICE_UNAVAILABLE: /m);
  });

  it("Ctrl-C stops a reply and the chat goes on; at the prompt it exits with 130", async () => {
    const child = spawn(process.execPath, [cliPath, "chat", "-m", modelPath(), "-t", "0", "-n", "2000"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exit = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const until = (test: () => boolean) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (test()) {
            clearInterval(timer);
            resolve();
          }
        };
        const timer = setInterval(check, 20);
      });
    child.stdout.on("data", (d) => (stdout += d));
    child.stdin.write("Count from 1 to 500, separated by commas.\n");
    await until(() => stdout.length > 20);
    child.kill("SIGINT");
    await until(() => /reply stopped/.test(stderr));
    // Back at the prompt: commands are read again, and Ctrl-C there ends the chat.
    const before = stdout.length;
    child.stdin.write("/reset\n");
    await until(() => /conversation cleared/.test(stderr));
    expect(stdout.length).toBe(before);
    child.kill("SIGINT");
    expect(await exit).toBe(130);
    expect(stderr.match(/reply stopped/g)).toHaveLength(1);
  });
});
