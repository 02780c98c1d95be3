"""Load a directory written by `liger export --format hf` with the reference implementation's
modeling code (OpenSparseLLMs/Linearization, `liger_gla`, on transformers + flash-linear-attention)
and compare its full-sequence logits with this library's.

STATUS: written, not yet run. It needs a CUDA GPU (the reference's SWA branch calls flash-attn,
its GLA branch fla's Triton kernels) and the reference's Python environment.

How to run, on a GPU machine:

    # 1. this library, anywhere (CPU is enough):
    liger export --model runs/my-run --format hf --out exported/
    node bench/reference_logits.mjs exported/ ours.json
    # 2. the reference's environment (its requirements.txt: torch, transformers 4.47,
    #    flash-attn 2, flash-linear-attention), with a checkout of the reference repository:
    python bench/reference_check.py --reference-repo /path/to/Linearization \
        --model exported/ --ours ours.json [--dtype bfloat16|float32]

It prints JSON with the max relative error of the logits over all positions (scaled by the
largest |logit|), the mean absolute error, and how many positions agree on the argmax, then
exits 1 when the max relative error is over --tol (default 2e-2: the reference computes its
attention output in bf16 whatever the weights' type, so f32 agreement is not expected).
"""

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-repo", required=True, help="a checkout of OpenSparseLLMs/Linearization")
    p.add_argument("--model", required=True, help="the directory liger export --format hf wrote")
    p.add_argument("--ours", required=True, help="the JSON of bench/reference_logits.mjs")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--tol", type=float, default=2e-2)
    args = p.parse_args()

    sys.path.insert(0, args.reference_repo)
    import torch
    import liger  # noqa: F401  (the reference package registers liger_gla with the Auto classes)
    from transformers import AutoModelForCausalLM

    ours = json.load(open(args.ours))
    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=getattr(torch, args.dtype), attn_implementation="flash_attention_2"
    ).cuda().eval()
    assert model.config.model_type == "liger_gla", model.config.model_type
    ids = torch.tensor([ours["tokens"]], device="cuda")
    with torch.no_grad():
        theirs = model(input_ids=ids, use_cache=False).logits[0].float().cpu()
    mine = torch.tensor(ours["logits"], dtype=torch.float32)
    if theirs.shape != mine.shape:
        print(json.dumps({"error": f"shapes differ: reference {list(theirs.shape)}, ours {list(mine.shape)}"}))
        return 1
    diff = (theirs - mine).abs()
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "positions": int(mine.shape[0]),
        "max_rel_err": float(diff.max() / mine.abs().max()),
        "mean_abs_err": float(diff.mean()),
        "argmax_agree": int((theirs.argmax(-1) == mine.argmax(-1)).sum()),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["max_rel_err"] <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
