"""`sim.equivalence`: a loop nest written by hand and the same nest as a `hw.loops.LoopNest` are
proven equivalent, a memory included; a nest whose last iteration differs is not."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from moeaccel.hw.loops import Loop, LoopNest
from moeaccel.sim.equivalence import EquivalenceError, check_equivalence
from moeaccel.sim.harness import to_verilog


class Scan(wiring.Component):
    """Rows x words, a word a cycle under `enable`; each word's address written to a memory, and
    `done` on the last word. `style` is how the counters are written."""

    enable: In(1)
    rows: In(3)
    words: In(3)
    done: Out(1)
    read_addr: In(6)
    read_data: Out(6)

    def __init__(self, style: str):
        self.style = style
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        row = Signal(range(8))
        word = Signal(range(8))
        m.submodules.seen = seen = memory.Memory(shape=6, depth=64, init=[])
        write, read = seen.write_port(), seen.read_port()
        m.d.comb += [write.addr.eq(row * 8 + word), write.data.eq(row * 8 + word),
                     write.en.eq(self.enable), read.addr.eq(self.read_addr),
                     self.read_data.eq(read.data)]
        if self.style == "hand":
            m.d.comb += self.done.eq((word == self.words - 1) & (row == self.rows - 1))
            with m.If(self.enable):
                with m.If(word == self.words - 1):
                    m.d.sync += [word.eq(0), row.eq(row + 1)]
                with m.Else():
                    m.d.sync += word.eq(word + 1)
        else:
            nest = LoopNest(Loop(row, self.rows), Loop(word, self.words),
                            at_end="wrap" if self.style == "wrapping" else "count")
            m.d.comb += self.done.eq(nest.done)
            nest.step(m, self.enable)
        return m


def verilog(tmp_path, style):
    path = tmp_path / f"{style}.v"
    path.write_text(to_verilog(Scan(style), "scan"))
    return path


def test_a_loop_nest_is_the_counters_written_by_hand(tmp_path):
    summary, _ = check_equivalence(verilog(tmp_path, "hand"), verilog(tmp_path, "nest"), "scan",
                                   work=tmp_path / "work")
    assert summary.startswith("scan: ") and "2 registers matched by name" in summary
    assert "1 memories cut" in summary


def test_a_different_last_iteration_is_not_equivalent(tmp_path):
    """Wrapping the row counter at the end differs from counting on: the proof must fail."""
    with pytest.raises(EquivalenceError, match=r"^\d+ \$equiv cells unproven, e\.g\. "):
        check_equivalence(verilog(tmp_path, "hand"), verilog(tmp_path, "wrapping"), "scan",
                          work=tmp_path / "work")
