"""The on-chip buffers of the accelerator top, one memory each, sized by
`formats.buffers.buffer_bytes`, in words of the bus (``axi_data_bytes``) with byte enables.

Each memory has two sides, each one address a cycle (a true dual-port block RAM):

* **the DMA side.** A LOAD's words go in through ``load_write`` (with their byte strobes; never
  held), a STORE's come out through ``store_read``, a cycle after the request; a read request is
  held while a LOAD writes the same buffer.
* **the unit side**, the compute unit's: ``unit_write`` (never held) and ``unit_read``, held while
  the unit writes the same buffer.

Both sides may reach the same buffer at once: the program's tokens keep them on different bytes.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer, buffer_bytes
from ..formats.dma import sram_read_request, sram_word_bits, sram_write

__all__ = ["Buffers"]


class Buffers(wiring.Component):
    """The buffers of one `AccelConfig`.

    Ports
    -----
    load_write, unit_write : streams of `formats.dma.sram_write`, always taken
    store_read, unit_read : streams of `formats.dma.sram_read_request`; taken when ``ready``
    store_read_data, unit_read_data : the word a taken request asked for, the cycle after it
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Buffers needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "load_write": In(stream.Signature(sram_write(config))),
            "store_read": In(stream.Signature(sram_read_request(config))),
            "store_read_data": Out(config.axi_data_width),
            "unit_write": In(stream.Signature(sram_write(config), always_ready=True)),
            "unit_read": In(stream.Signature(sram_read_request(config))),
            "unit_read_data": Out(config.axi_data_width),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        width = config.axi_data_bytes
        sides = ((self.load_write, self.store_read, self.store_read_data, "dma"),
                 (self.unit_write, self.unit_read, self.unit_read_data, "unit"))
        read_buffers = {}
        m.d.comb += self.load_write.ready.eq(1)
        for write, read, _, side in sides:
            # a read is held while a write reaches the same buffer
            m.d.comb += read.ready.eq(~write.valid | (write.p.buffer != read.p.buffer))
            read_buffers[side] = Signal(Buffer, name=f"{side}_read_buffer")
            m.d.sync += read_buffers[side].eq(read.p.buffer)
        for buffer, size in buffer_bytes(config).items():
            mem = memory.Memory(shape=unsigned(8 * width), depth=-(-size // width), init=[])
            m.submodules[buffer.name.lower()] = mem
            for write, read, read_data, side in sides:
                address = Signal(sram_word_bits(config), name=f"{buffer.name.lower()}_{side}_addr")
                write_port = mem.write_port(granularity=8)
                read_port = mem.read_port()
                writing = write.valid & (write.p.buffer == buffer)
                m.d.comb += [
                    address.eq(read.p.addr),
                    write_port.addr.eq(address), read_port.addr.eq(address),
                    write_port.data.eq(write.p.data),
                    read_port.en.eq(read.valid & read.ready & (read.p.buffer == buffer)),
                ]
                with m.If(writing):
                    m.d.comb += [address.eq(write.p.addr), write_port.en.eq(write.p.strobe)]
                with m.If(read_buffers[side] == buffer):
                    m.d.comb += read_data.eq(read_port.data)
        return m
