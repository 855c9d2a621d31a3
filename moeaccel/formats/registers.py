"""The control registers: one SystemRDL description (`registers.rdl`, with a performance counter
register for every field of the units' ``perf`` layouts), compiled by systemrdl-compiler into the
`RegisterMap` that the RTL (`hw.registers`), the host and docs/registers.md all read.

``python -m moeaccel.formats.registers > docs/registers.md`` writes the docs' map.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import unsigned
from amaranth.lib import data

from .attention import ATTENTION_COUNTERS, SEQUENCER_COUNTERS
from .dma import DMA_COUNTERS
from .expert_ffn import EXPERT_FFN_COUNTERS
from .router import ROUTER_COUNTERS
from .vector import VECTOR_COUNTERS

__all__ = ["RDL_FILE", "COUNTER_BASE", "TOP_COUNTERS", "COUNTER_BLOCKS", "ACCESS", "Field",
           "Register", "RegisterMap", "rdl_source", "register_map", "markdown"]

RDL_FILE = Path(__file__).with_name("registers.rdl")
COUNTER_BASE = 0x100
REGISTER_BYTES = 4

# The accelerator top's own counters, cleared when a run starts.
TOP_COUNTERS = data.StructLayout({
    "total_cycles": unsigned(32),          # cycles since start
    "instructions": unsigned(32),          # instructions ended
    "load_busy_cycles": unsigned(32),      # cycles the load queue ran an instruction
    "compute_busy_cycles": unsigned(32),
    "store_busy_cycles": unsigned(32),
    "load_stall_cycles": unsigned(32),     # cycles the load queue waited for a dependency token
    "compute_stall_cycles": unsigned(32),
    "store_stall_cycles": unsigned(32),
    "experts_run": unsigned(32),           # EXPERT_LOOP: experts with tokens
    "experts_skipped": unsigned(32),       # EXPERT_LOOP: experts without
})

# The counter blocks, in address order from COUNTER_BASE: (prefix, layout, what counts).
COUNTER_BLOCKS = (
    ("top", TOP_COUNTERS, "the accelerator top"),
    ("expert_ffn", EXPERT_FFN_COUNTERS, "the Expert-FFN engine"),
    ("router", ROUTER_COUNTERS, "the router"),
    ("attention", ATTENTION_COUNTERS, "the attention unit"),
    ("sequencer", SEQUENCER_COUNTERS, "the attention sequencer"),
    ("vector", VECTOR_COUNTERS, "the vector unit"),
    ("load_dma", DMA_COUNTERS, "the DMA engine's LOADs"),
    ("store_dma", DMA_COUNTERS, "the DMA engine's STOREs"),
)

# A field's access, from its SystemRDL properties; the RTL builds exactly these.
ACCESS = {
    "rw": "software reads and writes it; the hardware reads it",
    "pulse": "software writes 1: the hardware sees one cycle high; reads 0",
    "ro": "the hardware drives it; software reads it",
    "const": "a constant software reads",
    "w1c": "the hardware sets it; software reads it, and writes 1 to clear it",
}


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    access: str                 # a key of ACCESS
    reset: int
    desc: str


@dataclass(frozen=True)
class Register:
    name: str
    offset: int                 # bytes from the register block's base
    desc: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class RegisterMap:
    registers: tuple[Register, ...]

    def __getitem__(self, name: str) -> Register:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(f"no register named {name!r}; registers are: "
                       f"{', '.join(r.name for r in self.registers)}")

    def offset(self, name: str) -> int:
        return self[name].offset

    @property
    def span(self) -> int:
        """Bytes the map covers."""
        return max(r.offset for r in self.registers) + REGISTER_BYTES


def _counter_registers() -> str:
    lines, offset = [], COUNTER_BASE
    for prefix, layout, what in COUNTER_BLOCKS:
        for name, member in layout:
            if member.shape.width != 32:
                raise ValueError(f"counter {prefix}.{name} is {member.shape.width} bits; a counter "
                                 f"register holds 32")
            lines.append(f'    reg {{ desc = "{what}: {name}."; '
                         f'field {{ sw = r; hw = w; }} value[31:0]; }} {prefix}_{name} @ {offset:#x};')
            offset += REGISTER_BYTES
    return "\n".join(lines)


def rdl_source() -> str:
    """The SystemRDL text: `registers.rdl` with the counter registers in place of its ``counters``
    line."""
    text = RDL_FILE.read_text()
    if "    // counters\n" not in text:
        raise ValueError(f"{RDL_FILE} has no '// counters' line for the counter registers")
    return text.replace("    // counters\n", _counter_registers() + "\n")


def _access(register: str, field) -> str:
    name = f"{register}.{field.inst_name}"
    onwrite = field.get_property("onwrite")
    if field.get_property("singlepulse"):
        return "pulse"
    if onwrite is not None:
        if onwrite.name == "woclr" and field.get_property("hwset") and not field.is_hw_writable:
            return "w1c"
        raise ValueError(f"{name}: onwrite = {onwrite.name} is not built (only woclr with hwset)")
    if field.is_sw_writable and field.is_sw_readable and field.is_hw_readable \
            and not field.is_hw_writable:
        return "rw"
    if field.is_sw_readable and not field.is_sw_writable and field.is_hw_writable:
        return "ro"
    if field.is_sw_readable and not field.is_sw_writable and not field.is_hw_writable \
            and not field.is_hw_readable:
        return "const"
    raise ValueError(f"{name}: this combination of sw and hw access is not built")


@functools.cache
def register_map(build_id: int = 0) -> RegisterMap:
    """The compiled register map, with `build_id` (`AccelConfig.build_id`) as the build ID's
    value. Errors of the description name its file and line."""
    from systemrdl import RDLCompiler

    compiler = RDLCompiler()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / RDL_FILE.name
        source.write_text(rdl_source())
        compiler.compile_file(str(source))
        root = compiler.elaborate(parameters={"BUILD_ID": build_id})
    registers = []
    for reg in root.top.registers():
        fields = tuple(Field(f.inst_name, f.lsb, f.width, _access(reg.inst_name, f),
                             int(f.get_property("reset") or 0), f.get_property("desc") or "")
                       for f in reg.fields())
        registers.append(Register(reg.inst_name, reg.absolute_address,
                                  reg.get_property("desc") or "", fields))
    return RegisterMap(tuple(registers))


def markdown() -> str:
    """docs/registers.md."""
    regs = register_map()
    lines = ["# Control registers", "",
             "Generated by `python -m moeaccel.formats.registers > docs/registers.md` from "
             "`moeaccel/formats/registers.rdl` (SystemRDL, compiled by systemrdl-compiler) and the "
             "units' `perf` layouts; `hw/registers.py` builds the AXI4-Lite register block from the "
             "same map. Registers are 32 bits, at byte offsets from the block's base; an offset "
             "outside the map answers SLVERR. `build_id` holds `AccelConfig.build_id`.", "",
             "Access: " + "; ".join(f"`{key}`: {text}" for key, text in ACCESS.items()) + ".", "",
             "| offset | register | field | bits | access | reset | description |",
             "|---|---|---|---|---|---|---|"]
    for reg in regs.registers:
        for n, f in enumerate(reg.fields):
            bits = f"{f.lsb + f.width - 1}:{f.lsb}" if f.width > 1 else f"{f.lsb}"
            reset = "BUILD_ID" if reg.name == "build_id" else (
                "" if f.access in ("ro",) else f"{f.reset:#x}")
            desc = f.desc or (reg.desc if n == 0 else "")
            lines.append(f"| {reg.offset:#05x} | {reg.name if n == 0 else ''} | {f.name} | {bits} "
                         f"| {f.access} | {reset} | {desc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
