/**
 * `serve()`: an OpenAI-compatible HTTP server over a loaded model.
 *
 * Built on node:http rather than a framework: it adds no dependency, and streaming needs
 * direct control of the response (write each server-sent event as its token arrives, notice at
 * once when the client goes away so its generation can be aborted).
 */
import { timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { basename } from "node:path";

import type { GenerateResult, ProgressCallback } from "../backend.js";
import { invalidArgument, LigerError, toLigerError } from "../errors.js";
import { LigerModel, loadModel, type LoadModelOptions } from "../model.js";
import {
  ApiError,
  chunkObject,
  completionObject,
  fromLigerError,
  openaiFinishReason,
  parseChatRequest,
  parseCompletionRequest,
  parseJson,
  usageChunk,
  type ParsedRequest,
  type ResponseMeta,
} from "./openai.js";
import { Scheduler, type JobOutcome, type SchedulerStats } from "./scheduler.js";

export interface ServeOptions {
  /** A loaded model, or a path for loadModel (default: the default model). */
  model?: string | LigerModel;
  /** The model's id in the API (default: the model file's base name without extension). */
  modelName?: string;
  /** The engine, as loadModel takes it (default "auto": native when its addon loads, else wasm). */
  backend?: LoadModelOptions["backend"];
  /**
   * Where generation runs, as loadModel takes it: "cpu" (the default), "cuda" or "auto". On the
   * GPU one generation decodes at a time: requests admitted under `maxBatch` take turns on the
   * model's GPU copy (batched GPU decoding across requests is not built yet). With a loaded
   * `model`, its own device serves; naming another one here is INVALID_ARGUMENT.
   */
  device?: "cpu" | "cuda" | "auto";
  /** Address to listen on (default 127.0.0.1). */
  host?: string;
  /** Port (default 8080; 0 picks a free one, see `url`). */
  port?: number;
  /** Most generations running at once; more wait in a queue (default 4). */
  maxBatch?: number;
  /** When set, requests must carry `Authorization: Bearer <apiKey>` (GET /health excepted). */
  apiKey?: string;
  /** Largest request body accepted, larger gets 413 (default 1 MiB). */
  maxBodyBytes?: number;
  /** A request still running after this long (queue time included) is aborted (default 10 minutes; 0: never). */
  timeoutMs?: number;
  /** Largest max_tokens a request may ask for, and the default when it asks for none (default 2048). */
  maxTokens?: number;
  onProgress?: ProgressCallback;
}

/**
 * How generations share the engine: "concurrent" on the CPU (up to maxBatch decode at once),
 * "sequential" on the GPU (one decodes at a time, the others wait their turn).
 */
export type ServeDecoding = "concurrent" | "sequential";

export interface ServerMetrics extends SchedulerStats {
  model: string;
  /** Where generation runs: "cpu" or "cuda". */
  device: string;
  decoding: ServeDecoding;
  uptimeSeconds: number;
}

export interface LigerServer {
  /** Where the server listens, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** The model's id in the API. */
  readonly modelName: string;
  readonly model: LigerModel;
  /** Where generation runs: "cpu" or "cuda". */
  readonly device: string;
  metrics(): ServerMetrics;
  /** Stop listening, abort running generations and close open connections. */
  close(): Promise<void>;
}

interface ResolvedServeOptions {
  host: string;
  port: number;
  maxBatch: number;
  apiKey: string | undefined;
  maxBodyBytes: number;
  timeoutMs: number;
  maxTokens: number;
}

function resolveServeOptions(options: ServeOptions): ResolvedServeOptions {
  const int = (
    name: string,
    value: number | undefined,
    fallback: number,
    min: number,
    max = Number.MAX_SAFE_INTEGER,
  ) => {
    const v = value ?? fallback;
    if (!Number.isSafeInteger(v) || v < min || v > max) {
      throw invalidArgument(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(value)}`);
    }
    return v;
  };
  if (options.device !== undefined && !["cpu", "cuda", "auto"].includes(options.device)) {
    throw invalidArgument(`device must be "cpu", "cuda" or "auto", got ${JSON.stringify(options.device)}`);
  }
  if (options.apiKey !== undefined && (typeof options.apiKey !== "string" || options.apiKey.length === 0)) {
    throw invalidArgument("apiKey must be a non-empty string");
  }
  const host = options.host ?? "127.0.0.1";
  if (typeof host !== "string" || host.length === 0) throw invalidArgument("host must be a non-empty string");
  return {
    host,
    port: int("port", options.port, 8080, 0, 65535),
    maxBatch: int("maxBatch", options.maxBatch, 4, 1, 1024),
    apiKey: options.apiKey,
    maxBodyBytes: int("maxBodyBytes", options.maxBodyBytes, 1 << 20, 1),
    timeoutMs: int("timeoutMs", options.timeoutMs, 600_000, 0),
    maxTokens: int("maxTokens", options.maxTokens, 2048, 1),
  };
}

/** The API id of a model: its file or directory name without the extension. */
function defaultModelName(path: string): string {
  return basename(path.replace(/[\\/]+$/, "")).replace(/\.(gguf|bundle)$/i, "");
}

/** Start serving; resolves once the server listens. */
export async function serve(options: ServeOptions = {}): Promise<LigerServer> {
  const resolved = resolveServeOptions(options);
  const model =
    options.model instanceof LigerModel
      ? options.model
      : await loadModel(options.model, {
          backend: options.backend,
          device: options.device,
          onProgress: options.onProgress,
        });
  const device = model.info.device ?? "cpu";
  if (options.device !== undefined && options.device !== "auto" && options.device !== device) {
    throw invalidArgument(
      `the model was loaded with device ${device}, not ${options.device}: load it with device ${options.device}, or leave device out`,
    );
  }
  const modelName = options.modelName ?? defaultModelName(model.path);
  if (typeof modelName !== "string" || modelName.length === 0) {
    throw invalidArgument("modelName must be a non-empty string");
  }
  const handler = new RequestHandler(model, modelName, device, resolved);
  const server = createServer((req, res) => {
    handler.handle(req, res).catch((err) => handler.fail(res, err));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(new LigerError("IO_ERROR", `cannot listen on ${resolved.host}:${resolved.port}: ${err.message}`)),
    );
    server.listen(resolved.port, resolved.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = resolved.host.includes(":") ? `[${resolved.host}]` : resolved.host;
  return {
    url: `http://${host}:${port}`,
    modelName,
    model,
    device,
    metrics: () => handler.metrics(),
    close: () =>
      new Promise<void>((resolve) => {
        handler.abortAll();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Why a request's generation was aborted, when the client is no longer there to tell. */
const CLIENT_GONE = new Error("the client closed the connection");

/** One route's handler, and the methods it answers. */
type Route = { methods: string[]; run: (req: IncomingMessage, res: ServerResponse) => Promise<void> | void };

class RequestHandler {
  private readonly scheduler: Scheduler;
  private readonly running = new Set<AbortController>();
  private readonly started = Date.now();
  private readonly routes: Record<string, Route>;
  private readonly decoding: ServeDecoding;
  private nextId = 0;

  constructor(
    private readonly model: LigerModel,
    private readonly modelName: string,
    private readonly device: string,
    private readonly options: ResolvedServeOptions,
  ) {
    this.scheduler = new Scheduler(options.maxBatch);
    this.decoding = device === "cuda" ? "sequential" : "concurrent";
    const health = { status: "ok", device, decoding: this.decoding };
    this.routes = {
      "/health": { methods: ["GET"], run: (_req, res) => sendJson(res, 200, health) },
      "/metrics": { methods: ["GET"], run: (_req, res) => sendJson(res, 200, this.metrics()) },
      "/v1/models": { methods: ["GET"], run: (_req, res) => sendJson(res, 200, this.modelList()) },
      "/v1/chat/completions": { methods: ["POST"], run: (req, res) => this.completion(req, res, "chat") },
      "/v1/completions": { methods: ["POST"], run: (req, res) => this.completion(req, res, "completion") },
    };
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", "http://localhost").pathname.replace(/\/+$/, "") || "/";
    if (path !== "/health") this.authorize(req);
    const route = this.routes[path];
    if (!route) throw new ApiError(404, `no route ${req.method} ${path}`, "invalid_request_error", null, "not_found");
    if (!route.methods.includes(req.method ?? "")) {
      res.setHeader("allow", route.methods.join(", "));
      throw new ApiError(
        405,
        `${path} accepts ${route.methods.join(", ")}, not ${req.method}`,
        "invalid_request_error",
        null,
        "method_not_allowed",
      );
    }
    await route.run(req, res);
  }

  /** Answer an error: in OpenAI's shape, as a status if nothing was sent yet, else as a last event. */
  fail(res: ServerResponse, err: unknown): void {
    const error = err instanceof ApiError ? err : fromLigerError(err instanceof LigerError ? err : toLigerError(err));
    if (res.destroyed || res.writableEnded) return;
    if (!res.headersSent) {
      sendJson(res, error.status, error.body());
    } else {
      res.end(`data: ${JSON.stringify(error.body())}\n\ndata: [DONE]\n\n`);
    }
  }

  metrics(): ServerMetrics {
    return {
      model: this.modelName,
      device: this.device,
      decoding: this.decoding,
      uptimeSeconds: (Date.now() - this.started) / 1000,
      ...this.scheduler.stats(),
    };
  }

  abortAll(): void {
    for (const controller of this.running) controller.abort(CLIENT_GONE);
  }

  private modelList(): object {
    const created = Math.floor(this.started / 1000);
    return { object: "list", data: [{ id: this.modelName, object: "model", created, owned_by: "liger" }] };
  }

  private authorize(req: IncomingMessage): void {
    const key = this.options.apiKey;
    if (key === undefined) return;
    const given = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "")?.[1]?.trim() ?? "";
    const a = Buffer.from(given);
    const b = Buffer.from(key);
    // Compare in constant time, so the key cannot be guessed from response times.
    if (a.length !== b.length || !timingSafeEqual(a, b)) {
      throw new ApiError(
        401,
        given ? "incorrect API key provided" : "missing API key: send the header `Authorization: Bearer <key>`",
        "authentication_error",
        null,
        "invalid_api_key",
      );
    }
  }

  private async completion(req: IncomingMessage, res: ServerResponse, kind: "chat" | "completion"): Promise<void> {
    const body = parseJson(await readBody(req, this.options.maxBodyBytes));
    const { maxTokens: cap } = this.options;
    const request =
      kind === "chat" ? parseChatRequest(body, this.modelName, cap) : parseCompletionRequest(body, this.modelName, cap);

    const controller = new AbortController();
    const { signal } = controller;
    this.running.add(controller);
    // A client that goes away before its answer is complete cancels the generation.
    res.on("close", () => {
      if (!res.writableFinished) controller.abort(CLIENT_GONE);
    });
    const timer =
      this.options.timeoutMs > 0
        ? setTimeout(() => {
            const message = `the request took longer than the server's limit of ${this.options.timeoutMs} ms`;
            controller.abort(new ApiError(504, message, "timeout_error", null, "timeout"));
          }, this.options.timeoutMs)
        : undefined;
    try {
      const maxTokens = await this.checkLength(request, signal);
      const meta: ResponseMeta = {
        id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${Date.now().toString(36)}${(this.nextId++).toString(36)}`,
        created: Math.floor(Date.now() / 1000),
        model: this.modelName,
      };
      if (request.stream) {
        res.writeHead(200, {
          "content-type": "text/event-stream",
          "cache-control": "no-cache",
          connection: "keep-alive",
        });
        res.flushHeaders();
      }
      const completed = await this.scheduler.run(() => this.generate(request, meta, maxTokens, res, signal), signal);
      if (!completed) throw signal.reason;
    } catch (err) {
      // An aborted request answers with the abort's reason (a timeout), or not at all (client gone).
      if (signal.aborted) {
        if (signal.reason !== CLIENT_GONE) this.fail(res, signal.reason);
        return;
      }
      throw err;
    } finally {
      clearTimeout(timer);
      this.running.delete(controller);
    }
  }

  /**
   * The prompt's length in tokens checked against the model's context, and the number of
   * tokens to generate: what was asked, or what the context and the server's cap leave.
   */
  private async checkLength(request: ParsedRequest, signal: AbortSignal): Promise<number> {
    const model = this.model;
    const promptTokens =
      request.kind === "chat"
        ? model.tokenize(await model.applyChatTemplateAsync(request.messages, { signal }), { special: true }).length
        : model.tokenize(request.prompt).length;
    if (promptTokens === 0)
      throw new ApiError(400, "the prompt is empty", "invalid_request_error", "prompt", "invalid_value");
    const context = model.info.contextLength;
    const maxTokens = request.maxTokens ?? Math.min(this.options.maxTokens, context - promptTokens);
    if (promptTokens + maxTokens > context) {
      throw new ApiError(
        400,
        `this model's maximum context length is ${context} tokens; the request asks for ${promptTokens + maxTokens} ` +
          `(${promptTokens} in the prompt, ${Math.max(maxTokens, 0)} to generate): shorten the prompt or lower max_tokens`,
        "invalid_request_error",
        request.kind === "chat" ? "messages" : "prompt",
        "context_length_exceeded",
      );
    }
    return maxTokens;
  }

  /**
   * Run one generation and answer it, streaming or not; report how it ended to the scheduler.
   * Resolves to false when it was aborted (the caller answers that).
   */
  private async generate(
    request: ParsedRequest,
    meta: ResponseMeta,
    maxTokens: number,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<{ value: boolean; outcome: JobOutcome }> {
    const prompt = request.kind === "chat" ? request.messages : request.prompt;
    const generation = this.model.generate(prompt, {
      maxTokens,
      temperature: request.temperature,
      topP: request.topP,
      topK: request.topK,
      seed: request.seed,
      stop: request.stop,
      signal,
    });
    const send = (object: object) => res.write(`data: ${JSON.stringify(object)}\n\n`);
    if (request.stream) {
      if (request.kind === "chat") send(chunkObject(request, meta, { first: true, text: "" }));
      for await (const token of generation) {
        // An empty piece is half of a multi-byte character: its text comes with the next token.
        if (token.text) send(chunkObject(request, meta, { text: token.text }));
      }
    }
    const result: GenerateResult = await generation.result;
    const outcome: JobOutcome = {
      kind: result.finishReason === "aborted" ? "aborted" : "served",
      tokens: result.tokens.length,
    };
    if (result.finishReason === "aborted") return { value: false, outcome };
    if (request.stream) {
      send(chunkObject(request, meta, { finish: openaiFinishReason(result.finishReason) }));
      if (request.includeUsage) send(usageChunk(request, meta, result));
      res.end("data: [DONE]\n\n");
    } else {
      sendJson(res, 200, completionObject(request, meta, result));
    }
    return { value: true, outcome };
  }
}

function sendJson(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The request body as text, at most `limit` bytes. A larger body is read to its end but not
 * kept, so the client gets the 413 rather than a reset connection.
 */
function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    req.on("error", reject);
    req.on("end", () => {
      if (size > limit) {
        reject(
          new ApiError(
            413,
            `the request body is ${size} bytes; this server accepts at most ${limit}`,
            "invalid_request_error",
            null,
            "request_too_large",
          ),
        );
      } else {
        resolve(Buffer.concat(chunks).toString("utf8"));
      }
    });
  });
}
