"""The integer attention against float `scaled_dot_product_attention`, on random inputs.

Q, K and V are drawn in float, quantised per tensor to int8 (`QuantizedAttention.calibrate`), and the
integer result is compared with SDPA of the *dequantised* int8 inputs: the inputs the unit receives,
so the difference is the algorithm's alone (fixed-point logits, exp, rescaling, reciprocal and the
output rounding). It is stated in output LSBs; `BOUND_LSB` is the bound the tests hold it to.

`python -m moeaccel.sw.attention_accuracy` prints the figures quoted in docs/attention.md.
"""

from __future__ import annotations

import argparse
import json

import torch

from .attention import AttentionShape, QuantizedAttention

__all__ = ["BOUND_LSB", "CASES", "measure"]

BOUND_LSB = 1.0

# (name, shape, spread of the logits): spread scales Q and K, from flat attention to nearly one-hot.
CASES = [
    ("L=128 H=8 D=64", AttentionShape(128, 128, 8, 8, 64), 1.0),
    ("L=128 H=8/2 D=64 causal", AttentionShape(128, 128, 8, 2, 64, causal=True), 1.0),
    ("L=256 H=4/1 D=128 causal, sharp", AttentionShape(256, 256, 4, 1, 128, causal=True), 3.0),
    ("L=512 H=2 D=64 flat", AttentionShape(512, 512, 2, 2, 64), 0.3),
    ("L=1024 H=2/1 D=64 causal", AttentionShape(1024, 1024, 2, 1, 64, causal=True), 1.0),
    ("decode: 1 query, 777 keys, H=8/2 D=64", AttentionShape(1, 777, 8, 2, 64, causal=True), 1.5),
    ("L=64 H=4 D=16, very sharp", AttentionShape(64, 64, 4, 4, 16), 8.0),
]


def measure(shape: AttentionShape, spread: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape.seq_q, shape.heads, shape.head_dim, generator=g, dtype=torch.float64) * spread
    k = torch.randn(shape.seq_kv, shape.kv_heads, shape.head_dim, generator=g, dtype=torch.float64) * spread
    v = torch.randn(shape.seq_kv, shape.kv_heads, shape.head_dim, generator=g, dtype=torch.float64)
    attention = QuantizedAttention.calibrate(q, k, v, shape)
    q_q, k_q, v_q = attention.quantize(q, k, v)
    error = (attention(q_q, k_q, v_q).to(torch.float64) - attention.reference(q_q, k_q, v_q)).abs()
    return {"max_lsb": float(error.max()), "mean_lsb": float(error.mean()),
            "outputs": error.numel()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeaccel.sw.attention_accuracy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for name, shape, spread in CASES:
        worst = {"max_lsb": 0.0, "mean_lsb": 0.0, "outputs": 0}
        for seed in range(args.seeds):
            result = measure(shape, spread, seed)
            worst["max_lsb"] = max(worst["max_lsb"], result["max_lsb"])
            worst["mean_lsb"] += result["mean_lsb"] / args.seeds
            worst["outputs"] += result["outputs"]
        rows.append({"case": name, **{k: round(v, 4) if isinstance(v, float) else v
                                      for k, v in worst.items()}})
    if args.json:
        print(json.dumps({"bound_lsb": BOUND_LSB, "cases": rows}))
    else:
        print(f"{'case':<40} {'outputs':>9} {'max |err| LSB':>14} {'mean':>8}")
        for row in rows:
            print(f"{row['case']:<40} {row['outputs']:>9} {row['max_lsb']:>14.4f} "
                  f"{row['mean_lsb']:>8.4f}")
        print(f"bound: {BOUND_LSB} LSB")
    return 0 if all(row["max_lsb"] <= BOUND_LSB for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
