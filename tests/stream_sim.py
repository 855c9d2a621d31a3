"""Amaranth-simulator drivers for `lib.stream` ports, for the fast unit checks (the cocotb
regressions are the record)."""

import random

from amaranth.sim import Simulator


async def send(ctx, port, payloads, rng: random.Random, idle: float) -> None:
    """Drive `payloads` into stream `port`, idling between transfers with probability `idle`."""
    for payload in payloads:
        while rng.random() < idle:
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, payload)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)


def run(dut, sender, sink, count: int, rng: random.Random, backpressure: float) -> list:
    """Simulate `dut` with the `sender` testbench and a sink on `sink` (holding ready low with
    probability `backpressure`); return the first `count` payloads that leave."""
    received = []

    async def receive(ctx):
        while len(received) < count:
            ready = rng.random() >= backpressure
            ctx.set(sink.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(sink.valid, sink.payload)
            if valid and ready:
                received.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(sender)
    sim.add_testbench(receive)
    sim.run_until(1e-4)
    return received
