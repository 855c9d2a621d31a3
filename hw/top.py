"""The accelerator top: a program in DRAM run by the hardware.

The host writes the program and the data into DRAM, sets the registers (`hw.registers`, from
`formats/registers.rdl`: program address and length, DMA window, watchdog, interrupt enables) and
writes ``control.start``. The fetch unit (`hw.fetch`) reads the program; the controller
(`hw.controller`) decodes it into the load, compute and store queues and starts each instruction on
its unit when its dependency tokens allow: LOADs on one DMA engine, STOREs on another (`hw.dma`),
both reaching every on-chip buffer (`hw.buffers`). The three AXI managers share the one AXI4 port
through `hw.axi.AxiArbiter`. When the run ends, ``status`` and ``failed_instruction`` say how and
where, and the interrupt rises if enabled.

The compute queue runs NOP, SYNC, FINISH, LINEAR and EXPERT_LOOP (`hw.ffn_port.FFNPort`, the
Expert-FFN engine on the buffers), ROUTE (`hw.route_port.RoutePort`, the router on the buffers) and
VECTOR (`hw.vector_port.VectorPort`, the vector unit between the buffers and DRAM) and ATTENTION
(`hw.attention_port.AttentionPort`, the attention unit reading Q, K and V from DRAM and writing O
back).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer
from ..formats.attention import ATTENTION_COUNTERS, SEQUENCER_COUNTERS
from ..formats.dma import DMA_COUNTERS
from ..formats.expert_ffn import EXPERT_FFN_COUNTERS
from ..formats.router import ROUTER_COUNTERS
from ..formats.vector import VECTOR_COUNTERS
from ..formats.instructions import ErrorCode, Opcode
from ..formats.registers import TOP_COUNTERS
from .attention_port import AttentionPort
from .axi import AxiArbiter, axi4_signature
from .buffers import Buffers
from .controller import Controller
from .dma import Dma
from .fetch import Fetch
from .ffn_port import FFN_DIRECT, FFNPort
from .route_port import ROUTE_DIRECT, RoutePort
from .registers import ControlRegisters, axi4_lite_signature
from .vector_port import VectorPort

__all__ = ["Accelerator", "AXI_ID_BITS"]

_MANAGERS = ("fetch", "load_dma", "store_dma", "vector", "ffn", "route", "attention")
AXI_ID_BITS = 1 + (len(_MANAGERS) - 1).bit_length()


class Accelerator(wiring.Component):
    """The accelerator top of one `AccelConfig`.

    Ports
    -----
    s_axil : the control registers, AXI4-Lite subordinate (docs/registers.md)
    m_axi : the AXI4 manager port to DRAM (``axi_data_width`` bits, `AXI_ID_BITS` ID bits)
    irq : the interrupt, high while an enabled event of ``irq_status`` is set
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Accelerator needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "s_axil": In(axi4_lite_signature()),
            "m_axi": Out(axi4_signature(config.axi_addr_width, config.axi_data_width,
                                        AXI_ID_BITS)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        m.submodules.registers = regs = ControlRegisters(config)
        m.submodules.controller = ctrl = Controller(config)
        m.submodules.fetch = fetch = Fetch(config)
        m.submodules.load_dma = load_dma = Dma(config)
        m.submodules.store_dma = store_dma = Dma(config)
        m.submodules.buffers = buffers = Buffers(config)
        m.submodules.vector = vector = VectorPort(config)
        m.submodules.ffn = ffn = FFNPort(config)
        m.submodules.route = route = RoutePort(config)
        m.submodules.attention = attention = AttentionPort(config)
        m.submodules.arbiter = arbiter = AxiArbiter(len(_MANAGERS), config.axi_addr_width,
                                                    config.axi_data_width)
        wiring.connect(m, wiring.flipped(self.s_axil), regs.s_axil)
        wiring.connect(m, arbiter.m, wiring.flipped(self.m_axi))
        for n, manager in enumerate((fetch, load_dma, store_dma, vector, ffn, route, attention)):
            wiring.connect(m, manager.m_axi, getattr(arbiter, f"s{n}"))

        # -- registers and the controller
        m.d.comb += [
            ctrl.start.eq(regs.control.start), ctrl.abort.eq(regs.control.abort),
            ctrl.serialise.eq(regs.control.serialise), ctrl.watchdog.eq(regs.watchdog.limit),
            regs.status.busy.eq(ctrl.busy), regs.status.done.eq(ctrl.done),
            regs.status.error_code.eq(ctrl.error_code),
            regs.failed_instruction.index.eq(ctrl.failed_index),
            regs.irq_status.done_set.eq(ctrl.ended & (ctrl.error_code == ErrorCode.NONE)),
            regs.irq_status.error_set.eq(ctrl.ended & (ctrl.error_code != ErrorCode.NONE)),
            self.irq.eq((regs.irq_status.done & regs.irq_enable.done)
                        | (regs.irq_status.error & regs.irq_enable.error)),
        ]

        # -- the fetch unit
        m.d.comb += [
            fetch.start.eq(ctrl.start & ~ctrl.busy),
            fetch.address.eq(Cat(Const(0, 5), regs.program_address.address)),
            fetch.length.eq(regs.program_length.length),
            fetch.halt.eq(ctrl.fetch_halt),
            ctrl.fetch_quiet.eq(fetch.quiet), ctrl.fetch_in_flight.eq(fetch.in_flight),
        ]
        wiring.connect(m, fetch.out, ctrl.fetch)

        # -- the DMA engines: LOADs and STOREs, the window from the registers
        for dma, unit, store in ((load_dma, ctrl.load, 0), (store_dma, ctrl.store, 1)):
            m.d.comb += [
                dma.window_base.eq(regs.window_base.base),
                dma.window_size.eq(regs.window_size.size),
                dma.cancel.eq(ctrl.cancel),
                dma.cmd.valid.eq(unit.issue),
                dma.cmd.p.store.eq(store),
                dma.cmd.p.transfer.eq(unit.instruction.body.load),
                unit.busy.eq(dma.busy),
                unit.error.eq(Mux(dma.error, dma.error_code, ErrorCode.NONE)),
            ]
        wiring.connect(m, load_dma.sram_write, buffers.load_write)
        wiring.connect(m, store_dma.sram_read, buffers.store_read)
        m.d.comb += store_dma.sram_read_data.eq(buffers.store_read_data)

        # -- the compute queue: NOP and SYNC end at once; the others run on their ports
        opcode = ctrl.compute.instruction.opcode
        active = Signal(Opcode)                           # the compute instruction under way
        with m.If(ctrl.compute.issue):
            m.d.sync += active.eq(opcode)
        body = ctrl.compute.instruction.body
        m.d.comb += [
            vector.issue.eq(ctrl.compute.issue & (opcode == Opcode.VECTOR)),
            vector.command.eq(body.vector),
            ffn.issue.eq(ctrl.compute.issue & (opcode == Opcode.LINEAR)),
            ffn.command.eq(body.linear),
            ffn.loop_issue.eq(ctrl.compute.issue & (opcode == Opcode.EXPERT_LOOP)),
            route.issue.eq(ctrl.compute.issue & (opcode == Opcode.ROUTE)),
            route.command.eq(body.route),
            attention.issue.eq(ctrl.compute.issue & (opcode == Opcode.ATTENTION)),
            attention.command.eq(body.attention),
            attention.cancel.eq(ctrl.cancel),
            ffn.loop_command.eq(body.expert_loop),
            ffn.cancel.eq(ctrl.cancel),
            ffn.table_written.eq(buffers.load_write.valid & buffers.load_write.ready
                                 & (buffers.load_write.p.buffer == Buffer.TABLE)),
        ]
        for port in (vector, ffn, route, attention):
            m.d.comb += [port.window_base.eq(regs.window_base.base),
                         port.window_size.eq(regs.window_size.size)]
        # the unit side: the vector unit's readers and writer, or, while LINEAR or EXPERT_LOOP
        # runs, the first reader and the writer are the FFN port's; the direct ports are the
        # Expert-FFN engine's
        on_ffn = (active == Opcode.LINEAR) | (active == Opcode.EXPERT_LOOP)
        with m.If(on_ffn):
            wiring.connect(m, ffn.read, buffers.unit_read)
            wiring.connect(m, ffn.write, buffers.unit_write)
        with m.Elif(active == Opcode.ROUTE):
            wiring.connect(m, route.read, buffers.unit_read)
        with m.Else():
            wiring.connect(m, vector.read, buffers.unit_read)
            wiring.connect(m, vector.write, buffers.unit_write)
        m.d.comb += [vector.read_data.eq(buffers.unit_read_data),
                     ffn.read_data.eq(buffers.unit_read_data),
                     route.read_data.eq(buffers.unit_read_data),
                     vector.read_b_data.eq(buffers.unit_read_b_data)]
        wiring.connect(m, vector.read_b, buffers.unit_read_b)
        for port, names in ((ffn, FFN_DIRECT), (route, ROUTE_DIRECT)):
            for name in names:
                wiring.connect(m, getattr(port, name), getattr(buffers, name))
        with m.Switch(active):
            with m.Case(Opcode.NOP, Opcode.SYNC):
                m.d.comb += [ctrl.compute.busy.eq(0), ctrl.compute.error.eq(ErrorCode.NONE)]
            with m.Case(Opcode.VECTOR):
                m.d.comb += [ctrl.compute.busy.eq(vector.busy),
                             ctrl.compute.error.eq(vector.error)]
            with m.Case(Opcode.LINEAR, Opcode.EXPERT_LOOP):
                m.d.comb += [ctrl.compute.busy.eq(ffn.busy), ctrl.compute.error.eq(ffn.error)]
            with m.Case(Opcode.ROUTE):
                m.d.comb += [ctrl.compute.busy.eq(route.busy), ctrl.compute.error.eq(route.error)]
            with m.Case(Opcode.ATTENTION):
                m.d.comb += [ctrl.compute.busy.eq(attention.busy),
                             ctrl.compute.error.eq(attention.error)]
            with m.Default():
                m.d.comb += [ctrl.compute.busy.eq(0),
                             ctrl.compute.error.eq(ErrorCode.ILLEGAL_OPCODE)]

        # -- counters: the controller's, and each DMA engine's summed over the run's transfers
        m.d.comb += [ctrl.expert_run.eq(ffn.expert_run), ctrl.expert_skipped.eq(ffn.expert_skipped)]
        for field in TOP_COUNTERS.members:
            m.d.comb += getattr(regs, f"top_{field}").value.eq(ctrl.perf[field])
        # a unit's counters are cleared as it takes a command: the registers hold their sums over
        # the run, each added as the unit's instruction ends
        for name, layout, perf, busy in (
                ("load_dma", DMA_COUNTERS, load_dma.perf, load_dma.busy),
                ("store_dma", DMA_COUNTERS, store_dma.perf, store_dma.busy),
                ("vector", VECTOR_COUNTERS, vector.perf, vector.busy),
                ("expert_ffn", EXPERT_FFN_COUNTERS, ffn.perf, ffn.busy),
                ("router", ROUTER_COUNTERS, route.perf, route.busy),
                ("attention", ATTENTION_COUNTERS, attention.perf, attention.busy),
                ("sequencer", SEQUENCER_COUNTERS, attention.sequencer, attention.busy)):
            total = Signal(layout, name=f"{name}_total")
            was_busy = Signal(name=f"{name}_was_busy")
            m.d.sync += was_busy.eq(busy)
            with m.If(was_busy & ~busy):
                for field in layout.members:
                    m.d.sync += total[field].eq(total[field] + perf[field])
            with m.If(ctrl.start & ~ctrl.busy):
                m.d.sync += total.eq(0)
            for field in layout.members:
                m.d.comb += getattr(regs, f"{name}_{field}").value.eq(total[field])
        return m
