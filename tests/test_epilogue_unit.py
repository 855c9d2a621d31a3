"""Fast check of the epilogue in Amaranth's own simulator (the cocotb regression is the record)."""

import random

import torch
from amaranth.sim import Simulator

from moeaccel.hw.epilogue import Epilogue
from moeaccel.hw.layouts import epilogue_in
from moeaccel.sw import numerics as nx


def test_epilogue_matches_golden_model_with_stalls():
    lanes, rng = 2, random.Random(7)
    dut = Epilogue(lanes)
    layout = epilogue_in(lanes)
    table = nx.activation_table("gelu", 0.04, 0.03)
    rows = [{"tag": 0, "lanes": [
        {"acc": rng.randint(-(1 << 20), 1 << 20), "apply_table": rng.getrandbits(1),
         "params": {"bias": rng.randint(-999, 999), "multiplier": rng.randint(nx.MULT_MIN, nx.MULT_MAX),
                    "shift": rng.randint(24, 30)}} for _ in range(lanes)]}
        for _ in range(40)]
    expected = [[int(nx.epilogue(lane["acc"], lane["params"]["bias"], lane["params"]["multiplier"],
                                 lane["params"]["shift"], table if lane["apply_table"] else None))
                 for lane in row["lanes"]] for row in rows]
    received = []

    async def load_table_then_send(ctx):
        for index, value in enumerate(table.tolist()):
            ctx.set(dut.table_write.valid, 1)
            ctx.set(dut.table_write.payload, {"index": index, "value": value})
            await ctx.tick()
        ctx.set(dut.table_write.valid, 0)
        for row in rows:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, layout.const(row))
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def receive(ctx):
        while len(received) < len(rows):
            ready = rng.random() < 0.6
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                received.append([payload.values[n] for n in range(lanes)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(load_table_then_send)
    sim.add_testbench(receive)
    sim.run_until(1e-4)
    assert received == expected
