"""The DMA engine: LOADs and STOREs between DRAM, over an AXI4 manager port, and the on-chip buffers.

A transfer moves ``rows`` rows of ``row_bytes`` bytes, rows ``dram_stride`` bytes apart in DRAM and
``sram_stride`` apart in the buffer (`formats.instructions.transfer_body`), at any byte offsets.

* **Checked first.** The rows must fit their buffer (`formats.dma.rules`, as the emulator checks
  them: BAD_FIELD), and the whole transfer, ``dram + (rows - 1) x dram_stride + row_bytes``, must
  lie inside the DMA window (``window_size`` bytes from ``window_base``: DMA_WINDOW); otherwise the
  engine sets ``error`` and ``error_code`` and issues nothing.
* **Bursts.** Each row is the run of bus words that holds it; it goes out as INCR bursts of at
  most 256 beats that never cross a 4 KiB boundary.
* **Reads stream.** Up to `MAX_OUTSTANDING` read bursts are in flight, so R beats arrive back to
  back; ``rready`` is held only for a row's last word (see `Realigner`).
* **Byte offsets.** A `Realigner` shifts each row from the byte offset it has on one side to the one
  it has on the other, a word a cycle; the first and last words of a row carry byte strobes (buffer
  writes) or write strobes (``wstrb``), so nothing outside a row is written.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer
from ..formats import dma as dma_formats
from ..formats.dma import (BURST_BOUNDARY, DMA_COUNTERS, MAX_BURST_BEATS, dma_command,
                           sram_read_request, sram_word_bits, sram_write)
from ..formats.instructions import ADDRESS_BITS, SRAM_ADDRESS_BITS, ErrorCode
from ..formats.rules import refused_by
from .axi import BURST_INCR, axi4_signature

__all__ = ["Dma", "Realigner", "MAX_OUTSTANDING"]

MAX_OUTSTANDING = 4             # bursts in flight per direction
_ROW_QUEUE = 8                  # rows whose bursts are issued and whose data has not all moved


def _row_layout(word_bytes: int) -> data.StructLayout:
    offset = unsigned((word_bytes - 1).bit_length())
    return data.StructLayout({"src_offset": offset, "dst_offset": offset,
                              "length": unsigned(SRAM_ADDRESS_BITS)})


class Realigner(wiring.Component):
    """A row of ``length`` bytes, which starts at byte ``src_offset`` of its first input word, out as
    words in which it starts at byte ``dst_offset``: ``ceil((src_offset + length) / B)`` words in,
    ``ceil((dst_offset + length) / B)`` out, each out word with the strobes of the row's bytes.

    Ports
    -----
    row : stream of the row's offsets and length; taken when the row before has left
    i : stream of ``8 x word_bytes``-bit input words
    o : stream of output words: ``data``, ``strobe`` (a bit a byte), ``last`` (the row's last)
    busy : a row is under way (the next row is taken as its last word leaves)
    """

    def __init__(self, word_bytes: int):
        self.word_bytes = word_bytes
        super().__init__({
            "row": In(stream.Signature(_row_layout(word_bytes))),
            "i": In(stream.Signature(unsigned(8 * word_bytes))),
            "o": Out(stream.Signature(data.StructLayout({
                "data": unsigned(8 * word_bytes), "strobe": unsigned(word_bytes),
                "last": unsigned(1)}))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.word_bytes
        lg = (width - 1).bit_length()
        count = unsigned(SRAM_ADDRESS_BITS - lg + 2)
        active = Signal()
        primed = Signal()                       # the word before the first output is in `previous`
        inputs_left, outputs_left = Signal(count), Signal(count)
        shift = Signal(range(width + 1))        # bytes: output = (previous, current) >> shift
        first_out = Signal()
        first_strobe, last_strobe = Signal(width), Signal(width)
        previous = Signal(8 * width)

        row = self.row.p
        end = row.dst_offset + row.length       # one past the row's last byte, output side
        leaving = Signal()                      # the row's last word leaves this cycle
        m.d.comb += [self.row.ready.eq(~active | leaving), self.busy.eq(active)]

        current = Mux(inputs_left != 0, self.i.payload, 0)
        m.d.comb += [
            self.o.p.data.eq((Cat(previous, current) >> (shift << 3))[:8 * width]),
            self.o.p.strobe.eq(Mux(first_out, first_strobe, ~0)
                               & Mux(outputs_left == 1, last_strobe, ~0)),
            self.o.p.last.eq(outputs_left == 1),
        ]
        with m.If(active):
            with m.If(~primed):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [previous.eq(self.i.payload), inputs_left.eq(inputs_left - 1),
                                 primed.eq(1)]
            with m.Else():
                from_input = inputs_left != 0
                m.d.comb += [self.o.valid.eq(~from_input | self.i.valid),
                             self.i.ready.eq(from_input & self.o.ready)]
                with m.If(self.o.valid & self.o.ready):
                    m.d.sync += [outputs_left.eq(outputs_left - 1), first_out.eq(0),
                                 previous.eq(current)]
                    with m.If(from_input):
                        m.d.sync += inputs_left.eq(inputs_left - 1)
                    with m.If(outputs_left == 1):
                        m.d.comb += leaving.eq(1)
                        m.d.sync += active.eq(0)
        # the next row (after the statements above: its values win)
        with m.If(self.row.valid & self.row.ready & (row.length != 0)):
            skip = row.src_offset > row.dst_offset
            last_lane = (end - 1)[:lg] if lg else 0
            m.d.sync += [
                active.eq(1),
                primed.eq(~skip),
                inputs_left.eq((row.src_offset + row.length + width - 1) >> lg),
                outputs_left.eq((end + width - 1) >> lg),
                shift.eq(Mux(skip, row.src_offset - row.dst_offset,
                             width + row.src_offset - row.dst_offset)),
                first_out.eq(1),
                first_strobe.eq(Cat(Const(lane, lg + 1) >= row.dst_offset for lane in range(width))),
                last_strobe.eq(Cat(Const(lane, lg + 1) <= last_lane for lane in range(width))),
                previous.eq(0),
            ]
        return m


class _Bursts:
    """The burst splitter of one direction: walks the rows of a transfer, a row's bus words as
    bursts, and hands each row's description to the data side."""

    def __init__(self, m, config, command, window_base, start, prefix):
        width = config.axi_data_bytes
        self.lg = lg = (width - 1).bit_length()
        t = command.transfer
        self.row = Signal(16, name=f"{prefix}_row")
        self.address = Signal(config.axi_addr_width, name=f"{prefix}_address")   # next beat's
        self.beats_left = Signal(SRAM_ADDRESS_BITS, name=f"{prefix}_beats_left")
        self.dram = Signal(ADDRESS_BITS + 1, name=f"{prefix}_dram")                # row's offset
        self.sram = Signal(SRAM_ADDRESS_BITS + 1, name=f"{prefix}_sram")
        self.in_row = Signal(name=f"{prefix}_in_row")
        self.done = Signal(name=f"{prefix}_done")
        stride = Mux(t.sram_stride == 0, t.row_bytes, t.sram_stride)
        boundary_bits = (BURST_BOUNDARY - 1).bit_length()
        to_boundary = (BURST_BOUNDARY - self.address[:boundary_bits]) >> lg
        self.length = Signal(range(MAX_BURST_BEATS + 1), name=f"{prefix}_length")
        m.d.comb += self.length.eq(Mux(self.beats_left < to_boundary,
                                       Mux(self.beats_left < MAX_BURST_BEATS, self.beats_left,
                                           MAX_BURST_BEATS),
                                       Mux(to_boundary < MAX_BURST_BEATS, to_boundary,
                                           MAX_BURST_BEATS)))
        row_address = window_base + self.dram
        self.row_offset = row_address[:lg] if lg else 0
        self.row_beats = (self.row_offset + t.row_bytes + width - 1) >> lg
        self.row_start_address = Cat(Const(0, lg), row_address[lg:])
        self.stride = stride
        self.t = t
        with m.If(start):
            m.d.sync += [self.row.eq(0), self.dram.eq(t.dram), self.sram.eq(t.sram),
                         self.in_row.eq(0), self.done.eq(t.rows == 0)]

    def begin_row(self, m):
        """Enter the current row (its bursts follow)."""
        m.d.sync += [self.in_row.eq(1), self.beats_left.eq(self.row_beats),
                     self.address.eq(self.row_start_address)]

    def issue(self, m):
        """One burst of ``length`` beats has gone; the row ends when its beats are out."""
        m.d.sync += [self.address.eq(self.address + (self.length << self.lg)),
                     self.beats_left.eq(self.beats_left - self.length)]
        with m.If(self.beats_left == self.length):
            self.next_row(m)

    def next_row(self, m):
        t = self.t
        m.d.sync += [self.in_row.eq(0), self.row.eq(self.row + 1),
                     self.dram.eq(self.dram + t.dram_stride), self.sram.eq(self.sram + self.stride)]
        with m.If(self.row + 1 == t.rows):
            m.d.sync += self.done.eq(1)


class Dma(wiring.Component):
    """The DMA engine of one `AccelConfig`. With ``to_unit=True`` it moves a unit's data: a LOAD's
    words go to the unit on ``sram_write``, a STORE's come from it on ``sram_read`` (``buffer``
    and ``addr`` then mean nothing), no buffer bounds them, and a command is taken as soon as every
    burst of the one before has been issued, so a unit's rows at unrelated addresses stream back
    to back (each command checked against the window as it is taken).

    Ports
    -----
    cmd : stream of `formats.dma.dma_command(config)`; accepted when idle (``to_unit``: when the
        command before has issued its bursts)
    window_base, window_size : the DMA window (byte address and length), held while busy
    m_axi : the AXI4 manager port (`hw.axi.axi4_signature`), ``axi_data_width`` bits
    sram_write : stream of `formats.dma.sram_write` (a LOAD's buffer words); a word waits for
        ``ready`` (and the R channel with it)
    sram_read : stream of `formats.dma.sram_read_request` (a STORE's buffer reads); a request is
        taken when ``ready`` (a buffer shared with another client may hold it)
    sram_read_data : the word a taken request asked for, the cycle after it
    cancel : end the transfer at the end of the row under way (the rows after it are not moved;
        every burst issued completes)
    busy, error : a transfer is under way; the last command was refused
    error_code : why (`ErrorCode`: BAD_FIELD, rows past their buffer, before DMA_WINDOW)
    perf : `formats.dma.DMA_COUNTERS`, cleared when a command is accepted
    """

    def __init__(self, config: AccelConfig, to_unit: bool = False):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Dma needs an AccelConfig, not {config!r}")
        self.config = config
        self.to_unit = to_unit
        super().__init__({
            "cmd": In(stream.Signature(dma_command(config))),
            "window_base": In(config.axi_addr_width),
            "window_size": In(ADDRESS_BITS + 1),
            "cancel": In(1),
            "m_axi": Out(axi4_signature(config.axi_addr_width, config.axi_data_width)),
            "sram_write": Out(stream.Signature(sram_write(config))),
            "sram_read": Out(stream.Signature(sram_read_request(config))),
            "sram_read_data": In(config.axi_data_width),
            "busy": Out(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "perf": Out(DMA_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        width = config.axi_data_bytes
        lg = (width - 1).bit_length()
        axi = self.m_axi
        perf = self.perf
        command = Signal(dma_command(config))
        t = command.transfer
        store = command.store
        running = Signal()
        checking = Signal()
        m.d.comb += self.busy.eq(running | checking)

        # -- accept, then check the window before anything is issued
        start = Signal()
        extent = Signal(ADDRESS_BITS + 17 + 1)
        issued = Signal()               # every burst of the command has gone (or none will)
        if self.to_unit:                # the next command's bursts follow this one's
            m.d.comb += self.cmd.ready.eq(~checking & (~running | issued))
        else:
            m.d.comb += self.cmd.ready.eq(~running & ~checking)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [command.eq(self.cmd.payload), checking.eq(1)]
            with m.If(~running):
                m.d.sync += perf.eq(0)
        with m.If(checking):
            m.d.sync += checking.eq(0)
            m.d.comb += extent.eq(t.dram + (t.rows - 1) * t.dram_stride + t.row_bytes)
            past_buffer = Const(0, 1) if self.to_unit else refused_by(dma_formats.rules(config, t))
            outside = (t.rows != 0) & (extent > self.window_size)
            m.d.sync += [self.error.eq(past_buffer | outside),
                         self.error_code.eq(Mux(past_buffer, ErrorCode.BAD_FIELD,
                                                Mux(outside, ErrorCode.DMA_WINDOW, ErrorCode.NONE)))]
            with m.If(~past_buffer & ~outside):
                m.d.comb += start.eq(1)
                m.d.sync += running.eq(1)
        with m.If(running):
            m.d.sync += perf.busy_cycles.eq(perf.busy_cycles + 1)

        size = Const(lg, 3)
        m.d.comb += [axi.arid.eq(0), axi.awid.eq(0), axi.arsize.eq(size), axi.awsize.eq(size),
                     axi.arburst.eq(BURST_INCR), axi.awburst.eq(BURST_INCR), axi.bready.eq(1)]

        # -- the row descriptions between the burst side and the data side
        row_entry = data.StructLayout({"row": _row_layout(width),
                                       "sram_word": unsigned(sram_word_bits(config) + 1)})
        # each row's description goes to the realigner and (STORE) to the buffer reader, each with
        # a queue of its own so the reader runs ahead into the next row
        m.submodules.rows = rows = fifo.SyncFIFOBuffered(width=row_entry.size, depth=_ROW_QUEUE)
        m.submodules.read_rows = read_rows = fifo.SyncFIFOBuffered(width=row_entry.size,
                                                                   depth=_ROW_QUEUE)
        m.submodules.lengths = lengths = fifo.SyncFIFOBuffered(
            width=(MAX_BURST_BEATS).bit_length(), depth=_ROW_QUEUE * 2)
        bursts = _Bursts(m, config, command, self.window_base, start, "burst")
        entry = row_entry(rows.w_data)
        sram_offset = bursts.sram[:lg] if lg else 0
        m.d.comb += [
            entry.row.length.eq(t.row_bytes),
            entry.row.src_offset.eq(Mux(store, sram_offset, bursts.row_offset)),
            entry.row.dst_offset.eq(Mux(store, bursts.row_offset, sram_offset)),
            entry.sram_word.eq(bursts.sram >> lg),
        ]
        outstanding = Signal(range(MAX_OUTSTANDING + 1))
        cancelled = Signal()            # no row begins after the one under way
        with m.If(self.cancel & running):
            m.d.sync += cancelled.eq(1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cancelled.eq(0)
        m.d.comb += issued.eq(bursts.done | (cancelled & ~bursts.in_row))
        issuing = running & ~checking & ~issued
        # a row with bytes enters the queue when it begins; an empty one is skipped
        with m.If(issuing & ~bursts.in_row):
            with m.If(t.row_bytes == 0):
                bursts.next_row(m)
            with m.Elif(rows.w_rdy & read_rows.w_rdy):
                m.d.comb += [rows.w_en.eq(1), read_rows.w_en.eq(store)]
                bursts.begin_row(m)
        m.d.comb += read_rows.w_data.eq(rows.w_data)
        can_issue = issuing & bursts.in_row & (outstanding < MAX_OUTSTANDING)
        address_valid = Signal()
        m.d.comb += address_valid.eq(can_issue & (~store | lengths.w_rdy))
        m.d.comb += [
            axi.araddr.eq(bursts.address), axi.awaddr.eq(bursts.address),
            axi.arlen.eq(bursts.length - 1), axi.awlen.eq(bursts.length - 1),
            axi.arvalid.eq(address_valid & ~store), axi.awvalid.eq(address_valid & store),
            lengths.w_data.eq(bursts.length),
        ]
        address_taken = (axi.arvalid & axi.arready) | (axi.awvalid & axi.awready)
        with m.If(address_taken):
            bursts.issue(m)
            m.d.sync += perf.bursts.eq(perf.bursts + 1)
        m.d.comb += lengths.w_en.eq(axi.awvalid & axi.awready)
        burst_ended = Mux(store, axi.bvalid, axi.rvalid & axi.rready & axi.rlast)
        m.d.sync += outstanding.eq(outstanding + address_taken - burst_ended)

        # -- the data side: the rows through the realigner, back to back
        m.submodules.realigner = realigner = Realigner(width)
        head = row_entry(rows.r_data)
        m.d.comb += [realigner.row.p.eq(head.row), realigner.row.valid.eq(rows.r_rdy),
                     rows.r_en.eq(realigner.row.ready)]

        # LOAD: R beats in, buffer words out
        write_word = Signal(sram_word_bits(config) + 1)
        m.d.comb += [
            realigner.i.payload.eq(Mux(store, 0, axi.rdata)),
            axi.rready.eq(~store & realigner.i.ready),
            self.sram_write.p.buffer.eq(t.buffer),
            self.sram_write.p.addr.eq(write_word),
            self.sram_write.p.data.eq(realigner.o.p.data),
            self.sram_write.p.strobe.eq(realigner.o.p.strobe),
        ]

        # STORE: the buffer reader requests each row's words a cycle ahead into a small queue
        m.submodules.words = words = fifo.SyncFIFOBuffered(width=config.axi_data_width, depth=8)
        read_head = row_entry(read_rows.r_data)
        read_word = Signal(sram_word_bits(config) + 1)
        reading = Signal()                               # words of the current row to request
        reads_left = Signal(SRAM_ADDRESS_BITS)
        requested = Signal()
        space = words.level + requested < words.depth
        m.d.comb += read_rows.r_en.eq(~reading)
        with m.If(read_rows.r_rdy & ~reading):
            m.d.sync += [reading.eq(1), read_word.eq(read_head.sram_word), reads_left.eq(
                (read_head.row.src_offset + read_head.row.length + width - 1) >> lg)]
        m.d.comb += [
            self.sram_read.p.buffer.eq(t.buffer),
            self.sram_read.p.addr.eq(read_word),
            self.sram_read.valid.eq(reading & space),
            words.w_data.eq(self.sram_read_data),
            words.w_en.eq(requested),
        ]
        read_taken = self.sram_read.valid & self.sram_read.ready
        m.d.sync += requested.eq(read_taken)
        with m.If(read_taken):
            m.d.sync += [read_word.eq(read_word + 1), reads_left.eq(reads_left - 1)]
            with m.If(reads_left == 1):
                m.d.sync += reading.eq(0)

        beat = Signal(range(MAX_BURST_BEATS + 1))
        with m.If(store):
            m.d.comb += [
                realigner.i.payload.eq(words.r_data), realigner.i.valid.eq(words.r_rdy),
                words.r_en.eq(realigner.i.ready),
                axi.wdata.eq(realigner.o.p.data), axi.wstrb.eq(realigner.o.p.strobe),
                axi.wlast.eq(beat == lengths.r_data - 1),
                axi.wvalid.eq(realigner.o.valid & lengths.r_rdy),
                realigner.o.ready.eq(axi.wready & lengths.r_rdy),
            ]
            with m.If(axi.wvalid & axi.wready):
                m.d.sync += [beat.eq(Mux(axi.wlast, 0, beat + 1)),
                             perf.bytes_written.eq(perf.bytes_written
                                                   + sum(axi.wstrb[n] for n in range(width)))]
                m.d.comb += lengths.r_en.eq(axi.wlast)
        with m.Else():
            m.d.comb += [realigner.i.valid.eq(axi.rvalid),
                         realigner.o.ready.eq(self.sram_write.ready),
                         self.sram_write.valid.eq(realigner.o.valid)]
            with m.If(realigner.o.valid & self.sram_write.ready):
                m.d.sync += [write_word.eq(write_word + 1),
                             perf.bytes_read.eq(perf.bytes_read
                                                + sum(realigner.o.p.strobe[n] for n in range(width)))]
        # a new row's first buffer word (after the increment above: it wins)
        with m.If(realigner.row.valid & realigner.row.ready):
            m.d.sync += write_word.eq(head.sram_word)

        # -- done when every row has been issued and has moved, and every burst has ended
        with m.If(running & ~checking & issued & (outstanding == 0) & ~rows.r_rdy & ~read_rows.r_rdy
                  & ~reading & ~realigner.busy & ~words.r_rdy & ~address_taken):
            m.d.sync += running.eq(0)
        return m
