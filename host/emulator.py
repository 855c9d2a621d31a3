"""The bit-exact emulator of the instruction set (`moeaccel.isa`): runs a program against a DRAM
window and produces the bytes the hardware must produce, computing with `sw/`'s integer reference.

It keeps what the hardware keeps: the three queues (load, compute, store) with their dependency-token
counters, the on-chip buffers, the DMA window the host granted. It reports what the hardware reports:
an `isa.ErrorCode` and the instruction that raised it; a run never hangs (a deadlock of tokens is
detected, a cycle budget is the watchdog) and never touches memory outside the window.

Every instruction executes: LOAD and STORE move bytes; LINEAR is one Expert-FFN pass computed from
its packed weight words (`sw.sparsity.unpack`), PARAMS records and TABLE exactly as the engine
computes (`sw.numerics.epilogue`, the SwiGLU requantisation, gate-weighted accumulation into OUT,
the drain); ROUTE is `sw.quantized.QuantizedRouter` into DISPATCH; EXPERT_LOOP walks DISPATCH with
each expert's `isa.DESCRIPTOR`; ATTENTION is `sw.attention.attention_fixed`; VECTOR is `sw.vector`.
Formats are those of `moeaccel.isa` (docs/isa.md).

Timing is a model (`instruction_cycles`): each queue runs its instructions in order; an instruction
starts when its queue is free and the tokens it pops have been pushed, so a load can overlap the
compute before it exactly as far as the tokens allow. LINEAR, ATTENTION and ROUTE take the cycles
their units take in RTL simulation (`hw.expert_ffn.ffn_pass_cycles`,
`sw.attention.attention_cycles`, `hw.router.router_cycles`, each equal to the measured counts);
EXPERT_LOOP its experts' passes plus their descriptor and parameter transfers, less what
``prefetch`` overlaps (`expert_loop_cycles`); VECTOR and LOAD/STORE a set-up plus a word or beat a
cycle (`vector_cycles`). The loop's overheads and the vector unit are estimates until the
accelerator top is measured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import isa
from ..config import AccelConfig
from ..hw.expert_ffn import ffn_pass_cycles, weight_word_beats
from ..hw.router import router_cycles
from ..isa import (Buffer, DecodeError, ErrorCode, Instruction, Opcode, Queue, VectorOp,
                   decode_one, split)
from ..sw import attention as sa
from ..sw import numerics as nx
from ..sw import vector as sv
from ..sw.ffn import ShapeError, plan_pass
from ..sw.quantized import QuantizedRouter, dispatch_table
from ..sw.reference import ROUTER_MODES, MoESpec
from ..sw.sparsity import WeightBlocks, chunk_inputs, unpack

__all__ = ["Emulator", "RunResult", "buffer_bytes", "instruction_cycles", "expert_loop_cycles",
           "vector_cycles", "SCHEDULES"]

SCHEDULES = ("parallel", "serial", "random")
TRANSFER_SETUP_CYCLES = 8        # a LOAD or STORE: address set-up before its first beat


def buffer_bytes(config: AccelConfig) -> dict[Buffer, int]:
    """Capacity of each on-chip buffer, from the configuration."""
    first_queue, queue_bytes = isa.dispatch_offsets(config)
    return {
        Buffer.ACT0: config.act_buffer_bytes, Buffer.ACT1: config.act_buffer_bytes,
        Buffer.WEIGHT: config.weight_banks * config.weight_buffer_bytes,
        Buffer.PARAMS: config.max_tiles * config.mac_rows * 8,
        Buffer.TABLE: 256,
        Buffer.GATES: config.max_tokens * isa.GATES_ENTRY.size // 8,
        Buffer.OUT: config.out_buffer_bytes,
        Buffer.ROUTER_WEIGHTS: config.max_experts * isa.router_record_bytes(config),
        Buffer.ROUTER_BIAS: config.max_experts * 4,
        Buffer.DISPATCH: first_queue + config.max_experts * queue_bytes,
    }


@dataclass
class RunResult:
    """How a run ended: ``status`` (`ErrorCode.NONE` after FINISH), the instruction that raised it
    (or the FINISH), the model's cycles, and what each queue did."""

    status: ErrorCode
    instruction: int | None
    message: str
    cycles: int
    executed: int
    busy_cycles: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is ErrorCode.NONE


class _Stop(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


# Token counters, named (from queue, to queue): pushes of the producer, pops of the consumer.
_PUSH = {(Queue.LOAD, "push_next"): (Queue.LOAD, Queue.COMPUTE),
         (Queue.COMPUTE, "push_prev"): (Queue.COMPUTE, Queue.LOAD),
         (Queue.COMPUTE, "push_next"): (Queue.COMPUTE, Queue.STORE),
         (Queue.STORE, "push_prev"): (Queue.STORE, Queue.COMPUTE)}
_POP = {(Queue.COMPUTE, "pop_prev"): (Queue.LOAD, Queue.COMPUTE),
        (Queue.LOAD, "pop_next"): (Queue.COMPUTE, Queue.LOAD),
        (Queue.STORE, "pop_prev"): (Queue.COMPUTE, Queue.STORE),
        (Queue.COMPUTE, "pop_next"): (Queue.STORE, Queue.COMPUTE)}


def _beats(config: AccelConfig, size: int) -> int:
    return -(-size // config.axi_data_bytes)


def instruction_cycles(config: AccelConfig, instruction: Instruction,
                       expert_tokens: list[int] | None = None) -> int:
    """The model's cycles for one instruction (its queue busy that long). An EXPERT_LOOP's depend on
    its experts' token counts, `expert_tokens` (the dispatch table's when it starts)."""
    fields, bus = instruction.fields, config.axi_data_bytes
    opcode = instruction.opcode
    if opcode in (Opcode.LOAD, Opcode.STORE):
        return TRANSFER_SETUP_CYCLES + fields["rows"] * _beats(config, fields["row_bytes"])
    if opcode is Opcode.ROUTE:
        return router_cycles(fields["command"])
    if opcode is Opcode.ATTENTION:
        try:
            shape = _attention_shape(config, fields["command"])
        except ValueError:
            return 1                           # refused at once
        return sa.attention_cycles(shape, config.attention_group, bus)["total"]
    if opcode is Opcode.LINEAR:
        command = fields["command"]
        if command["pattern"] >= len(config.patterns):
            return 1
        return ffn_pass_cycles(config, command, word_beats=1 if fields["preloaded"] else None)
    if opcode is Opcode.EXPERT_LOOP:
        return expert_loop_cycles(config, fields, expert_tokens or [])
    if opcode is Opcode.VECTOR:
        return vector_cycles(config, fields)
    return 1


def _word_bytes(config: AccelConfig, pattern) -> int:
    """Bytes of one packed weight word, padded to whole bus beats (as `sw.sparsity.pack` writes)."""
    return weight_word_beats(config, pattern) * config.axi_data_bytes


def expert_steps(config: AccelConfig, fields: dict, tokens: int):
    """The two passes (`sw.ffn.FFNPass`) of one expert of an EXPERT_LOOP with `tokens` tokens;
    `sw.ffn.ShapeError` for what the configuration cannot hold."""
    pattern = config.patterns[fields["pattern"]]
    first = plan_pass(config, tokens, fields["d_model"], fields["d_ff"], pattern,
                      swiglu=bool(fields["swiglu"]), activation=True, to_buffer=True)
    down = plan_pass(config, tokens, fields["d_ff"], fields["d_model"], pattern, src=1,
                     accumulate=True)
    return first, down


def expert_loop_cycles(config: AccelConfig, fields: dict, expert_tokens: list[int]) -> int:
    """An EXPERT_LOOP with `expert_tokens[e]` tokens for expert e. Per expert with tokens: its
    descriptor, activation table and the two passes' parameters arrive (a transfer each,
    `TRANSFER_SETUP_CYCLES` plus their beats), then its two passes (`ffn_pass_cycles`). With
    ``prefetch`` an expert's transfers and its first weight block load while the expert before it
    issues its last tile, hiding up to that tile's ``tokens x chunks`` cycles. Experts without
    tokens cost nothing. (An estimate until the accelerator top is measured.)"""
    config_patterns = len(config.patterns)
    if fields["pattern"] >= config_patterns:
        return 1
    pattern = config.patterns[fields["pattern"]]
    beats = weight_word_beats(config, pattern)
    total, hidden_window = 0, 0
    for tokens in expert_tokens[:fields["experts"]]:
        if not tokens:
            continue
        try:
            first, down = expert_steps(config, fields, tokens)
        except ShapeError:
            return total + 1                  # refused there
        setup = sum(TRANSFER_SETUP_CYCLES + _beats(config, size) for size in (
            isa.DESCRIPTOR_BYTES, 256, 8 * first.tiles * config.mac_rows,
            8 * down.tiles * config.mac_rows))
        cost = setup + sum(ffn_pass_cycles(config, step.command()) for step in (first, down))
        if fields["prefetch"]:
            lead = setup + 3 + first.chunks * beats          # what can load ahead
            cost -= min(lead, hidden_window)
        total += cost
        hidden_window = tokens * down.chunks
    return total


VECTOR_LATENCY = {VectorOp.RMSNORM: 64, VectorOp.LAYERNORM: 64, VectorOp.GATE: 16}


def vector_cycles(config: AccelConfig, fields: dict) -> int:
    """A VECTOR: an activation word a cycle per row (two passes over a row for the norms: the sum of
    squares, then the scaling), the norms' square root and reciprocal (64), its operands from
    DRAM. (An estimate until the vector unit is built and measured.)"""
    op, rows, width = fields["op"], fields["rows"], fields["width"]
    words = -(-width // config.act_word_bytes)
    passes = 2 if op in (VectorOp.RMSNORM, VectorOp.LAYERNORM) else 1
    operands = {VectorOp.RMSNORM: 8 + 6 * width, VectorOp.LAYERNORM: 8 + 6 * width,
                VectorOp.ROPE: 2 * rows * fields["head_dim"], VectorOp.GATE: width}.get(op, 0)
    load = TRANSFER_SETUP_CYCLES + _beats(config, operands) if operands else 0
    return load + rows * (passes * words + VECTOR_LATENCY.get(op, 0)) + 1


def _attention_shape(config: AccelConfig, command: dict) -> sa.AttentionShape:
    """The padded shape the unit computes: heads of ``head_words`` whole words."""
    return sa.AttentionShape(command["seq_q"], command["seq_kv"],
                             command["kv_heads"] * command["rep"], command["kv_heads"],
                             command["head_words"] * config.axi_data_bytes,
                             bool(command["causal"]))


class Emulator:
    """One accelerator: a DRAM window of `window_bytes` (``dram``, a bytearray the host fills and
    reads) and the on-chip buffers. `watchdog_cycles` bounds a run."""

    def __init__(self, config: AccelConfig, window_bytes: int, watchdog_cycles: int = 1 << 32):
        if not isinstance(window_bytes, int) or window_bytes <= 0:
            raise ValueError(f"the DMA window must be a positive number of bytes, not "
                             f"{window_bytes!r}")
        self.config = config
        self.dram = bytearray(window_bytes)
        self.buffers = {name: bytearray(size) for name, size in buffer_bytes(config).items()}
        self.watchdog_cycles = watchdog_cycles

    # -- running -------------------------------------------------------------------------------

    def run(self, program: bytes | list[Instruction], schedule: str = "parallel",
            seed: int = 0) -> RunResult:
        """Run `program` (bytes, or decoded instructions) to FINISH or to an error.

        ``schedule`` picks among the queues whose next instruction may start: ``parallel`` the one
        the timing model starts first, ``serial`` program order only, each instruction after the
        one before has ended (tokens still counted, as the hardware's serialised debug mode),
        ``random`` any (seeded). The memory results of a
        program that respects its tokens do not depend on the choice.
        """
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        undecodable = None
        if isinstance(program, (bytes, bytearray)):
            # The fetch unit stops at an instruction that does not decode: what comes before it
            # runs, then its error is raised (unless the program finished or failed first).
            instructions = []
            for index, word in enumerate(split(bytes(program))):
                try:
                    instructions.append(decode_one(self.config, word, index))
                except DecodeError as error:
                    undecodable = error
                    break
        else:
            instructions = list(program)
        result = self._run(instructions, schedule, seed)
        if undecodable is not None and result.status in (ErrorCode.NO_FINISH, ErrorCode.DEADLOCK):
            return RunResult(undecodable.code, undecodable.index, str(undecodable), result.cycles,
                             result.executed, result.busy_cycles)
        return result

    def _run(self, instructions: list[Instruction], schedule: str, seed: int) -> RunResult:
        rng = random.Random(seed)
        queues = {q: [i for i, ins in enumerate(instructions) if ins.queue is q] for q in Queue}
        heads = {q: 0 for q in Queue}
        tokens = {pair: [] for pair in _POP.values()}      # push times of pending tokens
        queue_free = {q: 0 for q in Queue}
        busy = {q: 0 for q in Queue}
        done = [False] * len(instructions)
        # The fetch unit dispatches in program order and holds everything after a SYNC until it
        # has ended: an instruction waits for the SYNCs before it.
        syncs = [i for i, ins in enumerate(instructions) if ins.opcode is Opcode.SYNC]
        barrier_end = 0
        finish_time = 0
        executed = 0
        while True:
            ready = []
            for q in Queue:
                if heads[q] >= len(queues[q]):
                    continue
                index = queues[q][heads[q]]
                instruction = instructions[index]
                if not self._tokens_available(instruction, tokens):
                    continue
                if instruction.opcode in (Opcode.SYNC, Opcode.FINISH) and not all(done[:index]):
                    continue
                if schedule == "serial" and index != done.index(False):
                    continue
                if any(not done[s] for s in syncs if s < index):
                    continue
                start = max([queue_free[q], barrier_end]
                            + self._token_times(instruction, tokens))
                if instruction.opcode in (Opcode.SYNC, Opcode.FINISH) or schedule == "serial":
                    start = max(start, finish_time)      # after everything before it
                ready.append((start, index, q))
            if not ready:
                if all(done):
                    return RunResult(ErrorCode.NO_FINISH, None, "the program ended without FINISH",
                                     finish_time, executed, dict(busy))
                first = done.index(False)
                return RunResult(ErrorCode.DEADLOCK, first, f"instruction {first} "
                                 f"({instructions[first].opcode.name}) and every other one left "
                                 f"wait for tokens no instruction will push", finish_time,
                                 executed, dict(busy))
            start, index, q = min(ready) if schedule != "random" else rng.choice(ready)
            instruction = instructions[index]
            cycles = instruction_cycles(self.config, instruction, self._expert_tokens()
                                        if instruction.opcode is Opcode.EXPERT_LOOP else None)
            end = start + cycles
            if end > self.watchdog_cycles:
                return RunResult(ErrorCode.WATCHDOG, index, f"instruction {index} "
                                 f"({instruction.opcode.name}) would end at cycle {end}, past the "
                                 f"watchdog's {self.watchdog_cycles}", finish_time, executed,
                                 dict(busy))
            try:
                self._check_tokens(instruction)
                for name, pair in _POP.items():
                    if name[0] is q and getattr(instruction, name[1]):
                        tokens[pair].pop(0)
                self._execute(instruction)
            except _Stop as stop:
                return RunResult(stop.code, index, f"instruction {index} "
                                 f"({instruction.opcode.name}): {stop}", finish_time, executed,
                                 dict(busy))
            for name, pair in _PUSH.items():
                if name[0] is q and getattr(instruction, name[1]):
                    tokens[pair].append(end)
            queue_free[q] = end
            if instruction.opcode is Opcode.SYNC:
                barrier_end = end
            busy[q] += cycles
            done[index] = True
            heads[q] += 1
            executed += 1
            finish_time = max(finish_time, end)
            if instruction.opcode is Opcode.FINISH:
                return RunResult(ErrorCode.NONE, index, "finished", finish_time, executed,
                                 dict(busy))

    @staticmethod
    def _tokens_available(instruction: Instruction, tokens) -> bool:
        return all(tokens[pair] for name, pair in _POP.items()
                   if name[0] is instruction.queue and getattr(instruction, name[1]))

    @staticmethod
    def _token_times(instruction: Instruction, tokens) -> list[int]:
        return [tokens[pair][0] for name, pair in _POP.items()
                if name[0] is instruction.queue and getattr(instruction, name[1])]

    @staticmethod
    def _check_tokens(instruction: Instruction) -> None:
        """A load queue has no previous queue, a store queue no next one."""
        q = instruction.queue
        if q is Queue.LOAD and (instruction.pop_prev or instruction.push_prev):
            raise _Stop(ErrorCode.BAD_FIELD, "the load queue has no previous queue to exchange "
                                             "tokens with")
        if q is Queue.STORE and (instruction.pop_next or instruction.push_next):
            raise _Stop(ErrorCode.BAD_FIELD, "the store queue has no next queue to exchange "
                                             "tokens with")

    # -- the instructions ------------------------------------------------------------------------

    def _execute(self, instruction: Instruction) -> None:
        opcode, fields = instruction.opcode, instruction.fields
        if opcode in (Opcode.NOP, Opcode.SYNC, Opcode.FINISH):
            return
        {Opcode.LOAD: lambda: self._transfer(fields, load=True),
         Opcode.STORE: lambda: self._transfer(fields, load=False),
         Opcode.LINEAR: lambda: self._linear(fields),
         Opcode.ROUTE: lambda: self._route(fields),
         Opcode.EXPERT_LOOP: lambda: self._expert_loop(fields),
         Opcode.ATTENTION: lambda: self._attention(fields),
         Opcode.VECTOR: lambda: self._vector(fields)}[opcode]()

    # -- memory ----------------------------------------------------------------------------------

    def _window(self, start: int, length: int, what: str) -> None:
        if start < 0 or length < 0 or start + length > len(self.dram):
            raise _Stop(ErrorCode.DMA_WINDOW, f"{what} bytes {start}..{start + length - 1} are "
                                              f"outside the DMA window of {len(self.dram)} bytes")

    def _read(self, start: int, length: int, what: str) -> bytes:
        self._window(start, length, what)
        return bytes(self.dram[start:start + length])

    def _span(self, buffer: Buffer, start: int, length: int, what: str) -> slice:
        if start + length > len(self.buffers[buffer]):
            raise _Stop(ErrorCode.BAD_FIELD, f"{what}: {buffer.name} bytes up to "
                                             f"{start + length} are beyond its "
                                             f"{len(self.buffers[buffer])}")
        return slice(start, start + length)

    def _rows(self, buffer: Buffer, rows: int, width: int, stride: int, what: str,
              dtype=np.int8, index=None) -> torch.Tensor:
        """``rows`` rows (or the rows `index` names) of `width` values, `stride` bytes apart."""
        item = np.dtype(dtype).itemsize
        index = np.arange(rows) if index is None else np.asarray(index, dtype=np.int64)
        last = int(index.max()) if index.size else -1
        span = self._span(buffer, 0, (last * stride + width * item) if index.size else 0, what)
        raw = np.frombuffer(self.buffers[buffer], dtype=np.uint8)[span]
        picked = [raw[r * stride:r * stride + width * item] for r in index.tolist()]
        values = np.stack(picked).view(dtype) if picked else np.zeros((0, width), dtype)
        return torch.from_numpy(values.astype(np.int64).reshape(len(picked), width))

    def _put_rows(self, buffer: Buffer, values: torch.Tensor, stride: int, what: str,
                  dtype=np.int8, index=None) -> None:
        rows, width = values.shape
        item = np.dtype(dtype).itemsize
        index = np.arange(rows) if index is None else np.asarray(index, dtype=np.int64)
        if not rows:
            return
        self._span(buffer, 0, int(index.max()) * stride + width * item, what)
        raw = values.numpy().astype(dtype).view(np.uint8).reshape(rows, width * item)
        target = self.buffers[buffer]
        for row, r in zip(raw, index.tolist()):
            target[r * stride:r * stride + width * item] = row.tobytes()

    def _records(self, source: bytes, layout, count: int) -> np.ndarray:
        dtype = isa.as_dtype(layout)
        return np.frombuffer(source, dtype=dtype, count=count)

    def _transfer(self, fields: dict, load: bool) -> None:
        buffer = self.buffers[fields["buffer"]]
        rows, row_bytes = fields["rows"], fields["row_bytes"]
        stride = fields["sram_stride"] or row_bytes
        last = fields["sram"] + (rows - 1) * stride + row_bytes if rows else 0
        if last > len(buffer):
            raise _Stop(ErrorCode.BAD_FIELD, f"{fields['buffer'].name} bytes up to {last} are "
                                             f"beyond its {len(buffer)}")
        for row in range(rows):
            dram = fields["dram"] + row * fields["dram_stride"]
            self._window(dram, row_bytes, "DRAM")
        for row in range(rows):
            dram = fields["dram"] + row * fields["dram_stride"]
            sram = fields["sram"] + row * stride
            if load:
                buffer[sram:sram + row_bytes] = self.dram[dram:dram + row_bytes]
            else:
                self.dram[dram:dram + row_bytes] = buffer[sram:sram + row_bytes]

    # -- the Expert-FFN engine -------------------------------------------------------------------

    def _check_pass(self, command: dict) -> None:
        """What the engine refuses (`hw.expert_ffn.FFNEngine`), and rows beyond its buffers."""
        config = self.config
        reasons = []
        if not 1 <= command["tokens"] <= config.max_tokens:
            reasons.append(f"tokens={command['tokens']} (1 .. {config.max_tokens})")
        if not 1 <= command["tiles"] <= config.max_tiles:
            reasons.append(f"tiles={command['tiles']} (1 .. {config.max_tiles})")
        if not command["drain"] and not 1 <= command["chunks"] <= config.weight_bank_words:
            reasons.append(f"chunks={command['chunks']} (1 .. {config.weight_bank_words})")
        if command["drain"] and command["tokens"] * command["tiles"] > config.out_buffer_words:
            reasons.append(f"a drain of {command['tokens']} x {command['tiles']} words (OUT holds "
                           f"{config.out_buffer_words})")
        if command["pattern"] >= len(config.patterns):
            reasons.append(f"pattern={command['pattern']} ({len(config.patterns)} built)")
        per_tile = config.mac_rows // 2 if command["swiglu"] else config.mac_rows
        if command["swiglu"] and (command["accumulate"] or command["drain"]):
            reasons.append("swiglu with accumulate or drain (a SwiGLU pass feeds the next pass)")
        if not command["accumulate"] and command["dst_row_words"] * config.act_word_bytes \
                < command["tiles"] * per_tile:
            reasons.append(f"result rows of {command['dst_row_words']} words for "
                           f"{command['tiles'] * per_tile} channels")
        if not command["drain"] and command["tokens"] * command["src_row_words"] \
                > config.act_buffer_words:
            reasons.append(f"{command['tokens']} rows of {command['src_row_words']} words (an "
                           f"activation buffer holds {config.act_buffer_words})")
        if reasons:
            raise _Stop(ErrorCode.BAD_FIELD, "the Expert-FFN engine refuses " + ", ".join(reasons))

    def _params(self, channels: int) -> tuple[torch.Tensor, ...]:
        raw = bytes(self.buffers[Buffer.PARAMS][self._span(Buffer.PARAMS, 0, 8 * channels,
                                                           "parameters")])
        records = self._records(raw, isa.PARAMS_ENTRY, channels)
        return tuple(torch.from_numpy(records[name].astype(np.int64))
                     for name in ("bias", "multiplier", "shift"))

    def _weights(self, command: dict, source: bytes) -> torch.Tensor:
        """The dense ``[tiles x mac_rows, chunks x chunk_inputs]`` matrix the packed words hold."""
        config = self.config
        pattern = config.patterns[command["pattern"]]
        tiles, chunks = command["tiles"], command["chunks"]
        word = _word_bytes(config, pattern)
        blocks = WeightBlocks(source, pattern, tiles * config.mac_rows,
                              chunks * chunk_inputs(config, pattern), tiles, chunks, word)
        return unpack(blocks, config)

    def weight_bytes(self, command: dict) -> int:
        """Bytes of a pass's packed weight words."""
        config = self.config
        if command["drain"]:
            return 0
        word = _word_bytes(config, config.patterns[command["pattern"]])
        return command["tiles"] * command["chunks"] * word

    def _pass(self, command: dict, weights: bytes, rows=None) -> None:
        """One engine pass on the buffers: `weights` its packed words; `rows` the activation rows it
        reads (a gather; default ``0 .. tokens-1``)."""
        config = self.config
        self._check_pass(command)
        tokens, tiles, lanes = command["tokens"], command["tiles"], config.mac_rows
        channels = tiles * lanes
        bias, multiplier, shift = self._params(channels)
        src = Buffer.ACT1 if command["src"] else Buffer.ACT0
        dst = Buffer.ACT0 if command["src"] else Buffer.ACT1
        row_bytes = command["dst_row_words"] * config.act_word_bytes
        out_stride = channels * 4
        if command["drain"]:
            acc = self._rows(Buffer.OUT, tokens, channels, out_stride, "drain", np.int32)
            y = nx.epilogue(acc, bias, multiplier, shift)
            self._put_rows(Buffer.OUT, torch.zeros_like(acc), out_stride, "drain", np.int32)
            self._put_rows(dst, y, row_bytes, "drain result")
            return
        w = self._weights(command, weights)
        x = self._rows(src, tokens, command["src_row_words"] * config.act_word_bytes,
                       command["src_row_words"] * config.act_word_bytes, "pass input",
                       index=rows)
        width = min(x.shape[1], w.shape[1])
        acc = (x[:, :width].to(torch.float64) @ w[:, :width].to(torch.float64).T).to(torch.int64)
        table = self._table() if command["activation"] else None
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
            entries = self._records(bytes(self.buffers[Buffer.GATES][self._span(
                Buffer.GATES, 0, 4 * tokens, "gate table")]), isa.GATES_ENTRY, tokens)
            out_rows, gate = entries["row"].astype(np.int64), entries["gate"].astype(np.int64)
            if out_rows.size and int(out_rows.max()) >= config.max_tokens:
                raise _Stop(ErrorCode.BAD_FIELD, f"gate table row {int(out_rows.max())} is beyond "
                                                 f"max_tokens={config.max_tokens}")
            # Rows add one after the other, as the engine adds them (a row may come twice).
            unique, where = np.unique(out_rows, return_inverse=True)
            total = self._rows(Buffer.OUT, 0, channels, out_stride, "accumulate", np.int32,
                               index=unique)
            total.index_add_(0, torch.from_numpy(where.reshape(-1)),
                             torch.as_tensor(gate).unsqueeze(1) * y)
            self._put_rows(Buffer.OUT, _wrap32(total), out_stride, "accumulate", np.int32,
                           index=unique)
        else:
            wide = torch.zeros(tokens, row_bytes, dtype=torch.int64)
            wide[:, :min(row_bytes, y.shape[1])] = y[:, :row_bytes]
            self._put_rows(dst, wide, row_bytes, "pass result")

    def _table(self) -> torch.Tensor:
        raw = bytes(self.buffers[Buffer.TABLE][:256])
        return torch.from_numpy(np.frombuffer(raw, dtype=np.int8).astype(np.int64))

    def _linear(self, fields: dict) -> None:
        command = fields["command"]
        self._check_pass(command)
        size = self.weight_bytes(command)
        if fields["preloaded"]:
            span = self._span(Buffer.WEIGHT, fields["sram"], size, "preloaded weights")
            weights = bytes(self.buffers[Buffer.WEIGHT][span])
        else:
            weights = self._read(fields["weights"], size, "weights")
        self._pass(command, weights)

    # -- the router and the expert loop ----------------------------------------------------------

    def _route(self, fields: dict) -> None:
        config, command = self.config, fields["command"]
        tokens, experts, k = command["tokens"], command["experts"], command["k"]
        mode = ROUTER_MODES[command["mode"].value]
        groups = command["groups"] or 1
        try:
            if not 1 <= tokens <= config.max_tokens or not 1 <= experts <= config.max_experts:
                raise ValueError(f"tokens={tokens} or experts={experts} out of range")
            if not 1 <= k <= min(experts, config.max_k):
                raise ValueError(f"k={k} (1 .. {min(experts, config.max_k)})")
            if groups > 1 and (groups * command["group_size"] != experts
                               or not 1 <= command["topk_groups"] <= groups):
                raise ValueError(f"{groups} groups of {command['group_size']} for {experts} "
                                 f"experts, best {command['topk_groups']}")
            spec = MoESpec(1, 1, experts, k, router=mode, n_groups=groups,
                           topk_groups=command["topk_groups"] if groups > 1 else 1)
        except ValueError as error:
            raise _Stop(ErrorCode.BAD_FIELD, f"the router refuses: {error}") from None
        if command["compute"]:
            chunks = command["chunks"]
            if not 1 <= chunks <= config.router_chunks:
                raise _Stop(ErrorCode.BAD_FIELD, f"the router refuses chunks={chunks} "
                                                 f"(1 .. {config.router_chunks})")
            width = chunks * config.router_lanes
            stride = fields["row_words"] * config.act_word_bytes
            if stride < width:
                raise _Stop(ErrorCode.BAD_FIELD, f"rows of {fields['row_words']} words are "
                                                 f"narrower than {chunks} router chunks")
            x = self._rows(Buffer.ACT0, tokens, width, stride, "router tokens")
            record = isa.router_record_bytes(config)
            raw = np.frombuffer(bytes(self.buffers[Buffer.ROUTER_WEIGHTS][
                self._span(Buffer.ROUTER_WEIGHTS, 0, experts * record, "router weights")]),
                dtype=np.uint8).reshape(experts, record)
            w = torch.from_numpy(raw[:, :width].view(np.int8).astype(np.int64))
            tail = raw[:, config.router_chunks * config.router_lanes:]
            multiplier = torch.from_numpy(tail[:, :2].copy().view("<u2")[:, 0].astype(np.int64))
            shift = torch.from_numpy(tail[:, 2].astype(np.int64))
            acc = (x.to(torch.float64) @ w.to(torch.float64).T).to(torch.int64)
            logits = nx.requantize(acc, multiplier, shift, bits=16)
        else:
            raw = self._read(fields["logits"], tokens * experts * 2, "router logits")
            logits = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.int64)) \
                .reshape(tokens, experts)
        bias = None
        if mode == "sigmoid_bias":
            raw = bytes(self.buffers[Buffer.ROUTER_BIAS][:4 * experts])
            bias = torch.from_numpy(np.frombuffer(raw, dtype="<i4").astype(np.int64))
        routing = QuantizedRouter(spec, None, bias).route(logits)
        self._dispatch(routing, experts)

    def _dispatch(self, routing, experts: int) -> None:
        config = self.config
        first, per_queue = isa.dispatch_offsets(config)
        table = self.buffers[Buffer.DISPATCH]
        counts = np.zeros(config.max_experts, dtype="<u2")
        for expert, (rows, gates) in enumerate(dispatch_table(routing, experts,
                                                              config.dispatch_capacity)):
            counts[expert] = rows.numel()
            entries = np.zeros(rows.numel(), dtype=isa.as_dtype(isa.DISPATCH_ENTRY))
            entries["row"], entries["gate"] = rows.numpy(), gates.numpy()
            start = first + expert * per_queue
            table[start:start + entries.nbytes] = entries.tobytes()
        table[:counts.nbytes] = counts.tobytes()

    def _expert_tokens(self) -> list[int]:
        """The dispatch table's token counts."""
        counts = np.frombuffer(bytes(self.buffers[Buffer.DISPATCH]), dtype="<u2",
                               count=self.config.max_experts)
        return [int(c) for c in counts]

    def _queue(self, expert: int) -> tuple[np.ndarray, np.ndarray]:
        first, per_queue = isa.dispatch_offsets(self.config)
        table = bytes(self.buffers[Buffer.DISPATCH])
        count = int(np.frombuffer(table, dtype="<u2", count=1, offset=2 * expert)[0])
        if count > self.config.dispatch_capacity:
            raise _Stop(ErrorCode.BAD_FIELD, f"expert {expert}'s count {count} is beyond the "
                                             f"{self.config.dispatch_capacity} slots of a queue")
        entries = np.frombuffer(table, dtype=isa.as_dtype(isa.DISPATCH_ENTRY), count=count,
                                offset=first + expert * per_queue)
        return entries["row"].astype(np.int64), entries["gate"].astype(np.int64)

    def expert_passes(self, fields: dict, tokens: int) -> list[dict]:
        """The two engine commands of one expert of an EXPERT_LOOP with `tokens` tokens."""
        config = self.config
        pattern = config.patterns[fields["pattern"]] if fields["pattern"] < len(config.patterns) \
            else None
        if pattern is None:
            raise _Stop(ErrorCode.BAD_FIELD, f"pattern={fields['pattern']} is not built "
                                             f"({len(config.patterns)} patterns)")
        try:
            first, down = expert_steps(config, fields, tokens)
        except ShapeError as error:
            raise _Stop(ErrorCode.BAD_FIELD, f"the expert loop refuses: {error}") from None
        return [first.command(), down.command()]

    def _expert_loop(self, fields: dict) -> None:
        config = self.config
        if not 1 <= fields["experts"] <= config.max_experts:
            raise _Stop(ErrorCode.BAD_FIELD, f"experts={fields['experts']} "
                                             f"(1 .. {config.max_experts})")
        for expert in range(fields["experts"]):
            rows, gates = self._queue(expert)
            if not rows.size:
                continue
            if int(rows.max()) >= config.max_tokens:
                raise _Stop(ErrorCode.BAD_FIELD, f"expert {expert}'s queue names token "
                                                 f"{int(rows.max())}, beyond max_tokens")
            raw = self._read(fields["table"] + isa.DESCRIPTOR_BYTES * expert,
                             isa.DESCRIPTOR_BYTES, f"expert {expert}'s descriptor")
            descriptor = self._records(raw, isa.DESCRIPTOR, 1)[0]
            first, down = self.expert_passes(fields, int(rows.size))
            first["swiglu_multiplier"] = int(descriptor["swiglu_multiplier"])
            first["swiglu_shift"] = int(descriptor["swiglu_shift"])
            if first["swiglu_shift"] > nx.SHIFT_MAX or first["swiglu_multiplier"] >> nx.MULT_BITS:
                raise _Stop(ErrorCode.BAD_FIELD, f"expert {expert}'s SwiGLU requantisation "
                                                 f"{first['swiglu_multiplier']} >> "
                                                 f"{first['swiglu_shift']} does not fit")
            self.buffers[Buffer.TABLE][:256] = self._read(int(descriptor["table"]), 256,
                                                          f"expert {expert}'s table")
            entries = np.zeros(rows.size, dtype=isa.as_dtype(isa.GATES_ENTRY))
            entries["row"], entries["gate"] = rows, gates
            self.buffers[Buffer.GATES][:entries.nbytes] = entries.tobytes()
            for command, weights, params, pass_rows in (
                    (first, "first", "first_params", rows),
                    (down, "down", "down_params", None)):
                channels = command["tiles"] * config.mac_rows
                self.buffers[Buffer.PARAMS][:8 * channels] = self._read(
                    int(descriptor[params]), 8 * channels, f"expert {expert}'s {params}")
                words = self._read(int(descriptor[weights]), self.weight_bytes(command),
                                   f"expert {expert}'s {weights} weights")
                self._pass(command, words, rows=pass_rows)

    # -- vector operations -----------------------------------------------------------------------

    def _vector(self, fields: dict) -> None:
        config, op = self.config, fields["op"]
        rows, width = fields["rows"], fields["width"]
        if not rows or not width:
            raise _Stop(ErrorCode.BAD_FIELD, f"{op.name}: rows={rows}, width={width} (both at "
                                             f"least 1)")
        if fields["shift"] > nx.SHIFT_MAX:
            raise _Stop(ErrorCode.BAD_FIELD, f"{op.name}: shift={fields['shift']} is beyond "
                                             f"{nx.SHIFT_MAX}")
        stride = isa.act_row_bytes(config, width)
        int8_buffers = (Buffer.ACT0, Buffer.ACT1)
        source = (Buffer.OUT,) if op is VectorOp.REQUANT else int8_buffers
        target = (Buffer.GATES,) if op is VectorOp.GATE else int8_buffers
        operands = ("a", "b") if op in (VectorOp.ADD, VectorOp.MUL) else ("a",)
        for name in operands:
            if fields[name] not in source:
                raise _Stop(ErrorCode.BAD_FIELD, f"{op.name} reads {name} from "
                                                 f"{' or '.join(b.name for b in source)}, not "
                                                 f"{fields[name].name}")
        if fields["dst"] not in target:
            raise _Stop(ErrorCode.BAD_FIELD, f"{op.name} writes "
                                             f"{' or '.join(b.name for b in target)}, not "
                                             f"{fields['dst'].name}")
        mult, shift = fields["multiplier"], fields["shift"]
        if op is VectorOp.REQUANT:
            acc = self._rows(Buffer.OUT, rows, width, isa.out_row_bytes(config, width),
                             "REQUANT input", np.int32)
            self._put_rows(fields["dst"], sv.requant(acc, mult, shift), stride, "REQUANT result")
            return
        a = self._rows(fields["a"], rows, width, stride, f"{op.name} input")
        if op is VectorOp.ADD:
            b = self._rows(fields["b"], rows, width, stride, "ADD input b")
            y = sv.add(a, b, mult, fields["multiplier_b"], shift)
        elif op is VectorOp.MUL:
            b = self._rows(fields["b"], rows, width, stride, "MUL input b")
            y = sv.multiply(a, b, mult, shift)
        elif op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            raw = self._read(fields["params"], 8 + 6 * width, f"{op.name} parameters")
            eps_q = int(np.frombuffer(raw, dtype="<i8", count=1)[0])
            weight = torch.from_numpy(np.frombuffer(raw, "<i2", width, 8).astype(np.int64))
            bias = torch.from_numpy(np.frombuffer(raw, "<i4", width, 8 + 2 * width)
                                    .astype(np.int64))
            norm = sv.rmsnorm if op is VectorOp.RMSNORM else sv.layernorm
            y = norm(a, weight, bias, eps_q, mult, shift)
        elif op is VectorOp.ROPE:
            head_dim = fields["head_dim"]
            if head_dim < 2 or head_dim % 2 or width % head_dim:
                raise _Stop(ErrorCode.BAD_FIELD, f"ROPE: rows of {width} are not whole heads of "
                                                 f"an even head_dim={head_dim}")
            raw = self._read(fields["params"], rows * head_dim * 2, "ROPE table")
            table = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.int64))
            y = sv.rope(a, table.reshape(rows, head_dim), head_dim)
        elif op is VectorOp.GATE:
            raw = self._read(fields["params"], width, "GATE weights")
            weight = torch.from_numpy(np.frombuffer(raw, dtype=np.int8).astype(np.int64))
            gate = sv.sigmoid_gate(a, weight, mult, shift)
            entries = np.zeros(rows, dtype=isa.as_dtype(isa.GATES_ENTRY))
            entries["row"], entries["gate"] = np.arange(rows), gate.numpy()
            span = self._span(Buffer.GATES, 0, entries.nbytes, "GATE result")
            self.buffers[Buffer.GATES][span] = entries.tobytes()
            return
        else:
            raise _Stop(ErrorCode.BAD_FIELD, f"vector operation {op.name} is not built")
        self._put_rows(fields["dst"], y, stride, f"{op.name} result")

    def _attention(self, fields: dict) -> None:
        config, command = self.config, fields["command"]
        try:
            shape = _attention_shape(config, command)
            sa.check_fits(shape, config)
        except ValueError as error:
            raise _Stop(ErrorCode.BAD_FIELD, str(error)) from None
        for name in ("score_shift", "out_shift"):
            if command[name] > nx.SHIFT_MAX:
                raise _Stop(ErrorCode.BAD_FIELD, f"{name}={command[name]} is beyond {nx.SHIFT_MAX}")
        dim = shape.head_dim
        row_q, row_kv = shape.heads * dim, shape.kv_heads * dim
        regions = {"q": shape.seq_q * row_q, "k": shape.seq_kv * row_kv,
                   "v": shape.seq_kv * row_kv, "o": shape.seq_q * row_q}
        for name, size in regions.items():
            self._window(fields[name], size, f"attention {name.upper()}")

        def read(name, rows, heads):
            raw = bytes(self.dram[fields[name]:fields[name] + regions[name]])
            values = torch.frombuffer(bytearray(raw), dtype=torch.int8).to(torch.int64)
            return values.reshape(rows, heads, dim)

        q = read("q", shape.seq_q, shape.heads)
        k = read("k", shape.seq_kv, shape.kv_heads)
        v = read("v", shape.seq_kv, shape.kv_heads)
        params = sa.AttentionParams(command["score_mult"], command["score_shift"],
                                    command["out_mult"], command["out_shift"])
        out = sa.attention_fixed(q, k, v, shape, params)
        o = fields["o"]
        self.dram[o:o + regions["o"]] = out.to(torch.int8).numpy().tobytes()


def _wrap32(values: torch.Tensor) -> torch.Tensor:
    """int32 two's-complement wrap of the output accumulator."""
    return ((values + (1 << 31)) % (1 << 32)) - (1 << 31)
