"""The epilogue every datapath shares: a row of int32 accumulators in, int8 values out.

Per lane: ``sum = acc + bias`` (exact, 33 bits), ``product = sum * multiplier``, round half up by
``shift`` bits, saturate to int8, then optionally the 256-entry activation table — exactly
`sw.numerics.epilogue`.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sw import numerics as nx
from .layouts import TABLE_WRITE, epilogue_in, epilogue_out

__all__ = ["Epilogue"]


class Epilogue(wiring.Component):
    """Bias, requantise, activation table, for `lanes` output channels per cycle.

    A three-stage pipeline (exact sum; exact product; round, saturate and read the table into the
    output registers) that accepts one row per cycle; a stall on `o` holds every stage. The activation table is written through
    `table_write` (always ready); write it while no row is in flight.

    Ports
    -----
    i : stream of `layouts.epilogue_in(lanes)`
    o : stream of `layouts.epilogue_out(lanes)`
    table_write : stream of `layouts.TABLE_WRITE`, always ready
    """

    LATENCY = 3

    def __init__(self, lanes: int):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Epilogue lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        super().__init__({
            "i": In(stream.Signature(epilogue_in(lanes))),
            "o": Out(stream.Signature(epilogue_out(lanes))),
            "table_write": In(stream.Signature(TABLE_WRITE, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()

        # The whole pipeline moves when its last stage is empty or being emptied.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        m.d.comb += self.i.ready.eq(advance)

        m.submodules.table = table = memory.Memory(
            shape=signed(8), depth=256, init=list(range(nx.INT8_MIN, nx.INT8_MAX + 1)))
        table_write = table.write_port()
        m.d.comb += [
            table_write.addr.eq(self.table_write.p.index),
            table_write.data.eq(self.table_write.p.value),
            table_write.en.eq(self.table_write.valid),
        ]

        # Valid bit and table selection of each stage; the third stage is the output.
        valid = [Signal(name=f"stage{n}_valid") for n in range(1, 3)] + [self.o.valid]
        apply_table = [Signal(name=f"stage{n}_apply_table") for n in range(1, 4)]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid),
                valid[1].eq(valid[0]),
                valid[2].eq(valid[1]),
                apply_table[0].eq(self.i.p.apply_table),
                apply_table[1].eq(apply_table[0]),
                apply_table[2].eq(apply_table[1]),
            ]

        for lane in range(self.lanes):
            operand = self.i.p.lanes[lane]
            # stage 1: exact sum
            total = Signal(signed(33), name=f"sum{lane}")
            multiplier = Signal(unsigned(nx.MULT_BITS), name=f"multiplier{lane}")
            shift1 = Signal(unsigned(nx.SHIFT_BITS), name=f"shift1_{lane}")
            # stage 2: exact product
            product = Signal(signed(33 + nx.MULT_BITS), name=f"product{lane}")
            shift2 = Signal(unsigned(nx.SHIFT_BITS), name=f"shift2_{lane}")
            # stage 3 (output): rounded and saturated, registered both as is and through the table
            half = Signal(unsigned(nx.SHIFT_MAX), name=f"half{lane}")
            rounded = Signal(signed(33 + nx.MULT_BITS + 1), name=f"rounded{lane}")
            saturated = Signal(signed(8), name=f"saturated{lane}")
            requantised = Signal(signed(8), name=f"requantised{lane}")
            with m.If(advance):
                m.d.sync += [
                    total.eq(operand.acc + operand.bias),
                    multiplier.eq(operand.multiplier),
                    shift1.eq(operand.shift),
                    product.eq(total * multiplier),
                    shift2.eq(shift1),
                    requantised.eq(saturated),
                ]
            # |product| < 2**47, so any shift beyond SHIFT_MAX rounds it to zero.
            m.d.comb += [
                half.eq((Const(1, 1) << shift2) >> 1),
                rounded.eq(Mux(shift2 > nx.SHIFT_MAX, 0, (product + half) >> shift2)),
            ]
            m.d.comb += saturated.eq(Mux(rounded > nx.INT8_MAX, nx.INT8_MAX,
                                         Mux(rounded < nx.INT8_MIN, nx.INT8_MIN, rounded)))
            # each lane reads its own port of the one table
            lane_table = table.read_port(transparent_for=())
            m.d.comb += [
                lane_table.addr.eq(saturated + 128),
                lane_table.en.eq(advance),
                self.o.p[lane].eq(Mux(apply_table[2], lane_table.data, requantised)),
            ]
        return m
