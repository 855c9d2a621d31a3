"""VECTOR on the accelerator top: the vector unit (`hw.vector.VectorUnit`) between the on-chip
buffers and DRAM, as the emulator's VECTOR reads and writes them (`host.units`).

* **Rows in.** Two row readers take ``a`` (int8 rows of an activation buffer, or REQUANT's int32
  rows of OUT) and ``b`` (ADD, MUL) from the buffers' unit side, a word of ``vector_lanes`` values
  a request (REQUANT's wider words take ``4 x vector_lanes / axi_data_bytes`` requests), rows
  `buffers.act_row_bytes` or `buffers.out_row_bytes` apart, into small queues the unit takes from.
* **Operands in.** Their bytes stream from DRAM ``params`` through a DMA engine of the port's own
  (`Dma(to_unit=True)`) into an unpacker that cuts them into elements: GATE's int8 weights, ROPE's
  int16 table, and for the norms first ``eps_q``, then the int16 weights (kept in a small memory),
  then the int32 biases, each paired with its word of weights (`formats.vector.operand_words`).
  The whole operand record is checked against the DMA window before the unit starts (DMA_WINDOW,
  as the emulator reads it whole).
* **Rows out.** Result words go to ``dst`` with byte strobes, ``width`` bytes a row; GATE's entries
  go to GATES as `TOKEN_GATE` records, one a row.

``busy`` rises the cycle after ``issue`` and falls when the last result is written (or the unit has
refused a norm's ``eps_q``: BAD_FIELD) and every transfer has ended; ``error`` then says how it
ended.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer, act_row_bytes, out_row_bytes
from ..formats.dma import sram_read_request, sram_write
from ..formats.instructions import ADDRESS_BITS, ErrorCode
from ..formats.router import TOKEN_GATE
from ..formats.vector import VECTOR_COUNTERS, VectorOp, operand_bytes, vector_command
from .controller import compute_port
from .dma import Dma
from .port_io import RowReader, Unpacker, log2 as _log2
from .vector import VectorUnit

__all__ = ["VectorPort"]


class VectorPort(wiring.Component):
    """The VECTOR instructions of one `AccelConfig`'s top.

    Ports
    -----
    issue : one cycle: run ``command`` (a VECTOR body the decoder has passed)
    command : `formats.vector.vector_command(config)`, read at ``issue``
    window_base, window_size : the DMA window
    m_axi : the operand reader's AXI4 manager port (reads only)
    read, read_b : the buffers' unit-side readers (`formats.dma.sram_read_request`), with
        ``read_data``, ``read_b_data`` a cycle after a taken request
    write : the buffers' unit-side writer (`formats.dma.sram_write`), always taken
    busy : from the cycle after ``issue`` until the instruction has ended
    error : how it ended (`ErrorCode`), valid when ``busy`` falls
    perf : the unit's `formats.vector.VECTOR_COUNTERS`
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"VectorPort needs an AccelConfig, not {config!r}")
        if config.vector_lanes > config.axi_data_bytes:
            raise ValueError(f"{config.name}: a word of vector_lanes={config.vector_lanes} int8 "
                             f"values must fit a bus word of {config.axi_data_bytes} bytes")
        self.config = config
        super().__init__({
            **compute_port(config, vector_command(config), VECTOR_COUNTERS),
            "read": Out(stream.Signature(sram_read_request(config))),
            "read_data": In(config.axi_data_width),
            "read_b": Out(stream.Signature(sram_read_request(config))),
            "read_b_data": In(config.axi_data_width),
            "write": Out(stream.Signature(sram_write(config), always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        lanes, bus = config.vector_lanes, config.axi_data_bytes
        lane_bits, lg = _log2(lanes), _log2(bus)
        m.submodules.unit = unit = VectorUnit(config)
        m.submodules.reader = reader = Dma(config, to_unit=True)
        wiring.connect(m, reader.m_axi, wiring.flipped(self.m_axi))
        m.d.comb += [reader.window_base.eq(self.window_base),
                     reader.window_size.eq(self.window_size), self.perf.eq(unit.perf)]

        cmd = Signal(vector_command(config))
        running = Signal()
        sent = Signal()                                   # the unit has the command
        start = self.issue & ~running
        m.d.comb += self.busy.eq(running)
        op = cmd.op
        requant = op == VectorOp.REQUANT
        gate = op == VectorOp.GATE
        norm = (op == VectorOp.RMSNORM) | (op == VectorOp.LAYERNORM)
        row_words = (cmd.width + lanes - 1) >> lane_bits
        act_stride = act_row_bytes(config, cmd.width)

        # -- the row readers
        a = RowReader(m, config, "a", 4 * lanes, self.read, self.read_data, start)
        b = RowReader(m, config, "b", lanes, self.read_b, self.read_b_data, start)
        c = self.command
        c_requant = c.op == VectorOp.REQUANT
        c_words = (c.width + lanes - 1) >> lane_bits
        c_act_stride, c_out_stride = act_row_bytes(config, c.width), out_row_bytes(config, c.width)
        outside = Signal()
        m.d.comb += outside.eq(
            (operand_bytes(c) != 0) & (c.params + operand_bytes(c) > self.window_size))
        go = start & ~outside
        with m.If(go):
            m.d.sync += [
                a.buffer.eq(c.a), a.rows_left.eq(c.rows), a.words.eq(c_words), a.row.eq(0),
                a.word.eq(0), a.beat.eq(0), a.stop.eq(0),
                a.stride.eq(Mux(c_requant, c_out_stride, c_act_stride)),
                a.step.eq(Mux(c_requant, 4 * lanes, lanes)),
                a.beats.eq(Mux(c_requant, max(1, 4 * lanes // bus), 1)),
                b.buffer.eq(c.b), b.words.eq(c_words), b.row.eq(0), b.word.eq(0), b.beat.eq(0),
                b.stop.eq(0), b.stride.eq(c_act_stride), b.step.eq(lanes), b.beats.eq(1),
                b.rows_left.eq(Mux((c.op == VectorOp.ADD) | (c.op == VectorOp.MUL), c.rows, 0)),
            ]
        a_word = a.queue.r_data
        m.d.comb += [
            unit.a.valid.eq(a.queue.r_rdy), a.queue.r_en.eq(unit.a.ready),
            unit.b.valid.eq(b.queue.r_rdy), b.queue.r_en.eq(unit.b.ready),
        ]
        for n in range(lanes):
            wide = a_word[32 * n:32 * n + 32]
            narrow = a_word[8 * n:8 * n + 8].as_signed()
            m.d.comb += [unit.a.p[n].eq(Mux(requant, wide.as_signed(), narrow)),
                         unit.b.p[n].eq(b.queue.r_data[8 * n:8 * n + 8].as_signed())]

        # -- the operands: DRAM -> unpacker -> the unit's operand words
        largest = max(8, 4 * lanes)
        phase = Signal(range(4))              # 0 none, 1 eps, 2 weights / GATE / ROPE, 3 biases
        phase_start = Signal()
        total = Signal(32)
        shift = Signal(range(_log2(largest) + 1))     # elements of 2 ** shift bytes
        unpack = Unpacker(m, config, largest, reader.sram_write, phase_start, total, shift)
        eps = Signal(64)
        element = Signal(16)                  # the element's index in its phase
        weights_mem = memory.Memory(shape=data.ArrayLayout(unsigned(16), lanes),
                                    depth=max(1, -(-config.max_inputs // lanes)), init=[])
        m.submodules.operand_weights = weights_mem
        weight_write = weights_mem.write_port()
        weight_read = weights_mem.read_port()
        stage_valid = Signal()
        stage = Signal(8 * largest)
        transfer = reader.cmd.p.transfer
        dram = Signal(ADDRESS_BITS)
        m.d.comb += [reader.cmd.p.store.eq(0), transfer.buffer.eq(Buffer.WEIGHT),
                     transfer.dram.eq(dram), transfer.dram_stride.eq(0), transfer.sram.eq(0),
                     transfer.sram_stride.eq(0), transfer.rows.eq(1),
                     transfer.row_bytes.eq(total)]
        issue_phase = Signal()                # the reader gets the phase's transfer this cycle
        m.d.comb += reader.cmd.valid.eq(issue_phase)
        m.d.sync += [issue_phase.eq(0), phase_start.eq(0)]

        def begin(m, number, at, nbytes, element_bytes):
            m.d.sync += [phase.eq(number), dram.eq(at), total.eq(nbytes),
                         shift.eq(_log2(element_bytes)),
                         issue_phase.eq(1), phase_start.eq(1), element.eq(0)]

        with m.If(go):
            with m.If((c.op == VectorOp.RMSNORM) | (c.op == VectorOp.LAYERNORM)):
                begin(m, 1, c.params, 8, 8)
            with m.Elif(c.op == VectorOp.GATE):
                begin(m, 2, c.params, c.width, lanes)
            with m.Elif(c.op == VectorOp.ROPE):
                begin(m, 2, c.params, 2 * c.rows * c.head_dim, 2 * lanes)
            with m.Else():
                m.d.sync += phase.eq(0)
        stopping = Signal()                   # the unit refused the command: drain
        phase_done = (unpack.left == 0) & ~phase_start & ~issue_phase & ~reader.busy
        # the stage: the element popped last cycle (the norms' weights are read meanwhile)
        to_unit = (phase == 3) | ((phase == 2) & ~norm)
        can_stage = ~stage_valid | unit.operands.ready
        m.d.comb += unpack.o_ready.eq(stopping | Mux(to_unit, can_stage, 1))
        popped = unpack.o_valid & unpack.o_ready & ~stopping
        m.d.comb += [weight_read.addr.eq(element), weight_read.en.eq(popped & to_unit),
                     weight_write.addr.eq(element),
                     weight_write.data.eq(unpack.o_data[:16 * lanes]),
                     weight_write.en.eq(popped & (phase == 2) & norm)]
        with m.If(popped):
            m.d.sync += element.eq(element + 1)
            with m.If(phase == 1):
                m.d.sync += eps.eq(unpack.o_data[:64])
        with m.If(unit.operands.valid & unit.operands.ready):
            m.d.sync += stage_valid.eq(0)
        with m.If(popped & to_unit):
            m.d.sync += [stage_valid.eq(1), stage.eq(unpack.o_data)]
        with m.If(stopping):
            m.d.sync += stage_valid.eq(0)             # the unit takes nothing more
        m.d.comb += [unit.operands.valid.eq(stage_valid), unit.operands.p.eps_q.eq(eps)]
        for n in range(lanes):
            m.d.comb += [
                unit.operands.p.weight[n].eq(Mux(
                    norm, weight_read.data[n].as_signed(),
                    Mux(gate, stage[8 * n:8 * n + 8].as_signed(),
                        stage[16 * n:16 * n + 16].as_signed()))),
                unit.operands.p.bias[n].eq(stage[32 * n:32 * n + 32].as_signed()),
            ]
        # the next phase of a norm
        with m.If(running & ~stopping & phase_done & norm):
            with m.If(phase == 1):
                begin(m, 2, cmd.params + 8, 2 * cmd.width, 2 * lanes)
            with m.Elif(phase == 2):
                begin(m, 3, cmd.params + 8 + 2 * cmd.width, 4 * cmd.width, 4 * lanes)
            with m.Elif(phase == 3):
                m.d.sync += phase.eq(0)
        with m.If(running & phase_done & (stopping | ~norm)):
            m.d.sync += phase.eq(0)

        # -- the command to the unit, and the results out
        m.d.comb += [unit.cmd.p.eq(cmd),
                     unit.cmd.valid.eq(running & ~sent & (self.error != ErrorCode.DMA_WINDOW))]
        with m.If(unit.cmd.valid & unit.cmd.ready):
            m.d.sync += sent.eq(1)
        out_row = Signal(ADDRESS_BITS)
        out_word = Signal(16)
        out_left = Signal(32)
        byte = out_row + (out_word << lane_bits)
        last_word = out_word + 1 == row_words
        valid_bytes = Signal(range(lanes + 1))
        m.d.comb += valid_bytes.eq(Mux(last_word, cmd.width - (out_word << lane_bits), lanes))
        offset = byte[:lg] if lg else 0
        m.d.comb += [unit.o.ready.eq(1), unit.gates.ready.eq(1)]
        o_strobe = (~(Const(-1, lanes + 1) << valid_bytes))[:lanes]
        gate_index = Signal(16)
        gate_at = gate_index * TOKEN_GATE.size
        entry = Cat(unit.gates.p.token.as_unsigned(), Const(0, 16 - len(unit.gates.p.token)),
                    unit.gates.p.gate.as_unsigned(), Const(0, 16 - len(unit.gates.p.gate)))
        with m.If(unit.o.valid):
            m.d.comb += [self.write.valid.eq(1), self.write.p.buffer.eq(cmd.dst),
                         self.write.p.addr.eq(byte >> lg),
                         self.write.p.data.eq(unit.o.p.as_value() << (offset << 3)),
                         self.write.p.strobe.eq(o_strobe << offset)]
            m.d.sync += [out_word.eq(out_word + 1), out_left.eq(out_left - 1)]
            with m.If(last_word):
                m.d.sync += [out_word.eq(0), out_row.eq(out_row + act_stride)]
        with m.If(unit.gates.valid):
            gate_offset = gate_at[:lg] if lg else 0
            m.d.comb += [self.write.valid.eq(1), self.write.p.buffer.eq(Buffer.GATES),
                         self.write.p.addr.eq(gate_at >> lg),
                         self.write.p.data.eq(entry << (gate_offset << 3)),
                         self.write.p.strobe.eq(Const((1 << TOKEN_GATE.size) - 1, bus)
                                                << gate_offset)]
            m.d.sync += [gate_index.eq(gate_index + 1), out_left.eq(out_left - 1)]

        # -- start, end
        with m.If(start):
            m.d.sync += [running.eq(1), cmd.eq(c), sent.eq(0), stopping.eq(0),
                         out_row.eq(0), out_word.eq(0), gate_index.eq(0), stage_valid.eq(0),
                         out_left.eq(Mux(c.op == VectorOp.GATE, c.rows, c.rows * c_words)),
                         self.error.eq(Mux(outside, ErrorCode.DMA_WINDOW, ErrorCode.NONE))]
        refused = sent & ~unit.busy & unit.error & ~unit.cmd.valid
        with m.If(running & refused & ~stopping):
            m.d.sync += [stopping.eq(1), a.stop.eq(1), b.stop.eq(1),
                         self.error.eq(ErrorCode.BAD_FIELD)]
        ended = Mux(self.error == ErrorCode.DMA_WINDOW, 1,
                    Mux(stopping, 1, out_left == 0) & sent & ~unit.busy & a.idle & b.idle
                    & ~reader.busy & (phase == 0) & ~issue_phase & ~stage_valid)
        with m.If(running & ~start & ended):
            m.d.sync += running.eq(0)
        return m
