"""Programming the Expert-FFN engine: planning a pass (and refusing what a configuration cannot hold),
laying out its operands, and the integer result it must produce.

A projection ``[T, D] x [F, D]^T`` is one pass; a SwiGLU expert is two: gate and up together (each
tile holds ``mac_rows/2`` gate channels then the same up channels) into the other activation buffer,
then the down projection from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AccelConfig, SparsityPattern
from . import numerics as nx
from .quantized import QuantizedExpert, QuantizedLinear
from .sparsity import WeightBlocks, chunk_inputs, pack

__all__ = ["ShapeError", "FFNPass", "plan_pass", "fuse_swiglu", "PassOperands", "pass_operands",
           "expert_passes", "ExpertJob", "MoEProgram", "moe_program", "swiglu_reference"]


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
        return self.config.mac_rows // 2 if self.swiglu else self.config.mac_rows

    @property
    def tiles(self) -> int:
        return -(-self.outputs // self.per_tile)

    @property
    def chunks(self) -> int:
        return -(-self.inputs // chunk_inputs(self.config, self.pattern))

    @property
    def src_row_words(self) -> int:
        return -(-self.inputs // self.config.act_word_bytes)

    @property
    def dst_row_words(self) -> int:
        return -(-self.tiles * self.per_tile // self.config.act_word_bytes)

    @property
    def macs(self) -> int:
        """Multiply-accumulates the pass needs: kept weights times tokens."""
        if self.drain:
            return 0
        rows = 2 * self.outputs if self.swiglu else self.outputs
        return self.tokens * rows * self.inputs * self.pattern.n // self.pattern.m

    def command(self, swiglu_multiplier: int = 0, swiglu_shift: int = 0) -> dict:
        """The `layouts.ffn_command` fields of this pass."""
        return {
            "tokens": self.tokens, "tiles": self.tiles, "chunks": self.chunks,
            "pattern": self.config.patterns.index(self.pattern), "src": self.src,
            "src_row_words": self.src_row_words, "to_buffer": int(self.to_buffer),
            "dst_row_words": self.dst_row_words, "activation": int(self.activation),
            "swiglu": int(self.swiglu), "swiglu_multiplier": swiglu_multiplier,
            "swiglu_shift": swiglu_shift, "accumulate": int(self.accumulate),
            "drain": int(self.drain),
        }


def plan_pass(config: AccelConfig, tokens: int, inputs: int, outputs: int,
              pattern: SparsityPattern | str = "dense", **options) -> FFNPass:
    """A pass of ``tokens x inputs -> outputs``, or a `ShapeError` naming what does not fit."""
    if isinstance(pattern, str):
        pattern = SparsityPattern.parse(pattern)
    where = f"the {config.name} configuration"
    if not config.supports(pattern):
        raise ShapeError(f"sparsity {pattern} is not built into {where} (it has "
                         f"{', '.join(str(p) for p in config.patterns)})")
    for name, value in (("tokens", tokens), ("inputs", inputs), ("outputs", outputs)):
        if not isinstance(value, int) or value < 1:
            raise ShapeError(f"{name} must be a positive integer, not {value!r}")
    if tokens > config.max_tokens:
        raise ShapeError(f"tokens={tokens} exceeds max_tokens={config.max_tokens} of {where}")
    if inputs > config.max_inputs:
        raise ShapeError(f"inputs={inputs} exceeds the widest projection input of {where} "
                         f"({config.max_inputs}, max_d_model/max_d_ff)")
    step = FFNPass(config, tokens, inputs, outputs, pattern, **options)
    if step.tiles > config.max_tiles:
        raise ShapeError(f"outputs={outputs} needs {step.tiles} tiles, more than the "
                         f"{config.max_tiles} of {where}")
    if tokens * step.src_row_words > config.act_buffer_words:
        fit = config.act_buffer_words // step.src_row_words
        raise ShapeError(f"{tokens} tokens of {inputs} inputs do not fit the activation buffer of "
                         f"{where} ({config.act_buffer_bytes} bytes): at most {fit} tokens a pass")
    if step.drain and tokens * step.tiles > config.out_buffer_words:
        fit = config.out_buffer_words // step.tiles
        raise ShapeError(f"{tokens} output rows of {outputs} do not fit the output accumulator of "
                         f"{where} ({config.out_buffer_bytes} bytes): at most {fit} rows")
    if step.to_buffer and tokens * step.dst_row_words > config.act_buffer_words:
        fit = config.act_buffer_words // step.dst_row_words
        raise ShapeError(f"{tokens} tokens of {outputs} outputs do not fit the activation buffer of "
                         f"{where} ({config.act_buffer_bytes} bytes): at most {fit} tokens a pass")
    return step


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


def expert_passes(config: AccelConfig, expert: QuantizedExpert, tokens: int,
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
class MoEProgram:
    """An MoE layer (routing given) as engine work: expert jobs, then the drain that requantises the
    accumulated rows into the layer's int8 output."""

    jobs: list[ExpertJob]
    drain: PassOperands


def moe_program(config: AccelConfig, layer, x_q: torch.Tensor, pattern: SparsityPattern,
                routing=None) -> MoEProgram:
    """The engine work of `QuantizedMoE` `layer` on tokens `x_q`: each routed expert that has tokens
    (empty experts cost nothing), then the shared expert, then the drain."""
    from .quantized import dispatch_table

    tokens, d_model = x_q.shape
    routing = layer.router(x_q) if routing is None else routing
    jobs = []
    for expert_id, (rows, gates) in enumerate(dispatch_table(routing, layer.spec.n_experts)):
        if rows.numel():
            jobs.append(ExpertJob(expert_id, rows, gates, expert_passes(
                config, layer.experts[expert_id], rows.numel(), pattern, accumulate=True)))
    if layer.shared is not None:
        jobs.append(ExpertJob("shared", torch.arange(tokens), layer.shared_gate_q15(x_q),
                              expert_passes(config, layer.shared, tokens, pattern,
                                            accumulate=True)))
    step = plan_pass(config, tokens, 1, d_model, "dense", drain=True)
    channels = step.tiles * config.mac_rows
    drain = PassOperands(step, pack(torch.zeros(1, 1, dtype=torch.int64), step.pattern, config),
                         _tile_params(torch.zeros(channels, dtype=torch.int64),
                                      layer.combine_multiplier.expand(channels),
                                      layer.combine_shift.expand(channels), step.tiles,
                                      config.mac_rows),
                         None, 0, 0)
    return MoEProgram(jobs, drain)


def swiglu_reference(gate: QuantizedLinear, up: QuantizedLinear, multiplier: int, shift: int,
                     x_q: torch.Tensor) -> torch.Tensor:
    """The hidden values of a SwiGLU pass: ``requantise(table(gate(x)) * up(x))``."""
    return nx.requantize(gate(x_q) * up(x_q), multiplier, shift)
