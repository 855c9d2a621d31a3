"""Nested loop counters for the datapaths' sequencing (the engine's tile/token/chunk issue, the
router's expert/chunk scans, attention's key-head/word/query-head walk): the counters, their "last"
conditions, and a step that advances them like an odometer.
"""

from amaranth.hdl import Signal, Value

__all__ = ["Loop", "LoopNest", "AT_END"]

AT_END = ("wrap", "hold", "count")


class Loop:
    """One loop of a nest: its `counter` (a register that only the nest assigns) runs
    ``0 .. count - 1``; `count` is a constant or a value held in registers for the loop's
    duration (a command field)."""

    def __init__(self, counter: Signal, count):
        if not isinstance(counter, Signal):
            raise TypeError(f"a loop counter must be a Signal (a register the nest assigns), not "
                            f"{counter!r}")
        if isinstance(count, int):
            if count < 1:
                raise ValueError(f"a loop count must be at least 1, not {count}")
            if (count - 1).bit_length() > len(counter) - counter.shape().signed:
                raise ValueError(f"counter {counter.name} ({len(counter)} bits) cannot reach the "
                                 f"last value {count - 1} of its loop")
        else:
            Value.cast(count)
        self.counter, self.count = counter, count


class LoopNest:
    """Nested loops, outermost first, as counters in a clocked domain.

    A step advances the innermost counter; a counter at its last value returns to 0 and carries
    into the loop around it. When every counter is at its last value, the outermost `at_end`:
    ``"wrap"`` returns to 0, ``"hold"`` keeps its last value, ``"count"`` counts on past it (the
    caller then restarts the nest, or reads how far it got).

    `last`, `wraps` and `done` are functions of the counters' registers and the counts only, never
    of the step's enable, so an enable may use them (``ready = ~nest.done``) without forming a
    loop. Never step a nest in the ``comb`` domain or compute a count from anything that depends
    on the step's enable: a counter would then decide its own `last` within the cycle, a
    combinational loop on which the Amaranth simulator iterates without end (the simulation hangs
    instead of failing; with a count that depends on the enable, only once the loop reaches its
    last iteration, so short runs pass).

    Parameters
    ----------
    *loops : `Loop`, outermost first
    at_end : one of `AT_END`
    domain : the clocked domain the counters are assigned in (``"sync"``)
    """

    def __init__(self, *loops: Loop, at_end: str = "wrap", domain: str = "sync"):
        if not loops:
            raise ValueError("a LoopNest needs at least one Loop")
        for loop in loops:
            if not isinstance(loop, Loop):
                raise TypeError(f"LoopNest takes Loop objects, not {loop!r}")
        counters = [loop.counter for loop in loops]
        for n, counter in enumerate(counters):
            if any(counter is other for other in counters[:n]):
                raise ValueError(f"counter {counter.name} appears twice in the nest")
        if at_end not in AT_END:
            raise ValueError(f"at_end must be one of {', '.join(AT_END)}, not {at_end!r}")
        if not isinstance(domain, str) or domain == "comb":
            raise ValueError(f"a LoopNest steps in a clocked domain, not {domain!r} (a counter "
                             f"assigned combinationally from itself never settles)")
        self.loops, self.at_end, self.domain = loops, at_end, domain

    @property
    def counters(self) -> tuple:
        """The counters, outermost first."""
        return tuple(loop.counter for loop in self.loops)

    def _level(self, counter) -> int:
        for level, loop in enumerate(self.loops):
            if loop.counter is counter:
                return level
        raise ValueError(f"{counter!r} is not a counter of this nest")

    def first(self, counter) -> Value:
        """`counter` is at 0."""
        return self.loops[self._level(counter)].counter == 0

    def last(self, counter) -> Value:
        """`counter` is at its loop's last value, ``count - 1``."""
        loop = self.loops[self._level(counter)]
        return loop.counter == loop.count - 1

    def wraps(self, counter) -> Value:
        """`counter` and every loop inside it are at their last values: a step now completes the
        current iteration of the loop around `counter` (all of the nest for the outermost)."""
        level = self._level(counter)
        condition = self.last(self.loops[-1].counter)
        for loop in reversed(self.loops[level:-1]):
            condition = condition & self.last(loop.counter)
        return condition

    @property
    def done(self) -> Value:
        """Every counter is at its last value: a step now completes the nest."""
        return self.wraps(self.loops[0].counter)

    def restart(self, m) -> None:
        """Set every counter to 0 (in the current control context of `m`)."""
        m.d[self.domain] += [loop.counter.eq(0) for loop in self.loops]

    def step(self, m, enable=None) -> None:
        """Advance the nest by one iteration when `enable` is high (in the current control context
        of `m`; unconditionally there without an `enable`)."""
        if enable is None:
            self._advance(m, len(self.loops) - 1)
            return
        with m.If(enable):
            self._advance(m, len(self.loops) - 1)

    def _advance(self, m, level: int) -> None:
        counter = self.loops[level].counter
        sync = m.d[self.domain]
        if level == 0 and self.at_end == "count":
            sync += counter.eq(counter + 1)
        elif level == 0 and self.at_end == "hold":
            with m.If(~self.last(counter)):
                sync += counter.eq(counter + 1)
        else:
            with m.If(self.last(counter)):
                sync += counter.eq(0)
                if level:
                    self._advance(m, level - 1)
            with m.Else():
                sync += counter.eq(counter + 1)
