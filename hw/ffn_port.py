"""LINEAR and EXPERT_LOOP on the accelerator top: the Expert-FFN engine (`hw.expert_ffn.FFNEngine`,
shared) on the top's buffers, as the emulator's LINEAR and EXPERT_LOOP read and write them
(`host.units`).

* **Memories.** The engine reads its activation rows from ACT0 or ACT1 and writes its results into
  the other, accumulates into OUT and drains it, reads its per-channel parameters from PARAMS and
  its gate table from GATES, all through the buffers' direct ports (`hw.buffers.DIRECT`), a
  memory word an access. PARAMS and GATES hold DRAM records (`CHANNEL_PARAMS`, `TOKEN_GATE`): the
  port cuts each record to its on-chip fields as the engine reads it (`records.Pair.from_dram`).
* **A pass is checked first.** Before the engine starts, the port checks what the emulator refuses
  in the data: the weights against the DMA window (DMA_WINDOW), then each of the pass's tiles of
  PARAMS records (a value its on-chip field cannot hold: BAD_FIELD), then each gate-table entry of
  an accumulating pass (a row past ``max_tokens`` or past the rows OUT holds) or of a gathering one
  (a row past the activation buffer): BAD_FIELD. A tile or an entry a cycle; a refused pass writes
  nothing.
* **The activation table.** The epilogue keeps its own copy of TABLE (it reads ``mac_rows`` entries
  a cycle). A write into TABLE (a LOAD's, ``table_written``, or an expert's) marks the copy stale;
  the next pass that applies the table copies TABLE into the epilogue first, a bus word a cycle.
* **Weights.** Streamed from DRAM by a DMA engine of the port's own (`Dma(to_unit=True)`), or
  (``preloaded``) read from WEIGHT at byte ``sram`` through the unit-side reader, a bus word a
  request, into the engine's weight loader.
* **The expert loop.** EXPERT_LOOP runs, for each expert with tokens, what the emulator runs: its
  count from DISPATCH (refused past ``dispatch_capacity``), its queue's tokens checked against
  ``max_tokens``, its `DESCRIPTOR` read from DRAM and checked (its values' on-chip fields, and the
  two passes' commands, `expert_loop_commands`), its table into TABLE, its queue copied into
  GATES, its first parameters into PARAMS, the first pass gathering its tokens' rows from ACT0 into
  ACT1, its down parameters into PARAMS, and the down pass accumulating into OUT. The DMA engine
  that streams weights also brings the descriptor, the table and the parameters.

``busy`` rises the cycle after ``issue`` (LINEAR) or ``loop_issue`` (EXPERT_LOOP) and falls when the
instruction has ended; ``error`` then says how.
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats import expert_ffn
from ..formats.buffers import Buffer, buffer_bytes
from ..formats.dma import sram_read_request, sram_write
from ..formats.epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS, TABLE_ENTRIES
from ..formats.expert_ffn import EXPERT_FFN_COUNTERS, ffn_command, pass_weight_bytes
from ..formats.instructions import (ADDRESS_BITS, DESCRIPTOR, ErrorCode, expert_loop_body,
                                    linear_body)
from ..formats.router import DISPATCH_COUNT, TOKEN_GATE, dispatch_table
from ..formats.rules import refused_by
from .buffers import direct_signatures, word_bytes
from .controller import compute_port
from .dma import Dma
from .expert_ffn import FFNEngine
from .port_io import RecordReader, log2

__all__ = ["FFNPort", "FFN_DIRECT", "expert_commands", "expert_refused"]

# The buffers' direct ports the engine uses (`hw.buffers.DIRECT`).
FFN_DIRECT = ("act0_read", "act0_write", "act1_read", "act1_write", "params_read", "gates_read",
              "out_read", "out_write")

_QUEUE = 4                      # bus words of preloaded weights held for the engine


def _ceil_shift(value, shift: int):
    """``ceil(value / 2 ** shift)`` of an Amaranth value."""
    return (value + (1 << shift) - 1) >> shift


def expert_commands(m, config, body, tokens, swiglu_multiplier, swiglu_shift):
    """The two `ffn_command` values an EXPERT_LOOP runs for an expert with `tokens` tokens, as
    `formats.instructions.expert_loop_commands` computes them (a property test holds the two
    equal): the first pass from ACT0 into ACT1 with the table applied, the down pass from ACT1
    accumulating into OUT. `body` is a view of `expert_loop_body`."""
    rows, word = config.mac_rows, config.act_word_bytes
    for pattern in config.patterns:
        inputs = expert_ffn.chunk_inputs(config, pattern)
        if inputs & (inputs - 1):
            raise ValueError(f"{config.name}: the expert loop needs chunks of a power-of-two "
                             f"inputs, not {inputs} ({pattern})")
    chunk_shift = Array(Const(log2(expert_ffn.chunk_inputs(config, p)), 4)
                        for p in config.patterns)[body.pattern]
    first, down = Signal(ffn_command(config), name="first"), Signal(ffn_command(config),
                                                                     name="down")
    half_tiles = _ceil_shift(body.d_ff, log2(rows // 2))
    plain_tiles = _ceil_shift(body.d_ff, log2(rows))
    first_tiles = Mux(body.swiglu, half_tiles, plain_tiles)
    first_channels = Mux(body.swiglu, half_tiles * (rows // 2), plain_tiles * rows)
    down_tiles = _ceil_shift(body.d_model, log2(rows))
    m.d.comb += [
        first.tokens.eq(tokens), first.tiles.eq(first_tiles),
        first.chunks.eq((body.d_model + (Const(1, 16) << chunk_shift) - 1) >> chunk_shift),
        first.pattern.eq(body.pattern), first.src.eq(0),
        first.src_row_words.eq(_ceil_shift(body.d_model, log2(word))),
        first.to_buffer.eq(1), first.dst_row_words.eq(_ceil_shift(first_channels, log2(word))),
        first.activation.eq(1), first.swiglu.eq(body.swiglu),
        first.swiglu_multiplier.eq(swiglu_multiplier), first.swiglu_shift.eq(swiglu_shift),
        down.tokens.eq(tokens), down.tiles.eq(down_tiles),
        down.chunks.eq((body.d_ff + (Const(1, 16) << chunk_shift) - 1) >> chunk_shift),
        down.pattern.eq(body.pattern), down.src.eq(1),
        down.src_row_words.eq(_ceil_shift(body.d_ff, log2(word))),
        down.dst_row_words.eq(_ceil_shift(down_tiles * rows, log2(word))),
        down.accumulate.eq(1),
    ]
    return first, down


def expert_refused(config, first, down, tokens, descriptor):
    """What the expert loop refuses of an expert with `tokens` tokens and the DRAM `descriptor`
    (bits of `DESCRIPTOR.dram`), as the emulator refuses it: a descriptor value past its on-chip
    field, more tokens than ``max_tokens``, or a pass command (`expert_commands`) the engine
    refuses (`formats.instructions.expert_check`)."""
    return (DESCRIPTOR.refused(config, descriptor) | (tokens > config.max_tokens)
            | refused_by(expert_ffn.rules(config, first) + expert_ffn.rules(config, down)))


class FFNPort(wiring.Component):
    """LINEAR and EXPERT_LOOP for one `AccelConfig`.

    Ports
    -----
    issue, command : LINEAR: the controller starts one (one cycle), ``command`` its body
        (`formats.instructions.linear_body`)
    loop_issue, loop_command : EXPERT_LOOP, the same (`formats.instructions.expert_loop_body`)
    cancel : the run is ending (ABORTED, WATCHDOG): an EXPERT_LOOP starts no further expert
    window_base, window_size : the DMA window
    m_axi : the port's AXI4 manager port (weights, descriptors, tables, parameters)
    read, read_data : the buffers' unit-side reader (TABLE, preloaded WEIGHT, DISPATCH)
    write : the buffers' unit-side writer (an expert's TABLE, PARAMS and GATES), always taken
    act0_read ... out_write : the buffers' direct ports (`hw.buffers.direct_signatures`)
    table_written : a LOAD wrote TABLE this cycle (the epilogue's copy is stale)
    busy : from the cycle after an issue until the instruction has ended
    error : how it ended (`ErrorCode`), valid when ``busy`` falls
    perf : the engine's `formats.expert_ffn.EXPERT_FFN_COUNTERS`, summed over the instruction's
        passes
    expert_run, expert_skipped : an EXPERT_LOOP has run an expert, or skipped one without
        tokens (a cycle each)
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"FFNPort needs an AccelConfig, not {config!r}")
        words = word_bytes(config)
        tile_sums = 4 * config.mac_rows
        if words[Buffer.ACT0] != config.act_word_bytes or words[Buffer.OUT] != tile_sums:
            raise ValueError(f"{config.name}: the Expert-FFN engine shares ACT0/ACT1 and OUT only "
                             f"when an activation word ({config.act_word_bytes} bytes) and a tile "
                             f"of int32 sums ({tile_sums} bytes) are at least a bus word "
                             f"({config.axi_data_bytes} bytes)")
        self.config = config
        super().__init__({
            **compute_port(config, linear_body(config), EXPERT_FFN_COUNTERS),
            "loop_issue": In(1),
            "loop_command": In(expert_loop_body(config)),
            "cancel": In(1),
            "expert_run": Out(1),
            "expert_skipped": Out(1),
            "read": Out(stream.Signature(sram_read_request(config))),
            "read_data": In(config.axi_data_width),
            "write": Out(stream.Signature(sram_write(config), always_ready=True)),
            **{name: In(signature)
               for name, signature in direct_signatures(config, FFN_DIRECT).items()},
            "table_written": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        bus = config.axi_data_bytes
        lg_bus = log2(bus)
        words = word_bytes(config)
        m.submodules.engine = engine = FFNEngine(config, shared=True)
        m.submodules.dram = dram = Dma(config, to_unit=True)
        wiring.connect(m, dram.m_axi, wiring.flipped(self.m_axi))
        m.d.comb += [dram.window_base.eq(self.window_base),
                     dram.window_size.eq(self.window_size)]

        # -- the pass under way, asked for by LINEAR or by the expert loop
        body = Signal(linear_body(config))
        gather = Signal()
        c = body.command
        size = Signal(ADDRESS_BITS + 1)                   # bytes of weights
        m.d.comb += size.eq(pass_weight_bytes(config, c))
        running = Signal()                                 # the engine has the memories
        owns = Signal()                                    # ... from the cycle of its command
        starting = Signal()
        loop_pass = Signal()                               # the expert loop asks for a pass
        loop_body = Signal(linear_body(config))
        loop_gather = Signal()
        pass_idle = Signal()
        pass_error = Signal(ErrorCode)

        # -- the activation table's copy in the epilogue: stale after a write into TABLE (and at
        # reset: TABLE starts zero, the epilogue's copy as the identity)
        stale = Signal(init=1)
        table_loaded = Signal()                            # the expert loop wrote TABLE

        # -- the records read from PARAMS and GATES: by the checks first, then by the engine
        check_index = Signal(range(max(config.max_tiles, config.max_tokens) + 1))
        checking_params, checking_gates = Signal(), Signal()
        tile_bytes = config.mac_rows * CHANNEL_PARAMS.size
        params = RecordReader(m, "params", self.params_read, tile_bytes, words[Buffer.PARAMS],
                          Mux(owns, engine.params_read.addr, check_index),
                          Mux(owns, engine.params_read.en, checking_params))
        gates = RecordReader(m, "gates", self.gates_read, TOKEN_GATE.size, words[Buffer.GATES],
                         Mux(owns, engine.gates_read.addr, check_index),
                         Mux(owns, engine.gates_read.en, checking_gates))
        record = data.View(data.ArrayLayout(CHANNEL_PARAMS.dram, config.mac_rows), params.record)
        for lane in range(config.mac_rows):
            m.d.comb += engine.params_read.data[lane].eq(
                CHANNEL_PARAMS.from_dram(config, record[lane]))
        m.d.comb += engine.gates_read.data.eq(TOKEN_GATE.from_dram(config, gates.record))
        # a check's answer, the cycle after its read
        params_answer, gates_answer = Signal(), Signal()
        m.d.sync += [params_answer.eq(checking_params), gates_answer.eq(checking_gates)]
        entry = data.View(TOKEN_GATE.dram, gates.record)
        out_words = buffer_bytes(config)[Buffer.OUT] // words[Buffer.OUT]
        params_refused = Const(0, 1)
        for lane in range(config.mac_rows):
            params_refused = params_refused | CHANNEL_PARAMS.refused(config, record[lane])
        gate_refused = (TOKEN_GATE.refused(config, gates.record)
                        | (entry.token >= config.max_tokens)
                        | (c.accumulate & ((entry.token + 1) * c.tiles > out_words))
                        | (gather & ((entry.token + 1) * c.src_row_words
                                     > config.act_buffer_words)))
        refused = Signal()
        m.d.comb += refused.eq((params_answer & params_refused) | (gates_answer & gate_refused))

        # -- the other memories: the engine's, while it runs
        for n in range(2):
            read, write = getattr(self, f"act{n}_read"), getattr(self, f"act{n}_write")
            mine_r, mine_w = getattr(engine, f"act_read{n}"), getattr(engine, f"act_write{n}")
            m.d.comb += [read.addr.eq(mine_r.addr), read.en.eq(owns & mine_r.en & (c.src == n)),
                         mine_r.data.eq(read.data),
                         write.addr.eq(mine_w.addr), write.data.eq(mine_w.data),
                         write.en.eq(Mux(owns, mine_w.en, 0))]
        out_read, out_write = engine.accumulator_read, engine.accumulator_write
        m.d.comb += [
            self.out_read.addr.eq(out_read.addr), self.out_read.en.eq(owns & out_read.en),
            out_read.data.eq(self.out_read.data),
            self.out_write.addr.eq(out_write.addr), self.out_write.data.eq(out_write.data),
            self.out_write.en.eq((owns & out_write.en).replicate(words[Buffer.OUT])),
            engine.cmd.p.eq(c), engine.gather.eq(gather),
        ]

        # -- the unit-side reader: the pass's (table copy, preloaded weights) or the loop's
        pass_read = Signal(sram_read_request(config))
        pass_read_valid = Signal()
        loop_read = Signal(sram_read_request(config))
        loop_read_valid = Signal()
        looping = Signal()                                 # the loop is reading DISPATCH
        with m.If(looping):
            m.d.comb += [self.read.valid.eq(loop_read_valid), self.read.p.eq(loop_read)]
        with m.Else():
            m.d.comb += [self.read.valid.eq(pass_read_valid), self.read.p.eq(pass_read)]

        # -- preloaded weights: bus words from WEIGHT into a small queue the engine takes from
        m.submodules.preloaded = queue = fifo.SyncFIFO(width=8 * bus, depth=_QUEUE)
        reading = Signal(ADDRESS_BITS + 1)                 # bus words still to ask for
        word = Signal(ADDRESS_BITS)
        pending = Signal()
        table_read = Signal()                              # the table copy's request
        table_word = Signal(range(TABLE_ENTRIES // bus + 1))
        m.d.comb += [
            pass_read_valid.eq(table_read | ((reading != 0) & (queue.level + pending < _QUEUE))),
            pass_read.buffer.eq(Mux(table_read, Buffer.TABLE, Buffer.WEIGHT)),
            pass_read.addr.eq(Mux(table_read, table_word, word)),
        ]
        taken = self.read.valid & self.read.ready & ~looping
        m.d.sync += pending.eq(taken & ~table_read)
        with m.If(taken & ~table_read):
            m.d.sync += [reading.eq(reading - 1), word.eq(word + 1)]
        m.d.comb += [queue.w_data.eq(self.read_data), queue.w_en.eq(pending)]

        # -- the DMA engine: the pass's weights, or the loop's descriptor, table and parameters
        weights_cmd = Signal()
        loop_cmd = Signal()
        loop_transfer = Signal(dram.cmd.p.transfer.shape())
        into_buffer = Signal()                             # the loop's transfer into a buffer
        into_descriptor = Signal()                         # ... into the descriptor
        descriptor = Signal(DESCRIPTOR.dram)
        transfer = dram.cmd.p.transfer
        m.d.comb += [dram.cmd.p.store.eq(0), dram.cmd.valid.eq(weights_cmd | loop_cmd)]
        with m.If(loop_cmd):
            m.d.comb += transfer.eq(loop_transfer)
        with m.Else():
            m.d.comb += [transfer.buffer.eq(Buffer.WEIGHT), transfer.dram.eq(body.weights),
                         transfer.rows.eq(1), transfer.row_bytes.eq(size)]
        loop_write = Signal(sram_write(config))
        loop_write_valid = Signal()
        with m.If(into_buffer):
            m.d.comb += [self.write.valid.eq(dram.sram_write.valid), self.write.p.eq(
                dram.sram_write.p), dram.sram_write.ready.eq(1)]
        with m.Elif(into_descriptor):
            m.d.comb += dram.sram_write.ready.eq(1)
            with m.If(dram.sram_write.valid):
                m.d.sync += descriptor.as_value().word_select(
                    dram.sram_write.p.addr[:log2(DESCRIPTOR.size // bus) or 1]
                    if DESCRIPTOR.size > bus else 0, 8 * bus).eq(dram.sram_write.p.data)
        with m.Else():
            m.d.comb += [self.write.valid.eq(loop_write_valid), self.write.p.eq(loop_write)]
            with m.If(body.preloaded):
                m.d.comb += [engine.weights.valid.eq(queue.r_rdy),
                             engine.weights.p.eq(queue.r_data),
                             queue.r_en.eq(engine.weights.ready)]
            with m.Else():
                m.d.comb += [engine.weights.valid.eq(dram.sram_write.valid),
                             engine.weights.p.eq(dram.sram_write.p.data),
                             dram.sram_write.ready.eq(engine.weights.ready)]

        # -- the table copy: a bus word read, then its entries one a cycle
        # -- the table copy: a bus word of entries a cycle, each written as it is read
        table_pending = Signal()
        table_pending_word = Signal.like(table_word)
        table_taken = self.read.valid & self.read.ready & table_read
        m.d.sync += [table_pending.eq(table_taken), table_pending_word.eq(table_word)]
        m.d.comb += [engine.table_write.valid.eq(table_pending),
                     engine.table_write.p.index.eq(table_pending_word),
                     engine.table_write.p.values.eq(self.read_data)]

        # -- a pass: its checks, the table copy, then the engine
        request = Signal(linear_body(config))
        m.d.comb += request.eq(Mux(self.issue, self.command, loop_body))
        outside = ((request.preloaded == 0) & (pass_weight_bytes(config, request.command) != 0)
                   & (request.weights + pass_weight_bytes(config, request.command)
                      > self.window_size))
        bad = Signal()                                     # a check has refused a record
        m.d.sync += bad.eq(bad | refused)
        with m.FSM(name="pass") as fsm:
            with m.State("IDLE"):
                with m.If(self.issue | loop_pass):
                    m.d.sync += [body.eq(request), gather.eq(~self.issue & loop_gather),
                                 check_index.eq(0), bad.eq(0), pass_error.eq(ErrorCode.NONE)]
                    with m.If(outside):
                        m.d.sync += pass_error.eq(ErrorCode.DMA_WINDOW)
                        m.next = "END"
                    with m.Else():
                        m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += checking_params.eq(1)
                m.d.sync += check_index.eq(check_index + 1)
                with m.If(check_index + 1 == c.tiles):
                    m.d.sync += check_index.eq(0)
                    m.next = "GATES"
            with m.State("GATES"):
                # the last tile's answer is checked in this state's first cycle
                with m.If(bad | refused):
                    m.d.sync += pass_error.eq(ErrorCode.BAD_FIELD)
                    m.next = "END"
                with m.Elif(~c.accumulate & ~gather):
                    m.next = "TABLE"
                with m.Else():
                    m.d.comb += checking_gates.eq(1)
                    m.d.sync += check_index.eq(check_index + 1)
                    with m.If(check_index + 1 == c.tokens):
                        m.next = "GATES_LAST"
            with m.State("GATES_LAST"):
                with m.If(bad | refused):
                    m.d.sync += pass_error.eq(ErrorCode.BAD_FIELD)
                    m.next = "END"
                with m.Else():
                    m.next = "TABLE"
            with m.State("TABLE"):
                with m.If(bad | refused):
                    m.d.sync += pass_error.eq(ErrorCode.BAD_FIELD)
                    m.next = "END"
                with m.Elif(c.activation & ~c.drain & stale):
                    m.d.sync += [table_word.eq(0), stale.eq(0)]
                    m.next = "TABLE_COPY"
                with m.Else():
                    m.next = "START"
            with m.State("TABLE_COPY"):
                m.d.comb += table_read.eq(table_word != TABLE_ENTRIES // bus)
                with m.If(table_taken):
                    m.d.sync += table_word.eq(table_word + 1)
                with m.If((table_word == TABLE_ENTRIES // bus) & ~table_pending):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [engine.cmd.valid.eq(1), starting.eq(1)]
                m.d.sync += running.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(engine.error):
                    m.d.sync += [pass_error.eq(ErrorCode.BAD_FIELD), running.eq(0)]
                    m.next = "END"
                with m.Else():
                    with m.If(body.preloaded):
                        m.d.sync += [reading.eq(size >> lg_bus), word.eq(body.sram >> lg_bus)]
                    with m.Else():
                        m.d.comb += weights_cmd.eq(size != 0)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(~engine.busy & ~dram.busy & (reading == 0) & ~pending
                          & ~queue.r_rdy):
                    m.d.sync += running.eq(0)
                    # the engine's counters are its pass's: the port's, the instruction's
                    for field in EXPERT_FFN_COUNTERS.members:
                        m.d.sync += self.perf[field].eq(self.perf[field] + engine.perf[field])
                    m.next = "IDLE"
            with m.State("END"):
                m.next = "IDLE"
        m.d.comb += [pass_idle.eq(fsm.ongoing("IDLE")), owns.eq(starting | running)]
        with m.If(self.table_written | table_loaded):
            m.d.sync += stale.eq(1)

        loop_busy, loop_error = self._loop(
            m, dram, descriptor, loop_pass, loop_body, loop_gather, pass_idle, pass_error,
            loop_cmd, loop_transfer, into_buffer, into_descriptor, table_loaded, looping,
            loop_read, loop_read_valid, loop_write, loop_write_valid)
        is_loop = Signal()
        with m.If(self.issue):
            m.d.sync += is_loop.eq(0)
        with m.If(self.loop_issue):
            m.d.sync += is_loop.eq(1)
        with m.If(self.issue | self.loop_issue):
            m.d.sync += self.perf.eq(0)
        m.d.comb += [self.busy.eq(~pass_idle | loop_busy),
                     self.error.eq(Mux(is_loop, loop_error, pass_error))]
        return m

    def _loop(self, m, dram, descriptor, loop_pass, loop_body, loop_gather, pass_idle,
              pass_error, loop_cmd, loop_transfer, into_buffer, into_descriptor, table_loaded,
              looping, loop_read, loop_read_valid, loop_write, loop_write_valid):
        """EXPERT_LOOP: the experts one after the other, each a sequence of transfers, checks and
        two passes; returns its busy and error signals."""
        config = self.config
        bus = config.axi_data_bytes
        lg_bus = log2(bus)
        per_word = bus // TOKEN_GATE.size                  # gate records a bus word
        table_layout = dispatch_table(config)
        counts_byte = table_layout["counts"].offset // 8
        queues_byte = table_layout["queues"].offset // 8
        queue_bytes = config.dispatch_capacity * TOKEN_GATE.size
        loop = Signal(expert_loop_body(config))
        expert = Signal(range(config.max_experts + 1))
        count = Signal(16)
        index = Signal(16)                                 # a queue's bus word
        error = Signal(ErrorCode)
        desc = data.View(DESCRIPTOR.dram, descriptor)
        first, down = expert_commands(m, config, loop, count, desc.swiglu_multiplier,
                                      desc.swiglu_shift)
        refused = Signal()
        m.d.comb += refused.eq(expert_refused(config, first, down, count, descriptor))
        queue_words = _ceil_shift(count * TOKEN_GATE.size, lg_bus)
        queue_word = (queues_byte >> lg_bus) + expert * (queue_bytes >> lg_bus) + index
        count_byte = counts_byte + expert * DISPATCH_COUNT.size
        count_value = self.read_data.word_select(
            count_byte[:lg_bus] >> log2(DISPATCH_COUNT.size), 8 * DISPATCH_COUNT.size) \
            if bus > DISPATCH_COUNT.size else self.read_data[:8 * DISPATCH_COUNT.size]
        # the tokens of one queue word: a record past the count is not looked at
        token_bad = Const(0, 1)
        for slot in range(per_word):
            record = data.View(TOKEN_GATE.dram, self.read_data.word_select(slot, 8 * TOKEN_GATE.size))
            token_bad = token_bad | ((index * per_word + slot < count)
                                     & (record.token >= config.max_tokens))
        # the last queue word's bytes
        tail = count * TOKEN_GATE.size - (index << lg_bus)
        strobe = Mux(tail >= bus, (1 << bus) - 1, (Const(1, bus + 1) << tail[:lg_bus + 1]) - 1)

        def fetch(state, at, buffer, nbytes, then, into, done=lambda: None):
            """States `state` and `state`_WAIT: a transfer from DRAM `at` (into `buffer`, or with
            `into` the descriptor), then `done()` and `then`; its fault ends the loop."""
            with m.State(state):
                # assigned whole: bits no process sets would be `always @*` blocks of a
                # constant, which an event-driven simulator never runs
                m.d.comb += [loop_cmd.eq(1), loop_transfer.eq(0), loop_transfer.buffer.eq(buffer),
                             loop_transfer.dram.eq(at), loop_transfer.rows.eq(1),
                             loop_transfer.row_bytes.eq(nbytes)]
                m.next = f"{state}_WAIT"
            with m.State(f"{state}_WAIT"):
                m.d.comb += into.eq(1)
                with m.If(~dram.busy):
                    with m.If(dram.error):
                        m.d.sync += error.eq(dram.error_code)
                        m.next = "IDLE"
                    with m.Else():
                        done()
                        m.next = then

        def run_pass(state, command, weights, gathered, then, done=lambda: None):
            """States `state` and `state`_WAIT: a pass of the engine, then `done()` and `then`; its
            fault ends the loop."""
            with m.State(state):
                m.d.comb += [loop_pass.eq(1), loop_body.eq(0), loop_body.command.eq(command),
                             loop_body.weights.eq(weights), loop_gather.eq(gathered)]
                m.next = f"{state}_WAIT"
            with m.State(f"{state}_WAIT"):
                with m.If(pass_idle):
                    with m.If(pass_error != ErrorCode.NONE):
                        m.d.sync += error.eq(pass_error)
                        m.next = "IDLE"
                    with m.Else():
                        done()
                        m.next = then

        def loaded_table():
            m.d.comb += table_loaded.eq(1)

        def expert_done():
            m.d.comb += self.expert_run.eq(1)
            m.d.sync += expert.eq(expert + 1)

        params_bytes = config.mac_rows * CHANNEL_PARAMS.size
        with m.FSM(name="loop") as fsm:
            with m.State("IDLE"):
                with m.If(self.loop_issue):
                    m.d.sync += [loop.eq(self.loop_command), expert.eq(0),
                                 error.eq(ErrorCode.NONE)]
                    m.next = "COUNT"
            with m.State("COUNT"):
                with m.If((expert == loop.experts) | self.cancel):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [looping.eq(1), loop_read_valid.eq(1),
                                 loop_read.buffer.eq(Buffer.DISPATCH),
                                 loop_read.addr.eq(count_byte >> lg_bus)]
                    with m.If(self.read.ready):
                        m.next = "COUNT_DATA"
            with m.State("COUNT_DATA"):
                m.d.sync += [count.eq(count_value), index.eq(0)]
                with m.If(count_value > config.dispatch_capacity):
                    m.d.sync += error.eq(ErrorCode.BAD_FIELD)
                    m.next = "IDLE"
                with m.Elif(count_value == 0):
                    m.d.sync += expert.eq(expert + 1)
                    m.d.comb += self.expert_skipped.eq(1)
                    m.next = "COUNT"
                with m.Else():
                    m.next = "SCAN"
            with m.State("SCAN"):                      # the queue's tokens, a word at a time
                m.d.comb += [looping.eq(1), loop_read_valid.eq(1),
                             loop_read.buffer.eq(Buffer.DISPATCH), loop_read.addr.eq(queue_word)]
                with m.If(self.read.ready):
                    m.next = "SCAN_DATA"
            with m.State("SCAN_DATA"):
                m.d.sync += index.eq(index + 1)
                with m.If(token_bad):
                    m.d.sync += error.eq(ErrorCode.BAD_FIELD)
                    m.next = "IDLE"
                with m.Elif(index + 1 == queue_words):
                    m.d.sync += index.eq(0)
                    m.next = "DESCRIPTOR"
                with m.Else():
                    m.next = "SCAN"
            fetch("DESCRIPTOR", loop.table + expert * DESCRIPTOR.size, Buffer.WEIGHT,
                  DESCRIPTOR.size, "CHECK", into_descriptor)
            with m.State("CHECK"):
                with m.If(refused):
                    m.d.sync += error.eq(ErrorCode.BAD_FIELD)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "TABLE"
            fetch("TABLE", desc.table, Buffer.TABLE, ACTIVATION_TABLE.size // 8, "COPY",
                  into_buffer, loaded_table)
            with m.State("COPY"):                      # the queue into GATES, a word at a time
                m.d.comb += [looping.eq(1), loop_read_valid.eq(1),
                             loop_read.buffer.eq(Buffer.DISPATCH), loop_read.addr.eq(queue_word)]
                with m.If(self.read.ready):
                    m.next = "COPY_WRITE"
            with m.State("COPY_WRITE"):
                m.d.comb += [loop_write_valid.eq(1), loop_write.buffer.eq(Buffer.GATES),
                             loop_write.addr.eq(index), loop_write.data.eq(self.read_data),
                             loop_write.strobe.eq(strobe)]
                m.d.sync += index.eq(index + 1)
                with m.If(index + 1 == queue_words):
                    m.next = "FIRST_PARAMS"
                with m.Else():
                    m.next = "COPY"
            fetch("FIRST_PARAMS", desc.first_params, Buffer.PARAMS, first.tiles * params_bytes,
                  "FIRST", into_buffer)
            run_pass("FIRST", first, desc.first, 1, "DOWN_PARAMS")
            fetch("DOWN_PARAMS", desc.down_params, Buffer.PARAMS, down.tiles * params_bytes,
                  "DOWN", into_buffer)
            run_pass("DOWN", down, desc.down, 0, "COUNT", expert_done)
        return ~fsm.ongoing("IDLE"), error
