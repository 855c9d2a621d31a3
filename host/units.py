"""What each compute instruction does to the memories, computed with `sw/`'s integer reference: the
behaviour of the units the emulator stands for.

LINEAR is one Expert-FFN pass computed from its packed weight words (`sw.sparsity.unpack`), the
PARAMS records and TABLE exactly as the engine computes (`sw.numerics.epilogue`, the SwiGLU
requantisation, gate-weighted accumulation into OUT, the drain); ROUTE is `sw.router.QuantizedRouter`
into DISPATCH; EXPERT_LOOP walks DISPATCH with each expert's `DESCRIPTOR`; ATTENTION is
`sw.attention.attention_fixed`; VECTOR is `sw.vector`. An instruction a unit refuses
(`formats.instructions.check`) stops the run with `ErrorCode.BAD_FIELD` before it touches anything.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import AccelConfig
from ..formats import expert_ffn, instructions, records
from ..formats.attention import padded_shape
from ..formats.buffers import Buffer, act_row, act_row_bytes, out_dtype, out_row_bytes
from ..formats.epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS, REQUANT
from ..formats.instructions import DESCRIPTOR, ErrorCode, Opcode
from ..formats.numbers import LOGIT_BITS
from ..formats.rules import normalise
from ..formats.router import (DISPATCH_COUNT, LOGIT, SELECTION_BIAS, TOKEN_GATE, RouterMode,
                              dispatch_table, router_record)
from ..formats.vector import EPS_LIMIT, VectorOp, operand_layout
from ..sw import attention as sa
from ..sw import numerics as nx
from ..sw import vector as sv
from ..sw.reference import MoESpec
from ..sw.router import QuantizedRouter
from ..sw.router import dispatch_table as route_queues
from ..sw.sparsity import WeightBlocks, unpack
from .memory import Memory, Stop

__all__ = ["execute", "expert_tokens"]

_UNIT = {Opcode.LINEAR: "the Expert-FFN engine", Opcode.ROUTE: "the router",
         Opcode.EXPERT_LOOP: "the expert loop", Opcode.ATTENTION: "the attention unit",
         Opcode.VECTOR: "the vector unit"}


def execute(config: AccelConfig, memory: Memory, opcode: Opcode, fields: dict) -> None:
    """Run one instruction on `memory`; `Stop` with the hardware's error code when it refuses."""
    if opcode in (Opcode.NOP, Opcode.SYNC, Opcode.FINISH):
        return
    # Instructions written by hand may hold integers where a decoded one holds enum members.
    fields, reasons = normalise(instructions.bodies(config)[opcode], fields)
    if reasons:
        raise Stop(ErrorCode.BAD_FIELD, ", ".join(reasons))
    if opcode in (Opcode.LOAD, Opcode.STORE):
        memory.transfer(fields, load=opcode is Opcode.LOAD)
        return
    reasons = instructions.check(config, opcode, fields)
    if reasons:
        raise Stop(ErrorCode.BAD_FIELD, f"{_UNIT[opcode]} refuses " + ", ".join(reasons))
    {Opcode.LINEAR: _linear, Opcode.ROUTE: _route, Opcode.EXPERT_LOOP: _expert_loop,
     Opcode.ATTENTION: _attention, Opcode.VECTOR: _vector}[opcode](config, memory, fields)


# -- the Expert-FFN engine ---------------------------------------------------------------------------

def _linear(config: AccelConfig, memory: Memory, fields: dict) -> None:
    command = fields["command"]
    size = expert_ffn.weight_bytes(config, command)
    if not size:                                        # a drain reads no weights
        weights = b""
    elif fields["preloaded"]:
        span = memory.span(Buffer.WEIGHT, fields["sram"], size, "preloaded weights")
        weights = bytes(memory.buffers[Buffer.WEIGHT][span])
    else:
        weights = memory.read(fields["weights"], size, "weights")
    _pass(config, memory, command, weights)


def _refuse(reasons: list[str]) -> None:
    """A value read from memory that the unit's on-chip field cannot hold stops the run."""
    if reasons:
        raise Stop(ErrorCode.BAD_FIELD, "; ".join(reasons))


def _params(config: AccelConfig, memory: Memory, channels: int) -> tuple[torch.Tensor, ...]:
    entries = memory.buffer_records(Buffer.PARAMS, CHANNEL_PARAMS.dram, channels, "parameters")
    _refuse(CHANNEL_PARAMS.refusals(config, entries, "PARAMS channel"))
    return tuple(torch.from_numpy(entries[name].astype(np.int64))
                 for name in ("bias", "multiplier", "shift"))


def _table(memory: Memory) -> torch.Tensor:
    table = memory.buffer_records(Buffer.TABLE, ACTIVATION_TABLE, 1, "activation table")[0]
    return torch.from_numpy(table.astype(np.int64))


def _weights(config: AccelConfig, command: dict, source: bytes) -> torch.Tensor:
    """The dense ``[tiles x mac_rows, chunks x chunk_inputs]`` matrix the packed words hold."""
    pattern = config.patterns[command["pattern"]]
    tiles, chunks = command["tiles"], command["chunks"]
    blocks = WeightBlocks(source, pattern, tiles * config.mac_rows,
                          chunks * expert_ffn.chunk_inputs(config, pattern), tiles, chunks,
                          expert_ffn.weight_word_bytes(config, pattern))
    return unpack(blocks, config)


def _wrap32(values: torch.Tensor) -> torch.Tensor:
    """int32 two's-complement wrap of the output accumulator."""
    return ((values + (1 << 31)) % (1 << 32)) - (1 << 31)


def _pass(config: AccelConfig, memory: Memory, command: dict, weights: bytes, rows=None) -> None:
    """One engine pass on the buffers (a command the engine takes): `weights` its packed words;
    `rows` the activation rows it reads (a gather; default ``0 .. tokens-1``)."""
    tokens, tiles, lanes = command["tokens"], command["tiles"], config.mac_rows
    channels = tiles * lanes
    bias, multiplier, shift = _params(config, memory, channels)
    src = Buffer.ACT1 if command["src"] else Buffer.ACT0
    dst = Buffer.ACT0 if command["src"] else Buffer.ACT1
    row_bytes = command["dst_row_words"] * config.act_word_bytes
    out_stride, out_type = out_row_bytes(config, channels), out_dtype(config)
    if command["drain"]:
        acc = memory.rows(Buffer.OUT, tokens, channels, out_stride, "drain", out_type)
        y = nx.epilogue(acc, bias, multiplier, shift)
        memory.put_rows(Buffer.OUT, torch.zeros_like(acc), out_stride, "drain", out_type)
        memory.put_rows(dst, y, row_bytes, "drain result")
        return
    w = _weights(config, command, weights)
    src_bytes = command["src_row_words"] * config.act_word_bytes
    x = memory.rows(src, tokens, src_bytes, src_bytes, "pass input", index=rows)
    width = min(x.shape[1], w.shape[1])
    acc = (x[:, :width].to(torch.float64) @ w[:, :width].to(torch.float64).T).to(torch.int64)
    table = _table(memory) if command["activation"] else None
    if command["swiglu"]:
        half = lanes // 2
        by_tile = acc.view(tokens, tiles, 2, half)
        params = [t.view(tiles, 2, half) for t in (bias, multiplier, shift)]
        gate = nx.epilogue(by_tile[:, :, 0], *(p[:, 0] for p in params), table)
        up = nx.epilogue(by_tile[:, :, 1], *(p[:, 1] for p in params))
        y = nx.requantize(gate * up, command["swiglu_multiplier"],
                          command["swiglu_shift"]).reshape(tokens, tiles * half)
    else:
        y = nx.epilogue(acc, bias, multiplier, shift, table)
    if command["accumulate"]:
        entries = memory.buffer_records(Buffer.GATES, TOKEN_GATE.dram, tokens, "gate table")
        out_rows, gate = entries["token"].astype(np.int64), entries["gate"].astype(np.int64)
        if out_rows.size and int(out_rows.max()) >= config.max_tokens:
            raise Stop(ErrorCode.BAD_FIELD, f"gate table row {int(out_rows.max())} is beyond "
                                            f"max_tokens={config.max_tokens}")
        # Rows add one after the other, as the engine adds them (a row may come twice).
        unique, where = np.unique(out_rows, return_inverse=True)
        total = memory.rows(Buffer.OUT, 0, channels, out_stride, "accumulate", out_type,
                            index=unique)
        total.index_add_(0, torch.from_numpy(where.reshape(-1)),
                         torch.as_tensor(gate).unsqueeze(1) * y)
        memory.put_rows(Buffer.OUT, _wrap32(total), out_stride, "accumulate", out_type,
                        index=unique)
    else:
        # each row's channels, at the start of its row (the bytes after them keep their values)
        memory.put_rows(dst, y[:, :row_bytes], row_bytes, "pass result")


# -- the router and the expert loop --------------------------------------------------------------

def _route(config: AccelConfig, memory: Memory, fields: dict) -> None:
    command = fields["command"]
    tokens, experts, k = command["tokens"], command["experts"], command["k"]
    mode = RouterMode(command["mode"]).label
    grouped = command["groups"] > 1
    spec = MoESpec(1, 1, experts, k, router=mode, n_groups=command["groups"],
                   topk_groups=command["topk_groups"] if grouped else 1)
    if command["compute"]:
        width = command["chunks"] * config.router_lanes
        stride = fields["row_words"] * config.act_word_bytes
        x = memory.rows(Buffer.ACT0, tokens, width, stride, "router tokens")
        weights = memory.buffer_records(Buffer.ROUTER_WEIGHTS, router_record(config), experts,
                                        "router weights")
        _refuse(REQUANT.refusals(config, weights["requant"], "router weights of expert"))
        w = torch.from_numpy(weights["weights"][:, :width].astype(np.int64))
        multiplier = torch.from_numpy(weights["requant"]["multiplier"].astype(np.int64))
        shift = torch.from_numpy(weights["requant"]["shift"].astype(np.int64))
        acc = (x.to(torch.float64) @ w.to(torch.float64).T).to(torch.int64)
        logits = nx.requantize(acc, multiplier, shift, bits=LOGIT_BITS)
    else:
        given = memory.read_records(LOGIT.dram, fields["logits"], tokens * experts,
                                    "router logits")
        logits = torch.from_numpy(given["value"].astype(np.int64)).reshape(tokens, experts)
    bias = None
    if mode == "sigmoid_bias":
        biases = memory.buffer_records(Buffer.ROUTER_BIAS, SELECTION_BIAS.dram, experts,
                                       "selection biases")
        _refuse(SELECTION_BIAS.refusals(config, biases, "selection bias of expert"))
        bias = torch.from_numpy(biases["bias"].astype(np.int64))
    routing = QuantizedRouter(spec, None, bias).route(logits)
    _dispatch(config, memory, routing, experts)


def _dispatch(config: AccelConfig, memory: Memory, routing, experts: int) -> None:
    """The router's writes: the counts of the first `experts` cleared, then each expert's queue of
    (token, gate) and its count."""
    table = records.view(dispatch_table(config), memory.buffers[Buffer.DISPATCH])[0]
    table["counts"]["count"][:experts] = 0
    for expert, (rows, gates) in enumerate(route_queues(routing, experts,
                                                        config.dispatch_capacity)):
        count = rows.numel()
        table["counts"][expert]["count"] = count
        table["queues"][expert]["token"][:count] = rows.numpy()
        table["queues"][expert]["gate"][:count] = gates.numpy()


def expert_tokens(config: AccelConfig, memory: Memory) -> list[int]:
    """The dispatch table's token counts."""
    counts = memory.buffer_records(Buffer.DISPATCH, DISPATCH_COUNT.dram, config.max_experts,
                                   "dispatch counts")
    return [int(c) for c in counts["count"]]


def _queue(config: AccelConfig, memory: Memory, expert: int) -> tuple[np.ndarray, np.ndarray]:
    table = records.view(dispatch_table(config), bytes(memory.buffers[Buffer.DISPATCH]))[0]
    count = int(table["counts"][expert]["count"])
    if count > config.dispatch_capacity:
        raise Stop(ErrorCode.BAD_FIELD, f"expert {expert}'s count {count} is beyond the "
                                        f"{config.dispatch_capacity} slots of a queue")
    entries = table["queues"][expert][:count]
    return entries["token"].astype(np.int64), entries["gate"].astype(np.int64)


def _expert_loop(config: AccelConfig, memory: Memory, fields: dict) -> None:
    descriptor_bytes = DESCRIPTOR.size
    for expert in range(fields["experts"]):
        rows, gates = _queue(config, memory, expert)
        if not rows.size:
            continue
        if int(rows.max()) >= config.max_tokens:
            raise Stop(ErrorCode.BAD_FIELD, f"expert {expert}'s queue names token "
                                            f"{int(rows.max())}, beyond max_tokens")
        read = memory.read_records(DESCRIPTOR.dram, fields["table"] + descriptor_bytes * expert,
                                   1, f"expert {expert}'s descriptor")
        descriptor = read[0]
        multiplier, shift = int(descriptor["swiglu_multiplier"]), int(descriptor["swiglu_shift"])
        reasons = DESCRIPTOR.refusals(config, read, "descriptor") or instructions.expert_check(
            config, fields, int(rows.size), multiplier, shift)
        if reasons:
            raise Stop(ErrorCode.BAD_FIELD, f"the expert loop refuses expert {expert}: "
                                            + ", ".join(reasons))
        first, down = instructions.expert_loop_commands(config, fields, int(rows.size),
                                                        multiplier, shift)
        table = memory.read(int(descriptor["table"]), records.size(ACTIVATION_TABLE),
                            f"expert {expert}'s table")
        memory.put(Buffer.TABLE, 0, table, "activation table")
        entries = records.zeros(TOKEN_GATE.dram, rows.size)
        entries["token"], entries["gate"] = rows, gates
        memory.put(Buffer.GATES, 0, entries.tobytes(), "gate table")
        for command, weights, params, pass_rows in (
                (first, "first", "first_params", rows),
                (down, "down", "down_params", None)):
            size = command["tiles"] * config.mac_rows * CHANNEL_PARAMS.size
            memory.put(Buffer.PARAMS, 0, memory.read(int(descriptor[params]), size,
                                                     f"expert {expert}'s {params}"), "parameters")
            words = memory.read(int(descriptor[weights]), expert_ffn.weight_bytes(config, command),
                                f"expert {expert}'s {weights} weights")
            _pass(config, memory, command, words, rows=pass_rows)


# -- vector operations and attention ---------------------------------------------------------------

def _vector(config: AccelConfig, memory: Memory, fields: dict) -> None:
    op, rows, width = fields["op"], fields["rows"], fields["width"]
    stride = act_row_bytes(config, width)
    mult, shift = fields["multiplier"], fields["shift"]
    if op is VectorOp.REQUANT:
        acc = memory.rows(Buffer.OUT, rows, width, out_row_bytes(config, width), "REQUANT input",
                          out_dtype(config))
        memory.put_rows(fields["dst"], sv.requant(acc, mult, shift), stride, "REQUANT result")
        return
    a = memory.rows(fields["a"], rows, width, stride, f"{op.name} input")
    operands = operand_layout(op, rows, width, fields["head_dim"])
    params = None
    if operands is not None:
        params = memory.read_records(operands, fields["params"], 1, f"{op.name} operands")[0]
    if op is VectorOp.ADD:
        b = memory.rows(fields["b"], rows, width, stride, "ADD input b")
        y = sv.add(a, b, mult, fields["multiplier_b"], shift)
    elif op is VectorOp.MUL:
        b = memory.rows(fields["b"], rows, width, stride, "MUL input b")
        y = sv.multiply(a, b, mult, shift)
    elif op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
        if not 0 <= int(params["eps_q"]) < EPS_LIMIT:
            raise Stop(ErrorCode.BAD_FIELD, f"{op.name}: eps_q={int(params['eps_q'])} at DRAM "
                                            f"{fields['params']:#x} is outside [0, 2**62)")
        weight = torch.from_numpy(params["weight"].astype(np.int64))
        bias = torch.from_numpy(params["bias"].astype(np.int64))
        norm = sv.rmsnorm if op is VectorOp.RMSNORM else sv.layernorm
        y = norm(a, weight, bias, int(params["eps_q"]), mult, shift)
    elif op is VectorOp.ROPE:
        table = torch.from_numpy(np.asarray(params).astype(np.int64))
        y = sv.rope(a, table, fields["head_dim"])
    elif op is VectorOp.GATE:
        weight = torch.from_numpy(np.asarray(params).astype(np.int64))
        gate = sv.sigmoid_gate(a, weight, mult, shift)
        entries = records.zeros(TOKEN_GATE.dram, rows)
        entries["token"], entries["gate"] = np.arange(rows), gate.numpy()
        memory.put(Buffer.GATES, 0, entries.tobytes(), "GATE result")
        return
    else:
        raise Stop(ErrorCode.BAD_FIELD, f"vector operation {op.name} is not built")
    memory.put_rows(fields["dst"], y, stride, f"{op.name} result")


def _attention(config: AccelConfig, memory: Memory, fields: dict) -> None:
    command = fields["command"]
    shape = padded_shape(config, command)
    dim = shape.head_dim
    row_q, row_kv = act_row(config, shape.heads * dim), act_row(config, shape.kv_heads * dim)
    regions = {"q": (row_q, shape.seq_q), "k": (row_kv, shape.seq_kv),
               "v": (row_kv, shape.seq_kv), "o": (row_q, shape.seq_q)}
    for name, (row, rows) in regions.items():
        memory.window(fields[name], rows * records.size(row), f"attention {name.upper()}")

    def read(name, rows, heads):
        row, count = regions[name]
        values = memory.read_records(row, fields[name], count, f"attention {name.upper()}")
        return torch.from_numpy(values.astype(np.int64)).reshape(rows, heads, dim)

    q = read("q", shape.seq_q, shape.heads)
    k = read("k", shape.seq_kv, shape.kv_heads)
    v = read("v", shape.seq_kv, shape.kv_heads)
    params = sa.AttentionParams(command["score_mult"], command["score_shift"],
                                command["out_mult"], command["out_shift"])
    out = sa.attention_fixed(q, k, v, shape, params)
    result = records.zeros(row_q, shape.seq_q)
    result[:] = out.reshape(shape.seq_q, -1).numpy()
    memory.dram[fields["o"]:fields["o"] + result.nbytes] = result.tobytes()
