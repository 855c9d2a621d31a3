"""The epilogue every datapath shares: a row of int32 accumulators in, int8 values out.

Per lane: ``sum = acc + bias`` (exact, 33 bits), ``product = sum * multiplier``, round half up by
``shift`` bits, saturate to int8, then optionally the 256-entry activation table — exactly
`sw.numerics.epilogue`.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..cycles import EPILOGUE_LATENCY
from ..formats.epilogue import (ACTIVATION_TABLE, IDENTITY_TABLE, TABLE_ENTRIES, table_word_write,
                               epilogue_in, epilogue_out)
from ..sw import numerics as nx
from .arith import round_shift_saturate

__all__ = ["Epilogue"]

SUM_BITS = 33                               # int32 + int32, exact
PRODUCT_BITS = SUM_BITS + nx.MULT_BITS      # |product| < 2**47 == 2**SHIFT_MAX


class Epilogue(wiring.Component):
    """Bias, requantise, activation table, for `lanes` output channels per cycle.

    A three-stage pipeline (exact sum; exact product; round, saturate and read the table into the
    output registers) that accepts one row per cycle; a stall on `o` holds every stage. Each row
    carries a `tag_bits`-wide tag through unchanged. The activation table is written through
    `table_write` (always ready); write it while no row is in flight.

    Ports
    -----
    i : stream of `formats.epilogue.epilogue_in(lanes, tag_bits)`
    o : stream of `formats.epilogue.epilogue_out(lanes, tag_bits)`
    table_write : stream of `formats.epilogue.TABLE_WRITE`, always ready
    """

    LATENCY = EPILOGUE_LATENCY       # `moeaccel.cycles` builds the engine's formula on it

    def __init__(self, lanes: int, tag_bits: int = 0, table_entries: int = 1):
        """`table_entries`: the table is written that many entries at a time
        (`formats.epilogue.table_word_write`)."""
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"Epilogue lanes must be a positive integer, not {lanes!r}")
        if not isinstance(tag_bits, int) or tag_bits < 0:
            raise ValueError(f"Epilogue tag_bits must be a non-negative integer, not {tag_bits!r}")
        self.lanes, self.tag_bits, self.table_entries = lanes, tag_bits, table_entries
        super().__init__({
            "i": In(stream.Signature(epilogue_in(lanes, tag_bits))),
            "o": Out(stream.Signature(epilogue_out(lanes, tag_bits))),
            "table_write": In(stream.Signature(table_word_write(table_entries),
                                               always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()

        # The whole pipeline moves when its last stage is empty or being emptied.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        m.d.comb += self.i.ready.eq(advance)

        # the table, `table_entries` entries a word (a lane reads a word and picks its entry)
        entries = self.table_entries
        lg = (entries - 1).bit_length()
        m.submodules.table = table = memory.Memory(
            shape=data.ArrayLayout(ACTIVATION_TABLE.elem_shape, entries),
            depth=TABLE_ENTRIES // entries,
            init=[IDENTITY_TABLE[word * entries:(word + 1) * entries]
                  for word in range(TABLE_ENTRIES // entries)])
        table_write = table.write_port()
        m.d.comb += [
            table_write.addr.eq(self.table_write.p.index),
            table_write.data.eq(self.table_write.p.value if entries == 1
                                else self.table_write.p.values),
            table_write.en.eq(self.table_write.valid),
        ]

        # Valid bit and tag of each stage; the third stage is the output.
        valid = [Signal(name="stage1_valid"), Signal(name="stage2_valid"), self.o.valid]
        tag = [Signal(self.tag_bits, name="stage1_tag"), Signal(self.tag_bits, name="stage2_tag"),
               self.o.p.tag]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid), valid[1].eq(valid[0]), valid[2].eq(valid[1]),
                tag[0].eq(self.i.p.tag), tag[1].eq(tag[0]), tag[2].eq(tag[1]),
            ]

        for lane in range(self.lanes):
            operand = self.i.p.lanes[lane]
            # stage 1: exact sum
            total = Signal(signed(SUM_BITS), name=f"sum{lane}")
            multiplier = Signal(unsigned(nx.MULT_BITS), name=f"multiplier{lane}")
            shift1 = Signal(unsigned(nx.SHIFT_BITS), name=f"shift1_{lane}")
            apply1 = Signal(name=f"apply_table1_{lane}")
            # stage 2: exact product
            product = Signal(signed(PRODUCT_BITS), name=f"product{lane}")
            shift2 = Signal(unsigned(nx.SHIFT_BITS), name=f"shift2_{lane}")
            apply2 = Signal(name=f"apply_table2_{lane}")
            # stage 3 (output): rounded and saturated, registered both as is and through the table
            saturated = Signal(signed(8), name=f"saturated{lane}")
            requantised = Signal(signed(8), name=f"requantised{lane}")
            apply3 = Signal(name=f"apply_table3_{lane}")
            with m.If(advance):
                m.d.sync += [
                    total.eq(operand.acc + operand.params.bias),
                    multiplier.eq(operand.params.multiplier),
                    shift1.eq(operand.params.shift),
                    apply1.eq(operand.apply_table),
                    product.eq(total * multiplier),
                    shift2.eq(shift1),
                    apply2.eq(apply1),
                    requantised.eq(saturated),
                    apply3.eq(apply2),
                ]
            m.d.comb += saturated.eq(round_shift_saturate(product, shift2, nx.SHIFT_MAX))
            # each lane reads its own port of the one table
            lane_table = table.read_port(transparent_for=())
            entry = Signal(8, name=f"entry{lane}")
            slot = Signal(max(1, lg), name=f"slot{lane}")
            m.d.comb += [
                entry.eq(saturated + 128),
                lane_table.addr.eq(entry >> lg),
                lane_table.en.eq(advance),
                self.o.p.values[lane].eq(Mux(apply3, lane_table.data[slot] if lg
                                             else lane_table.data[0], requantised)),
            ]
            if lg:
                with m.If(advance):
                    m.d.sync += slot.eq(entry[:lg])
        return m
