"""cocotb regression of `hw.dma.Dma` against the emulator's LOAD and STORE
(`host.memory.Memory.transfer`), byte for byte.

DRAM is cocotbext-axi's `AxiRam`, with random pauses on all five channels; the buffers are a model
in the testbench that takes the engine's word writes (with their byte strobes) and answers its word
reads a cycle later, with pauses now and then holding a read request or a write, as a port the
engine shares (or a unit it streams to) does. Each case fills the whole RAM and the buffer with random bytes, runs one
transfer, and compares the whole RAM (the bytes around the DMA window included: they must not
change) and the buffer with what the emulator gives for the same window; a transfer that leaves the
window must set ``error`` and change nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from ...config import preset
from ...formats.buffers import Buffer, buffer_bytes
from ...formats.dma import DMA_COUNTERS, dma_command, sram_read_request, sram_write
from ...formats.instructions import ErrorCode
from ...host.memory import Memory, Stop
from ..harness import pause_axi, reset, start_clock, tb_params

RAM_BYTES = 1 << 18
CLOCK_NS = 10


def random_case(rng: random.Random, config, window_bytes: int = 1 << 16) -> dict:
    """A transfer inside or (one in eight) across the edge of a window at a random base."""
    sizes = buffer_bytes(config)
    buffer = rng.choice([b for b in Buffer if sizes.get(b, 0) >= 4096])
    row_bytes = rng.choice([1, 7, 8, 24, 100, rng.randint(1, 600), rng.randint(1, 5000)])
    rows = rng.choice([1, 2, 3, rng.randint(1, 8)])
    sram_stride = rng.choice([0, row_bytes, row_bytes + rng.randint(1, 40)])
    stride = sram_stride or row_bytes
    while rows > 1 and (rows - 1) * stride + row_bytes > sizes[buffer]:
        rows -= 1
    if row_bytes > sizes[buffer]:
        row_bytes = sizes[buffer] // 2
    stride = sram_stride or row_bytes
    sram = rng.randint(0, sizes[buffer] - ((rows - 1) * stride + row_bytes))
    if rng.random() < 0.1:
        sram = sizes[buffer] - ((rows - 1) * stride + row_bytes) + rng.randint(1, 16)  # past the end
    dram_stride = rng.choice([row_bytes, row_bytes + rng.randint(1, 300), rng.randint(0, 4096),
                              4096])
    extent = (rows - 1) * dram_stride + row_bytes
    if rng.random() < 0.125:
        dram = window_bytes - extent + rng.randint(1, 64)          # past the end
    else:
        dram = rng.randint(0, max(0, window_bytes - extent))
    base = rng.choice([0x1000, 0x2000 + rng.randint(0, 4095), rng.randrange(0, 0x8000, 8)])
    return dict(store=rng.getrandbits(1), buffer=buffer.name, dram=max(0, dram),
                dram_stride=dram_stride, sram=sram, sram_stride=sram_stride, rows=rows,
                row_bytes=row_bytes, window_base=base, window_size=window_bytes)


def transfer_fields(case: dict) -> dict:
    return dict(buffer=Buffer[case["buffer"]], dram=case["dram"], dram_stride=case["dram_stride"],
                sram=case["sram"], sram_stride=case["sram_stride"], rows=case["rows"],
                row_bytes=case["row_bytes"])


def golden(config, case: dict, ram: bytes, buffer: bytes) -> tuple[bytes, bytes, ErrorCode]:
    """The RAM and buffer after the emulator's LOAD or STORE of `case`, and its error code."""
    base, size = case["window_base"], case["window_size"]
    memory = Memory(config, size)
    memory.dram[:] = ram[base:base + size]
    target = Buffer[case["buffer"]]
    memory.buffers[target][:] = buffer
    try:
        memory.transfer(transfer_fields(case), load=not case["store"])
        code = ErrorCode.NONE
    except Stop as stop:
        code = stop.code
    after = bytearray(ram)
    after[base:base + size] = memory.dram
    return bytes(after), bytes(memory.buffers[target]), code


class DmaTB:
    """Clock, reset, the AXI RAM with pauses, the buffer model and the command driver."""

    def __init__(self, dut, config, rng: random.Random, pause: float):
        self.dut, self.config, self.rng = dut, config, rng
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                          size=RAM_BYTES)
        # AxiRam queues two R beats by default, too few to keep the bus full: a beat every other
        # cycle. A deeper queue lets it answer at the bus rate.
        self.ram.read_if.r_channel.queue_occupancy_limit = 16
        self.ram.read_if.ar_channel.queue_occupancy_limit = 8
        self.ram.write_if.w_channel.queue_occupancy_limit = 16
        self.ram.write_if.aw_channel.queue_occupancy_limit = 8
        pause_axi(self.ram, rng, pause)
        self.pause = pause
        self.buffers = {b: bytearray(n) for b, n in buffer_bytes(config).items()}
        self.word = config.axi_data_bytes
        self.write_layout, self.read_layout = sram_write(config), sram_read_request(config)

    async def start(self):
        await start_clock(self.dut, CLOCK_NS)
        self.dut.cmd__valid.value = 0
        self.dut.cancel.value = 0
        self.dut.sram_read_data.value = 0
        self.dut.sram_read__ready.value = 1
        self.dut.sram_write__ready.value = 1
        await reset(self.dut)
        cocotb.start_soon(self._buffers())

    async def _buffers(self):
        """Word writes with byte strobes; a read request answered on the next cycle. The read port
        is shared in the top: with pauses, a cycle in `pause` holds the request (``ready`` low)."""
        answer = None
        while True:
            await RisingEdge(self.dut.clk)
            if answer is not None:
                self.dut.sram_read_data.value = answer
                answer = None
            ready = int(self.rng.random() >= self.pause)
            self.dut.sram_read__ready.value = ready
            write_ready = int(self.rng.random() >= self.pause)
            self.dut.sram_write__ready.value = write_ready
            await ReadOnly()
            if self.dut.sram_write__valid.value and write_ready:
                w = self.write_layout.from_bits(int(self.dut.sram_write__payload.value))
                memory, at = self.buffers[Buffer(w.buffer)], \
                    int(w.addr) * self.word
                data, strobe = int(w.data), int(w.strobe)
                for lane in range(self.word):
                    if strobe >> lane & 1 and at + lane < len(memory):
                        memory[at + lane] = data >> (8 * lane) & 0xFF
            if self.dut.sram_read__valid.value and ready:
                r = self.read_layout.from_bits(int(self.dut.sram_read__payload.value))
                memory, at = self.buffers[Buffer(r.buffer)], \
                    int(r.addr) * self.word
                chunk = bytes(memory[at:at + self.word]).ljust(self.word, b"\0")
                answer = int.from_bytes(chunk, "little")

    async def run(self, case: dict, limit: int = 200_000) -> dict:
        rng = self.rng
        ram = bytes(rng.getrandbits(8) for _ in range(RAM_BYTES)) if not hasattr(self, "_ram") \
            else self._ram
        self._ram = ram
        self.ram.write(0, ram)
        target = Buffer[case["buffer"]]
        buffer = bytes(rng.getrandbits(8) for _ in range(len(self.buffers[target])))
        self.buffers[target][:] = buffer
        want_ram, want_buffer, want_code = golden(self.config, case, ram, buffer)

        dut = self.dut
        dut.window_base.value = case["window_base"]
        dut.window_size.value = case["window_size"]
        dut.cmd__payload.value = dma_command(self.config).const(
            {"store": case["store"], "transfer": transfer_fields(case)}).as_bits()
        dut.cmd__valid.value = 1
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.cmd__ready.value:
                break
        await RisingEdge(dut.clk)
        dut.cmd__valid.value = 0
        accepted = get_sim_time("ns")
        while True:
            await ReadOnly()
            if not dut.busy.value:
                cycles = round((get_sim_time("ns") - accepted) / CLOCK_NS)
                break
            await RisingEdge(dut.clk)
            assert get_sim_time("ns") - accepted < limit * CLOCK_NS, \
                f"the transfer did not end in {limit} cycles: {case}"
        error = int(dut.error.value)
        code = ErrorCode(int(dut.error_code.value))
        perf = DMA_COUNTERS.from_bits(int(dut.perf.value))
        await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)
        got_ram = self.ram.read(0, RAM_BYTES)
        mismatches = []
        if error != (want_code is not ErrorCode.NONE) or (error and code is not want_code):
            mismatches.append(f"error {error} ({code.name}), the emulator stops with "
                              f"{want_code.name}")
        if got_ram != want_ram:
            first = next(i for i in range(RAM_BYTES) if got_ram[i] != want_ram[i])
            mismatches.append(f"RAM differs from byte {first:#x}")
        if bytes(self.buffers[target]) != want_buffer:
            first = next(i for i, (a, b) in enumerate(zip(self.buffers[target], want_buffer))
                         if a != b)
            mismatches.append(f"{target.name} differs from byte {first}")
        beats = 0
        if not error:
            lg = (self.word - 1).bit_length()
            for row in range(case["rows"]):
                start = case["window_base"] + case["dram"] + row * case["dram_stride"]
                if case["row_bytes"]:
                    beats += ((start + case["row_bytes"] - 1) >> lg) - (start >> lg) + 1
        return {"case": case, "mismatches": mismatches, "cycles": cycles, "beats": beats,
                "busy_cycles": int(perf.busy_cycles), "bursts": int(perf.bursts),
                "bytes": int(perf.bytes_written if case["store"] else perf.bytes_read)}


def _describe(report: dict) -> str:
    case = report["case"]
    kind = "STORE" if case["store"] else "LOAD"
    return (f"{kind} {case['rows']} x {case['row_bytes']} B, dram {case['dram']} (+{case['dram_stride']}) "
            f"@ window {case['window_base']:#x}/{case['window_size']}, {case['buffer']} {case['sram']} "
            f"(+{case['sram_stride']}): {report['cycles']} cycles, {report['beats']} beats, "
            f"{report['bursts']} bursts" + (f" -- {'; '.join(report['mismatches'])}"
                                            if report["mismatches"] else ""))


@cocotb.test()
@cocotb.parametrize(pause=[0.0, 0.3])
async def transfers_match_the_emulator(dut, pause):
    params = tb_params()
    config = preset(params["config"])
    rng = random.Random(cocotb.RANDOM_SEED * 2 + int(pause * 10))     # MOEACCEL_SEED replays it
    tb = DmaTB(dut, config, rng, pause)
    await tb.start()
    cases = params.get("cases") or [random_case(rng, config) for _ in range(params["random"])]
    failures = []
    reports = []
    for case in cases:
        report = await tb.run(case)
        reports.append(report)
        dut._log.info(_describe(report))
        if report["mismatches"]:
            failures.append(_describe(report))
        if not pause and report["beats"] >= 64:
            # the bus streams: a beat a cycle once the first burst is under way, a few cycles a row
            assert report["cycles"] <= report["beats"] + 8 * case["rows"] + 32, _describe(report)
    if params.get("report_file"):
        path = Path(f"{params['report_file']}.pause{pause}")
        path.write_text(json.dumps([{k: v for k, v in r.items() if k != "mismatches"}
                                    for r in reports]))
    assert not failures, ("DMA transfers differ from the emulator:\n" + "\n".join(failures))
