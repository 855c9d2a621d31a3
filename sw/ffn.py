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
           "expert_passes", "swiglu_reference"]


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
            "swiglu_shift": swiglu_shift,
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
                  pattern: SparsityPattern) -> list[PassOperands]:
    """A SwiGLU expert as two passes (gate/up into activation buffer 1, then down out), or a
    GELU/ReLU expert as two plain passes. The expert's weights must already be pruned to
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
    second = plan_pass(config, tokens, d_ff, d_model, pattern, src=1)
    return [operands, pass_operands(second, expert.down)]


def swiglu_reference(gate: QuantizedLinear, up: QuantizedLinear, multiplier: int, shift: int,
                     x_q: torch.Tensor) -> torch.Tensor:
    """The hidden values of a SwiGLU pass: ``requantise(table(gate(x)) * up(x))``."""
    return nx.requantize(gate(x_q) * up(x_q), multiplier, shift)
