"""ATTENTION on the accelerator top: the attention unit (`hw.attention.Attention`) reading its Q, K
and V rows from DRAM and writing its O rows back, as the emulator's ATTENTION does (`host.units`).

* **Checked first.** The command against the unit's rules (`formats.attention.rules`: BAD_FIELD),
  then the Q, K, V and O rows against the DMA window (DMA_WINDOW). A refused call reads and
  writes nothing.
* **Reads in the unit's order** (`sw.attention.stream_words`): per query group, the group's Q rows
  as one run, then each key's K row and V row. A DMA engine of the port's own
  (`Dma(to_unit=True)`) takes each run as a command of its own as soon as the bursts of the one
  before are issued, so the rows at their unrelated addresses reach the unit back to back, in
  order: the read data never waits on anything but the unit.
* **Writes.** Output words queue (a query group's worth) and go to O through a second DMA engine:
  a command for the words queued whenever it can take one, so a write burst is issued only when
  its data is at hand and never holds the shared write channel waiting for the unit.

``cancel`` (an abort, the watchdog) stops a call within a few cycles: no read is asked for after it,
the unit is reset, the reads already asked for are taken and dropped, and the writes already
claimed are written (no AXI transaction is left open); the call's other O words are not written.

``busy`` rises the cycle after ``issue`` and falls when the last O word is written (or the call
has stopped); ``error`` then says how the call ended.
"""

from amaranth.hdl import Module, Mux, ResetInserter, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.attention import ATTENTION_COUNTERS, SEQUENCER_COUNTERS, STORE_CHUNK, rules
from ..formats.instructions import ADDRESS_BITS, ErrorCode, attention_body
from ..formats.rules import refused_by
from .attention import Attention
from .attention_sequencer import group_extent
from .controller import compute_port
from .dma import Dma
from .port_io import log2

__all__ = ["AttentionPort"]


class AttentionPort(wiring.Component):
    """ATTENTION for one `AccelConfig`.

    Ports
    -----
    issue, command : the controller starts one (one cycle), ``command`` its body
        (`formats.instructions.attention_body`)
    window_base, window_size : the DMA window
    m_axi : AXI4 manager port: the Q/K/V reader's reads and the O writer's writes
    cancel : stop the call under way (see above)
    busy : from the cycle after ``issue`` until the call has ended
    error : how it ended (`ErrorCode`), valid when ``busy`` falls
    perf : the unit's `formats.attention.ATTENTION_COUNTERS`
    sequencer : `formats.attention.SEQUENCER_COUNTERS`: words given to the unit and taken from it
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"AttentionPort needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            **compute_port(config, attention_body(config), ATTENTION_COUNTERS),
            "cancel": In(1),
            "sequencer": Out(SEQUENCER_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        group, lg = config.attention_group, log2(config.axi_data_bytes)
        stopping = Signal()                    # cancelled: the unit held in reset
        flush = Signal()                       # the output queue emptied as the call stops
        m.submodules.attention = unit = ResetInserter(stopping)(Attention(config))
        m.submodules.reader = reader = Dma(config, to_unit=True)
        m.submodules.writer = writer = Dma(config, to_unit=True)
        m.d.comb += self.perf.eq(unit.perf)
        for dma in (reader, writer):
            m.d.comb += [dma.window_base.eq(self.window_base),
                         dma.window_size.eq(self.window_size)]
        # one manager port: the reader's AR and R channels, the writer's AW, W and B
        for name, member in self.m_axi.signature.members.items():
            source = reader.m_axi if name.startswith(("ar", "r")) else writer.m_axi
            ours, theirs = getattr(self.m_axi, name), getattr(source, name)
            m.d.comb += (ours.eq(theirs) if member.flow == Out else theirs.eq(ours))

        body = Signal(attention_body(config))
        c = body.command
        heads = Signal(range(config.max_heads + 1))
        row_q, row_kv = Signal(ADDRESS_BITS), Signal(ADDRESS_BITS)      # bytes a row
        m.d.comb += [heads.eq(c.kv_heads * c.rep),
                     row_q.eq((heads * c.head_words) << lg),
                     row_kv.eq((c.kv_heads * c.head_words) << lg)]

        # -- the reads: a command a run, in the unit's order
        seq_bits = config.max_seq_len.bit_length()
        first_row = Signal(seq_bits)
        row0_position = Signal(seq_bits + 1)
        rows, keys, key = Signal(range(group + 1)), Signal(seq_bits), Signal(seq_bits)
        q_address, k_address, v_address = (Signal(ADDRESS_BITS + 1, name=name)
                                           for name in ("q_address", "k_address", "v_address"))
        # the command's fields set whole, outside the FSM: the constant ones in a process of
        # their own would be `always @*` blocks that never run in an event-driven simulator
        run_valid = Signal()
        run_dram, run_bytes = Signal(ADDRESS_BITS), Signal(ADDRESS_BITS)
        transfer = reader.cmd.p.transfer
        m.d.comb += [reader.cmd.valid.eq(run_valid), reader.cmd.p.store.eq(0), transfer.rows.eq(1),
                     transfer.dram.eq(run_dram), transfer.row_bytes.eq(run_bytes),
                     unit.data.valid.eq(reader.sram_write.valid),
                     unit.data.p.eq(reader.sram_write.p.data),
                     reader.sram_write.ready.eq(unit.data.ready | stopping)]
        with m.If(unit.data.valid & unit.data.ready):
            m.d.sync += self.sequencer.words_read.eq(self.sequencer.words_read + 1)

        # -- the writes: output words queue; a command claims those queued, from the next O byte
        m.submodules.results = results = ResetInserter(flush)(fifo.SyncFIFOBuffered(
            width=8 * config.axi_data_bytes, depth=group * config.attention_row_words))
        total = config.max_seq_len * config.attention_row_words
        queued = Signal(range(total + 1))                 # in the queue, not yet claimed
        unclaimed = Signal(range(total + 1))              # the call's words not yet claimed
        o_address = Signal(ADDRESS_BITS + 1)
        pushed = unit.out.valid & unit.out.ready
        claim = Signal.like(queued)
        m.d.comb += [results.w_data.eq(unit.out.p), results.w_en.eq(unit.out.valid),
                     unit.out.ready.eq(results.w_rdy),
                     claim.eq(queued),
                     writer.cmd.p.store.eq(1), writer.cmd.p.transfer.rows.eq(1),
                     writer.cmd.p.transfer.dram.eq(o_address),
                     writer.cmd.p.transfer.row_bytes.eq(claim << lg)]
        claiming = Signal()
        m.d.comb += [claiming.eq(writer.cmd.valid & writer.cmd.ready),
                     writer.cmd.valid.eq((queued != 0) & ~stopping
                                         & ((queued >= STORE_CHUNK) | (queued == unclaimed)))]
        m.d.sync += queued.eq(queued + pushed - Mux(claiming, claim, 0))
        with m.If(claiming):
            m.d.sync += [unclaimed.eq(unclaimed - claim), o_address.eq(o_address + (claim << lg))]
        with m.If(pushed):
            m.d.sync += self.sequencer.words_written.eq(self.sequencer.words_written + 1)
        # the writer's reads of its words: the queue's head, given the cycle after
        taken = writer.sram_read.valid & writer.sram_read.ready
        word = Signal.like(results.r_data)
        m.d.comb += [writer.sram_read.ready.eq(results.r_rdy), results.r_en.eq(taken),
                     writer.sram_read_data.eq(word)]
        with m.If(taken):
            m.d.sync += word.eq(results.r_data)

        # -- the call
        given = self.command
        outside = Signal()
        m.d.comb += outside.eq(
            (body.q + c.seq_q * row_q > self.window_size)
            | (body.k + c.seq_kv * row_kv > self.window_size)
            | (body.v + c.seq_kv * row_kv > self.window_size)
            | (body.o + c.seq_q * row_q > self.window_size))
        with m.FSM(name="attention") as fsm:
            with m.State("IDLE"):
                with m.If(self.issue):
                    m.d.sync += [body.eq(given), self.error.eq(ErrorCode.NONE)]
                    with m.If(refused_by(rules(config, given.command))):
                        m.d.sync += self.error.eq(ErrorCode.BAD_FIELD)
                        m.next = "END"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(outside):
                    m.d.sync += self.error.eq(ErrorCode.DMA_WINDOW)
                    m.next = "END"
                with m.Else():
                    m.next = "START"
            with m.State("START"):
                m.d.comb += unit.cmd.valid.eq(1)
                m.d.comb += unit.cmd.p.eq(c)
                with m.If(unit.cmd.ready):
                    m.d.sync += [first_row.eq(0), row0_position.eq(c.seq_kv - c.seq_q),
                                 q_address.eq(body.q), o_address.eq(body.o), queued.eq(0),
                                 unclaimed.eq(c.seq_q * (row_q >> lg)), self.sequencer.eq(0)]
                    m.next = "GROUP"
            def stop_if_cancelled():
                """A cancel once the unit has the call stops it (this comes last in a state)."""
                with m.If(self.cancel):
                    m.next = "STOP"

            with m.State("GROUP"):
                group_rows, group_keys = group_extent(c, first_row, row0_position, group)
                m.d.sync += [rows.eq(group_rows), keys.eq(group_keys), key.eq(0),
                             k_address.eq(body.k), v_address.eq(body.v)]
                m.next = "Q"
                stop_if_cancelled()

            def run(address, length, then):
                """A read command of `length` bytes from `address`; `then()` once taken."""
                m.d.comb += [run_valid.eq(1), run_dram.eq(address), run_bytes.eq(length)]
                with m.If(reader.cmd.ready):
                    then()
                stop_if_cancelled()

            with m.State("Q"):
                def q_taken():
                    m.d.sync += q_address.eq(q_address + rows * row_q)
                    m.next = "K"
                run(q_address, rows * row_q, q_taken)
            with m.State("K"):
                def k_taken():
                    m.d.sync += k_address.eq(k_address + row_kv)
                    m.next = "V"
                run(k_address, row_kv, k_taken)
            with m.State("V"):
                def v_taken():
                    m.d.sync += [v_address.eq(v_address + row_kv), key.eq(key + 1)]
                    with m.If(key + 1 != keys):
                        m.next = "K"
                    with m.Elif(first_row + group < c.seq_q):
                        m.d.sync += [first_row.eq(first_row + group),
                                     row0_position.eq(row0_position + group)]
                        m.next = "GROUP"
                    with m.Else():
                        m.next = "DRAIN"
                run(v_address, row_kv, v_taken)
            with m.State("DRAIN"):                # the last words reach the unit and O
                with m.If(~reader.busy & ~unit.busy & (unclaimed == 0) & ~writer.busy
                          & ~writer.cmd.valid):
                    m.next = "IDLE"
                stop_if_cancelled()
            with m.State("STOP"):                 # cancelled: what was asked for, then idle
                m.d.comb += stopping.eq(1)
                with m.If(~reader.busy & ~writer.busy):
                    m.d.comb += flush.eq(1)
                    m.next = "IDLE"
            with m.State("END"):
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
