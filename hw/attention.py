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
from ..formats import attention as attention_formats
from ..formats.attention import ATTENTION_COUNTERS, attention_command, attention_word
from ..formats.rules import refused_by
from ..sw import attention as sa
from ..sw import numerics as nx
from .arith import exp_fixed, reciprocal_step, round_shift, round_shift_saturate, tree_sum
from .attention_sequencer import group_extent
from .attention_sizing import RECIP_OUT_BITS, attention_widths
from .loops import Loop, LoopNest

__all__ = ["Attention"]

class Attention(wiring.Component):
    """The attention unit of one `AccelConfig`.

    Ports
    -----
    cmd : stream of `formats.attention.attention_command(config)`; accepted when idle, starts a
        call
    data : stream of `formats.attention.attention_word(config)`: Q, K and V words in
        `sw.attention.stream_words` order
    out : stream of `formats.attention.attention_word(config)`: the output rows, in order,
        ``heads x head_words`` words each
    busy : a call is under way
    error : the last command was refused (`formats.attention.check`: a zero count, more than the
        configuration holds, a causal call with more queries than keys, a shift beyond 47)
    perf : `formats.attention.ATTENTION_COUNTERS`, cleared when a call starts
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
        every_key = LoopNest(Loop(key, keys), at_end="count")

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
        # a K or V row: key heads, their words, each word held for the `rep` query heads
        row_walk = LoopNest(Loop(kv_head, cmd.kv_heads), Loop(word_index, cmd.head_words),
                            Loop(rep_index, cmd.rep), at_end="count")
        last_rep = row_walk.last(rep_index)
        last_word = row_walk.last(word_index)

        def restart_row():
            row_walk.restart(m)
            m.d.sync += head_base.eq(0)

        def step_row():
            """Advance over the words of a K or V row; each word is held for `rep` cycles."""
            row_walk.step(m)
            with m.If(row_walk.wraps(word_index)):
                m.d.sync += head_base.eq(head_base + cmd.rep)

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
                dot = tree_sum(products[g])
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
        first_key = every_key.first(key)
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
        divide_steps = LoopNest(Loop(step, nx.ATTENTION_RECIP_BITS + 1), at_end="count")

        # -- drain: read the accumulators a word a cycle, normalise and requantise into `out`
        drain_row = Signal(range(group))
        drain_address = Signal(range(row_words))
        drain_word = Signal(range(row_words))          # word within the head
        drain_head = Signal(range(max_heads))
        # the group's output rows word by word, and each word's place: its head, its word there
        drain_rows = LoopNest(Loop(drain_row, rows), Loop(drain_address, row_q), at_end="count")
        drain_words = LoopNest(Loop(drain_head, heads), Loop(drain_word, cmd.head_words),
                               at_end="count")
        every_head = LoopNest(Loop(drain_head, heads))  # the reciprocals, a head at a time
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
            m.d.sync += perf.output_stall_cycles.eq(perf.output_stall_cycles + 1)

        q_row = Signal(range(group))
        q_address = Signal(range(row_words))
        q_words = LoopNest(Loop(q_row, rows), Loop(q_address, row_q), at_end="count")

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    total_heads = c.kv_heads * c.rep
                    refused = refused_by(attention_formats.rules(config, c))
                    m.d.sync += self.error.eq(refused)
                    with m.If(~refused):
                        m.d.sync += [cmd.eq(c), heads.eq(total_heads),
                                     row_q.eq(total_heads * c.head_words), first_row.eq(0),
                                     row0_position.eq(c.seq_kv - c.seq_q), self.busy.eq(1),
                                     perf.eq(0)]
                        m.next = "GROUP"

            with m.State("GROUP"):
                group_rows, group_keys = group_extent(cmd, first_row, row0_position, group)
                m.d.sync += [rows.eq(group_rows), keys.eq(group_keys)]
                q_words.restart(m)
                every_key.restart(m)
                m.next = "Q_WORDS"

            with m.State("Q_WORDS"):
                m.d.comb += self.data.ready.eq(1)
                with m.If(self.data.valid):
                    for g in range(group):
                        m.d.comb += [q_write[g].addr.eq(q_address), q_write[g].data.eq(self.data.payload.data),
                                     q_write[g].en.eq(q_row == g)]
                    q_words.step(m)
                    with m.If(q_words.done):
                        restart_row()
                        m.next = "K_ROW"
                with m.Else():
                    m.d.sync += perf.input_stall_cycles.eq(perf.input_stall_cycles + 1)

            def take_word(values: bool, then: str):
                m.d.comb += self.data.ready.eq(last_rep)
                with m.If(self.data.valid):
                    m.d.sync += [a_valid.eq(1), a_values.eq(values), a_word.eq(self.data.payload.data),
                                 a_rep.eq(rep_index), a_first.eq(row_walk.first(word_index)),
                                 a_last.eq(last_word), a_head.eq(head), a_address.eq(address)]
                    step_row()
                    with m.If(row_walk.done):
                        then()
                with m.Else():
                    m.d.sync += perf.input_stall_cycles.eq(perf.input_stall_cycles + 1)

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
                    every_key.step(m)
                    with m.If(every_key.done):
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
                divide_steps.restart(m)
                m.next = "DIVIDE"

            with m.State("DIVIDE"):                    # 2**40 // sum, one bit a cycle
                for g in range(group):
                    reciprocal_step(m, divide_steps.first(step), remainder[g], quotient[g],
                                    divisor[g])
                divide_steps.step(m)
                with m.If(divide_steps.done):
                    m.next = "DIVIDE_STORE"

            with m.State("DIVIDE_STORE"):
                m.d.comb += [recip_write.addr.eq(drain_head), recip_write.en.eq(1)]
                for g in range(group):
                    m.d.comb += recip_write.data[g].eq(quotient[g])
                every_head.step(m)
                with m.If(every_head.done):
                    drain_rows.restart(m)
                    drain_words.restart(m)
                    m.d.sync += [issued.eq(0), pending.eq(0)]
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
                        drain_rows.step(m)
                        with m.If(drain_rows.last(drain_address)):
                            drain_words.restart(m)      # the next row starts at head 0, word 0
                        with m.Else():
                            drain_words.step(m)
                        with m.If(drain_rows.done):
                            m.d.sync += issued.eq(1)
                    with m.If(issued & ~pending):
                        m.d.sync += [first_row.eq(first_row + group),
                                     row0_position.eq(row0_position + group)]
                        with m.If(first_row + group >= cmd.seq_q):
                            m.d.sync += self.busy.eq(0)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "GROUP"
        return m
