"""The epilogue unit: cocotb regression on Verilator, bit-exact against sw.numerics.epilogue."""

import gc
import warnings

import pytest
from amaranth.hdl import Module, UnusedElaboratable
from amaranth.lib import wiring

from moeaccel.config import preset
from moeaccel.hw.epilogue import Epilogue
from moeaccel.sim.harness import run_cocotb


def _regression(component, lanes, tag_bits=0, toplevel="epilogue"):
    run_cocotb(component, toplevel=toplevel, test_module="moeaccel.sim.tb.epilogue",
               build_key=f"lanes{lanes}_tag{tag_bits}",
               parameters={"lanes": lanes, "tag_bits": tag_bits, "rows": 150, "batches": 2},
               timeout_s=600)


@pytest.mark.sim
@pytest.mark.parametrize("config, tag_bits", [("tiny", 5), ("pynq-z2", 0)])
def test_epilogue_regression(config, tag_bits):
    lanes = preset(config).epilogue_lanes
    _regression(Epilogue(lanes, tag_bits), lanes, tag_bits)


class ShiftOffByOne(wiring.Component):
    """The epilogue with a deliberate bug: lane 0 shifts one bit too far."""

    def __init__(self, lanes):
        self.inner = Epilogue(lanes)
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        wiring.connect(m, inner.o, wiring.flipped(self.o))
        wiring.connect(m, wiring.flipped(self.table_write), inner.table_write)
        m.d.comb += [
            inner.i.valid.eq(self.i.valid),
            self.i.ready.eq(inner.i.ready),
            inner.i.payload.eq(self.i.payload),
            inner.i.payload.lanes[0].params.shift.eq(self.i.payload.lanes[0].params.shift + 1),
        ]
        return m


@pytest.mark.sim
def test_regression_catches_an_off_by_one_shift():
    with pytest.raises(AssertionError, match="rows differ from the golden model"):
        _regression(ShiftOffByOne(4), 4, toplevel="epilogue_shift_off_by_one")


def _refused(message, *args):
    with warnings.catch_warnings():
        # The refused instance is never elaborated; collect it here, where that is expected.
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match=message):
            Epilogue(*args)
        gc.collect()


@pytest.mark.parametrize("lanes", [0, -1, 2.0])
def test_epilogue_refuses_bad_lanes(lanes):
    _refused(r"^Epilogue lanes must be a positive integer, not ", lanes)


def test_epilogue_refuses_bad_tag_bits():
    _refused(r"^Epilogue tag_bits must be a non-negative integer, not -1$", 4, -1)
