"""ROUTE on the accelerator top: the router (`hw.router.Router`, shared) on the top's buffers, as the
emulator's ROUTE reads and writes them (`host.units`).

* **Memories.** The router reads a word of an expert's weights and an expert's logit
  requantisation from ROUTER_WEIGHTS (`router_record`: the weights, then the requantisation in a
  word of its own) and its selection biases from ROUTER_BIAS, and writes the dispatch table's queue
  entries and counts into DISPATCH, all through the buffers' direct ports (`hw.buffers.DIRECT`),
  each record cut to, or widened from, its on-chip fields (`records.Pair.from_dram`,
  `records.Pair.to_dram`).
* **Checked first.** Given logits against the DMA window (DMA_WINDOW); then, an expert a cycle,
  each expert's requantisation (computing the logits) and selection bias (``sigmoid_bias``) against
  their on-chip fields (BAD_FIELD). A refused ROUTE writes nothing.
* **Inputs.** Computing the logits, the tokens' rows stream from ACT0 through the unit-side reader
  (`RowReader`, a bus word a request); otherwise the int16 logits stream from DRAM ``logits``
  through a DMA engine of the port's own, cut into elements (`Unpacker`).

``busy`` rises the cycle after ``issue`` and falls when the run has ended; ``error`` then says how.
"""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer
from ..formats.dma import sram_read_request
from ..formats.epilogue import REQUANT
from ..formats.instructions import ADDRESS_BITS, ErrorCode, route_body
from ..formats.router import (DISPATCH_COUNT, LOGIT, ROUTER_COUNTERS, SELECTION_BIAS,
                              TOKEN_GATE, RouterMode, dispatch_table, router_record)
from .buffers import direct_signatures, word_bytes
from .controller import compute_port
from .dma import Dma
from .port_io import RecordReader, RowReader, Unpacker, log2
from .router import Router

__all__ = ["RoutePort", "ROUTE_DIRECT"]

# The buffers' direct ports the router uses (`hw.buffers.DIRECT`).
ROUTE_DIRECT = ("weights_read", "requant_read", "bias_read", "queue_write", "count_write")


class RoutePort(wiring.Component):
    """ROUTE for one `AccelConfig`.

    Ports
    -----
    issue, command : the controller starts one (one cycle), ``command`` its body
        (`formats.instructions.route_body`)
    window_base, window_size : the DMA window
    m_axi : the logit reader's AXI4 manager port
    read, read_data : the buffers' unit-side reader (ACT0's token rows)
    weights_read ... count_write : the buffers' direct ports (`ROUTE_DIRECT`)
    busy : from the cycle after ``issue`` until the run has ended
    error : how it ended (`ErrorCode`), valid when ``busy`` falls
    perf : the router's `formats.router.ROUTER_COUNTERS`
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"RoutePort needs an AccelConfig, not {config!r}")
        lanes = config.router_lanes
        if (router_record(config).size // 8 % lanes or REQUANT.size > lanes
                or word_bytes(config)[Buffer.ROUTER_WEIGHTS] % lanes):
            raise ValueError(f"{config.name}: the router reads its records a word of "
                             f"router_lanes={lanes} bytes at a time")
        self.config = config
        super().__init__({
            **compute_port(config, route_body(config), ROUTER_COUNTERS),
            "read": Out(stream.Signature(sram_read_request(config))),
            "read_data": In(config.axi_data_width),
            **{name: In(signature)
               for name, signature in direct_signatures(config, ROUTE_DIRECT).items()},
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        bus, lanes = config.axi_data_bytes, config.router_lanes
        words = word_bytes(config)
        m.submodules.router = router = Router(config, shared=True)
        m.submodules.logits = reader = Dma(config, to_unit=True)
        wiring.connect(m, reader.m_axi, wiring.flipped(self.m_axi))
        m.d.comb += [reader.window_base.eq(self.window_base),
                     reader.window_size.eq(self.window_size), self.perf.eq(router.perf)]

        body = Signal(route_body(config))
        c = body.command
        owns = Signal()                                   # the router has the memories
        index = Signal(range(config.max_experts + 1))     # the checks' expert
        checking = Signal()

        # -- ROUTER_WEIGHTS: a word of weights (unit side), a requantisation (DMA side)
        record_words = router_record(config).size // 8 // lanes
        weights = RecordReader(
            m, "weights", self.weights_read, lanes, words[Buffer.ROUTER_WEIGHTS],
            router.weights_read.addr // config.router_chunks * record_words
            + router.weights_read.addr % config.router_chunks, owns & router.weights_read.en)
        m.d.comb += router.weights_read.data.eq(weights.record)
        requant_expert = Mux(owns, router.params_read.addr, index)
        requant = RecordReader(m, "requant", self.requant_read, lanes,
                               words[Buffer.ROUTER_WEIGHTS],
                               requant_expert * record_words + config.router_chunks,
                               Mux(owns, router.params_read.en, checking))
        requant = requant.record[:8 * REQUANT.size]
        m.d.comb += router.params_read.data.eq(REQUANT.from_dram(config, requant))

        # -- ROUTER_BIAS
        bias = RecordReader(m, "bias", self.bias_read, SELECTION_BIAS.size,
                            words[Buffer.ROUTER_BIAS], Mux(owns, router.bias_read.addr, index),
                            Mux(owns, router.bias_read.en, checking)).record
        m.d.comb += router.bias_read.data.eq(SELECTION_BIAS.from_dram(config, bias))

        # -- DISPATCH: a queue entry (unit side) and its count (DMA side), each a slice of a word
        layout = dispatch_table(config)
        for port, mine, pair, first_byte in (
                (self.queue_write, router.table_write, TOKEN_GATE, layout["queues"].offset // 8),
                (self.count_write, router.count_write, DISPATCH_COUNT,
                 layout["counts"].offset // 8)):
            size = pair.size
            at = first_byte + mine.addr * size
            record = pair.to_dram(config, mine.data)
            m.d.comb += [
                port.addr.eq(at >> log2(words[Buffer.DISPATCH])),
                port.data.eq(record.replicate(words[Buffer.DISPATCH] // size)),
                port.en.eq(Mux(owns & mine.en, Const((1 << size) - 1, words[Buffer.DISPATCH])
                               << at[:log2(words[Buffer.DISPATCH])], 0)),
            ]

        # -- the checks' answers, the cycle after their reads
        answer = Signal()
        m.d.sync += answer.eq(checking)
        refused = Signal()
        m.d.comb += refused.eq(answer & (
            (c.compute & REQUANT.refused(config, requant))
            | ((c.mode == RouterMode.SIGMOID_BIAS) & SELECTION_BIAS.refused(config, bias))))

        # -- the tokens' rows from ACT0, or the logits from DRAM
        starting = Signal()
        tokens = RowReader(m, config, "tokens", lanes, self.read, self.read_data, starting)
        m.d.comb += [router.tokens.valid.eq(tokens.queue.r_rdy),
                     router.tokens.p.eq(tokens.queue.r_data),
                     tokens.queue.r_en.eq(router.tokens.ready)]
        total = Signal(ADDRESS_BITS + 1)
        m.d.comb += total.eq(c.tokens * c.experts * LOGIT.size)
        unpack = Unpacker(m, config, LOGIT.size, reader.sram_write, starting, total,
                          log2(LOGIT.size))
        m.d.comb += [router.logits.valid.eq(unpack.o_valid),
                     router.logits.p.value.eq(unpack.o_data[:8 * LOGIT.size]),
                     unpack.o_ready.eq(router.logits.ready)]
        transfer = reader.cmd.p.transfer
        m.d.comb += [reader.cmd.p.store.eq(0), transfer.buffer.eq(Buffer.WEIGHT),
                     transfer.dram.eq(body.logits), transfer.rows.eq(1),
                     transfer.row_bytes.eq(total)]

        given = self.command
        outside = ((given.command.compute == 0)
                   & (given.logits + given.command.tokens * given.command.experts * LOGIT.size
                      > self.window_size))
        bad = Signal()
        m.d.sync += bad.eq(bad | refused)
        m.d.comb += router.cmd.p.eq(c)
        with m.FSM(name="route") as fsm:
            with m.State("IDLE"):
                with m.If(self.issue):
                    m.d.sync += [body.eq(given), index.eq(0), bad.eq(0),
                                 self.error.eq(ErrorCode.NONE)]
                    with m.If(outside):
                        m.d.sync += self.error.eq(ErrorCode.DMA_WINDOW)
                        m.next = "END"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):                 # an expert's records a cycle
                m.d.comb += checking.eq(1)
                m.d.sync += index.eq(index + 1)
                with m.If(index + 1 == c.experts):
                    m.next = "CHECK_LAST"
            with m.State("CHECK_LAST"):
                with m.If(bad | refused):
                    m.d.sync += self.error.eq(ErrorCode.BAD_FIELD)
                    m.next = "END"
                with m.Else():
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [router.cmd.valid.eq(1), starting.eq(1), owns.eq(1),
                             reader.cmd.valid.eq(~c.compute)]
                stride = body.row_words * config.act_word_bytes
                m.d.sync += [
                    tokens.buffer.eq(Buffer.ACT0), tokens.rows_left.eq(Mux(c.compute, c.tokens, 0)),
                    tokens.words.eq(c.chunks), tokens.row.eq(0), tokens.word.eq(0),
                    tokens.beat.eq(0), tokens.stop.eq(0), tokens.stride.eq(stride),
                    tokens.step.eq(lanes), tokens.beats.eq(max(1, lanes // bus)),
                ]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += owns.eq(1)
                with m.If(router.error):
                    m.d.sync += self.error.eq(ErrorCode.BAD_FIELD)
                with m.If(~router.busy & ~reader.busy & tokens.idle & ~tokens.queue.r_rdy):
                    m.next = "IDLE"
            with m.State("END"):
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
