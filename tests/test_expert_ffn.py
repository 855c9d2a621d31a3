"""The Expert-FFN engine: cocotb regression on Verilator, bit-exact against the integer golden model,
dense and every M:N pattern, under random weight idles and output backpressure."""

import pytest

from moeaccel.config import preset
from moeaccel.hw.expert_ffn import FFNEngine
from moeaccel.sim.harness import run_cocotb


def _case(kind, activation, pattern, tokens, d_model, d_ff, seed, weight_idle=0.3,
          backpressure=0.3):
    return dict(kind=kind, activation=activation, pattern=pattern, tokens=tokens, d_model=d_model,
                d_ff=d_ff, seed=seed, weight_idle=weight_idle, backpressure=backpressure)


def run_engine(config_name: str, cases: list[dict], report_file=None, timeout_s=1200):
    config = preset(config_name)
    parameters = {"config": config_name, "cases": cases}
    if report_file is not None:
        parameters["report_file"] = str(report_file)
    return run_cocotb(FFNEngine(config), toplevel="expert_ffn",
                      test_module="moeaccel.sim.tb.expert_ffn", build_key=config_name,
                      parameters=parameters, timeout_s=timeout_s)


SMALL = [
    _case("linear", "gelu", "dense", 1, 8, 4, seed=1, weight_idle=0.0, backpressure=0.0),
    _case("linear", "relu", "2:4", 5, 50, 13, seed=2),
    _case("swiglu", "swiglu", "dense", 3, 40, 10, seed=3),
    _case("expert", "swiglu", "1:4", 7, 64, 96, seed=4),
    _case("expert", "gelu", "4:8", 4, 24, 40, seed=5),
    _case("expert", "swiglu", "2:4", 9, 33, 70, seed=6, weight_idle=0.6, backpressure=0.6),
    _case("expert", "relu", "dense", 2, 17, 9, seed=7),
]


# The largest expert the tiny configuration holds: 64 tokens, d_model 128, d_ff 256 (both activation
# buffers full, every tile of the weight banks used).
LARGEST = [_case("expert", "swiglu", "2:4", 64, 128, 256, seed=8, weight_idle=0.2,
                 backpressure=0.2)]


def _moe(router, activation, pattern, tokens, d_model, d_ff, experts, k, seed, shared_d_ff=0,
         weight_idle=0.3, backpressure=0.3):
    return dict(kind="moe", router=router, activation=activation, pattern=pattern, tokens=tokens,
                d_model=d_model, d_ff=d_ff, experts=experts, k=k, seed=seed,
                shared_d_ff=shared_d_ff, weight_idle=weight_idle, backpressure=backpressure)


@pytest.mark.sim
def test_moe_layers_through_the_engine():
    """Whole MoE layers: gate-weighted accumulation of every routed expert's rows (and a shared
    expert's) into the output rows, then the drain, bit-exact with QuantizedMoE."""
    run_engine("tiny", [
        _moe("softmax_topk_renorm", "swiglu", "dense", 12, 32, 48, experts=4, k=2, seed=20),
        _moe("softmax_topk", "swiglu", "2:4", 9, 40, 24, experts=6, k=2, seed=21, shared_d_ff=32),
        _moe("top1", "relu", "4:8", 1, 16, 24, experts=4, k=1, seed=22),
        _moe("softmax_topk_renorm", "gelu", "1:4", 5, 24, 40, experts=3, k=3, seed=23),
    ])


@pytest.mark.sim
def test_expert_ffn_small_cases():
    run_engine("tiny", SMALL)


@pytest.mark.sim
def test_expert_ffn_largest_tiny_expert():
    run_engine("tiny", LARGEST)


@pytest.mark.sim
def test_expert_ffn_pynq_z2_mixed_patterns():
    run_engine("pynq-z2", [
        _case("expert", "swiglu", "2:4", 3, 96, 160, seed=9),
        _case("linear", "gelu", "4:8", 2, 200, 24, seed=10),
        _case("expert", "relu", "1:4", 1, 64, 64, seed=11),
    ])


@pytest.mark.sim
def test_bench_reports_cycles_against_the_ideal(capsys):
    import json
    from moeaccel.cli import main
    assert main(["bench", "expert-ffn", "--tokens", "4", "--d-model", "32", "--d-ff", "48",
                 "--sparsity", "2:4", "--config", "tiny", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_exact"] is True
    assert result["macs"] == 4 * (2 * 48 * 32 + 32 * 48) // 2
    assert result["ideal_cycles"] == result["macs"] // 32
    assert result["cycles"] >= result["ideal_cycles"]
    assert result["utilization"] == pytest.approx(result["ideal_cycles"] / result["cycles"],
                                                  abs=1e-4)
