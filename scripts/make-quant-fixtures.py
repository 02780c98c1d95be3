#!/usr/bin/env python3
"""Builds the reference fixtures the Rust tests of GGUF and quantization compare against.

The expected values come from gguf-py (`pip install gguf numpy`), whose numpy
dequantizers are independent of this project's Rust code.

Writes, into `$LIGER_CACHE_DIR/fixtures` (default `~/.cache/liger/fixtures`):
- `quant-oracle-v1.gguf`: for each storage type, a tensor `<TYPE>.raw` of random blocks
  (random bytes with sane f16 scales, fixed seed) stored in that type, and
  `<TYPE>.expected`, its f32 values as gguf-py dequantizes them.
- `smollm2-135m-reference-v1.gguf`: tensors of the default model dequantized by gguf-py:
  `token_embd.rows_0_4` (rows 0..3 of the token embedding), `blk.0.attn_q`, `blk.0.attn_k`
  (in the file's own row order). The model is read from `$LIGER_MODEL_GGUF`, or from
  `~/.cache/liger/SmolLM2-135M-Instruct.Q4_1.gguf`.

Deterministic: running it again writes identical files (each written to a temporary name,
then renamed).
"""

import os
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as T
except ImportError:
    sys.exit("this script needs gguf-py and numpy: pip install gguf numpy")

SEED = 20250301

# Byte offsets of the f16 scales/minimums inside one block, per type; the rest of each
# block is random bytes. Random bytes in these places could be inf/NaN or huge.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
QUANT_TYPES = list(F16_FIELDS)


def cache_dir() -> Path:
    root = os.environ.get("LIGER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "liger")
    return Path(root)


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scales of either sign between 1e-3 and 0.1, with a few exact zeros."""
    v = rng.uniform(1e-3, 0.1, n) * rng.choice([-1.0, 1.0], n)
    v[rng.random(n) < 0.05] = 0.0
    return v.astype(np.float16)


def random_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int) -> np.ndarray:
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off:off + 2] = sane_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // block_size * block_bytes)


def write_atomically(path: Path, fill) -> None:
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="fixture")
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    print(f"wrote {path}")


def quant_fixture(writer: "gguf.GGUFWriter") -> None:
    rng = np.random.default_rng(SEED)
    writer.add_uint32("fixture.seed", SEED)
    for qtype in QUANT_TYPES:
        block_size = gguf.GGML_QUANT_SIZES[qtype][0]
        rows, cols = 3, 4 * block_size if block_size == 256 else 8 * block_size
        raw = random_blocks(rng, qtype, rows, cols)
        expected = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        assert expected.shape == (rows, cols), expected.shape
        writer.add_tensor(f"{qtype.name}.raw", raw, raw_dtype=qtype)
        writer.add_tensor(f"{qtype.name}.expected", expected)
    # The float types: random values, stored and read back by gguf-py.
    values = rng.standard_normal((3, 64)).astype(np.float32)
    writer.add_tensor("F32.raw", values)
    writer.add_tensor("F32.expected", values)
    as_f16 = values.astype(np.float16)
    writer.add_tensor("F16.raw", as_f16)
    writer.add_tensor("F16.expected", as_f16.astype(np.float32))
    bf16_raw = gguf.quants.quantize(values, T.BF16)
    writer.add_tensor("BF16.raw", bf16_raw, raw_dtype=T.BF16)
    writer.add_tensor("BF16.expected", gguf.quants.dequantize(bf16_raw, T.BF16).astype(np.float32))


def model_fixture(writer: "gguf.GGUFWriter", model: Path) -> None:
    reader = gguf.GGUFReader(str(model))
    tensors = {t.name: t for t in reader.tensors}

    def dequantized(name: str) -> np.ndarray:
        t = tensors[name]
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)

    writer.add_string("fixture.model", model.name)
    writer.add_tensor("token_embd.rows_0_4", np.ascontiguousarray(dequantized("token_embd.weight")[:4]))
    writer.add_tensor("blk.0.attn_q", dequantized("blk.0.attn_q.weight"))
    writer.add_tensor("blk.0.attn_k", dequantized("blk.0.attn_k.weight"))


def main() -> None:
    out = cache_dir() / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "quant-oracle-v1.gguf", quant_fixture)

    model = Path(os.environ.get("LIGER_MODEL_GGUF") or cache_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not model.is_file():
        sys.exit(f"model {model} not found: set LIGER_MODEL_GGUF to a copy of SmolLM2-135M-Instruct.Q4_1.gguf")
    write_atomically(out / "smollm2-135m-reference-v1.gguf", lambda w: model_fixture(w, model))


if __name__ == "__main__":
    main()
