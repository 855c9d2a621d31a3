"""AXI4 port signatures, with the signal names of the AXI specification (``araddr``, ``rvalid``, …),
so the generated Verilog's ports are ``<port>__araddr`` and a bus model such as cocotbext-axi's finds
them with ``bus_separator="__"``."""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["axi4_signature", "BURST_INCR", "RESP_OKAY"]

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
