"""cocotb regression of `hw.vector.VectorUnit` against `sw.vector`, bit for bit.

Each case issues one VECTOR command and drives the unit's three inputs, ``a``, ``b`` and
``operands``, as independent sources (each with its own random idles, all valid from the cycle the
command is), while sinks take ``o`` and ``gates`` under random backpressure; the scoreboard compares
every word that leaves, in order, with the golden model's, and the counters: ``busy_cycles`` equal
to the cycles from the command's accept to the last output, no stall counted on a side that made
none. Lanes and fields the unit must ignore carry junk on the way in; lanes beyond a row's width
must leave as zeros. Directed cases (rows of zeros, constant rows, one outlier, the widest and the
narrowest row, saturation at both ends, eps_q at its limits, head_dim at its limits) and random
shapes and scales of every op run under every combination of idle and backpressure, then random
cases back to back; refused commands and an eps_q out of range set ``error`` and produce nothing.

Parameters: ``config`` (preset), ``overrides`` (AccelConfig fields), and any of
``regression`` (``{"random": n, "back_to_back": m}``: the directed cases and n random ones per op,
crossed with idle x backpressure; m random rounds of every op back to back), ``cases`` (case dicts,
see `case_streams`, run as given; each report holds ``cycles``, from the command's accept to the
last output transfer, counting the cycles of both, and the ``perf`` counters, and goes to
``report_file``), ``refusals`` (true: `refused_commands_set_error`). A test whose parameter is
absent is skipped.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import cocotb
import torch
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

from ...config import preset
from ...formats.buffers import Buffer
from ...formats.numbers import INT32_MAX, INT32_MIN, MULT_MAX, MULT_MIN, SHIFT_MAX
from ...formats.router import TOKEN_GATE
from ...formats.vector import (EPS_LIMIT, NORMS, TWO_OPERANDS, VECTOR_COUNTERS, VectorOp,
                               check, head_limit, operand_word, row_words, vector_b,
                               vector_command, vector_in, vector_out)
from ...sw import vector as sv
from ..harness import StallGenerator, check_cases, reset, start_clock, tb_params
from .streams import StreamSink, StreamSource

CLOCK_NS = 10
PARAMS = tb_params()                 # read at import: they decide which tests run
COUNTERS = tuple(VECTOR_COUNTERS.members)
KINDS = ("random", "zeros", "constant", "outlier", "max", "min")
SCALES = ("realistic", "raw", "extreme")
INT16 = (-(1 << 15), (1 << 15) - 1)


def op_named(name: str) -> VectorOp:
    """`VectorOp` from a case's lower-case ``op``."""
    return VectorOp[name.upper()]


# -- a case's inputs, the golden model's outputs, and the words of every stream --------------------

@dataclass
class CaseStreams:
    """One case as the unit sees it: the command's fields, the words of ``a``, ``b`` and
    ``operands`` (plain values, see `encode`), and what must leave on ``o`` (words of int8 lanes)
    and ``gates`` ((token, gate) pairs)."""
    fields: dict
    a: list[list[int]]
    b: list[list[int]] = field(default_factory=list)
    operands: list[dict] = field(default_factory=list)
    o: list[list[int]] = field(default_factory=list)
    gates: list[tuple[int, int]] = field(default_factory=list)


def command_fields(op: VectorOp, rows: int, width: int, head_dim: int = 0) -> dict:
    """A VECTOR body of `op` from the buffers it reads and writes (multipliers and shift zero)."""
    return dict(op=op, rows=rows, width=width,
                a=Buffer.OUT if op is VectorOp.REQUANT else Buffer.ACT0, b=Buffer.ACT1,
                dst=Buffer.GATES if op is VectorOp.GATE else Buffer.ACT1, params=0, multiplier=0,
                multiplier_b=0, shift=0, head_dim=head_dim if op is VectorOp.ROPE else 0)


class _Draw:
    """The random source of one case: its seed's torch generator (tensors) and `random.Random`
    (scalars, junk), its ``kind`` and ``scales``, and the configuration's lanes."""

    def __init__(self, config, case: dict):
        self.config, self.lanes = config, config.vector_lanes
        self.kind, self.scales = case.get("kind", "random"), case.get("scales", "realistic")
        self.generator = torch.Generator().manual_seed(case["seed"])
        self.rng = random.Random(case["seed"])

    def ints(self, low: int, high: int, shape) -> torch.Tensor:
        """Integers in [low, high] inclusive."""
        return torch.randint(low, high + 1, shape, generator=self.generator, dtype=torch.int64)

    def normal(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64)

    def junk(self, low: int, high: int):
        """A maker of values for the lanes and fields the unit must ignore."""
        return lambda: self.rng.randint(low, high)

    def requant(self, realistic_shifts: tuple[int, int]) -> tuple[int, int]:
        """A (multiplier, shift): normalised with a shift that lands near int8, any value the
        fields hold, or an extreme."""
        rng = self.rng
        if self.scales == "realistic":
            return rng.randint(MULT_MIN, MULT_MAX), rng.randint(*realistic_shifts)
        if self.scales == "raw":
            return rng.randint(0, MULT_MAX), rng.randint(0, SHIFT_MAX)
        return rng.choice([(MULT_MAX, 0), (MULT_MAX, 1), (0, 0), (1, SHIFT_MAX),
                           (MULT_MAX, SHIFT_MAX), (1, 0)])


def _rows(draw: _Draw, rows: int, width: int, low: int, high: int, typical: int) -> torch.Tensor:
    """``rows x width`` values in [low, high] of the draw's kind; ``typical`` bounds the random
    values and the small ones around an outlier."""
    kind = draw.kind
    if kind == "zeros":
        return torch.zeros(rows, width, dtype=torch.int64)
    if kind == "max":
        return torch.full((rows, width), high, dtype=torch.int64)
    if kind == "min":
        return torch.full((rows, width), low, dtype=torch.int64)
    if kind == "constant":                   # one value a row; the extremes among them
        values = draw.ints(low, high, (rows, 1))
        values[0::3] = high
        values[1::3] = low
        return values.expand(rows, width).clone()
    if kind == "outlier":                    # small values, one extreme a row (alternating sign)
        x = draw.ints(-min(typical, 3), min(typical, 3), (rows, width))
        where = draw.ints(0, width - 1, (rows,))
        x[torch.arange(rows), where] = torch.where(torch.arange(rows) % 2 == 0, high, low)
        return x
    if kind == "random":
        return draw.ints(max(low, -typical), min(high, typical), (rows, width))
    raise ValueError(f"unknown input kind {kind!r} (one of {', '.join(KINDS)})")


def _words(values: list[int], lanes: int, pad) -> list[list[int]]:
    """`values` in words of `lanes`, the last one filled with ``pad()``."""
    words = [values[start:start + lanes] for start in range(0, len(values), lanes)]
    words[-1] += [pad() for _ in range(lanes - len(words[-1]))]
    return words


def _operand_words(draw: _Draw, weight: list[int], bias: list[int] | None = None,
                   eps_q: int | None = None, weight_range=INT16) -> list[dict]:
    """Operand words of per-channel `weight` (and `bias`; ``eps_q`` in the first word), junk in
    every lane and field the unit must ignore."""
    lanes = draw.lanes
    junk32, junk64 = draw.junk(INT32_MIN, INT32_MAX), draw.junk(-(1 << 63), (1 << 63) - 1)
    weights = _words(weight, lanes, draw.junk(*weight_range))
    biases = _words(bias, lanes, junk32) if bias is not None else \
        [[junk32() for _ in range(lanes)] for _ in weights]
    return [dict(weight=w, bias=b, eps_q=eps_q if j == 0 and eps_q is not None else junk64())
            for j, (w, b) in enumerate(zip(weights, biases))]


# Each op's golden model: (draw, x, fields, case) -> (b rows, operand words, result), the fields'
# multipliers and shift filled in. The result is rows x width int8, or one Q15 gate a row (GATE).

def _add_or_multiply(draw, x, fields, case):
    rng, typical = draw.rng, 40 if draw.scales == "realistic" else 128
    b = x.clone() if draw.kind in ("max", "min") else \
        draw.ints(-typical, min(typical, 127), tuple(x.shape))     # the same extreme: saturate
    if fields["op"] is VectorOp.MUL:
        multiplier, shift = draw.requant((19, 23))
        fields.update(multiplier=multiplier, shift=shift)
        return b, [], sv.multiply(x, b, multiplier, shift)
    if draw.scales == "realistic":
        ma, mb, shift = sv.add_operands(rng.uniform(0.01, 0.1), rng.uniform(0.01, 0.1),
                                        rng.uniform(0.02, 0.2))
    elif draw.scales == "raw":
        ma, mb = rng.randint(0, MULT_MAX), rng.randint(0, MULT_MAX)
        shift = rng.randint(0, SHIFT_MAX)
    else:
        ma, mb, shift = rng.choice([(MULT_MAX, MULT_MAX, 0), (0, 0, 0), (1, 1, SHIFT_MAX),
                                    (MULT_MAX, 0, 1), (0, MULT_MAX, SHIFT_MAX),
                                    (MULT_MAX, MULT_MAX, 8)])
    fields.update(multiplier=ma, multiplier_b=mb, shift=shift)
    return b, [], sv.add(x, b, ma, mb, shift)


def _requant(draw, x, fields, case):
    multiplier, shift = draw.requant((26, 31))
    fields.update(multiplier=multiplier, shift=shift)
    return None, [], sv.requant(x, multiplier, shift)


def _norm(draw, x, fields, case):
    """Realistic operands from float weights (`sw.vector.norm_operands`), raw int16 weights and
    int32 biases with a normalised multiplier, or extremes of both signs."""
    rng, width = draw.rng, x.shape[1]
    centred = fields["op"] is VectorOp.LAYERNORM
    if draw.scales == "realistic":
        weight = 1 + 0.3 * draw.normal(width)
        bias = 0.1 * draw.normal(width) if centred else None
        q = sv.norm_operands(weight, bias, rng.choice([1e-5, 1e-6]), rng.uniform(0.01, 0.1),
                             rng.uniform(0.015, 0.05), centred)
    elif draw.scales == "raw":
        magnitude = 1 << rng.randint(0, 31)
        q = dict(weight=draw.ints(*INT16, (width,)),
                 bias=draw.ints(max(INT32_MIN, -magnitude), min(INT32_MAX, magnitude), (width,)),
                 eps_q=rng.randrange(1 << 40), multiplier=rng.randint(MULT_MIN, MULT_MAX),
                 shift=rng.randint(24, SHIFT_MAX))
    else:
        positive = torch.arange(width) % 2 == 0
        multiplier, shift = rng.choice([(MULT_MAX, 0), (MULT_MAX, 20), (0, 0), (1, SHIFT_MAX)])
        q = dict(weight=torch.where(positive, INT16[1], INT16[0]),
                 bias=torch.where(positive, INT32_MAX, INT32_MIN), eps_q=rng.randrange(1 << 20),
                 multiplier=multiplier, shift=shift)
    eps_q = {"operands": q["eps_q"], "zero": 0, "large": EPS_LIMIT - 1}[case.get("eps", "operands")]
    fields.update(multiplier=q["multiplier"], shift=q["shift"])
    norm = sv.layernorm if centred else sv.rmsnorm
    return None, _operand_words(draw, q["weight"].tolist(), q["bias"].tolist(), eps_q), \
        norm(x, q["weight"], q["bias"], eps_q, q["multiplier"], q["shift"])


def _rope(draw, x, fields, case):
    """A table of each row's position (`sw.vector.rope_table`), or random int16 with extremes;
    per row, its table's words."""
    rows, head_dim = x.shape[0], fields["head_dim"]
    if draw.scales == "realistic":
        table = sv.rope_table(draw.ints(0, draw.config.max_seq_len - 1, (rows,)), head_dim)
    else:
        table = draw.ints(*INT16, (rows, head_dim))
        table[:, 0::3] = INT16[1]
        table[:, 1::3] = INT16[0]
    multiplier, shift = draw.rng.randint(0, MULT_MAX), draw.rng.randint(0, SHIFT_MAX)  # unused
    fields.update(multiplier=multiplier, shift=shift)
    operands = [word for row in table.tolist() for word in _operand_words(draw, row)]
    return None, operands, sv.rope(x, table, head_dim)


def _gate(draw, x, fields, case):
    """Realistic gate weights (`sw.vector.gate_operands`), raw int8 with a normalised
    multiplier, or one extreme throughout."""
    rng, width, int8 = draw.rng, x.shape[1], (-128, 127)
    if draw.scales == "realistic":
        q = sv.gate_operands(0.1 * draw.normal(width), rng.uniform(0.01, 0.1))
        weight, multiplier, shift = q["weight"], q["multiplier"], q["shift"]
    elif draw.scales == "raw":
        weight = draw.ints(*int8, (width,))
        multiplier, shift = rng.randint(MULT_MIN, MULT_MAX), rng.randint(10, SHIFT_MAX)
    else:
        weight = torch.full((width,), rng.choice(int8), dtype=torch.int64)
        multiplier, shift = rng.choice([(MULT_MAX, 0), (MULT_MAX, 12), (0, 0), (1, SHIFT_MAX)])
    fields.update(multiplier=multiplier, shift=shift)
    return None, _operand_words(draw, weight.tolist(), weight_range=int8), \
        sv.sigmoid_gate(x, weight, multiplier, shift)


GOLDEN = {VectorOp.ADD: _add_or_multiply, VectorOp.MUL: _add_or_multiply,
          VectorOp.RMSNORM: _norm, VectorOp.LAYERNORM: _norm, VectorOp.ROPE: _rope,
          VectorOp.REQUANT: _requant, VectorOp.GATE: _gate}


def case_streams(config, case: dict) -> CaseStreams:
    """The command, inputs and golden outputs of `case`: ``op`` (a `VectorOp` name, any case),
    ``rows``, ``width``, ``head_dim`` (ROPE), ``kind`` (`KINDS`: the int8 rows, int32 for
    REQUANT), ``scales`` (`SCALES`: multipliers, shifts and operands that are realistic, any
    value the fields hold, or extremes), ``eps`` (norms: ``operands``, ``zero`` or ``large``,
    EPS_LIMIT - 1) and ``seed``. Deterministic in the case."""
    op = op_named(case["op"])
    rows, width, lanes = case["rows"], case["width"], config.vector_lanes
    draw = _Draw(config, case)
    fields = command_fields(op, rows, width, case.get("head_dim", 0))
    if op is VectorOp.REQUANT:
        x = _rows(draw, rows, width, INT32_MIN, INT32_MAX,
                  (1 << 20) if draw.scales == "realistic" else INT32_MAX)
        junk_a = draw.junk(INT32_MIN, INT32_MAX)
    else:
        x = _rows(draw, rows, width, -128, 127, 40 if draw.scales == "realistic" else 128)
        junk_a = draw.junk(-128, 127)
    b, operands, result = GOLDEN[op](draw, x, fields, case)
    streams = CaseStreams(fields, operands=operands,
                          a=[word for row in x.tolist() for word in _words(row, lanes, junk_a)])
    if b is not None:
        junk_b = draw.junk(-128, 127)
        streams.b = [word for row in b.tolist() for word in _words(row, lanes, junk_b)]
    if op is VectorOp.GATE:
        streams.gates = list(enumerate(result.tolist()))
    else:
        streams.o = [word for row in result.tolist() for word in _words(row, lanes, lambda: 0)]
    return streams


def encode(config, streams: CaseStreams) -> dict[str, list]:
    """The payload constants of each input stream (``cmd``, ``a``, ``b``, ``operands``)."""
    return {"cmd": [vector_command(config).const(streams.fields)],
            "a": [vector_in(config).const(word) for word in streams.a],
            "b": [vector_b(config).const(word) for word in streams.b],
            "operands": [operand_word(config).const(word) for word in streams.operands]}


def ideal_cycles(config, rows: int, width: int) -> int:
    """Every element through the lanes once: ``rows x width / vector_lanes``, rounded up."""
    return -(-rows * width // config.vector_lanes)


# -- the cases -------------------------------------------------------------------------------------

def _case(op: VectorOp, rows: int, width: int, seed: int, kind: str = "random",
          scales: str = "realistic", head_dim: int = 0, eps: str = "operands") -> dict:
    return dict(op=op.name.lower(), rows=rows, width=width, head_dim=head_dim, kind=kind,
                scales=scales, eps=eps, seed=seed)


def directed_cases(config, rng: random.Random) -> list[dict]:
    """Per op: rows of zeros, constant rows, one outlier a row, saturation at both ends, the
    widest row the configuration holds and a one-element row; the norms with eps_q 0 (with rows
    of zeros: a zero sum of squares) and EPS_LIMIT - 1; ROPE with head_dim at both limits."""
    lanes, widest = config.vector_lanes, config.max_inputs
    pair, top = 2 * lanes, head_limit(config)
    cases = []
    for op in VectorOp:
        seed = rng.randrange(1 << 30)
        if op is VectorOp.ROPE:
            odd = pair * 3                                # three heads of the smallest size
            cases += [_case(op, 3, odd, seed + n, kind, head_dim=pair)
                      for n, kind in enumerate(("zeros", "constant", "outlier"))]
            cases += [_case(op, 2, odd, seed + 3, "max", "extreme", pair),
                      _case(op, 2, odd, seed + 4, "min", "extreme", pair),
                      _case(op, 3, pair, seed + 5, head_dim=pair),          # one element a lane
                      _case(op, 2, pair * 5, seed + 6, "random", "extreme", pair)]
            if top <= widest:
                cases.append(_case(op, 2, top, seed + 7, head_dim=top))
            if widest % top == 0:
                cases.append(_case(op, 1, widest, seed + 8, head_dim=top))
            cases.append(_case(op, 1, widest - widest % pair, seed + 9, head_dim=pair))
            continue
        narrow = lanes * 2 + 3                           # not a multiple of the lanes
        cases += [_case(op, 3, narrow, seed + n, kind)
                  for n, kind in enumerate(("zeros", "constant", "outlier"))]
        cases += [_case(op, 2, narrow, seed + 3, "max", "extreme"),
                  _case(op, 2, narrow, seed + 4, "min", "extreme"),
                  _case(op, 2, narrow, seed + 5, "outlier", "extreme"),
                  _case(op, 1, widest, seed + 6),
                  _case(op, 4, 1, seed + 7),
                  _case(op, 3, 1, seed + 8, "random", "extreme")]
        if op in NORMS:
            cases += [_case(op, 2, narrow, seed + 9, "zeros", eps="zero"),
                      _case(op, 3, narrow, seed + 10, "random", eps="zero"),
                      _case(op, 3, narrow, seed + 11, "random", eps="large"),
                      _case(op, 2, narrow, seed + 12, "constant", "raw", eps="large"),
                      _case(op, 1, widest, seed + 13, "max", "realistic", eps="zero")]
    return cases


def random_case(config, op: VectorOp, rng: random.Random, max_width: int) -> dict:
    """A random shape (widths mostly not a multiple of the lanes) and scales of `op`."""
    lanes = config.vector_lanes
    scales = rng.choices(SCALES, weights=(5, 3, 2))[0]
    kind = rng.choices(KINDS, weights=(8, 1, 1, 1, 1, 1))[0]
    rows = rng.randint(1, 8)                 # beyond the unit's row banks at times
    if op is VectorOp.ROPE:
        pair = 2 * lanes
        head_dim = pair * rng.randint(1, min(head_limit(config), max_width) // pair)
        width = head_dim * rng.randint(1, max(1, max_width // head_dim))
        return _case(op, rows, width, rng.randrange(1 << 30), kind, scales, head_dim)
    width = rng.randint(1, max_width)
    eps = rng.choices(("operands", "zero", "large"), weights=(6, 1, 1))[0]
    return _case(op, rows, width, rng.randrange(1 << 30), kind, scales, eps=eps)


def regression_cases(config, rng: random.Random, random_per_op: int = 10) -> list[dict]:
    """The directed cases, then `random_per_op` random cases of each op (rows of up to
    ``min(max_inputs, 24 x lanes)``, to keep the run short)."""
    max_width = min(config.max_inputs, 24 * config.vector_lanes)
    return directed_cases(config, rng) + [random_case(config, op, rng, max_width)
                                          for _ in range(random_per_op) for op in VectorOp]


def describe_shape(case: dict) -> str:
    shape = f"{case['rows']}x{case['width']}"
    if case["op"] == "rope":
        shape += f" head {case['head_dim']}"
    eps = f" eps {case['eps']}" if case["op"] in ("rmsnorm", "layernorm") else ""
    kind, scales = case.get("kind", "random"), case.get("scales", "realistic")
    return f"{case['op']} {shape} {kind}/{scales}{eps}"


def describe(case: dict, report: dict) -> str:
    return (f"{describe_shape(case)} (idle {case.get('idle', 0)}, backpressure "
            f"{case.get('backpressure', 0)}): {report['cycles']} cycles (busy "
            f"{report['busy_cycles']}, ideal {report['ideal_cycles']}), "
            f"{len(report['mismatches'])} mismatches")


# -- the testbench ---------------------------------------------------------------------------------

class VectorTB:
    """Clock, reset, the sources and sinks, and the scoreboard around one VectorUnit."""

    INPUTS = ("a", "b", "operands")

    def __init__(self, dut, config, rng: random.Random):
        self.dut, self.config, self.rng = dut, config, rng
        self.o_layout = vector_out(config)
        self.gate_layout = TOKEN_GATE.onchip(config)
        self.o_stall = StallGenerator(rng, 0.0)
        self.gates_stall = StallGenerator(rng, 0.0)
        self.expected_o: deque = deque()
        self.expected_gates: deque = deque()
        self.words_out = 0
        self.last_output_ns = None
        self.mismatches: list[str] = []

    async def start(self) -> None:
        dut = self.dut
        await start_clock(dut, CLOCK_NS)
        for name in ("cmd",) + self.INPUTS:
            getattr(dut, f"{name}__valid").value = 0
        dut.o__ready.value = 0
        dut.gates__ready.value = 0
        await reset(dut)
        cocotb.start_soon(StreamSink(dut, "o", self.check_o, self.o_stall).run())
        cocotb.start_soon(StreamSink(dut, "gates", self.check_gate, self.gates_stall).run())

    # The sinks' callbacks run in the read-only phase before the transfer's edge.
    def _received(self) -> None:
        self.words_out += 1
        self.last_output_ns = get_sim_time("ns")

    def check_o(self, bits: int) -> None:
        self._received()
        view = self.o_layout.from_bits(bits)
        got = [int(view[n]) for n in range(self.config.vector_lanes)]
        if not self.expected_o:
            self.mismatches.append(f"o word {got} with none expected")
            return
        index, want = self.expected_o.popleft()
        if got != want:
            self.mismatches.append(f"o word {index}: got {got}, expected {want}")

    def check_gate(self, bits: int) -> None:
        self._received()
        view = self.gate_layout.from_bits(bits)
        got = (int(view.token), int(view.gate))
        if not self.expected_gates:
            self.mismatches.append(f"gate (token, gate) {got} with none expected")
            return
        want = self.expected_gates.popleft()
        if got != want:
            self.mismatches.append(f"gate (token, gate) {got}, expected {want}")

    def counters(self) -> dict:
        perf = VECTOR_COUNTERS.from_bits(int(self.dut.perf.value))
        return {name: int(getattr(perf, name)) for name in COUNTERS}

    async def issue(self, command) -> float:
        """Drive one command; the time (ns) of the read-only phase that saw it taken (the same
        phase the sinks record outputs in)."""
        dut = self.dut
        await RisingEdge(dut.clk)
        dut.cmd__payload.value = command.as_bits()
        dut.cmd__valid.value = 1
        while True:
            await ReadOnly()
            if int(dut.cmd__ready.value):
                accepted = get_sim_time("ns")
                await RisingEdge(dut.clk)
                dut.cmd__valid.value = 0
                return accepted
            await RisingEdge(dut.clk)

    def _sources(self, payloads: dict, idle: float) -> list:
        """Start a source on each input with words to send, each with its own idles."""
        return [cocotb.start_soon(StreamSource(self.dut, name, StallGenerator(self.rng, idle))
                                  .send(const.as_bits() for const in payloads[name]))
                for name in self.INPUTS if payloads[name]]

    def _stop(self, tasks) -> None:
        for task in tasks:
            if not task.done():
                task.cancel()
        for name in ("cmd",) + self.INPUTS:
            getattr(self.dut, f"{name}__valid").value = 0

    def cycle_limit(self, streams: CaseStreams, stall: float) -> int:
        """Generous: every word of every stream ten times over (more under stalls), and a
        hundred cycles a row."""
        words = (2 * len(streams.a) + len(streams.b) + len(streams.operands) + len(streams.o)
                 + len(streams.gates))
        return int((10 * words + 100 * streams.fields["rows"] + 500) / (1 - stall) ** 2)

    async def run(self, case: dict) -> dict:
        """One case: its command and words in, every output checked; its report."""
        dut, config = self.dut, self.config
        streams = case_streams(config, case)
        reasons = check(config, streams.fields)
        assert not reasons, f"case {case} is one the unit refuses: {reasons}"
        idle, backpressure = case.get("idle", 0.0), case.get("backpressure", 0.0)
        self.o_stall.probability = self.gates_stall.probability = backpressure
        self.expected_o = deque(enumerate(streams.o))
        self.expected_gates = deque(streams.gates)
        self.mismatches, self.words_out, self.last_output_ns = [], 0, None
        payloads = encode(config, streams)
        tasks = self._sources(payloads, idle)
        command = cocotb.start_soon(self.issue(payloads["cmd"][0]))
        tasks.append(command)
        limit = self.cycle_limit(streams, max(idle, backpressure))
        for _ in range(limit):
            if all(task.done() for task in tasks) and not self.expected_o \
                    and not self.expected_gates:
                break
            await RisingEdge(dut.clk)
        else:
            self.mismatches.append(
                f"stopped after {limit} cycles: command {'taken' if command.done() else 'waiting'}"
                f", {len(self.expected_o)} o words and {len(self.expected_gates)} gates still "
                f"expected, busy {int(dut.busy.value)}, error {int(dut.error.value)}")
            self._stop(tasks)
            await reset(dut)
        accepted = command.result() if command.done() and not command.cancelled() else None
        for _ in range(20):                         # the unit goes idle after its last output
            await ReadOnly()
            if not int(dut.busy.value):
                break
            await RisingEdge(dut.clk)
        else:
            self.mismatches.append("busy stayed high after the last output")
        await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)                   # a word too many would show by now
        if int(dut.error.value):
            self.mismatches.append("error is set")
        cycles = None                 # the accept's cycle to the last transfer's, both counted
        if accepted is not None and self.last_output_ns is not None:
            cycles = round((self.last_output_ns - accepted) / CLOCK_NS) + 1
        counters = self.counters()
        if cycles is not None and counters["busy_cycles"] != cycles:
            self.mismatches.append(f"perf.busy_cycles {counters['busy_cycles']}, not the {cycles} "
                                   f"cycles from the command's accept to the last output")
        if not idle and counters["input_stall_cycles"] or \
                not backpressure and counters["output_stall_cycles"]:
            self.mismatches.append(f"stalls counted with none made: {counters}")
        fields = streams.fields
        return {**case, "op": fields["op"].name.lower(), "head_dim": fields["head_dim"],
                "multiplier": fields["multiplier"], "multiplier_b": fields["multiplier_b"],
                "shift": fields["shift"], "cycles": cycles,
                "ideal_cycles": ideal_cycles(config, case["rows"], case["width"]),
                **counters, "words_out": self.words_out, "mismatches": self.mismatches}

    async def _within(self, cycles: int, done) -> bool:
        """Wait until ``done()`` holds, at most `cycles` cycles; whether it came."""
        for _ in range(cycles):
            if done():
                return True
            await RisingEdge(self.dut.clk)
        return done()

    async def run_back_to_back(self, cases: list[dict], idle: float,
                               backpressure: float) -> list[str]:
        """Each case's command and words offered as soon as the case before has taken its last
        input word (its outputs may still be leaving, the unit still busy); every output checked
        in order. The mismatches."""
        self.o_stall.probability = self.gates_stall.probability = backpressure
        self.expected_o, self.expected_gates, self.mismatches = deque(), deque(), []
        pending, limit, overlapped = [], 0, 0
        for n, case in enumerate(cases):
            streams = case_streams(self.config, case)
            if not await self._within(limit, lambda: all(task.done() for task in pending)):
                self.mismatches.append(f"case {n - 1} ({describe_shape(cases[n - 1])}) never "
                                       f"took all its words")
                break
            overlapped += bool(int(self.dut.busy.value))
            self.expected_o.extend((f"{n} ({describe_shape(case)}) word {index}", word)
                                   for index, word in enumerate(streams.o))
            self.expected_gates.extend(streams.gates)
            payloads = encode(self.config, streams)
            pending = self._sources(payloads, idle)
            pending.append(cocotb.start_soon(self.issue(payloads["cmd"][0])))
            limit = self.cycle_limit(streams, max(idle, backpressure))
        if not await self._within(limit * len(cases), lambda: all(
                task.done() for task in pending) and not self.expected_o
                and not self.expected_gates):
            self.mismatches.append(f"{len(self.expected_o)} o words and "
                                   f"{len(self.expected_gates)} gates never left")
        self.dut._log.info(f"{overlapped} of {len(cases)} commands offered while the unit was "
                           f"busy")
        self._stop(pending)
        for _ in range(30):
            await RisingEdge(self.dut.clk)
        if int(self.dut.busy.value) or int(self.dut.error.value):
            self.mismatches.append(f"at the end: busy {int(self.dut.busy.value)}, error "
                                   f"{int(self.dut.error.value)}")
        return self.mismatches


def _config():
    return preset(PARAMS["config"]).replace(**PARAMS.get("overrides", {}))


async def _bench(dut) -> VectorTB:
    tb = VectorTB(dut, _config(), random.Random(cocotb.RANDOM_SEED))
    await tb.start()
    return tb


@cocotb.skipif("regression" not in PARAMS, reason="no regression asked for")
@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5], backpressure=[0.0, 0.5])
async def bit_exact_against_golden_model(dut, idle, backpressure):
    """The directed and random cases of every op under idles and backpressure; every word that
    leaves equals the golden model's."""
    tb = await _bench(dut)
    options = PARAMS["regression"]
    cases = [dict(case, idle=idle, backpressure=backpressure) for case in
             regression_cases(tb.config, tb.rng, options.get("random", 10))]
    await check_cases(dut, cases, tb.run, describe, "vector unit outputs")


@cocotb.skipif("regression" not in PARAMS, reason="no regression asked for")
@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3])
async def back_to_back_commands(dut, stall):
    """Random cases of every op in a random order, each command and its words offered while the
    one before still finishes; every output in order equals the golden model's."""
    tb = await _bench(dut)
    max_width = min(tb.config.max_inputs, 24 * tb.config.vector_lanes)
    cases = [random_case(tb.config, op, tb.rng, max_width)
             for _ in range(PARAMS["regression"].get("back_to_back", 3))
             for op in tb.rng.sample(list(VectorOp), len(VectorOp))]
    mismatches = await tb.run_back_to_back(cases, stall, stall)
    for line in mismatches:
        dut._log.error(line)
    assert not mismatches, (f"{len(mismatches)} outputs of {len(cases)} back-to-back commands "
                            f"differ from the golden model: {mismatches[:3]}")


@cocotb.skipif("cases" not in PARAMS, reason="no cases given")
@cocotb.test()
async def given_cases(dut):
    """The cases of the parameters, as given (their own idle and backpressure); reports with
    their cycles to ``report_file``."""
    tb = await _bench(dut)
    await check_cases(dut, PARAMS["cases"], tb.run, describe, "vector unit outputs")


def refused_commands(config) -> list[dict]:
    """Commands `formats.vector.check` refuses: each rule broken once, the rest legal."""
    lanes, pair = config.vector_lanes, 2 * config.vector_lanes
    good = dict(op=VectorOp.ADD, rows=2, width=lanes + 1, a=Buffer.ACT0, b=Buffer.ACT1,
                dst=Buffer.ACT1, params=0, multiplier=MULT_MIN, multiplier_b=MULT_MIN, shift=8,
                head_dim=0)
    rope = dict(good, op=VectorOp.ROPE, width=2 * pair, head_dim=pair)
    bad = [dict(good, shift=SHIFT_MAX + 1), dict(good, shift=(1 << 6) - 1), dict(good, rows=0),
           dict(good, width=0), dict(good, width=config.max_inputs + 1),
           dict(good, op=VectorOp.GATE, dst=Buffer.ACT0), dict(good, dst=Buffer.GATES),
           dict(good, op=VectorOp.REQUANT, a=Buffer.ACT0), dict(good, a=Buffer.OUT),
           dict(good, b=Buffer.OUT), dict(good, op=VectorOp.MUL, b=Buffer.WEIGHT),
           dict(rope, head_dim=lanes, width=2 * lanes),            # not a multiple of 2 x lanes
           dict(rope, head_dim=0), dict(rope, width=3 * lanes),      # rows not whole heads
           dict(rope, head_dim=head_limit(config) + pair,
                width=head_limit(config) + pair)]                    # beyond the widest head
    if config.max_inputs + 1 >= 1 << vector_command(config)["width"].shape.width:
        bad.remove(dict(good, width=config.max_inputs + 1))          # the field cannot hold it
    return bad


@cocotb.skipif("refusals" not in PARAMS, reason="no refusals asked for")
@cocotb.test()
async def refused_commands_set_error(dut):
    """Each command `formats.vector.check` refuses sets ``error``, takes no input word and
    produces nothing, until the next command is accepted; a norm whose eps_q (first operand
    word) is -1 or EPS_LIMIT sets ``error`` and produces nothing. A good case runs after each."""
    tb = await _bench(dut)
    config, rng = tb.config, tb.rng
    layout = vector_command(config)
    good_case = _case(VectorOp.ADD, 2, config.vector_lanes + 1, rng.randrange(1 << 30))
    problems = []
    for command in refused_commands(config):
        assert check(config, command), f"{command} is not refused by formats.vector.check"
        words = rng.randint(1, 4)
        offered = {"a": [vector_in(config).const([1] * config.vector_lanes)] * words,
                   "b": [vector_b(config).const([1] * config.vector_lanes)] * words,
                   "operands": [operand_word(config).const({})] * words}
        sources = tb._sources(offered, 0.0)
        before = tb.words_out
        await tb.issue(layout.const(command))
        await RisingEdge(dut.clk)
        flags, taken = [], set()
        for _ in range(40):
            await ReadOnly()
            flags.append((int(dut.error.value), int(dut.busy.value)))
            taken |= {name for name in tb.INPUTS if int(getattr(dut, f"{name}__valid").value)
                      and int(getattr(dut, f"{name}__ready").value)}
            await RisingEdge(dut.clk)
        taken |= {name for name, task in zip(tb.INPUTS, sources) if task.done()}
        tb._stop(sources)
        shown = {name: (value.name if hasattr(value, "name") else value)
                 for name, value in command.items()}
        if any(error != 1 for error, _ in flags):
            problems.append(f"{shown}: error not held high")
        if any(busy for _, busy in flags):
            problems.append(f"{shown}: busy rose")
        if taken:
            problems.append(f"{shown}: took words from {', '.join(sorted(taken))}")
        if tb.words_out != before:
            problems.append(f"{shown}: {tb.words_out - before} outputs left")
        report = await tb.run(dict(good_case, seed=rng.randrange(1 << 30)))
        if report["mismatches"]:
            problems.append(f"the good command after {shown}: {report['mismatches'][:3]}")
    for op in NORMS:
        for eps_q in (-1, EPS_LIMIT, -(1 << 63)):
            streams = case_streams(config, _case(op, 2, 3 * config.vector_lanes,
                                                 rng.randrange(1 << 30)))
            streams.operands = streams.operands[:1]
            streams.operands[0]["eps_q"] = eps_q
            streams.a = streams.a[:1]
            payloads = encode(config, streams)
            before = tb.words_out
            sources = tb._sources(payloads, 0.0)
            await tb.issue(payloads["cmd"][0])
            flags = []
            for _ in range(60):
                await ReadOnly()
                flags.append((int(dut.error.value), int(dut.busy.value)))
                await RisingEdge(dut.clk)
            tb._stop(sources)
            what = f"{op.name} with eps_q={eps_q}"
            if flags[-1] != (1, 0):
                problems.append(f"{what}: (error, busy) {flags[-1]} 60 cycles on, not (1, 0)")
            if tb.words_out != before:
                problems.append(f"{what}: {tb.words_out - before} outputs left")
            await reset(dut)
            report = await tb.run(dict(good_case, op=op.name.lower(),
                                       seed=rng.randrange(1 << 30)))
            if report["mismatches"]:
                problems.append(f"the good command after {what} and a reset: "
                                f"{report['mismatches'][:3]}")
    for problem in problems:
        dut._log.error(problem)
    assert not problems, f"{len(problems)} refusals misbehaved: {problems}"
