"""cocotb regression of `hw.epilogue.Epilogue` against `sw.numerics.epilogue`, bit for bit.

The input monitor hands every accepted row to the golden model; the scoreboard compares the rows that
leave, in order. Directed edge cases and random rows run under every combination of input idles and
output backpressure; the activation table is reloaded between batches.
"""

from __future__ import annotations

import random

import cocotb
import torch
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, RisingEdge

from ...hw.layouts import TABLE_WRITE, epilogue_in, epilogue_out
from ...sw import numerics as nx
from ..harness import StallGenerator, reset, start_clock, tb_params
from .streams import StreamMonitor, StreamSink, StreamSource

INT32 = (nx.INT32_MIN, nx.INT32_MAX)
SHIFT_LIMIT = (1 << nx.SHIFT_BITS) - 1
CLOCK_NS = 10


def directed_rows(lanes: int) -> list[dict]:
    """Edge cases: extremes of every field, rounding ties, saturation, every shift."""
    lane_cases = [
        dict(acc=nx.INT32_MAX, bias=nx.INT32_MAX, multiplier=nx.MULT_MAX, shift=0),
        dict(acc=nx.INT32_MIN, bias=nx.INT32_MIN, multiplier=nx.MULT_MAX, shift=0),
        dict(acc=nx.INT32_MIN, bias=nx.INT32_MIN, multiplier=nx.MULT_MAX, shift=nx.SHIFT_MAX),
        dict(acc=nx.INT32_MAX, bias=nx.INT32_MAX, multiplier=nx.MULT_MAX, shift=nx.SHIFT_MAX),
        dict(acc=nx.INT32_MIN, bias=nx.INT32_MIN, multiplier=nx.MULT_MAX, shift=SHIFT_LIMIT),
        dict(acc=0, bias=0, multiplier=0, shift=5),
        dict(acc=3, bias=0, multiplier=1, shift=1),        # 1.5 -> 2 (tie rounds up)
        dict(acc=-3, bias=0, multiplier=1, shift=1),       # -1.5 -> -1 (tie rounds up)
        dict(acc=-1, bias=0, multiplier=1, shift=1),       # -0.5 -> 0
        dict(acc=255, bias=1, multiplier=1 << 14, shift=15),   # 128 -> saturates to 127
        dict(acc=-257, bias=0, multiplier=1 << 14, shift=15),  # -128.5 -> -128
        dict(acc=-259, bias=0, multiplier=1 << 14, shift=15),  # -129.5 -> -129 -> saturates
    ]
    lane_cases += [dict(acc=-(1 << 30), bias=12345, multiplier=nx.MULT_MIN, shift=s)
                   for s in range(SHIFT_LIMIT + 1)]
    rows = []
    for start in range(0, len(lane_cases), lanes):
        chunk = lane_cases[start:start + lanes]
        chunk += lane_cases[:lanes - len(chunk)]
        for apply_table in (0, 1):
            rows.append(dict(lanes=chunk, apply_table=apply_table))
    return rows


def random_rows(rng: random.Random, lanes: int, count: int) -> list[dict]:
    """Random rows, most of them with realistic scales (outputs near the int8 range)."""
    rows = []
    for _ in range(count):
        chunk = []
        for _ in range(lanes):
            if rng.random() < 0.7:                       # realistic: acc ~ 2**20, result ~ int8
                acc, bias = rng.randint(-(1 << 20), 1 << 20), rng.randint(-(1 << 16), 1 << 16)
                multiplier, shift = rng.randint(nx.MULT_MIN, nx.MULT_MAX), rng.randint(26, 30)
            else:                                         # anything the fields can hold
                acc, bias = rng.randint(*INT32), rng.randint(*INT32)
                multiplier, shift = rng.randrange(1 << nx.MULT_BITS), rng.randrange(SHIFT_LIMIT + 1)
            chunk.append(dict(acc=acc, bias=bias, multiplier=multiplier, shift=shift))
        rows.append(dict(lanes=chunk, apply_table=rng.getrandbits(1)))
    return rows


def random_table(rng: random.Random) -> list[int]:
    """An activation table: a real activation at a random scale, or random bytes."""
    choice = rng.choice(["gelu", "silu", "relu", "random"])
    if choice == "random":
        return [rng.randint(nx.INT8_MIN, nx.INT8_MAX) for _ in range(256)]
    return nx.activation_table(choice, rng.uniform(0.005, 0.1), rng.uniform(0.005, 0.1)).tolist()


def golden(row: dict, table: list[int]) -> list[int]:
    """What the epilogue must output for `row`, from the integer reference."""
    fields = {name: torch.tensor([lane[name] for lane in row["lanes"]])
              for name in ("acc", "bias", "multiplier", "shift")}
    return nx.epilogue(fields["acc"], fields["bias"], fields["multiplier"], fields["shift"],
                       torch.tensor(table) if row["apply_table"] else None).tolist()


class TB:
    """Clock, reset, the stream drivers and the scoreboard around one Epilogue."""

    def __init__(self, dut, lanes: int, rng: random.Random, idle: float, backpressure: float):
        self.dut, self.lanes = dut, lanes
        self.in_layout, self.out_layout = epilogue_in(lanes), epilogue_out(lanes)
        self.table: list[int] = []
        self.expected: list[list[int]] = []
        self.checked = 0
        self.errors = 0
        self.source = StreamSource(dut, "i", StallGenerator(rng, idle))
        self.sink = StreamSink(dut, "o", self.check, StallGenerator(rng, backpressure))
        self.monitor = StreamMonitor(dut, "i", self.predict)
        self.table_source = StreamSource(dut, "table_write")

    async def start(self):
        await start_clock(self.dut, CLOCK_NS)
        await reset(self.dut)
        cocotb.start_soon(self.sink.run())
        cocotb.start_soon(self.monitor.run())
        # Reset leaves the table as an earlier test wrote it: start from the identity.
        await self.load_table(list(range(nx.INT8_MIN, nx.INT8_MAX + 1)))

    def predict(self, bits: int) -> None:
        view = self.in_layout.from_bits(bits)
        row = dict(apply_table=view.apply_table,
                   lanes=[{name: getattr(view.lanes[n], name)
                           for name in ("acc", "bias", "multiplier", "shift")}
                          for n in range(self.lanes)])
        self.expected.append(golden(row, self.table))

    def check(self, bits: int) -> None:
        view = self.out_layout.from_bits(bits)
        got = [view[n] for n in range(self.lanes)]
        assert self.expected, f"output row {got} with no input row to account for it"
        want = self.expected.pop(0)
        if got != want:
            self.errors += 1
            self.dut._log.error(f"row {self.checked}: got {got}, expected {want}")
        self.checked += 1

    async def load_table(self, table: list[int]) -> None:
        """Write all 256 entries (the pipeline must be empty)."""
        await self.table_source.send(TABLE_WRITE.const({"index": index, "value": value}).as_bits()
                                     for index, value in enumerate(table))
        self.table = list(table)

    async def send(self, rows: list[dict]) -> None:
        await self.source.send(self.in_layout.const(row).as_bits() for row in rows)

    async def drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.expected:
                return
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"{len(self.expected)} rows never left the epilogue")


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5], backpressure=[0.0, 0.5])
async def bit_exact_against_golden_model(dut, idle, backpressure):
    """Directed and random rows, with table reloads, under idle/backpressure; every row checked."""
    params = tb_params()
    lanes = params["lanes"]
    rng = random.Random(cocotb.RANDOM_SEED)
    tb = TB(dut, lanes, rng, idle, backpressure)
    await tb.start()
    await tb.send(directed_rows(lanes))            # first with the identity table
    await tb.drain()
    for batch in range(params.get("batches", 3)):
        await tb.load_table(random_table(rng))
        await tb.send(random_rows(rng, lanes, params.get("rows", 200)))
        await tb.drain()
    await ClockCycles(dut.clk, 5)
    assert tb.checked > 0
    assert tb.errors == 0, f"{tb.errors} of {tb.checked} rows differ from the golden model"
    dut._log.info(f"{tb.checked} rows bit-exact")


@cocotb.test()
async def full_throughput_without_stalls(dut):
    """With no idles or backpressure the epilogue takes one row per cycle."""
    params = tb_params()
    lanes = params["lanes"]
    rng = random.Random(cocotb.RANDOM_SEED)
    tb = TB(dut, lanes, rng, idle=0.0, backpressure=0.0)
    await tb.start()
    rows = random_rows(rng, lanes, 64)
    start = get_sim_time("ns")
    await tb.send(rows)
    await tb.drain()
    cycles = (get_sim_time("ns") - start) / CLOCK_NS
    assert tb.errors == 0
    # 64 rows, plus the pipeline's latency and the driver's edges at either end.
    assert cycles <= len(rows) + 8, f"{len(rows)} rows took {cycles} cycles"
