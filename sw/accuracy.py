"""Measure the integer reference against the float reference: how often the two routers choose the same
experts, and how far the integer layer's output is from the float one.

`python -m moeaccel.sw.accuracy` prints the table quoted in docs/numerics.md.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

import torch

from .quantized import QuantizedMoE
from .reference import MoELayer, MoESpec, route_float

__all__ = ["Accuracy", "measure", "measure_cases", "input_cases", "build", "SPECS"]


@dataclass
class Accuracy:
    """The errors of the output and the gates are measured over the tokens routed alike only:
    read them with `routing_agreement` (`routed_alike` tokens of `tokens`). With no token routed
    alike they are NaN, never 0, so that no bound holds over nothing."""
    tokens: int
    routing_agreement: float     # fraction of tokens whose integer experts equal the float ones
    routed_alike: int            # how many tokens that is: the errors below are over them
    cosine: float                # cosine similarity of the whole outputs
    max_abs_error: float         # over tokens routed alike, relative to the float output's peak
    max_error_lsb: float         # the same, in units of the output's int8 scale
    mean_error_lsb: float
    max_gate_error: float        # |float gate - Q15 gate|, tokens routed alike


def measure(layer: MoELayer, quantized: QuantizedMoE, x: torch.Tensor) -> Accuracy:
    with torch.no_grad():
        y_float = layer(x).to(torch.float64)
        float_experts, float_gates = route_float(layer.spec, layer.router(x), layer.score_bias)
    x_q = quantized.quantize_input(x)
    routing = quantized.router(x_q)
    y_int = quantized.dequantize_output(quantized.forward(x_q))
    alike = (routing.experts == float_experts).all(dim=1)
    error = (y_float - y_int).abs()
    peak = float(y_float.abs().max()) or 1.0
    alike_error = error[alike] if alike.any() else torch.full((1, 1), math.nan,
                                                              dtype=torch.float64)
    # The integer router folds the routed scaling factor into the experts' output requantisation.
    float_gates = float_gates.to(torch.float64) / layer.spec.routed_scaling
    gate_error = (float_gates[alike] - routing.gates[alike] / 2 ** 15).abs()
    cosine = torch.nn.functional.cosine_similarity(y_float.flatten(), y_int.flatten(), dim=0)
    return Accuracy(
        tokens=x.shape[0],
        routing_agreement=float(alike.double().mean()),
        routed_alike=int(alike.sum()),
        cosine=float(cosine) if float(y_float.abs().max()) > 0 else 1.0,
        max_abs_error=float(alike_error.max()) / peak,
        max_error_lsb=float(alike_error.max()) / quantized.out_scale,
        mean_error_lsb=float(alike_error.mean()) / quantized.out_scale,
        max_gate_error=float(gate_error.max()) if gate_error.numel() else math.nan,
    )


def input_cases(d_model: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random and structured token sets: Gaussian, uniform, mostly zero, a few channels with 4x
    outliers, one token repeated, and very small values."""
    gaussian = torch.randn(tokens, d_model, generator=generator)
    sparse = gaussian * (torch.rand(tokens, d_model, generator=generator) < 0.1)
    outliers = gaussian.clone()
    outliers[:, :: max(1, d_model // 8)] *= 4
    repeated = gaussian[:1].expand(tokens, -1).clone()
    return {
        "gaussian": gaussian,
        "uniform": (torch.rand(tokens, d_model, generator=generator) * 2 - 1) * 3,
        "sparse": sparse,
        "outliers": outliers,
        "repeated": repeated,
        "small": gaussian * 0.05,        # a hundredth of the range above
    }


SPECS: dict[str, MoESpec] = {
    "mixtral": MoESpec(d_model=64, d_ff=128, n_experts=8, k=2, router="softmax_topk_renorm"),
    "qwen2-moe": MoESpec(d_model=64, d_ff=64, n_experts=16, k=4, router="softmax_topk",
                         shared_d_ff=128, shared_gate=True),
    "olmoe-gelu": MoESpec(d_model=64, d_ff=128, n_experts=16, k=2, router="softmax_topk",
                          activation="gelu"),
    "switch-relu": MoESpec(d_model=64, d_ff=128, n_experts=8, k=1, router="top1", activation="relu"),
    "deepseek-v3": MoESpec(d_model=64, d_ff=64, n_experts=16, k=4, router="sigmoid_bias",
                           n_groups=4, topk_groups=2, routed_scaling=2.5, shared_d_ff=64,
                           shared_gate=False),
}


def build(spec: MoESpec, seed: int) -> MoELayer:
    """A float layer with seeded random weights (and, for sigmoid_bias, a random score bias)."""
    torch.manual_seed(seed)
    layer = MoELayer(spec).eval()
    if layer.score_bias is not None:
        layer.score_bias.copy_(torch.randn(spec.n_experts) * 0.05)
    return layer


def measure_cases(spec: MoESpec, seed: int, tokens: int) -> list[dict]:
    """Each input case calibrated on its own tokens (the arithmetic's error alone), then Gaussian
    tokens under a calibration from other Gaussian tokens (adds the error of ranges not seen)."""
    layer = build(spec, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    for case, x in input_cases(spec.d_model, tokens, generator).items():
        accuracy = measure(layer, QuantizedMoE.from_float(layer, x), x)
        rows.append({"inputs": case, "calibration": "same tokens", **asdict(accuracy)})
    calib = torch.randn(tokens, spec.d_model, generator=generator)
    x = torch.randn(tokens, spec.d_model, generator=generator)
    accuracy = measure(layer, QuantizedMoE.from_float(layer, calib), x)
    rows.append({"inputs": "gaussian", "calibration": "other tokens", **asdict(accuracy)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for name, spec in SPECS.items():
        rows += [{"model": name, **row} for row in measure_cases(spec, args.seed, args.tokens)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    header = ("model", "inputs", "calibrated on", "routing", "cosine", "max err/peak", "max err LSB", "mean LSB",
              "gate err")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {row['model']} | {row['inputs']} | {row['calibration']} | "
              f"{row['routing_agreement']:.4f} | "
              f"{row['cosine']:.4f} | {row['max_abs_error']:.3f} | {row['max_error_lsb']:.1f} | "
              f"{row['mean_error_lsb']:.2f} | {row['max_gate_error']:.4f} |")


if __name__ == "__main__":
    main()
