"""Fast check of the epilogue in Amaranth's own simulator (the cocotb regression is the record)."""

import random

import torch

from moeaccel.formats.epilogue import epilogue_in
from moeaccel.hw.epilogue import Epilogue
from moeaccel.sw import numerics as nx

from . import stream_sim


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
    async def load_table_then_send(ctx):
        await stream_sim.send(ctx, dut.table_write, ({"index": index, "value": value}
                                                     for index, value in enumerate(table.tolist())),
                              rng, idle=0.0)
        await stream_sim.send(ctx, dut.i, (layout.const(row) for row in rows), rng, idle=0.3)

    received = [[payload.values[n] for n in range(lanes)] for payload in
                stream_sim.run(dut, load_table_then_send, dut.o, len(rows), rng, backpressure=0.4)]
    assert received == expected
