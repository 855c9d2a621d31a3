"""The float PyTorch reference of an MoE layer: the router variants real models use, SwiGLU/GELU/ReLU
experts and an optional shared expert.

The forward pass is written in the dense-all-experts form (every expert runs on every token and is
weighted by a gate matrix that is zero off the chosen experts), which has no data-dependent shapes and
so exports to ONNX as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..formats.expert_ffn import EXPERT_ACTIVATIONS
from ..formats.router import ROUTER_MODES

__all__ = ["ROUTER_MODES", "EXPERT_ACTIVATIONS", "MoESpec", "Expert", "MoELayer", "route_float"]



@dataclass(frozen=True)
class MoESpec:
    """Shape and variant of one MoE layer.

    router:
      ``softmax_topk_renorm`` (Mixtral) softmax over the k selected logits;
      ``softmax_topk`` (Qwen2-MoE, OLMoE, Edge-MoE) probabilities over all experts, not renormalised;
      ``top1`` (Switch) the probability of the single chosen expert;
      ``sigmoid_bias`` (DeepSeek-V3) sigmoid scores, selection on score + bias (optionally limited to
      the best ``topk_groups`` of ``n_groups`` expert groups), weights normalised over the k chosen and
      multiplied by ``routed_scaling``.
    shared_d_ff: width of a shared expert every token goes through (0: none); ``shared_gate`` puts a
      sigmoid gate on it (Qwen2-MoE) or not (DeepSeek-V3).
    """

    d_model: int
    d_ff: int
    n_experts: int
    k: int
    router: str = "softmax_topk_renorm"
    activation: str = "swiglu"
    shared_d_ff: int = 0
    shared_gate: bool = True
    n_groups: int = 1
    topk_groups: int = 1
    routed_scaling: float = 1.0
    expert_bias: bool = False

    def __post_init__(self):
        for name in ("d_model", "d_ff", "n_experts", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MoESpec.{name} must be a positive integer, not {value!r}")
        if self.router not in ROUTER_MODES:
            raise ValueError(f"MoESpec.router must be one of {', '.join(ROUTER_MODES)}, "
                             f"not {self.router!r}")
        if self.activation not in EXPERT_ACTIVATIONS:
            raise ValueError(f"MoESpec.activation must be one of {', '.join(EXPERT_ACTIVATIONS)}, "
                             f"not {self.activation!r}")
        if not self.k <= self.n_experts:
            raise ValueError(f"MoESpec.k must be at most n_experts={self.n_experts}, not {self.k}")
        if self.router == "top1" and self.k != 1:
            raise ValueError(f"MoESpec.k must be 1 for the top1 router, not {self.k}")
        if self.shared_d_ff < 0:
            raise ValueError(f"MoESpec.shared_d_ff must be >= 0, not {self.shared_d_ff}")
        if self.n_groups < 1 or self.n_experts % self.n_groups:
            raise ValueError(f"MoESpec.n_groups must divide n_experts={self.n_experts}, "
                             f"not {self.n_groups}")
        if self.n_groups > 1:
            if self.router != "sigmoid_bias":
                raise ValueError("MoESpec.n_groups > 1 (group-limited selection) needs the "
                                 f"sigmoid_bias router, not {self.router!r}")
            if not 1 <= self.topk_groups <= self.n_groups:
                raise ValueError(f"MoESpec.topk_groups must be between 1 and n_groups="
                                 f"{self.n_groups}, not {self.topk_groups}")
            if self.n_experts // self.n_groups < 2:
                raise ValueError("MoESpec: group-limited selection scores a group by its two best "
                                 "experts, so each group needs at least 2")
            if self.k > self.topk_groups * (self.n_experts // self.n_groups):
                raise ValueError(f"MoESpec.k={self.k} exceeds the experts in {self.topk_groups} "
                                 f"selected groups")
        if not self.routed_scaling > 0:
            raise ValueError(f"MoESpec.routed_scaling must be positive, not {self.routed_scaling!r}")


class Expert(nn.Module):
    """One FFN expert: ``down(act(gate(x)) * up(x))`` for SwiGLU, ``down(act(up(x)))`` otherwise."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = False):
        super().__init__()
        self.activation = activation
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return F.silu(self.gate(x)) * self.up(x)
        if self.activation == "gelu":
            return F.gelu(self.up(x))
        return F.relu(self.up(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.hidden(x))


def route_float(spec: MoESpec, logits: torch.Tensor, score_bias: torch.Tensor | None = None):
    """Expert indices ``[T, k]`` (best first) and gate weights ``[T, k]`` from router logits."""
    if spec.router == "sigmoid_bias":
        scores = torch.sigmoid(logits)
        choice = scores + (score_bias if score_bias is not None else 0.0)
        if spec.n_groups > 1:
            tokens = choice.shape[0]
            grouped = choice.view(tokens, spec.n_groups, -1)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)
            keep = group_score.topk(spec.topk_groups, dim=-1).indices
            group_mask = torch.zeros_like(group_score).scatter(1, keep, 1.0)
            expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(tokens, -1)
            choice = choice.masked_fill(expert_mask == 0, float("-inf"))
        indices = choice.topk(spec.k, dim=-1).indices
        weights = scores.gather(1, indices)
        weights = weights / weights.sum(-1, keepdim=True) * spec.routed_scaling
        return indices, weights
    probs = torch.softmax(logits, dim=-1)
    weights, indices = probs.topk(spec.k, dim=-1)
    if spec.router == "softmax_topk_renorm":
        weights = weights / weights.sum(-1, keepdim=True)
    return indices, weights


class MoELayer(nn.Module):
    """A float MoE layer: ``x [T, d_model] -> y [T, d_model]``."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.spec = spec
        self.router = nn.Linear(spec.d_model, spec.n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(spec.d_model, spec.d_ff, spec.activation, spec.expert_bias)
                                     for _ in range(spec.n_experts))
        if spec.router == "sigmoid_bias":
            self.register_buffer("score_bias", torch.zeros(spec.n_experts))
        else:
            self.score_bias = None
        self.shared = (Expert(spec.d_model, spec.shared_d_ff, spec.activation, spec.expert_bias)
                       if spec.shared_d_ff else None)
        self.shared_gate = (nn.Linear(spec.d_model, 1, bias=False)
                            if spec.shared_d_ff and spec.shared_gate else None)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Dense gate matrix ``[T, E]``: each token's weights on its chosen experts, zero elsewhere."""
        indices, weights = route_float(self.spec, self.router(x), self.score_bias)
        return torch.zeros(x.shape[0], self.spec.n_experts, dtype=x.dtype).scatter(1, indices, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)
        out = torch.zeros_like(x)
        for expert_id, expert in enumerate(self.experts):
            out = out + gates[:, expert_id:expert_id + 1] * expert(x)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        return out
