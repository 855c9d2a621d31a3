"""The epilogue unit: cocotb regression on Verilator, bit-exact against sw.numerics.epilogue."""

import gc
import warnings

import pytest
from amaranth.hdl import Module, UnusedElaboratable
from amaranth.lib import wiring

from moeaccel.config import preset
from moeaccel.hw.epilogue import Epilogue
from moeaccel.sim.harness import run_cocotb


def _regression(component, lanes, toplevel="epilogue"):
    run_cocotb(component, toplevel=toplevel, test_module="moeaccel.sim.tb.epilogue",
               build_key=f"lanes{lanes}", parameters={"lanes": lanes, "rows": 150, "batches": 2},
               timeout_s=600)


@pytest.mark.sim
@pytest.mark.parametrize("config", ["tiny", "pynq-z2"])
def test_epilogue_regression(config):
    lanes = preset(config).epilogue_lanes
    _regression(Epilogue(lanes), lanes)


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
            inner.i.payload.lanes[0].shift.eq(self.i.payload.lanes[0].shift + 1),
        ]
        return m


@pytest.mark.sim
def test_regression_catches_an_off_by_one_shift():
    with pytest.raises(AssertionError, match="rows differ from the golden model"):
        _regression(ShiftOffByOne(4), 4, toplevel="epilogue_shift_off_by_one")


@pytest.mark.parametrize("lanes", [0, -1, 2.0])
def test_epilogue_refuses_bad_lanes(lanes):
    with warnings.catch_warnings():
        # The refused instance is never elaborated; collect it here, where that is expected.
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match=r"^Epilogue lanes must be a positive integer, not "):
            Epilogue(lanes)
        gc.collect()
