"""The bit-exact emulator of the instruction set (`moeaccel.isa`): runs a program against a DRAM
window and produces the bytes the hardware must produce.

It keeps what the hardware keeps: the three queues (load, compute, store) with their dependency-token
counters (this module, the scheduler), the on-chip buffers and the DMA window the host granted
(`host.memory`). It reports what the hardware reports: an `ErrorCode` and the instruction that raised
it; a run never hangs (a deadlock of tokens is detected, a cycle budget is the watchdog) and never
touches memory outside the window. What each instruction computes is `host.units`, with `sw/`'s
integer reference.

Timing is the performance model's (`moeaccel.cycles`), held to the accelerator top in RTL
(`tests/test_top_cycles.py`, docs/top.md): instructions reach the controller as the fetch unit
streams them (`fetched_cycle`); each queue runs its instructions in order, one the cycle after the one
before ends; an instruction starts when its queue is free and the tokens it pops have been pushed,
so a load can overlap the compute before it exactly as far as the tokens allow; each takes
`instruction_cycles` (a LINEAR that applies the table copies TABLE first when it was written since
the last copy). Not modelled: the AXI port the queues and the fetch unit share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..config import AccelConfig
from ..cycles import (ISSUE_CYCLES, TRANSFER_TURNAROUND_CYCLES, copies_table, fetched_cycle,
                      instruction_cycles)
from ..formats.buffers import Buffer
from ..formats.instructions import NEIGHBOUR, QUEUE_DEPTH, ErrorCode, Opcode, Queue
from ..isa import DecodeError, Instruction, decode_one, split
from .memory import Memory, Stop
from .units import execute, expert_tokens

__all__ = ["Emulator", "RunResult", "SCHEDULES"]

SCHEDULES = ("parallel", "serial", "random")


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


# Token counters, named (from queue, to queue): pushes of the producer, pops of the consumer.
_PUSH = {(q, f"push_{side}"): (q, other) for (q, side), other in NEIGHBOUR.items()}
_POP = {(q, f"pop_{side}"): (other, q) for (q, side), other in NEIGHBOUR.items()}


class Emulator:
    """One accelerator: a DRAM window of `window_bytes` (``dram``, a bytearray the host fills and
    reads) and the on-chip buffers. `watchdog_cycles` bounds a run."""

    def __init__(self, config: AccelConfig, window_bytes: int, watchdog_cycles: int = 1 << 32):
        self.config = config
        self.memory = Memory(config, window_bytes)
        self.watchdog_cycles = watchdog_cycles

    @property
    def dram(self) -> bytearray:
        return self.memory.dram

    @property
    def buffers(self) -> dict:
        return self.memory.buffers

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
        return self._run(instructions, schedule, seed, undecodable)

    def _run(self, instructions: list[Instruction], schedule: str, seed: int,
             undecodable: DecodeError | None) -> RunResult:
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
        # It dispatches into a queue only while fewer than QUEUE_DEPTH instructions wait there:
        # instruction i is visible to its queue from dispatched[i] on (None: not yet).
        dispatched: list[int | None] = [None] * len(instructions)
        waiting = {q: 0 for q in Queue}
        fetch = {"next": 0, "time": 0}
        table_stale = True

        def dispatch(now: int) -> None:
            while fetch["next"] < len(instructions):
                index = fetch["next"]
                q = instructions[index].queue
                if waiting[q] >= QUEUE_DEPTH or any(not done[s] for s in syncs if s < index):
                    return
                if schedule == "serial" and index != (done.index(False) if False in done else -1):
                    return
                fetch["time"] = max(fetch["time"], now, fetched_cycle(self.config, index))
                dispatched[index] = fetch["time"]
                waiting[q] += 1
                fetch["next"] += 1

        barrier_end = 0
        finish_time = 0
        executed = 0
        last_start = 0
        while True:
            dispatch(last_start)
            ready = []
            for q in Queue:
                if heads[q] >= len(queues[q]):
                    continue
                index = queues[q][heads[q]]
                instruction = instructions[index]
                if dispatched[index] is None:
                    continue
                if not self._tokens_available(instruction, tokens):
                    continue
                if instruction.opcode in (Opcode.SYNC, Opcode.FINISH) and not all(done[:index]):
                    continue
                if schedule == "serial" and index != done.index(False):
                    continue
                if any(not done[s] for s in syncs if s < index):
                    continue
                start = max([queue_free[q], barrier_end, dispatched[index]]
                            + self._token_times(instruction, tokens))
                if instruction.opcode in (Opcode.SYNC, Opcode.FINISH) or schedule == "serial":
                    start = max(start, finish_time + ISSUE_CYCLES)   # after everything before it
                ready.append((start, index, q))
            if not ready:
                if undecodable is not None and fetch["next"] == len(instructions):
                    # nothing else can run and fetch has reached the word that does not decode
                    return RunResult(undecodable.code, undecodable.index, str(undecodable),
                                     finish_time, executed, dict(busy))
                if all(done):
                    return RunResult(ErrorCode.NO_FINISH, None, "the program ended without FINISH",
                                     finish_time, executed, dict(busy))
                first = done.index(False)
                return RunResult(ErrorCode.DEADLOCK, first, f"instruction {first} "
                                 f"({instructions[first].opcode.name}) and every other one left "
                                 f"wait for tokens no instruction will push", finish_time,
                                 executed, dict(busy))
            start, index, q = min(ready) if schedule != "random" else rng.choice(ready)
            last_start = start
            instruction = instructions[index]
            loop_tokens = (expert_tokens(self.config, self.memory)
                           if instruction.opcode is Opcode.EXPERT_LOOP else None)
            cycles = instruction_cycles(self.config, instruction.opcode, instruction.fields,
                                        loop_tokens, table_stale)
            if q is not Queue.COMPUTE and start == queue_free[q] and heads[q] > 0:
                cycles += TRANSFER_TURNAROUND_CYCLES     # the DMA engine, right after a transfer
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
                execute(self.config, self.memory, instruction.opcode, instruction.fields)
            except Stop as stop:
                return RunResult(stop.code, index, f"instruction {index} "
                                 f"({instruction.opcode.name}): {stop}", finish_time, executed,
                                 dict(busy))
            # the epilogue's copy of TABLE: stale after a LOAD into TABLE, fresh after a pass
            # copies it (an expert loop's last expert with tokens loads its table and copies it)
            if copies_table(self.config, instruction.opcode, instruction.fields) or (
                    loop_tokens and any(loop_tokens[:instruction.fields["experts"]])):
                table_stale = False
            if (instruction.opcode is Opcode.LOAD and instruction.fields["buffer"] is Buffer.TABLE
                    and instruction.fields["rows"] * instruction.fields["row_bytes"] > 0):
                table_stale = True
            for name, pair in _PUSH.items():
                if name[0] is q and getattr(instruction, name[1]):
                    tokens[pair].append(end)
            queue_free[q] = end + ISSUE_CYCLES
            waiting[q] -= 1
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
        """A load queue has no previous queue, a store queue no next one (`NEIGHBOUR`)."""
        q = instruction.queue
        for side, name in (("prev", "previous"), ("next", "next")):
            if (q, side) not in NEIGHBOUR and (getattr(instruction, f"pop_{side}")
                                               or getattr(instruction, f"push_{side}")):
                raise Stop(ErrorCode.BAD_FIELD, f"the {q.name.lower()} queue has no {name} queue "
                                                f"to exchange tokens with")
