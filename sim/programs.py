"""Random programs, drawn as the emulator's fuzz draws them, for the emulator's tests and the
accelerator top's regression: instructions with fields mostly small (so runs get past the first
check) and sometimes anything, addresses mostly inside the window, random dependency tokens, and
now and then a corrupted byte (illegal opcodes, enum codes no member has)."""

from __future__ import annotations

import random

from amaranth.lib import data, enum

from .. import isa
from ..formats.buffers import Buffer
from ..formats.instructions import Opcode, bodies

__all__ = ["random_fields", "random_instruction", "random_program"]


def random_fields(rng: random.Random, layout, window: int) -> dict:
    """Values for every field of a body: mostly small, sometimes anything the field holds;
    addresses mostly inside the window."""
    fields = {}
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.StructLayout):
            fields[name] = random_fields(rng, shape, window)
        elif isinstance(shape, type) and issubclass(shape, enum.Enum):
            fields[name] = rng.choice(list(shape))
        else:
            width = shape.width
            if width >= 24:                                 # addresses, strides
                value = rng.choice([rng.randrange(window + 64), rng.randrange(1 << 12), 0])
            else:
                value = rng.choice([0, 1, 2, rng.randrange(1, 9), rng.randrange(1, 33),
                                    rng.randrange(1 << width)])
            fields[name] = min(value, (1 << width) - 1)
    return fields


# LOAD and STORE twice as likely as the others
OPCODES = (Opcode.LOAD, Opcode.STORE, Opcode.LOAD, Opcode.STORE, Opcode.NOP, Opcode.SYNC,
           Opcode.ATTENTION, Opcode.FINISH, Opcode.LINEAR, Opcode.ROUTE, Opcode.EXPERT_LOOP,
           Opcode.VECTOR)


def random_instruction(rng: random.Random, config, window: int,
                       opcodes=OPCODES) -> isa.Instruction:
    opcode = rng.choice(opcodes)
    tokens = {name: rng.random() < 0.2 for name in ("pop_prev", "pop_next", "push_prev",
                                                    "push_next")}
    if opcode in (Opcode.LOAD, Opcode.STORE):
        fields = {"buffer": rng.choice(list(Buffer)), "dram": rng.randrange(window + 64),
                  "dram_stride": rng.choice([0, 8, 64, rng.randrange(1 << 12)]),
                  "sram": rng.randrange(1 << 12), "sram_stride": rng.choice([0, 16, 128]),
                  "rows": rng.randrange(0, 9), "row_bytes": rng.randrange(0, 300)}
    elif opcode is Opcode.ATTENTION:
        fields = {"command": {
            "seq_q": rng.randrange(0, 7), "seq_kv": rng.randrange(0, 9),
            "kv_heads": rng.randrange(0, 3), "rep": rng.randrange(0, 3),
            "head_words": rng.randrange(0, 3), "causal": rng.randrange(2),
            "score_mult": rng.randrange(1 << 15), "score_shift": rng.randrange(64),
            "out_mult": rng.randrange(1 << 15), "out_shift": rng.randrange(64)},
            "q": rng.randrange(window), "k": rng.randrange(window), "v": rng.randrange(window),
            "o": rng.randrange(window + 64)}
    elif opcode in (Opcode.LINEAR, Opcode.ROUTE, Opcode.EXPERT_LOOP, Opcode.VECTOR):
        fields = random_fields(rng, bodies(config)[opcode], window)
    else:
        fields = {}
    return isa.Instruction(opcode, fields, **tokens)


def random_program(rng: random.Random, config, window: int, opcodes=OPCODES,
                   longest: int = 11, corrupt: float = 0.1) -> bytes:
    """1 .. `longest` random instructions of `opcodes`, encoded; with probability `corrupt` one
    byte is then replaced by a random one. A corrupted program keeps to `opcodes` wherever it
    still decodes."""
    program = [random_instruction(rng, config, window, opcodes)
               for _ in range(rng.randrange(1, longest + 1))]
    blob = isa.encode(config, program)
    if rng.random() >= corrupt:
        return blob
    while True:
        corrupted = bytearray(blob)
        corrupted[rng.randrange(len(blob))] = rng.randrange(256)
        known = {op.value: op for op in Opcode}
        if all(known.get(_opcode(word), opcodes[0]) in opcodes
               for word in isa.split(bytes(corrupted))):
            return bytes(corrupted)


def _opcode(word: bytes) -> int:
    return word[0] & ((1 << Opcode.as_shape().width) - 1)
