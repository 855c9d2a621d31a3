"""The controller: decoupled access/execute as the ISA defines it (docs/isa.md, "Running a
program"), the hardware twin of the emulator's scheduler (`host.emulator`).

* **Dispatch.** Instructions come from the fetch unit in program order. Each is decoded
  (`hw.decode.Decoder`) and put in its queue's FIFO, where at most `QUEUE_DEPTH` wait; a full FIFO
  holds dispatch. After a SYNC nothing is dispatched until the SYNC has ended; in the serialise mode
  nothing until every instruction before has ended. A word that does not decode stops dispatch.
* **Queues.** The load, compute and store queues each start their instructions in order, one at a
  time, when the tokens the instruction pops are there (four counters: load→compute,
  compute→load, compute→store, store→compute); SYNC and FINISH start when every instruction before
  them has ended. Starting pops the tokens and hands the instruction to the queue's unit (``issue``,
  one cycle, with ``instruction``, which it keeps from then on); the unit raises ``busy`` from the
  next cycle until it has ended, then its ``error`` (NONE when it ran; a register, not a function
  of ``instruction``) is taken and the instruction's pushes are counted.
* **Faults** are the ISA's error codes, each with the index of its instruction: BAD_FIELD from the
  decoder's rules or a token a queue cannot exchange, raised as the instruction would start; a
  unit's error as it ends; DEADLOCK (nothing runs, nothing can start or be dispatched, fetch is
  quiet: the index is the first instruction not ended), NO_FINISH, an undecodable word's code
  when nothing else can run, WATCHDOG after ``watchdog`` cycles (0: none) and ABORTED: the
  first instruction not ended. FINISH ends the run with NONE. After a fault or FINISH nothing
  starts; what runs ends (after ABORTED and WATCHDOG as soon as it can: ``cancel``), the fetch
  unit's burst drains, then ``done`` rises.
* **Restart.** ``start`` while idle clears every queue and counter: no reset is needed between runs.
"""

import functools
import operator

from amaranth.hdl import Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats import instructions
from ..formats.instructions import NEIGHBOUR, QUEUE_DEPTH, ErrorCode, Opcode, Queue
from ..formats.registers import TOP_COUNTERS
from .decode import Decoder
from .fetch import fetched

__all__ = ["Controller", "queue_entry", "compute_port", "TOKEN_BITS"]

TOKEN_BITS = 32                 # a token counter: more pushes than a program has instructions


def queue_entry(config) -> data.StructLayout:
    """An instruction waiting in a queue: its index, its word, and whether its body is refused."""
    return data.StructLayout({"index": 32, "refused": 1,
                              "word": instructions.instruction_layout(config)})


def _unit_signature(config) -> wiring.Signature:
    """A queue's unit, as the controller sees it (flipped: the controller drives ``issue``)."""
    return wiring.Signature({
        "issue": Out(1),
        "instruction": Out(instructions.instruction_layout(config)),
        "busy": In(1),
        "error": In(ErrorCode),
    })


def compute_port(config, command, counters) -> dict:
    """The members every compute unit's port on the top has (`hw.vector_port`,
    `hw.ffn_port`): ``issue`` (one cycle) with its body ``command``, the DMA window, an AXI4
    manager port of its own to DRAM, and ``busy``, ``error`` (valid as ``busy`` falls) and its
    ``perf`` counters."""
    from .axi import axi4_signature

    return {
        "issue": In(1),
        "command": In(command),
        "window_base": In(config.axi_addr_width),
        "window_size": In(instructions.ADDRESS_BITS + 1),
        "m_axi": Out(axi4_signature(config.axi_addr_width, config.axi_data_width)),
        "busy": Out(1),
        "error": Out(ErrorCode),
        "perf": Out(counters),
    }


# The token counters, by (from queue, to queue).
_PAIRS = tuple((q, other) for (q, side), other in NEIGHBOUR.items())


class Controller(wiring.Component):
    """The controller of one `AccelConfig`.

    Ports
    -----
    start, abort : one cycle each (``start`` is taken when idle, ``abort`` while running)
    serialise : the serialise mode, taken at ``start``
    watchdog : cycles a run may take (0: no limit), taken at ``start``
    fetch : stream of `hw.fetch.fetched` instructions; ``fetch_halt`` stops the fetch unit;
        ``fetch_quiet``, ``fetch_in_flight`` its state
    load, compute, store : each queue's unit (``issue``, ``instruction``, ``busy``, ``error``)
    busy, done : a run is under way; the last run has ended (until the next ``start``)
    error_code, failed_index : how the last run ended, and at which instruction
    ended : one cycle, the first of ``done``: the run has ended
    cancel : the run ended by ABORTED or WATCHDOG is ending: the units stop what they run as soon
        as they can leave no transaction open
    expert_run, expert_skipped : one cycle per expert an EXPERT_LOOP runs or skips (counted)
    perf : `formats.registers.TOP_COUNTERS`, cleared at ``start``
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Controller needs an AccelConfig, not {config!r}")
        self.config = config
        unit = _unit_signature(config)
        super().__init__({
            "start": In(1), "abort": In(1), "serialise": In(1), "watchdog": In(32),
            "fetch": In(stream.Signature(fetched)),
            "fetch_halt": Out(1), "fetch_quiet": In(1), "fetch_in_flight": In(1),
            "load": Out(unit), "compute": Out(unit), "store": Out(unit),
            "busy": Out(1), "done": Out(1), "error_code": Out(ErrorCode), "failed_index": Out(32),
            "ended": Out(1), "cancel": Out(1),
            "expert_run": In(1), "expert_skipped": In(1),
            "perf": Out(TOP_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        entry_layout = queue_entry(config)
        units = {Queue.LOAD: self.load, Queue.COMPUTE: self.compute, Queue.STORE: self.store}
        perf = self.perf

        running_run = Signal()          # RUN: dispatching and starting
        draining = Signal()             # the run has ended: what runs ends, then done
        serial = Signal()
        limit = Signal(32)
        end_code = Signal(ErrorCode)
        end_index = Signal(32)
        start = self.start & ~self.busy
        m.d.comb += [self.busy.eq(running_run | draining), self.fetch_halt.eq(~running_run)]
        with m.If(start):
            m.d.sync += [running_run.eq(1), self.done.eq(0), serial.eq(self.serialise),
                         limit.eq(self.watchdog), perf.eq(0)]

        # -- the queues' FIFOs (cleared at start) and what runs
        fifos, heads, running, running_index, running_word = {}, {}, {}, {}, {}
        for q in Queue:
            name = q.name.lower()
            fifos[q] = ResetInserter(start)(fifo.SyncFIFO(width=entry_layout.size,
                                                           depth=QUEUE_DEPTH))
            m.submodules[f"{name}_queue"] = fifos[q]
            heads[q] = entry_layout(fifos[q].r_data)
            running[q] = Signal(name=f"{name}_running")
            running_index[q] = Signal(32, name=f"{name}_running_index")
            running_word[q] = Signal(instructions.instruction_layout(config),
                                     name=f"{name}_running_word")
        tokens = {pair: Signal(TOKEN_BITS, name=f"tokens_{pair[0].name.lower()}_"
                                                f"{pair[1].name.lower()}") for pair in _PAIRS}

        def clear_before(q, index):
            """Queue q has nothing before instruction `index` that has not ended."""
            return ((~running[q] | (running_index[q] > index))
                    & (~fifos[q].r_rdy | (heads[q].index > index)))

        # -- dispatch
        m.submodules.decoder = decoder = Decoder(config)
        word = self.fetch.p.word
        m.d.comb += decoder.instruction.eq(word)
        sync_pending = Signal()
        machine_empty = functools.reduce(operator.and_, (~fifos[q].r_rdy & ~running[q]
                                                          for q in Queue))
        dispatch = Signal()
        room = Signal()
        with m.Switch(decoder.queue):
            for q in Queue:
                with m.Case(q):
                    m.d.comb += room.eq(fifos[q].w_rdy)
        m.d.comb += dispatch.eq(running_run & self.fetch.valid & ~decoder.undecodable
                                & ~sync_pending & (~serial | machine_empty) & room)
        m.d.comb += self.fetch.ready.eq(dispatch)
        for q in Queue:
            entry = entry_layout(fifos[q].w_data)
            m.d.comb += [entry.index.eq(self.fetch.p.index), entry.word.eq(word),
                         entry.refused.eq(decoder.error_code != ErrorCode.NONE),
                         fifos[q].w_en.eq(dispatch & (decoder.queue == q))]
        with m.If(dispatch & (decoder.opcode == Opcode.SYNC)):
            m.d.sync += sync_pending.eq(1)
        with m.If(start):
            m.d.sync += sync_pending.eq(0)

        # -- starting and ending instructions
        chosen = Signal()               # the run ends this cycle, at chosen_index
        chosen_index = Signal(32)
        chosen_code = Signal(ErrorCode)
        faults = []                     # (happens, index, code): the lowest index wins
        starts, ends = {}, {}
        pops = {pair: [] for pair in _PAIRS}
        pushes = {pair: [] for pair in _PAIRS}
        for q in Queue:
            head, have = heads[q], fifos[q].r_rdy
            deps = head.word.deps
            ready = Signal(name=f"{q.name.lower()}_ready")
            waits = []
            bad_deps = 0
            for side in ("prev", "next"):
                other = NEIGHBOUR.get((q, side))
                pop, push = getattr(deps, f"pop_{side}"), getattr(deps, f"push_{side}")
                if other is None:
                    bad_deps = bad_deps | pop | push
                    continue
                waits.append(~pop | (tokens[other, q] != 0))
            ordered = 1
            if q is Queue.COMPUTE:
                barrier = ((head.word.opcode == Opcode.SYNC) | (head.word.opcode == Opcode.FINISH))
                ordered = ~barrier | (clear_before(Queue.LOAD, head.index)
                                      & clear_before(Queue.STORE, head.index))
            m.d.comb += ready.eq(functools.reduce(operator.and_, waits) & ordered)
            go = Signal(name=f"{q.name.lower()}_go")
            m.d.comb += go.eq(running_run & have & ~running[q] & ready)
            starts[q] = go
            faulty = bad_deps | head.refused
            faults.append((go & faulty, head.index, ErrorCode.BAD_FIELD))
            if q is Queue.COMPUTE:
                faults.append((go & ~faulty & (head.word.opcode == Opcode.FINISH), head.index,
                               ErrorCode.NONE))
            # nothing after the instruction the run ends at starts in the same cycle
            launch = (go & ~faulty & ~(chosen & (chosen_index < head.index))
                      & ~((q is Queue.COMPUTE) & (head.word.opcode == Opcode.FINISH)))
            m.d.comb += [units[q].issue.eq(launch), fifos[q].r_en.eq(launch)]
            with m.If(launch):
                m.d.sync += [running[q].eq(1), running_index[q].eq(head.index),
                             running_word[q].eq(head.word)]
                m.d.comb += units[q].instruction.eq(head.word)
            with m.Else():
                m.d.comb += units[q].instruction.eq(running_word[q])
            for side in ("prev", "next"):
                other = NEIGHBOUR.get((q, side))
                if other is not None:
                    pops[other, q].append(launch & getattr(deps, f"pop_{side}"))
            # ending
            ending = Signal(name=f"{q.name.lower()}_ending")
            m.d.comb += ending.eq(running[q] & ~units[q].busy)
            ends[q] = ending
            with m.If(ending):
                m.d.sync += running[q].eq(0)
            failed = units[q].error != ErrorCode.NONE
            faults.append((ending & failed, running_index[q], units[q].error))
            done_deps = running_word[q].deps
            for side in ("prev", "next"):
                other = NEIGHBOUR.get((q, side))
                if other is not None:
                    pushes[q, other].append(ending & ~failed & getattr(done_deps, f"push_{side}"))
            if q is Queue.COMPUTE:
                with m.If(ending & (running_word[q].opcode == Opcode.SYNC)):
                    m.d.sync += sync_pending.eq(0)
            # counters
            name = q.name.lower()
            with m.If(running[q]):
                m.d.sync += perf[f"{name}_busy_cycles"].eq(perf[f"{name}_busy_cycles"] + 1)
            with m.If(running_run & have & ~running[q] & ~ready):
                m.d.sync += perf[f"{name}_stall_cycles"].eq(perf[f"{name}_stall_cycles"] + 1)
        # queues may end instructions in the same cycle: each is counted
        with m.If(self.busy):                 # (not as a run starts: the counters clear)
            m.d.sync += perf.instructions.eq(perf.instructions + sum(ends.values()))
        for pair, counter in tokens.items():
            m.d.sync += counter.eq(counter + sum(pushes[pair]) - sum(pops[pair]))
        with m.If(start):
            m.d.sync += [t.eq(0) for t in tokens.values()]

        # -- the first instruction not ended, for the run-wide faults
        candidates = [(running[q], running_index[q]) for q in Queue]
        candidates += [(fifos[q].r_rdy, heads[q].index) for q in Queue]
        candidates.append((self.fetch.valid, self.fetch.p.index))
        oldest = Signal(32)
        m.d.comb += oldest.eq(_lowest(m, [(valid, index, index) for valid, index in candidates],
                                      "oldest", 0xFFFF_FFFF)[1])
        nothing_left = functools.reduce(operator.and_, (~fifos[q].r_rdy for q in Queue))
        any_running = functools.reduce(operator.or_, running.values())
        any_start = functools.reduce(operator.or_, starts.values())
        stuck = (running_run & ~any_running & ~any_start & ~dispatch & self.fetch_quiet)
        stuck_code = Mux(self.fetch.valid & decoder.undecodable, decoder.error_code,
                         Mux(nothing_left & ~self.fetch.valid, ErrorCode.NO_FINISH,
                             ErrorCode.DEADLOCK))
        stuck_index = Mux(self.fetch.valid & decoder.undecodable, self.fetch.p.index, oldest)
        with m.If(running_run):
            m.d.sync += perf.total_cycles.eq(perf.total_cycles + 1)
        watchdog = running_run & (limit != 0) & (perf.total_cycles + 1 >= limit)
        with m.If(self.expert_run):
            m.d.sync += perf.experts_run.eq(perf.experts_run + 1)
        with m.If(self.expert_skipped):
            m.d.sync += perf.experts_skipped.eq(perf.experts_skipped + 1)

        # -- the run ends at the fault of the lowest index; the run-wide ones after the queues'
        have, best_index, best_code = _lowest(m, [(running_run & happens, index, code)
                                                  for happens, index, code in faults], "fault")
        m.d.comb += [chosen.eq(have), chosen_index.eq(best_index), chosen_code.eq(best_code)]
        with m.If(~have):
            with m.If(running_run & self.abort):
                m.d.comb += [chosen.eq(1), chosen_index.eq(oldest),
                             chosen_code.eq(ErrorCode.ABORTED)]
            with m.Elif(watchdog):
                m.d.comb += [chosen.eq(1), chosen_index.eq(oldest),
                             chosen_code.eq(ErrorCode.WATCHDOG)]
            with m.Elif(stuck):
                m.d.comb += [chosen.eq(1), chosen_index.eq(stuck_index),
                             chosen_code.eq(stuck_code)]
        with m.If(chosen):
            m.d.sync += [running_run.eq(0), draining.eq(1), end_code.eq(chosen_code),
                         end_index.eq(chosen_index)]
        m.d.comb += self.cancel.eq(draining & ((end_code == ErrorCode.ABORTED)
                                               | (end_code == ErrorCode.WATCHDOG)))
        # draining: what runs ends (its error no longer counts), the fetch burst drains
        m.d.sync += self.ended.eq(0)
        with m.If(draining & ~any_running & ~self.fetch_in_flight):
            m.d.sync += [draining.eq(0), self.done.eq(1), self.error_code.eq(end_code),
                         self.failed_index.eq(end_index), self.ended.eq(1)]
        return m


def _lowest(m, candidates, name, none=0):
    """Of `candidates` (valid, index, value), whether any is valid, and the index and value of the
    valid one with the lowest index (`none` when none is)."""
    have, best_index, best_value = 0, none, 0
    for n, (valid, index, value) in enumerate(candidates):
        take = Signal(name=f"{name}{n}_lowest")
        m.d.comb += take.eq(valid & (~have | (index < best_index)))
        have = have | take
        best_index, best_value = Mux(take, index, best_index), Mux(take, value, best_value)
    return have, best_index, best_value
