"""The compiler's pass planning: how a projection runs on the Expert-FFN engine. A projection
``[T, D] x [F, D]^T`` is one engine pass; a SwiGLU expert is two: gate and up together (each tile holds
``mac_rows/2`` gate channels then the same up channels) into the other activation buffer, then the
down projection from there.

`plan_pass` plans a pass and refuses, with the engine's own reasons (`formats.expert_ffn.check`) and
the largest token count that would fit, what a configuration cannot hold; `pass_operands` lays out
what a pass needs loaded (packed weights, per-tile parameters, the activation table); `engine_work`
is a whole MoE layer as engine passes, the reference the engine's regression drives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..config import AccelConfig, SparsityPattern
from ..formats import expert_ffn
from ..sw.quantized import QuantizedExpert, QuantizedLinear
from ..sw.router import dispatch_table
from ..sw.sparsity import WeightBlocks, pack

__all__ = ["ShapeError", "FFNPass", "plan_pass", "max_pass_tokens", "fuse_swiglu",
           "PassOperands", "pass_operands", "expert_operands", "ExpertJob", "EngineWork",
           "engine_work"]


class ShapeError(ValueError):
    """A pass the configuration cannot hold."""


@dataclass(frozen=True)
class FFNPass:
    """One pass of the engine, with the counts its command carries."""

    config: AccelConfig
    tokens: int
    inputs: int               # D
    outputs: int              # F: output channels (hidden channels under SwiGLU)
    pattern: SparsityPattern
    swiglu: bool = False
    activation: bool = False
    src: int = 0
    to_buffer: bool = False
    accumulate: bool = False  # rows x gate added into the output accumulator
    drain: bool = False       # the accumulator's rows out through the epilogue (no weights)

    @property
    def per_tile(self) -> int:
        """Output channels a tile produces."""
        return expert_ffn.tile_channels(self.config, self.swiglu)

    @functools.cached_property
    def counts(self) -> dict:
        """The pass's command (`command()`), worked out once."""
        return self.command()

    tiles = property(lambda self: self.counts["tiles"])
    chunks = property(lambda self: self.counts["chunks"])
    src_row_words = property(lambda self: self.counts["src_row_words"])
    dst_row_words = property(lambda self: self.counts["dst_row_words"])

    @property
    def macs(self) -> int:
        """Multiply-accumulates the pass needs: kept weights times tokens."""
        if self.drain:
            return 0
        rows = 2 * self.outputs if self.swiglu else self.outputs
        return self.tokens * rows * self.inputs * self.pattern.n // self.pattern.m

    def command(self, swiglu_multiplier: int = 0, swiglu_shift: int = 0) -> dict:
        """The `formats.expert_ffn.ffn_command` fields of this pass."""
        return expert_ffn.pass_command(
            self.config, self.tokens, self.inputs, self.outputs, self.pattern, swiglu=self.swiglu,
            activation=self.activation, src=self.src, to_buffer=self.to_buffer,
            accumulate=self.accumulate, drain=self.drain, swiglu_multiplier=swiglu_multiplier,
            swiglu_shift=swiglu_shift)


def plan_pass(config: AccelConfig, tokens: int, inputs: int, outputs: int,
              pattern: SparsityPattern | str = "dense", **options) -> FFNPass:
    """A pass of ``tokens x inputs -> outputs``, or a `ShapeError` giving the engine's reasons
    (`formats.expert_ffn.check`) and, when fewer tokens would fit, how many."""
    if isinstance(pattern, str):
        pattern = SparsityPattern.parse(pattern)
    if not config.supports(pattern):
        raise ShapeError(f"sparsity {pattern} is not built into the {config.name} configuration "
                         f"(it has {', '.join(str(p) for p in config.patterns)})")
    for name, value in (("tokens", tokens), ("inputs", inputs), ("outputs", outputs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShapeError(f"{name} must be a positive integer, not {value!r}")
    step = FFNPass(config, tokens, inputs, outputs, pattern, **options)
    reasons = expert_ffn.check(config, step.command())
    if reasons:
        fit = max_pass_tokens(config, inputs, outputs, pattern, **options)
        hint = f"; at most {fit} tokens a pass" if 0 < fit < tokens else ""
        raise ShapeError(f"a pass of {tokens} tokens x {inputs} inputs -> {outputs} outputs "
                         f"({pattern}) does not fit the {config.name} configuration: "
                         + "; ".join(reasons) + hint)
    return step


def max_pass_tokens(config: AccelConfig, inputs: int, outputs: int,
                    pattern: SparsityPattern, **options) -> int:
    """The most tokens a pass of ``inputs -> outputs`` can take (0: none): the engine's rules only
    tighten as the tokens grow, so the largest legal count is found by bisection."""
    def fits(tokens: int) -> bool:
        step = FFNPass(config, tokens, inputs, outputs, pattern, **options)
        return not expert_ffn.check(config, step.command())

    low, high = 0, config.max_tokens
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def fuse_swiglu(gate: torch.Tensor, up: torch.Tensor, rows: int) -> torch.Tensor:
    """Interleave gate and up channels tile by tile: tile j holds gate channels ``j*rows/2 ...`` then
    the same up channels (zero channels pad the last tile). Works along the first axis of weights
    ``[F, D]`` or of per-channel parameters ``[F]``."""
    half = rows // 2
    tiles = -(-gate.shape[0] // half)
    shape = (tiles, half) + tuple(gate.shape[1:])
    padded = [torch.zeros(tiles * half, *gate.shape[1:], dtype=gate.dtype) for _ in range(2)]
    padded[0][:gate.shape[0]], padded[1][:up.shape[0]] = gate, up
    return torch.stack([padded[0].view(shape), padded[1].view(shape)], dim=1) \
        .reshape(tiles * rows, *gate.shape[1:])


@dataclass
class PassOperands:
    """Everything one pass needs loaded: its plan, packed weights, per-tile parameters, the
    activation table (None: identity), the SwiGLU requantisation, and the result it must give."""

    step: FFNPass
    blocks: WeightBlocks
    params: list[list[dict]]          # per tile, per row: bias, multiplier, shift
    table: torch.Tensor | None
    swiglu_multiplier: int
    swiglu_shift: int

    def command(self) -> dict:
        return self.step.command(self.swiglu_multiplier, self.swiglu_shift)


def _tile_params(bias, multiplier, shift, tiles: int, rows: int) -> list[list[dict]]:
    padded = [torch.zeros(tiles * rows, dtype=torch.int64) for _ in range(3)]
    for target, source in zip(padded, (bias, multiplier, shift)):
        target[:source.shape[0]] = source
    return [[{"bias": int(padded[0][t * rows + r]), "multiplier": int(padded[1][t * rows + r]),
              "shift": int(padded[2][t * rows + r])} for r in range(rows)] for t in range(tiles)]


def pass_operands(step: FFNPass, layer: QuantizedLinear,
                  up: QuantizedLinear | None = None,
                  swiglu_requant: tuple[int, int] = (0, 0)) -> PassOperands:
    """Operands of a plain pass over `layer`, or of a SwiGLU pass with `layer` as the gate and `up`."""
    rows = step.config.mac_rows
    if step.swiglu:
        weight = fuse_swiglu(layer.weight, up.weight, rows)
        fused = [fuse_swiglu(getattr(layer, name), getattr(up, name), rows)
                 for name in ("bias", "multiplier", "shift")]
    else:
        weight = layer.weight
        fused = [layer.bias, layer.multiplier, layer.shift]
    return PassOperands(step, pack(weight, step.pattern, step.config),
                        _tile_params(*fused, step.tiles, rows),
                        layer.table if step.activation else None, *swiglu_requant)


def expert_operands(config: AccelConfig, expert: QuantizedExpert, tokens: int,
                    pattern: SparsityPattern, accumulate: bool = False) -> list[PassOperands]:
    """A SwiGLU expert as two passes (gate/up into activation buffer 1, then down), or a GELU/ReLU
    expert as two plain passes. The down pass streams its rows out, or with `accumulate` adds them,
    gate-weighted, into the output accumulator. The expert's weights must already be pruned to
    `pattern`."""
    d_ff, d_model = expert.down.weight.shape[1], expert.down.weight.shape[0]
    if expert.activation == "swiglu":
        first = plan_pass(config, tokens, d_model, d_ff, pattern, swiglu=True, activation=True,
                          to_buffer=True)
        operands = pass_operands(first, expert.gate, expert.up,
                                 (int(expert.hidden_multiplier), int(expert.hidden_shift)))
    else:
        first = plan_pass(config, tokens, d_model, d_ff, pattern, activation=True, to_buffer=True)
        operands = pass_operands(first, expert.up)
    second = plan_pass(config, tokens, d_ff, d_model, pattern, src=1, accumulate=accumulate)
    return [operands, pass_operands(second, expert.down)]


@dataclass
class ExpertJob:
    """One expert's share of an MoE layer: the rows of its token queue (gathered activations), where
    each goes in the output accumulator with what gate, and its passes."""

    expert_id: int | str
    rows: torch.Tensor                # token indices of the layer, ascending
    gates: torch.Tensor               # Q15
    passes: list[PassOperands]


@dataclass
class EngineWork:
    """An MoE layer (routing given) as engine passes: expert jobs, then the drain that requantises
    the accumulated rows into the layer's int8 output."""

    jobs: list[ExpertJob]
    drain: PassOperands


def engine_work(config: AccelConfig, layer, x_q: torch.Tensor, pattern: SparsityPattern,
                routing=None) -> EngineWork:
    """The engine passes of `QuantizedMoE` `layer` on tokens `x_q`: each routed expert that has
    tokens (empty experts cost nothing), then the shared expert, then the drain."""
    tokens, d_model = x_q.shape
    routing = layer.router(x_q) if routing is None else routing
    jobs = []
    for expert_id, (rows, gates) in enumerate(dispatch_table(routing, layer.spec.n_experts)):
        if rows.numel():
            jobs.append(ExpertJob(expert_id, rows, gates, expert_operands(
                config, layer.experts[expert_id], rows.numel(), pattern, accumulate=True)))
    if layer.shared is not None:
        jobs.append(ExpertJob("shared", torch.arange(tokens), layer.shared_gate_q15(x_q),
                              expert_operands(config, layer.shared, tokens, pattern,
                                              accumulate=True)))
    step = plan_pass(config, tokens, 1, d_model, "dense", drain=True)
    channels = step.tiles * config.mac_rows
    drain = PassOperands(step, pack(torch.zeros(1, 1, dtype=torch.int64), step.pattern, config),
                         _tile_params(torch.zeros(channels, dtype=torch.int64),
                                      layer.combine_multiplier.expand(channels),
                                      layer.combine_shift.expand(channels), step.tiles,
                                      config.mac_rows),
                         None, 0, 0)
    return EngineWork(jobs, drain)
