"""cocotb drivers and monitors for Amaranth `lib.stream` ports (``<name>__valid``, ``__ready``,
``__payload`` in the generated Verilog), with random idle and backpressure.

Each coroutine works cycle by cycle: drive right after the rising edge, sample in the read-only phase
before the next one, so a transfer is seen exactly when ``valid & ready`` hold at a clock edge.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamSource", "StreamSink", "StreamMonitor"]


def _never() -> Iterator[bool]:
    while True:
        yield False


class StreamSource:
    """Sends payloads on an input stream of the DUT; between transfers it idles (valid low) when
    `idle` says so. Once valid rises it holds, with the same payload, until accepted."""

    def __init__(self, dut, name: str, idle: Iterator[bool] | None = None):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready", None)      # absent when always ready
        self.payload = getattr(dut, f"{name}__payload")
        self.idle = idle or _never()
        self.valid.value = 0

    async def send(self, payloads) -> None:
        pending = deque(payloads)
        holding = accepted = False
        while pending or holding:
            await RisingEdge(self.clk)
            if holding and accepted:
                pending.popleft()
                holding = False
            if not holding:
                if pending and not next(self.idle):
                    self.payload.value = pending[0]
                    self.valid.value = 1
                    holding = True
                else:
                    self.valid.value = 0
            await ReadOnly()
            accepted = holding and (self.ready is None or bool(self.ready.value))
        await RisingEdge(self.clk)
        self.valid.value = 0


class StreamSink:
    """Accepts payloads from an output stream of the DUT, holding ready low when `stall` says so, and
    hands each transferred payload (as an int) to `on_payload`."""

    def __init__(self, dut, name: str, on_payload: Callable[[int], None],
                 stall: Iterator[bool] | None = None):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.on_payload = on_payload
        self.stall = stall or _never()
        self.ready.value = 0

    async def run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            ready = not next(self.stall)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                self.on_payload(int(self.payload.value))


class StreamMonitor:
    """Watches a stream without driving it, handing each transferred payload to `on_payload`."""

    def __init__(self, dut, name: str, on_payload: Callable[[int], None]):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready", None)
        self.payload = getattr(dut, f"{name}__payload")
        self.on_payload = on_payload

    async def run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            await ReadOnly()
            if self.valid.value and (self.ready is None or self.ready.value):
                self.on_payload(int(self.payload.value))
