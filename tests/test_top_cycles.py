"""The performance model (`moeaccel.cycles.instruction_cycles`, the emulator's timing) against the
accelerator top in RTL: programs of one compute instruction with their data, run on the top in
Verilator without pauses on the AXI ports, the compute queue's busy cycles (`top_compute_busy_cycles`)
beside the emulator's for the same program."""

import json
import random
from pathlib import Path

import pytest

from moeaccel.config import preset
from moeaccel.formats.attention import AttentionShape
from moeaccel.formats.buffers import Buffer
from moeaccel.formats.vector import VectorOp
from moeaccel.isa import Program
from moeaccel.sim.programs import (LINEAR_WINDOW, random_attention, random_expert_loop,
                                   random_linear, random_route)
from moeaccel.sw.attention import AttentionParams

from .test_top import _case, run_top, vector_case

# The compute queue's busy cycles: within TOLERANCE of the measured, or within SLACK cycles on a
# short instruction (attention calls with K and V rows under four bus words are bound by the
# reader's rate of a row command every few cycles, which the model does not count: up to about 6
# cycles). The load and store queues' and the run's: within TRANSFER_TOLERANCE or TRANSFER_SLACK
# (the fetch unit's bursts share the R channel with the LOADs, which the model does not count).
TOLERANCE = 0.02
SLACK = 8
TRANSFER_TOLERANCE = 0.10
TRANSFER_SLACK = 16


def attention_shapes(config) -> list[AttentionShape]:
    """Attention calls as a decoder's layers make them: grouped-query and causal, heads of whole
    bus words, over several query groups."""
    word = config.axi_data_bytes
    widest = config.attention_row_words * word
    return [AttentionShape(16, 16, 4, 2, widest // 4, causal=True),
            AttentionShape(12, 40, 2, 1, widest // 2, causal=True),
            AttentionShape(9, 9, 8, 8, widest // 8),
            AttentionShape(1, 30, 4, 1, widest // 4, causal=True)]


def cycles_cases(config, count: int) -> list[dict]:
    """Programs of one compute instruction: `count` random LINEAR passes (the larger shapes of
    `random_linear`), ROUTEs and ATTENTIONs as the regression draws them, and the attention calls
    of `attention_shapes` at bus-aligned and at odd offsets."""
    rng = random.Random(7)
    cases = []
    for title, draw, options in (("LINEAR", random_linear, {"size": 4}),
                                 ("ROUTE", random_route, {}),
                                 ("ATTENTION", random_attention, {}),
                                 ("EXPERT_LOOP", random_expert_loop, {})):
        for n in range(count):
            blob, patches = draw(rng, config, LINEAR_WINDOW, bad=0, **options)
            cases.append(_case(f"{title} {n}", blob, window=LINEAR_WINDOW, fill=n,
                               patches=patches))
    word = config.axi_data_bytes
    for n, shape in enumerate(attention_shapes(config)):
        scale = 2.0 / 74
        params = AttentionParams.from_scales(scale, scale, scale, scale, shape.head_dim)
        row_q, row_kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        for offset in (0, 3):
            q = offset
            k = -(-(q + shape.seq_q * row_q) // word) * word + offset
            v = -(-(k + shape.seq_kv * row_kv) // word) * word + offset
            program = Program(config).attention(shape, params, q=q, k=k, v=v,
                                                o=LINEAR_WINDOW // 2 + offset).finish()
            cases.append(_case(f"ATTENTION shape {n} at offset {offset}", program,
                               window=LINEAR_WINDOW))
    head = 4 * config.vector_lanes
    for n, (op, rows, width, head_dim) in enumerate([
            (VectorOp.ADD, 8, 64, 0), (VectorOp.MUL, 6, 50, 0), (VectorOp.RMSNORM, 8, 64, 0),
            (VectorOp.LAYERNORM, 5, 100, 0), (VectorOp.ROPE, 8, 2 * head, head),
            (VectorOp.REQUANT, 8, 64, 0), (VectorOp.GATE, 12, 64, 0)]):
        cases.append(vector_case(config, f"VECTOR {op.name}", op, rows, width, head_dim, seed=n))
    cases.append(vector_case(config, "VECTOR ADD in place", VectorOp.ADD, 8, 64, dst=Buffer.ACT0))
    cases.append(vector_case(config, "VECTOR RMSNORM in place", VectorOp.RMSNORM, 8, 64,
                             dst=Buffer.ACT0))
    return cases


def transfer_cases(config) -> list[dict]:
    """LOADs and STOREs of ACT0 alone: rows long and short, at bus-aligned and odd offsets on
    either side, past a 4 KiB boundary."""
    cases = []
    for n, (rows, row_bytes, dram, sram) in enumerate([
            (1, 64, 0, 0), (1, 64, 3, 0), (1, 64, 0, 5), (4, 60, 2, 0), (8, 16, 0, 0),
            (16, 8, 0, 0), (1, 1000, 1, 0), (2, 4096, 0, 0), (32, 24, 5, 0)]):
        for store in (False, True):
            program = Program(config, checked=False)
            (program.store if store else program.load)(
                Buffer.ACT0, dram=256 + dram, rows=rows, row_bytes=row_bytes, sram=sram,
                dram_stride=row_bytes + 8 * (n % 3), sram_stride=-(-row_bytes // 8) * 8 + 8 * (n % 2))
            cases.append(_case(f"{'STORE' if store else 'LOAD'} {rows} x {row_bytes} at {dram}, {sram}",
                               program.finish(), window=LINEAR_WINDOW))
    return cases


@pytest.mark.sim
def test_the_cycle_model_holds_on_the_top(tmp_path):
    config = preset("tiny")
    report = tmp_path / "cycles.json"
    run_top("tiny", {"cases": cycles_cases(config, 20) + transfer_cases(config), "pause": 0,
                     "report_file": str(report)})
    rows, wrong = [], []
    for run in json.loads(report.read_text()):
        assert run["code"] == "NONE", run["name"]
        for queue in ("load", "compute", "store"):
            measured = run["counters"][f"top_{queue}_busy_cycles"]
            model = run["model_busy"][queue]
            if not measured and not model:
                continue
            rows.append(f"{run['name']:36s} {queue:8s} {measured:7d} {model:7d} "
                        f"{model - measured:+5d}")
            tolerance, slack = ((TOLERANCE, SLACK) if queue == "compute"
                                else (TRANSFER_TOLERANCE, TRANSFER_SLACK))
            if abs(model - measured) > max(tolerance * measured, slack):
                wrong.append(rows[-1])
        total = run["counters"]["top_total_cycles"]
        rows.append(f"{run['name']:36s} {'run':8s} {total:7d} {run['model_cycles']:7d} "
                    f"{run['model_cycles'] - total:+5d}")
        if abs(run["model_cycles"] - total) > max(TRANSFER_TOLERANCE * total, TRANSFER_SLACK):
            wrong.append(rows[-1])
    print("\n".join(rows))
    assert not wrong, "\n".join(wrong)
    # docs/top.md quotes the residual add's cycles, over b and over a
    runs = {run["name"]: run["counters"]["top_compute_busy_cycles"]
            for run in json.loads(report.read_text())}
    quoted = (f"an ADD of 8 rows of 64 takes {runs['VECTOR ADD']} cycles writing over `b`, "
              f"{runs['VECTOR ADD in place']} writing over `a`")
    assert quoted in " ".join((Path(__file__).parents[1] / "docs" / "top.md").read_text().split())
