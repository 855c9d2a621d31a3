"""The Expert-FFN engine: int8 projections on the MAC array, dense or M:N, with the fused epilogue and
SwiGLU, weights streaming into two banks while the array computes from the other.

A pass multiplies ``tokens`` activation rows by ``tiles`` weight blocks. The loop is output-stationary:
for each tile (``mac_rows`` output channels), for each token, the words of the block stream through
the array, one per cycle, and the finished row goes through the epilogue. A tile's weights are read
from DRAM once per pass and reused for every token from the bank; while the array works on one bank,
the next block fills the other.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..sw import numerics as nx
from .arith import round_shift_saturate
from .epilogue import Epilogue
from .layouts import (CHANNEL_PARAMS, TABLE_WRITE, act_write, ffn_command, ffn_out, ffn_tag,
                      gate_entry, gates_write, params_write, weight_word)
from .mac_array import MacArray

__all__ = ["FFNEngine", "PERF_COUNTERS", "weight_word_beats", "ffn_pass_cycles"]

PERF_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),       # cycles with a pass under way
    "mac_cycles": unsigned(32),        # cycles a weight word entered the array
    "weight_wait": unsigned(32),       # cycles the array waited for a weight block to arrive
    "output_wait": unsigned(32),       # cycles a result row waited for the `o` stream
})


def weight_word_beats(config: AccelConfig, pattern) -> int:
    """Bus beats of one packed weight word (each word is padded to whole beats)."""
    bits = weight_word(config.mac_rows, config.mac_cols, pattern).size
    return -(-bits // config.axi_data_width)


def ffn_pass_cycles(config: AccelConfig, command: dict, *, weight_lead: int = 3,
                    word_beats: int | None = None) -> int:
    """Cycles of one pass (`layouts.ffn_command` fields): the ``busy_cycles`` counter, with weight
    beats offered back to back from cycle ``weight_lead + 1`` of the pass (3: the testbench's source
    starts after the command handshake) and the results never held back.

    A weight pass: ``weight_lead``, then block 0 fills its bank (``L = chunks x beats`` cycles,
    `weight_word_beats` beats a word), then each tile issues ``P = tokens x chunks`` words, one a
    cycle, while the next block fills the other bank: a later tile starts when both the previous
    tile is issued and its block is in, ``max(L, P)`` after the one before; then the last word's
    way out (12: two issue stages, the array's 4, the parameter fetch, the epilogue's 3 and the two
    SwiGLU/output stages), and 1 more when the rows are accumulated (the read-add-write into the
    output accumulator). A drain pass has no weights: ``tokens x tiles`` accumulator rows read one a
    cycle from the cycle after the command, then 7 (the read, the fetch, the epilogue's 3, the two
    output stages). `word_beats` overrides the beats a weight word takes to arrive (1 when the words
    come from the on-chip WEIGHT buffer instead of the bus)."""
    tokens, tiles = command["tokens"], command["tiles"]
    if command["drain"]:
        return tokens * tiles + 7
    chunks = command["chunks"]
    beats = weight_word_beats(config, config.patterns[command["pattern"]]) \
        if word_beats is None else word_beats
    fill = chunks * beats                                                             # L
    compute = tokens * chunks                                                         # P
    return (weight_lead + fill + (tiles - 1) * max(fill, compute) + compute
            + 12 + (1 if command["accumulate"] else 0))


class FFNEngine(wiring.Component):
    """The Expert-FFN engine for one `AccelConfig`.

    Ports
    -----
    cmd : stream of `layouts.ffn_command(config)`; accepted when idle, starts a pass
    weights : stream of bus beats (``axi_data_width`` bits): the pass's weight blocks, packed by
        `sw.sparsity.pack`
    o : stream of `layouts.ffn_out(config)`, the result rows (unless the pass writes them to a
        buffer)
    act_write, params_write, table_write, gates_write : fill the activation buffers, the
        per-channel epilogue parameters, the activation table and the gate table; accepted while
        idle
    busy : a pass is under way
    error : the last command was refused (a count of zero, or more than the buffers hold)
    perf : `PERF_COUNTERS`, cleared when a pass starts
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"FFNEngine needs an AccelConfig, not {config!r}")
        if config.mac_rows < 2:
            raise ValueError(f"{config.name}: the Expert-FFN engine needs mac_rows >= 2 (SwiGLU "
                             f"pairs gate and up channels in one tile), not {config.mac_rows}")
        self.config = config
        self.tag_layout = ffn_tag(config)
        super().__init__({
            "cmd": In(stream.Signature(ffn_command(config))),
            "weights": In(stream.Signature(unsigned(config.axi_data_width))),
            "o": Out(stream.Signature(ffn_out(config))),
            "act_write": In(stream.Signature(act_write(config))),
            "params_write": In(stream.Signature(params_write(config))),
            "table_write": In(stream.Signature(TABLE_WRITE)),
            "gates_write": In(stream.Signature(gates_write(config))),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(PERF_COUNTERS),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        rows, cols = config.mac_rows, config.mac_cols
        word_bits, act_bits = config.weight_word_bits, config.act_word_bytes * 8
        patterns = config.patterns
        tag_bits = self.tag_layout.size

        m.submodules.mac = mac = MacArray(config, tag_bits)
        m.submodules.epilogue = epilogue = Epilogue(rows, tag_bits)

        command = Signal(ffn_command(config))
        busy = self.busy

        # -- memories
        banks = []
        for n in range(2):
            bank = memory.Memory(shape=unsigned(word_bits), depth=config.weight_bank_words, init=[])
            m.submodules[f"weight_bank{n}"] = bank
            banks.append(bank)
        act_buffers = []
        for n in range(2):
            buffer = memory.Memory(shape=unsigned(act_bits), depth=config.act_buffer_words, init=[])
            m.submodules[f"act_buffer{n}"] = buffer
            act_buffers.append(buffer)
        m.submodules.params = params = memory.Memory(
            shape=data.ArrayLayout(CHANNEL_PARAMS, rows), depth=config.max_tiles, init=[])
        m.submodules.gates = gates = memory.Memory(
            shape=gate_entry(config), depth=config.max_tokens, init=[])
        m.submodules.accumulator = accumulator = memory.Memory(
            shape=data.ArrayLayout(signed(32), rows), depth=config.out_buffer_words, init=[])

        # -- loading while idle: commands, activations, parameters, the activation table
        m.d.comb += [
            self.cmd.ready.eq(~busy),
            self.act_write.ready.eq(~busy),
            self.params_write.ready.eq(~busy),
            self.table_write.ready.eq(~busy),
            self.gates_write.ready.eq(~busy),
            epilogue.table_write.valid.eq(self.table_write.valid & ~busy),
            epilogue.table_write.p.eq(self.table_write.p),
        ]
        params_port = params.write_port()
        m.d.comb += [
            params_port.addr.eq(self.params_write.p.tile),
            params_port.data.eq(self.params_write.p.params),
            params_port.en.eq(self.params_write.valid & ~busy),
        ]
        gates_port = gates.write_port()
        m.d.comb += [
            gates_port.addr.eq(self.gates_write.p.slot),
            gates_port.data.eq(self.gates_write.p.entry),
            gates_port.en.eq(self.gates_write.valid & ~busy),
        ]

        # -- the weight loader: bus beats -> words -> blocks, alternating banks
        beats_of = Array(Const(weight_word_beats(config, p), 8) for p in patterns)
        max_beats = max(weight_word_beats(config, p) for p in patterns)
        bus = config.axi_data_width
        # Beats shift in from the top: after a word's n beats it sits in the top n beats.
        assembly = Signal(max_beats * bus)
        shifted = Signal(max_beats * bus)
        beat = Signal(range(max_beats + 1))
        fill_word = Signal(range(config.weight_bank_words + 1))
        fill_bank = Signal()
        blocks_loaded = Signal(range(config.max_tiles + 1))
        full = Signal(2)
        bank_writes = [bank.write_port() for bank in banks]
        word_done = Signal()
        block_done = Signal()
        accepted = Signal()
        words = Array(shifted[(max_beats - weight_word_beats(config, p)) * bus:][:word_bits]
                      for p in patterns)
        m.d.comb += [
            self.weights.ready.eq(busy & ~command.drain & (blocks_loaded < command.tiles)
                                  & ~full.bit_select(fill_bank, 1)),
            accepted.eq(self.weights.valid & self.weights.ready),
            shifted.eq(Cat(assembly[bus:], self.weights.payload)),
            word_done.eq(beat == beats_of[command.pattern] - 1),
            block_done.eq(fill_word == command.chunks - 1),
        ]
        for n, port in enumerate(bank_writes):
            m.d.comb += [
                port.addr.eq(fill_word),
                port.data.eq(words[command.pattern]),
                port.en.eq(accepted & word_done & (fill_bank == n)),
            ]
        with m.If(accepted):
            m.d.sync += assembly.eq(shifted)
            with m.If(word_done):
                m.d.sync += beat.eq(0)
                with m.If(block_done):
                    m.d.sync += [
                        fill_word.eq(0),
                        fill_bank.eq(~fill_bank),
                        blocks_loaded.eq(blocks_loaded + 1),
                    ]
                with m.Else():
                    m.d.sync += fill_word.eq(fill_word + 1)
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # -- issue: tile / token / chunk counters, and the reads of weights and activations
        tile = Signal(range(config.max_tiles))
        token = Signal(range(config.max_tokens))
        chunk = Signal(range(config.weight_bank_words))
        compute_bank = Signal()
        issuing = Signal()            # counters still have words to issue this pass
        front_valid = Signal()        # stage F1: read data present
        front_advance = Signal()      # stages F1 and F2 move together
        issue = Signal()
        m.d.comb += [
            front_advance.eq(~mac.i.valid | mac.i.ready),
            issue.eq(busy & ~command.drain & issuing & full.bit_select(compute_bank, 1)
                     & front_advance),
        ]
        last_chunk = chunk == command.chunks - 1
        last_token = token == command.tokens - 1
        last_tile = tile == command.tiles - 1

        # chunk -> activation word and the window's position in it, by pattern
        max_ratio = config.max_ratio
        chunks_per_word = Array(Const(max_ratio * p.n // p.m, 8) for p in patterns)
        word_shift = Array(Const((max_ratio * p.n // p.m).bit_length() - 1, 4) for p in patterns)
        ratio = Array(Const(p.m // p.n, 8) for p in patterns)
        act_word = Signal(range(config.act_buffer_words))
        position = Signal(range(max_ratio))           # window offset, in units of mac_cols bytes
        m.d.comb += [
            act_word.eq(token * command.src_row_words + (chunk >> word_shift[command.pattern])),
            position.eq((chunk & (chunks_per_word[command.pattern] - 1)) * ratio[command.pattern]),
        ]
        bank_reads = [bank.read_port() for bank in banks]
        act_reads = [buffer.read_port() for buffer in act_buffers]
        for port in bank_reads:
            m.d.comb += [port.addr.eq(chunk), port.en.eq(front_advance)]
        for port in act_reads:
            m.d.comb += [port.addr.eq(act_word), port.en.eq(front_advance)]

        front_bank = Signal()
        front_position = Signal.like(position)
        front_first = Signal()
        front_last = Signal()
        front_tag = Signal(self.tag_layout)
        with m.If(front_advance):
            m.d.sync += [
                front_valid.eq(issue),
                front_bank.eq(compute_bank),
                front_position.eq(position),
                front_first.eq(chunk == 0),
                front_last.eq(last_chunk),
                front_tag.token.eq(token),
                front_tag.tile.eq(tile),
                front_tag.last.eq(last_chunk & last_token & last_tile),
            ]
        with m.If(issue):
            with m.If(last_chunk):
                m.d.sync += chunk.eq(0)
                with m.If(last_token):
                    m.d.sync += [token.eq(0), compute_bank.eq(~compute_bank)]
                    with m.If(last_tile):
                        m.d.sync += issuing.eq(0)
                    with m.Else():
                        m.d.sync += tile.eq(tile + 1)
                with m.Else():
                    m.d.sync += token.eq(token + 1)
            with m.Else():
                m.d.sync += chunk.eq(chunk + 1)

        # stage F2: the window taken out of the activation word, and the weight word, registered
        act_data = Mux(command.src, act_reads[1].data, act_reads[0].data)
        windows = Array(act_data[offset * cols * 8:] for offset in range(max_ratio))
        window_valid = Signal()
        with m.If(front_advance):
            m.d.sync += [
                window_valid.eq(front_valid),
                mac.i.p.window.eq(windows[front_position]),
                mac.i.p.weights.eq(Mux(front_bank, bank_reads[1].data, bank_reads[0].data)),
                mac.i.p.first.eq(front_first),
                mac.i.p.last.eq(front_last),
                mac.i.p.tag.eq(front_tag),
            ]
        m.d.comb += [
            mac.i.valid.eq(window_valid),
            mac.i.p.pattern.eq(command.pattern),
        ]

        # A block is released once its last word has been read.
        release = Signal(2)
        fill = Signal(2)
        m.d.comb += [
            release.eq(Mux(issue & last_chunk & last_token, 1 << compute_bank, 0)),
            fill.eq(Mux(accepted & word_done & block_done, 1 << fill_bank, 0)),
        ]
        m.d.sync += full.eq((full & ~release) | fill)

        # -- drain: accumulator rows in order, each read once and cleared
        drain_row = Signal(range(config.max_tokens))
        drain_tile = Signal(range(config.max_tiles))
        drain_valid = Signal()                  # read data present
        drain_tag = Signal(self.tag_layout)
        drain_issue = Signal()
        fetch_advance = Signal()
        drain_address = Signal(range(config.out_buffer_words))
        m.d.comb += [
            drain_address.eq(drain_row * command.tiles + drain_tile),
            drain_issue.eq(busy & command.drain & issuing & (~drain_valid | fetch_advance)),
        ]
        accumulator_read = accumulator.read_port()
        accumulator_write = accumulator.write_port()
        with m.If(~drain_valid | fetch_advance):
            m.d.sync += [
                drain_valid.eq(drain_issue),
                drain_tag.token.eq(drain_row),
                drain_tag.tile.eq(drain_tile),
                drain_tag.last.eq((drain_row == command.tokens - 1)
                                  & (drain_tile == command.tiles - 1)),
            ]
        with m.If(drain_issue):
            with m.If(drain_tile == command.tiles - 1):
                m.d.sync += [drain_tile.eq(0), drain_row.eq(drain_row + 1)]
                with m.If(drain_row == command.tokens - 1):
                    m.d.sync += issuing.eq(0)
            with m.Else():
                m.d.sync += drain_tile.eq(drain_tile + 1)

        # -- parameter fetch: the row's tile selects its channels' parameters
        fetch_valid = Signal()
        fetch_sums = Signal.like(mac.o.p.sums)
        fetch_tag = Signal(self.tag_layout)
        params_read = params.read_port()
        incoming_tag = Signal(self.tag_layout)
        m.d.comb += [
            fetch_advance.eq(~fetch_valid | epilogue.i.ready),
            mac.o.ready.eq(fetch_advance),
            incoming_tag.eq(Mux(command.drain, drain_tag, mac.o.p.tag)),
            params_read.addr.eq(incoming_tag.tile),
            params_read.en.eq(fetch_advance),
        ]
        with m.If(fetch_advance):
            m.d.sync += [
                fetch_valid.eq(Mux(command.drain, drain_valid, mac.o.valid)),
                fetch_sums.eq(Mux(command.drain, accumulator_read.data, mac.o.p.sums)),
                fetch_tag.eq(incoming_tag),
            ]
        m.d.comb += [epilogue.i.valid.eq(fetch_valid), epilogue.i.p.tag.eq(fetch_tag)]
        for lane in range(rows):
            gate_lane = lane < rows // 2
            m.d.comb += [
                epilogue.i.p.lanes[lane].acc.eq(fetch_sums[lane]),
                epilogue.i.p.lanes[lane].params.eq(params_read.data[lane]),
                epilogue.i.p.lanes[lane].apply_table.eq(
                    command.activation & (~command.swiglu | gate_lane) & ~command.drain),
            ]

        # -- SwiGLU: silu(gate) * up, then requantised (two stages); plain rows pass through
        half = rows // 2
        out_valid = [Signal(name="combine1_valid"), Signal(name="combine2_valid")]
        out_tag = [Signal(self.tag_layout, name="combine1_tag"),
                   Signal(self.tag_layout, name="combine2_tag")]
        plain = [Signal(data.ArrayLayout(signed(8), rows), name="combine1_plain"),
                 Signal(data.ArrayLayout(signed(8), rows), name="combine2_plain")]
        products = Signal(data.ArrayLayout(signed(16), half))
        hidden = Signal(data.ArrayLayout(signed(8), half))
        out_ready = Signal()
        out_advance = Signal()
        m.d.comb += [
            out_ready.eq(command.to_buffer | command.accumulate | self.o.ready),
            out_advance.eq(~out_valid[1] | out_ready),
            epilogue.o.ready.eq(out_advance),
        ]
        with m.If(out_advance):
            m.d.sync += [
                out_valid[0].eq(epilogue.o.valid), out_valid[1].eq(out_valid[0]),
                out_tag[0].eq(epilogue.o.p.tag), out_tag[1].eq(out_tag[0]),
                plain[0].eq(epilogue.o.p.values), plain[1].eq(plain[0]),
            ]
            for lane in range(half):
                m.d.sync += [
                    products[lane].eq(epilogue.o.p.values[lane] * epilogue.o.p.values[lane + half]),
                    hidden[lane].eq(round_shift_saturate(
                        products[lane] * command.swiglu_multiplier, command.swiglu_shift,
                        16 + nx.MULT_BITS)),
                ]
        values = Signal(data.ArrayLayout(signed(8), rows))
        with m.If(command.swiglu):
            m.d.comb += values.as_value()[:half * 8].eq(hidden.as_value())
        with m.Else():
            m.d.comb += values.eq(plain[1])
        m.d.comb += [
            self.o.valid.eq(out_valid[1] & ~command.to_buffer & ~command.accumulate),
            self.o.p.values.eq(values),
            self.o.p.tag.eq(out_tag[1]),
        ]
        row_done = out_valid[1] & out_ready

        # -- accumulate: gate x row added into the token's accumulator row (stages 2 and 3)
        gates_read = gates.read_port()
        gate2 = Signal(nx.GATE_FRAC_BITS + 1)
        accumulate_valid = Signal()
        accumulate_last = Signal()
        accumulate_address = Signal(range(config.out_buffer_words))
        accumulate_sums = Signal(data.ArrayLayout(signed(32), rows))
        read_address = Signal(range(config.out_buffer_words))
        m.d.comb += [
            gates_read.addr.eq(data.View(self.tag_layout, epilogue.o.p.tag).token),
            gates_read.en.eq(out_advance),
            read_address.eq(gates_read.data.row * command.tiles + out_tag[0].tile),
            accumulator_read.addr.eq(Mux(command.drain, drain_address, read_address)),
            accumulator_read.en.eq(Mux(command.drain, drain_issue, out_advance)),
        ]
        address2 = Signal(range(config.out_buffer_words))
        with m.If(out_advance):
            m.d.sync += [gate2.eq(gates_read.data.gate), address2.eq(read_address)]
        m.d.sync += [
            accumulate_valid.eq(out_valid[1] & command.accumulate),
            accumulate_last.eq(out_tag[1].last),
            accumulate_address.eq(address2),
        ]
        for lane in range(rows):
            m.d.sync += accumulate_sums[lane].eq(accumulator_read.data[lane]
                                                 + gate2 * plain[1][lane])
        m.d.comb += [
            accumulator_write.addr.eq(Mux(command.drain, drain_address, accumulate_address)),
            accumulator_write.data.eq(Mux(command.drain, 0, accumulate_sums)),
            accumulator_write.en.eq(Mux(command.drain, drain_issue, busy & accumulate_valid)),
        ]

        # -- rows into the other activation buffer, or external writes while idle
        word_bytes = config.act_word_bytes
        per_tile = Mux(command.swiglu, half, rows)
        channel = Signal(range(config.max_tiles * rows))
        m.d.comb += channel.eq(out_tag[1].tile * per_tile)
        byte_offset = channel[:word_bytes.bit_length() - 1]
        row_mask = Mux(command.swiglu, (1 << half) - 1, (1 << rows) - 1)
        # The row, repeated across the word: the byte enables pick the copy at its offset.
        repeated = Mux(command.swiglu, Cat([hidden] * (word_bytes // half)),
                       Cat([plain[1]] * (word_bytes // rows)))
        act_ports = [buffer.write_port(granularity=8) for buffer in act_buffers]
        for n, port in enumerate(act_ports):
            with m.If(busy):
                m.d.comb += [
                    port.addr.eq(out_tag[1].token * command.dst_row_words
                                 + (channel >> (word_bytes.bit_length() - 1))),
                    port.data.eq(repeated),
                ]
                with m.If(command.to_buffer & row_done & (command.src != n)):
                    m.d.comb += port.en.eq(row_mask << byte_offset)
            with m.Else():
                m.d.comb += [
                    port.addr.eq(self.act_write.p.addr),
                    port.data.eq(self.act_write.p.data),
                ]
                with m.If(self.act_write.valid & (self.act_write.p.buffer == n)):
                    m.d.comb += port.en.eq(Const(-1, word_bytes))

        # -- pass control and counters
        request = self.cmd.p
        illegal = Signal()
        m.d.comb += illegal.eq(
            (request.tokens == 0) | (request.tokens > config.max_tokens)
            | (request.tiles == 0) | (request.tiles > config.max_tiles)
            | (~request.drain & ((request.chunks == 0)
                                 | (request.chunks > config.weight_bank_words)))
            | (request.drain & (request.tokens * request.tiles > config.out_buffer_words))
            | (request.pattern >= len(patterns)))
        with m.If(~busy & self.cmd.valid):
            m.d.sync += self.error.eq(illegal)
            with m.If(~illegal):
                m.d.sync += [
                    busy.eq(1),
                    command.eq(request),
                    issuing.eq(1),
                    tile.eq(0), token.eq(0), chunk.eq(0),
                    beat.eq(0), fill_word.eq(0), blocks_loaded.eq(0),
                    fill_bank.eq(0), compute_bank.eq(0),
                    drain_row.eq(0), drain_tile.eq(0),
                    self.perf.eq(0),
                ]
        with m.If(busy & Mux(command.accumulate, accumulate_valid & accumulate_last,
                             row_done & out_tag[1].last)):
            m.d.sync += busy.eq(0)
        with m.If(busy):
            m.d.sync += self.perf.busy_cycles.eq(self.perf.busy_cycles + 1)
            with m.If(issue):
                m.d.sync += self.perf.mac_cycles.eq(self.perf.mac_cycles + 1)
            waiting = ~command.drain & issuing & front_advance & ~full.bit_select(compute_bank, 1)
            with m.If(waiting):
                m.d.sync += self.perf.weight_wait.eq(self.perf.weight_wait + 1)
            with m.If(out_valid[1] & ~out_ready):
                m.d.sync += self.perf.output_wait.eq(self.perf.output_wait + 1)
        return m
