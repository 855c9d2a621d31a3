"""The instruction set: the one definition of the program format that the compiler encodes, the
hardware and the emulator decode, and the tools disassemble.

An instruction is ``INSTRUCTION_BITS`` wide: an `Opcode`, four dependency-token bits (`DEPS`) and an
opcode-specific body, all `lib.data` layouts. The compute bodies *are* the blocks' command layouts
(`hw.layouts.ffn_command`, `router_command`, `attention_command`), so an instruction hands its block
exactly the bits the block decodes; widths follow the `AccelConfig`.

Instructions go to three queues (`QUEUE_OF`): loads, compute, stores. The dependency tokens order
them (decoupled access/execute, as in VTA): an instruction may wait for a token from the queue before
it (``pop_prev``) or after it (``pop_next``) and, when done, give one to either (``push_prev``,
``push_next``). Load → compute → store is the order of the queues; the compiler places the tokens so
that expert e+1's weights load while expert e computes.

`python -m moeaccel.isa` prints `docs/isa.md` (generated from these layouts for a preset).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from .config import AccelConfig, preset

__all__ = ["INSTRUCTION_BITS", "INSTRUCTION_BYTES", "Opcode", "Queue", "QUEUE_OF", "Buffer",
           "VectorOp", "ErrorCode", "DEPS", "ADDRESS_BITS", "transfer_body", "expert_loop_body",
           "attention_body", "vector_body", "instruction_layout", "Instruction", "encode",
           "decode", "decode_one", "split", "DecodeError", "disassemble", "markdown", "Program"]

INSTRUCTION_BITS = 256
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
ADDRESS_BITS = 32             # byte offsets inside the DMA window the host grants


class Opcode(enum.Enum, shape=4):
    NOP = 0
    LOAD = 1                  # DRAM -> an on-chip buffer, 2-D strided (load queue)
    STORE = 2                 # an on-chip buffer -> DRAM, 2-D strided (store queue)
    LINEAR = 3                # one Expert-FFN pass: dense or M:N, fused epilogue (compute)
    ROUTE = 4                 # the router: logits, top-k, gates into the dispatch table (compute)
    EXPERT_LOOP = 5           # walk the dispatch table: every active expert's FFN (compute)
    ATTENTION = 6             # attention with K/V streamed once per query group (compute)
    VECTOR = 7                # element-wise and row operations of a decoder layer (compute)
    SYNC = 8                  # wait until every queue is idle
    FINISH = 9                # end of program: raise done, stop


class Queue(enum.Enum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


QUEUE_OF = {
    Opcode.NOP: Queue.COMPUTE, Opcode.LOAD: Queue.LOAD, Opcode.STORE: Queue.STORE,
    Opcode.LINEAR: Queue.COMPUTE, Opcode.ROUTE: Queue.COMPUTE, Opcode.EXPERT_LOOP: Queue.COMPUTE,
    Opcode.ATTENTION: Queue.COMPUTE, Opcode.VECTOR: Queue.COMPUTE, Opcode.SYNC: Queue.COMPUTE,
    Opcode.FINISH: Queue.COMPUTE,
}


class Buffer(enum.Enum, shape=4):
    """On-chip buffers a LOAD fills or a STORE drains."""
    ACT0 = 0                  # activation buffer 0 (int8 rows)
    ACT1 = 1                  # activation buffer 1 (int8 rows: hidden values, gathered tokens)
    WEIGHT = 2                # the weight banks (packed M:N words, `sw.sparsity.pack`)
    PARAMS = 3                # per-channel epilogue parameters (bias, multiplier, shift)
    TABLE = 4                 # the 256-entry activation table
    GATES = 5                 # per-token gate weights (Q15)
    OUT = 6                   # the int32 output rows experts accumulate into
    ROUTER_WEIGHTS = 7        # router weights and their logit requantisation
    ROUTER_BIAS = 8           # sigmoid_bias selection biases
    DISPATCH = 9              # the dispatch table (counts, then queues)


class VectorOp(enum.Enum, shape=3):
    ADD = 0                   # residual add of two int8 rows, requantised
    MUL = 1                   # element-wise multiply, requantised
    RMSNORM = 2               # RMSNorm with a per-channel weight
    LAYERNORM = 3             # LayerNorm with per-channel weight and bias
    ROPE = 4                  # rotary position embedding of Q or K heads
    REQUANT = 5               # requantise int32 rows to int8


class ErrorCode(enum.Enum, shape=4):
    """The error status the hardware raises and the emulator reports; the run stops at once."""
    NONE = 0
    ILLEGAL_OPCODE = 1        # an opcode outside `Opcode`
    BAD_FIELD = 2             # a field the configuration cannot hold (the block refused it)
    DMA_WINDOW = 3            # a LOAD/STORE (or a descriptor) outside the granted DMA window
    WATCHDOG = 4              # the run exceeded its cycle budget
    DEADLOCK = 5              # every queue waits for a token no instruction will push
    NO_FINISH = 6             # the program ended without FINISH


DEPS = data.StructLayout({
    "pop_prev": unsigned(1),  # wait for a token from the previous queue (load <- compute <- store)
    "pop_next": unsigned(1),  # wait for a token from the next queue
    "push_prev": unsigned(1), # give a token to the previous queue when done
    "push_next": unsigned(1), # give a token to the next queue when done
})


def _index(limit: int):
    return unsigned(max(1, (limit - 1).bit_length()))


def _count(limit: int):
    return unsigned(limit.bit_length())


def transfer_body(config: AccelConfig) -> data.StructLayout:
    """LOAD and STORE: ``rows`` rows of ``row_bytes`` between DRAM (``dram``, rows ``dram_stride``
    bytes apart) and a buffer (``sram``, rows ``sram_stride`` buffer words apart). ``pattern``:
    the M:N pattern of packed weight words (`AccelConfig.patterns` index; WEIGHT loads)."""
    return data.StructLayout({
        "buffer": Buffer,
        "dram": unsigned(ADDRESS_BITS),
        "dram_stride": unsigned(ADDRESS_BITS),
        "sram": unsigned(24),
        "sram_stride": unsigned(24),
        "rows": unsigned(16),
        "row_bytes": unsigned(24),
        "pattern": unsigned(2),
    })


def expert_loop_body(config: AccelConfig) -> data.StructLayout:
    """EXPERT_LOOP: for each of ``experts`` experts with tokens in the dispatch table, in order: load
    its weights (descriptor ``table + expert x 32`` bytes: gate/up and down blocks, epilogue
    parameters, activation table), gather its tokens from ACT0, run gate/up (SwiGLU or the
    activation) into ACT1 and down with the gate-weighted accumulation into OUT. Experts without
    tokens are skipped; each expert's weights are read once. ``prefetch``: load expert e+1's weights
    while e computes (double buffering)."""
    return data.StructLayout({
        "experts": _count(config.max_experts),
        "table": unsigned(ADDRESS_BITS),
        "d_model": _count(config.max_d_model),
        "d_ff": _count(config.max_d_ff),
        "pattern": unsigned(2),
        "swiglu": unsigned(1),
        "prefetch": unsigned(1),
    })


def attention_body(config: AccelConfig) -> data.StructLayout:
    """ATTENTION: the attention unit's command and the DRAM offsets of its Q, K, V and O rows."""
    from .hw.layouts import attention_command
    return data.StructLayout({
        "command": attention_command(config),
        "q": unsigned(ADDRESS_BITS),
        "k": unsigned(ADDRESS_BITS),
        "v": unsigned(ADDRESS_BITS),
        "o": unsigned(ADDRESS_BITS),
    })


def vector_body(config: AccelConfig) -> data.StructLayout:
    """VECTOR: ``op`` over ``rows`` rows of ``width`` int8 values, from buffers ``a`` (and ``b``) to
    ``dst``; per-channel operands (norm weights, rotary tables) at DRAM offset ``params``; the result
    requantised by ``multiplier``/``shift``."""
    from .sw import numerics as nx
    return data.StructLayout({
        "op": VectorOp,
        "rows": _count(max(config.max_tokens, config.max_seq_len)),
        "width": _count(config.max_inputs),
        "a": Buffer,
        "b": Buffer,
        "dst": Buffer,
        "params": unsigned(ADDRESS_BITS),
        "multiplier": unsigned(nx.MULT_BITS),
        "shift": unsigned(nx.SHIFT_BITS),
    })


def _bodies(config: AccelConfig) -> dict:
    from .hw.layouts import ffn_command, router_command
    transfer = transfer_body(config)
    return {
        Opcode.LOAD: transfer, Opcode.STORE: transfer,
        Opcode.LINEAR: ffn_command(config), Opcode.ROUTE: router_command(config),
        Opcode.EXPERT_LOOP: expert_loop_body(config), Opcode.ATTENTION: attention_body(config),
        Opcode.VECTOR: vector_body(config),
    }


def instruction_layout(config: AccelConfig) -> data.StructLayout:
    """The instruction of `config`: opcode, dependency tokens, the body as a union over opcodes
    (named by the opcode, lower case), padded to `INSTRUCTION_BITS`."""
    bodies = _bodies(config)
    union = data.UnionLayout({op.name.lower(): layout for op, layout in bodies.items()
                              if op is not Opcode.STORE})
    header = Opcode.as_shape().width + DEPS.size
    if header + union.size > INSTRUCTION_BITS:
        widest = max(bodies.items(), key=lambda item: item[1].size)[0].name
        raise ValueError(f"{config.name}: the {widest} body takes {union.size} bits, more than the "
                         f"{INSTRUCTION_BITS - header} an instruction has")
    return data.StructLayout({"opcode": Opcode, "deps": DEPS, "body": union,
                              "reserved": unsigned(INSTRUCTION_BITS - header - union.size)})


def _body_name(opcode: Opcode) -> str | None:
    if opcode in (Opcode.LOAD, Opcode.STORE):
        return "load"
    return opcode.name.lower() if opcode in (Opcode.LINEAR, Opcode.ROUTE, Opcode.EXPERT_LOOP,
                                             Opcode.ATTENTION, Opcode.VECTOR) else None


@dataclass(frozen=True)
class Instruction:
    """One instruction as plain data: its opcode, its dependency tokens and its body's fields
    (nested dicts for nested layouts; enums as members)."""

    opcode: Opcode
    fields: dict
    pop_prev: bool = False
    pop_next: bool = False
    push_prev: bool = False
    push_next: bool = False

    @property
    def queue(self) -> Queue:
        return QUEUE_OF[self.opcode]

    @property
    def deps(self) -> dict:
        return {"pop_prev": int(self.pop_prev), "pop_next": int(self.pop_next),
                "push_prev": int(self.push_prev), "push_next": int(self.push_next)}


def _plain(view, layout, where: str) -> dict:
    """A decoded view as nested dicts of ints and enum members; a value no member of its enum has
    raises ValueError naming the field (the hardware raises `ErrorCode.BAD_FIELD`)."""
    out = {}
    for name, field in layout:
        if isinstance(field.shape, data.StructLayout):
            out[name] = _plain(view[name], field.shape, f"{where}.{name}")
            continue
        try:
            value = view[name]
        except ValueError as error:
            raise ValueError(f"{where}: field {name}: {error}") from None
        out[name] = list(value) if isinstance(field.shape, data.ArrayLayout) else value
    return out


def encode(config: AccelConfig, instructions) -> bytes:
    """The program's bytes: each instruction little-endian, `INSTRUCTION_BYTES` apiece."""
    layout = instruction_layout(config)
    bodies = _bodies(config)
    words = []
    for index, instruction in enumerate(instructions):
        name = _body_name(instruction.opcode)
        fields = {"opcode": instruction.opcode, "deps": instruction.deps}
        if name is not None:
            body = bodies[instruction.opcode]
            unknown = set(instruction.fields) - {n for n, _ in body}
            if unknown:
                raise ValueError(f"instruction {index} ({instruction.opcode.name}): no field "
                                 f"{', '.join(sorted(unknown))}; {instruction.opcode.name} has "
                                 f"{', '.join(n for n, _ in body)}")
            _check_range(body, instruction.fields, f"instruction {index} "
                                                   f"({instruction.opcode.name})")
            fields["body"] = {name: instruction.fields}
        elif instruction.fields:
            raise ValueError(f"instruction {index} ({instruction.opcode.name}) takes no fields")
        words.append(layout.const(fields).as_bits().to_bytes(INSTRUCTION_BYTES, "little"))
    return b"".join(words)


def _check_range(layout, fields: dict, where: str) -> None:
    """Refuse a value its field cannot hold (`Layout.const` would truncate it silently)."""
    for name, field in layout:
        if name not in fields:
            continue
        value, shape = fields[name], field.shape
        if isinstance(shape, data.StructLayout):
            _check_range(shape, value, f"{where}.{name}")
        elif isinstance(shape, type) and issubclass(shape, enum.Enum):
            if not isinstance(value, shape):
                shape(value)          # raises ValueError naming the bad value
        elif not isinstance(shape, data.Layout):
            shape = shape if hasattr(shape, "width") else unsigned(shape)
            low, high = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
                else (0, (1 << shape.width) - 1)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{where}: {name}={value!r} does not fit {shape.width} bits "
                                 f"({low} .. {high})")


class DecodeError(ValueError):
    """An instruction that does not decode: ``index`` names it, ``code`` is the error the hardware
    raises for it (`ErrorCode.ILLEGAL_OPCODE` or `ErrorCode.BAD_FIELD`)."""

    def __init__(self, message: str, index: int, code: "ErrorCode"):
        super().__init__(message)
        self.index = index
        self.code = code


def decode_one(config: AccelConfig, word: bytes, index: int = 0) -> Instruction:
    """One instruction from its `INSTRUCTION_BYTES` bytes; raises `DecodeError`."""
    bits = int.from_bytes(word, "little")
    raw = bits & ((1 << Opcode.as_shape().width) - 1)
    try:
        opcode = Opcode(raw)
    except ValueError:
        raise DecodeError(f"instruction {index}: illegal opcode {raw}", index,
                          ErrorCode.ILLEGAL_OPCODE) from None
    view = instruction_layout(config).from_bits(bits)
    name = _body_name(opcode)
    where = f"instruction {index} ({opcode.name})"
    try:
        fields = _plain(view.body[name], _bodies(config)[opcode], where) if name else {}
    except ValueError as error:
        raise DecodeError(str(error), index, ErrorCode.BAD_FIELD) from None
    deps = _plain(view.deps, DEPS, where)
    return Instruction(opcode, fields, **{k: bool(v) for k, v in deps.items()})


def split(program: bytes) -> list[bytes]:
    """A program's bytes as its instructions' words (refusing a partial instruction)."""
    if len(program) % INSTRUCTION_BYTES:
        raise ValueError(f"a program is whole {INSTRUCTION_BYTES}-byte instructions, not "
                         f"{len(program)} bytes")
    return [program[i:i + INSTRUCTION_BYTES] for i in range(0, len(program), INSTRUCTION_BYTES)]


def decode(config: AccelConfig, program: bytes) -> list[Instruction]:
    """The instructions of a program's bytes; the first that does not decode raises `DecodeError`
    naming it (an opcode outside `Opcode`, a value outside its field's enum)."""
    return [decode_one(config, word, index) for index, word in enumerate(split(program))]


class Program:
    """A program written instruction by instruction (the assembler level the tests and the compiler's
    emitter use). Each method appends one instruction and returns the program, so calls chain;
    the keyword arguments ``pop_prev``, ``pop_next``, ``push_prev``, ``push_next`` set its tokens.

        program = (Program(config)
                   .load(Buffer.ACT0, dram=x, rows=tokens, row_bytes=d_model, push_next=True)
                   .linear(pop_prev=True, **pass_fields)
                   .finish())
        blob = program.encode()
    """

    def __init__(self, config: AccelConfig):
        self.config = config
        self.instructions: list[Instruction] = []

    def __len__(self) -> int:
        return len(self.instructions)

    def __iter__(self):
        return iter(self.instructions)

    def add(self, opcode: Opcode, fields: dict | None = None, *, pop_prev=False, pop_next=False,
            push_prev=False, push_next=False) -> "Program":
        self.instructions.append(Instruction(opcode, dict(fields or {}), pop_prev, pop_next,
                                             push_prev, push_next))
        return self

    def _transfer(self, opcode, buffer, dram, rows, row_bytes, sram, dram_stride, sram_stride,
                  pattern, tokens):
        fields = {"buffer": buffer, "dram": dram, "rows": rows, "row_bytes": row_bytes,
                  "sram": sram, "dram_stride": row_bytes if dram_stride is None else dram_stride,
                  "sram_stride": 0 if sram_stride is None else sram_stride, "pattern": pattern}
        return self.add(opcode, fields, **tokens)

    def load(self, buffer: Buffer, *, dram: int, rows: int = 1, row_bytes: int, sram: int = 0,
             dram_stride: int | None = None, sram_stride: int | None = None, pattern: int = 0,
             **tokens) -> "Program":
        """DRAM -> `buffer`; rows `dram_stride` bytes apart (default: packed)."""
        return self._transfer(Opcode.LOAD, buffer, dram, rows, row_bytes, sram, dram_stride,
                              sram_stride, pattern, tokens)

    def store(self, buffer: Buffer, *, dram: int, rows: int = 1, row_bytes: int, sram: int = 0,
              dram_stride: int | None = None, sram_stride: int | None = None,
              **tokens) -> "Program":
        """`buffer` -> DRAM; rows `dram_stride` bytes apart (default: packed)."""
        return self._transfer(Opcode.STORE, buffer, dram, rows, row_bytes, sram, dram_stride,
                              sram_stride, 0, tokens)

    def linear(self, command: dict, **tokens) -> "Program":
        """One Expert-FFN pass: `command` holds `hw.layouts.ffn_command` fields
        (`sw.ffn.FFNPass.command()`)."""
        return self.add(Opcode.LINEAR, command, **tokens)

    def route(self, command: dict, **tokens) -> "Program":
        """A router run: `hw.layouts.router_command` fields."""
        return self.add(Opcode.ROUTE, command, **tokens)

    def expert_loop(self, *, experts: int, table: int, d_model: int, d_ff: int, pattern: int = 0,
                    swiglu: bool = True, prefetch: bool = True, **tokens) -> "Program":
        return self.add(Opcode.EXPERT_LOOP, {
            "experts": experts, "table": table, "d_model": d_model, "d_ff": d_ff,
            "pattern": pattern, "swiglu": int(swiglu), "prefetch": int(prefetch)}, **tokens)

    def attention(self, shape, params, *, q: int, k: int, v: int, o: int, **tokens) -> "Program":
        """An attention call (`sw.attention.AttentionShape`, `AttentionParams`) over Q, K, V rows
        at DRAM offsets `q`, `k`, `v`, writing O at `o`."""
        from .hw.attention import command_fields
        return self.add(Opcode.ATTENTION, {
            "command": command_fields(self.config, shape, params), "q": q, "k": k, "v": v,
            "o": o}, **tokens)

    def vector(self, op: VectorOp, *, rows: int, width: int, a: Buffer, dst: Buffer,
               b: Buffer = Buffer.ACT0, params: int = 0, multiplier: int = 1 << 14,
               shift: int = 14, **tokens) -> "Program":
        return self.add(Opcode.VECTOR, {
            "op": op, "rows": rows, "width": width, "a": a, "b": b, "dst": dst,
            "params": params, "multiplier": multiplier, "shift": shift}, **tokens)

    def sync(self, **tokens) -> "Program":
        return self.add(Opcode.SYNC, **tokens)

    def finish(self, **tokens) -> "Program":
        return self.add(Opcode.FINISH, **tokens)

    def encode(self) -> bytes:
        return encode(self.config, self.instructions)

    def disassemble(self) -> list[str]:
        return disassemble(self.config, self.encode())


def _format(fields: dict) -> str:
    parts = []
    for name, value in fields.items():
        if isinstance(value, dict):
            parts.append(f"{name}{{{_format(value)}}}")
        elif isinstance(value, enum.Enum):
            parts.append(f"{name}={value.name}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def disassemble(config: AccelConfig, program: bytes) -> list[str]:
    """One line an instruction: index, queue, opcode, the dependency tokens set, every body field by
    name."""
    lines = []
    for index, instruction in enumerate(decode(config, program)):
        tokens = [name for name, bit in instruction.deps.items() if bit]
        text = f"{index:4d}  {instruction.queue.name.lower():<7} {instruction.opcode.name:<11}"
        if tokens:
            text += " [" + " ".join(tokens) + "]"
        if instruction.fields:
            text += "  " + _format(instruction.fields)
        lines.append(text.rstrip())
    return lines


def _layout_rows(layout, prefix: str = "") -> list[tuple[str, int, int, str]]:
    rows = []
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.StructLayout):
            rows += [(n, field.offset + o, w, t)
                     for n, o, w, t in _layout_rows(shape, f"{prefix}{name}.")]
            continue
        if isinstance(shape, type) and issubclass(shape, enum.Enum):
            kind = f"`{shape.__name__}`"
            width = shape.as_shape().width
        elif isinstance(shape, data.Layout):
            kind, width = "array", shape.size
        else:
            kind, width = ("signed" if shape.signed else "unsigned"), shape.width
        rows.append((prefix + name, field.offset, width, kind))
    return rows


def markdown(config: AccelConfig) -> str:
    """docs/isa.md: every layout, opcode and code, generated from this module for `config`."""
    layout = instruction_layout(config)
    bodies = _bodies(config)
    out = ["# The instruction set", "",
           f"Generated by `python -m moeaccel.isa --config {config.name}` from `moeaccel/isa.py`; "
           "field widths follow the `AccelConfig` (this page: the "
           f"`{config.name}` preset). `tests/test_isa.py` checks that this page matches the code.",
           "", f"Instructions are {INSTRUCTION_BITS} bits, stored little-endian, "
           f"{INSTRUCTION_BYTES} bytes apiece. Bit 0 is the opcode's lowest bit.", "",
           "## Header", "", "| field | bits | width | type |", "|---|---|---|---|"]
    header = [("opcode", 0, Opcode.as_shape().width, "`Opcode`")] + [
        ("deps." + n, layout["deps"].offset + o, w, t) for n, o, w, t in _layout_rows(DEPS)]
    out += [f"| {n} | {o}..{o + w - 1} | {w} | {t} |" for n, o, w, t in header]
    for enum_type, what in ((Opcode, "opcodes"), (Buffer, "on-chip buffers"),
                            (VectorOp, "vector operations"), (ErrorCode, "error codes")):
        out += ["", f"## `{enum_type.__name__}`: {what}", "", "| value | name | queue |" if
                enum_type is Opcode else "| value | name |", "|---|---|---|" if enum_type is Opcode
                else "|---|---|"]
        for member in enum_type:
            queue = f" {QUEUE_OF[member].name.lower()} |" if enum_type is Opcode else ""
            out.append(f"| {member.value} | {member.name} |{queue}")
    body_offset = layout["body"].offset
    for opcode in Opcode:
        if opcode not in bodies or opcode is Opcode.STORE:
            continue
        title = "LOAD and STORE" if opcode is Opcode.LOAD else opcode.name
        out += ["", f"## {title}", "", "| field | bits | width | type |", "|---|---|---|---|"]
        out += [f"| {n} | {body_offset + o}..{body_offset + o + w - 1} | {w} | {t} |"
                for n, o, w, t in _layout_rows(bodies[opcode])]
    out += ["", "SYNC, FINISH and NOP have no body.", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeaccel.isa",
                                     description="print docs/isa.md for a preset")
    parser.add_argument("--config", default="pynq-z2")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(preset(args.config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
