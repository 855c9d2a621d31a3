"""The control register block: an AXI4-Lite subordinate built from the compiled register map
(`formats.registers.register_map`), so the RTL, the host and docs/registers.md have one source.

Every register field is a port of the block, grouped by register (``control.start``, in Verilog
``control__start``): ``rw`` and ``pulse`` fields are outputs to the design, ``ro`` fields inputs
from it, a ``w1c`` field an output with an input ``<field>_set`` that sets it; ``const`` fields are
not ports. Reads and writes take one transfer at a time; a write applies its byte strobes; an
offset outside the map answers SLVERR and changes nothing.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.registers import REGISTER_BYTES, register_map

__all__ = ["ControlRegisters", "axi4_lite_signature", "ADDRESS_BITS", "RESP_SLVERR"]

ADDRESS_BITS = 12               # a 4 KiB register window
RESP_OKAY, RESP_SLVERR = 0, 2


def axi4_lite_signature(addr_width: int = ADDRESS_BITS, data_width: int = 32) -> wiring.Signature:
    """An AXI4-Lite manager port (flip it for a subordinate), with the specification's names."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def _field_members(register) -> dict:
    members = {}
    for field in register.fields:
        if field.access in ("rw", "pulse"):
            members[field.name] = Out(field.width)
        elif field.access == "ro":
            members[field.name] = In(field.width)
        elif field.access == "w1c":
            members[field.name] = Out(field.width)
            members[f"{field.name}_set"] = In(field.width)
    return members


class ControlRegisters(wiring.Component):
    """The register block of one `AccelConfig` (its ``build_id`` is the build ID register).

    Ports
    -----
    s_axil : AXI4-Lite subordinate (`axi4_lite_signature`, flipped), 32-bit data
    <register> : the register's fields, as described above
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"ControlRegisters needs an AccelConfig, not {config!r}")
        self.config = config
        self.map = register_map(config.build_id)
        members = {"s_axil": In(axi4_lite_signature())}
        for register in self.map.registers:
            fields = _field_members(register)
            if fields:
                members[register.name] = Out(wiring.Signature(fields))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axil
        word = (REGISTER_BYTES - 1).bit_length()

        # stored fields: rw, pulse (the one-cycle output), w1c
        stored = {}
        for register in self.map.registers:
            ports = getattr(self, register.name, None)
            for field in register.fields:
                if field.access == "rw":
                    stored[register.name, field.name] = Signal(field.width, init=field.reset,
                                                               name=f"{register.name}_{field.name}")
                    m.d.comb += getattr(ports, field.name).eq(stored[register.name, field.name])
                elif field.access == "pulse":
                    m.d.sync += getattr(ports, field.name).eq(0)
                elif field.access == "w1c":
                    value = Signal(field.width, init=field.reset,
                                   name=f"{register.name}_{field.name}")
                    stored[register.name, field.name] = value
                    m.d.comb += getattr(ports, field.name).eq(value)

        def read_value(register):
            ports = getattr(self, register.name, None)
            bits = Const(0, 32)
            parts = []
            position = 0
            for field in sorted(register.fields, key=lambda f: f.lsb):
                if field.lsb > position:
                    parts.append(Const(0, field.lsb - position))
                if field.access in ("rw", "w1c"):
                    parts.append(stored[register.name, field.name])
                elif field.access == "ro":
                    parts.append(getattr(ports, field.name))
                elif field.access == "const":
                    parts.append(Const(field.reset, field.width))
                else:                                        # pulse: reads 0
                    parts.append(Const(0, field.width))
                position = field.lsb + field.width
            return Cat(*parts) if parts else bits

        # -- writes: AW and W in either order, then the B response
        aw_held, w_held = Signal(), Signal()
        aw_address = Signal(ADDRESS_BITS)
        w_data, w_strobe = Signal(32), Signal(4)
        m.d.comb += [bus.awready.eq(~aw_held & ~bus.bvalid), bus.wready.eq(~w_held & ~bus.bvalid)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_held.eq(1), aw_address.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_held.eq(1), w_data.eq(bus.wdata), w_strobe.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        sets = []
        with m.If(aw_held & w_held):
            m.d.sync += [aw_held.eq(0), w_held.eq(0), bus.bvalid.eq(1), bus.bresp.eq(RESP_SLVERR)]
            for register in self.map.registers:
                with m.If(aw_address[word:] == register.offset >> word):
                    m.d.sync += bus.bresp.eq(RESP_OKAY)
                    ports = getattr(self, register.name, None)
                    for field in register.fields:
                        for bit in range(field.width):
                            position = field.lsb + bit
                            enabled = w_strobe[position // 8]
                            incoming = w_data[position]
                            if field.access == "rw":
                                target = stored[register.name, field.name][bit]
                                with m.If(enabled):
                                    m.d.sync += target.eq(incoming)
                            elif field.access == "pulse":
                                m.d.sync += getattr(ports, field.name)[bit].eq(enabled & incoming)
                            elif field.access == "w1c":
                                sets.append((register, field, bit, enabled & incoming))
        # w1c: the hardware's set wins over a clear in the same cycle
        for register in self.map.registers:
            ports = getattr(self, register.name, None)
            for field in register.fields:
                if field.access != "w1c":
                    continue
                value = stored[register.name, field.name]
                for bit in range(field.width):
                    clears = [clear for r, f, b, clear in sets
                              if (r.name, f.name, b) == (register.name, field.name, bit)]
                    clear = Signal(name=f"{register.name}_{field.name}_clear{bit}")
                    with m.If(aw_held & w_held & (aw_address[word:] == register.offset >> word)):
                        m.d.comb += clear.eq(clears[0] if clears else 0)
                    set_bit = getattr(ports, f"{field.name}_set")[bit]
                    with m.If(set_bit):
                        m.d.sync += value[bit].eq(1)
                    with m.Elif(clear):
                        m.d.sync += value[bit].eq(0)

        # -- reads: one at a time
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0), bus.rresp.eq(RESP_SLVERR)]
            for register in self.map.registers:
                with m.If(bus.araddr[word:] == register.offset >> word):
                    m.d.sync += [bus.rdata.eq(read_value(register)), bus.rresp.eq(RESP_OKAY)]
        return m
