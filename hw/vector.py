"""The vector unit: the element-wise and row-wise operations of a decoder layer between its experts and
its attention (residual adds, products, RMSNorm, LayerNorm, rotary embedding, requantisation, a
shared expert's sigmoid gate), ``vector_lanes`` elements a cycle, exactly `sw.vector`.

* **ADD, MUL, REQUANT, GATE** stream: each word of ``a`` (with its word of ``b``) enters the lane
  pipeline as it arrives. GATE sums each row's ``x . w`` products and, at the row's last word,
  requantises the sum to a Q8 logit and takes its ``sigmoid_fixed``: one GATES entry per row.
* **RMSNORM, LAYERNORM, ROPE** keep each row on chip. While a row streams in it is written to one of
  `ROW_BANKS` row banks, and the norms sum ``x`` and ``x**2`` over it (LayerNorm's centred sum of
  squares is ``n**2 sum(x**2) - n sum(x)**2``, exact). `RowRsqrt` then forms the row's
  ``rsqrt_fixed`` (a normalising shift, a 16-step integer square root and one 48-step reciprocal:
  no divider per element). The row leaves through the lanes from its bank: normalise, scale, bias,
  requantise; ROPE reads each element's partner (``i +- head_dim/2``) and the row's cos and sin
  words from a second port. Three banks let one row stream in while the one before it waits for its
  reciprocal and the one before that leaves, so the lanes take a word every cycle once rows are as
  long as the reciprocal.

Every lane runs one pipeline for every op (`LATENCY` stages from issue to the output register):
``c`` (LayerNorm's ``n x - sum x``), ``p1 = c x b1``, ``t = round_shift(p1, k - 16)`` (the norms) or
``p1``, ``v = a2 x b2 + c2``, ``p3 = v x m``, ``saturate(round_shift(p3, shift))``. The op picks the
operands: e.g. ADD is ``(a x ma) + b x mb`` then ``x 1``, ROPE ``x cos +- partner x sin`` then ``x 1``
shifted by 14, REQUANT ``0 + a`` then ``x multiplier``. A stall on ``o`` or ``gates`` holds the
pipeline; rows still stream into free banks.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..cycles import VECTOR_LATENCY, VECTOR_ROW_BANKS, VECTOR_RSQRT_CYCLES
from ..formats import vector as vector_formats
from ..formats.numbers import GATE_FRAC_BITS, LOGIT_BITS
from ..formats.router import TOKEN_GATE
from ..formats.rules import refused_by
from ..formats.vector import (EPS_LIMIT, VECTOR_COUNTERS, VectorOp, operand_word, vector_b,
                              vector_command, vector_in, vector_out)
from ..sw import vector as sv
from .arith import reciprocal_step, round_shift_saturate, sigmoid_fixed, tree_sum

__all__ = ["VectorUnit", "RowRsqrt", "ROW_BANKS"]

ROW_BANKS = VECTOR_ROW_BANKS
_NORMALISED_BITS = 32              # s is shifted by an even amount into [2**30, 2**32)
_ROOT_BITS = _NORMALISED_BITS // 2


class RowRsqrt(wiring.Component):
    """``sw.vector.rsqrt_fixed`` of one row's sum of squares, in `VECTOR_RSQRT_CYCLES` cycles
    whatever its value: ``s`` shifted by an even ``e`` into ``[2**30, 2**32)`` (one cycle), its
    integer square root (restoring, one bit a cycle), ``2**47 // root`` (restoring, one bit a
    cycle).

    Ports
    -----
    start : In(1), with ``s``: begin (ignored while busy)
    s : In(unsigned(63)), the sum of squares, non-negative
    busy : Out(1)
    done : Out(1), high for one cycle when ``inv`` and ``shift`` hold the result
    inv : Out(unsigned(33)), ``2**47 // isqrt(s << e)``, 0 for ``s == 0``
    shift : Out(unsigned(6)), ``k - 16`` with ``k = 47 - e/2``: the shift of ``c x inv`` to Q16
    """

    def __init__(self):
        super().__init__({
            "start": In(1),
            "s": In(unsigned(63)),
            "busy": Out(1),
            "done": Out(1),
            "inv": Out(unsigned(sv.RSQRT_BITS - _ROOT_BITS + 2)),
            "shift": Out(unsigned(6)),
        })

    @staticmethod
    def half_shift(length):
        """``e / 2`` for an `s` of bit length `length`: ``floor((32 - length) / 2)``, so that
        ``s << e`` (a right shift when ``e < 0``) has bit length 31 or 32."""
        return (_NORMALISED_BITS - length) >> 1

    def isqrt_step(self, m, remainder, root, radicand):
        """One bit of ``isqrt(radicand)``: the next two radicand bits enter the remainder."""
        current = Cat(radicand[-2:], remainder)
        trial = Cat(Const(1, 2), root)
        with m.If(current >= trial):
            m.d.sync += [remainder.eq(current - trial), root.eq(Cat(1, root))]
        with m.Else():
            m.d.sync += [remainder.eq(current), root.eq(Cat(0, root))]
        m.d.sync += radicand.eq(radicand << 2)

    def elaborate(self, platform):
        m = Module()
        s = Signal(unsigned(63))
        length = Signal(range(64))                    # bit length of s
        for bit in range(63):
            with m.If(s[bit]):
                m.d.comb += length.eq(bit + 1)
        half_e = Signal(signed(8))
        m.d.comb += half_e.eq(self.half_shift(length))
        left = (half_e << 1).as_unsigned()[:6]
        right = (-(half_e << 1)).as_unsigned()[:7]
        normalised = Mux(half_e >= 0, s << left, s >> right)[:_NORMALISED_BITS]

        radicand = Signal(_NORMALISED_BITS)
        remainder = Signal(_ROOT_BITS + 3)
        root = Signal(_ROOT_BITS)
        zero = Signal()
        count = Signal(range(sv.RSQRT_BITS + 2))
        div_remainder = Signal(_ROOT_BITS + 1)
        quotient = Signal(sv.RSQRT_BITS + 1)

        m.d.sync += self.done.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.busy.eq(0)
                with m.If(self.start):
                    m.d.sync += s.eq(self.s)
                    m.next = "NORMALISE"
            with m.State("NORMALISE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [radicand.eq(normalised), remainder.eq(0), root.eq(0),
                             zero.eq(s == 0), count.eq(0),
                             self.shift.eq(sv.RSQRT_BITS - sv.NORM_FRAC_BITS - half_e)]
                m.next = "ROOT"
            with m.State("ROOT"):
                m.d.comb += self.busy.eq(1)
                self.isqrt_step(m, remainder, root, radicand)
                m.d.sync += count.eq(count + 1)
                with m.If(count == _ROOT_BITS - 1):
                    m.d.sync += [count.eq(0), div_remainder.eq(0), quotient.eq(0)]
                    m.next = "RECIPROCAL"
            with m.State("RECIPROCAL"):
                m.d.comb += self.busy.eq(1)
                reciprocal_step(m, count == 0, div_remainder, quotient, root)
                m.d.sync += count.eq(count + 1)
                with m.If(count == sv.RSQRT_BITS):
                    m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [self.inv.eq(Mux(zero, 0, quotient)), self.done.eq(1)]
                m.next = "IDLE"
        return m


class VectorUnit(wiring.Component):
    """The vector unit of one `AccelConfig`.

    Ports
    -----
    cmd : stream of `formats.vector.vector_command(config)` (the VECTOR body); accepted when idle
    a : stream of `formats.vector.vector_in(config)`: the rows' words in order, ``rows x
        row_words(width)``; int32 lanes for REQUANT, int8 values (sign-extended) otherwise
    b : stream of `formats.vector.vector_b(config)`: ADD's and MUL's second rows, a word with each
        word of ``a``
    operands : stream of `formats.vector.operand_word(config)`: the norms' weights and biases and
        GATE's weights, ``row_words(width)`` words taken with row 0 (``eps_q`` in the first); ROPE's
        table, ``head_dim / vector_lanes`` words (cos, then sin) taken with each row's first words
    o : stream of `formats.vector.vector_out(config)`: the result rows (every op but GATE), zero
        beyond the row's width
    gates : stream of `formats.router.TOKEN_GATE` (on chip): GATE's entry of each row
    busy : a command is under way
    error : the last command was refused (`formats.vector.check`), or a norm's ``eps_q`` is outside
        ``[0, EPS_LIMIT)``; the unit then takes and gives nothing more
    perf : `formats.vector.VECTOR_COUNTERS`, cleared when a command is accepted
    """

    LATENCY = VECTOR_LATENCY        # issue of a word to its output register (`moeaccel.cycles`)
    Rsqrt = RowRsqrt                 # the rows' reciprocal square root

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"VectorUnit needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "cmd": In(stream.Signature(vector_command(config))),
            "a": In(stream.Signature(vector_in(config))),
            "b": In(stream.Signature(vector_b(config))),
            "operands": In(stream.Signature(operand_word(config))),
            "o": Out(stream.Signature(vector_out(config))),
            "gates": Out(stream.Signature(TOKEN_GATE.onchip(config))),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(VECTOR_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        lanes = config.vector_lanes
        lane_bits = (lanes - 1).bit_length()
        max_words = -(-config.max_inputs // lanes)
        max_table = vector_formats.head_limit(config) // lanes
        perf = self.perf

        # -- the command and what it implies
        cmd = Signal(vector_command(config))
        op = cmd.op
        is_norm = (op == VectorOp.RMSNORM) | (op == VectorOp.LAYERNORM)
        is_ln = op == VectorOp.LAYERNORM
        is_rope = op == VectorOp.ROPE
        is_gate = op == VectorOp.GATE
        is_two = (op == VectorOp.ADD) | (op == VectorOp.MUL)
        is_requant = op == VectorOp.REQUANT
        row_mode = is_norm | is_rope
        words = Signal(range(max_words + 1))          # words per row
        last_lanes = Signal(range(lanes + 1))         # lanes of the last word inside the row
        table_words = Signal(range(max_table + 1))    # ROPE: words per head
        half_words = Signal(range(max_table + 1))     # ROPE: words per half head
        width_squared = Signal(unsigned(2 * cmd.width.shape().width))
        eps = Signal(signed(64))
        running = Signal()
        m.d.comb += self.busy.eq(running)

        def lane_live(word, last_word):
            return [(word != last_word) | (Const(lane) < last_lanes) for lane in range(lanes)]

        # -- memories: the row banks (int8 words) and the operand words
        byte_word = vector_out(config)
        m.submodules.banks = banks = memory.Memory(shape=byte_word, depth=ROW_BANKS * max_words,
                                                   init=[])
        bank_write = banks.write_port()
        bank_x, bank_partner = banks.read_port(), banks.read_port()
        operand_depth = max(max_words, ROW_BANKS * max_table)
        m.submodules.operand_words = operand_words = memory.Memory(
            shape=operand_word(config), depth=operand_depth, init=[])
        operand_write = operand_words.write_port()
        operand_first, operand_second = operand_words.read_port(), operand_words.read_port()

        # -- the lane pipeline's pace: it moves when its output registers are free or being emptied
        advance = Signal()
        m.d.comb += advance.eq((~self.o.valid | self.o.ready) & (~self.gates.valid | self.gates.ready))
        for port in (bank_x, bank_partner, operand_first, operand_second):
            m.d.comb += port.en.eq(advance)

        # -- streaming ops: a word of a (and b, and operands for GATE's row 0) a cycle
        in_row = Signal.like(cmd.rows)
        in_word = Signal(range(max_words + 1))
        in_bank = Signal(range(ROW_BANKS))
        in_last = in_word == words - 1
        out_rows = Signal.like(cmd.rows)
        in_rows = Signal.like(cmd.rows)               # rows fully in a bank
        rs_rows = Signal.like(cmd.rows)               # rows with their reciprocal formed

        want_operand = Mux(row_mode, (is_norm & (in_rows == 0)) | (is_rope & (in_word < table_words)),
                           is_gate & (in_row == 0))
        stream_fire = Signal()
        row_in_fire = Signal()
        inputs_valid = self.a.valid & (~is_two | self.b.valid) & (~want_operand | self.operands.valid)
        stream_wants = running & ~row_mode & (in_row < cmd.rows)
        row_wants = running & row_mode & (in_rows < cmd.rows) & (in_rows - out_rows < ROW_BANKS)
        m.d.comb += [
            stream_fire.eq(stream_wants & advance & inputs_valid),
            row_in_fire.eq(row_wants & inputs_valid),
        ]
        fire_in = stream_fire | row_in_fire
        m.d.comb += [
            self.a.ready.eq(fire_in),
            self.b.ready.eq(fire_in & is_two),
            self.operands.ready.eq(fire_in & want_operand),
        ]
        with m.If(fire_in):
            m.d.sync += in_word.eq(Mux(in_last, 0, in_word + 1))
        with m.If(stream_fire & in_last):
            m.d.sync += in_row.eq(in_row + 1)

        # operand words: the norms' and GATE's at word j, ROPE's table at its bank's table words
        m.d.comb += [
            operand_write.en.eq(fire_in & want_operand),
            operand_write.addr.eq(Mux(is_rope, in_bank * max_table + in_word, in_word)),
            operand_write.data.eq(self.operands.payload),
        ]

        # row ops: the word into its bank, the row's sums
        a_bytes = Signal(byte_word)
        for lane in range(lanes):
            m.d.comb += a_bytes[lane].eq(self.a.payload[lane][:8])
        m.d.comb += [
            bank_write.en.eq(row_in_fire),
            bank_write.addr.eq(in_bank * max_words + in_word),
            bank_write.data.eq(a_bytes),
        ]
        live_in = lane_live(in_word, words - 1)
        word_sum = tree_sum(Mux(live_in[lane], a_bytes[lane], 0) for lane in range(lanes))
        word_squares = tree_sum(Mux(live_in[lane], a_bytes[lane] * a_bytes[lane], 0)
                                for lane in range(lanes))
        sum_bits = 8 + (config.max_inputs - 1).bit_length() + 1
        row_sum = Signal(signed(sum_bits))
        row_squares = Signal(unsigned(2 * 8 + (config.max_inputs - 1).bit_length()))
        sums = [Signal(signed(sum_bits), name=f"bank{b}_sum") for b in range(ROW_BANKS)]
        squares = [Signal.like(row_squares, name=f"bank{b}_squares") for b in range(ROW_BANKS)]
        running_sum = Mux(in_word == 0, 0, row_sum) + word_sum
        running_squares = Mux(in_word == 0, 0, row_squares) + word_squares
        with m.If(row_in_fire):
            m.d.sync += [row_sum.eq(running_sum), row_squares.eq(running_squares)]
            with m.If(in_last):
                m.d.sync += [in_rows.eq(in_rows + 1),
                             in_bank.eq(Mux(in_bank == ROW_BANKS - 1, 0, in_bank + 1))]
                for b in range(ROW_BANKS):
                    with m.If(in_bank == b):
                        m.d.sync += [sums[b].eq(running_sum), squares[b].eq(running_squares)]

        # -- the reciprocal square root of each normed row, in order
        m.submodules.rsqrt = rsqrt = self.Rsqrt()
        rs_bank = Signal(range(ROW_BANKS))
        rs_pending = Signal()                         # started, not done
        bank_sum = Signal(signed(sum_bits))
        bank_squares = Signal.like(row_squares)
        for b in range(ROW_BANKS):
            with m.If(rs_bank == b):
                m.d.comb += [bank_sum.eq(sums[b]), bank_squares.eq(squares[b])]
        n = cmd.width
        centred = width_squared * bank_squares - n * (bank_sum * bank_sum)
        m.d.comb += [
            rsqrt.start.eq(running & is_norm & ~rs_pending & (rs_rows < in_rows)),
            rsqrt.s.eq(Mux(is_ln, centred, bank_squares) + eps),
        ]
        invs = [Signal.like(rsqrt.inv, name=f"bank{b}_inv") for b in range(ROW_BANKS)]
        shifts = [Signal.like(rsqrt.shift, name=f"bank{b}_shift") for b in range(ROW_BANKS)]
        with m.If(rsqrt.start):
            m.d.sync += rs_pending.eq(1)
        with m.If(rsqrt.done):
            m.d.sync += [rs_pending.eq(0), rs_rows.eq(rs_rows + 1),
                         rs_bank.eq(Mux(rs_bank == ROW_BANKS - 1, 0, rs_bank + 1))]
            for b in range(ROW_BANKS):
                with m.If(rs_bank == b):
                    m.d.sync += [invs[b].eq(rsqrt.inv), shifts[b].eq(rsqrt.shift)]

        # -- row ops: each row leaves its bank through the lanes
        out_word = Signal(range(max_words + 1))
        out_bank = Signal(range(ROW_BANKS))
        head_word = Signal(range(max_table + 1))      # ROPE: word within the head
        out_last = out_word == words - 1
        row_ready = Mux(is_norm, out_rows < rs_rows, out_rows < in_rows)
        out_fire = Signal()
        m.d.comb += out_fire.eq(running & row_mode & (out_rows < cmd.rows) & row_ready & advance)
        first_half = head_word < half_words
        base = out_bank * max_words
        table_base = out_bank * max_table
        m.d.comb += [
            bank_x.addr.eq(base + out_word),
            bank_partner.addr.eq(base + self.partner_word(out_word, half_words, first_half)),
            operand_first.addr.eq(Mux(is_rope,
                                      table_base + Mux(first_half, head_word, head_word - half_words),
                                      Mux(row_mode, out_word, in_word))),
            operand_second.addr.eq(table_base + Mux(first_half, head_word + half_words, head_word)),
        ]
        with m.If(out_fire):
            m.d.sync += [out_word.eq(Mux(out_last, 0, out_word + 1)),
                         head_word.eq(Mux(head_word == table_words - 1, 0, head_word + 1))]
            with m.If(out_last):
                m.d.sync += [out_rows.eq(out_rows + 1), head_word.eq(0),
                             out_bank.eq(Mux(out_bank == ROW_BANKS - 1, 0, out_bank + 1))]

        # -- issue: one word a cycle into the lane pipeline, with what travels with it
        issue = stream_fire | out_fire
        issue_word = Mux(row_mode, out_word, in_word)
        issue_row = Mux(row_mode, out_rows, in_row)
        issue_last = Mux(row_mode, out_last, in_last)
        row_inv = Signal.like(rsqrt.inv)
        row_shift = Signal.like(rsqrt.shift)
        row_mean_sum = Signal(signed(sum_bits))
        for b in range(ROW_BANKS):
            with m.If(out_bank == b):
                m.d.comb += [row_inv.eq(invs[b]), row_shift.eq(shifts[b]),
                             row_mean_sum.eq(sums[b])]

        # stage F: the word's values (registered here, or from the memories' read ports)
        f_valid, f_last, f_first = Signal(), Signal(), Signal()
        f_row = Signal.like(cmd.rows)
        f_live = Signal(lanes)
        f_a = Signal(vector_in(config))
        f_b = Signal(vector_b(config))
        f_streamed = Signal(operand_word(config))
        f_from_stream = Signal()
        f_inv, f_shift = Signal.like(rsqrt.inv), Signal.like(rsqrt.shift)
        f_sum = Signal(signed(sum_bits))
        f_first_half = Signal()
        with m.If(advance):
            m.d.sync += [f_valid.eq(issue), f_last.eq(issue_last), f_first.eq(issue_word == 0),
                         f_row.eq(issue_row), f_live.eq(Cat(*lane_live(issue_word, words - 1))),
                         f_from_stream.eq(want_operand), f_inv.eq(row_inv), f_shift.eq(row_shift),
                         f_sum.eq(row_mean_sum), f_first_half.eq(first_half)]
        with m.If(stream_fire):
            m.d.sync += [f_a.eq(self.a.payload), f_b.eq(self.b.payload),
                         f_streamed.eq(self.operands.payload)]
        operands_now = Mux(f_from_stream & ~row_mode, f_streamed.as_value(),
                           operand_first.data.as_value())
        operands_f = operand_word(config)(operands_now)
        second_f = operand_word(config)(operand_second.data.as_value())

        # the stages after F: valid, last-of-row, first-of-row, row, live lanes
        stages = 6
        valid = [Signal(name=f"e{i}_valid") for i in range(1, stages + 1)]
        last = [Signal(name=f"e{i}_last") for i in range(1, stages + 1)]
        first = [Signal(name=f"e{i}_first") for i in range(1, stages + 1)]
        row = [Signal.like(cmd.rows, name=f"e{i}_row") for i in range(1, stages + 1)]
        live = [Signal(lanes, name=f"e{i}_live") for i in range(1, stages + 1)]
        with m.If(advance):
            for chain, head in ((valid, f_valid), (last, f_last), (first, f_first), (row, f_row),
                                (live, f_live)):
                m.d.sync += chain[0].eq(head)
                m.d.sync += [chain[i].eq(chain[i - 1]) for i in range(1, stages)]
        e2_shift = Signal.like(rsqrt.shift)
        e1_shift = Signal.like(rsqrt.shift)
        with m.If(advance):
            m.d.sync += [e1_shift.eq(f_shift), e2_shift.eq(e1_shift)]

        multiplier = cmd.multiplier
        product_shift = Signal.like(cmd.shift)
        m.d.comb += product_shift.eq(Mux(is_rope, sv.ROPE_FRAC_BITS, cmd.shift))
        final_multiplier = Mux((op == VectorOp.ADD) | is_rope, 1, multiplier)
        c_bits = sum_bits + 1
        t_bits = 26
        dots = []
        outputs = []
        for lane in range(lanes):
            x = Mux(row_mode, bank_x.data[lane], f_a[lane][:8].as_signed())
            partner = bank_partner.data[lane]
            weight = operands_f.weight[lane]
            # E1: c, and the first multiplier's other operand
            c = Signal(signed(c_bits), name=f"c{lane}")
            b1 = Signal(signed(35), name=f"b1_{lane}")
            e1_a, e1_b, e1_partner = Signal(signed(32)), Signal(signed(8)), Signal(signed(8))
            e1_weight, e1_bias, e1_sin = Signal(signed(16)), Signal(signed(32)), Signal(signed(17))
            # E2: p1 = c x b1
            p1 = Signal(signed(c_bits + 35), name=f"p1_{lane}")
            e2 = [Signal(signed(32)), Signal(signed(8)), Signal(signed(8)), Signal(signed(16)),
                  Signal(signed(32)), Signal(signed(17))]
            # E3: t
            t = Signal(signed(t_bits), name=f"t{lane}")
            e3 = [Signal(signed(32)), Signal(signed(8)), Signal(signed(8)), Signal(signed(16)),
                  Signal(signed(32)), Signal(signed(17))]
            # E4: v = a2 x b2 + c2
            v = Signal(signed(40), name=f"v{lane}")
            # E5: p3 = v x m
            p3 = Signal(signed(56), name=f"p3_{lane}")
            # E6: the int8 result
            y = Signal(signed(8), name=f"y{lane}")
            sin = Mux(f_first_half, -second_f.weight[lane], second_f.weight[lane])
            first_operand = Mux(is_norm, f_inv,
                            Mux(op == VectorOp.ADD, multiplier,
                            Mux(op == VectorOp.MUL, f_b[lane], weight)))
            rounded = (p1 + ((Const(1, 1) << e2_shift) >> 1)) >> e2_shift
            with m.If(advance):
                m.d.sync += [
                    c.eq(Mux(is_ln, n * x - f_sum, x)),
                    b1.eq(first_operand),
                    e1_a.eq(f_a[lane]), e1_b.eq(f_b[lane]), e1_partner.eq(partner),
                    e1_weight.eq(weight), e1_bias.eq(operands_f.bias[lane]), e1_sin.eq(sin),
                    p1.eq(c * b1),
                    Cat(*e2).eq(Cat(e1_a, e1_b, e1_partner, e1_weight, e1_bias, e1_sin)),
                    t.eq(Mux(is_norm, rounded, p1)),
                    Cat(*e3).eq(Cat(*e2)),
                ]
            a3, b3, partner3, weight3, bias3, sin3 = e3
            a2 = Mux(is_norm, t, Mux(op == VectorOp.ADD, b3, Mux(is_rope, partner3, 0)))
            b2 = Mux(is_norm, weight3, Mux(op == VectorOp.ADD, cmd.multiplier_b, sin3))
            c2 = Mux(is_norm, bias3, Mux(is_requant, a3, t))
            with m.If(advance):
                m.d.sync += [
                    v.eq(a2 * b2 + c2),
                    p3.eq(v * final_multiplier),
                    y.eq(Mux(live[4][lane], self.round_saturate(p3, product_shift, 56, 8), 0)),
                    self.o.p[lane].eq(y),
                ]
            dots.append(Mux(live[2][lane], t, 0))
            outputs.append(y)

        # GATE: the row's dot product, its Q8 logit and its sigmoid
        dot = Signal(signed(t_bits + lane_bits + 1))
        row_dot = Signal(signed(t_bits + (config.max_inputs - 1).bit_length() + 1))
        gate_product = Signal(signed(row_dot.shape().width + 16))
        logit = self.round_saturate(gate_product, cmd.shift, gate_product.shape().width, LOGIT_BITS)
        with m.If(advance):
            m.d.sync += [
                dot.eq(tree_sum(dots)),                                   # E4
                gate_product.eq(row_dot * multiplier),                    # E6
                self.gates.p.gate.eq(sigmoid_fixed(logit)),               # output
                self.gates.p.token.eq(row[5]),
            ]
            with m.If(valid[3]):                                          # E5: bubbles add nothing
                m.d.sync += row_dot.eq(Mux(first[3], 0, row_dot) + dot)

        # the output registers: E6 -> o / gates
        e6_gate_last = Signal()
        with m.If(advance):
            m.d.sync += [
                e6_gate_last.eq(valid[4] & last[4] & is_gate),
                self.o.valid.eq(valid[5] & ~is_gate),
                self.gates.valid.eq(e6_gate_last),
            ]

        # -- the command: accept, check, run until the last result has left
        pipeline_busy = Cat(f_valid, *valid, e6_gate_last, self.o.valid, self.gates.valid).any()
        issued_all = Mux(row_mode, out_rows == cmd.rows, in_row == cmd.rows)
        m.d.comb += self.cmd.ready.eq(~running)
        with m.If(self.cmd.valid & ~running):
            refused = refused_by(vector_formats.rules(config, self.cmd.payload))
            c = self.cmd.payload
            m.d.sync += [
                cmd.eq(c), self.error.eq(refused), running.eq(~refused),
                words.eq((c.width + lanes - 1) >> lane_bits),
                last_lanes.eq(Mux(c.width[:lane_bits] == 0, lanes, c.width[:lane_bits])
                              if lane_bits else 1),
                table_words.eq(c.head_dim >> lane_bits),
                half_words.eq(c.head_dim >> (lane_bits + 1)),
                width_squared.eq(c.width * c.width),
                in_row.eq(0), in_word.eq(0), in_bank.eq(0), in_rows.eq(0), rs_rows.eq(0),
                rs_bank.eq(0), out_rows.eq(0), out_word.eq(0), out_bank.eq(0), head_word.eq(0),
                perf.eq(0),
            ]
        with m.If(running):
            m.d.sync += perf.busy_cycles.eq(perf.busy_cycles + 1)
            wanting = Mux(row_mode, row_wants, stream_wants & advance)
            with m.If(wanting & ~inputs_valid):
                m.d.sync += perf.input_stall_cycles.eq(perf.input_stall_cycles + 1)
            with m.If((self.o.valid & ~self.o.ready) | (self.gates.valid & ~self.gates.ready)):
                m.d.sync += perf.output_stall_cycles.eq(perf.output_stall_cycles + 1)
            with m.If(issued_all & ~pipeline_busy):
                m.d.sync += running.eq(0)
            # a norm's eps_q arrives with its first operand word
            first_eps = self.operands.payload.eps_q
            with m.If(row_in_fire & is_norm & (in_rows == 0) & (in_word == 0)):
                m.d.sync += eps.eq(first_eps)
                with m.If((first_eps < 0) | (first_eps >= EPS_LIMIT)):
                    m.d.sync += [self.error.eq(1), running.eq(0)]
        return m

    @staticmethod
    def partner_word(word, half_words, first_half):
        """ROPE: the word of the partners of `word`'s elements, half a head on or back."""
        return Mux(first_half, word + half_words, word - half_words)

    @staticmethod
    def round_saturate(value, shift, max_shift, bits):
        """``saturate(round_shift(value, shift), bits)`` (`hw.arith.round_shift_saturate`)."""
        return round_shift_saturate(value, shift, max_shift, bits)
