"""The router's integer reference: what `hw.router.Router` computes, bit for bit.

Int8 tokens give int16 Q8 logits (`QuantizedRouter.logits_q8`, the router's own GEMM); `route` selects
the top k per token (the lower expert index wins a tie) and forms Q15 gate weights in the four modes of
`formats.router.ROUTER_MODES`, with the fixed-point exp, sigmoid and one reciprocal per token of
`sw.numerics`; `dispatch_table` turns a routing into per-expert queues of tokens and gates, the table
the router writes on chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import numerics as nx
from .reference import MoELayer, MoESpec

if TYPE_CHECKING:
    from .quantized import QuantizedLinear

__all__ = ["Routing", "QuantizedRouter", "dispatch_table", "dispatch_overflow"]


@dataclass
class Routing:
    """Per token, the chosen experts ``[T, k]`` (best first) and their Q15 gate weights ``[T, k]``."""

    experts: torch.Tensor
    gates: torch.Tensor


# A choice score below every real one: masks the experts of groups that were not selected.
_MASKED = -(1 << 40)


@dataclass
class QuantizedRouter:
    """Integer router: int8 tokens -> int16 Q8 logits -> selection and Q15 gate weights.

    The tie rule everywhere: among equal scores the lower expert index wins.
    """

    spec: MoESpec
    logits: QuantizedLinear              # out_scale is 2**-8: logits are Q8, saturated to int16
    score_bias: torch.Tensor | None      # sigmoid_bias: Q15 bias added to the score for selection

    @classmethod
    def from_float(cls, layer: MoELayer, in_scale: float) -> "QuantizedRouter":
        from .quantized import QuantizedLinear      # (sw.quantized builds on this module)

        logits = QuantizedLinear.from_float(layer.router.weight, None, in_scale,
                                            2.0 ** -nx.LOGIT_FRAC_BITS)
        score_bias = None
        if layer.score_bias is not None:
            score_bias = torch.floor(layer.score_bias.detach().to(torch.float64) * nx.GATE_ONE + 0.5) \
                .to(torch.int64)
        return cls(layer.spec, logits, score_bias)

    def logits_q8(self, x_q: torch.Tensor) -> torch.Tensor:
        acc = self.logits.accumulate(x_q)
        return nx.requantize(acc, self.logits.multiplier, self.logits.shift, bits=16)

    def __call__(self, x_q: torch.Tensor) -> Routing:
        return self.route(self.logits_q8(x_q))

    def route(self, logits: torch.Tensor) -> Routing:
        """Selection and gate weights from int16 Q8 logits ``[T, E]`` (what the router unit does)."""
        spec = self.spec
        logits = torch.as_tensor(logits, dtype=torch.int64)
        if spec.router == "sigmoid_bias":
            scores = nx.sigmoid_fixed(logits)
            choice = scores + (self.score_bias if self.score_bias is not None else 0)
            if spec.n_groups > 1:
                tokens = choice.shape[0]
                grouped = choice.view(tokens, spec.n_groups, -1)
                best_two = torch.gather(grouped, 2, nx.topk_indices(grouped, 2))
                keep = nx.topk_indices(best_two.sum(-1), spec.topk_groups)
                group_mask = torch.zeros(tokens, spec.n_groups, dtype=torch.bool)
                group_mask[torch.arange(tokens).unsqueeze(1), keep] = True
                expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(tokens, -1)
                choice = torch.where(expert_mask, choice, torch.full_like(choice, _MASKED))
            experts = nx.topk_indices(choice, spec.k)
            gates = nx.normalize(torch.gather(scores, 1, experts))
            return Routing(experts, gates)
        experts = nx.topk_indices(logits, spec.k)
        if spec.router == "softmax_topk_renorm":
            gates = nx.softmax_fixed(torch.gather(logits, 1, experts))
        else:                                   # softmax_topk, top1: probabilities over all experts
            gates = torch.gather(nx.softmax_fixed(logits), 1, experts)
        return Routing(experts, gates)


def dispatch_table(routing: Routing, n_experts: int,
                   capacity: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per expert: the indices of its tokens (ascending) and their gate weights; with a `capacity`,
    only an expert's first `capacity` tokens (the rest are overflow, see `dispatch_overflow`)."""
    table = []
    for expert_id in range(n_experts):
        tokens, slots = torch.nonzero(routing.experts == expert_id, as_tuple=True)
        table.append((tokens[:capacity], routing.gates[tokens, slots][:capacity]))
    return table


def dispatch_overflow(routing: Routing, n_experts: int, capacity: int) -> int:
    """How many (token, expert) choices a dispatch table of `capacity` slots per expert drops."""
    counts = torch.bincount(routing.experts.reshape(-1), minlength=n_experts)
    return int((counts - capacity).clamp(min=0).sum())
