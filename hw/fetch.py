"""The instruction fetch unit: a program's instructions read from DRAM in AXI bursts, in order, into a
small queue the controller's dispatch stage takes them from.

The program is ``length`` instructions of `INSTRUCTION_BYTES` from byte address ``address`` (a
multiple of `INSTRUCTION_BYTES`). A burst reads up to `FETCH_BURST` instructions, never across a
4 KiB boundary, and is issued only when the queue has room for all of it, so R beats are never held
up. ``halt`` stops new bursts; the one in flight ends, its beats taken and dropped, so no AXI
transaction is left dangling.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.dma import BURST_BOUNDARY
from ..formats.instructions import INSTRUCTION_BITS, INSTRUCTION_BYTES
from .axi import BURST_INCR, axi4_signature

__all__ = ["Fetch", "FETCH_BURST", "FETCH_QUEUE", "fetched"]

FETCH_BURST = 4                 # instructions a burst reads at most
FETCH_QUEUE = 8                 # instructions read and not yet taken

fetched = data.StructLayout({"index": 32, "word": INSTRUCTION_BITS})


class Fetch(wiring.Component):
    """The fetch unit of one `AccelConfig` (a bus of at most `INSTRUCTION_BITS` bits).

    Ports
    -----
    start : one cycle: begin the program at ``address``, ``length`` instructions (the queue empties)
    address, length : the program, held from ``start`` on
    halt : issue no more bursts (the one in flight drains)
    m_axi : the AXI4 manager port (reads only)
    out : stream of `fetched`: each instruction with its index, in order
    in_flight : a burst has been issued and not all its beats have come back
    quiet : nothing in flight and no burst about to be issued (until ``out`` moves or ``start``)
    exhausted : every instruction of the program has been read
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Fetch needs an AccelConfig, not {config!r}")
        if config.axi_data_width > INSTRUCTION_BITS:
            raise ValueError(f"{config.name}: the fetch unit reads instructions of "
                             f"{INSTRUCTION_BITS} bits as whole bus beats; a "
                             f"{config.axi_data_width}-bit bus is wider")
        self.config = config
        super().__init__({
            "start": In(1),
            "address": In(32),
            "length": In(32),
            "halt": In(1),
            "m_axi": Out(axi4_signature(config.axi_addr_width, config.axi_data_width)),
            "out": Out(stream.Signature(fetched)),
            "in_flight": Out(1),
            "quiet": Out(1),
            "exhausted": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        axi = self.m_axi
        width = config.axi_data_bytes
        beats = INSTRUCTION_BYTES // width            # beats an instruction takes
        lg = (width - 1).bit_length()

        m.submodules.queue = queue = ResetInserter(self.start)(
            fifo.SyncFIFO(width=INSTRUCTION_BITS, depth=FETCH_QUEUE))
        requested = Signal(32)                        # instructions asked for
        taken = Signal(32)                            # instructions out of the queue
        booked = Signal(range(FETCH_QUEUE + 1))       # queue places held for the burst in flight
        address = Signal(config.axi_addr_width)
        with m.If(self.start):
            m.d.sync += [requested.eq(0), taken.eq(0), booked.eq(0),
                         address.eq(Cat(Const(0, 5), self.address[5:]))]
        m.d.comb += self.exhausted.eq(requested == self.length)

        # -- bursts: whole instructions, up to the next 4 KiB boundary
        left = self.length - requested
        to_boundary = (BURST_BOUNDARY - address[:12]) >> 5          # instructions
        wanted = Mux(left < FETCH_BURST, left, FETCH_BURST)
        count = Signal(range(FETCH_BURST + 1))
        m.d.comb += count.eq(Mux(to_boundary < wanted, to_boundary, wanted))
        room = FETCH_QUEUE - queue.level - booked
        m.d.comb += [
            axi.arvalid.eq(~self.halt & ~self.in_flight & ~self.start & (left != 0)
                           & (room >= count)),
            axi.araddr.eq(address), axi.arlen.eq(count * beats - 1), axi.arsize.eq(lg),
            axi.arburst.eq(BURST_INCR), axi.arid.eq(0),
            axi.awvalid.eq(0), axi.wvalid.eq(0), axi.bready.eq(1),
        ]
        m.d.comb += self.quiet.eq(~self.in_flight & ~axi.arvalid)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [self.in_flight.eq(1), booked.eq(count), requested.eq(requested + count),
                         address.eq(address + count * INSTRUCTION_BYTES)]

        # -- beats into whole instructions; a halted burst's beats are dropped
        beat = Signal(range(beats))
        parts = Signal(INSTRUCTION_BITS)
        word = Cat(parts[8 * width:], axi.rdata) if beats > 1 else axi.rdata
        m.d.comb += [axi.rready.eq(1), queue.w_data.eq(word)]
        with m.If(axi.rvalid):
            m.d.sync += parts.eq(word)
            if beats > 1:
                m.d.sync += beat.eq(Mux(beat == beats - 1, 0, beat + 1))
            with m.If((beat == beats - 1) & ~self.halt):
                m.d.comb += queue.w_en.eq(1)
            with m.If(beat == beats - 1):
                m.d.sync += booked.eq(booked - 1)
            with m.If(axi.rlast):
                m.d.sync += [self.in_flight.eq(0), booked.eq(0)]
        with m.If(self.start):
            m.d.sync += beat.eq(0)

        m.d.comb += [self.out.valid.eq(queue.r_rdy), self.out.p.word.eq(queue.r_data),
                     self.out.p.index.eq(taken), queue.r_en.eq(self.out.ready)]
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += taken.eq(taken + 1)
        return m
