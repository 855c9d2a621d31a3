"""The pipeline latencies the performance model is built on (`moeaccel.cycles`) are the RTL's: a row
taken by the MAC array or the epilogue leaves `LATENCY` cycles later, measured in Amaranth's
simulator with the output always ready."""

from amaranth.sim import Simulator

from moeaccel import cycles
from moeaccel.config import preset
from moeaccel.formats.epilogue import epilogue_in
from moeaccel.formats.expert_ffn import mac_in
from moeaccel.hw.epilogue import Epilogue
from moeaccel.hw.mac_array import MacArray


def measured_latency(dut, payload) -> int:
    """Cycles from the clock edge that takes `payload` on ``i`` to the one that gives it on ``o``."""
    result = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, payload)
        ctx.set(dut.i.valid, 1)
        await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        for cycle in range(1, 64):
            if ctx.get(dut.o.valid):
                result["latency"] = cycle
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result["latency"]


def test_the_mac_array_latency_is_the_models():
    config = preset("tiny")
    word = mac_in(config).const({"window": [1] * config.act_word_bytes, "weights": 0,
                                 "pattern": 0, "first": 1, "last": 1, "tag": 0})
    assert measured_latency(MacArray(config), word) == MacArray.LATENCY == cycles.MAC_ARRAY_LATENCY


def test_the_epilogue_latency_is_the_models():
    lanes = 2
    row = epilogue_in(lanes).const({"tag": 0, "lanes": [
        {"acc": 5, "apply_table": 0, "params": {"bias": 0, "multiplier": 1 << 14, "shift": 14}}
        for _ in range(lanes)]})
    assert measured_latency(Epilogue(lanes), row) == Epilogue.LATENCY == cycles.EPILOGUE_LATENCY
