"""The router: Q8 logits in, top-k experts and their gate weights out, written into the on-chip
dispatch table (per expert: a token count and a queue of (token, gate)) that the expert loop walks.

Exactly `sw.router.QuantizedRouter`: the same fixed-point exp and sigmoid, the same tie rule (the
lower expert index wins), the same normalisation by one exact reciprocal per token.

The logits either arrive on a stream, or come from the router's own GEMM: ``router_lanes`` int8 MACs
over the token and the loaded router weights (E x chunks cycles a token), each expert's dot product
requantised to Q8 as `QuantizedRouter.logits_q8` does.

Per token: load (E cycles, one logit each, or the GEMM), group scoring when selection is
group-limited (E + G), selection and the softmax denominator (E), the selected weights' sum (k), the
reciprocal (47), the gates and their dispatch (k + 1): `moeaccel.cycles.router_cycles`, equal to the
``busy_cycles`` counter.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..cycles import ROUTER_DIVIDE_CYCLES
from ..formats import router as router_formats
from ..formats.epilogue import REQUANT
from ..formats.router import (DISPATCH_COUNT, LOGIT, ROUTER_COUNTERS, SELECTION_BIAS,
                              TOKEN_GATE, RouterMode, bias_write, router_command, router_token,
                              router_weight_write)
from ..formats.rules import refused_by
from ..sw import numerics as nx
from .arith import (exp_fixed, reciprocal_step, round_shift, round_shift_saturate, sigmoid_fixed,
                    tree_sum)
from .loops import Loop, LoopNest

__all__ = ["Router", "memory_ports"]


def _bits(depth: int) -> int:
    return max(0, (depth - 1).bit_length())


def memory_ports(config) -> dict:
    """The memories a shared router reaches through ports (`Router(shared=True)`), as each port's
    signature from the memory's side: word `chunk` of expert `expert`'s weights (address ``expert x
    router_chunks + chunk``), an expert's logit requantisation, its selection bias, and the writes
    of the dispatch table's queue entries (address ``expert x dispatch_capacity + slot``) and of
    its counts."""
    experts = config.max_experts
    return {
        "weights_read": memory.ReadPort.Signature(
            addr_width=_bits(experts * config.router_chunks),
            shape=router_token(config)["data"].shape),
        "params_read": memory.ReadPort.Signature(addr_width=_bits(experts),
                                                 shape=REQUANT.onchip(config)),
        "bias_read": memory.ReadPort.Signature(
            addr_width=_bits(experts), shape=SELECTION_BIAS.onchip_fields(config)["bias"]),
        "table_write": memory.WritePort.Signature(
            addr_width=_bits(experts * config.dispatch_capacity),
            shape=TOKEN_GATE.onchip(config)),
        "count_write": memory.WritePort.Signature(
            addr_width=_bits(experts), shape=DISPATCH_COUNT.onchip_fields(config)["count"]),
    }

KEY_BITS = 20                      # selection keys: Q8 logits, or Q15 score + Q15 bias


class _TopK:
    """``size`` registers kept sorted by key (descending; equal keys keep arrival order), as an
    insertion network: one candidate a cycle."""

    def __init__(self, size: int, index_bits: int):
        self.size = size
        self.valid = [Signal(name=f"top{j}_valid") for j in range(size)]
        self.key = [Signal(signed(KEY_BITS), name=f"top{j}_key") for j in range(size)]
        self.index = [Signal(index_bits, name=f"top{j}_index") for j in range(size)]
        self.logit = [Signal(signed(16), name=f"top{j}_logit") for j in range(size)]

    def clear(self, m):
        m.d.sync += [valid.eq(0) for valid in self.valid]

    def insert(self, m, key, index, logit, k):
        """Offer a candidate (indices arrive in increasing order); only the first `k` are kept."""
        before = [self.valid[j] & (self.key[j] >= key) for j in range(self.size)]
        for j in range(self.size):
            entry = (self.valid[j], self.key[j], self.index[j], self.logit[j])
            with m.If(~before[j] & (j < k)):
                with m.If((j == 0) | before[j - 1] if j else Const(1)):
                    m.d.sync += [target.eq(value) for target, value in
                                 zip(entry, (1, key, index, logit))]
                with m.Else():
                    previous = (self.valid[j - 1], self.key[j - 1], self.index[j - 1],
                                self.logit[j - 1])
                    m.d.sync += [target.eq(value) for target, value in zip(entry, previous)]


class Router(wiring.Component):
    """The router of one `AccelConfig`.

    Ports
    -----
    cmd : stream of `formats.router.router_command(config)`; accepted when idle
    logits : stream of `formats.router.LOGIT` (on chip): each token's E logits in expert order
    tokens : stream of `formats.router.router_token(config)`: each token's activations
        (``compute`` runs)
    weights_write : stream of `formats.router.router_weight_write(config)`: router weights, while
        idle
    bias_write : stream of `formats.router.bias_write(config)`: sigmoid_bias selection biases,
        while idle
    table_read : read port of the dispatch table (`formats.router.TOKEN_GATE` entries), address
        ``expert * dispatch_capacity + slot``
    count_read : read port of the per-expert token counts
    busy, error : a run is under way; the last command was refused (`formats.router.check`)
    perf : `formats.router.ROUTER_COUNTERS` of this run: its cycles, and the choices dropped because
        an expert's queue was full
    """

    def __init__(self, config: AccelConfig, shared: bool = False):
        """`shared`: the router weights, their requantisations, the selection biases and the
        dispatch table are outside the router (the accelerator top's buffers), reached through
        the `memory_ports` (the counts are also kept inside, where the router reads them);
        otherwise the router holds them, filled from its write streams and read through
        ``table_read`` and ``count_read``."""
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Router needs an AccelConfig, not {config!r}")
        self.config = config
        self.shared = shared
        ports = {
            "cmd": In(stream.Signature(router_command(config))),
            "logits": In(stream.Signature(LOGIT.onchip(config))),
            "tokens": In(stream.Signature(router_token(config))),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(ROUTER_COUNTERS),
        }
        if shared:
            ports.update({name: In(signature) for name, signature in memory_ports(config).items()})
        else:
            ports.update({
                "weights_write": In(stream.Signature(router_weight_write(config))),
                "bias_write": In(stream.Signature(bias_write(config))),
                "table_read": Out(memory.ReadPort.Signature(
                    addr_width=_bits(config.max_experts * config.dispatch_capacity),
                    shape=TOKEN_GATE.onchip(config))),
                "count_read": Out(memory.ReadPort.Signature(
                    addr_width=max(1, _bits(config.max_experts)),
                    shape=DISPATCH_COUNT.onchip_fields(config)["count"])),
            })
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        config = self.config
        experts, capacity = config.max_experts, config.dispatch_capacity
        busy = self.busy
        command = Signal(router_command(config))
        mode = command.mode
        grouped = (mode == RouterMode.SIGMOID_BIAS) & (command.groups > 1)

        logit = LOGIT.onchip_fields(config)["value"]             # a Q8 logit
        token_word = router_token(config)["data"].shape          # router_lanes int8 values
        # -- memories
        m.submodules.logit_buffer = logit_buffer = memory.Memory(
            shape=logit, depth=experts, init=[])
        m.submodules.counts = counts = memory.Memory(
            shape=DISPATCH_COUNT.onchip_fields(config)["count"], depth=experts, init=[])
        lanes, row_words = config.router_lanes, config.router_chunks
        m.submodules.token_buffer = token_buffer = memory.Memory(
            shape=token_word, depth=row_words, init=[])
        token_port, token_read = token_buffer.write_port(), token_buffer.read_port()
        logit_write, logit_read = logit_buffer.write_port(), logit_buffer.read_port()
        count_write, count_read = counts.write_port(), counts.read_port()
        m.d.comb += self.cmd.ready.eq(~busy)
        if self.shared:
            weights_read, params_read = self.weights_read, self.params_read
            bias_read, table_write = self.bias_read, self.table_write
            # the counts' writes go out too
            m.d.comb += [self.count_write.addr.eq(count_write.addr),
                         self.count_write.data.eq(count_write.data),
                         self.count_write.en.eq(count_write.en)]
        else:
            m.submodules.table = table = memory.Memory(
                shape=TOKEN_GATE.onchip(config), depth=experts * capacity, init=[])
            m.submodules.router_weights = router_weights = memory.Memory(
                shape=token_word, depth=experts * row_words, init=[])
            m.submodules.logit_params = logit_params = memory.Memory(
                shape=REQUANT.onchip(config), depth=experts, init=[])
            m.submodules.bias = bias = memory.Memory(
                shape=SELECTION_BIAS.onchip_fields(config)["bias"], depth=experts, init=[])
            weights_port, weights_read = router_weights.write_port(), router_weights.read_port()
            params_port, params_read = logit_params.write_port(), logit_params.read_port()
            bias_port, bias_read = bias.write_port(), bias.read_port()
            table_write = table.write_port()
            for outer, inner in ((self.table_read, table.read_port()),
                                 (self.count_read, counts.read_port())):
                m.d.comb += [inner.addr.eq(outer.addr), inner.en.eq(outer.en),
                             outer.data.eq(inner.data)]
            m.d.comb += [
                self.bias_write.ready.eq(~busy),
                bias_port.addr.eq(self.bias_write.p.expert),
                bias_port.data.eq(self.bias_write.p.bias),
                bias_port.en.eq(self.bias_write.valid & ~busy),
                self.weights_write.ready.eq(~busy),
                weights_port.addr.eq(self.weights_write.p.expert * row_words
                                     + self.weights_write.p.chunk),
                weights_port.data.eq(self.weights_write.p.data),
                weights_port.en.eq(self.weights_write.valid & ~busy),
                params_port.addr.eq(self.weights_write.p.expert),
                params_port.data.multiplier.eq(self.weights_write.p.multiplier),
                params_port.data.shift.eq(self.weights_write.p.shift),
                params_port.en.eq(self.weights_write.valid & ~busy),
            ]

        token = Signal(range(config.max_tokens))
        expert = Signal(range(experts + 1))          # scan position
        scanned = Signal()                           # read data of the previous scan step present
        scanned_expert = Signal(range(experts))
        group_position = Signal(range(experts + 1))  # position inside the scanned expert's group
        group = Signal(range(config.max_groups + 1))
        # the scanned expert's group and its place in it (the group count runs on past the last)
        grouping = LoopNest(Loop(group, command.groups), Loop(group_position, command.group_size),
                            at_end="count")
        top = _TopK(config.max_k, max(1, (experts - 1).bit_length()))
        groups = _TopK(config.max_groups, max(1, (config.max_groups - 1).bit_length()))
        group_best = [Signal(signed(KEY_BITS), name=f"group_best{n}") for n in range(2)]
        group_found = Signal(2)
        group_scores = [Signal(signed(KEY_BITS + 1), name=f"group_score{g}")
                        for g in range(config.max_groups)]
        group_kept = Signal(config.max_groups)
        maximum = Signal(logit)
        total = Signal(nx.GATE_FRAC_BITS + 1 + (experts - 1).bit_length() + 1)
        quotient = Signal(nx.ROUTER_RECIP_BITS + 1)
        remainder = Signal(len(total) + 1)
        step = Signal(range(max(config.max_k, config.max_groups, ROUTER_DIVIDE_CYCLES) + 2))

        # Shared arithmetic: one exp and one sigmoid unit, inputs chosen by phase.
        exp_input = Signal(signed(17))
        exp_value = Signal(nx.GATE_FRAC_BITS + 1)
        sigmoid_input = Signal(signed(16))
        sigmoid_value = Signal(nx.GATE_FRAC_BITS + 1)
        m.d.comb += [exp_value.eq(exp_fixed(exp_input)),
                     sigmoid_value.eq(sigmoid_fixed(sigmoid_input))]

        # The scanned expert's selection key.
        key = Signal(signed(KEY_BITS))
        m.d.comb += sigmoid_input.eq(logit_read.data)
        with m.If(mode == RouterMode.SIGMOID_BIAS):
            m.d.comb += key.eq(sigmoid_value + bias_read.data)
        with m.Else():
            m.d.comb += key.eq(logit_read.data)
        m.d.comb += [logit_read.addr.eq(expert), bias_read.addr.eq(expert),
                     logit_read.en.eq(1), bias_read.en.eq(1)]

        request = self.cmd.p
        illegal = Signal()
        m.d.comb += illegal.eq(refused_by(router_formats.rules(config, request)))

        with m.If(busy):
            m.d.sync += self.perf.busy_cycles.eq(self.perf.busy_cycles + 1)

        # -- the logits GEMM: read (1), multiply (2), add (3), accumulate (4), requantise (5)
        chunk_counter = Signal(range(row_words + 1))
        issuing = Signal()
        every_expert = LoopNest(Loop(expert, command.experts))          # clearing, loading logits
        token_chunks = LoopNest(Loop(chunk_counter, command.chunks))    # a token into the buffer
        # each expert's dot product, a chunk a cycle; the expert count runs on past the last
        dot_products = LoopNest(Loop(expert, command.experts), Loop(chunk_counter, command.chunks),
                                at_end="count")
        gemm_valid = [Signal(name=f"gemm{n}_valid") for n in range(1, 5)]
        gemm_first = [Signal(name=f"gemm{n}_first") for n in range(1, 5)]
        gemm_last = [Signal(name=f"gemm{n}_last") for n in range(1, 5)]
        gemm_expert = [Signal(range(experts), name=f"gemm{n}_expert") for n in range(1, 5)]
        gemm_params = [Signal(REQUANT.onchip(config), name=f"gemm{n}_params")
                       for n in range(2, 5)]
        products = [Signal(signed(16), name=f"gemm_product{lane}") for lane in range(lanes)]
        row_sum = Signal(signed(16 + lanes.bit_length()))
        accumulator = Signal(signed(32))
        result_valid = Signal()
        result_expert = Signal(range(experts))
        result = Signal(logit)
        m.d.sync += [gemm_valid[n].eq(gemm_valid[n - 1]) for n in range(1, 4)]
        m.d.sync += [gemm_first[n].eq(gemm_first[n - 1]) for n in range(1, 4)]
        m.d.sync += [gemm_last[n].eq(gemm_last[n - 1]) for n in range(1, 4)]
        m.d.sync += [gemm_expert[n].eq(gemm_expert[n - 1]) for n in range(1, 4)]
        m.d.sync += [gemm_params[0].eq(params_read.data),
                     gemm_params[1].eq(gemm_params[0]), gemm_params[2].eq(gemm_params[1])]
        m.d.comb += [weights_read.en.eq(1), token_read.en.eq(1), params_read.en.eq(1)]
        for lane in range(lanes):
            m.d.sync += products[lane].eq(weights_read.data[lane] * token_read.data[lane])
        m.d.sync += row_sum.eq(tree_sum(products))
        with m.If(gemm_valid[2]):
            m.d.sync += accumulator.eq(Mux(gemm_first[2], row_sum, accumulator + row_sum))
        multiplier, shift = gemm_params[2].multiplier, gemm_params[2].shift
        m.d.sync += [
            result_valid.eq(gemm_valid[3] & gemm_last[3]),
            result_expert.eq(gemm_expert[3]),
            result.eq(round_shift_saturate(accumulator * multiplier, shift, nx.SHIFT_MAX, 16)),
        ]

        def start_selection():
            """The token's logits are in: scan them."""
            m.d.sync += [expert.eq(0), scanned.eq(0), group_found.eq(0), total.eq(0)]
            grouping.restart(m)
            top.clear(m)
            groups.clear(m)
            with m.If(grouped):
                m.next = "GROUPS"
            with m.Else():
                m.d.sync += group_kept.eq(-1)
                m.next = "SELECT"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.cmd.valid):
                    m.d.sync += self.error.eq(illegal)
                    with m.If(~illegal):
                        m.d.sync += [busy.eq(1), command.eq(request), token.eq(0), expert.eq(0),
                                     self.perf.eq(0)]
                        m.next = "CLEAR"

            with m.State("CLEAR"):                 # every expert's count to zero
                m.d.comb += [count_write.addr.eq(expert), count_write.data.eq(0),
                             count_write.en.eq(1)]
                every_expert.step(m)
                with m.If(every_expert.done):
                    m.next = "LOAD"
                    with m.If(command.compute):
                        m.next = "TOKEN"

            with m.State("TOKEN"):                 # the token's activations into the buffer
                m.d.comb += [self.tokens.ready.eq(1), token_port.addr.eq(chunk_counter),
                             token_port.data.eq(self.tokens.p.data),
                             token_port.en.eq(self.tokens.valid)]
                with m.If(self.tokens.valid):
                    token_chunks.step(m)
                    with m.If(token_chunks.done):
                        m.d.sync += [expert.eq(0), issuing.eq(1)]
                        m.next = "LOGITS"

            with m.State("LOGITS"):                # one expert's dot product per chunks cycles
                m.d.comb += [weights_read.addr.eq(expert * row_words + chunk_counter),
                             token_read.addr.eq(chunk_counter), params_read.addr.eq(expert)]
                m.d.sync += [gemm_valid[0].eq(issuing),
                             gemm_first[0].eq(dot_products.first(chunk_counter)),
                             gemm_last[0].eq(dot_products.last(chunk_counter)),
                             gemm_expert[0].eq(expert)]
                dot_products.step(m, issuing)
                with m.If(issuing & dot_products.done):
                    m.d.sync += issuing.eq(0)
                with m.If(result_valid):
                    m.d.comb += [logit_write.addr.eq(result_expert), logit_write.data.eq(result),
                                 logit_write.en.eq(1)]
                    with m.If((result_expert == 0) | (result > maximum)):
                        m.d.sync += maximum.eq(result)
                    with m.If(result_expert == command.experts - 1):
                        start_selection()

            with m.State("LOAD"):                  # the token's logits into the buffer
                m.d.comb += [self.logits.ready.eq(1), logit_write.addr.eq(expert),
                             logit_write.data.eq(self.logits.p.value),
                             logit_write.en.eq(self.logits.valid)]
                with m.If(self.logits.valid):
                    every_expert.step(m)
                    with m.If(every_expert.first(expert) | (self.logits.p.value > maximum)):
                        m.d.sync += maximum.eq(self.logits.p.value)
                    with m.If(every_expert.done):
                        start_selection()

            with m.State("GROUPS"):                # each group's score: its two best keys
                with m.If(expert < command.experts):
                    m.d.sync += [expert.eq(expert + 1), scanned.eq(1)]
                with m.Else():
                    m.d.sync += scanned.eq(0)
                with m.If(scanned):
                    better = [~group_found[n] | (key > group_best[n]) for n in range(2)]
                    first, second = Signal(signed(KEY_BITS)), Signal(signed(KEY_BITS))
                    m.d.comb += [
                        first.eq(Mux(better[0], key, group_best[0])),
                        second.eq(Mux(better[0], group_best[0], Mux(better[1], key,
                                                                     group_best[1]))),
                    ]
                    m.d.sync += [group_best[0].eq(first), group_best[1].eq(second),
                                 group_found.eq(Cat(1, group_found[0]))]
                    grouping.step(m)
                    with m.If(grouping.last(group_position)):
                        m.d.sync += group_found.eq(0)
                        for g in range(config.max_groups):
                            with m.If(group == g):
                                m.d.sync += group_scores[g].eq(first + second)
                        with m.If(grouping.done):
                            m.d.sync += [expert.eq(0), step.eq(0)]
                            m.next = "PICK_GROUPS"

            with m.State("PICK_GROUPS"):           # the best topk_groups groups
                scores = group_scores[0]
                for g in range(1, config.max_groups):
                    scores = Mux(step == g, group_scores[g], scores)
                with m.If(step < command.groups):
                    groups.insert(m, scores, step, 0, command.topk_groups)
                    m.d.sync += step.eq(step + 1)
                with m.Else():
                    kept = 0
                    for j in range(config.max_groups):
                        kept = kept | Mux(groups.valid[j], Const(1, config.max_groups)
                                          << groups.index[j], 0)
                    m.d.sync += [group_kept.eq(kept), expert.eq(0), scanned.eq(0)]
                    grouping.restart(m)
                    m.next = "SELECT"

            with m.State("SELECT"):                # top-k, and the softmax denominator over all
                with m.If(expert < command.experts):
                    m.d.sync += [expert.eq(expert + 1), scanned.eq(1),
                                 scanned_expert.eq(expert)]
                with m.Else():
                    m.d.sync += scanned.eq(0)
                with m.If(scanned):
                    m.d.comb += exp_input.eq(logit_read.data - maximum)
                    with m.If(group_kept.bit_select(group, 1)):
                        top.insert(m, key, scanned_expert, logit_read.data, command.k)
                    m.d.sync += total.eq(total + exp_value)
                    grouping.step(m)
                    with m.If(scanned_expert == command.experts - 1):
                        m.d.sync += step.eq(0)
                        with m.If((mode == RouterMode.SOFTMAX_TOPK) | (mode == RouterMode.TOP1)):
                            m.next = "DIVIDE_START"
                        with m.Else():
                            m.d.sync += total.eq(0)
                            m.next = "SUM"

            def numerator(i):
                """Phase input for the i-th chosen expert: its exp or sigmoid value."""
                logit = top.logit[0]
                for j in range(1, config.max_k):
                    logit = Mux(i == j, top.logit[j], logit)
                base = Mux(mode == RouterMode.SOFTMAX_TOPK_RENORM, top.logit[0], maximum)
                m.d.comb += [exp_input.eq(logit - base)]
                return Mux(mode == RouterMode.SIGMOID_BIAS, sigmoid_fixed(logit), exp_value)

            with m.State("SUM"):                   # the chosen experts' weights, summed
                m.d.sync += [total.eq(total + numerator(step)), step.eq(step + 1)]
                with m.If(step == command.k - 1):
                    m.next = "DIVIDE_START"

            with m.State("DIVIDE_START"):
                m.d.sync += [quotient.eq(0), remainder.eq(0), step.eq(0)]
                m.next = "DIVIDE"

            with m.State("DIVIDE"):                # 2**46 // total, one quotient bit a cycle
                reciprocal_step(m, step == 0, remainder, quotient, total)
                m.d.sync += step.eq(step + 1)
                with m.If(step == ROUTER_DIVIDE_CYCLES - 1):
                    m.d.sync += step.eq(0)
                    m.next = "GATES"

            with m.State("GATES"):                 # gate weights, into the experts' queues
                chosen = top.index[0]
                for j in range(1, config.max_k):
                    chosen = Mux(step == j, top.index[j], chosen)
                gate = Signal(nx.GATE_FRAC_BITS + 1)
                m.d.comb += gate.eq(round_shift(numerator(step) * quotient,
                                                nx.ROUTER_RECIP_BITS - nx.GATE_FRAC_BITS))
                pending = Signal()
                pending_expert = Signal.like(scanned_expert)
                pending_gate = Signal.like(gate)
                m.d.comb += [count_read.addr.eq(chosen), count_read.en.eq(1)]
                m.d.sync += [pending.eq(step < command.k), pending_expert.eq(chosen),
                             pending_gate.eq(gate), step.eq(step + 1)]
                with m.If(pending):
                    slot = count_read.data
                    with m.If(slot < capacity):
                        m.d.comb += [
                            table_write.addr.eq(pending_expert * capacity + slot),
                            table_write.data.token.eq(token),
                            table_write.data.gate.eq(pending_gate),
                            table_write.en.eq(1),
                            count_write.addr.eq(pending_expert),
                            count_write.data.eq(slot + 1),
                            count_write.en.eq(1),
                        ]
                    with m.Else():
                        m.d.sync += self.perf.dropped_tokens.eq(self.perf.dropped_tokens + 1)
                with m.If(step == command.k):
                    m.d.sync += [step.eq(0), expert.eq(0), token.eq(token + 1)]
                    with m.If(token == command.tokens - 1):
                        m.d.sync += busy.eq(0)
                        m.next = "IDLE"
                    with m.Elif(command.compute):
                        m.next = "TOKEN"
                    with m.Else():
                        m.next = "LOAD"
        return m
