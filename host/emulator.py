"""The bit-exact emulator of the instruction set (`moeaccel.isa`): runs a program against a DRAM
window and produces the bytes the hardware must produce, computing with `sw/`'s integer reference.

It keeps what the hardware keeps: the three queues (load, compute, store) with their dependency-token
counters, the on-chip buffers, the DMA window the host granted. It reports what the hardware reports:
an `isa.ErrorCode` and the instruction that raised it; a run never hangs (a deadlock of tokens is
detected, a cycle budget is the watchdog) and never touches memory outside the window.

Timing is a model (`instruction_cycles`): each queue runs its instructions in order; an instruction
starts when its queue is free and the tokens it pops have been pushed, so a load can overlap the
compute before it exactly as far as the tokens allow. ATTENTION and ROUTE take the cycles their
units take in RTL simulation (`sw.attention.attention_cycles`, `hw.router.router_cycles`, both equal
to the measured counts); LOAD and STORE a set-up plus a beat per bus word.

Executed so far: LOAD, STORE, ATTENTION, SYNC, FINISH, NOP. LINEAR, ROUTE, EXPERT_LOOP and VECTOR
decode and check, but running them raises `NotImplementedError` naming the opcode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..config import AccelConfig
from ..isa import Buffer, DecodeError, ErrorCode, Instruction, Opcode, Queue, decode_one, split
from ..sw import attention as sa
from ..sw import numerics as nx

__all__ = ["Emulator", "RunResult", "buffer_bytes", "instruction_cycles", "SCHEDULES"]

SCHEDULES = ("parallel", "serial", "random")
TRANSFER_SETUP_CYCLES = 8        # a LOAD or STORE: address set-up before its first beat


def buffer_bytes(config: AccelConfig) -> dict[Buffer, int]:
    """Capacity of each on-chip buffer, from the configuration."""
    return {
        Buffer.ACT0: config.act_buffer_bytes, Buffer.ACT1: config.act_buffer_bytes,
        Buffer.WEIGHT: config.weight_banks * config.weight_bank_bytes,
        Buffer.PARAMS: config.max_tiles * config.mac_rows * 8,
        Buffer.TABLE: 256,
        Buffer.GATES: config.max_tokens * 2,
        Buffer.OUT: config.out_buffer_bytes,
        Buffer.ROUTER_WEIGHTS: config.max_experts * config.router_chunks * config.router_lanes,
        Buffer.ROUTER_BIAS: config.max_experts * 4,
        Buffer.DISPATCH: config.max_experts * (config.dispatch_capacity + 1) * 4,
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


def instruction_cycles(config: AccelConfig, instruction: Instruction) -> int:
    """The model's cycles for one instruction (its queue busy that long)."""
    fields, bus = instruction.fields, config.axi_data_bytes
    if instruction.opcode in (Opcode.LOAD, Opcode.STORE):
        beats = fields["rows"] * -(-fields["row_bytes"] // bus)
        return TRANSFER_SETUP_CYCLES + beats
    if instruction.opcode is Opcode.ROUTE:
        from ..hw.router import router_cycles
        return router_cycles(fields)
    if instruction.opcode is Opcode.ATTENTION:
        try:
            shape = _attention_shape(config, fields["command"])
        except ValueError:
            return 1                           # refused at once
        return sa.attention_cycles(shape, config.attention_group, bus)["total"]
    return 1


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
                start = max([queue_free[q]] + self._token_times(instruction, tokens))
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
            cycles = instruction_cycles(self.config, instruction)
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
        opcode = instruction.opcode
        if opcode in (Opcode.NOP, Opcode.SYNC, Opcode.FINISH):
            return
        if opcode is Opcode.LOAD:
            self._transfer(instruction.fields, load=True)
        elif opcode is Opcode.STORE:
            self._transfer(instruction.fields, load=False)
        elif opcode is Opcode.ATTENTION:
            self._attention(instruction.fields)
        else:
            raise NotImplementedError(f"the emulator does not execute {opcode.name} yet")

    def _window(self, start: int, length: int, what: str) -> None:
        if start < 0 or length < 0 or start + length > len(self.dram):
            raise _Stop(ErrorCode.DMA_WINDOW, f"{what} bytes {start}..{start + length - 1} are "
                                              f"outside the DMA window of {len(self.dram)} bytes")

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
