/**
 * `liger chat`: a multi-turn conversation on the terminal, through the model's chat template,
 * each reply streamed to stdout. Ctrl-C stops a reply; at the prompt it ends the chat.
 */
import type { Command } from "commander";
import { createInterface } from "node:readline";

import type { ChatMessage } from "../backend.js";
import { invalidArgument, LigerError, toLigerError } from "../errors.js";
import type { LigerModel } from "../model.js";
import { resolveGenerateOptions, type GenerateOptions } from "../options.js";
import { ChatSession } from "./chat-session.js";
import { addSamplingOptions, loadModelWithProgress, type ModelOption } from "./common.js";

interface ChatCliOptions extends ModelOption {
  system?: string;
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
}

type Sampling = Pick<GenerateOptions, "maxTokens" | "temperature" | "topK" | "topP" | "seed">;

const HELP = "commands: /reset clears the conversation (the system message stays), /exit ends the chat\n";

export function registerChat(program: Command): void {
  addSamplingOptions(
    program
      .command("chat")
      .description("chat with a model on the terminal, replies streamed as they are generated")
      .option("-m, --model <path>", "a .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct)")
      .option("--system <text>", "a system message to start the conversation with")
      .option("--device <device>", "where generation runs: cpu (default), cuda (the first NVIDIA GPU) or auto"),
    "per reply",
  ).action(async (options: ChatCliOptions) => {
    const sampling: Sampling = {
      maxTokens: options.maxTokens,
      temperature: options.temperature,
      topK: options.topK,
      topP: options.topP,
      seed: options.seed,
    };
    // Bad values fail before the model loads, with the library's own messages.
    const { maxTokens } = resolveGenerateOptions(sampling);
    const model = await loadModelWithProgress(options);
    const session = await newSession(model, options.system, maxTokens);
    await runChat(model, session, sampling);
  });
}

/** A session whose prompt leaves `maxTokens` of the model's context for the reply. */
async function newSession(model: LigerModel, system: string | undefined, maxTokens: number): Promise<ChatSession> {
  const context = model.info.contextLength;
  const promptBudget = context - maxTokens;
  if (promptBudget < 1) {
    throw invalidArgument(
      `--max-tokens ${maxTokens} leaves no room for the conversation in the model's context of ${context} tokens`,
    );
  }
  const countTokens = async (messages: ChatMessage[]) =>
    model.tokenize(await model.applyChatTemplateAsync(messages), { special: true }).length;
  const session = new ChatSession({ system, promptBudget, countTokens });
  if (session.system !== undefined) {
    const tokens = await countTokens(session.messages);
    if (tokens > promptBudget) {
      throw invalidArgument(
        `--system takes ${tokens} tokens, more than the ${promptBudget} the context leaves for the prompt ` +
          `(${context} tokens less ${maxTokens} for the reply)`,
      );
    }
  }
  return session;
}

async function runChat(model: LigerModel, session: ChatSession, sampling: Sampling): Promise<void> {
  const interactive = process.stdin.isTTY === true;
  const rl = createInterface({
    input: process.stdin,
    output: interactive ? process.stdout : undefined,
    terminal: interactive,
    prompt: "> ",
  });
  const lines = rl[Symbol.asyncIterator]();
  let reply: AbortController | undefined;
  let closed = false;
  rl.on("close", () => (closed = true));

  // Ctrl-C during a reply stops it; at the prompt, or a second time, it ends the chat.
  const onSigint = () => {
    if (reply && !reply.signal.aborted) {
      reply.abort();
    } else if (reply) {
      process.exit(130);
    } else {
      process.exitCode = 130;
      if (interactive) process.stdout.write("\n");
      rl.close();
    }
  };
  process.on("SIGINT", onSigint);
  rl.on("SIGINT", onSigint);
  if (interactive) process.stderr.write(HELP);

  try {
    for (;;) {
      if (interactive && !closed) rl.prompt();
      const next = await lines.next();
      if (next.done) break;
      const line = next.value.trim();
      if (line === "") continue;
      if (line === "/exit" || line === "/quit") break;
      if (line === "/reset") {
        session.reset();
        process.stderr.write("liger: conversation cleared\n");
        continue;
      }
      if (line === "/help") {
        process.stderr.write(HELP);
        continue;
      }
      reply = new AbortController();
      try {
        await answer(model, session, next.value, sampling, reply.signal);
      } finally {
        reply = undefined;
      }
    }
  } finally {
    process.off("SIGINT", onSigint);
    rl.close();
  }
}

/** Generate and stream the reply to `user`, and keep the turn in the history. */
async function answer(
  model: LigerModel,
  session: ChatSession,
  user: string,
  sampling: Sampling,
  signal: AbortSignal,
): Promise<void> {
  let text = "";
  try {
    const prepared = await session.prepare(user);
    if (!prepared.ok) {
      report(
        new LigerError(
          "CONTEXT_OVERFLOW",
          `this message takes ${prepared.promptTokens} tokens with the chat template, more than the ` +
            `${session.promptBudget} the model's context leaves for the prompt; shorten it`,
        ),
      );
      return;
    }
    if (prepared.dropped > 0) {
      const turns = prepared.dropped === 1 ? "turn" : "turns";
      process.stderr.write(
        `liger: the conversation no longer fits the model's context; dropped the oldest ${prepared.dropped} ${turns}\n`,
      );
    }
    const generation = model.generate(prepared.messages, { ...sampling, signal });
    for await (const token of generation) {
      text += token.text;
      process.stdout.write(token.text);
    }
    const result = await generation.result;
    process.stdout.write("\n");
    if (result.finishReason === "aborted") {
      process.stderr.write("liger: reply stopped\n");
      // What was shown stays in the conversation; a reply stopped before any text is dropped.
      if (result.text.length > 0) session.commit(user, result.text);
      return;
    }
    session.commit(user, result.text);
  } catch (err) {
    if (text.length > 0) process.stdout.write("\n");
    if (signal.aborted) process.stderr.write("liger: reply stopped\n");
    else report(err);
  }
}

/** `liger: CODE: message` on stderr; the chat goes on. */
function report(err: unknown): void {
  const error = err instanceof LigerError ? err : toLigerError(err);
  process.stderr.write(`liger: ${error.code}: ${error.message}\n`);
}
