"""The Expert-FFN engine's weight loader: bus beats into packed weight words, words into blocks, the
blocks into the engine's two weight banks in turn, each bank held full until the engine has read its
block."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..config import AccelConfig
from ..formats.expert_ffn import ffn_command, weight_word_beats
from .loops import Loop, LoopNest

__all__ = ["WeightLoader"]


class WeightLoader(wiring.Component):
    """Loads a pass's weight blocks (one per tile, ``chunks`` words each) into two banks, block
    ``b`` into bank ``b % 2``.

    A word of the pass's pattern takes `weight_word_beats` beats. Beats shift into an assembly
    register from the top, so after a word's ``n`` beats it sits in the register's top ``n`` beats;
    it is written to the bank in the cycle its last beat is taken. A bank is `full` from the
    cycle after its block's last word until the engine `release`\\ s it; beats for a full bank wait.

    Ports
    -----
    beats : stream of bus beats (``axi_data_width`` bits): the pass's blocks, packed by
        `sw.sparsity.pack`; taken only while `active`
    bank_write : the two banks' write ports (``weight_word_bits`` wide, ``weight_bank_words`` deep)
    full : one bit per bank: it holds a whole block the engine has not released
    release : one bit per bank: the engine has read the bank's block (clears `full`)
    start : a pass begins: the next beat starts word 0 of block 0, in bank 0
    active : a pass that takes weights is under way
    pattern, chunks, blocks : the pass's sparsity pattern (an index into ``config.patterns``), its
        words per block and its blocks (`formats.expert_ffn.ffn_command`'s ``pattern``, ``chunks`` and
        ``tiles``), held while `active`
    """

    LATENCY = 1        # cycles from a block's last beat to its bank's `full` bit

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"WeightLoader needs an AccelConfig, not {config!r}")
        self.config = config
        command = ffn_command(config)
        bank_port = memory.WritePort.Signature(addr_width=ceil_log2(config.weight_bank_words),
                                               shape=unsigned(config.weight_word_bits))
        super().__init__({
            "beats": In(stream.Signature(unsigned(config.axi_data_width))),
            "bank_write": In(bank_port).array(2),
            "full": Out(2),
            "release": In(2),
            "start": In(1),
            "active": In(1),
            "pattern": In(command["pattern"].shape),
            "chunks": In(command["chunks"].shape),
            "blocks": In(command["tiles"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        patterns, bus = config.patterns, config.axi_data_width
        beats_of = Array(Const(weight_word_beats(config, p), 8) for p in patterns)
        max_beats = max(weight_word_beats(config, p) for p in patterns)

        assembly = Signal(max_beats * bus)
        shifted = Signal(max_beats * bus)
        beat = Signal(range(max_beats + 1))
        fill_word = Signal(range(config.weight_bank_words + 1))
        fill_bank = Signal()
        blocks_loaded = Signal(range(config.max_tiles + 1))
        # blocks / words of a block / beats of a word; the block count runs on past the last
        loading = LoopNest(Loop(blocks_loaded, self.blocks), Loop(fill_word, self.chunks),
                           Loop(beat, beats_of[self.pattern]), at_end="count")

        word_done = Signal()
        block_done = Signal()
        accepted = Signal()
        # a pattern's word is the top weight_word_beats of the assembly, its bits at the bottom
        words = Array(shifted[(max_beats - weight_word_beats(config, p)) * bus:]
                      [:config.weight_word_bits] for p in patterns)
        m.d.comb += [
            self.beats.ready.eq(self.active & (blocks_loaded < self.blocks)
                                & ~self.full.bit_select(fill_bank, 1)),
            accepted.eq(self.beats.valid & self.beats.ready),
            shifted.eq(Cat(assembly[bus:], self.beats.payload)),
            word_done.eq(loading.last(beat)),
            block_done.eq(loading.last(fill_word)),
        ]
        for n, port in enumerate(self.bank_write):
            m.d.comb += [
                port.addr.eq(fill_word),
                port.data.eq(words[self.pattern]),
                port.en.eq(accepted & word_done & (fill_bank == n)),
            ]
        with m.If(accepted):
            m.d.sync += assembly.eq(shifted)
            loading.step(m)
            with m.If(word_done & block_done):
                m.d.sync += fill_bank.eq(~fill_bank)
        with m.If(self.start):
            loading.restart(m)
            m.d.sync += fill_bank.eq(0)

        fill = Signal(2)
        m.d.comb += fill.eq(Mux(accepted & word_done & block_done, 1 << fill_bank, 0))
        m.d.sync += self.full.eq((self.full & ~self.release) | fill)
        return m
