"""cocotb regression of the accelerator top (`hw.top.Accelerator`) against the emulator
(`host.emulator.Emulator`): programs run from DRAM, byte for byte.

DRAM is cocotbext-axi's `AxiRam`, the host an `AxiLiteMaster`, both with random pauses. For each
program the whole RAM is filled with random bytes; the program goes below the DMA window, which
starts at `WINDOW_BASE`. The host sets the registers and starts the run, then waits for the
interrupt (a run that does not raise it within its cycle budget fails the test). After the run the
window must hold exactly the emulator's DRAM, every byte outside it must be as it was (the guard
bytes), and the error code and the failed instruction's index must be the emulator's; every AXI
burst must keep AXI's rules (INCR, bus-wide beats, none across a 4 KiB boundary). Every run follows
the one before without a reset.

Parameters (`tb_params`): ``config``; ``cases``, each a dict with ``name``, ``program`` (hex),
``window`` (bytes), ``serialise``, ``watchdog`` (cycles, 0: none), ``abort_after`` (cycles after
start; the run must end with ABORTED), ``poll`` (the interrupt disabled: the host polls ``status.done``, and ``irq`` must stay low),
``expect`` (an `ErrorCode` name the run must end with where
the emulator does not model it: WATCHDOG, ABORTED), ``program_base`` (a multiple of 32 below `WINDOW_BASE`), ``fill`` (a seed for the window's bytes), ``patches`` (``(offset, hex)`` bytes then written into
the window);
``random`` (that many random programs, `sim.programs.random_program`, serialised);
``pipelines`` (that many `sim.programs.random_pipeline` programs, run in parallel);
``linear`` (that many `sim.programs.random_linear` programs with their data); ``expert_loops``
(that many `sim.programs.random_expert_loop` programs); ``routes`` (that many
`sim.programs.random_route` programs); ``attentions`` (that many
`sim.programs.random_attention` programs);
``pause``; ``report_file``; ``dump_dir`` (a run whose window differs writes both windows there).
"""

from __future__ import annotations

import math
import random
import time

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from ...config import preset
from ...formats import records
from ...formats.attention import padded_shape
from ...formats.buffers import Buffer, buffer_bytes
from ...formats.instructions import ErrorCode, Opcode
from ...formats.registers import COUNTER_BLOCKS, register_map
from ...formats.router import DISPATCH_COUNT, dispatch_table
from ...host.emulator import Emulator
from ...sw.attention import traffic_bytes
from ...isa import DecodeError, Program, decode
from ..harness import check_cases, pause_axi, reset, start_clock, tb_params
from ..programs import (LINEAR_WINDOW, random_attention, random_expert_loop, random_linear,
                        random_pipeline, random_program, random_route)

CLOCK_NS = 10
PROGRAM_BASE = 0x1000
WINDOW_BASE = 0x8000
GUARD_BYTES = 0x1000            # after the window
NONE_INDEX = 0xFFFF_FFFF        # failed_instruction when no instruction is to blame


class TopTB:
    def __init__(self, dut, config, rng: random.Random, pause: float, ram_bytes: int):
        self.dut, self.config, self.rng = dut, config, rng
        self.map = {r.name: r for r in register_map(config.build_id).registers}
        self.host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                  dut.clk, dut.rst)
        self.ram_bytes = ram_bytes
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                          size=ram_bytes)
        # deeper queues than AxiRam's default, so that it answers at the bus rate
        for channel in (self.ram.read_if.r_channel, self.ram.read_if.ar_channel,
                        self.ram.write_if.w_channel, self.ram.write_if.aw_channel):
            channel.queue_occupancy_limit = 16
        pause_axi(self.host, rng, pause)
        pause_axi(self.ram, rng, pause)
        # the on-chip buffers keep their bytes from run to run, as the emulator's do here; the
        # memories start as zeros
        self.buffers = {b: bytearray(n) for b, n in buffer_bytes(config).items()}

    async def start(self):
        await start_clock(self.dut, CLOCK_NS)
        await reset(self.dut)
        self.protocol = []
        cocotb.start_soon(self._bursts())

    async def _bursts(self):
        """AXI's rules on every burst the top issues: INCR, at most 256 beats, none across a
        4 KiB boundary, beats of the bus's width."""
        dut, size = self.dut, (self.config.axi_data_bytes - 1).bit_length()
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            for channel in ("ar", "aw"):
                if int(getattr(dut, f"m_axi__{channel}valid").value) and \
                        int(getattr(dut, f"m_axi__{channel}ready").value):
                    address = int(getattr(dut, f"m_axi__{channel}addr").value)
                    beats = int(getattr(dut, f"m_axi__{channel}len").value) + 1
                    burst = int(getattr(dut, f"m_axi__{channel}burst").value)
                    width = int(getattr(dut, f"m_axi__{channel}size").value)
                    if (burst != 1 or width != size
                            or address % 4096 + (beats << width) > 4096):
                        self.protocol.append(f"{channel.upper()} burst at {address:#x}, {beats} "
                                             f"beats of 2**{width} bytes, burst type {burst}")

    def _check_counters(self, program: bytes, code: ErrorCode, counters: dict, golden) -> list:
        """A run that ends at its last instruction, a FINISH, ran every instruction: the counters
        must say so (instructions ended, bytes each DMA engine moved, cycles within the run)."""
        try:
            instructions = decode(self.config, program)
        except DecodeError:
            return []
        if code is not ErrorCode.NONE or golden.instruction != len(instructions) - 1:
            return []
        passes = [i.fields["command"] for i in instructions if i.opcode is Opcode.LINEAR]
        want = {"top_instructions": len(instructions) - 1,           # all but the FINISH
                "load_dma_bytes_read": _moved(instructions, Opcode.LOAD),
                "store_dma_bytes_written": _moved(instructions, Opcode.STORE),
                # a weight word enters the MAC array for each tile, token and chunk
                "expert_ffn_mac_cycles": sum(0 if c["drain"] else
                                             c["tiles"] * c["tokens"] * c["chunks"]
                                             for c in passes)}
        calls = [padded_shape(self.config, i.fields["command"]) for i in instructions
                 if i.opcode is Opcode.ATTENTION]
        word, group = self.config.axi_data_bytes, self.config.attention_group
        traffic = [traffic_bytes(shape, group, word) for shape in calls]
        want.update({"sequencer_words_read": sum(t["q"] + t["kv"] for t in traffic) // word,
                     "sequencer_words_written": sum(t["o"] for t in traffic) // word})
        loops = [n for n, i in enumerate(instructions) if i.opcode is Opcode.EXPERT_LOOP]
        if loops:
            del want["expert_ffn_mac_cycles"]           # the passes depend on DISPATCH
        later = [i for i in instructions[loops[-1]:] if i.opcode is Opcode.LOAD
                 and i.fields["buffer"] is Buffer.DISPATCH] if loops else []
        if len(loops) <= 1 and not later:
            # the one loop's experts, by the counts DISPATCH still holds after the run
            experts = instructions[loops[0]].fields["experts"] if loops else 0
            counts = records.view(DISPATCH_COUNT.dram, bytes(self.buffers[Buffer.DISPATCH]),
                                  experts, dispatch_table(self.config)["counts"].offset // 8)
            counts = [int(c) for c in counts["count"]]
            want["top_experts_run"] = sum(c > 0 for c in counts)
            want["top_experts_skipped"] = sum(c == 0 for c in counts)
        wrong = [f"counter {name} {counters[name]}, expected {value}"
                 for name, value in want.items() if counters[name] != value]
        total = counters["top_total_cycles"]
        for queue in ("load", "compute", "store"):
            if counters[f"top_{queue}_busy_cycles"] + counters[f"top_{queue}_stall_cycles"] > total:
                wrong.append(f"the {queue} queue's busy and stall cycles exceed the run's {total}")
        if counters["load_dma_busy_cycles"] > counters["top_load_busy_cycles"]:
            wrong.append("the load DMA engine was busy longer than the load queue")
        if counters["expert_ffn_busy_cycles"] > counters["top_compute_busy_cycles"]:
            wrong.append("the Expert-FFN engine was busy longer than the compute queue")
        return wrong

    async def write(self, register: str, value: int) -> None:
        await self.host.write_dword(self.map[register].offset, value)

    async def read(self, register: str) -> int:
        return await self.host.read_dword(self.map[register].offset)

    def field(self, register: str, name: str, value: int) -> int:
        field = next(f for f in self.map[register].fields if f.name == name)
        return value >> field.lsb & ((1 << field.width) - 1)

    async def run(self, case: dict) -> dict:
        dut, rng = self.dut, self.rng
        program = bytes.fromhex(case["program"])
        window = case["window"]
        assert WINDOW_BASE + window + GUARD_BYTES <= self.ram_bytes, "the window is too large"
        program_base = case.get("program_base", PROGRAM_BASE)
        assert program_base + len(program) <= WINDOW_BASE, "the program overlaps the window"
        ram = self.ram
        before = rng.randbytes(self.ram_bytes)
        if "fill" in case:
            fill = (random.Random(case["fill"]).randbytes(window) if case["fill"] is not None
                    else bytes(window))
            before = before[:WINDOW_BASE] + fill + before[WINDOW_BASE + window:]
        for offset, patch in case.get("patches", []):
            at = WINDOW_BASE + offset
            before = before[:at] + bytes.fromhex(patch) + before[at + len(bytes.fromhex(patch)):]
        before = before[:program_base] + program + before[program_base + len(program):]
        ram.write(0, before)

        emulator = Emulator(self.config, window, watchdog_cycles=1 << 32)
        emulator.dram[:] = before[WINDOW_BASE:WINDOW_BASE + window]
        for buffer, content in self.buffers.items():
            emulator.buffers[buffer][:] = content
        golden = emulator.run(program, "serial" if case.get("serialise") else "parallel")
        self.buffers = {b: bytearray(content) for b, content in emulator.buffers.items()}

        polled = case.get("poll", False)           # no interrupt: the host polls status.done
        await self.write("irq_enable", 0 if polled else 0b11)
        await self.write("program_address", program_base)
        await self.write("program_length", len(program) // 32)
        await self.write("window_base", WINDOW_BASE)
        await self.write("window_size", window)
        await self.write("watchdog", case.get("watchdog", 0))
        serialise = 1 << 2 if case.get("serialise") else 0
        await self.write("control", serialise | 1)
        started = get_sim_time("ns")
        wall = time.monotonic()
        limit = case.get("cycles", 200_000)
        if "abort_after" in case:
            await ClockCycles(dut.clk, case["abort_after"])
            await self.write("control", serialise | 0b10)
        rose = False
        while True:
            if polled:
                if self.field("status", "done", await self.read("status")):
                    break
                rose = rose or bool(dut.irq.value)
            else:
                await RisingEdge(dut.clk)
                await ReadOnly()
                if dut.irq.value:
                    break
            assert get_sim_time("ns") - started < limit * CLOCK_NS, \
                f"{case['name']}: not done in {limit} cycles"
        cycles = round((get_sim_time("ns") - started) / CLOCK_NS)
        wall = time.monotonic() - wall
        await RisingEdge(dut.clk)
        status = await self.read("status")
        index = await self.read("failed_instruction")
        irq_status = await self.read("irq_status")
        counters = {name: await self.read(name) for name in self.map
                    if name.startswith(tuple(f"{block}_" for block, _, _ in COUNTER_BLOCKS))}
        await self.write("irq_status", 0b11)
        await RisingEdge(dut.clk)
        await ReadOnly()
        irq_cleared = not dut.irq.value

        mismatches = self.protocol
        self.protocol = []
        code = ErrorCode(self.field("status", "error_code", status))
        if not self.field("status", "done", status) or self.field("status", "busy", status):
            mismatches.append(f"status {status:#x}: not done, or still busy")
        expect = ErrorCode[case["expect"]] if "expect" in case else golden.status
        if code is not expect:
            mismatches.append(f"ended with {code.name}, the emulator with {golden.status.name} "
                              f"({golden.message})")
        want_index = NONE_INDEX if golden.instruction is None else golden.instruction
        if "expect" not in case and index != want_index:
            mismatches.append(f"failed instruction {index}, the emulator's {golden.instruction}")
        if irq_status != (0b01 if code is ErrorCode.NONE else 0b10) or not irq_cleared:
            mismatches.append(f"irq_status {irq_status:#b} (cleared: {irq_cleared})")
        if rose:
            mismatches.append("the interrupt rose with every event disabled")
        after = ram.read(0, self.ram_bytes)
        if "expect" not in case:
            got = after[WINDOW_BASE:WINDOW_BASE + window]
            if got != bytes(emulator.dram):
                differ = [i for i in range(window) if got[i] != emulator.dram[i]]
                if tb_params().get("dump_dir"):            # the two windows, to compare offline
                    from pathlib import Path
                    folder = Path(tb_params()["dump_dir"])
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{case['name']}.rtl").write_bytes(got)
                    (folder / f"{case['name']}.emulator").write_bytes(bytes(emulator.dram))
                spans, start = [], differ[0]
                for a, b in zip(differ, differ[1:] + [None]):
                    if b is None or b > a + 8:
                        spans.append(f"{start:#x}..{a:#x}")
                        start = b
                mismatches.append(f"window byte {differ[0]:#x} differs from the emulator's ("
                                  f"{len(differ)} bytes differ, in {', '.join(spans[:8])}; "
                                  f"the first ten, RTL/emulator: "
                                  + ", ".join(f"{i:#x}: {got[i]:#04x}/{emulator.dram[i]:#04x}"
                                              for i in differ[:10]) + ")")
        mismatches += self._check_counters(program, code, counters, golden)
        outside = after[:WINDOW_BASE] + after[WINDOW_BASE + window:]
        if outside != before[:WINDOW_BASE] + before[WINDOW_BASE + window:]:
            mismatches.append("a byte outside the window changed")
        if "expect" in case:
            # the emulator does not model where an abort or the watchdog leaves the buffers:
            # the next run finds them cleared, by a program that loads zeros into every byte
            scrub = Program(self.config)
            for buffer, size in buffer_bytes(self.config).items():
                row = math.gcd(size, 256)
                scrub.load(buffer, dram=0, rows=size // row, row_bytes=row, dram_stride=0)
            report = await self.run({"name": f"{case['name']}: clear the buffers",
                                     "program": scrub.finish().encode().hex(), "window": 256,
                                     "fill": None})
            mismatches += report["mismatches"]
            self.buffers = {b: bytearray(n) for b, n in buffer_bytes(self.config).items()}
        return {"name": case["name"], "mismatches": mismatches, "cycles": cycles,
                "code": code.name, "index": index, "counters": counters, "wall_s": wall,
                "model_cycles": golden.cycles,
                "model_busy": {queue.name.lower(): n for queue, n in golden.busy_cycles.items()}}


RANDOM_WINDOW = 4096
# Programs drawn with their data: the parameter giving how many, their name, how each is drawn.
WITH_DATA = (("linear", "LINEAR", random_linear),
             ("expert_loops", "EXPERT_LOOP", random_expert_loop),
             ("routes", "ROUTE", random_route),
             ("attentions", "ATTENTION", random_attention))
PIPELINE_WINDOW = 1 << 14


def random_programs(config, count: int, seed: int) -> list[bytes]:
    """`count` random programs, as `sim.programs` draws them."""
    rng = random.Random(seed)
    return [random_program(rng, config, RANDOM_WINDOW) for _ in range(count)]


def _moved(instructions, opcode: Opcode) -> int:
    return sum(i.fields["rows"] * i.fields["row_bytes"] for i in instructions
               if i.opcode is opcode)


def _describe(case: dict, report: dict) -> str:
    return (f"{case['name']}: {report['code']} at {report['index']:#x} after "
            f"{report['cycles']} cycles (model {report['model_cycles']})")


@cocotb.test()
async def programs_match_the_emulator(dut):
    params = tb_params()
    config = preset(params["config"])
    rng = random.Random(params.get("seed", 13))
    cases = list(params.get("cases", []))
    largest = max([c["window"] for c in cases] + [RANDOM_WINDOW]
                  + [PIPELINE_WINDOW] * bool(params.get("pipelines"))
                  + [LINEAR_WINDOW] * any(params.get(count) for count, _, _ in WITH_DATA))
    tb = TopTB(dut, config, rng, params.get("pause", 0.2),
               ram_bytes=WINDOW_BASE + largest + GUARD_BYTES)
    await tb.start()
    for n, blob in enumerate(random_programs(config, params.get("random", 0),
                                             params.get("seed", 13))):
        cases.append({"name": f"random {n}", "program": blob.hex(), "window": RANDOM_WINDOW,
                      "serialise": True})
    for offset, (count, title, draw) in enumerate(WITH_DATA, 2):
        rng_drawn = random.Random(params.get("seed", 13) + offset)
        for n in range(params.get(count, 0)):
            blob, patches = draw(rng_drawn, config, LINEAR_WINDOW)
            cases.append({"name": f"{title} {n}", "program": blob.hex(), "window": LINEAR_WINDOW,
                          "fill": n, "patches": patches})
    rng_pipelines = random.Random(params.get("seed", 13) + 1)
    for n in range(params.get("pipelines", 0)):
        blob = random_pipeline(rng_pipelines, config, PIPELINE_WINDOW,
                               rng_pipelines.randint(1, 14))
        cases.append({"name": f"pipeline {n}", "program": blob.hex(),
                      "window": PIPELINE_WINDOW, "fill": n})
    await check_cases(dut, cases, tb.run, _describe, "the top's runs")
