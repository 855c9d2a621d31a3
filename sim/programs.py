"""Random programs, drawn as the emulator's fuzz draws them, for the emulator's tests and the
accelerator top's regression: instructions with fields mostly small (so runs get past the first
check) and sometimes anything, addresses mostly inside the window, random dependency tokens, and
now and then a corrupted byte (illegal opcodes, enum codes no member has)."""

from __future__ import annotations

import random

from amaranth.lib import data, enum

from .. import isa
from ..formats.buffers import Buffer, buffer_bytes
from ..formats.instructions import Opcode, bodies

__all__ = ["random_fields", "random_instruction", "random_program", "random_pipeline"]


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


def random_pipeline(rng: random.Random, config, window: int, stages: int) -> bytes:
    """A program whose result does not depend on the order its queues run in: `stages` copies,
    each a LOAD of random rows into its own part of a buffer, a NOP (or SYNC now and then) passing
    the load's token on, and a STORE of the rows to its own part of the window, held together by
    dependency tokens; the three queues' instructions interleaved at random, so the queues overlap
    as far as the tokens let them."""
    sizes = {b: n for b, n in buffer_bytes(config).items() if n >= 1024}
    buffers = sorted(sizes, key=lambda b: b.value)
    half = window // 2
    slice_bytes = half // stages
    steps = []
    for stage in range(stages):
        buffer = rng.choice(buffers)
        part = sizes[buffer] // stages                  # the stage's own part of the buffer
        rows = rng.randint(1, 4)
        row_bytes = rng.randint(1, max(1, min(part // rows, slice_bytes // rows) - 1))
        sram = part * stage
        dram = rng.randrange(0, half - rows * row_bytes + 1)
        target = half + slice_bytes * stage
        steps.append([
            ("load", dict(buffer=buffer, dram=dram, rows=rows, row_bytes=row_bytes, sram=sram,
                          dram_stride=row_bytes, push_next=True)),
            ("sync" if rng.random() < 0.1 else "nop", dict(pop_prev=True, push_next=True)),
            ("store", dict(buffer=buffer, dram=target, rows=rows, row_bytes=row_bytes, sram=sram,
                           dram_stride=row_bytes, pop_prev=True)),
        ])
    # Tokens are counts, not names: the n-th token a queue pops is the n-th its neighbour pushed.
    # So each queue takes the stages in order, and a stage's LOAD comes before its NOP and its
    # NOP before its STORE; within that, the three queues' instructions interleave at random.
    program = isa.Program(config)
    taken = [0, 0, 0]                                   # loads, NOPs and stores placed
    while taken[2] < stages:
        ready = [q for q in range(3) if taken[q] < stages and (q == 0 or taken[q] < taken[q - 1])]
        queue = rng.choice(ready)
        kind, fields = steps[taken[queue]][queue]
        taken[queue] += 1
        if kind == "load":
            program.load(**fields)
        elif kind == "store":
            program.store(**fields)
        else:
            program.add(Opcode.SYNC if kind == "sync" else Opcode.NOP, **fields)
    return program.finish().encode()
