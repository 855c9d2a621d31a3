"""`hw.loops.LoopNest` in Amaranth's simulator: the odometer order, the last/wraps/done conditions,
the three ends, restart; and the combinational loop that makes a simulation hang, caught by a time
bound."""

import gc
import itertools
import random
import signal
from contextlib import contextmanager

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from moeaccel.hw.loops import Loop, LoopNest


@contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in the code under the block after `seconds` of wall time: a simulation
    that never settles (a combinational loop) then fails instead of hanging the test run."""
    def expire(signum, frame):
        raise TimeoutError(f"the simulation did not finish within {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def nest_design(counts, at_end):
    """Counters for `counts` (outermost first), held counts, a step input and a restart input."""
    m = Module()
    counters = [Signal(range(8), name=f"counter{n}") for n in range(len(counts))]
    limits = [Signal(range(8), name=f"count{n}", init=count) for n, count in enumerate(counts)]
    nest = LoopNest(*(Loop(c, n) for c, n in zip(counters, limits)), at_end=at_end)
    enable, restart = Signal(), Signal()
    nest.step(m, enable)
    with m.If(restart):
        nest.restart(m)
    return m, nest, counters, enable, restart


def simulate(m, testbench, seconds=20.0):
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    with deadline(seconds):
        sim.run()


@pytest.mark.parametrize("at_end", ["wrap", "hold", "count"])
def test_nest_steps_like_an_odometer_under_a_random_enable(at_end):
    counts = (2, 3, 4)
    m, nest, counters, enable, restart = nest_design(counts, at_end)
    rng = random.Random(at_end)
    expected = list(itertools.product(*(range(n) for n in counts)))
    seen, flags, after = [], [], {}

    async def testbench(ctx):
        steps = 0
        while steps < len(expected):
            go = rng.random() < 0.6
            ctx.set(enable, go)
            values = tuple(ctx.get(c) for c in counters)
            flags.append((values, ctx.get(nest.last(counters[2])), ctx.get(nest.wraps(counters[1])),
                          ctx.get(nest.done)))
            if go:
                seen.append(values)
                steps += 1
            await ctx.tick()
        ctx.set(enable, 0)
        after["end"] = tuple(ctx.get(c) for c in counters)
        ctx.set(restart, 1)
        await ctx.tick()
        ctx.set(restart, 0)
        after["restart"] = tuple(ctx.get(c) for c in counters)

    simulate(m, testbench)
    assert seen == expected
    for (outer, middle, inner), last, wraps, done in flags:
        assert last == (inner == counts[2] - 1)
        assert wraps == (last and middle == counts[1] - 1)
        assert done == (wraps and outer == counts[0] - 1)
    assert after["end"] == {"wrap": (0, 0, 0), "hold": (1, 0, 0), "count": (2, 0, 0)}[at_end]
    assert after["restart"] == (0, 0, 0)


def test_an_enable_may_use_done_it_stops_on_the_last_iteration():
    """``enable = ~done``: legal, since `done` reads only the counters' registers."""
    m, nest, counters, enable, restart = nest_design((3, 5), "hold")
    m.d.comb += enable.eq(~nest.done)
    result = {}

    async def testbench(ctx):
        await ctx.tick().repeat(40)
        result["counters"] = tuple(ctx.get(c) for c in counters)
        result["done"] = ctx.get(nest.done)

    simulate(m, testbench)
    assert result == {"counters": (2, 4), "done": 1}


# the abandoned simulation's testbench coroutine complains when it is collected, suspended
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_count_that_depends_on_the_enable_hangs_the_simulator():
    """What the docstring forbids: a count computed from the step's enable, the enable from `done`.
    On the last iteration `done` decides the enable, which decides the count, which undoes `done`:
    the combinational logic has no fixed point and the simulator iterates forever. The time bound
    turns that into a failure."""
    m = Module()
    counter = Signal(range(8))
    enable = Signal()
    nest = LoopNest(Loop(counter, 2 + enable), at_end="hold")
    m.d.comb += enable.eq(~nest.done)
    nest.step(m, enable)

    async def testbench(ctx):
        await ctx.tick().repeat(10)

    with pytest.raises(TimeoutError, match=r"^the simulation did not finish within 2\.0 s$") as hung:
        simulate(m, testbench, seconds=2.0)
    del hung
    gc.collect()            # the abandoned simulation goes now, under this test's warning filter


def test_nest_refuses_what_it_cannot_do():
    counter = Signal(range(4))
    with pytest.raises(ValueError, match=r"^a LoopNest steps in a clocked domain, not 'comb' "):
        LoopNest(Loop(counter, 4), domain="comb")
    with pytest.raises(ValueError, match=r"^at_end must be one of wrap, hold, count, not 'stop'$"):
        LoopNest(Loop(counter, 4), at_end="stop")
    with pytest.raises(ValueError, match=r"^counter counter appears twice in the nest$"):
        LoopNest(Loop(counter, 4), Loop(counter, 2))
    with pytest.raises(ValueError, match=r"^a LoopNest needs at least one Loop$"):
        LoopNest()
    with pytest.raises(TypeError, match=r"^a loop counter must be a Signal "):
        Loop(counter + 1, 4)
    with pytest.raises(ValueError, match=r"^a loop count must be at least 1, not 0$"):
        Loop(counter, 0)
    with pytest.raises(ValueError, match=r"^counter counter \(2 bits\) cannot reach the last value "
                                         r"4 of its loop$"):
        Loop(counter, 5)
    other = Signal(range(4))
    with pytest.raises(ValueError, match=r"^\(sig other\) is not a counter of this nest$"):
        LoopNest(Loop(counter, 4)).last(other)
