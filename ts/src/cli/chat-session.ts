/**
 * The conversation of `liger chat`, apart from the terminal: the optional system message, the
 * user/assistant turns, and fitting them to the model's context by dropping the oldest turns.
 */
import type { ChatMessage } from "../backend.js";

/** The prompt's length in tokens for these messages, chat template applied. */
export type CountTokens = (messages: ChatMessage[]) => number | Promise<number>;

export interface ChatSessionOptions {
  /** The system message, kept first through every trim and `/reset`. */
  system?: string;
  /** Most tokens the prompt may take: the model's context less the room kept for the reply. */
  promptBudget: number;
  countTokens: CountTokens;
}

/** What to send for a new user message. */
export type Prepared =
  | {
      ok: true;
      /** The whole conversation, ending with the new user message. */
      messages: ChatMessage[];
      /** Old turns dropped from the history to make it fit (0 when it fitted as it was). */
      dropped: number;
      /** The prompt's length in tokens. */
      promptTokens: number;
    }
  | {
      ok: false;
      /** The length of the system message and the new message alone, which is over the budget. */
      promptTokens: number;
    };

interface Turn {
  user: string;
  assistant: string;
}

export class ChatSession {
  readonly system: string | undefined;
  readonly promptBudget: number;
  private readonly countTokens: CountTokens;
  private turns: Turn[] = [];

  constructor(options: ChatSessionOptions) {
    if (!Number.isSafeInteger(options.promptBudget) || options.promptBudget < 1) {
      throw new RangeError(`promptBudget must be an integer >= 1, got ${options.promptBudget}`);
    }
    this.system = options.system || undefined;
    this.promptBudget = options.promptBudget;
    this.countTokens = options.countTokens;
  }

  /** The history: the system message (if any), then each turn's user and assistant messages. */
  get messages(): ChatMessage[] {
    return this.withUser(this.turns, undefined);
  }

  /** Completed user/assistant turns in the history. */
  get turnCount(): number {
    return this.turns.length;
  }

  /** Forget every turn; the system message stays. */
  reset(): void {
    this.turns = [];
  }

  /**
   * The conversation to send for `user`. When it does not fit the budget the oldest turns are
   * dropped from the history (for good) until it does; when the system message and `user`
   * alone do not fit, nothing is dropped and the answer says so.
   */
  async prepare(user: string): Promise<Prepared> {
    const alone = await this.countTokens(this.withUser([], user));
    if (alone > this.promptBudget) return { ok: false, promptTokens: alone };
    let dropped = 0;
    for (;;) {
      const messages = this.withUser(this.turns, user);
      const promptTokens = this.turns.length === 0 ? alone : await this.countTokens(messages);
      if (promptTokens <= this.promptBudget) return { ok: true, messages, dropped, promptTokens };
      this.turns.shift();
      dropped++;
    }
  }

  /** Append a finished turn: the user message and the assistant's reply. */
  commit(user: string, assistant: string): void {
    this.turns.push({ user, assistant });
  }

  private withUser(turns: Turn[], user: string | undefined): ChatMessage[] {
    const messages: ChatMessage[] = this.system === undefined ? [] : [{ role: "system", content: this.system }];
    for (const turn of turns) {
      messages.push({ role: "user", content: turn.user }, { role: "assistant", content: turn.assistant });
    }
    if (user !== undefined) messages.push({ role: "user", content: user });
    return messages;
  }
}
