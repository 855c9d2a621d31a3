"""`moeaccel.cycles.ffn_pass_cycles`, the cycle formula of one Expert-FFN pass, against the engine's
``busy_cycles`` counter: pass by pass (weight passes, SwiGLU, accumulate, drain) in RTL simulation,
and the measured benchmark figures."""

import json

import pytest

from moeaccel.config import preset
from moeaccel.compiler.plan import plan_pass
from moeaccel.cycles import ffn_pass_cycles
from moeaccel.figures import figure


def _expert_commands(config, tokens, d_model, d_ff, pattern, activation):
    """The commands of one expert's two passes, planned as `moeaccel bench expert-ffn` plans them."""
    first = plan_pass(config, tokens, d_model, d_ff, pattern, swiglu=activation == "swiglu",
                      activation=True, to_buffer=True)
    second = plan_pass(config, tokens, d_ff, d_model, pattern, src=1)
    return [first.command(), second.command()]


def _expert_cycles(config, tokens, d_model, d_ff, pattern="dense", activation="swiglu"):
    return sum(ffn_pass_cycles(config, command)
               for command in _expert_commands(config, tokens, d_model, d_ff, pattern, activation))


# Measured with `.venv/bin/python -m moeaccel bench expert-ffn --tokens T --d-model 256 --d-ff 512
# [--sparsity 2:4] --json` (pynq-z2 preset, SwiGLU expert: the gate/up pass plus the down pass),
# recorded in docs/figures.json (re-measured by tests/test_bench.py, pytest -m slow).
BENCH = [(128, 256, 512, "dense"), (128, 256, 512, "2:4"), (32, 256, 512, "dense")]


@pytest.mark.parametrize("shape", BENCH)
def test_formula_reproduces_the_benchmark_figures(shape):
    tokens, d_model, d_ff, pattern = shape
    measured = figure(f"expert-ffn T={tokens} D={d_model} F={d_ff} swiglu {pattern}")["measured"]
    assert _expert_cycles(preset("pynq-z2"), *shape) == measured["cycles"]


def _case(kind, activation, pattern, tokens, d_model, d_ff, seed):
    return dict(kind=kind, activation=activation, pattern=pattern, tokens=tokens, d_model=d_model,
                d_ff=d_ff, seed=seed, weight_idle=0.0, backpressure=0.0)


def _moe(router, activation, pattern, tokens, d_model, d_ff, experts, k, seed, shared_d_ff=0):
    return dict(kind="moe", router=router, activation=activation, pattern=pattern, tokens=tokens,
                d_model=d_model, d_ff=d_ff, experts=experts, k=k, seed=seed,
                shared_d_ff=shared_d_ff, weight_idle=0.0, backpressure=0.0)


def _check_against_rtl(config_name, cases, tmp_path):
    """Run `cases` with no weight idles and no backpressure; every pass's busy_cycles must equal
    the formula on its command, each case's sum the sum, and an expert's sum the formula on the
    passes planned as the benchmark plans them."""
    from .test_expert_ffn import run_engine

    config = preset(config_name)
    report_file = tmp_path / "report.json"
    run_engine(config_name, cases, report_file=report_file, timeout_s=600)
    reports = json.loads(report_file.read_text())
    assert len(reports) == len(cases)
    seen = set()
    for report in reports:
        for step in report["passes"]:
            command = step["command"]
            seen.add("drain" if command["drain"] else "accumulate" if command["accumulate"]
                     else "swiglu" if command["swiglu"] else "plain")
            assert step["busy_cycles"] == ffn_pass_cycles(config, command), (report["kind"], step)
        assert report["busy_cycles"] == sum(ffn_pass_cycles(config, step["command"])
                                            for step in report["passes"])
        if report["kind"] == "expert":
            assert report["busy_cycles"] == _expert_cycles(
                config, report["tokens"], report["d_model"], report["d_ff"], report["pattern"],
                report["activation"]), report
    return seen


@pytest.mark.sim
def test_pass_cycles_equal_the_rtl_tiny(tmp_path):
    cases = [
        _case("expert", "swiglu", "dense", 1, 16, 13, seed=1),     # odd d_ff, one token
        _case("expert", "swiglu", "dense", 4, 32, 24, seed=2),     # fill == compute
        _case("expert", "swiglu", "2:4", 3, 40, 21, seed=3),
        _case("expert", "gelu", "1:4", 3, 64, 30, seed=4),
        _case("expert", "relu", "4:8", 5, 24, 9, seed=5),
        _case("expert", "gelu", "dense", 9, 40, 20, seed=6),       # compute-bound
        _case("linear", "relu", "2:4", 1, 50, 13, seed=7),
        _case("swiglu", "swiglu", "1:4", 2, 40, 10, seed=8),
        _moe("softmax_topk_renorm", "swiglu", "dense", 12, 32, 48, experts=4, k=2, seed=20),
        _moe("softmax_topk", "swiglu", "2:4", 9, 40, 24, experts=6, k=2, seed=21, shared_d_ff=32),
        _moe("top1", "relu", "4:8", 1, 16, 24, experts=4, k=1, seed=22),
    ]
    assert _check_against_rtl("tiny", cases, tmp_path) == {"plain", "swiglu", "accumulate",
                                                           "drain"}


@pytest.mark.sim
def test_pass_cycles_equal_the_rtl_pynq_z2(tmp_path):
    cases = [
        _case("expert", "swiglu", "dense", 3, 64, 40, seed=9),
        _case("expert", "gelu", "2:4", 1, 96, 36, seed=10),
        _case("expert", "swiglu", "4:8", 24, 64, 24, seed=11),    # compute-bound
        _case("expert", "relu", "1:4", 2, 128, 17, seed=12),      # odd d_ff
        _moe("softmax_topk_renorm", "swiglu", "2:4", 6, 32, 40, experts=4, k=2, seed=23),
    ]
    assert _check_against_rtl("pynq-z2", cases, tmp_path) == {"plain", "swiglu", "accumulate",
                                                              "drain"}
