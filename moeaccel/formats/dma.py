"""The DMA engine's formats: its command (a LOAD or STORE's transfer with its direction), the words it
exchanges with the on-chip buffers, and its counters.

DRAM addresses in a command are byte offsets inside the DMA window the host grants (``window_base``,
``window_size``); the engine refuses a transfer that leaves the window before it issues anything.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from .buffers import Buffer, buffer_bytes
from .instructions import SRAM_ADDRESS_BITS, transfer_body
from .rules import Fields, check_rules, member, normalise

__all__ = ["MAX_BURST_BEATS", "BURST_BOUNDARY", "dma_command", "sram_word_bits", "sram_write",
           "sram_read_request", "DMA_COUNTERS", "rules", "check"]

MAX_BURST_BEATS = 256           # AXI4 INCR bursts
BURST_BOUNDARY = 4096           # no burst crosses a 4 KiB boundary


def dma_command(config) -> data.StructLayout:
    """A transfer: ``store`` 0 moves DRAM rows into a buffer (LOAD), 1 a buffer's rows into DRAM
    (STORE); ``transfer`` is the instruction's body (`instructions.transfer_body`)."""
    return data.StructLayout({"store": unsigned(1), "transfer": transfer_body(config)})


def sram_word_bits(config) -> int:
    """Bits of a buffer word address: buffers are addressed in bus words of ``axi_data_bytes``."""
    return SRAM_ADDRESS_BITS - (config.axi_data_bytes - 1).bit_length()


def sram_write(config) -> data.StructLayout:
    """A LOAD's write of one bus word of a buffer, bytes enabled by ``strobe``."""
    return data.StructLayout({
        "buffer": Buffer,
        "addr": unsigned(sram_word_bits(config)),
        "data": unsigned(config.axi_data_width),
        "strobe": unsigned(config.axi_data_bytes),
    })


def sram_read_request(config) -> data.StructLayout:
    """A STORE's read of one bus word of a buffer; the word comes back on the next cycle."""
    return data.StructLayout({"buffer": Buffer, "addr": unsigned(sram_word_bits(config))})


# The DMA engine's counters (`perf`), cleared when a command is accepted.
DMA_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),           # cycles with a transfer under way
    "bytes_read": unsigned(32),            # DRAM bytes a LOAD moved
    "bytes_written": unsigned(32),         # DRAM bytes a STORE moved
    "bursts": unsigned(32),                # AXI bursts issued
})


def rules(config, t):
    """The refusals of a LOAD or STORE's transfer `t` that its fields alone decide (`rules`): rows
    past the end of their buffer. (The DMA window depends on the host's grant; the engine checks
    it when it starts.)"""
    sizes = buffer_bytes(config)
    stride = (t.sram_stride == 0) * t.row_bytes + (t.sram_stride != 0) * t.sram_stride
    end = t.sram + (t.rows - 1) * stride + t.row_bytes
    capacity = sum((t.buffer == buffer) * size for buffer, size in sizes.items())
    return [
        (lambda: f"buffer={t.buffer} is no Buffer", member(t.buffer, Buffer) == 0),
        (lambda: f"{t.buffer.name} bytes up to {end} are beyond its {capacity}",
         (t.rows != 0) & (end > capacity)),
    ]


def check(config, fields: dict) -> list[str]:
    """What a LOAD or STORE refuses in its transfer body (empty: it runs)."""
    fields, reasons = normalise(transfer_body(config), fields)
    return reasons or check_rules(rules(config, Fields.of(fields)))
