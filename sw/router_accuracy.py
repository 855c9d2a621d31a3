"""How often the integer router picks the float router's experts, on tokens that are not tied.

A token is *tied* when the float scores of its last chosen and first unchosen candidate differ by no
more than quantisation can move them: `logit_error_bound`, six standard deviations of the rounding
error, computed from the tensors and their scales, never from the integer result. On non-tied tokens the two routers must agree; on tied ones either
choice is legitimate.

`python -m moeaccel.sw.router_accuracy` prints the figures quoted in docs/numerics.md.
"""

from __future__ import annotations

import argparse
import json

import torch

from . import numerics as nx
from .quantized import QuantizedMoE
from .reference import MoELayer, MoESpec, route_float

__all__ = ["ROUTER_SPECS", "logit_error_bound", "router_agreement"]

# One layer per router mode, at the widths real routers have (the experts are irrelevant here).
ROUTER_SPECS = {
    "mixtral (softmax_topk_renorm, E=8, k=2)": MoESpec(256, 8, 8, 2, router="softmax_topk_renorm"),
    "olmoe (softmax_topk, E=64, k=8)": MoESpec(256, 8, 64, 8, router="softmax_topk"),
    "switch (top1, E=8)": MoESpec(256, 8, 8, 1, router="top1"),
    "deepseek-v3 (sigmoid_bias, E=64, k=8, 8 groups, top 4)": MoESpec(
        256, 8, 64, 8, router="sigmoid_bias", n_groups=8, topk_groups=4, routed_scaling=2.5),
}


SIGMAS = 6    # rounding errors are independent and uniform: 6 standard deviations bound them


def logit_error_bound(layer: QuantizedMoE, x: torch.Tensor) -> torch.Tensor:
    """``[T, E]``: how far the integer logit (as a real number) may be from the float one.

    With ``x = x_q s_x + e_x`` and ``W = W_q s_w + e_w``, the rounding errors ``e`` independent and
    uniform within half a step, ``x.W - x_q.W_q s_x s_w`` has standard deviation
    ``sqrt(s_x**2/12 sum W**2 + s_w**2/12 sum x**2)``; the bound is `SIGMAS` of those, plus the
    requantisation's multiplier (relative 2**-15) and its rounding to Q8 (half of 2**-8). Inputs
    beyond the calibrated range saturate: their excess counts in full.
    """
    router = layer.router.logits
    s_x = router.in_scale
    s_w = router.weight_scale                                       # [E]
    w = router.weight.to(torch.float64) * s_w.unsqueeze(1)          # dequantised [E, D]
    x = x.to(torch.float64)
    excess = (x.abs() - nx.INT8_MAX * s_x).clamp(min=0)             # saturated inputs
    variance = (s_x ** 2 / 12) * (w ** 2).sum(1).unsqueeze(0) \
        + (s_w ** 2 / 12).unsqueeze(0) * (x ** 2).sum(1, keepdim=True)
    logits = x @ w.T
    return SIGMAS * variance.sqrt() + excess @ w.abs().T + logits.abs() * 2.0 ** -nx.MULT_BITS \
        + 2.0 ** -(nx.LOGIT_FRAC_BITS + 1)


def _margins(scores: torch.Tensor, k: int) -> torch.Tensor:
    ordered = scores.sort(dim=-1, descending=True).values
    return ordered[:, k - 1] - ordered[:, k] if k < scores.shape[1] else \
        torch.full((scores.shape[0],), float("inf"), dtype=scores.dtype)


def router_agreement(spec: MoESpec, tokens: int = 10_000, seed: int = 0,
                     logit_std: float = 1.5, min_non_tied: int = 0,
                     batch: int = 50_000) -> dict:
    """Route Gaussian tokens with a random router whose logits have about `logit_std` spread (like
    trained routers); compare the integer router's expert sets with the float one's. At least
    `tokens` tokens, and more (in batches) until `min_non_tied` of them are non-tied."""
    counts = {"tokens": 0, "non_tied": 0, "same_non_tied": 0, "same": 0}
    bounds = []
    round_seed = seed
    while counts["tokens"] < tokens or counts["non_tied"] < min_non_tied:
        size = tokens if counts["tokens"] == 0 else batch
        part = _agreement_batch(spec, size, seed, round_seed, logit_std)
        for name in counts:
            counts[name] += part[name]
        bounds.append(part["median_bound"])
        round_seed += 1
    return {
        "tokens": counts["tokens"],
        "non_tied": counts["non_tied"],
        "non_tied_fraction": counts["non_tied"] / counts["tokens"],
        "agreement_non_tied": (counts["same_non_tied"] / counts["non_tied"]
                               if counts["non_tied"] else 1.0),
        "agreement_all": counts["same"] / counts["tokens"],
        "median_logit_bound": float(torch.tensor(bounds).median()),
    }


def _agreement_batch(spec: MoESpec, tokens: int, seed: int, batch_seed: int,
                     logit_std: float) -> dict:
    """One batch of tokens (drawn from `batch_seed`) through the layer of `seed`."""
    torch.manual_seed(seed)
    layer = MoELayer(spec).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, logit_std / spec.d_model ** 0.5)
        if layer.score_bias is not None:
            layer.score_bias.normal_(0, 0.05)
    generator = torch.Generator().manual_seed(seed + 1)
    quantized = QuantizedMoE.from_float(layer, torch.randn(4096, spec.d_model, generator=generator))
    x = torch.randn(tokens, spec.d_model,
                    generator=torch.Generator().manual_seed(1_000_003 * (batch_seed + 1)))
    with torch.no_grad():
        logits = layer.router(x).to(torch.float64)
        float_experts, _ = route_float(spec, logits.float(), layer.score_bias)
    routing = quantized.router(quantized.quantize_input(x))
    same = (routing.experts.sort(1).values == float_experts.sort(1).values).all(1)
    bound = logit_error_bound(quantized, x)
    if spec.router == "sigmoid_bias":
        # sigmoid has slope <= 1/4; the fixed-point sigmoid adds 2.5 LSB of Q15, and 3.4e-4 where it
        # saturates beyond |x| = 8; the bias is rounded to Q15.
        scores = torch.sigmoid(logits) + layer.score_bias.to(torch.float64)
        score_bound = bound / 4 + 2.5 / nx.GATE_ONE + 1.0 / nx.GATE_ONE \
            + (logits.abs() > 8) * 3.4e-4
        worst = score_bound.max(1).values
        tied = torch.zeros(tokens, dtype=torch.bool)
        if spec.n_groups > 1:
            # The groups must be chosen clearly, then the experts among the chosen groups.
            grouped = scores.view(tokens, spec.n_groups, -1)
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            tied |= _margins(group_scores, spec.topk_groups) <= 4 * worst
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(
                1, group_scores.topk(spec.topk_groups, dim=-1).indices, True)
            scores = torch.where(keep.unsqueeze(-1).expand_as(grouped), grouped,
                                 torch.full_like(grouped, float("-inf"))).reshape(tokens, -1)
        tied |= _margins(scores, spec.k) <= 2 * worst
    else:
        worst = bound.max(1).values
        tied = _margins(logits, spec.k) <= 2 * worst
    non_tied = ~tied
    return {"tokens": tokens, "non_tied": int(non_tied.sum()),
            "same_non_tied": int((same & non_tied).sum()), "same": int(same.sum()),
            "median_bound": float(bound.median())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--min-non-tied", type=int, default=10_000,
                        help="route more tokens until this many are non-tied")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = {name: router_agreement(spec, args.tokens, args.seed,
                                   min_non_tied=args.min_non_tied)
            for name, spec in ROUTER_SPECS.items()}
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| router | tokens | non-tied | agreement (non-tied) | agreement (all) | median bound |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tokens']} | {row['non_tied']} ({row['non_tied_fraction']:.3f}) | "
              f"{row['agreement_non_tied']:.4f} | {row['agreement_all']:.4f} | "
              f"{row['median_logit_bound']:.4f} |")


if __name__ == "__main__":
    main()
