"""The MAC array: ``mac_rows`` output channels, each a dot product of ``mac_cols`` int8 weights with
int8 activations per cycle, accumulated in int32 over the words of a row.

One datapath for dense and M:N weights: each lane multiplies one kept weight by the activation its
index selects from the cycle's window (``mac_cols * M / N`` inputs), so an N:M word covers M/N times
the inputs of a dense one in the same cycle.
"""

from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..cycles import MAC_ARRAY_LATENCY
from ..formats.expert_ffn import mac_in, mac_out, weight_word
from .arith import tree_sum

__all__ = ["MacArray"]


class MacArray(wiring.Component):
    """``mac_rows x mac_cols`` int8 multipliers with an adder tree and an accumulator per row.

    A four-stage pipeline (select activations, multiply, add, accumulate) taking one word per
    cycle; a row leaves on `o` after the word marked `last`. A stall on `o` holds every stage.

    Ports
    -----
    i : stream of `formats.expert_ffn.mac_in(config, tag_bits)`
    o : stream of `formats.expert_ffn.mac_out(config, tag_bits)`
    """

    LATENCY = MAC_ARRAY_LATENCY      # `moeaccel.cycles` builds the engine's formula on it

    def __init__(self, config: AccelConfig, tag_bits: int = 0):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"MacArray needs an AccelConfig, not {config!r}")
        self.config, self.tag_bits = config, tag_bits
        super().__init__({
            "i": In(stream.Signature(mac_in(config, tag_bits))),
            "o": Out(stream.Signature(mac_out(config, tag_bits))),
        })

    def _candidates(self, window, weights, row: int, lane: int) -> list:
        """The activation lane `lane` of row `row` multiplies, for each pattern (in config order)."""
        config = self.config
        choices = []
        for pattern in config.patterns:
            group, slot = divmod(lane, pattern.n)
            if not pattern.code_bits:
                choices.append(window[lane])
                continue
            word = data.View(weight_word(config.mac_rows, config.mac_cols, pattern),
                             weights[:weight_word(config.mac_rows, config.mac_cols, pattern).size])
            offset = Array(combo[slot] for combo in pattern.combinations)[word.codes[row][group]]
            group_inputs = Array(window[group * pattern.m + index] for index in range(pattern.m))
            choices.append(group_inputs[offset])
        return choices

    def elaborate(self, platform):
        m = Module()
        config = self.config
        rows, cols = config.mac_rows, config.mac_cols
        sum_bits = 16 + (cols - 1).bit_length()

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        m.d.comb += self.i.ready.eq(advance)

        # Stage control: valid, first, last and tag of stages 1-3; stage 4 is the output.
        valid = [Signal(name=f"stage{n}_valid") for n in (1, 2, 3)]
        first = [Signal(name=f"stage{n}_first") for n in (1, 2, 3)]
        last = [Signal(name=f"stage{n}_last") for n in (1, 2, 3)]
        tag = [Signal(self.tag_bits, name=f"stage{n}_tag") for n in (1, 2, 3)]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid), first[0].eq(self.i.p.first), last[0].eq(self.i.p.last),
                tag[0].eq(self.i.p.tag),
            ]
            for n in (1, 2):
                m.d.sync += [valid[n].eq(valid[n - 1]), first[n].eq(first[n - 1]),
                             last[n].eq(last[n - 1]), tag[n].eq(tag[n - 1])]
            m.d.sync += self.o.valid.eq(valid[2] & last[2])
            with m.If(valid[2] & last[2]):
                m.d.sync += self.o.p.tag.eq(tag[2])

        dense = weight_word(rows, cols, config.patterns[0])        # the values lead every word
        values = data.View(dense, self.i.p.weights[:dense.size]).values
        for row in range(rows):
            products = []
            for lane in range(cols):
                activation = Signal(signed(8), name=f"act_r{row}_l{lane}")
                weight = Signal(signed(8), name=f"w_r{row}_l{lane}")
                product = Signal(signed(16), name=f"prod_r{row}_l{lane}")
                choice = Array(self._candidates(self.i.p.window, self.i.p.weights, row, lane))
                with m.If(advance):
                    m.d.sync += [
                        activation.eq(choice[self.i.p.pattern]),               # stage 1
                        weight.eq(values[row][lane]),
                        product.eq(activation * weight),                       # stage 2
                    ]
                products.append(product)
            row_sum = Signal(signed(sum_bits), name=f"sum_r{row}")
            accumulator = self.o.p.sums[row]
            with m.If(advance):
                m.d.sync += row_sum.eq(tree_sum(products))                    # stage 3
                with m.If(valid[2]):                                           # stage 4
                    with m.If(first[2]):
                        m.d.sync += accumulator.eq(row_sum)
                    with m.Else():
                        m.d.sync += accumulator.eq(accumulator + row_sum)
        return m
