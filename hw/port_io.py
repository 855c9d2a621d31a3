"""What the accelerator top's compute ports share: a reader of rows from the buffers' unit side,
word by word, into a small queue (`RowReader`), and an unpacker cutting a DRAM stream into
elements (`Unpacker`), and a reader of records from a buffer's direct port (`RecordReader`)."""

from amaranth.hdl import Cat, Const, Mux, ResetInserter, Signal
from amaranth.lib import fifo

from ..formats.buffers import Buffer
from ..formats.instructions import ADDRESS_BITS

__all__ = ["RowReader", "Unpacker", "RecordReader", "log2"]

QUEUE = 4                       # words a row reader holds for its unit


def log2(value: int) -> int:
    """Bits of an index below `value` (``log2`` of a power of two)."""
    return (value - 1).bit_length()


class RowReader:
    """Requests a command's rows from a buffer, word by word, into a queue of raw words."""

    def __init__(self, m, config, name: str, word_bytes: int, read, read_data, start):
        self.word_bytes = word_bytes              # the widest word: 4 x lanes (REQUANT) or lanes
        bus = config.axi_data_bytes
        lg = log2(bus)
        self.queue = q = ResetInserter(start)(fifo.SyncFIFO(width=8 * word_bytes, depth=QUEUE))
        m.submodules[f"{name}_queue"] = q
        self.buffer = Signal(Buffer, name=f"{name}_buffer")
        self.rows_left = Signal(16, name=f"{name}_rows_left")
        self.words = Signal(16, name=f"{name}_words")        # words a row
        self.stride = Signal(ADDRESS_BITS, name=f"{name}_stride")
        self.step = Signal(range(4 * word_bytes + 1), name=f"{name}_step")   # bytes a word
        self.beats = Signal(range(word_bytes + 1), name=f"{name}_beats")     # requests a word
        self.row = Signal(ADDRESS_BITS, name=f"{name}_row")                   # row's first byte
        self.word = Signal(16, name=f"{name}_word")
        self.beat = Signal(range(word_bytes + 1), name=f"{name}_beat")
        self.stop = Signal(name=f"{name}_stop")
        byte = self.row + self.word * self.step + (self.beat << lg)
        pending = Signal(name=f"{name}_pending")          # a request answered next cycle
        pending_offset = Signal(range(bus), name=f"{name}_pending_offset")
        pending_last = Signal(name=f"{name}_pending_last")
        filling = Signal(8 * word_bytes, name=f"{name}_filling")
        in_word = Signal(name=f"{name}_in_word")          # a word's requests have begun
        active = (self.rows_left != 0) & ~self.stop
        # a word begins when the queue has a place for it beside the one that may be landing
        room = q.level + (pending & pending_last) < QUEUE
        m.d.comb += [read.p.buffer.eq(self.buffer), read.p.addr.eq(byte >> lg),
                     read.valid.eq(active & (room | in_word))]
        taken = read.valid & read.ready
        m.d.sync += pending.eq(taken)
        last_beat = self.beat + 1 == self.beats
        with m.If(taken):
            m.d.sync += [pending_offset.eq(byte[:lg] if lg else 0), pending_last.eq(last_beat),
                         in_word.eq(~last_beat)]
            with m.If(last_beat):
                m.d.sync += [self.beat.eq(0), self.word.eq(self.word + 1)]
                with m.If(self.word + 1 == self.words):
                    m.d.sync += [self.word.eq(0), self.row.eq(self.row + self.stride),
                                 self.rows_left.eq(self.rows_left - 1)]
            with m.Else():
                m.d.sync += self.beat.eq(self.beat + 1)
        # the answer: the word's bytes from the beat (a narrow word at its offset in the beat)
        beat_data = (read_data >> (pending_offset << 3))[:8 * bus]
        if word_bytes > bus:                  # wide words: the beats shift in from the top
            assembled = Mux(self.beats == 1, beat_data, Cat(filling[8 * bus:], beat_data))
        else:
            assembled = beat_data
        with m.If(pending):
            m.d.sync += filling.eq(assembled)
        m.d.comb += [q.w_data.eq(assembled), q.w_en.eq(pending & pending_last)]
        self.idle = ~active & ~pending


class Unpacker:
    """Bytes of a DRAM stream (bus words with strobes, from byte 0) cut into elements of
    ``2 ** shift`` bytes: ``total`` bytes, the last element zero-padded; ``left`` elements remain."""

    def __init__(self, m, config, largest: int, words, start, total, shift):
        bus = config.axi_data_bytes
        capacity = bus + largest
        held = Signal(8 * capacity)
        count = Signal(range(capacity + 1))
        received = Signal(32)
        left = Signal(32)                                 # elements still to give
        self.o_valid = Signal()
        self.o_data = Signal(8 * largest)
        self.o_ready = Signal()
        self.left = left
        size = Signal(range(largest + 1))
        m.d.comb += size.eq(Const(1, size.shape().width) << shift)
        with m.If(start):
            m.d.sync += [count.eq(0), received.eq(0), held.eq(0),
                         left.eq((total + size - 1) >> shift)]
        given = Mux(count < size, count, size)
        m.d.comb += [
            self.o_valid.eq((left != 0) & ((count >= size) | ((received == total) & (count != 0)))),
            # the element's bytes; those past the stream's end are zero
            self.o_data.eq(held[:8 * largest]
                           & ~(Const(-1, 8 * largest + 1) << (given << 3))[:8 * largest]),
        ]
        popping = self.o_valid & self.o_ready
        after_pop_count = Signal.like(count)
        m.d.comb += after_pop_count.eq(Mux(popping, count - given, count))
        after_pop = Mux(popping, held >> (size << 3), held)
        strobe = words.p.strobe
        n = sum(strobe[i] for i in range(bus))
        mask = Cat(*(strobe[i].replicate(8) for i in range(bus)))
        m.d.comb += words.ready.eq(count <= largest)
        with m.If(words.valid & words.ready):
            m.d.sync += [held.eq(after_pop | ((words.p.data & mask) << (after_pop_count << 3))),
                         count.eq(after_pop_count + n), received.eq(received + n)]
        with m.Elif(popping):
            m.d.sync += [held.eq(after_pop), count.eq(after_pop_count)]
        with m.If(popping):
            m.d.sync += left.eq(left - 1)


class RecordReader:
    """Reads records of ``record_bytes`` (a record index a read) from a buffer's direct read port,
    whose memory words hold ``word // record_bytes`` records: ``record`` is the one asked for the
    cycle before, in DRAM form."""

    def __init__(self, m, name: str, port, record_bytes: int, word: int, index, enable):
        lg = log2(max(1, word // record_bytes))
        slot = Signal(max(1, lg), name=f"{name}_slot")
        m.d.comb += [port.addr.eq(index >> lg), port.en.eq(enable)]
        with m.If(enable):
            m.d.sync += slot.eq(index[:lg] if lg else 0)
        self.record = (port.data.word_select(slot, 8 * record_bytes) if lg
                       else port.data[:8 * record_bytes])
