"""The compiler's emission: an MoE layer as a program and a DRAM image, written with the assembler
(`isa.Program`): the router's GEMM and selection, the expert loop over the dispatch table, the shared
expert with its gate, the gate-weighted accumulation and its requantisation.

The image holds every operand in the formats of `moeaccel.formats` (packed M:N weight words,
`CHANNEL_PARAMS` records, expert descriptors, router records); the program is a few tens of
instructions whatever the number of experts. The load and compute queues hand PARAMS, TABLE and GATES
back and forth with dependency tokens, so any schedule the tokens allow gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import AccelConfig, SparsityPattern
from ..formats import records
from ..formats import router as router_formats
from ..formats.buffers import Buffer, act_row, act_row_bytes
from ..formats.epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS, IDENTITY_TABLE
from ..formats.instructions import DESCRIPTOR
from ..formats.numbers import GATE_ONE
from ..formats.router import LOGIT, SELECTION_BIAS, TOKEN_GATE, RouterMode, router_record
from ..formats.vector import VectorOp, gate_weights
from ..isa import Program
from ..sw.quantized import QuantizedExpert, QuantizedMoE
from .plan import PassOperands, expert_operands, plan_pass

__all__ = ["Image", "params_bytes", "MoELayerProgram", "moe_layer_program"]

REGION_ALIGN = 64      # bytes: a region starts on a whole bus beat of every width up to 512 bits


class Image:
    """A DRAM image laid out front to back, each region aligned to `align` bytes."""

    def __init__(self, align: int = REGION_ALIGN):
        self.align = align
        self.data = bytearray()
        self.regions: dict[str, tuple[int, int]] = {}

    def put(self, name: str, payload: bytes) -> int:
        """Place `payload`; its offset."""
        start = -(-len(self.data) // self.align) * self.align
        self.data += bytes(start - len(self.data)) + bytes(payload)
        self.regions[name] = (start, len(payload))
        return start

    def reserve(self, name: str, size: int) -> int:
        return self.put(name, bytes(size))


def params_bytes(operands: PassOperands) -> bytes:
    """A pass's per-channel parameters as PARAMS records (`CHANNEL_PARAMS`)."""
    flat = [channel for tile in operands.params for channel in tile]
    out = records.zeros(CHANNEL_PARAMS.dram, len(flat))
    for name in ("bias", "multiplier", "shift"):
        out[name] = [channel[name] for channel in flat]
    return out.tobytes()


def _table_bytes(table) -> bytes:
    """TABLE's bytes: an activation table, or the identity (no table)."""
    out = records.zeros(ACTIVATION_TABLE)
    out[0] = IDENTITY_TABLE if table is None else torch.as_tensor(table).numpy()
    return out.tobytes()


def _router_records(config: AccelConfig, layer: QuantizedMoE) -> bytes:
    """ROUTER_WEIGHTS' bytes: one `router_record` per expert."""
    logits = layer.router.logits
    experts, d_model = logits.weight.shape
    out = records.zeros(router_record(config), experts)
    out["weights"][:, :d_model] = logits.weight.numpy()
    out["requant"]["multiplier"] = logits.multiplier.numpy()
    out["requant"]["shift"] = logits.shift.numpy()
    return out.tobytes()


def _expert_image(image: Image, config: AccelConfig, name: str, expert: QuantizedExpert,
                  pattern: SparsityPattern) -> tuple[dict, list[PassOperands]]:
    """Place one expert's weights, parameters and table; its descriptor's fields and passes."""
    passes = expert_operands(config, expert, 1, pattern, accumulate=True)
    first, down = passes
    fields = {
        "first": image.put(f"{name}.first", first.blocks.data),
        "down": image.put(f"{name}.down", down.blocks.data),
        "first_params": image.put(f"{name}.first_params", params_bytes(first)),
        "down_params": image.put(f"{name}.down_params", params_bytes(down)),
        "table": image.put(f"{name}.table", _table_bytes(first.table)),
        "swiglu_multiplier": first.swiglu_multiplier, "swiglu_shift": first.swiglu_shift,
    }
    return fields, passes


@dataclass
class MoELayerProgram:
    """The program of one MoE layer on `tokens` tokens and its DRAM image: write the int8 tokens
    ``[tokens, d_model]`` at ``x``, run, read the int8 result at ``y``."""

    config: AccelConfig
    program: Program
    image: bytes
    x: int
    y: int
    tokens: int
    d_model: int
    regions: dict

    @property
    def window_bytes(self) -> int:
        return len(self.image)

    logits: int | None = None

    def load(self, dram: bytearray, x_q: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Put the image and the tokens (and, for a program built with given logits, the int16 Q8
        router logits ``[tokens, experts]``) into an accelerator's DRAM window."""
        x_q = torch.as_tensor(x_q)
        if tuple(x_q.shape) != (self.tokens, self.d_model):
            raise ValueError(f"tokens must have shape [{self.tokens}, {self.d_model}], not "
                             f"{list(x_q.shape)}")
        if (logits is None) != (self.logits is None):
            raise ValueError("logits are given exactly when the program reads them "
                             "(moe_layer_program(..., given_logits=True))")
        dram[:len(self.image)] = self.image
        rows = records.zeros(act_row(self.config, self.d_model), self.tokens)
        rows[:] = x_q.numpy()
        raw = rows.tobytes()
        dram[self.x:self.x + len(raw)] = raw
        if logits is not None:
            values = torch.as_tensor(logits).numpy().reshape(-1)
            given = records.zeros(LOGIT.dram, values.size)
            given["value"] = values
            raw = given.tobytes()
            dram[self.logits:self.logits + len(raw)] = raw

    def result(self, dram: bytearray) -> torch.Tensor:
        rows = records.view(act_row(self.config, self.d_model), bytes(dram), self.tokens, self.y)
        return torch.from_numpy(rows.astype(np.int64))


def moe_layer_program(config: AccelConfig, layer: QuantizedMoE, tokens: int,
                      pattern: SparsityPattern | str = "dense",
                      prefetch: bool = True, given_logits: bool = False) -> MoELayerProgram:
    """The program and image of `layer` (its expert weights already pruned to `pattern`) on
    `tokens` tokens. With `given_logits` the router takes int16 logits from DRAM (a routing
    chosen by the caller) instead of computing them. Refuses, naming the limit, what `config`
    cannot hold."""
    if isinstance(pattern, str):
        pattern = SparsityPattern.parse(pattern)
    spec = layer.spec
    d_model, experts = spec.d_model, spec.n_experts
    if tokens > config.dispatch_capacity:
        raise ValueError(f"{tokens} tokens: an expert's queue holds {config.dispatch_capacity} "
                         f"(expert_capacity); a larger batch is several layer runs")
    grouped = spec.router == "sigmoid_bias" and spec.n_groups > 1
    route = {"tokens": tokens, "experts": experts, "k": spec.k,
             "mode": RouterMode.named(spec.router), "groups": spec.n_groups if grouped else 1,
             "group_size": experts // spec.n_groups if grouped else 0,
             "topk_groups": spec.topk_groups if grouped else 1, "compute": int(not given_logits),
             "chunks": 0 if given_logits else -(-d_model // config.router_lanes)}
    reasons = router_formats.check(config, route)
    if reasons:
        raise ValueError(f"the {config.name} configuration's router refuses this layer: "
                         + "; ".join(reasons))
    image = Image(align=max(REGION_ALIGN, config.axi_data_bytes))
    row = act_row_bytes(config, d_model)
    row_words = row // config.act_word_bytes

    descriptors = records.zeros(DESCRIPTOR.dram, experts)
    for index, expert in enumerate(layer.experts):
        fields, _ = _expert_image(image, config, f"expert{index}", expert, pattern)
        for name, value in fields.items():
            descriptors[name][index] = value
    table = image.put("descriptors", descriptors.tobytes())
    router = image.put("router", _router_records(config, layer))
    bias = None
    if layer.router.score_bias is not None:
        biases = records.zeros(SELECTION_BIAS.dram, experts)
        biases["bias"] = layer.router.score_bias.numpy()
        bias = image.put("router_bias", biases.tobytes())
    shared = None
    if layer.shared is not None:
        shared = _expert_image(image, config, "shared", layer.shared, pattern)
        if layer.shared_gate is not None:
            gate = {"weight": layer.shared_gate.weight[0], "multiplier":
                    int(layer.shared_gate.multiplier[0]), "shift": int(layer.shared_gate.shift[0])}
            weights = records.zeros(gate_weights(d_model))
            weights[0] = gate["weight"].numpy()
            gate_params = image.put("shared_gate", weights.tobytes())
        else:
            ones = records.zeros(TOKEN_GATE.dram, tokens)
            ones["token"], ones["gate"] = np.arange(tokens), GATE_ONE
            gate_entries = image.put("shared_gates", ones.tobytes())
    drain = plan_pass(config, tokens, 1, d_model, "dense", drain=True, to_buffer=True)
    channels = drain.tiles * config.mac_rows
    combine = records.zeros(CHANNEL_PARAMS.dram, channels)
    combine["multiplier"], combine["shift"] = int(layer.combine_multiplier), \
        int(layer.combine_shift)
    combine_params = image.put("combine_params", combine.tobytes())
    x = image.reserve("x", tokens * records.size(act_row(config, d_model)))
    y = image.reserve("y", tokens * records.size(act_row(config, d_model)))
    logits = image.reserve("logits", records.size(LOGIT.dram) * tokens * experts) \
        if given_logits else None

    program = Program(config)
    program.load(Buffer.ROUTER_WEIGHTS, dram=router, rows=experts,
                 row_bytes=records.size(router_record(config)))
    if bias is not None:
        program.load(Buffer.ROUTER_BIAS, dram=bias, row_bytes=len(biases.tobytes()))
    program.load(Buffer.ACT0, dram=x, rows=tokens, row_bytes=d_model, sram_stride=row,
                 push_next=True)
    program.route(route, row_words=row_words, logits=logits or 0, pop_prev=True)
    # The loop loads each expert's PARAMS and TABLE itself: the load queue waits for it to end.
    program.expert_loop(experts=experts, table=table, d_model=d_model, d_ff=spec.d_ff,
                        pattern=config.patterns.index(pattern),
                        swiglu=spec.activation == "swiglu", prefetch=prefetch, push_prev=True)
    if shared is not None:
        fields, (first, down) = shared
        if layer.shared_gate is not None:
            program.load(Buffer.PARAMS, dram=fields["first_params"], row_bytes=len(
                params_bytes(first)), pop_next=True)
            program.vector(VectorOp.GATE, rows=tokens, width=d_model, a=Buffer.ACT0,
                           dst=Buffer.GATES, params=gate_params,
                           multiplier=gate["multiplier"], shift=gate["shift"])
        else:
            program.load(Buffer.GATES, dram=gate_entries, row_bytes=len(ones.tobytes()),
                         pop_next=True)
            program.load(Buffer.PARAMS, dram=fields["first_params"],
                         row_bytes=len(params_bytes(first)))
        program.load(Buffer.TABLE, dram=fields["table"], row_bytes=records.size(ACTIVATION_TABLE),
                     push_next=True)
        first_step = plan_pass(config, tokens, d_model, spec.shared_d_ff, pattern,
                               swiglu=spec.activation == "swiglu", activation=True,
                               to_buffer=True)
        program.linear(first_step.command(first.swiglu_multiplier, first.swiglu_shift),
                       weights=fields["first"], pop_prev=True, push_prev=True)
        program.load(Buffer.PARAMS, dram=fields["down_params"], row_bytes=len(params_bytes(down)),
                     pop_next=True, push_next=True)
        down_step = plan_pass(config, tokens, spec.shared_d_ff, d_model, pattern, src=1,
                              accumulate=True)
        program.linear(down_step.command(), weights=fields["down"], pop_prev=True,
                       push_prev=True)
    program.load(Buffer.PARAMS, dram=combine_params, row_bytes=combine.nbytes, pop_next=True,
                 push_next=True)
    program.linear(drain.command(), pop_prev=True, push_next=True)
    program.store(Buffer.ACT1, dram=y, rows=tokens, row_bytes=d_model,
                  sram_stride=act_row_bytes(config, channels), pop_prev=True)
    program.finish()
    return MoELayerProgram(config, program, bytes(image.data), x, y, tokens, d_model,
                           dict(image.regions), logits)
