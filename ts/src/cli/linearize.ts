/**
 * `liger linearize`: convert a model to Liger attention, train its LoRA adapters, and show
 * the validation perplexities (base, converted before training, trained) and a sample.
 */
import { join } from "node:path";

import type { Command } from "commander";

import { invalidArgument, LigerError } from "../errors.js";
import { gpuInfo } from "../native.js";
import {
  defaultGpuRecipe,
  describeDefaultLength,
  describeRecipe,
  linearize,
  type RECIPES,
  usesDefaultLength,
  type LinearizeOptions,
  type LinearizeReport,
  type LoraTargetName,
  type GsaScaleName,
  type MixerName,
} from "../linearize.js";
import { parseNumber } from "./common.js";
import { TrainProgress } from "./job-progress.js";

interface LinearizeCliOptions {
  model?: string;
  data?: string;
  out: string;
  mixer?: string;
  gsaSlots?: number;
  gsaScale?: string;
  window?: number;
  sinks?: number;
  grmNorm?: boolean;
  surpriseKeys?: number;
  surpriseRepeats?: number;
  surpriseAfterTraining?: boolean;
  learnMix?: boolean;
  train?: boolean;
  alpha?: number;
  beta?: number;
  swa: boolean;
  softmaxLayers?: string;
  softmaxEvery?: number;
  selectData?: string;
  valData?: string;
  weightDecay?: number;
  distill?: number;
  attentionTransfer?: number;
  longContext?: string;
  evalEvery?: number;
  recipe?: string;
  epochs?: number;
  loraRank?: number;
  loraAlpha?: number;
  loraTargets?: string;
  steps?: number;
  seqLen?: number;
  batch?: number;
  gradAccum?: number;
  lr?: number;
  schedule?: string;
  warmupSteps?: number;
  seed?: number;
  chat?: boolean;
  sample?: string;
  dtype?: string;
  merged?: boolean;
  resume?: boolean;
  overwrite?: boolean;
  keep?: number;
  saveEvery?: number;
  device?: string;
  json?: boolean;
}

export function registerLinearize(program: Command): void {
  program
    .command("linearize")
    .description(
      "convert a model to Liger attention (gated recurrence + sliding window) and train its LoRA adapters on " +
        "instruction data; the defaults are a short CPU run (30 steps of 256 tokens)",
    )
    .option("-m, --model <path>", "a .gguf file or checkpoint directory (default: SmolLM2-135M-Instruct)")
    .option("--data <path>", "Alpaca-style .json/.jsonl file or folder (default: alpaca_cleaned in the data folder)")
    .option(
      "-o, --out <dir>",
      "run folder to write: the final model in model/, each save in checkpoint-<step>/",
      "liger-checkpoint",
    )
    .option(
      "--mixer <name>",
      "gla, hgrn2, gsa, retention, mamba2, rwkv6, linear or gdn (gated delta rule; not on the GPU yet) (default gla)",
    )
    .option(
      "--gsa-slots <n>",
      "gsa: slots per key-value head, dividing the head size (default 64)",
      parseNumber("gsa-slots"),
    )
    .option(
      "--gsa-scale <name>",
      "gsa: query scale of the slot read-out, one (as the reference code, default) or inv_sqrt_head_dim",
    )
    .option("--window <n>", "keys of the sliding-window branch (default 65)", parseNumber("window"))
    .option(
      "--sinks <n>",
      "first tokens the sliding-window branch also sees (attention sinks; default 0)",
      parseNumber("sinks"),
    )
    .option(
      "--surprise-keys <n>",
      "tokens per head that left the window and stay visible to it, those the recurrent state recalls worst (default 0)",
      parseNumber("surprise-keys"),
    )
    .option(
      "--surprise-repeats <r>",
      "the surprise cache skips a token whose value repeats a cached one within this relative squared distance (0.05 is a good start; default 0, off)",
      parseNumber("surprise-repeats"),
    )
    .option(
      "--surprise-after-training",
      "train with the window alone and add the surprise cache to the saved model (as LoLA)",
    )
    .option("--grm-norm", "normalise the recurrent branch like attention (the paper's is unnormalised)")
    .option("--alpha <a>", "weight of the recurrent branch (default 0.5)", parseNumber("alpha"))
    .option("--beta <b>", "weight of the sliding-window branch (default 0.5)", parseNumber("beta"))
    .option(
      "--learn-mix",
      "learn the two branches' weights per attention head with the adapters, starting from --alpha and --beta",
    )
    .option("--no-swa", "the recurrent branch only")
    .option(
      "--softmax-layers <list>",
      "comma-separated layers (0-based) that keep softmax attention; auto:N for N layers chosen by measuring what converting each costs; retrieval:N for the N layers whose heads retrieve most often beyond the window in the base model (measure on long text: --select-data)",
    )
    .option(
      "--select-data <path>",
      "text the auto:N and retrieval:N choices measure on (.txt/.raw/.json/.jsonl; default: the validation split)",
    )
    .option(
      "--val-data <path>",
      "validation text of its own (e.g. wiki.valid.raw) instead of a split of the training data",
    )
    .option(
      "--eval-every <n>",
      "validate every n steps (default: before and after training only)",
      parseNumber("eval-every"),
    )
    .option("--weight-decay <w>", "AdamW weight decay on the adapters (default 0)", parseNumber("weight-decay"))
    .option(
      "--distill <w>",
      "GPU only: train toward the base model's next-token distributions, loss (1-w) CE + w KL(base || model) (default 0)",
      parseNumber("distill"),
    )
    .option(
      "--attention-transfer <steps>",
      "first train each Liger layer's attention toward the base's softmax attention for this many steps (LoLCATs; default 0)",
      parseNumber("attention-transfer"),
    )
    .option(
      "--long-context <steps@tokens>",
      "after the training, this many steps on the data packed this long (a length curriculum), e.g. 200@4096",
    )
    .option(
      "--recipe <name>",
      "preset: paper (1024-token sequences, batch 8, 2 epochs, lr 1e-3 constant) or memory (1 epoch of the same, window 257, 4 sinks, 512 surprise keys, mix 0/1, on the GPU distillation 0.5: keeps long-context memory; the GPU default); options given win",
    )
    .option(
      "--epochs <n>",
      "passes over the training data (the steps follow after packing; instead of --steps)",
      parseNumber("epochs"),
    )
    .option(
      "--softmax-every <n>",
      "keep softmax attention in one layer of every n (8: the paper's hybrid)",
      parseNumber("softmax-every"),
    )
    .option("--lora-rank <n>", "LoRA rank (default 8)", parseNumber("lora-rank"))
    .option("--lora-alpha <a>", "LoRA alpha (default 8)", parseNumber("lora-alpha"))
    .option("--lora-targets <list>", "projections with adapters, from q,k,v,o (default q,k,v)")
    .option("--steps <n>", "optimizer steps (default 30)", parseNumber("steps"))
    .option("--no-train", "convert and save without training (e.g. the window, sinks and surprise cache alone)")
    .option("--seq-len <n>", "tokens per training sequence (default 256; the paper uses 1024)", parseNumber("seq-len"))
    .option("--batch <n>", "sequences per forward/backward (default 1)", parseNumber("batch"))
    .option("--grad-accum <n>", "micro-batches per optimizer step (default 1)", parseNumber("grad-accum"))
    .option("--lr <rate>", "AdamW learning rate (default 1e-3)", parseNumber("lr"))
    .option("--schedule <kind>", "constant or cosine (default constant)")
    .option("--warmup-steps <n>", "warmup of the cosine schedule", parseNumber("warmup-steps"))
    .option("--seed <n>", "seed of the data order and adapters", parseNumber("seed"))
    .option("--chat", "render records with the model's chat template instead of the Alpaca template")
    .option("--sample <instruction>", "the instruction answered at the end")
    .option("--dtype <type>", "storage of the checkpoint's weights: f32 (exact), f16 or bf16 (default f32)")
    .option("--merged", "fold the adapters into the weights")
    .option("--resume", "continue the run in --out from its latest checkpoint")
    .option(
      "--overwrite",
      "let --out hold other files (never deleted) or a run to start again (its checkpoints and model are replaced)",
    )
    .option("--save-every <n>", "also save a checkpoint-<step> folder every n steps", parseNumber("save-every"))
    .option("--keep <n>", "keep only the newest n checkpoint folders (default all)", parseNumber("keep"))
    .option(
      "--device <device>",
      "cpu, cuda (the first NVIDIA GPU) or auto (cuda when there is a usable GPU); on cuda, with no length given, the run trains the memory recipe",
      "auto",
    )
    .option("--json", "print the report as JSON instead of tables")
    .action(async (options: LinearizeCliOptions) => {
      const controller = new AbortController();
      const onSigint = () => (controller.signal.aborted ? process.exit(130) : controller.abort());
      const progress = new TrainProgress();
      const list = (value: string | undefined) =>
        value
          ?.split(",")
          .map((s) => s.trim())
          .filter((s) => s.length > 0);
      if (
        options.train === false &&
        (options.data !== undefined ||
          options.steps !== undefined ||
          options.epochs !== undefined ||
          options.learnMix === true)
      ) {
        throw new LigerError(
          "INVALID_ARGUMENT",
          "--no-train converts without training: drop --data, --steps, --epochs and --learn-mix",
        );
      }
      const device = announceDevice(
        options.device,
        options.train !== false && usesDefaultLength(options),
        defaultGpuRecipe({ mixer: options.mixer, useSwa: options.swa }),
      );
      const jobOptions: LinearizeOptions = {
        out: options.out,
        data: options.train === false ? null : options.data,
        mixer: options.mixer as MixerName | undefined,
        gsa: { slots: options.gsaSlots, scale: options.gsaScale as GsaScaleName | undefined },
        window: options.window,
        sinks: options.sinks,
        grmNorm: options.grmNorm,
        surpriseKeys: options.surpriseKeys,
        surpriseRepeatTolerance: options.surpriseRepeats,
        surpriseAfterTraining: options.surpriseAfterTraining,
        learnMix: options.learnMix,
        alpha: options.alpha,
        beta: options.beta,
        useSwa: options.swa,
        ...parseSoftmaxLayers(options.softmaxLayers),
        softmaxEvery: options.softmaxEvery,
        selectData: options.selectData,
        valData: options.valData,
        weightDecay: options.weightDecay,
        distill: options.distill,
        attentionTransfer: options.attentionTransfer,
        longContext: parseLongContext(options.longContext),
        evalEvery: options.evalEvery,
        recipe: options.recipe as LinearizeOptions["recipe"],
        epochs: options.epochs,
        lora: {
          rank: options.loraRank,
          alpha: options.loraAlpha,
          targets: list(options.loraTargets) as LoraTargetName[] | undefined,
        },
        steps: options.steps,
        seqLen: options.seqLen,
        batch: options.batch,
        gradAccum: options.gradAccum,
        lr: options.lr,
        schedule: options.schedule as LinearizeOptions["schedule"],
        warmupSteps: options.warmupSteps,
        seed: options.seed,
        promptFormat: options.chat ? "chat" : "alpaca",
        sample: options.sample,
        dtype: options.dtype as LinearizeOptions["dtype"],
        merged: options.merged,
        resume: options.resume,
        overwrite: options.overwrite,
        keepCheckpoints: options.keep,
        saveEvery: options.saveEvery,
        device,
        onProgress: (event) => {
          // Said once the options have passed their checks, when the job has started.
          if (
            event.kind === "stage" &&
            event.stage === "training" &&
            device === "cpu" &&
            options.device === "cpu" &&
            usesDefaultLength(options)
          ) {
            process.stderr.write(
              `A short CPU run: ${describeDefaultLength()}. It shows the method end to end; recovering the base model's quality ` +
                "takes far more (the paper: 1024-token sequences, about 20k Alpaca examples). Go further with --steps and --seq-len.\n",
            );
          }
          progress.update(event);
        },
        signal: controller.signal,
      };
      process.on("SIGINT", onSigint);
      let report: LinearizeReport;
      try {
        report = await linearize(options.model, jobOptions);
      } catch (err) {
        if (err instanceof LigerError && err.code === "ABORTED") process.exitCode = 130;
        throw err;
      } finally {
        progress.stop();
        process.off("SIGINT", onSigint);
      }
      process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : formatLinearizeReport(report));
      // Beside --json the line goes to stderr, so that stdout stays one JSON document.
      (options.json ? process.stderr : process.stdout).write(`report: ${join(report.outDir, "report.html")}\n`);
    });
}

/**
 * `--device`: where the run trains, said in its first line of output when the choice was
 * automatic or a GPU recipe fills in the length. An unknown name passes through to the job's check.
 */
function announceDevice(
  requested: string | undefined,
  defaultLength: boolean,
  recipe: keyof typeof RECIPES,
): LinearizeOptions["device"] {
  if (requested !== "auto" && requested !== "cuda") return requested as LinearizeOptions["device"];
  const gpu = gpuInfo();
  if (!gpu.available) {
    if (requested === "cuda") return "cuda"; // the job refuses with DEVICE_UNAVAILABLE and the reason
    process.stderr.write(
      `No usable NVIDIA GPU (${gpu.reason}).\nTraining on the CPU: ` +
        (defaultLength
          ? `a short demonstration (${describeDefaultLength()}).` +
            " On a machine with an NVIDIA GPU, `liger linearize` trains the full recipe.\n"
          : "with the options given.\n"),
    );
    return "cpu";
  }
  const gib = (gpu.totalMemoryBytes / 2 ** 30).toFixed(0);
  process.stderr.write(
    `Training on the GPU (${gpu.name}, ${gib} GiB)` +
      (defaultLength ? ` with the ${recipe} recipe: ${describeRecipe(recipe)}.\n` : ".\n"),
  );
  return "cuda";
}

/** `--softmax-layers`: a list of layers, `auto:N` (by loss) or `retrieval:N`. */
function parseSoftmaxLayers(
  value: string | undefined,
): Pick<LinearizeOptions, "softmaxLayers" | "softmaxAuto" | "softmaxAutoBy"> {
  if (value === undefined) return {};
  const auto = /^(auto|retrieval):(\d+)$/.exec(value.trim());
  if (auto) return { softmaxAuto: Number(auto[2]), softmaxAutoBy: auto[1] === "auto" ? "loss" : "retrieval" };
  const layers = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  return { softmaxLayers: layers.map(parseNumber("softmax-layers")) };
}

/** `--long-context STEPS@TOKENS`, e.g. "200@4096". */
function parseLongContext(text: string | undefined): LinearizeOptions["longContext"] {
  if (text === undefined) return undefined;
  const m = /^(\d+)@(\d+)$/.exec(text.trim());
  if (!m) throw invalidArgument(`--long-context takes STEPS@TOKENS, e.g. 200@4096; got ${JSON.stringify(text)}`);
  return { steps: Number(m[1]), seqLen: Number(m[2]) };
}

export function formatLinearizeReport(r: LinearizeReport): string {
  const rows: [string, LinearizeReport["baseEval"]][] = [
    ["base (softmax attention)", r.baseEval],
    ["liger, converted, untrained", r.untrainedEval],
    ["liger, trained", r.trainedEval],
  ];
  let out =
    `\n${r.modelName}: ${r.stepsDone} steps on ${r.trainSequences} sequences ` +
    `(${r.trainSeconds.toFixed(0)} s, ${r.tokensPerS.toFixed(0)} tokens/s)\n`;
  const at = r.attentionTransfer;
  if (at && at.losses.length > 0) {
    out += `attention transfer first: ${at.stepsDone} steps (${at.seconds.toFixed(0)} s), attention error ${at.losses[0].toExponential(2)} -> ${at.losses[at.losses.length - 1].toExponential(2)}\n`;
  }
  const long = r.longContext;
  if (long && long.losses.length > 0) {
    out += `then long context: ${long.stepsDone} steps (${long.seconds.toFixed(0)} s), loss ${long.losses[0].toFixed(3)} -> ${long.losses[long.losses.length - 1].toFixed(3)}\n`;
  }
  if (r.baseEval) {
    out += `validation (${r.valSequences} sequences, ${r.baseEval.tokens} tokens)\n`;
    out += `${"model".padEnd(28)}  ${"loss".padStart(7)}  ${"perplexity".padStart(10)}\n`;
    for (const [name, e] of rows) {
      out += `${name.padEnd(28)}  ${e ? e.loss.toFixed(4).padStart(7) : "n/a".padStart(7)}  ${e ? e.ppl.toFixed(2).padStart(10) : "n/a".padStart(10)}\n`;
    }
  }
  if (r.softmaxLayers.length > 0) out += `softmax attention kept in layers ${r.softmaxLayers.join(", ")}\n`;
  const learned = r.headMix.filter((m) => m !== null);
  if (learned.length > 0) {
    const span = (values: number[]) =>
      `mean ${(values.reduce((a, b) => a + b, 0) / values.length).toFixed(3)} (${Math.min(...values).toFixed(3)} to ${Math.max(...values).toFixed(3)})`;
    out += `learned branch weights per head: recurrent ${span(learned.flatMap((m) => m.alpha))}, window ${span(learned.flatMap((m) => m.beta))}\n`;
  }
  out += `decoding memory per sequence: ${(r.stateBytes / 2 ** 20).toFixed(2)} MiB\n`;
  out += `checkpoint: ${r.outDir}  (load it with --model ${r.outDir})\n`;
  if (r.sample !== null) out += `\nsample:\n${r.sample.trim()}\n`;
  return out;
}
