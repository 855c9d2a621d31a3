"""The vector operations (`sw.vector`): the integer references against float PyTorch, each within
its stated bound in output LSBs, and the VECTOR instruction on the emulator reading its operands
in the formats `moeaccel.isa` defines."""

import re

import numpy as np
import pytest
import torch

from moeaccel import isa
from moeaccel.config import preset
from moeaccel.formats import records
from moeaccel.formats.buffers import act_row_bytes, out_row_bytes
from moeaccel.formats.router import TOKEN_GATE
from moeaccel.host.emulator import Emulator
from moeaccel.isa import Buffer, ErrorCode, Program, ProgramError, VectorOp
from moeaccel.sw import numerics as nx
from moeaccel.sw import vector as sv
from moeaccel.sw.quantized import quantize_tensor

CONFIG = preset("tiny")

# Stated bounds (|integer - float| in output LSBs, the float result clamped to the int8 range).
# Each is the final rounding's 0.5 plus the measured error of the integer parameters, rounded up.
BOUND_LSB = {"rmsnorm": 0.51, "layernorm": 0.51, "rope": 0.52, "add": 0.51, "mul": 0.51,
             "requant": 0.51}
# GATE gives a Q15 gate: |integer - float| in Q15 LSBs against the sigmoid of the de-quantised int8
# inputs and weights. The Q8 logit's rounding (half of 1/256) at the sigmoid's steepest slope (1/4)
# is 16, `sigmoid_fixed` adds at most 2.5 (docs/numerics.md): 19 rounded up.
GATE_BOUND_Q15 = 19


def _lsb_error(y_q, y_float, out_scale):
    clamped = torch.clamp(y_float / out_scale, -128, 127)
    return float((y_q.to(torch.float64) - clamped).abs().max())


@pytest.mark.parametrize("width", [8, 64, 256])
@pytest.mark.parametrize("spread", [0.05, 1.0, 20.0])
def test_norms_are_within_their_bound(width, spread):
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(64, width, generator=generator, dtype=torch.float64) * spread
    x[0] = 0                                                       # a row of zeros
    x[1] = spread                                                  # a constant row
    in_scale = float(x.abs().max()) / 127
    x_q = quantize_tensor(x, in_scale)
    x = x_q.to(torch.float64) * in_scale                           # the inputs the integers see
    weight = 1 + 0.3 * torch.randn(width, generator=generator, dtype=torch.float64)
    bias = 0.1 * torch.randn(width, generator=generator, dtype=torch.float64)
    eps = 1e-5
    for name, centred, reference in (
            ("rmsnorm", False, sv.rmsnorm_float(x, weight, eps)),
            ("layernorm", True, sv.layernorm_float(x, weight, bias, eps))):
        out_scale = float(reference.abs().max()) / 127
        ops = sv.norm_operands(weight, bias if centred else None, eps, in_scale, out_scale,
                               centred)
        norm = sv.layernorm if centred else sv.rmsnorm
        y_q = norm(x_q, ops["weight"], ops["bias"], ops["eps_q"], ops["multiplier"],
                   ops["shift"])
        error = _lsb_error(y_q, reference, out_scale)
        assert error <= BOUND_LSB[name], f"{name}: {error:.3f} LSB"


def test_rope_and_add_are_within_their_bound():
    generator = torch.Generator().manual_seed(0)
    heads, head_dim, rows = 4, 16, 40
    x = torch.randn(rows, heads * head_dim, generator=generator, dtype=torch.float64)
    scale = float(x.abs().max()) / 127
    x_q = quantize_tensor(x, scale)
    positions = torch.arange(rows) * 37 + 5
    y_q = sv.rope(x_q, sv.rope_table(positions, head_dim), head_dim)
    reference = sv.rope_float(x_q.to(torch.float64) * scale, positions, head_dim)
    assert _lsb_error(y_q, reference, scale) <= BOUND_LSB["rope"]
    b = torch.randn(rows, 64, generator=generator, dtype=torch.float64) * 3
    b_scale = float(b.abs().max()) / 127
    b_q = quantize_tensor(b, b_scale)
    a_q = x_q[:, :64]
    total = a_q * scale + b_q * b_scale
    out_scale = float(total.abs().max()) / 127
    ma, mb, shift = sv.add_operands(scale, b_scale, out_scale)
    assert _lsb_error(sv.add(a_q, b_q, ma, mb, shift), total, out_scale) <= BOUND_LSB["add"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spread_a, spread_b", [(1.0, 1.0), (0.05, 3.0), (20.0, 0.2)])
def test_multiply_requant_and_gate_are_within_their_bound(seed, spread_a, spread_b):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, spread):
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * spread

    a, b = randn(64, 96, spread=spread_a), randn(64, 96, spread=spread_b)
    a_scale, b_scale = float(a.abs().max()) / 127, float(b.abs().max()) / 127
    a_q, b_q = quantize_tensor(a, a_scale), quantize_tensor(b, b_scale)
    product = (a_q * a_scale) * (b_q * b_scale)
    for reach in (1.0, 0.5):                    # 0.5: the largest products saturate
        out_scale = float(product.abs().max()) / 127 * reach
        multiplier, shift = nx.quantize_multiplier(a_scale * b_scale / out_scale)
        y_q = sv.multiply(a_q, b_q, int(multiplier), int(shift))
        assert _lsb_error(y_q, product, out_scale) <= BOUND_LSB["mul"]

    acc = torch.round(randn(64, 96, spread=spread_a * 2 ** 20)).to(torch.int64)
    acc_scale = 1e-4 * spread_b
    total = acc.to(torch.float64) * acc_scale
    out_scale = float(total.abs().max()) / 127
    multiplier, shift = nx.quantize_multiplier(acc_scale / out_scale)
    y_q = sv.requant(acc, int(multiplier), int(shift))
    assert _lsb_error(y_q, total, out_scale) <= BOUND_LSB["requant"]

    x = randn(64, 96, spread=spread_a)
    weight = randn(96, spread=0.3 * spread_b / spread_a ** 0.5)        # logits of up to ~9
    x_scale = float(x.abs().max()) / 127
    x_q = quantize_tensor(x, x_scale)
    ops = sv.gate_operands(weight, x_scale)
    gate = sv.sigmoid_gate(x_q, ops["weight"], ops["multiplier"], ops["shift"])
    weight_scale = float(weight.abs().max()) / 127
    logits = (x_q * x_scale) @ (ops["weight"] * weight_scale)
    error = float((gate.to(torch.float64) - torch.sigmoid(logits) * 2 ** 15).abs().max())
    assert error <= GATE_BOUND_Q15, f"gate: {error:.2f} Q15 LSB"


def test_rsqrt_is_close_for_every_magnitude():
    s = torch.tensor([1, 2, 3, 1000, 2 ** 30, 2 ** 31 + 5, 2 ** 40 + 12345, 2 ** 55])
    inv, k = sv.rsqrt_fixed(s)
    approx = inv.to(torch.float64) / torch.pow(2.0, k.to(torch.float64))
    exact = 1 / torch.sqrt(s.to(torch.float64))
    assert float(((approx - exact) / exact).abs().max()) < 2 ** -14
    assert sv.rsqrt_fixed(torch.tensor([0]))[0].item() == 0


def _emulate(op, a, params=b"", b=None, **fields):
    rows, width = a.shape
    stride = act_row_bytes(CONFIG, width)
    emulator = Emulator(CONFIG, 1 << 16)
    emulator.dram[4096:4096 + len(params)] = params
    for buffer, values in ((Buffer.ACT0, a), (Buffer.ACT1, b)):
        if values is not None:
            for r in range(rows):
                emulator.buffers[buffer][r * stride:r * stride + width] = \
                    values[r].to(torch.int8).numpy().tobytes()
    program = Program(CONFIG).vector(op, rows=rows, width=width, a=Buffer.ACT0, b=Buffer.ACT1,
                                     dst=fields.pop("dst", Buffer.ACT1), params=4096, **fields)
    result = emulator.run(program.finish().encode())
    return emulator, result, stride


def _act(emulator, buffer, rows, width, stride):
    raw = np.frombuffer(bytes(emulator.buffers[buffer]), dtype=np.int8)
    return torch.tensor(np.stack([raw[r * stride:r * stride + width] for r in range(rows)]),
                        dtype=torch.int64)


def test_vector_instructions_read_their_operands_in_the_isa_formats():
    generator = torch.Generator().manual_seed(9)
    a = torch.randint(-128, 128, (5, 24), generator=generator)
    b = torch.randint(-128, 128, (5, 24), generator=generator)
    weight = torch.randint(-30000, 30000, (24,), generator=generator)
    bias = torch.randint(-5000, 5000, (24,), generator=generator)
    params = (np.array([77], "<i8").tobytes() + weight.numpy().astype("<i2").tobytes()
              + bias.numpy().astype("<i4").tobytes())
    cases = [
        (VectorOp.ADD, b"", dict(multiplier=20000, multiplier_b=17000, shift=15),
         sv.add(a, b, 20000, 17000, 15)),
        (VectorOp.MUL, b"", dict(multiplier=25000, shift=22), sv.multiply(a, b, 25000, 22)),
        (VectorOp.RMSNORM, params, dict(multiplier=21000, shift=36),
         sv.rmsnorm(a, weight, bias, 77, 21000, 36)),
        (VectorOp.LAYERNORM, params, dict(multiplier=21000, shift=36),
         sv.layernorm(a, weight, bias, 77, 21000, 36)),
    ]
    table = sv.rope_table(torch.arange(5) + 3, 8)
    cases.append((VectorOp.ROPE, table.numpy().astype("<i2").tobytes(), dict(head_dim=8),
                  sv.rope(a, table, 8)))
    for op, operand_bytes, fields, expected in cases:
        emulator, result, stride = _emulate(op, a, operand_bytes, b, dst=Buffer.ACT0, **fields)
        assert result.ok, result.message
        assert torch.equal(_act(emulator, Buffer.ACT0, 5, 24, stride), expected), op.name
    gate_weight = torch.randint(-128, 128, (24,), generator=generator)
    emulator, result, _ = _emulate(VectorOp.GATE, a, gate_weight.to(torch.int8).numpy().tobytes(),
                                   dst=Buffer.GATES, multiplier=30000, shift=20)
    entries = np.frombuffer(bytes(emulator.buffers[Buffer.GATES]),
                            dtype=records.dtype(TOKEN_GATE.dram), count=5)
    assert result.ok and list(entries["token"]) == list(range(5))
    assert list(entries["gate"]) == sv.sigmoid_gate(a, gate_weight, 30000, 20).tolist()


def test_requant_reads_the_output_accumulator():
    acc = torch.randint(-(1 << 20), 1 << 20, (3, 12))
    emulator = Emulator(CONFIG, 4096)
    stride = out_row_bytes(CONFIG, 12)
    for r in range(3):
        emulator.buffers[Buffer.OUT][r * stride:r * stride + 48] = \
            acc[r].numpy().astype("<i4").tobytes()
    program = Program(CONFIG).vector(VectorOp.REQUANT, rows=3, width=12, a=Buffer.OUT,
                                     dst=Buffer.ACT1, multiplier=19000, shift=27).finish()
    assert emulator.run(program.encode()).ok
    got = _act(emulator, Buffer.ACT1, 3, 12, act_row_bytes(CONFIG, 12))
    assert torch.equal(got, nx.requantize(acc, 19000, 27))


@pytest.mark.parametrize("op, fields, message", [
    (VectorOp.REQUANT, dict(a=Buffer.ACT0, dst=Buffer.ACT1), "reads a from OUT"),
    (VectorOp.GATE, dict(a=Buffer.ACT0, dst=Buffer.ACT1), "writes GATES"),
    (VectorOp.ROPE, dict(a=Buffer.ACT0, dst=Buffer.ACT1, head_dim=5),
     "head_dim=5, a multiple of 8 (2 x vector_lanes)"),
    (VectorOp.ROPE, dict(a=Buffer.ACT0, dst=Buffer.ACT1, width=12, head_dim=8),
     "rows of 12 are not whole heads"),
    (VectorOp.GATE, dict(a=Buffer.ACT0, dst=Buffer.GATES, rows=65), "GATE: rows=65 is beyond max_tokens=64"),
    (VectorOp.ADD, dict(a=Buffer.ACT0, dst=Buffer.ACT1, width=0), "width=0 (1 .. 256)"),
])
def test_bad_vector_fields_are_refused(op, fields, message):
    """By the emulator (BAD_FIELD) and by the Program builder, with the same reason."""
    fields = {"rows": 2, "width": 16, **fields}
    program = Program(CONFIG, checked=False).vector(op, **fields).finish()
    result = Emulator(CONFIG, 4096).run(program.encode())
    assert result.status is ErrorCode.BAD_FIELD and message in result.message
    with pytest.raises(ProgramError, match=re.escape(message)):
        Program(CONFIG).vector(op, **fields)


@pytest.mark.parametrize("eps_q", [-1, 1 << 62])
def test_a_norm_with_eps_outside_its_range_is_refused(eps_q):
    """The sum of squares plus eps_q must stay below 2**63: the emulator stops, naming eps_q, as the
    vector unit sets ``error`` (`tests/test_vector_unit_rtl.py`)."""
    a = torch.zeros(2, 16, dtype=torch.int64)
    params = (np.array([eps_q], "<i8").tobytes() + np.zeros(16, "<i2").tobytes()
              + np.zeros(16, "<i4").tobytes())
    _, result, _ = _emulate(VectorOp.RMSNORM, a, params, multiplier=20000, shift=30)
    assert result.status is ErrorCode.BAD_FIELD and f"eps_q={eps_q}" in result.message


def test_docs_state_the_tested_bounds():
    """docs/numerics.md's table of the vector operations states the bounds asserted here."""
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "numerics.md").read_text()
    for op, key in (("ADD", "add"), ("MUL", "mul"), ("REQUANT", "requant"),
                    ("RMSNORM", "rmsnorm"), ("LAYERNORM", "layernorm"), ("ROPE", "rope")):
        (row,) = [line for line in doc.splitlines() if line.startswith(f"| {op} ")]
        assert f"| ≤ {BOUND_LSB[key]} LSB |" in row, row
    (row,) = [line for line in doc.splitlines() if line.startswith("| GATE ")]
    assert f"| ≤ {GATE_BOUND_Q15} LSB of Q15 |" in row, row
