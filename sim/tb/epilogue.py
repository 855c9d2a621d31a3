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

from ...formats.epilogue import TABLE_WRITE, epilogue_in, epilogue_out
from ...sw import numerics as nx
from ..harness import StallGenerator, reset, start_clock, tb_params
from .streams import StreamMonitor, StreamSink, StreamSource

INT32 = (nx.INT32_MIN, nx.INT32_MAX)
SHIFT_LIMIT = (1 << nx.SHIFT_BITS) - 1
CLOCK_NS = 10


def _lane(acc, bias, multiplier, shift, apply_table):
    return dict(acc=acc, params=dict(bias=bias, multiplier=multiplier, shift=shift),
                apply_table=apply_table)


def _rows(lanes: int, lane_cases: list[dict], tag_bits: int, rng: random.Random) -> list[dict]:
    rows = []
    for start in range(0, len(lane_cases), lanes):
        chunk = lane_cases[start:start + lanes]
        chunk += lane_cases[:lanes - len(chunk)]
        rows.append(dict(lanes=chunk, tag=rng.getrandbits(tag_bits) if tag_bits else 0))
    return rows


def directed_rows(lanes: int, tag_bits: int, rng: random.Random) -> list[dict]:
    """Edge cases: extremes of every field, rounding ties, saturation, every shift; each with and
    without the table."""
    cases = [
        (nx.INT32_MAX, nx.INT32_MAX, nx.MULT_MAX, 0),
        (nx.INT32_MIN, nx.INT32_MIN, nx.MULT_MAX, 0),
        (nx.INT32_MIN, nx.INT32_MIN, nx.MULT_MAX, nx.SHIFT_MAX),
        (nx.INT32_MAX, nx.INT32_MAX, nx.MULT_MAX, nx.SHIFT_MAX),
        (nx.INT32_MIN, nx.INT32_MIN, nx.MULT_MAX, SHIFT_LIMIT),
        (0, 0, 0, 5),
        (3, 0, 1, 1),                        # 1.5 -> 2 (tie rounds up)
        (-3, 0, 1, 1),                       # -1.5 -> -1 (tie rounds up)
        (-1, 0, 1, 1),                       # -0.5 -> 0
        (255, 1, 1 << 14, 15),               # 128 -> saturates to 127
        (-257, 0, 1 << 14, 15),              # -128.5 -> -128
        (-259, 0, 1 << 14, 15),              # -129.5 -> -129 -> saturates
    ]
    cases += [(-(1 << 30), 12345, nx.MULT_MIN, shift) for shift in range(SHIFT_LIMIT + 1)]
    lane_cases = [_lane(*case, apply_table) for apply_table in (0, 1) for case in cases]
    lane_cases += [_lane(*case, n % 2) for n, case in enumerate(cases)]
    return _rows(lanes, lane_cases, tag_bits, rng)


def random_rows(rng: random.Random, lanes: int, count: int, tag_bits: int = 0) -> list[dict]:
    """Random rows, most lanes with realistic scales (outputs near the int8 range)."""
    lane_cases = []
    for _ in range(count * lanes):
        if rng.random() < 0.7:                       # realistic: acc ~ 2**20, result ~ int8
            case = (rng.randint(-(1 << 20), 1 << 20), rng.randint(-(1 << 16), 1 << 16),
                    rng.randint(nx.MULT_MIN, nx.MULT_MAX), rng.randint(26, 30))
        else:                                         # anything the fields can hold
            case = (rng.randint(*INT32), rng.randint(*INT32), rng.randrange(1 << nx.MULT_BITS),
                    rng.randrange(SHIFT_LIMIT + 1))
        lane_cases.append(_lane(*case, rng.getrandbits(1)))
    return _rows(lanes, lane_cases, tag_bits, rng)


def random_table(rng: random.Random) -> list[int]:
    """An activation table: a real activation at a random scale, or random bytes."""
    choice = rng.choice(["gelu", "silu", "relu", "random"])
    if choice == "random":
        return [rng.randint(nx.INT8_MIN, nx.INT8_MAX) for _ in range(256)]
    return nx.activation_table(choice, rng.uniform(0.005, 0.1), rng.uniform(0.005, 0.1)).tolist()


def golden(row: dict, table: list[int]) -> list[int]:
    """What the epilogue must output for `row`, from the integer reference."""
    out = []
    for lane in row["lanes"]:
        params = lane["params"]
        value = nx.epilogue(torch.tensor([lane["acc"]]), torch.tensor([params["bias"]]),
                            torch.tensor([params["multiplier"]]), torch.tensor([params["shift"]]),
                            torch.tensor(table) if lane["apply_table"] else None)
        out.append(int(value[0]))
    return out


def decode_row(view, lanes: int) -> dict:
    """An `epilogue_in` payload view as the plain dict `golden` takes."""
    return dict(tag=int(view.tag), lanes=[
        dict(acc=view.lanes[n].acc, apply_table=view.lanes[n].apply_table,
             params={name: getattr(view.lanes[n].params, name)
                     for name in ("bias", "multiplier", "shift")})
        for n in range(lanes)])


class TB:
    """Clock, reset, the stream drivers and the scoreboard around one Epilogue."""

    def __init__(self, dut, lanes: int, tag_bits: int, rng: random.Random, idle: float,
                 backpressure: float):
        self.dut, self.lanes = dut, lanes
        self.in_layout = epilogue_in(lanes, tag_bits)
        self.out_layout = epilogue_out(lanes, tag_bits)
        self.table: list[int] = []
        self.expected: list[tuple[int, list[int]]] = []
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
        row = decode_row(self.in_layout.from_bits(bits), self.lanes)
        self.expected.append((row["tag"], golden(row, self.table)))

    def check(self, bits: int) -> None:
        view = self.out_layout.from_bits(bits)
        got = (int(view.tag), [view.values[n] for n in range(self.lanes)])
        assert self.expected, f"output row {got} with no input row to account for it"
        want = self.expected.pop(0)
        if got != want:
            self.errors += 1
            self.dut._log.error(f"row {self.checked}: got (tag, values) {got}, expected {want}")
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
    lanes, tag_bits = params["lanes"], params["tag_bits"]
    rng = random.Random(cocotb.RANDOM_SEED)
    tb = TB(dut, lanes, tag_bits, rng, idle, backpressure)
    await tb.start()
    await tb.send(directed_rows(lanes, tag_bits, rng))      # first with the identity table
    await tb.drain()
    for batch in range(params.get("batches", 3)):
        await tb.load_table(random_table(rng))
        await tb.send(random_rows(rng, lanes, params.get("rows", 200), tag_bits))
        await tb.drain()
    await ClockCycles(dut.clk, 5)
    assert tb.checked > 0
    assert tb.errors == 0, f"{tb.errors} of {tb.checked} rows differ from the golden model"
    dut._log.info(f"{tb.checked} rows bit-exact")


@cocotb.test()
async def full_throughput_without_stalls(dut):
    """With no idles or backpressure the epilogue takes one row per cycle."""
    params = tb_params()
    lanes, tag_bits = params["lanes"], params["tag_bits"]
    rng = random.Random(cocotb.RANDOM_SEED)
    tb = TB(dut, lanes, tag_bits, rng, idle=0.0, backpressure=0.0)
    await tb.start()
    rows = random_rows(rng, lanes, 64, tag_bits)
    start = get_sim_time("ns")
    await tb.send(rows)
    await tb.drain()
    cycles = (get_sim_time("ns") - start) / CLOCK_NS
    assert tb.errors == 0
    # 64 rows, plus the pipeline's latency and the driver's edges at either end.
    assert cycles <= len(rows) + 8, f"{len(rows)} rows took {cycles} cycles"
