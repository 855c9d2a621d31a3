"""End-to-end check of moeaccel.sim.harness: Amaranth -> Verilog -> Verilator -> cocotb."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from moeaccel.sim.harness import run_cocotb


class RegisteredAdder(wiring.Component):
    """sum <= a + b, registered in the sync domain."""

    a: In(8)
    b: In(8)
    sum: Out(9)

    def elaborate(self, platform):
        """Build the adder."""
        m = Module()
        m.d.sync += self.sum.eq(self.a + self.b)
        return m


def _run(parameters):
    """Run the smoke testbench on a fresh adder."""
    return run_cocotb(
        RegisteredAdder(),
        toplevel="smoke_adder",
        test_module="moeaccel.sim.tb.smoke",
        build_key="w8",
        parameters=parameters,
        timeout_s=120,
    )


@pytest.mark.sim
def test_smoke_adder_passes():
    """The cocotb regression passes on a correct design and writes a results file."""
    assert _run({"cycles": 300}).is_file()


@pytest.mark.sim
def test_smoke_adder_failure_is_detected():
    """A testbench expecting wrong sums makes run_cocotb raise AssertionError."""
    with pytest.raises(AssertionError, match="registered_sum"):
        _run({"cycles": 20, "bias": 1})
