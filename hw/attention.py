"""Attention with computation reordering: keys and values stream through once per group of query
rows, all heads in one pass, with a single-pass (online) softmax. Exactly `sw.attention.attention_fixed`.

For each group of ``attention_group`` (G) query rows the unit takes, on one stream of bus words
(`sw.attention.stream_words`): the rows' Q words, then for each key ``j`` its K row and its V row.

* **K row.** Each word (one head's slice of ``W = axi_data_bytes`` values) meets the same slice of
  every query row of the group: ``G x W`` MACs a cycle, held for ``rep`` cycles under grouped-query
  attention (one cycle per query head sharing the key head). A head's score is final at its last
  word and goes straight into the softmax pipeline, G rows at once: Q8 logit, compare with the running
  maximum, one ``exp_fixed`` (of minus the distance), update the running sum; the rescale factor ``r``
  and the weight ``p`` of this key are kept per (row, head).
* **V row.** Each word updates the accumulators ``acc = round_shift(acc * r, 15) + p * v``: the rescale
  when the maximum moved is folded into the same pass, so it costs no cycles.
* **End of the group.** One exact reciprocal per (row, head) (G restoring dividers in parallel),
  then the rows drain through ``acc * recip`` and the output requantisation, a word a cycle.

On-chip state is G x d_model (Q words, accumulators) plus G x heads (softmax state): it does not grow
with the sequence length. A group streams ``2 x keys x kv_heads x head_words`` words and computes
``rep`` cycles for each, so the G x W lanes are busy except for a pipeline drain between a K row and
its V row (3 cycles), the reciprocals and the drain at the end of a group.
"""

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..sw import attention as sa
from ..sw import numerics as nx
from .arith import exp_fixed, reciprocal_step, round_shift, round_shift_saturate
from .layouts import attention_command, attention_word

__all__ = ["Attention", "AttentionSequencer", "ATTENTION_COUNTERS", "attention_widths",
           "attention_state_bytes", "command_fields",
           "sequencer_command"]

ATTENTION_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),       # cycles with a call under way
    "words_in": unsigned(32),          # Q, K and V words taken
    "words_out": unsigned(32),         # O words given
    "input_wait": unsigned(32),        # cycles a phase that takes words found none
    "output_wait": unsigned(32),       # cycles an O word waited for the `out` stream
})

RECIP_OUT_BITS = nx.ATTENTION_RECIP_BITS - nx.GATE_FRAC_BITS + 1     # 2**40 // s for s >= 2**15


def attention_widths(config: AccelConfig) -> dict:
    """Register widths that hold every value `sw.attention` can produce within `config`'s limits."""
    seq_bits = config.max_seq_len.bit_length()
    padded_dim = config.attention_row_words * config.axi_data_bytes
    return {
        "score": 2 * 7 + padded_dim.bit_length() + 1,          # |q . k| <= dim * 2**14
        "sum": nx.GATE_FRAC_BITS + seq_bits,                    # s <= keys * 2**15
        "acc": nx.GATE_FRAC_BITS + 8 + seq_bits,                # |acc| <= keys * 2**15 * 128
    }


def _state_bits(config: AccelConfig) -> int:
    """Softmax state and reciprocal of one (row, head)."""
    widths = attention_widths(config)
    return nx.ATTENTION_LOGIT_BITS + widths["sum"] + 2 * (nx.GATE_FRAC_BITS + 1) + RECIP_OUT_BITS


def attention_state_bytes(config: AccelConfig, shape: "sa.AttentionShape") -> int:
    """On-chip bytes a call occupies: per query row of the group, its Q words and accumulators and
    its softmax state per head, and the partial scores of the query heads sharing a key head. It
    depends on the group, the heads and the head size, never on the sequence length."""
    widths = attention_widths(config)
    words = shape.heads * shape.head_words(config.axi_data_bytes)
    bits = config.attention_group * (words * config.axi_data_bytes * (8 + widths["acc"])
                                     + shape.heads * _state_bits(config)
                                     + shape.rep * widths["score"])
    return -(-bits // 8)


def command_fields(config: AccelConfig, shape: "sa.AttentionShape",
                   params: "sa.AttentionParams") -> dict:
    """The fields of `layouts.attention_command` for one call."""
    return {"seq_q": shape.seq_q, "seq_kv": shape.seq_kv, "kv_heads": shape.kv_heads,
            "rep": shape.rep, "head_words": shape.head_words(config.axi_data_bytes),
            "causal": shape.causal, "score_mult": params.score_mult,
            "score_shift": params.score_shift, "out_mult": params.out_mult,
            "out_shift": params.out_shift}


def group_extent(cmd, first_row, row0_position, group: int):
    """Query rows of the group starting at `first_row`, and the keys it streams
    (`sw.attention.group_keys`): all of them, or under the causal mask up to its last row's position
    (`row0_position` is the key position of `first_row`)."""
    remaining = cmd.seq_q - first_row
    rows = Mux(remaining < group, remaining, group)
    visible = row0_position + rows
    return rows, Mux(cmd.causal & (visible < cmd.seq_kv), visible, cmd.seq_kv)


class Attention(wiring.Component):
    """The attention unit of one `AccelConfig`.

    Ports
    -----
    cmd : stream of `layouts.attention_command(config)`; accepted when idle, starts a call
    data : stream of `layouts.attention_word(config)`: Q, K and V words in `sw.attention.stream_words`
        order
    out : stream of `layouts.attention_word(config)`: the output rows, in order, ``heads x
        head_words`` words each
    busy : a call is under way
    error : the last command was refused (a zero count, more than the configuration holds, a causal
        call with more queries than keys, a shift beyond 47)
    perf : `ATTENTION_COUNTERS`, cleared when a call starts
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Attention needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "cmd": In(stream.Signature(attention_command(config))),
            "data": In(stream.Signature(attention_word(config))),
            "out": Out(stream.Signature(attention_word(config))),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(ATTENTION_COUNTERS),
        })

    @staticmethod
    def onchip_bytes(config: AccelConfig) -> int:
        """Bytes of the unit's memories and its wide registers (partial scores, pipeline, dividers),
        for the configuration's limits; none of them is sized by a sequence length."""
        group, word, row_words = config.attention_group, config.axi_data_bytes, config.attention_row_words
        widths = attention_widths(config)
        registers = (widths["score"] + nx.ATTENTION_LOGIT_BITS                   # S1 score, S2 logit
                     + 2 * widths["sum"] + nx.ATTENTION_RECIP_BITS + 1)          # divider
        bits = (group * row_words * word * (8 + widths["acc"])           # Q words, accumulators
                + group * config.max_heads * _state_bits(config)       # softmax state
                + group * config.max_heads * widths["score"]            # partial scores
                + group * registers)
        return -(-bits // 8)

    def elaborate(self, platform):
        m = Module()
        config = self.config
        group, word = config.attention_group, config.axi_data_bytes
        row_words, max_heads = config.attention_row_words, config.max_heads
        widths = attention_widths(config)
        one = nx.GATE_ONE
        frac = nx.GATE_FRAC_BITS
        perf = self.perf

        state_layout = data.StructLayout({
            "m": signed(nx.ATTENTION_LOGIT_BITS),
            "total": unsigned(widths["sum"]),
            "r": unsigned(frac + 1),
            "p": unsigned(frac + 1),
        })

        # -- memories: per query row of the group, its Q words and accumulators; per head, the
        # softmax state and the reciprocals of all rows
        q_write, q_read, acc_write, acc_read = [], [], [], []
        for g in range(group):
            q_mem = memory.Memory(shape=data.ArrayLayout(signed(8), word), depth=row_words, init=[])
            acc_mem = memory.Memory(shape=data.ArrayLayout(signed(widths["acc"]), word),
                                    depth=row_words, init=[])
            m.submodules[f"q_words{g}"] = q_mem
            m.submodules[f"accumulators{g}"] = acc_mem
            q_write.append(q_mem.write_port())
            q_read.append(q_mem.read_port())
            acc_write.append(acc_mem.write_port())
            acc_read.append(acc_mem.read_port())
        m.submodules.softmax_state = state_mem = memory.Memory(
            shape=data.ArrayLayout(state_layout, group), depth=max_heads, init=[])
        state_write, state_read = state_mem.write_port(), state_mem.read_port()
        m.submodules.reciprocals = recip_mem = memory.Memory(
            shape=data.ArrayLayout(unsigned(RECIP_OUT_BITS), group), depth=max_heads, init=[])
        recip_write, recip_read = recip_mem.write_port(), recip_mem.read_port()

        # -- the call
        cmd = Signal(attention_command(config))
        heads = Signal(range(max_heads + 1))
        row_q = Signal(range(row_words + 1))           # words of a Q or O row
        seq_bits = config.max_seq_len.bit_length()
        first_row = Signal(seq_bits)                   # the group's first query row
        rows = Signal(range(group + 1))                # query rows in this group
        row0_position = Signal(seq_bits + 1)           # key position of the group's first row
        keys = Signal(seq_bits)                        # keys this group streams
        key = Signal(seq_bits)

        # stream position within a K or V row: key head, word within the head, query head of the
        # key head (grouped-query attention)
        kv_head = Signal(range(max_heads))
        head_base = Signal(range(max_heads + 1))       # kv_head * rep
        word_index = Signal(range(row_words))
        rep_index = Signal(range(max_heads))
        head = Signal(range(max_heads))
        address = Signal(range(row_words))
        m.d.comb += [head.eq(head_base + rep_index),
                     address.eq(head * cmd.head_words + word_index)]
        last_rep = rep_index == cmd.rep - 1
        last_word = word_index == cmd.head_words - 1
        last_kv_head = kv_head == cmd.kv_heads - 1

        def restart_row():
            m.d.sync += [kv_head.eq(0), head_base.eq(0), word_index.eq(0), rep_index.eq(0)]

        def step_row():
            """Advance over the words of a K or V row; each word is held for `rep` cycles."""
            with m.If(last_rep):
                m.d.sync += rep_index.eq(0)
                with m.If(last_word):
                    m.d.sync += [word_index.eq(0), kv_head.eq(kv_head + 1),
                                 head_base.eq(head_base + cmd.rep)]
                with m.Else():
                    m.d.sync += word_index.eq(word_index + 1)
            with m.Else():
                m.d.sync += rep_index.eq(rep_index + 1)

        # -- stage A -> B registers of the K and V pipelines
        a_valid = Signal()
        a_values = Signal()                            # a V word (else a K word)
        a_word = Signal(data.ArrayLayout(signed(8), word))
        a_rep = Signal.like(rep_index)
        a_first = Signal()                             # the head's first word
        a_last = Signal()                              # the head's last word
        a_head = Signal.like(head)
        a_address = Signal.like(address)
        m.d.sync += a_valid.eq(0)

        # -- softmax pipeline: S1 (score -> logit), S2 (update the state of (row, head))
        s1_valid, s2_valid = Signal(), Signal()
        s1_head, s2_head = Signal.like(head), Signal.like(head)
        s1_score = [Signal(signed(widths["score"]), name=f"s1_score{g}") for g in range(group)]
        s2_logit = [Signal(signed(nx.ATTENTION_LOGIT_BITS), name=f"s2_logit{g}") for g in range(group)]
        m.d.sync += [s1_valid.eq(0), s2_valid.eq(0)]
        partial = [Array(Signal(signed(widths["score"]), name=f"partial{g}_{t}")
                         for t in range(max_heads)) for g in range(group)]

        # memory ports: read the same address of every row's memory
        for g in range(group):
            m.d.comb += [q_read[g].addr.eq(address), acc_read[g].addr.eq(address),
                         q_read[g].en.eq(1), acc_read[g].en.eq(1)]
        m.d.comb += [state_read.en.eq(1), recip_read.en.eq(1), state_read.addr.eq(s1_head)]

        # the G x W MAC lanes, shared by both rows: q x k for a K word, p x v for a V word
        products = []
        for g in range(group):
            lanes = []
            for w in range(word):
                product = Signal(signed(8 + frac + 2), name=f"product{g}_{w}")
                operand = Mux(a_values, state_read.data[g].p, q_read[g].data[w])
                m.d.comb += product.eq(operand * a_word[w])
                lanes.append(product)
            products.append(lanes)

        # stage B of a K word: G dot products of W lanes into the partial score of (row, head)
        with m.If(a_valid & ~a_values):
            for g in range(group):
                dot = sum(products[g])
                score = Signal(signed(widths["score"]), name=f"score{g}")
                m.d.comb += score.eq(Mux(a_first, 0, partial[g][a_rep]) + dot)
                with m.If(a_last):
                    m.d.sync += s1_score[g].eq(score)
                with m.Else():
                    m.d.sync += partial[g][a_rep].eq(score)
            m.d.sync += [s1_valid.eq(a_last), s1_head.eq(a_head)]

        # S1: the Q8 logit; the state of the head is read meanwhile
        max_product = widths["score"] - 1 + nx.MULT_BITS
        with m.If(s1_valid):
            for g in range(group):
                m.d.sync += s2_logit[g].eq(round_shift_saturate(
                    s1_score[g] * cmd.score_mult, cmd.score_shift, max_product, nx.ATTENTION_LOGIT_BITS))
            m.d.sync += [s2_valid.eq(1), s2_head.eq(s1_head)]

        # S2: running maximum, one exp, running sum; r and p of this key kept for the V row
        first_key = key == 0
        with m.If(s2_valid):
            m.d.comb += [state_write.addr.eq(s2_head), state_write.en.eq(1)]
            for g in range(group):
                old = state_read.data[g]
                new = state_write.data[g]
                logit = s2_logit[g]
                distance = Signal(signed(nx.ATTENTION_LOGIT_BITS + 1), name=f"distance{g}")
                magnitude = Signal(range(sa.EXP_CLAMP + 1), name=f"magnitude{g}")
                exp_value = Signal(frac + 1, name=f"exp{g}")
                m.d.comb += [
                    distance.eq(logit - old.m),
                    magnitude.eq(Mux(distance > sa.EXP_CLAMP, sa.EXP_CLAMP,
                                     Mux(distance < -sa.EXP_CLAMP, sa.EXP_CLAMP,
                                         Mux(distance < 0, -distance, distance)))),
                    exp_value.eq(exp_fixed(-magnitude)),
                ]
                seen = ~cmd.causal | (key <= row0_position + g)
                rises = first_key | (distance > 0)
                r = Signal(frac + 1, name=f"r{g}")
                p = Signal(frac + 1, name=f"p{g}")
                m.d.comb += [
                    r.eq(Mux(~seen, one, Mux(first_key, 0, Mux(rises, exp_value, one)))),
                    p.eq(Mux(~seen, 0, Mux(rises, one, exp_value))),
                    new.m.eq(Mux(seen & rises, logit, old.m)),
                    new.total.eq(round_shift(old.total * r, frac) + p),
                    new.r.eq(r),
                    new.p.eq(p),
                ]

        # stage B of a V word: rescale and accumulate, G x W lanes
        with m.If(a_valid & a_values):
            for g in range(group):
                weights = state_read.data[g]
                m.d.comb += [acc_write[g].addr.eq(a_address), acc_write[g].en.eq(1)]
                for w in range(word):
                    m.d.comb += acc_write[g].data[w].eq(
                        round_shift(acc_read[g].data[w] * weights.r, frac) + products[g][w])

        # -- reciprocals: 2**40 // total for every row of a head at once, one bit a cycle
        divisor = [Signal(widths["sum"], name=f"divisor{g}") for g in range(group)]
        remainder = [Signal(widths["sum"], name=f"remainder{g}") for g in range(group)]
        quotient = [Signal(nx.ATTENTION_RECIP_BITS + 1, name=f"quotient{g}") for g in range(group)]
        step = Signal(range(nx.ATTENTION_RECIP_BITS + 2))

        # -- drain: read the accumulators a word a cycle, normalise and requantise into `out`
        drain_row = Signal(range(group))
        drain_address = Signal(range(row_words))
        drain_word = Signal(range(row_words))          # word within the head
        drain_head = Signal(range(max_heads))
        issued = Signal()                              # every word of the group has been read
        pending = Signal()                             # a word read last cycle, now at the ports
        pending_row = Signal.like(drain_row)
        advance = ~self.out.valid | self.out.ready

        def output_word(row):
            recip = recip_read.data[row]
            result = Signal(attention_word(config))
            for w in range(word):
                acc = Array(acc_read[g].data[w] for g in range(group))[row]
                average = round_shift(acc * recip, nx.ATTENTION_RECIP_BITS - sa.AVG_FRAC_BITS)
                product = average * cmd.out_mult
                m.d.comb += result.data[w].eq(round_shift_saturate(
                    product, cmd.out_shift, len(product), 8))
            return result

        with m.If(self.busy):
            m.d.sync += perf.busy_cycles.eq(perf.busy_cycles + 1)
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += perf.words_in.eq(perf.words_in + 1)
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += perf.words_out.eq(perf.words_out + 1)
        with m.If(self.out.valid & ~self.out.ready):
            m.d.sync += perf.output_wait.eq(perf.output_wait + 1)

        q_row = Signal(range(group))
        q_address = Signal(range(row_words))

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    total_heads = c.kv_heads * c.rep
                    refused = ((c.seq_q == 0) | (c.seq_kv == 0) | (c.kv_heads == 0) | (c.rep == 0)
                               | (c.head_words == 0) | (c.seq_q > config.max_seq_len)
                               | (c.seq_kv > config.max_seq_len) | (total_heads > max_heads)
                               | (total_heads * c.head_words > row_words)
                               | (c.causal & (c.seq_q > c.seq_kv))
                               | (c.score_shift > nx.SHIFT_MAX) | (c.out_shift > nx.SHIFT_MAX))
                    m.d.sync += self.error.eq(refused)
                    with m.If(~refused):
                        m.d.sync += [cmd.eq(c), heads.eq(total_heads),
                                     row_q.eq(total_heads * c.head_words), first_row.eq(0),
                                     row0_position.eq(c.seq_kv - c.seq_q), self.busy.eq(1),
                                     perf.eq(0)]
                        m.next = "GROUP"

            with m.State("GROUP"):
                group_rows, group_keys = group_extent(cmd, first_row, row0_position, group)
                m.d.sync += [rows.eq(group_rows), keys.eq(group_keys), q_row.eq(0),
                             q_address.eq(0), key.eq(0)]
                m.next = "Q_WORDS"

            with m.State("Q_WORDS"):
                m.d.comb += self.data.ready.eq(1)
                with m.If(self.data.valid):
                    for g in range(group):
                        m.d.comb += [q_write[g].addr.eq(q_address), q_write[g].data.eq(self.data.payload.data),
                                     q_write[g].en.eq(q_row == g)]
                    with m.If(q_address == row_q - 1):
                        m.d.sync += [q_address.eq(0), q_row.eq(q_row + 1)]
                        with m.If(q_row == rows - 1):
                            restart_row()
                            m.next = "K_ROW"
                    with m.Else():
                        m.d.sync += q_address.eq(q_address + 1)
                with m.Else():
                    m.d.sync += perf.input_wait.eq(perf.input_wait + 1)

            def take_word(values: bool, then: str):
                m.d.comb += self.data.ready.eq(last_rep)
                with m.If(self.data.valid):
                    m.d.sync += [a_valid.eq(1), a_values.eq(values), a_word.eq(self.data.payload.data),
                                 a_rep.eq(rep_index), a_first.eq(word_index == 0),
                                 a_last.eq(last_word), a_head.eq(head), a_address.eq(address)]
                    step_row()
                    with m.If(last_rep & last_word & last_kv_head):
                        then()
                with m.Else():
                    m.d.sync += perf.input_wait.eq(perf.input_wait + 1)

            with m.State("K_ROW"):
                def k_done():
                    m.next = "K_SETTLE"
                take_word(False, k_done)

            with m.State("K_SETTLE"):                  # the last heads' softmax updates finish
                # S2 may still write this cycle: the first V read, next cycle, sees the write
                with m.If(~a_valid & ~s1_valid):
                    restart_row()
                    m.next = "V_ROW"

            with m.State("V_ROW"):
                m.d.comb += state_read.addr.eq(head)
                def v_done():
                    restart_row()
                    m.d.sync += key.eq(key + 1)
                    with m.If(key == keys - 1):
                        m.d.sync += drain_head.eq(0)
                        m.next = "DIVIDE_READ"
                    with m.Else():
                        m.next = "K_ROW"
                take_word(True, v_done)

            with m.State("DIVIDE_READ"):
                m.d.comb += state_read.addr.eq(drain_head)
                m.next = "DIVIDE_LOAD"

            with m.State("DIVIDE_LOAD"):
                for g in range(group):
                    m.d.sync += [divisor[g].eq(state_read.data[g].total), remainder[g].eq(0),
                                 quotient[g].eq(0)]
                m.d.sync += step.eq(0)
                m.next = "DIVIDE"

            with m.State("DIVIDE"):                    # 2**40 // sum, one bit a cycle
                for g in range(group):
                    reciprocal_step(m, step == 0, remainder[g], quotient[g], divisor[g])
                m.d.sync += step.eq(step + 1)
                with m.If(step == nx.ATTENTION_RECIP_BITS):
                    m.next = "DIVIDE_STORE"

            with m.State("DIVIDE_STORE"):
                m.d.comb += [recip_write.addr.eq(drain_head), recip_write.en.eq(1)]
                for g in range(group):
                    m.d.comb += recip_write.data[g].eq(quotient[g])
                m.d.sync += drain_head.eq(drain_head + 1)
                with m.If(drain_head == heads - 1):
                    m.d.sync += [drain_row.eq(0), drain_address.eq(0), drain_word.eq(0),
                                 drain_head.eq(0), issued.eq(0), pending.eq(0)]
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "DIVIDE_READ"

            with m.State("DRAIN"):
                for g in range(group):
                    m.d.comb += [acc_read[g].addr.eq(drain_address), acc_read[g].en.eq(advance)]
                m.d.comb += [recip_read.addr.eq(drain_head), recip_read.en.eq(advance)]
                with m.If(advance):
                    m.d.sync += [pending.eq(~issued), pending_row.eq(drain_row),
                                 self.out.valid.eq(pending),
                                 self.out.payload.eq(output_word(pending_row))]
                    with m.If(~issued):
                        with m.If(drain_address == row_q - 1):
                            m.d.sync += [drain_address.eq(0), drain_word.eq(0), drain_head.eq(0),
                                         drain_row.eq(drain_row + 1)]
                            with m.If(drain_row == rows - 1):
                                m.d.sync += issued.eq(1)
                        with m.Else():
                            m.d.sync += drain_address.eq(drain_address + 1)
                            with m.If(drain_word == cmd.head_words - 1):
                                m.d.sync += [drain_word.eq(0), drain_head.eq(drain_head + 1)]
                            with m.Else():
                                m.d.sync += drain_word.eq(drain_word + 1)
                    with m.If(issued & ~pending):
                        m.d.sync += [first_row.eq(first_row + group),
                                     row0_position.eq(row0_position + group)]
                        with m.If(first_row + group >= cmd.seq_q):
                            m.d.sync += self.busy.eq(0)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "GROUP"
        return m


def sequencer_command(config: AccelConfig, address_bits: int) -> data.StructLayout:
    """An attention call for `AttentionSequencer`: the unit's command and the word addresses of the
    Q, K, V and O row arrays (rows of ``heads`` or ``kv_heads`` x ``head_words`` words, packed)."""
    address = unsigned(address_bits)
    return data.StructLayout({"attention": attention_command(config), "q_base": address,
                              "k_base": address, "v_base": address, "o_base": address})


class AttentionSequencer(wiring.Component):
    """Reads an attention call's words from memory in the unit's order and writes its output rows
    back: per query group, the group's Q rows once, then each key's K row and V row once.

    The attention side of the load and store queues: a word a cycle from a memory read port (one
    cycle of latency), held while the unit holds it; output words written as they leave the unit.

    Ports
    -----
    cmd : stream of `sequencer_command(config, address_bits)`; accepted when idle
    words : stream of `layouts.attention_word(config)` into the unit's ``data``
    results : stream of `layouts.attention_word(config)` from the unit's ``out``; always taken
    read, write : the memory's read and write ports
    abort : the unit refused the call (its ``error``): stop and go idle
    busy : words remain to be read or written
    reads, writes : words read from and written to the memory since the last call began
    """

    def __init__(self, config: AccelConfig, address_bits: int):
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
            "reads": Out(32),
            "writes": Out(32),
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
            m.d.sync += self.reads.eq(self.reads + 1)

        # writes: every output word to the next O address
        m.d.comb += [self.results.ready.eq(1), self.write.addr.eq(o_address),
                     self.write.data.eq(self.results.payload),
                     self.write.en.eq(self.results.valid)]
        with m.If(self.results.valid):
            m.d.sync += [o_address.eq(o_address + 1), outputs_left.eq(outputs_left - 1),
                         self.writes.eq(self.writes + 1)]
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
                                 self.busy.eq(1), self.reads.eq(0), self.writes.eq(0)]
                    m.next = "GROUP"

            def stop_if_refused():
                """The unit refused the call: no word will ever be taken."""
                with m.If(self.abort):
                    m.d.sync += [self.busy.eq(0), self.words.valid.eq(0)]
                    m.next = "IDLE"

            with m.State("GROUP"):
                group_rows, group_keys = group_extent(call, first_row, row0_position, group)
                m.d.sync += [rows.eq(group_rows), keys.eq(group_keys), key.eq(0),
                             count.eq(group_rows * row_q), k_address.eq(cmd.k_base),
                             v_address.eq(cmd.v_base)]
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
                    m.d.sync += [count.eq(row_kv), key.eq(key + 1)]
                    with m.If(key == keys - 1):
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
