"""`moeaccel bench`: a simulation that fails makes the command fail, whatever report it wrote; the
figures the docs quote agree with their record (docs/figures.json), which `moeaccel bench figures`
and the slow tests re-measure in RTL; the docs' resource tables agree with the record and with
synthesis."""

import json
import stat
from pathlib import Path

import pytest

from moeaccel.bench import (SWEEP, figure_command, figure_differences, measure_figure,
                            sweep_table)
from moeaccel.boards.estimate import TABLE_HEADER, summary, table_row
from moeaccel.cli import main
from moeaccel.figures import figure, load_figures

ROUTER_BENCH = ["bench", "router", "--tokens", "5", "--experts", "8", "--k", "2", "--mode",
                "softmax_topk_renorm", "--config", "tiny", "--json"]


def test_a_failing_cocotb_test_fails_the_bench_after_a_report(monkeypatch, capsys):
    """The testbench wrote a clean report for its case, then a later cocotb test of the module
    failed (as `run_cocotb` reports it): the command exits 1, prints the log's tail and no
    result."""
    from amaranth.hdl import Fragment
    from moeaccel.sim import harness

    def run_cocotb(component, *, parameters, log_file, **options):
        Fragment.get(component, None)                     # elaborated, as the real run does
        report = {"cycles": 400, "cycles_per_token": 80.0, "overflow": 0, "mismatches": 0}
        with open(parameters["report_file"], "w") as file:
            json.dump([report], file)
        log_file.write_text("dispatch_tables_bit_exact passed\nillegal_commands failed: "
                            "error stayed low\n")
        raise AssertionError("router: 1 of 2 cocotb tests failed")

    monkeypatch.setattr(harness, "run_cocotb", run_cocotb)
    assert main(ROUTER_BENCH) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "illegal_commands failed: error stayed low" in captured.err
    assert captured.err.rstrip().endswith("router: 1 of 2 cocotb tests failed")


@pytest.mark.sim
def test_a_simulator_failing_after_its_report_fails_the_bench(monkeypatch, tmp_path, capsys):
    """The real router testbench in Verilator runs and writes its report; then the simulator
    process exits with status 3 (a wrapper around it): the command exits 1 with the log's
    tail."""
    wrapper = tmp_path / "exit_3_after.sh"
    wrapper.write_text('#!/bin/sh\n"$@"\nexit 3\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SIM_CMD_PREFIX", str(wrapper))
    assert main(ROUTER_BENCH) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dispatch_tables_bit_exact" in captured.err            # the log's tail
    assert "return code: 3" in captured.err


# -- the docs' figures against their one record, docs/figures.json ---------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


def _prose(path: Path) -> str:
    """The file's text with emphasis removed and every run of whitespace one space."""
    return " ".join(path.read_text().replace("**", "").split())


def _grouped(n: int) -> str:
    """Thousands separated by spaces, as the docs write them: 8 696 193."""
    return f"{n:,}".replace(",", " ")


def _table_rows(path: Path, header: str) -> list[str]:
    """The data rows of each table in `path` whose header line is `header`."""
    rows, inside = [], False
    for line in path.read_text().splitlines():
        if line == header:
            inside = True
        elif inside and line.startswith("|"):
            if not line.startswith("|---"):
                rows.append(line.replace("**", ""))
        else:
            inside = False
    return rows


def _measured(name: str) -> dict:
    return figure(name)["measured"]


def _ffn(tokens, sparsity="dense", d_ff=512, activation="swiglu") -> dict:
    return _measured(f"expert-ffn T={tokens} D=256 F={d_ff} {activation} {sparsity}")


def test_expert_ffn_doc_quotes_the_recorded_figures():
    rows = []
    for tokens, d_model, d_ff, sparsity, activation in SWEEP:
        rows.append(dict(tokens=tokens, d_model=d_model, d_ff=d_ff, sparsity=sparsity,
                         activation=activation, **_ffn(tokens, sparsity, d_ff, activation)))
    table = sweep_table(rows)
    doc = DOCS / "expert_ffn.md"
    assert _table_rows(doc, table[0]) == table[2:]
    dense, sparse, one = _ffn(128), _ffn(128, "2:4"), _ffn(1)
    prose = _prose(doc)
    for quoted in (f"utilization {dense['ideal_cycles'] / dense['cycles']:.3f}",
                   f"{dense['cycles'] / sparse['cycles']:.2f}× fewer cycles, "
                   f"{sparse['weight_bytes'] / dense['weight_bytes']:.3f}× the weight bytes",
                   f"{one['cycles']} cycles ≈ {one['weight_bytes']} bytes ÷ 8 bytes a beat"):
        assert quoted in prose
    readme = _prose(README)
    assert (f"runs at {dense['ideal_cycles'] / dense['cycles']:.3f} of the ideal cycles; at 2:4 in "
            f"half the cycles with {sparse['weight_bytes'] / dense['weight_bytes']:.3f} of the "
            f"weight bytes") in readme
    assert round(dense["cycles"] / sparse["cycles"], 2) == 2.00            # "half the cycles"


def test_router_doc_quotes_the_recorded_figures():
    streamed = _measured("router T=256 E=64 k=8 softmax_topk, logits streamed")["cycles"]
    gemm = _measured("router T=256 E=64 k=8 softmax_topk, GEMM D=256")["cycles"]
    expert = _ffn(32)["cycles"]
    prose = _prose(DOCS / "router.md")
    for quoted in (f"{_grouped(gemm)} cycles, {gemm / 256:.2f} a token",
                   f"{_grouped(streamed)} cycles, {streamed / 256:.2f} a token",
                   f"One expert takes {_grouped(expert)} cycles",
                   f"64 × {_grouped(expert)} = {_grouped(64 * expert)} cycles",
                   f"{_grouped(gemm)} cycles: {100 * gemm / (64 * expert):.1f} %",
                   f"32 768 cycles against {_grouped(gemm)}"):
        assert quoted in prose


def test_attention_doc_quotes_the_recorded_figures():
    doc = DOCS / "attention.md"
    header = ("| L | cycles | ideal | utilization | onchip_bytes | dram_bytes (= formula) | "
              "bit-exact |")
    expected = []
    headline = _measured("attention L=512 H=8 D=64")
    for seq in (128, 512, 1024):
        m = _measured(f"attention L={seq} H=8 D=64")
        assert m["cycles"] == m["model_cycles"] and m["dram_bytes"] == m["dram_bytes_formula"]
        # "the same ... bytes at every L (... instantiated)"
        assert (m["onchip_bytes"], m["onchip_capacity_bytes"]) == \
            (headline["onchip_bytes"], headline["onchip_capacity_bytes"])
        expected.append(f"| {seq} | {_grouped(m['cycles'])} | {_grouped(m['ideal_cycles'])} | "
                        f"{m['ideal_cycles'] / m['cycles']:.3f} | {_grouped(m['onchip_bytes'])} | "
                        f"{_grouped(m['dram_bytes'])} | yes |")
    assert _table_rows(doc, header) == expected
    gqa = _measured("attention L=512 H=8/2 D=64 causal")
    assert gqa["cycles"] == gqa["model_cycles"] and gqa["dram_bytes"] == gqa["dram_bytes_formula"]
    prose = _prose(doc)
    for quoted in (f"{_grouped(gqa['cycles'])} cycles against an ideal of "
                   f"{_grouped(gqa['ideal_cycles'])} ({gqa['ideal_cycles'] / gqa['cycles']:.3f}), "
                   f"{_grouped(gqa['dram_bytes'])} DRAM bytes",
                   f"on-chip {_grouped(gqa['onchip_bytes'])} bytes",
                   f"the same {_grouped(headline['onchip_bytes'])} bytes at every L "
                   f"({_grouped(headline['onchip_capacity_bytes'])} bytes instantiated"):
        assert quoted in prose
    assert (f"run at {headline['ideal_cycles'] / headline['cycles']:.3f} of the ideal cycles"
            in _prose(README))


VECTOR_FIGURES = {op: f"vector {op} R=128 W=1024" + (" H=64" if op == "rope" else "")
                  for op in ("add", "mul", "requant", "rmsnorm", "layernorm", "rope", "gate")}


def test_vector_doc_quotes_the_recorded_figures():
    header = "| op | cycles | ideal | utilization | bit-exact |"
    expected = []
    for op, name in VECTOR_FIGURES.items():
        m = _measured(name)
        assert m["cycles"] == m["model_cycles"] and m["bit_exact"] is True
        expected.append(f"| {op.upper()} | {_grouped(m['cycles'])} | {_grouped(m['ideal_cycles'])} "
                        f"| {m['ideal_cycles'] / m['cycles']:.3f} | yes |")
    assert _table_rows(DOCS / "vector.md", header) == expected
    rmsnorm, add = _measured(VECTOR_FIGURES["rmsnorm"]), _measured(VECTOR_FIGURES["add"])
    assert rmsnorm["ideal_cycles"] / rmsnorm["cycles"] >= 0.85
    assert add["ideal_cycles"] / add["cycles"] >= 0.9
    assert (f"RMSNorm of 128 rows × 1 024 takes {_grouped(rmsnorm['cycles'])} cycles "
            f"({rmsnorm['ideal_cycles'] / rmsnorm['cycles']:.3f} of the ideal)" in _prose(README))


MOE_LAYER_FIGURES = ("moe-layer tiny-mixtral T=16 dense", "moe-layer tiny-mixtral T=16 4:8",
                     "moe-layer tiny-deepseek-v3 T=16 dense")
ROOFLINE_FIGURES = ("moe-layer D=256 F=512 E=8 k=2 T=16 dense pynq-z2",
                    "moe-layer D=256 F=512 E=8 k=2 T=16 2:4 pynq-z2",
                    "moe-layer D=128 F=256 E=8 k=2 T=256 dense pynq-z2")


def test_top_doc_quotes_the_recorded_roofline_figures():
    """pynq-z2's two reference layers: within 1.10 of the roof (compute ideal / 0.85 or the load
    ideal), 2:4 at most 0.65 of the dense cycles, the model within 10 %."""
    header = ("| layer | cycles | emulator's model | compute ideal | load ideal | cycles / roof | "
              "array / cycles |")
    expected = []
    for name in ROOFLINE_FIGURES:
        m = _measured(name)
        roof = max(m["compute_cycles_ideal"] / 0.85, m["load_cycles_ideal"])
        assert m["cycles"] <= 1.10 * roof and abs(m["model_cycles"] / m["cycles"] - 1) <= 0.10
        label = name.removeprefix("moe-layer ").removesuffix(" pynq-z2")
        expected.append(f"| {label} | {_grouped(m['cycles'])} | {_grouped(m['model_cycles'])} | "
                        f"{_grouped(m['compute_cycles_ideal'])} | "
                        f"{_grouped(m['load_cycles_ideal'])} | {m['cycles'] / roof:.3f} | "
                        f"{m['array_cycles'] / m['cycles']:.3f} |")
    doc = DOCS / "top.md"
    assert _table_rows(doc, header) == expected
    dense, sparse, compute = (_measured(name) for name in ROOFLINE_FIGURES)
    assert sparse["cycles"] <= 0.65 * dense["cycles"]
    prose = _prose(doc)
    for quoted in (f"streams its experts' weights at "
                   f"{dense['load_cycles_ideal'] / dense['cycles']:.3f} of the bus's rate",
                   f"takes {sparse['cycles'] / dense['cycles']:.3f}× the dense cycles",
                   f"keeps the MAC array busy {compute['array_cycles'] / compute['cycles']:.3f} "
                   f"of its cycles"):
        assert quoted in prose


def test_top_doc_quotes_the_recorded_layer_figures():
    header = ("| layer | cycles | emulator's model | compute ideal | load ideal | MAC array | router "
              "| experts run, skipped |")
    expected = []
    for name in MOE_LAYER_FIGURES:
        m = _measured(name)
        assert abs(m["model_cycles"] / m["cycles"] - 1) <= 0.10, name
        expected.append(f"| {name.removeprefix('moe-layer ')} | {_grouped(m['cycles'])} | "
                        f"{_grouped(m['model_cycles'])} | {_grouped(m['compute_cycles_ideal'])} | "
                        f"{_grouped(m['load_cycles_ideal'])} | {_grouped(m['array_cycles'])} | "
                        f"{_grouped(m['router_cycles'])} | {m['experts_run']}, "
                        f"{m['experts_skipped']} |")
    doc = DOCS / "top.md"
    assert _table_rows(doc, header) == expected
    mixtral = _measured(MOE_LAYER_FIGURES[0])
    prose = _prose(doc)
    assert (f"The model counts {_grouped(mixtral['model_cycles'])} cycles of the tiny Mixtral "
            f"layer's {_grouped(mixtral['cycles'])}") in prose
    ideal = max(mixtral["compute_cycles_ideal"], mixtral["load_cycles_ideal"])
    assert f"the layer takes {mixtral['cycles'] / ideal:.2f}× the larger of its two ideals" in prose


def test_every_recorded_figure_is_quoted_by_a_docs_check():
    """Each entry of the record is one the checks above read (none is recorded and unquoted)."""
    read = {f"expert-ffn T={t} D={d} F={f} {a} {s}" for t, d, f, s, a in SWEEP}
    read |= {"expert-ffn T=32 D=256 F=512 swiglu dense",
             "router T=256 E=64 k=8 softmax_topk, logits streamed",
             "router T=256 E=64 k=8 softmax_topk, GEMM D=256",
             "attention L=128 H=8 D=64", "attention L=512 H=8 D=64", "attention L=1024 H=8 D=64",
             "attention L=512 H=8/2 D=64 causal"}
    read |= set(VECTOR_FIGURES.values()) | set(MOE_LAYER_FIGURES) | set(ROOFLINE_FIGURES)
    assert {entry["name"] for entry in load_figures()["cycles"]} == read


def test_figure_commands_and_differences():
    entry = figure("attention L=512 H=8/2 D=64 causal")
    assert figure_command(entry) == ("moeaccel bench attention --seq 512 --heads 8 --kv-heads 2 "
                                     "--head-dim 64 --causal --config pynq-z2 --json")
    measured = dict(entry["measured"], cycles=entry["measured"]["cycles"] + 1)
    assert figure_differences(entry, entry["measured"]) == []
    assert figure_differences(entry, measured) == [
        f"cycles: measured {measured['cycles']}, recorded {entry['measured']['cycles']}"]


def test_bench_figures_fails_on_a_difference(monkeypatch, tmp_path, capsys):
    """`moeaccel bench figures` (what `make bench` runs) exits 1 when a measurement differs from
    the record, 0 when all agree; here the benchmark is replaced by one returning the record, or
    the record with one value changed."""
    from moeaccel import bench
    record = load_figures()
    record["cycles"] = [figure("router T=256 E=64 k=8 softmax_topk, GEMM D=256"),
                        figure("expert-ffn T=32 D=256 F=512 swiglu dense")]
    path = tmp_path / "figures.json"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(bench, "measure_figure", lambda entry: dict(entry["measured"]))
    assert main(["bench", "figures", "--figures", str(path)]) == 0
    assert "all 2 figures as recorded" in capsys.readouterr().out
    monkeypatch.setattr(bench, "measure_figure", lambda entry: dict(
        entry["measured"], cycles=entry["measured"]["cycles"] + (entry["bench"] == "router")))
    assert main(["bench", "figures", "--figures", str(path)]) == 1
    captured = capsys.readouterr()
    cycles = record["cycles"][0]["measured"]["cycles"]
    assert (f"router T=256 E=64 k=8 softmax_topk, GEMM D=256: DIFFERS: cycles: measured "
            f"{cycles + 1}, recorded {cycles}") in captured.out
    assert "1 of 2 figures differ" in captured.err


# The headline figures, re-measured in RTL at their shapes (pynq-z2). Minutes each.
HEADLINE = ["expert-ffn T=128 D=256 F=512 swiglu dense", "expert-ffn T=128 D=256 F=512 swiglu 2:4",
            "expert-ffn T=32 D=256 F=512 swiglu dense",
            "router T=256 E=64 k=8 softmax_topk, logits streamed",
            "router T=256 E=64 k=8 softmax_topk, GEMM D=256", "attention L=512 H=8 D=64",
            "vector rmsnorm R=128 W=1024", "vector add R=128 W=1024",
            "moe-layer tiny-mixtral T=16 dense"]


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.parametrize("name", HEADLINE)
def test_headline_figure_is_measured_in_rtl(name):
    entry = figure(name)
    result = measure_figure(entry)
    assert result["bit_exact"] is True
    assert figure_differences(entry, result) == []
    if entry["bench"] == "attention":                  # the utilization target of the design
        assert result["ideal_cycles"] / result["cycles"] >= 0.8
    if entry["bench"] == "vector":                     # the vector unit's: 0.85 norms, 0.9 the rest
        target = 0.85 if entry["args"]["op"] == "rmsnorm" else 0.9
        assert result["ideal_cycles"] / result["cycles"] >= target
        assert result["cycles"] == result["model_cycles"]


# -- the docs' resource tables against the record and against synthesis ---------------------------

def _resource_rows() -> dict:
    return {table_row(entry): entry for entry in load_figures()["resources"]}


def test_resource_tables_quote_the_recorded_synthesis():
    quoted = []
    for doc in sorted(DOCS.glob("*.md")):
        quoted += _table_rows(doc, TABLE_HEADER[0])
    assert sorted(quoted) == sorted(_resource_rows())
    dsp = {entry["block"]: summary(entry)["dsp"] for entry in load_figures()["resources"]
           if entry["config"] == "pynq-z2"}
    assert (f"the two blocks need {dsp['attention']} + {dsp['expert-ffn']} DSPs, more than the "
            f"xc7z020's 220" in _prose(DOCS / "attention.md"))
    assert dsp["attention"] + dsp["expert-ffn"] > 220
    assert (f"the PYNQ-Z2 has {220 - dsp['expert-ffn']} left beside the Expert-FFN engine"
            in _prose(DOCS / "router.md"))
    assert (f"the unit's {dsp['vector']} DSPs beside the Expert-FFN engine's {dsp['expert-ffn']} "
            f"exceed the xc7z020's 220" in _prose(DOCS / "vector.md"))
    assert dsp["vector"] + dsp["expert-ffn"] > 220
    bram = {entry["config"]: summary(entry)["bram36"] for entry in load_figures()["resources"]
            if entry["block"] == "buffers"}
    assert (f"On pynq-z2 the buffers take {bram['pynq-z2']} RAMB36, more than the xc7z020's 140"
            in _prose(DOCS / "top.md"))
    assert bram["pynq-z2"] > 140
    tiny = {entry["block"]: summary(entry)["dsp"] for entry in load_figures()["resources"]
            if entry["config"] == "tiny"}
    assert (f"The whole tiny top takes {tiny['top']} DSP slices: its MAC array is "
            f"{tiny['mac-array']} of them" in _prose(DOCS / "top.md"))


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(_resource_rows()), ids=lambda row: "-".join(
    part.strip() for part in row.split("|")[1:3]))
def test_resource_table_row_is_what_synthesis_gives(row, capsys):
    """Runs the command that makes the row: from 12 s to 2.5 minutes of synthesis (CPU time), 10
    minutes for the zcu104 MAC array."""
    from moeaccel.boards.estimate import main as estimate
    entry = _resource_rows()[row]
    assert estimate(["--config", entry["config"], "--block", entry["block"], "--row"]) == 0
    assert capsys.readouterr().out.strip() == row
