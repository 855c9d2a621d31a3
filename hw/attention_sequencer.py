"""The attention unit's sequencer: reads an attention call's words from memory in the unit's order
(per query group, the group's Q rows once, then each key's K row and V row once) and writes the
output rows back, for `hw.attention.Attention` on a memory of its own (its regression and
resource rows). On the accelerator's top, `hw.attention_port` reads DRAM in the same order
(`group_extent`).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.attention import SEQUENCER_COUNTERS, attention_word, sequencer_command
from .loops import Loop, LoopNest

__all__ = ["AttentionSequencer", "group_extent"]


def group_extent(cmd, first_row, row0_position, group: int):
    """Query rows of the group starting at `first_row`, and the keys it streams
    (`sw.attention.group_keys`): all of them, or under the causal mask up to its last row's position
    (`row0_position` is the key position of `first_row`)."""
    remaining = cmd.seq_q - first_row
    rows = Mux(remaining < group, remaining, group)
    visible = row0_position + rows
    return rows, Mux(cmd.causal & (visible < cmd.seq_kv), visible, cmd.seq_kv)


class AttentionSequencer(wiring.Component):
    """Reads an attention call's words from memory in the unit's order and writes its output rows
    back: per query group, the group's Q rows once, then each key's K row and V row once.

    The attention side of the load and store queues: a word a cycle from a memory read port (one
    cycle of latency), held while the unit holds it; output words written as they leave the unit.

    Ports
    -----
    cmd : stream of `sequencer_command(config, address_bits)`; accepted when idle
    words : stream of `formats.attention.attention_word(config)` into the unit's ``data``
    results : stream of `formats.attention.attention_word(config)` from the unit's ``out``; always taken
    read, write : the memory's read and write ports
    abort : the unit refused the call (its ``error``): stop and go idle
    busy : words remain to be read or written
    perf : `formats.attention.SEQUENCER_COUNTERS`: words read from and written to the memory since
        the last call began
    """

    def __init__(self, config: AccelConfig, address_bits: int):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"AttentionSequencer needs an AccelConfig, not {config!r}")
        if not isinstance(address_bits, int) or address_bits < 1:
            raise ValueError(f"AttentionSequencer address_bits must be a positive integer, not "
                             f"{address_bits!r}")
        self.config = config
        self.address_bits = address_bits
        word = attention_word(config)
        super().__init__({
            "cmd": In(stream.Signature(sequencer_command(config, address_bits))),
            "words": Out(stream.Signature(word)),
            "results": In(stream.Signature(word)),
            "read": In(memory.ReadPort.Signature(addr_width=address_bits, shape=word)),
            "write": In(memory.WritePort.Signature(addr_width=address_bits, shape=word)),
            "abort": In(1),
            "busy": Out(1),
            "perf": Out(SEQUENCER_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config, group = self.config, self.config.attention_group
        cmd = Signal(sequencer_command(self.config, self.address_bits))
        call = cmd.attention
        row_q = Signal(range(config.attention_row_words + 1))
        row_kv = Signal.like(row_q)
        seq_bits = config.max_seq_len.bit_length()
        first_row = Signal(seq_bits)
        row0_position = Signal(seq_bits + 1)
        rows = Signal(range(group + 1))
        keys = Signal(seq_bits)
        key = Signal(seq_bits)
        every_key = LoopNest(Loop(key, keys), at_end="count")      # the group's K and V rows
        count = Signal(range(group * config.attention_row_words + 1))   # words left in this part
        q_address, k_address, v_address, o_address = (
            Signal(self.address_bits, name=name) for name in ("q_address", "k_address",
                                                               "v_address", "o_address"))
        address = Signal(self.address_bits)
        issuing = Signal()
        outputs_left = Signal(range(config.max_seq_len * config.attention_row_words + 1))

        # reads: the read port's data register is the stream's payload, held (en low) until taken
        advance = ~self.words.valid | self.words.ready
        m.d.comb += [self.read.addr.eq(address), self.read.en.eq(advance),
                     self.words.payload.eq(self.read.data)]
        with m.If(advance):
            m.d.sync += self.words.valid.eq(issuing)
        with m.If(advance & issuing):
            m.d.sync += self.perf.words_read.eq(self.perf.words_read + 1)

        # writes: every output word to the next O address
        m.d.comb += [self.results.ready.eq(1), self.write.addr.eq(o_address),
                     self.write.data.eq(self.results.payload),
                     self.write.en.eq(self.results.valid)]
        with m.If(self.results.valid):
            m.d.sync += [o_address.eq(o_address + 1), outputs_left.eq(outputs_left - 1),
                         self.perf.words_written.eq(self.perf.words_written + 1)]
            with m.If(outputs_left == 1):
                m.d.sync += self.busy.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.busy)
                with m.If(self.cmd.valid & ~self.busy):
                    c = self.cmd.payload
                    heads = c.attention.kv_heads * c.attention.rep
                    m.d.sync += [cmd.eq(c), row_q.eq(heads * c.attention.head_words),
                                 row_kv.eq(c.attention.kv_heads * c.attention.head_words),
                                 first_row.eq(0), q_address.eq(c.q_base), o_address.eq(c.o_base),
                                 row0_position.eq(c.attention.seq_kv - c.attention.seq_q),
                                 outputs_left.eq(c.attention.seq_q * heads * c.attention.head_words),
                                 self.busy.eq(1), self.perf.eq(0)]
                    m.next = "GROUP"

            def stop_if_refused():
                """The unit refused the call: no word will ever be taken."""
                with m.If(self.abort):
                    m.d.sync += [self.busy.eq(0), self.words.valid.eq(0)]
                    m.next = "IDLE"

            with m.State("GROUP"):
                group_rows, group_keys = group_extent(call, first_row, row0_position, group)
                m.d.sync += [rows.eq(group_rows), keys.eq(group_keys),
                             count.eq(group_rows * row_q), k_address.eq(cmd.k_base),
                             v_address.eq(cmd.v_base)]
                every_key.restart(m)
                m.next = "Q"
                stop_if_refused()

            def part(pointer, then):
                """Read `count` words from `pointer` on; then `then()`."""
                m.d.comb += [address.eq(pointer), issuing.eq(~self.abort)]
                with m.If(advance):
                    m.d.sync += [pointer.eq(pointer + 1), count.eq(count - 1)]
                    with m.If(count == 1):
                        then()
                stop_if_refused()

            with m.State("Q"):
                def q_done():
                    m.d.sync += count.eq(row_kv)
                    m.next = "K"
                part(q_address, q_done)

            with m.State("K"):
                def k_done():
                    m.d.sync += count.eq(row_kv)
                    m.next = "V"
                part(k_address, k_done)

            with m.State("V"):
                def v_done():
                    m.d.sync += count.eq(row_kv)
                    every_key.step(m)
                    with m.If(every_key.done):
                        m.d.sync += [first_row.eq(first_row + group),
                                     row0_position.eq(row0_position + group)]
                        with m.If(first_row + group >= call.seq_q):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "GROUP"
                    with m.Else():
                        m.next = "K"
                part(v_address, v_done)
        return m
