"""An accelerator's memories as the emulator keeps them: the DMA window the host grants (``dram``)
and the on-chip buffers, sized by `formats.buffers.buffer_bytes`, with the bounds the hardware
enforces.

Every access is checked: DRAM outside the window stops the run with `ErrorCode.DMA_WINDOW`, a buffer
access beyond its capacity with `ErrorCode.BAD_FIELD` (`Stop` carries the code); nothing is ever
touched outside.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import AccelConfig
from ..formats import dma, records
from ..formats.buffers import Buffer, buffer_bytes
from ..formats.instructions import ErrorCode

__all__ = ["Stop", "Memory"]


class Stop(Exception):
    """The hardware stops the run: `code` is the error status it raises."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class Memory:
    """The DRAM window (``dram``, a bytearray the host fills and reads) and the on-chip buffers
    (``buffers``, a bytearray each)."""

    def __init__(self, config: AccelConfig, window_bytes: int):
        if not isinstance(window_bytes, int) or window_bytes <= 0:
            raise ValueError(f"the DMA window must be a positive number of bytes, not "
                             f"{window_bytes!r}")
        self.config = config
        self.dram = bytearray(window_bytes)
        self.buffers = {name: bytearray(size) for name, size in buffer_bytes(config).items()}

    # -- DRAM ------------------------------------------------------------------------------------

    def window(self, start: int, length: int, what: str) -> None:
        """Refuse an access outside the DMA window."""
        if start < 0 or length < 0 or start + length > len(self.dram):
            raise Stop(ErrorCode.DMA_WINDOW, f"{what} bytes {start}..{start + length - 1} are "
                                             f"outside the DMA window of {len(self.dram)} bytes")

    def read(self, start: int, length: int, what: str) -> bytes:
        self.window(start, length, what)
        return bytes(self.dram[start:start + length])

    def read_records(self, layout, start: int, count: int, what: str) -> np.ndarray:
        """`count` records of `layout` from DRAM at `start`."""
        size = records.size(layout)
        return records.view(layout, self.read(start, count * size, what), count)

    # -- the buffers -----------------------------------------------------------------------------

    def span(self, buffer: Buffer, start: int, length: int, what: str) -> slice:
        """Bytes ``start .. start + length`` of `buffer`, refused beyond its capacity."""
        if start + length > len(self.buffers[buffer]):
            raise Stop(ErrorCode.BAD_FIELD, f"{what}: {buffer.name} bytes up to "
                                            f"{start + length} are beyond its "
                                            f"{len(self.buffers[buffer])}")
        return slice(start, start + length)

    def buffer_records(self, buffer: Buffer, layout, count: int, what: str,
                       start: int = 0) -> np.ndarray:
        """`count` records of `layout` from `buffer` at byte `start`."""
        self.span(buffer, start, count * records.size(layout), what)
        return records.view(layout, self.buffers[buffer], count, start)

    def put(self, buffer: Buffer, start: int, payload: bytes, what: str) -> None:
        self.buffers[buffer][self.span(buffer, start, len(payload), what)] = payload

    def rows(self, buffer: Buffer, rows: int, width: int, stride: int, what: str,
             dtype=np.int8, index=None) -> torch.Tensor:
        """``rows`` rows (or the rows `index` names) of `width` values, `stride` bytes apart."""
        item = np.dtype(dtype).itemsize
        index = np.arange(rows) if index is None else np.asarray(index, dtype=np.int64)
        last = int(index.max()) if index.size else -1
        span = self.span(buffer, 0, (last * stride + width * item) if index.size else 0, what)
        raw = np.frombuffer(self.buffers[buffer], dtype=np.uint8)[span]
        picked = [raw[r * stride:r * stride + width * item] for r in index.tolist()]
        values = np.stack(picked).view(dtype) if picked else np.zeros((0, width), dtype)
        return torch.from_numpy(values.astype(np.int64).reshape(len(picked), width))

    def put_rows(self, buffer: Buffer, values: torch.Tensor, stride: int, what: str,
                 dtype=np.int8, index=None) -> None:
        """Write the rows of `values` (or into the rows `index` names), `stride` bytes apart."""
        rows, width = values.shape
        item = np.dtype(dtype).itemsize
        index = np.arange(rows) if index is None else np.asarray(index, dtype=np.int64)
        if not rows:
            return
        self.span(buffer, 0, int(index.max()) * stride + width * item, what)
        raw = values.numpy().astype(dtype).view(np.uint8).reshape(rows, width * item)
        target = self.buffers[buffer]
        for row, r in zip(raw, index.tolist()):
            target[r * stride:r * stride + width * item] = row.tobytes()

    # -- transfers -------------------------------------------------------------------------------

    def transfer(self, fields: dict, load: bool) -> None:
        """A LOAD (DRAM -> buffer) or STORE (buffer -> DRAM) of `transfer_body` `fields`: every row
        is checked before any byte moves."""
        reasons = dma.check(self.config, fields)
        if reasons:
            raise Stop(ErrorCode.BAD_FIELD, "; ".join(reasons))
        buffer = self.buffers[fields["buffer"]]
        rows, row_bytes = fields["rows"], fields["row_bytes"]
        stride = fields["sram_stride"] or row_bytes
        for row in range(rows):
            self.window(fields["dram"] + row * fields["dram_stride"], row_bytes, "DRAM")
        for row in range(rows):
            dram = fields["dram"] + row * fields["dram_stride"]
            sram = fields["sram"] + row * stride
            if load:
                buffer[sram:sram + row_bytes] = self.dram[dram:dram + row_bytes]
            else:
                self.dram[dram:dram + row_bytes] = buffer[sram:sram + row_bytes]
