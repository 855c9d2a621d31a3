"""AXI4 port signatures, with the signal names of the AXI specification (``araddr``, ``rvalid``, …),
so the generated Verilog's ports are ``<port>__araddr`` and a bus model such as cocotbext-axi's finds
them with ``bus_separator="__"``."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["axi4_signature", "AxiArbiter", "BURST_INCR", "RESP_OKAY"]

BURST_INCR = 1
RESP_OKAY = 0


def axi4_signature(addr_width: int, data_width: int, id_width: int = 1) -> wiring.Signature:
    """An AXI4 manager port (flip it for a subordinate): the five channels, no optional signals
    beyond the write strobes and the responses."""
    strobe = data_width // 8
    return wiring.Signature({
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
        "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(strobe), "wlast": Out(1), "wvalid": Out(1),
        "wready": In(1),
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
        "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


class AxiArbiter(wiring.Component):
    """Several AXI4 managers onto one port: each address channel round-robin, a request held until
    taken (AXI's rule that a valid address does not change); the source's index goes into the top
    bits of the ID, and R and B beats go back by them. W beats follow the order of their AW
    requests (`W_ORDER` of them can wait), so a manager must not send W before its AW.

    Ports
    -----
    s0 .. s{n-1} : subordinate ports, `axi4_signature(addr_width, data_width, id_width)` flipped
    m : the manager port, with ``id_width + ceil(log2 n)`` ID bits
    """

    W_ORDER = 8

    def __init__(self, sources: int, addr_width: int, data_width: int, id_width: int = 1):
        if sources < 2:
            raise ValueError(f"an arbiter joins at least two managers, not {sources}")
        self.sources = sources
        self.id_width = id_width
        self.select_bits = (sources - 1).bit_length()
        members = {f"s{n}": In(axi4_signature(addr_width, data_width, id_width))
                   for n in range(sources)}
        members["m"] = Out(axi4_signature(addr_width, data_width, id_width + self.select_bits))
        super().__init__(members)

    def _address(self, m, prefix: str, gate=1):
        """Round-robin over the sources' ``<prefix>valid`` (``ar`` or ``aw``), a shown request held
        until taken, passed on while `gate` is high; returns the chosen source and whether its
        request is taken this cycle."""
        n = self.sources
        ports = [getattr(self, f"s{i}") for i in range(n)]
        out = self.m
        last = Signal(range(n), name=f"{prefix}_last")
        held = Signal(name=f"{prefix}_held")            # a request shown and not yet taken
        held_source = Signal(range(n), name=f"{prefix}_held_source")
        chosen = Signal(range(n), name=f"{prefix}_chosen")
        valid = [getattr(p, f"{prefix}valid") for p in ports]
        with m.If(held):
            m.d.comb += chosen.eq(held_source)
        with m.Else():
            with m.Switch(last):
                for first in range(n):
                    with m.Case(first):
                        for position, i in enumerate((first + k) % n for k in range(1, n + 1)):
                            with (m.If if position == 0 else m.Elif)(valid[i]):
                                m.d.comb += chosen.eq(i)
        out_valid, out_ready = getattr(out, f"{prefix}valid"), getattr(out, f"{prefix}ready")
        with m.Switch(chosen):
            for i, port in enumerate(ports):
                with m.Case(i):
                    m.d.comb += out_valid.eq(valid[i] & gate)
                    for name in ("addr", "len", "size", "burst"):
                        m.d.comb += getattr(out, f"{prefix}{name}").eq(
                            getattr(port, f"{prefix}{name}"))
                    m.d.comb += getattr(out, f"{prefix}id").eq(
                        Cat(getattr(port, f"{prefix}id"), Const(i, self.select_bits)))
        for i, port in enumerate(ports):
            m.d.comb += getattr(port, f"{prefix}ready").eq((chosen == i) & out_ready & gate)
        taken = Signal(name=f"{prefix}_taken")
        m.d.comb += taken.eq(out_valid & out_ready)
        with m.If(taken):
            m.d.sync += [last.eq(chosen), held.eq(0)]
        with m.Elif(out_valid):
            m.d.sync += [held.eq(1), held_source.eq(chosen)]
        return chosen, taken

    def elaborate(self, platform):
        m = Module()
        ports = [getattr(self, f"s{i}") for i in range(self.sources)]
        out = self.m
        top = slice(self.id_width, self.id_width + self.select_bits)
        base = slice(0, self.id_width)

        # -- reads: AR round-robin, R by ID
        self._address(m, "ar")
        for i, port in enumerate(ports):
            mine = out.rid[top] == i
            m.d.comb += [port.rid.eq(out.rid[base]), port.rdata.eq(out.rdata),
                         port.rresp.eq(out.rresp), port.rlast.eq(out.rlast),
                         port.rvalid.eq(out.rvalid & mine)]
            with m.If(mine):
                m.d.comb += out.rready.eq(port.rready)

        # -- writes: AW round-robin while the W order has room, W in AW order, B by ID
        m.submodules.w_order = order = fifo.SyncFIFO(width=self.select_bits, depth=self.W_ORDER)
        chosen, taken = self._address(m, "aw", gate=order.w_rdy)
        m.d.comb += [order.w_data.eq(chosen), order.w_en.eq(taken)]
        with m.If(order.r_rdy):
            with m.Switch(order.r_data):
                for i, port in enumerate(ports):
                    with m.Case(i):
                        m.d.comb += [out.wdata.eq(port.wdata), out.wstrb.eq(port.wstrb),
                                     out.wlast.eq(port.wlast), out.wvalid.eq(port.wvalid),
                                     port.wready.eq(out.wready)]
        m.d.comb += order.r_en.eq(out.wvalid & out.wready & out.wlast)
        for i, port in enumerate(ports):
            mine = out.bid[top] == i
            m.d.comb += [port.bid.eq(out.bid[base]), port.bresp.eq(out.bresp),
                         port.bvalid.eq(out.bvalid & mine)]
            with m.If(mine):
                m.d.comb += out.bready.eq(port.bready)
        return m
