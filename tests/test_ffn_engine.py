"""The Expert-FFN engine: cocotb regression on Verilator, bit-exact against the integer golden model,
dense and every M:N pattern, under random weight idles and output backpressure."""

import pytest

from moeaccel.config import preset
from moeaccel.hw.ffn_engine import FFNEngine
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
    return run_cocotb(FFNEngine(config), toplevel="ffn_engine",
                      test_module="moeaccel.sim.tb.ffn_engine", build_key=config_name,
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


@pytest.mark.sim
def test_ffn_engine_small_cases():
    run_engine("tiny", SMALL)
