"""The Expert-FFN engine: int8 projections on the MAC array, dense or M:N, with the fused epilogue and
SwiGLU, weights streaming into two banks while the array computes from the other.

A pass multiplies ``tokens`` activation rows by ``tiles`` weight blocks. The loop is output-stationary:
for each tile (``mac_rows`` output channels), for each token, the words of the block stream through
the array, one per cycle, and the finished row goes through the epilogue. A tile's weights are read
from DRAM once per pass and reused for every token from the bank; while the array works on one bank,
the next block fills the other.

The engine is built stage by stage, each stage one method: the weight loader (a `WeightLoader`),
issue (the tile/token/chunk counters reading a weight word and an activation window a cycle into
the `MacArray`), drain (accumulator rows instead of the array, for a drain pass), the parameter
fetch in front of the `Epilogue`, the SwiGLU stages behind it, the accumulation into the output
rows, the writes into the other activation buffer, and the pass control.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out, flipped

from ..config import AccelConfig
from ..formats import expert_ffn
from ..formats.epilogue import CHANNEL_PARAMS, table_word_write
from ..formats.expert_ffn import (EXPERT_FFN_COUNTERS, act_write, ffn_command, ffn_out, ffn_tag,
                                  gates_write, params_write)
from ..formats.router import TOKEN_GATE
from ..formats.rules import refused_by
from ..sw import numerics as nx
from .arith import round_shift_saturate
from .epilogue import Epilogue
from .loops import Loop, LoopNest
from .mac_array import MacArray
from .weight_loader import WeightLoader

__all__ = ["FFNEngine", "memory_ports"]


def _address_bits(depth: int) -> int:
    return max(0, (depth - 1).bit_length())


def memory_ports(config: AccelConfig) -> dict:
    """The memories a shared engine reaches through ports (`FFNEngine(shared=True)`), as each
    port's signature from the memory's side: the two activation buffers (a read and a byte-enabled
    write port each), the epilogue parameters (a tile a word), the gate table and the output
    accumulator (a tile of int32 sums a word, one read and one write port)."""
    act = dict(addr_width=_address_bits(config.act_buffer_words),
               shape=unsigned(8 * config.act_word_bytes))
    out = dict(addr_width=_address_bits(config.out_buffer_words),
               shape=data.ArrayLayout(signed(32), config.mac_rows))
    return {
        "act_read0": memory.ReadPort.Signature(**act),
        "act_read1": memory.ReadPort.Signature(**act),
        "act_write0": memory.WritePort.Signature(**act, granularity=8),
        "act_write1": memory.WritePort.Signature(**act, granularity=8),
        "params_read": memory.ReadPort.Signature(
            addr_width=_address_bits(config.max_tiles),
            shape=data.ArrayLayout(CHANNEL_PARAMS.onchip(config), config.mac_rows)),
        "gates_read": memory.ReadPort.Signature(addr_width=_address_bits(config.max_tokens),
                                                shape=TOKEN_GATE.onchip(config)),
        "accumulator_read": memory.ReadPort.Signature(**out),
        "accumulator_write": memory.WritePort.Signature(**out),
    }

class _Pass:
    """The signals more than one stage of the engine reads, declared before any stage is built."""

    def __init__(self, config: AccelConfig, tag_layout: data.StructLayout):
        self.command = Signal(ffn_command(config))    # the pass, held while busy
        self.gather = Signal()          # the pass's rows are gathered (held while busy)
        self.start = Signal()           # a legal command is taken: every stage restarts
        self.issuing = Signal()         # words (or accumulator rows) remain to be issued
        # issue
        self.issue = Signal()           # a weight word and its window are read this cycle
        self.front_advance = Signal()   # the two issue stages move
        self.compute_bank = Signal()    # the weight bank the array reads
        # drain
        self.drain_valid = Signal()     # an accumulator row's read data is present
        self.drain_tag = Signal(tag_layout)
        self.drain_issue = Signal()     # an accumulator row is read (and cleared) this cycle
        self.drain_address = Signal(range(config.out_buffer_words))
        # parameter fetch
        self.fetch_advance = Signal()   # the fetch stage takes a row
        # the two SwiGLU/output stages behind the epilogue
        rows, half = config.mac_rows, config.mac_rows // 2
        self.out_valid = [Signal(name="combine1_valid"), Signal(name="combine2_valid")]
        self.out_tag = [Signal(tag_layout, name="combine1_tag"),
                        Signal(tag_layout, name="combine2_tag")]
        self.plain = [Signal(data.ArrayLayout(signed(8), rows), name="combine1_plain"),
                      Signal(data.ArrayLayout(signed(8), rows), name="combine2_plain")]
        self.hidden = Signal(data.ArrayLayout(signed(8), half))   # silu(gate) x up, requantised
        self.out_ready = Signal()       # the second stage's row can leave
        self.out_advance = Signal()     # the two stages move
        self.row_done = Signal()        # a row leaves the second stage
        # accumulate
        self.accumulate_valid = Signal()
        self.accumulate_last = Signal()


class FFNEngine(wiring.Component):
    """The Expert-FFN engine for one `AccelConfig`.

    Ports
    -----
    cmd : stream of `formats.expert_ffn.ffn_command(config)`; accepted when idle, starts a pass
    weights : stream of bus beats (``axi_data_width`` bits): the pass's weight blocks, packed by
        `sw.sparsity.pack`
    o : stream of `formats.expert_ffn.ffn_out(config)`, the result rows (unless the pass writes them to a
        buffer)
    act_write, params_write, table_write, gates_write : fill the activation buffers, the
        per-channel epilogue parameters, the activation table and the gate table; accepted while
        idle (a shared engine has only ``table_write``, a bus word of table entries a write)
    act_read0 ... accumulator_write : a shared engine's memory ports (`memory_ports`), each read
        answered the cycle after its ``en``
    gather : with a command: the pass reads token i's activation row from the row the gate
        table's entry i names (an expert's tokens, gathered), instead of row i
    busy : a pass is under way
    error : the last command was refused (`formats.expert_ffn.check`: a count of zero, more than
        the buffers hold, flags that do not go together)
    perf : `formats.expert_ffn.EXPERT_FFN_COUNTERS`, cleared when a pass starts
    """

    def __init__(self, config: AccelConfig, shared: bool = False):
        """`shared`: the activation buffers, the parameters, the gate table and the accumulator
        are outside the engine (the accelerator top's buffers), reached through the
        `memory_ports`; otherwise the engine holds them and fills them from its write streams."""
        if not isinstance(config, AccelConfig):
            raise TypeError(f"FFNEngine needs an AccelConfig, not {config!r}")
        if config.mac_rows < 2:
            raise ValueError(f"{config.name}: the Expert-FFN engine needs mac_rows >= 2 (SwiGLU "
                             f"pairs gate and up channels in one tile), not {config.mac_rows}")
        self.config = config
        self.shared = shared
        # a shared engine's table is written a bus word of entries at a time
        self.table_entries = config.axi_data_bytes if shared else 1
        self.tag_layout = ffn_tag(config)
        ports = {
            "cmd": In(stream.Signature(ffn_command(config))),
            "weights": In(stream.Signature(unsigned(config.axi_data_width))),
            "o": Out(stream.Signature(ffn_out(config))),
            "table_write": In(stream.Signature(table_word_write(self.table_entries))),
            "gather": In(1),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(EXPERT_FFN_COUNTERS),
        }
        if shared:
            ports.update({name: In(signature)
                          for name, signature in memory_ports(config).items()})
        else:
            ports.update({
                "act_write": In(stream.Signature(act_write(config))),
                "params_write": In(stream.Signature(params_write(config))),
                "gates_write": In(stream.Signature(gates_write(config))),
            })
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        config = self.config
        tag_bits = self.tag_layout.size
        m.submodules.mac = mac = MacArray(config, tag_bits)
        m.submodules.epilogue = epilogue = Epilogue(config.mac_rows, tag_bits, self.table_entries)
        m.submodules.weight_loader = loader = WeightLoader(config)
        memories = self._memories(m)
        run = _Pass(config, self.tag_layout)

        self._load_while_idle(m, run, memories, epilogue)
        self._load_weights(m, run, memories, loader)
        self._issue(m, run, memories, loader, mac)
        self._drain(m, run)
        self._fetch_parameters(m, run, memories, mac, epilogue)
        self._combine(m, run, epilogue)
        self._accumulate(m, run, memories, epilogue)
        self._write_rows(m, run, memories)
        self._control(m, run, loader)
        return m

    def _memories(self, m) -> dict:
        """The weight banks, and the ports of the activation buffers, the epilogue parameters, the
        gate table and the output accumulator: the engine's own memories', or (shared) its
        `memory_ports`."""
        config = self.config
        banks = []
        for n in range(2):
            bank = memory.Memory(shape=unsigned(config.weight_word_bits),
                                 depth=config.weight_bank_words, init=[])
            m.submodules[f"weight_bank{n}"] = bank
            banks.append(bank)
        if self.shared:
            ports = {name: getattr(self, name) for name in memory_ports(config)}
        else:
            ports = {}
            for n in range(2):
                buffer = memory.Memory(shape=unsigned(config.act_word_bytes * 8),
                                       depth=config.act_buffer_words, init=[])
                m.submodules[f"act_buffer{n}"] = buffer
                ports[f"act_read{n}"] = buffer.read_port()
                ports[f"act_write{n}"] = buffer.write_port(granularity=8)
            rows = config.mac_rows
            for name, shape, depth in (
                    ("params", data.ArrayLayout(CHANNEL_PARAMS.onchip(config), rows),
                     config.max_tiles),
                    ("gates", TOKEN_GATE.onchip(config), config.max_tokens),
                    ("accumulator", data.ArrayLayout(signed(32), rows), config.out_buffer_words)):
                m.submodules[name] = mem = memory.Memory(shape=shape, depth=depth, init=[])
                ports[f"{name}_read"] = mem.read_port()
                ports[f"{name}_write"] = mem.write_port()
        return {"banks": banks, **ports}

    def _load_while_idle(self, m, run: _Pass, memories: dict, epilogue: Epilogue) -> None:
        """Commands and the activation table are taken while idle; so are (unless shared)
        activations, parameters and the gate table."""
        busy = self.busy
        m.d.comb += [
            self.cmd.ready.eq(~busy),
            self.table_write.ready.eq(~busy),
            epilogue.table_write.valid.eq(self.table_write.valid & ~busy),
            epilogue.table_write.p.eq(self.table_write.p),
        ]
        if self.shared:
            return
        m.d.comb += [
            self.act_write.ready.eq(~busy),
            self.params_write.ready.eq(~busy),
            self.gates_write.ready.eq(~busy),
        ]
        params_port = memories["params_write"]
        m.d.comb += [
            params_port.addr.eq(self.params_write.p.tile),
            params_port.data.eq(self.params_write.p.params),
            params_port.en.eq(self.params_write.valid & ~busy),
        ]
        gates_port = memories["gates_write"]
        m.d.comb += [
            gates_port.addr.eq(self.gates_write.p.slot),
            gates_port.data.eq(self.gates_write.p.entry),
            gates_port.en.eq(self.gates_write.valid & ~busy),
        ]

    def _load_weights(self, m, run: _Pass, memories: dict, loader: WeightLoader) -> None:
        """The weight beats go to the loader, which fills the banks (releases come from issue)."""
        command = run.command
        wiring.connect(m, flipped(self.weights), loader.beats)
        for port, bank in zip(loader.bank_write, memories["banks"]):
            wiring.connect(m, port, bank.write_port())
        m.d.comb += [
            loader.start.eq(run.start),
            loader.active.eq(self.busy & ~command.drain),
            loader.pattern.eq(command.pattern),
            loader.chunks.eq(command.chunks),
            loader.blocks.eq(command.tiles),
        ]

    def _issue(self, m, run: _Pass, memories: dict, loader: WeightLoader, mac: MacArray) -> None:
        """For each tile, each token, each chunk: read a weight word from the tile's bank and the
        activation word holding the chunk's window (stage F1), then take the window out of it and
        present both to the array (stage F2). A bank is released once its block's last word has
        been read."""
        config, command = self.config, run.command
        patterns, cols = config.patterns, config.mac_cols
        gates_read = memories["gates_read"]
        tile = Signal(range(config.max_tiles))
        token = Signal(range(config.max_tokens))
        chunk = Signal(range(config.weight_bank_words))
        # the last tile holds: nothing is issued after it until the next pass restarts the nest
        words = LoopNest(Loop(tile, command.tiles), Loop(token, command.tokens),
                         Loop(chunk, command.chunks), at_end="hold")
        compute_bank = run.compute_bank
        front_valid = Signal()        # stage F1: read data present
        front_advance, issue = run.front_advance, run.issue
        m.d.comb += [
            front_advance.eq(~mac.i.valid | mac.i.ready),
            issue.eq(self.busy & ~command.drain & run.issuing
                     & loader.full.bit_select(compute_bank, 1) & front_advance),
        ]

        # chunk -> activation word and the window's position in it, by pattern
        max_ratio = config.max_ratio
        chunks_per_word = Array(Const(max_ratio * p.n // p.m, 8) for p in patterns)
        word_shift = Array(Const((max_ratio * p.n // p.m).bit_length() - 1, 4) for p in patterns)
        ratio = Array(Const(p.m // p.n, 8) for p in patterns)
        act_word = Signal(range(config.act_buffer_words))
        position = Signal(range(max_ratio))           # window offset, in units of mac_cols bytes
        m.d.comb += [
            act_word.eq(Mux(run.gather, gates_read.data.token, token) * command.src_row_words
                        + (chunk >> word_shift[command.pattern])),
            position.eq((chunk & (chunks_per_word[command.pattern] - 1)) * ratio[command.pattern]),
        ]
        bank_reads = [bank.read_port() for bank in memories["banks"]]
        act_reads = [memories["act_read0"], memories["act_read1"]]
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
                front_first.eq(words.first(chunk)),
                front_last.eq(words.last(chunk)),
                front_tag.token.eq(token),
                front_tag.tile.eq(tile),
                front_tag.last.eq(words.done),
            ]
        # gathering, the gate table's entry for the next token is read as the token advances (and
        # entry 0 as the pass starts): its row is there when the token's first word issues
        with m.If(Mux(self.busy, run.gather, self.gather)):
            m.d.comb += [
                gates_read.addr.eq(Mux(run.start | words.last(token), 0, token + 1)),
                gates_read.en.eq(run.start | (issue & words.wraps(chunk))),
            ]
        words.step(m, issue)
        with m.If(issue & words.wraps(token)):
            m.d.sync += compute_bank.eq(~compute_bank)
        with m.If(issue & words.done):
            m.d.sync += run.issuing.eq(0)
        with m.If(run.start):
            words.restart(m)
            m.d.sync += compute_bank.eq(0)

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
            loader.release.eq(Mux(issue & words.wraps(token), 1 << compute_bank, 0)),
        ]

    def _drain(self, m, run: _Pass) -> None:
        """A drain pass: the accumulator rows in order (token by token, tile by tile), each read
        once into the parameter fetch and cleared (the clearing write is in `_accumulate`)."""
        config, command = self.config, run.command
        drain_row = Signal(range(config.max_tokens))
        drain_tile = Signal(range(config.max_tiles))
        rows = LoopNest(Loop(drain_row, command.tokens), Loop(drain_tile, command.tiles),
                        at_end="count")
        taken = ~run.drain_valid | run.fetch_advance       # the read data moves on
        m.d.comb += [
            run.drain_address.eq(drain_row * command.tiles + drain_tile),
            run.drain_issue.eq(self.busy & command.drain & run.issuing & taken),
        ]
        with m.If(taken):
            m.d.sync += [
                run.drain_valid.eq(run.drain_issue),
                run.drain_tag.token.eq(drain_row),
                run.drain_tag.tile.eq(drain_tile),
                run.drain_tag.last.eq(rows.done),
            ]
        rows.step(m, run.drain_issue)
        with m.If(run.drain_issue & rows.done):
            m.d.sync += run.issuing.eq(0)
        with m.If(run.start):
            rows.restart(m)

    def _fetch_parameters(self, m, run: _Pass, memories: dict, mac: MacArray,
                          epilogue: Epilogue) -> None:
        """A row from the array (or, draining, from the accumulator) is registered while its tile's
        channel parameters are read, then enters the epilogue."""
        command, rows = run.command, self.config.mac_rows
        fetch_valid = Signal()
        fetch_sums = Signal.like(mac.o.p.sums)
        fetch_tag = Signal(self.tag_layout)
        params_read = memories["params_read"]
        incoming_tag = Signal(self.tag_layout)
        fetch_advance = run.fetch_advance
        m.d.comb += [
            fetch_advance.eq(~fetch_valid | epilogue.i.ready),
            mac.o.ready.eq(fetch_advance),
            incoming_tag.eq(Mux(command.drain, run.drain_tag, mac.o.p.tag)),
            params_read.addr.eq(incoming_tag.tile),
            params_read.en.eq(fetch_advance),
        ]
        with m.If(fetch_advance):
            m.d.sync += [
                fetch_valid.eq(Mux(command.drain, run.drain_valid, mac.o.valid)),
                fetch_sums.eq(Mux(command.drain, memories["accumulator_read"].data,
                                  mac.o.p.sums)),
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

    def _combine(self, m, run: _Pass, epilogue: Epilogue) -> None:
        """SwiGLU behind the epilogue: silu(gate) x up (stage 1), requantised (stage 2); plain rows
        pass through the same two stages. Rows leave on `o` unless the pass writes them to a buffer
        or accumulates them."""
        command = run.command
        rows, half = self.config.mac_rows, self.config.mac_rows // 2
        out_valid, out_tag, plain, hidden = run.out_valid, run.out_tag, run.plain, run.hidden
        products = Signal(data.ArrayLayout(signed(16), half))
        m.d.comb += [
            run.out_ready.eq(command.to_buffer | command.accumulate | self.o.ready),
            run.out_advance.eq(~out_valid[1] | run.out_ready),
            epilogue.o.ready.eq(run.out_advance),
        ]
        with m.If(run.out_advance):
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
            run.row_done.eq(out_valid[1] & run.out_ready),
        ]

    def _accumulate(self, m, run: _Pass, memories: dict, epilogue: Epilogue) -> None:
        """An accumulating pass adds gate x row into its token's accumulator row: the gate entry is
        read as the row enters the SwiGLU stages, the accumulator row as it enters the second, and
        the sum is written one cycle after it leaves. A row may name the accumulator row of one of
        the two before it, whose sums are not yet in the memory when it is read: those sums are
        forwarded. The accumulator's ports serve the drain (read, then clear) during a drain
        pass."""
        config, command, rows = self.config, run.command, self.config.mac_rows
        accumulator_read = memories["accumulator_read"]
        accumulator_write = memories["accumulator_write"]
        gates_read = memories["gates_read"]
        gate2 = Signal(nx.GATE_FRAC_BITS + 1)
        accumulate_address = Signal(range(config.out_buffer_words))
        accumulate_sums = Signal(data.ArrayLayout(signed(32), rows))
        read_address = Signal(range(config.out_buffer_words))
        with m.If(~Mux(self.busy, run.gather, self.gather)):
            m.d.comb += [gates_read.addr.eq(data.View(self.tag_layout, epilogue.o.p.tag).token),
                         gates_read.en.eq(run.out_advance)]
        m.d.comb += [
            read_address.eq(gates_read.data.token * command.tiles + run.out_tag[0].tile),
            accumulator_read.addr.eq(Mux(command.drain, run.drain_address, read_address)),
            accumulator_read.en.eq(Mux(command.drain, run.drain_issue, run.out_advance)),
        ]
        address2 = Signal(range(config.out_buffer_words))
        with m.If(run.out_advance):
            m.d.sync += [gate2.eq(gates_read.data.gate), address2.eq(read_address)]
        m.d.sync += [
            run.accumulate_valid.eq(run.out_valid[1] & command.accumulate),
            run.accumulate_last.eq(run.out_tag[1].last),
            accumulate_address.eq(address2),
        ]
        # the sums written this cycle and the cycle before are newer than the row read
        written = Signal(name="accumulate_written")
        written_address = Signal.like(accumulate_address)
        written_sums = Signal.like(accumulate_sums)
        m.d.sync += [written.eq(self.busy & run.accumulate_valid),
                     written_address.eq(accumulate_address), written_sums.eq(accumulate_sums)]
        base = Signal.like(accumulate_sums)
        with m.If(run.accumulate_valid & (accumulate_address == address2)):
            m.d.comb += base.eq(accumulate_sums)
        with m.Elif(written & (written_address == address2)):
            m.d.comb += base.eq(written_sums)
        with m.Else():
            m.d.comb += base.eq(accumulator_read.data)
        for lane in range(rows):
            m.d.sync += accumulate_sums[lane].eq(base[lane] + gate2 * run.plain[1][lane])
        m.d.comb += [
            accumulator_write.addr.eq(Mux(command.drain, run.drain_address, accumulate_address)),
            accumulator_write.data.eq(Mux(command.drain, 0, accumulate_sums)),
            accumulator_write.en.eq(Mux(command.drain, run.drain_issue,
                                        self.busy & run.accumulate_valid)),
        ]

    def _write_rows(self, m, run: _Pass, memories: dict) -> None:
        """A pass into the other activation buffer writes each row at its token's word and its
        channels' byte offset; while idle the buffers take `act_write`."""
        config, command = self.config, run.command
        rows, half = config.mac_rows, config.mac_rows // 2
        word_bytes = config.act_word_bytes
        out_tag = run.out_tag[1]
        per_tile = Mux(command.swiglu, half, rows)
        channel = Signal(range(config.max_tiles * rows))
        m.d.comb += channel.eq(out_tag.tile * per_tile)
        byte_offset = channel[:word_bytes.bit_length() - 1]
        row_mask = Mux(command.swiglu, (1 << half) - 1, (1 << rows) - 1)
        # The row, repeated across the word: the byte enables pick the copy at its offset.
        repeated = Mux(command.swiglu, Cat([run.hidden] * (word_bytes // half)),
                       Cat([run.plain[1]] * (word_bytes // rows)))
        act_ports = [memories["act_write0"], memories["act_write1"]]
        for n, port in enumerate(act_ports):
            with m.If(self.busy | Const(int(self.shared), 1)):
                m.d.comb += [
                    port.addr.eq(out_tag.token * command.dst_row_words
                                 + (channel >> (word_bytes.bit_length() - 1))),
                    port.data.eq(repeated),
                ]
                with m.If(command.to_buffer & run.row_done & (command.src != n)):
                    m.d.comb += port.en.eq(row_mask << byte_offset)
            if self.shared:
                continue
            with m.Else():
                m.d.comb += [
                    port.addr.eq(self.act_write.p.addr),
                    port.data.eq(self.act_write.p.data),
                ]
                with m.If(self.act_write.valid & (self.act_write.p.buffer == n)):
                    m.d.comb += port.en.eq(Const(-1, word_bytes))

    def _control(self, m, run: _Pass, loader: WeightLoader) -> None:
        """A command is checked and taken when idle; the pass ends with its last row (written out,
        or accumulated); the performance counters."""
        config, command, busy = self.config, run.command, self.busy
        request = self.cmd.p
        illegal = Signal()
        m.d.comb += illegal.eq(refused_by(expert_ffn.rules(config, request)))
        m.d.comb += run.start.eq(~busy & self.cmd.valid & ~illegal)
        with m.If(~busy & self.cmd.valid):
            m.d.sync += self.error.eq(illegal)
        with m.If(run.start):
            m.d.sync += [busy.eq(1), command.eq(request), run.gather.eq(self.gather),
                         run.issuing.eq(1), self.perf.eq(0)]
        with m.If(busy & Mux(command.accumulate, run.accumulate_valid & run.accumulate_last,
                             run.row_done & run.out_tag[1].last)):
            m.d.sync += busy.eq(0)
        with m.If(busy):
            m.d.sync += self.perf.busy_cycles.eq(self.perf.busy_cycles + 1)
            with m.If(run.issue):
                m.d.sync += self.perf.mac_cycles.eq(self.perf.mac_cycles + 1)
            waiting = (~command.drain & run.issuing & run.front_advance
                       & ~loader.full.bit_select(run.compute_bank, 1))
            with m.If(waiting):
                m.d.sync += self.perf.weight_stall_cycles.eq(self.perf.weight_stall_cycles + 1)
            with m.If(run.out_valid[1] & ~run.out_ready):
                m.d.sync += self.perf.output_stall_cycles.eq(self.perf.output_stall_cycles + 1)
