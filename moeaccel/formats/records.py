"""Records in memory: `lib.data` layouts read and written as numpy arrays, and `Pair`, a record kept in
two forms (narrow on chip, whole little-endian bytes in DRAM) declared once.

Every byte the host, the compiler and the emulator put into or take out of a buffer or a DRAM image goes
through `dtype`: a layout's fields become a numpy structured dtype at the layout's own offsets, so no
offset or record size is ever written a second time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
from amaranth.hdl import Cat, Const, Shape, Value, unsigned
from amaranth.lib import data

__all__ = ["dtype", "size", "zeros", "view", "Pair", "FormatError"]


class FormatError(ValueError):
    """A layout that cannot be a record in memory, or a value a record's field cannot hold."""


def _scalar(shape: Shape, where: str) -> np.dtype:
    if shape.width not in (8, 16, 32, 64):
        raise FormatError(f"{where} is {shape.width} bits wide: a field in memory is a whole "
                          f"8-, 16-, 32- or 64-bit integer")
    return np.dtype(f"<{'i' if shape.signed else 'u'}{shape.width // 8}")


def _dtype(shape, where: str) -> np.dtype:
    if isinstance(shape, data.StructLayout):
        names, formats, offsets = [], [], []
        for name, field in shape:
            if name == "reserved":
                continue                        # padding: no field of the numpy record
            if field.offset % 8:
                raise FormatError(f"{where}.{name} starts at bit {field.offset}, not on a byte")
            names.append(name)
            formats.append(_dtype(field.shape, f"{where}.{name}"))
            offsets.append(field.offset // 8)
        if shape.size % 8:
            raise FormatError(f"{where} is {shape.size} bits: not whole bytes")
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": shape.size // 8})
    if isinstance(shape, data.ArrayLayout):
        return np.dtype((_dtype(shape.elem_shape, f"{where}[]"), (shape.length,)))
    if isinstance(shape, data.Layout):
        raise FormatError(f"{where}: a {type(shape).__name__} has no memory form")
    return _scalar(Shape.cast(shape), where)


def dtype(layout) -> np.dtype:
    """The numpy dtype of a record in memory (little-endian; ``reserved`` fields are padding)."""
    return _dtype(layout, getattr(layout, "__name__", "record"))


def size(layout) -> int:
    """Bytes of one record."""
    return dtype(layout).itemsize


def zeros(layout, count: int = 1) -> np.ndarray:
    """`count` records of `layout`, all zero, to fill by field name and write out with ``tobytes``."""
    return np.zeros(count, dtype=dtype(layout))


def view(layout, source, count: int = 1, offset: int = 0) -> np.ndarray:
    """`count` records of `layout` in `source` at byte `offset`: a copy of bytes, or, when `source`
    is a bytearray, a view that writes through to it. A range past its end is refused, naming
    both."""
    record = dtype(layout)
    end = offset + count * record.itemsize
    if offset < 0 or end > len(source):
        raise FormatError(f"{count} records of {record.itemsize} bytes at byte {offset} run past the "
                          f"{len(source)} bytes there are")
    if isinstance(source, bytearray):
        return np.frombuffer(source, dtype=record, count=count, offset=offset)
    return np.frombuffer(bytes(source[offset:end]), dtype=record, count=count)


OnChipShape = Shape | data.Layout | Callable[[object], Shape | data.Layout]


@dataclass(frozen=True)
class Pair:
    """A record kept in two forms, declared once: on chip each field is as wide as the configuration
    needs (`onchip`), in DRAM (and in the byte images of the on-chip buffers) a whole little-endian
    integer (`dram`), padded to `dram_bytes`.

    ``fields`` maps a name to ``(onchip, dram)``: the on-chip shape, or a function of the
    `AccelConfig` giving it, and the DRAM shape. A configuration whose on-chip field is wider than
    its DRAM field is refused, naming both. A DRAM value its on-chip field cannot hold is refused
    when a unit reads it (`refusals`), never truncated.
    """

    name: str
    fields: dict
    dram_bytes: int | None = None

    @property
    def dram(self) -> data.StructLayout:
        layout = {name: dram for name, (_, dram) in self.fields.items()}
        bits = sum(Shape.cast(shape).width for shape in layout.values())
        total = 8 * self.dram_bytes if self.dram_bytes is not None else -(-bits // 8) * 8
        if total < bits:
            raise FormatError(f"{self.name}: {bits} bits of fields do not fit {self.dram_bytes} "
                              f"bytes")
        if total > bits:
            layout["reserved"] = unsigned(total - bits)
        return data.StructLayout(layout)

    @property
    def size(self) -> int:
        """Bytes of the DRAM form."""
        return self.dram.size // 8

    def onchip(self, config=None) -> data.StructLayout:
        return data.StructLayout(self.onchip_fields(config))

    def refusals(self, config, values: np.ndarray, what: str) -> list[str]:
        """The values of DRAM records `values` (read with `dram`) that their on-chip fields cannot
        hold, one reason a field (the first record that breaks it)."""
        found = []
        for name, shape in self.onchip_fields(config).items():
            if isinstance(shape, data.Layout):
                continue
            shape = Shape.cast(shape)
            width = shape.width
            low, high = ((-(1 << (width - 1)), (1 << (width - 1)) - 1) if shape.signed
                         else (0, (1 << width) - 1))
            column = np.asarray(values[name]).astype(np.int64).reshape(-1)
            bad = np.nonzero((column < low) | (column > high))[0]
            if bad.size:
                found.append(f"{what} {int(bad[0])}: {name}={int(column[bad[0]])} does not fit its "
                             f"{width} bits on chip ({low} .. {high})")
        return found

    def onchip_fields(self, config=None) -> dict:
        """The on-chip shapes by name, to place the record's fields inside another layout."""
        layout = {}
        for name, (onchip, dram) in self.fields.items():
            shape = onchip(config) if inspect.isfunction(onchip) else onchip
            width = shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width
            if width > Shape.cast(dram).width:
                where = f"the {config.name} configuration" if config is not None else "its form"
                raise FormatError(f"{self.name}.{name} takes {width} bits on chip in {where}, more "
                                  f"than the {Shape.cast(dram).width} of its DRAM form")
            layout[name] = shape
        return layout

    def from_dram(self, config, value):
        """The on-chip form (bits of `onchip`) of the DRAM record `value` (its bits, an Amaranth
        value), each field cut to its on-chip width: the hardware reading a record `refused` has
        passed."""
        dram = data.View(self.dram, value)
        fields = []
        for name, shape in self.onchip_fields(config).items():
            width = shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width
            fields.append(Value.cast(dram[name])[:width])
        return Cat(*fields)

    def refused(self, config, value):
        """An Amaranth condition: a field of the DRAM record `value` does not fit its on-chip field
        (the hardware's `refusals`)."""
        dram = data.View(self.dram, value)
        found = Const(0, 1)
        for name, shape in self.onchip_fields(config).items():
            if isinstance(shape, data.Layout):
                continue
            shape = Shape.cast(shape)
            dram_shape = Shape.cast(self.fields[name][1])
            field = Value.cast(dram[name])
            field = field.as_signed() if dram_shape.signed else field
            low, high = ((-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed
                         else (0, (1 << shape.width) - 1))
            found = found | (field < low) | (field > high)
        return found

    def to_dram(self, config, value):
        """The DRAM form (bits of `dram`) of the on-chip record `value` (its bits, or a view of
        `onchip`), each field widened to its DRAM width (sign-extended when signed), reserved bits
        zero: the hardware writing a record."""
        onchip = data.View(self.onchip(config), Value.cast(value))
        shapes = self.onchip_fields(config)
        parts = []
        for name, (_, dram) in self.fields.items():
            field = Value.cast(onchip[name])
            pad = Shape.cast(dram).width - len(field)
            signed = not isinstance(shapes[name], data.Layout) and Shape.cast(shapes[name]).signed
            parts.append(Cat(field, field[-1].replicate(pad) if signed else Const(0, pad)))
        bits = Cat(*parts)
        return Cat(bits, Const(0, self.dram.size - len(bits)))
