"""The on-chip buffers of the accelerator top, one memory each, sized by
`formats.buffers.buffer_bytes`, with byte enables. A memory's word is its widest client's
(`word_bytes`: the activation buffers the Expert-FFN engine's activation word, OUT a tile of int32
sums, the others a bus word); the ports here address bus words, each a slice of a memory word.

Each memory has two sides, each one address a cycle (a true dual-port block RAM):

* **the DMA side.** A LOAD's words go in through ``load_write`` (with their byte strobes; never
  held), a STORE's come out through ``store_read``, a cycle after the request; and the compute
  unit's second reader, ``unit_read_b``. A read request is held while a LOAD writes the same
  buffer, and ``unit_read_b`` while a STORE reads it.
* **the unit side**, the compute unit's: ``unit_write`` (never held) and its first reader,
  ``unit_read``, held while the unit writes the same buffer.

So a unit reads two rows of one buffer at once, or reads one buffer on each side while it writes
over the rows it reads with ``unit_read_b`` (VECTOR's ADD and MUL writing over ``b``), each a
word a cycle.

Both sides may reach the same buffer at once: the program's tokens keep them on different bytes.

The Expert-FFN engine reaches its memories directly (`DIRECT`), a memory word an access: it
reads ACT0, ACT1, PARAMS, GATES and OUT and writes ACT0 and ACT1 on the unit side, and writes OUT on
the DMA side, where its write comes first and holds the DMA's requests to OUT that cycle.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats.buffers import Buffer, buffer_bytes, out_row_bytes
from ..formats.dma import sram_read_request, sram_word_bits, sram_write
from ..formats.epilogue import CHANNEL_PARAMS

__all__ = ["Buffers", "DIRECT", "direct_signatures", "word_bytes", "word_depth"]

# The direct ports, by name: the buffer, whether the port reads or writes, and the side it is on.
# The Expert-FFN engine's: ACT0 and ACT1 read and written, PARAMS and GATES read, OUT read on the
# unit side and written on the DMA side. The router's: ROUTER_WEIGHTS read on both sides (a word
# of weights, and an expert's requantisation), ROUTER_BIAS read, DISPATCH written on both sides (a
# queue entry, and its expert's count).
DIRECT = {
    "act0_read": (Buffer.ACT0, "read", "unit"),
    "act0_write": (Buffer.ACT0, "write", "unit"),
    "act1_read": (Buffer.ACT1, "read", "unit"),
    "act1_write": (Buffer.ACT1, "write", "unit"),
    "params_read": (Buffer.PARAMS, "read", "unit"),
    "gates_read": (Buffer.GATES, "read", "unit"),
    "out_read": (Buffer.OUT, "read", "unit"),
    "out_write": (Buffer.OUT, "write", "dma"),
    "weights_read": (Buffer.ROUTER_WEIGHTS, "read", "unit"),
    "requant_read": (Buffer.ROUTER_WEIGHTS, "read", "dma"),
    "bias_read": (Buffer.ROUTER_BIAS, "read", "unit"),
    "queue_write": (Buffer.DISPATCH, "write", "unit"),
    "count_write": (Buffer.DISPATCH, "write", "dma"),
}


def word_bytes(config) -> dict:
    """Each buffer's memory word: the activation buffers an activation word (the Expert-FFN
    engine's), OUT a tile of int32 sums, PARAMS a tile's parameter records, ROUTER_WEIGHTS a word
    of router weights, the others a bus word; never narrower than the bus."""
    bus = config.axi_data_bytes
    wide = {Buffer.ACT0: config.act_word_bytes, Buffer.ACT1: config.act_word_bytes,
            Buffer.OUT: out_row_bytes(config, config.mac_rows),
            Buffer.PARAMS: config.mac_rows * CHANNEL_PARAMS.size,
            Buffer.ROUTER_WEIGHTS: config.router_lanes}
    return {buffer: max(bus, wide.get(buffer, bus)) for buffer in buffer_bytes(config)}


def word_depth(config, buffer: Buffer) -> int:
    """Words of a buffer's memory."""
    return -(-buffer_bytes(config)[buffer] // word_bytes(config)[buffer])


def direct_signatures(config, names=None) -> dict:
    """The direct ports `names` (default: all of `DIRECT`), as memory ports (the memory's side)."""
    ports = {}
    words = word_bytes(config)
    for name in DIRECT if names is None else names:
        buffer, kind, _ = DIRECT[name]
        shape = dict(addr_width=max(0, (word_depth(config, buffer) - 1).bit_length()),
                     shape=unsigned(8 * words[buffer]))
        ports[name] = (memory.ReadPort.Signature(**shape) if kind == "read"
                       else memory.WritePort.Signature(**shape, granularity=8))
    return ports


class Buffers(wiring.Component):
    """The buffers of one `AccelConfig`.

    Ports
    -----
    load_write, unit_write : streams of `formats.dma.sram_write`, always taken
    store_read, unit_read, unit_read_b : streams of `formats.dma.sram_read_request`; taken when
        ``ready``
    store_read_data, unit_read_data, unit_read_b_data : the word a taken request asked for, the
        cycle after it
    act0_read ... count_write : the direct ports (`DIRECT`), memory ports of whole memory words;
        a read's data is there the cycle after its ``en``
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
            "unit_read_b": In(stream.Signature(sram_read_request(config))),
            "unit_read_b_data": Out(config.axi_data_width),
            **{name: Out(signature) for name, signature in direct_signatures(config).items()},
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        width = config.axi_data_bytes
        # (writer, readers by priority, side): each reader's requests with its data
        sides = ((self.load_write, [(self.store_read, self.store_read_data),
                                    (self.unit_read_b, self.unit_read_b_data)], "dma"),
                 (self.unit_write, [(self.unit_read, self.unit_read_data)], "unit"))
        # a direct port's access this cycle, by side and buffer
        direct = {"dma": {}, "unit": {}}
        for name, (buffer, kind, side) in DIRECT.items():
            port = getattr(self, name)
            active = port.en if kind == "read" else port.en.any()
            direct[side][buffer] = direct[side].get(buffer, 0) | active

        def direct_on(side, requested):
            """A direct port reaches the requested buffer on this side this cycle."""
            hit = 0
            for buffer, active in direct[side].items():
                hit = hit | ((requested == buffer) & active)
            return hit

        m.d.comb += self.load_write.ready.eq(~direct_on("dma", self.load_write.p.buffer))
        read_buffers = {}
        read_words = {}
        for write, readers, side in sides:
            # a read is held while a direct port, a write, or a reader before it reaches the same
            # buffer
            for n, (read, _) in enumerate(readers):
                busy = (direct_on(side, read.p.buffer)
                        | (write.valid & (write.p.buffer == read.p.buffer)))
                for earlier, _ in readers[:n]:
                    busy = busy | (earlier.valid & (earlier.p.buffer == read.p.buffer))
                m.d.comb += read.ready.eq(~busy)
                read_buffers[read] = Signal(Buffer, name=f"{side}_read{n}_buffer")
                read_words[read] = Signal.like(read.p.addr, name=f"{side}_read{n}_word")
                m.d.sync += [read_buffers[read].eq(read.p.buffer), read_words[read].eq(read.p.addr)]
        words = word_bytes(config)
        for buffer in buffer_bytes(config):
            # a memory word holds `ratio` bus words: a bus word is a slice of it, by its strobes
            ratio = words[buffer] // width
            lg = (ratio - 1).bit_length()
            name = buffer.name.lower()
            mem = memory.Memory(shape=unsigned(8 * words[buffer]),
                                depth=word_depth(config, buffer), init=[])
            m.submodules[name] = mem
            for write, readers, side in sides:
                # one address a cycle: a direct port's, the write's, or the read's that reaches
                # this buffer (the last assignment wins)
                address = Signal(sram_word_bits(config) - lg, name=f"{name}_{side}_addr")
                write_port = mem.write_port(granularity=8)
                read_port = mem.read_port()
                slot = write.p.addr[:lg] if lg else 0
                # the port reads every cycle (a block RAM's read register, nothing beside it);
                # with no access it reads the word read last again, so a direct reader's word stays
                # (as long as nothing writes this side of the memory, which the compute units never
                # do while they read)
                last = Signal.like(address, name=f"{name}_{side}_last")
                m.d.comb += [address.eq(last), write_port.addr.eq(address),
                             read_port.addr.eq(address),
                             write_port.data.eq(write.p.data.replicate(ratio))]
                for read, data in reversed(readers):
                    taken = read.valid & read.ready & (read.p.buffer == buffer)
                    with m.If(taken):
                        m.d.comb += address.eq(read.p.addr >> lg)
                        m.d.sync += last.eq(read.p.addr >> lg)
                    with m.If(read_buffers[read] == buffer):
                        m.d.comb += data.eq(read_port.data.word_select(
                            read_words[read][:lg], 8 * width) if lg else read_port.data)
                writing = write.valid & (write.p.buffer == buffer)
                if side == "dma":
                    writing = writing & write.ready
                with m.If(writing):
                    m.d.comb += [address.eq(write.p.addr >> lg),
                                 write_port.en.eq(write.p.strobe << (slot * width))]
                for port_name, (target, kind, port_side) in DIRECT.items():
                    if target is not buffer or port_side != side:
                        continue
                    port = getattr(self, port_name)
                    if kind == "read":
                        m.d.comb += port.data.eq(read_port.data)
                        with m.If(port.en):
                            m.d.comb += address.eq(port.addr)
                            m.d.sync += last.eq(port.addr)
                    else:
                        with m.If(port.en.any()):
                            m.d.comb += [address.eq(port.addr), write_port.en.eq(port.en),
                                         write_port.data.eq(port.data)]
        return m
