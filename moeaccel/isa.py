"""The instruction set: the one definition of the program format that the compiler encodes, the
hardware and the emulator decode, and the tools disassemble.

An instruction is ``INSTRUCTION_BITS`` wide: an `Opcode`, four dependency-token bits (`DEPS`) and an
opcode-specific body, all `lib.data` layouts of `moeaccel.formats.instructions`. The compute bodies
*are* the units' command layouts (`formats.expert_ffn.ffn_command`, `formats.router.router_command`,
`formats.attention.attention_command`), so an instruction hands its unit exactly the bits the unit
decodes; widths follow the `AccelConfig`.

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
from .formats import attention, records, router
from .formats.buffers import Buffer, buffer_bytes
from .formats.epilogue import CHANNEL_PARAMS
from .formats.instructions import (ADDRESS_BITS, DEPS, DESCRIPTOR, INSTRUCTION_BITS,
                                   INSTRUCTION_BYTES, QUEUE_DEPTH, QUEUE_OF, ErrorCode, Opcode, Queue,
                                   attention_body, bodies, body_name, expert_loop_body,
                                   instruction_layout, linear_body, route_body, transfer_body,
                                   vector_body)
from .formats.instructions import check as check_instruction
from .formats.rules import normalise
from .formats.vector import VectorOp

__all__ = ["INSTRUCTION_BITS", "INSTRUCTION_BYTES", "Opcode", "Queue", "QUEUE_OF", "Buffer",
           "VectorOp", "ErrorCode", "DEPS", "ADDRESS_BITS", "instruction_layout", "Instruction",
           "encode", "decode", "decode_one", "split", "DecodeError", "disassemble", "markdown",
           "Program", "ProgramError"]


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
    layouts = bodies(config)
    words = []
    for index, instruction in enumerate(instructions):
        name = body_name(instruction.opcode)
        fields = {"opcode": instruction.opcode, "deps": instruction.deps}
        if name is not None:
            body = layouts[instruction.opcode]
            _check_range(body, instruction.fields, f"instruction {index} "
                                                   f"({instruction.opcode.name})")
            fields["body"] = {name: instruction.fields}
        elif instruction.fields:
            raise ValueError(f"instruction {index} ({instruction.opcode.name}) takes no fields")
        words.append(layout.const(fields).as_bits().to_bytes(INSTRUCTION_BYTES, "little"))
    return b"".join(words)


def _check_range(layout, fields: dict, where: str) -> None:
    """Refuse an unknown field, or a value its field cannot hold (`Layout.const` would truncate it
    silently)."""
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: a group of fields ({', '.join(n for n, _ in layout)}), not "
                         f"{fields!r}")
    unknown = set(fields) - {n for n, _ in layout}
    if unknown:
        raise ValueError(f"{where}: no field {', '.join(sorted(unknown))}; it has "
                         f"{', '.join(n for n, _ in layout)}")
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
    name = body_name(opcode)
    where = f"instruction {index} ({opcode.name})"
    try:
        fields = _plain(view.body[name], bodies(config)[opcode], where) if name else {}
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


class ProgramError(ValueError):
    """An instruction the hardware would refuse, named with its index and the reasons."""


class Program:
    """A program written instruction by instruction (the assembler level the tests and the compiler's
    emitter use). Each method appends one instruction and returns the program, so calls chain;
    the keyword arguments ``pop_prev``, ``pop_next``, ``push_prev``, ``push_next`` set its tokens.
    Each instruction is checked as it is added (`formats.instructions.check`, the hardware's own
    rules): one the hardware would refuse raises `ProgramError`. ``checked=False`` lets a test
    write such instructions on purpose.

        program = (Program(config)
                   .load(Buffer.ACT0, dram=x, rows=tokens, row_bytes=d_model, push_next=True)
                   .linear(step.command(), weights=w, pop_prev=True)
                   .finish())
        blob = program.encode()
    """

    def __init__(self, config: AccelConfig, checked: bool = True):
        self.config = config
        self.checked = checked
        self.instructions: list[Instruction] = []

    def __len__(self) -> int:
        return len(self.instructions)

    def __iter__(self):
        return iter(self.instructions)

    def add(self, opcode: Opcode, fields: dict | None = None, *, pop_prev=False, pop_next=False,
            push_prev=False, push_next=False) -> "Program":
        fields = dict(fields or {})
        if opcode in bodies(self.config):
            normalised, invalid = normalise(bodies(self.config)[opcode], fields)
            fields = fields if invalid else normalised      # members in place of integers
        if self.checked:
            reasons = check_instruction(self.config, opcode, fields)
            if reasons:
                raise ProgramError(f"instruction {len(self.instructions)} ({opcode.name}): the "
                                   f"{self.config.name} configuration refuses "
                                   + ", ".join(reasons))
        self.instructions.append(Instruction(opcode, fields, pop_prev, pop_next, push_prev,
                                             push_next))
        return self

    def _transfer(self, opcode, buffer, dram, rows, row_bytes, sram, dram_stride, sram_stride,
                  tokens):
        fields = {"buffer": buffer, "dram": dram, "rows": rows, "row_bytes": row_bytes,
                  "sram": sram, "dram_stride": row_bytes if dram_stride is None else dram_stride,
                  "sram_stride": 0 if sram_stride is None else sram_stride}
        return self.add(opcode, fields, **tokens)

    def load(self, buffer: Buffer, *, dram: int, rows: int = 1, row_bytes: int, sram: int = 0,
             dram_stride: int | None = None, sram_stride: int | None = None,
             **tokens) -> "Program":
        """DRAM -> `buffer`; rows `dram_stride` bytes apart in DRAM (default: packed) and
        `sram_stride` bytes apart in the buffer (default: packed)."""
        return self._transfer(Opcode.LOAD, buffer, dram, rows, row_bytes, sram, dram_stride,
                              sram_stride, tokens)

    def store(self, buffer: Buffer, *, dram: int, rows: int = 1, row_bytes: int, sram: int = 0,
              dram_stride: int | None = None, sram_stride: int | None = None,
              **tokens) -> "Program":
        """`buffer` -> DRAM; strides as `load`."""
        return self._transfer(Opcode.STORE, buffer, dram, rows, row_bytes, sram, dram_stride,
                              sram_stride, tokens)

    def linear(self, command: dict, *, weights: int = 0, preloaded: bool = False, sram: int = 0,
               **tokens) -> "Program":
        """One Expert-FFN pass: `command` holds `formats.expert_ffn.ffn_command` fields
        (`compiler.plan.FFNPass.command()`); its weights at DRAM `weights`, or `preloaded` in WEIGHT at
        byte `sram`."""
        return self.add(Opcode.LINEAR, {"command": command, "weights": weights,
                                        "preloaded": int(preloaded), "sram": sram}, **tokens)

    def route(self, command: dict, *, row_words: int = 0, logits: int = 0,
              **tokens) -> "Program":
        """A router run: `formats.router.router_command` fields; tokens from ACT0 rows `row_words`
        words apart (``compute``), else int16 logits from DRAM at `logits`."""
        return self.add(Opcode.ROUTE, {"command": command, "row_words": row_words,
                                       "logits": logits}, **tokens)

    def expert_loop(self, *, experts: int, table: int, d_model: int, d_ff: int, pattern: int = 0,
                    swiglu: bool = True, prefetch: bool = True, **tokens) -> "Program":
        return self.add(Opcode.EXPERT_LOOP, {
            "experts": experts, "table": table, "d_model": d_model, "d_ff": d_ff,
            "pattern": pattern, "swiglu": int(swiglu), "prefetch": int(prefetch)}, **tokens)

    def attention(self, shape, params, *, q: int, k: int, v: int, o: int, **tokens) -> "Program":
        """An attention call (`formats.attention.AttentionShape`, `sw.attention.AttentionParams`)
        over Q, K, V rows at DRAM offsets `q`, `k`, `v`, writing O at `o`."""
        return self.add(Opcode.ATTENTION, {
            "command": attention.command_fields(self.config, shape, params), "q": q, "k": k, "v": v,
            "o": o}, **tokens)

    def vector(self, op: VectorOp, *, rows: int, width: int, a: Buffer, dst: Buffer,
               b: Buffer = Buffer.ACT0, params: int = 0, multiplier: int = 1 << 14,
               multiplier_b: int = 0, shift: int = 14, head_dim: int = 0,
               **tokens) -> "Program":
        """A vector operation (`VectorOp`, `vector_body`)."""
        return self.add(Opcode.VECTOR, {
            "op": op, "rows": rows, "width": width, "a": a, "b": b, "dst": dst,
            "params": params, "multiplier": multiplier, "multiplier_b": multiplier_b,
            "shift": shift, "head_dim": head_dim}, **tokens)

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


_BODY_DOCS = {Opcode.LOAD: transfer_body, Opcode.LINEAR: linear_body, Opcode.ROUTE: route_body,
              Opcode.EXPERT_LOOP: expert_loop_body, Opcode.ATTENTION: attention_body,
              Opcode.VECTOR: vector_body}


def markdown(config: AccelConfig) -> str:
    """docs/isa.md: every layout, opcode and code, generated from this module for `config`."""
    layout = instruction_layout(config)
    layouts = bodies(config)
    out = ["# The instruction set", "",
           f"Generated by `python -m moeaccel.isa --config {config.name}` from `moeaccel/formats/`; "
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
        if opcode not in layouts or opcode is Opcode.STORE:
            continue
        title = "LOAD and STORE" if opcode is Opcode.LOAD else opcode.name
        text = " ".join(_BODY_DOCS[opcode].__doc__.split(": ", 1)[1].split()).replace("``", "`")
        out += ["", f"## {title}", "", text[0].upper() + text[1:], "",
                "| field | bits | width | type |", "|---|---|---|---|"]
        out += [f"| {n} | {body_offset + o}..{body_offset + o + w - 1} | {w} | {t} |"
                for n, o, w, t in _layout_rows(layouts[opcode])]
    out += ["", "SYNC, FINISH and NOP have no body. A SYNC holds every instruction after it until "
            "all before it have ended.", "", "## Running a program", "",
            "The fetch unit reads the program in order and dispatches each instruction to its "
            f"queue, where at most {QUEUE_DEPTH} (`QUEUE_DEPTH`) wait to start; when the next "
            "instruction's queue is full, fetch waits, so a program must not need an instruction "
            "more than that far behind in fetch order to push a token first (the run would end "
            "with DEADLOCK). A queue starts its instructions in order, each when the queue is "
            "free and the tokens it pops have been pushed; SYNC and FINISH start when every "
            "instruction before them has ended. An instruction that does not decode "
            "(ILLEGAL_OPCODE, or a field no member of its enum has: BAD_FIELD) stops fetch; what "
            "came before runs, and its error is raised when nothing else can and every "
            "instruction before it has been dispatched (otherwise the run ends with DEADLOCK: "
            "fetch never reached it). Any other fault "
            "stops the run at the instruction that raised it: nothing starts after it, what had "
            "started ends. With the serialise mode every instruction is dispatched only after "
            "the one before it has ended.", ""]
    dispatch = router.dispatch_table(config)
    out += ["## Buffers and records", "",
            "Bytes are little-endian. Rows of int8 values in ACT0/ACT1 are "
            f"`act_row_bytes(width)` apart (whole {config.act_word_bytes}-byte activation words); "
            "int32 rows in OUT `out_row_bytes(width)` apart (whole tiles of "
            f"{config.mac_rows} channels). WEIGHT and the weight streams hold packed M:N words "
            "(`sw.sparsity.pack`: per tile of `mac_rows` channels, `chunks` words, each padded to "
            "whole bus beats). TABLE holds the activation table, entry q + 128 for int8 input q. "
            "DISPATCH holds every expert's token count, then from byte "
            f"{dispatch['queues'].offset // 8} one queue of {config.dispatch_capacity} "
            "`TOKEN_GATE` records per expert. VECTOR operands in DRAM "
            "(`formats.vector.operand_layout`): RMSNORM/LAYERNORM an int64 `eps_q`, `width` int16 "
            "weights, `width` int32 biases; ROPE `rows x head_dim` int16 (Q14 cos of the first "
            "half, then sin); GATE `width` int8 weights. Sizes and layouts come from "
            "`moeaccel.formats`.", "", "| buffer | bytes | record |", "|---|---|---|"]
    holds = {Buffer.PARAMS: "`CHANNEL_PARAMS`", Buffer.GATES: "`TOKEN_GATE`",
             Buffer.ROUTER_WEIGHTS: "`router_record`", Buffer.ROUTER_BIAS: "`SELECTION_BIAS`",
             Buffer.DISPATCH: "`DISPATCH_COUNT`, `TOKEN_GATE`"}
    out += [f"| {buffer.name} | {size} | {holds.get(buffer, '')} |"
            for buffer, size in buffer_bytes(config).items()]
    for name, record in (("CHANNEL_PARAMS", CHANNEL_PARAMS.dram), ("TOKEN_GATE", router.TOKEN_GATE.dram),
                         ("DISPATCH_COUNT", router.DISPATCH_COUNT.dram),
                         ("SELECTION_BIAS", router.SELECTION_BIAS.dram),
                         ("router_record", router.router_record(config)),
                         ("DESCRIPTOR", DESCRIPTOR.dram)):
        out += ["", f"### `{name}` ({records.size(record)} bytes)", "",
                "| field | bits | width | type |", "|---|---|---|---|"]
        out += [f"| {n} | {o}..{o + w - 1} | {w} | {t} |" for n, o, w, t in _layout_rows(record)]
    out.append("")
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
