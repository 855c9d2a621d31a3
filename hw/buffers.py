"""The on-chip buffers of the accelerator top, one memory each, sized by
`formats.buffers.buffer_bytes`, in words of the bus (``axi_data_bytes``) with byte enables.

The DMA engines reach every buffer: a LOAD's words go in through ``load_write`` (with their byte
strobes), a STORE's come out through ``store_read`` a cycle after the request.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer, buffer_bytes
from ..formats.dma import sram_read_request, sram_write

__all__ = ["Buffers"]


class Buffers(wiring.Component):
    """The buffers of one `AccelConfig`.

    Ports
    -----
    load_write : stream of `formats.dma.sram_write`, always ready
    store_read : stream of `formats.dma.sram_read_request`, always ready
    store_read_data : the word a request asked for, the cycle after it
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Buffers needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "load_write": In(stream.Signature(sram_write(config), always_ready=True)),
            "store_read": In(stream.Signature(sram_read_request(config), always_ready=True)),
            "store_read_data": Out(config.axi_data_width),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        width = config.axi_data_bytes
        read_buffer = Signal(Buffer)
        m.d.sync += read_buffer.eq(self.store_read.p.buffer)
        for buffer, size in buffer_bytes(config).items():
            depth = -(-size // width)
            mem = memory.Memory(shape=unsigned(8 * width), depth=depth, init=[])
            m.submodules[buffer.name.lower()] = mem
            write = mem.write_port(granularity=8)
            read = mem.read_port()
            words = self.load_write.p
            m.d.comb += [
                write.addr.eq(words.addr), write.data.eq(words.data),
                read.addr.eq(self.store_read.p.addr),
                read.en.eq(self.store_read.valid & (self.store_read.p.buffer == buffer)),
            ]
            with m.If(self.load_write.valid & (words.buffer == buffer)):
                m.d.comb += write.en.eq(words.strobe)
            with m.If(read_buffer == buffer):
                m.d.comb += self.store_read_data.eq(read.data)
        return m
