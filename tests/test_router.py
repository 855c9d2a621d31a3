"""The router: cocotb regression on Verilator, dispatch tables bit-exact against the golden model."""

import pytest

from moeaccel.config import preset
from moeaccel.hw.router import Router
from moeaccel.sim.harness import run_cocotb

MODES = ["softmax_topk_renorm", "softmax_topk", "top1", "sigmoid_bias"]


def _case(mode, experts, k, tokens, logits="random", seed=0, groups=1, topk_groups=1, idle=0.3,
          d_model=0):
    return dict(mode=mode, experts=experts, k=k, tokens=tokens, logits=logits, seed=seed,
                groups=groups, topk_groups=topk_groups, idle=idle, d_model=d_model)


def run_router(config_name, cases, overrides=None, report_file=None, timeout_s=1200):
    config = preset(config_name).replace(**(overrides or {}))
    parameters = {"config": config_name, "overrides": overrides or {}, "cases": cases}
    if report_file is not None:
        parameters["report_file"] = str(report_file)
    key = config_name + "".join(f"_{name}{value}" for name, value in sorted((overrides or {}).items()))
    return run_cocotb(Router(config), toplevel="router", test_module="moeaccel.sim.tb.router",
                      build_key=key, parameters=parameters, timeout_s=timeout_s)


@pytest.mark.sim
def test_router_every_mode_and_edge_case():
    cases = []
    for n, mode in enumerate(MODES):
        k = 1 if mode == "top1" else 2
        cases += [
            _case(mode, 8, k, 12, "random", seed=10 + n),
            _case(mode, 8, k, 9, "ties", seed=20 + n),
            _case(mode, 6, k, 7, "one_expert", seed=30 + n),
            _case(mode, 5, k, 10, "every_expert", seed=40 + n),
            _case(mode, 7, k, 1, "random", seed=50 + n, idle=0.0),
        ]
        if mode != "top1":
            cases.append(_case(mode, 5, 5, 4, "random", seed=60 + n))         # k = E
            cases.append(_case(mode, 64, 8, 6, "random", seed=70 + n))        # OLMoE scale
    cases.append(_case("sigmoid_bias", 16, 4, 8, "random", seed=80, groups=4, topk_groups=2))
    cases.append(_case("sigmoid_bias", 64, 8, 4, "ties", seed=81, groups=8, topk_groups=4))
    run_router("tiny", cases)


@pytest.mark.sim
def test_router_computes_logits_with_its_gemm():
    run_router("tiny", [
        _case("softmax_topk_renorm", 8, 2, 6, seed=100, d_model=37),
        _case("softmax_topk", 64, 8, 3, seed=101, d_model=128),             # widest token
        _case("top1", 4, 1, 5, seed=102, d_model=8),
        _case("sigmoid_bias", 16, 4, 4, seed=103, d_model=24, groups=4, topk_groups=2),
        _case("softmax_topk", 6, 3, 4, "ties", seed=104, d_model=16),
    ])


@pytest.mark.sim
def test_router_counts_overflow_of_full_queues():
    run_router("tiny", [_case("softmax_topk", 4, 2, 20, "one_expert", seed=90),
                        _case("top1", 3, 1, 17, "random", seed=91)],
               overrides={"expert_capacity": 5})


@pytest.mark.sim
def test_bench_router_reports_cycles(capsys):
    import json
    from moeaccel.cli import main
    assert main(["bench", "router", "--tokens", "5", "--experts", "8", "--k", "2", "--mode",
                 "softmax_topk_renorm", "--config", "tiny", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_exact"] is True and result["overflow"] == 0
    # load 8, select 8 + 1, sum 2, divide 1 + 47, gates 2 + 1 cycles a token, plus the clear
    assert 5 * (8 + 9 + 2 + 48 + 3) <= result["cycles"] <= 5 * (8 + 9 + 2 + 48 + 3) + 8 + 10
    assert result["cycles_per_token"] == pytest.approx(result["cycles"] / 5, abs=0.01)


def test_bench_router_refuses_what_the_configuration_cannot_hold(capsys):
    from moeaccel.cli import main
    assert main(["bench", "router", "--tokens", "5", "--experts", "300", "--k", "2", "--mode",
                 "softmax_topk", "--config", "tiny"]) == 2
    assert "experts=300 exceeds the tiny configuration's limit of 64" in capsys.readouterr().err


@pytest.mark.sim
def test_router_cycles_equal_the_cycle_model(tmp_path):
    """`moeaccel.cycles.router_cycles` (the emulator's ROUTE cycles) against the RTL, every mode, logits
    streamed and computed, groups."""
    import json
    from moeaccel.formats.router import RouterMode
    from moeaccel.cycles import router_cycles
    cases = [_case("softmax_topk_renorm", 8, 2, 12, seed=1, idle=0.0),
             _case("softmax_topk", 64, 8, 6, seed=2, idle=0.0),
             _case("top1", 7, 1, 5, seed=3, idle=0.0),
             _case("sigmoid_bias", 16, 4, 8, seed=4, groups=4, topk_groups=2, idle=0.0),
             _case("softmax_topk", 6, 3, 4, seed=6, d_model=16, idle=0.0),
             _case("sigmoid_bias", 16, 4, 4, seed=8, d_model=24, groups=4, topk_groups=2, idle=0.0)]
    report_file = tmp_path / "report.json"
    run_router("tiny", cases, report_file=report_file)
    lanes = preset("tiny").router_lanes
    for report in json.loads(report_file.read_text()):
        command = dict(tokens=report["tokens"], experts=report["experts"], k=report["k"],
                       mode=RouterMode[report["mode"].upper()], groups=report["groups"],
                       compute=bool(report["d_model"]), chunks=-(-report["d_model"] // lanes))
        assert report["cycles"] == router_cycles(command), report
