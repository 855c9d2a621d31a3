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

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from .config import AccelConfig, preset

__all__ = ["INSTRUCTION_BITS", "INSTRUCTION_BYTES", "Opcode", "Queue", "QUEUE_OF", "Buffer",
           "VectorOp", "ErrorCode", "DEPS", "ADDRESS_BITS", "transfer_body", "linear_body",
           "route_body", "expert_loop_body", "attention_body", "vector_body", "PARAMS_ENTRY",
           "GATES_ENTRY", "DISPATCH_ENTRY", "DESCRIPTOR", "DESCRIPTOR_BYTES", "router_record_bytes",
           "dispatch_offsets", "act_row_bytes", "out_row_bytes", "as_dtype", "instruction_layout", "Instruction", "encode",
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
    WEIGHT = 2                # the weight banks: packed M:N words (`sw.sparsity.pack`) a LINEAR reads
    PARAMS = 3                # per-channel epilogue parameters (`PARAMS_ENTRY`)
    TABLE = 4                 # the 256-entry activation table (entry q + 128, int8)
    GATES = 5                 # the gate table of an accumulating pass (`GATES_ENTRY`)
    OUT = 6                   # the int32 output rows experts accumulate into
    ROUTER_WEIGHTS = 7        # router weights and their logit requantisation (`router_record`)
    ROUTER_BIAS = 8           # sigmoid_bias selection biases (int32 Q15 per expert)
    DISPATCH = 9              # the dispatch table (`dispatch_offsets`): counts, then queues


class VectorOp(enum.Enum, shape=3):
    ADD = 0                   # residual add of two int8 rows, requantised
    MUL = 1                   # element-wise multiply, requantised
    RMSNORM = 2               # RMSNorm with a per-channel weight
    LAYERNORM = 3             # LayerNorm with per-channel weight and bias
    ROPE = 4                  # rotary position embedding of Q or K heads
    REQUANT = 5               # requantise int32 rows (OUT) to int8
    GATE = 6                  # a shared expert's sigmoid gate per token, into GATES


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
    bytes apart) and a buffer (``sram``, rows ``sram_stride`` bytes apart; 0: packed). A LOAD into
    WEIGHT moves packed M:N weight words (`sw.sparsity.pack`) as they are: the compressed form is
    what travels."""
    return data.StructLayout({
        "buffer": Buffer,
        "dram": unsigned(ADDRESS_BITS),
        "dram_stride": unsigned(ADDRESS_BITS),
        "sram": unsigned(24),
        "sram_stride": unsigned(24),
        "rows": unsigned(16),
        "row_bytes": unsigned(24),
    })


def linear_body(config: AccelConfig) -> data.StructLayout:
    """LINEAR: one pass of the Expert-FFN engine (`hw.layouts.ffn_command`). Its packed weight words
    (``tiles x chunks`` words, `sw.sparsity.pack`) stream from DRAM at ``weights``, or, with
    ``preloaded``, come from the WEIGHT buffer at byte ``sram`` (put there by LOADs that the load
    queue can run while the previous pass computes). Parameters come from PARAMS, the table from
    TABLE, the gate table from GATES. Result rows go to activation buffer ``1 - src``
    (``dst_row_words`` words a token), or with ``accumulate`` into OUT; a ``drain`` requantises
    OUT's rows into activation buffer ``1 - src`` and clears them."""
    from .hw.layouts import ffn_command
    return data.StructLayout({
        "command": ffn_command(config),
        "weights": unsigned(ADDRESS_BITS),
        "preloaded": unsigned(1),
        "sram": unsigned(24),
    })


def route_body(config: AccelConfig) -> data.StructLayout:
    """ROUTE: a router run (`hw.layouts.router_command`) into DISPATCH. With ``command.compute`` the
    router's GEMM reads the tokens from ACT0 (rows ``row_words`` activation words apart) and the
    weights from ROUTER_WEIGHTS; otherwise it reads int16 Q8 logits ``[tokens, experts]`` from DRAM
    at ``logits``."""
    from .hw.layouts import router_command
    return data.StructLayout({
        "command": router_command(config),
        "row_words": unsigned(config.act_buffer_words.bit_length()),
        "logits": unsigned(ADDRESS_BITS),
    })


def expert_loop_body(config: AccelConfig) -> data.StructLayout:
    """EXPERT_LOOP: for each expert ``e < experts`` with tokens in DISPATCH, in order: read its
    `DESCRIPTOR` at DRAM ``table + 32 e``, gather its tokens' rows from ACT0, run the first pass
    (gate and up fused under ``swiglu``, the descriptor's table applied) into ACT1 and the down pass
    adding ``gate x row`` into OUT. Experts without tokens cost nothing; each expert's weights are
    read once. ``prefetch``: expert e+1's first weight block loads while e computes."""
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
    """VECTOR: ``op`` (`sw.vector`) over ``rows`` rows of ``width`` values, from buffers ``a`` (and
    ``b``) to ``dst``; row ``r`` of an activation buffer is at byte ``r x act_row_bytes(width)``,
    of OUT at ``r x out_row_bytes(width)``. Per-channel operands are at DRAM ``params`` (formats
    below). ADD: ``a x multiplier + b x multiplier_b``, MUL:
    ``a x b x multiplier``, REQUANT: ``a x multiplier``, each ``>> shift``; the norms and GATE
    requantise with ``multiplier``/``shift``; ROPE rotates heads of ``head_dim``."""
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
        "multiplier_b": unsigned(nx.MULT_BITS),
        "shift": unsigned(nx.SHIFT_BITS),
        "head_dim": _count(config.attention_row_words * config.axi_data_bytes),
    })


# -- buffer and descriptor formats (bytes little-endian) -------------------------------------------

# PARAMS: channel c (tile x mac_rows + row) at byte 8 c.
PARAMS_ENTRY = data.StructLayout({
    "bias": signed(32),
    "multiplier": unsigned(16),
    "shift": unsigned(8),
    "reserved": unsigned(8),
})

# GATES: slot s (the s-th row of an accumulating pass) at byte 4 s: the OUT row it adds into and
# its Q15 gate weight.
GATES_ENTRY = data.StructLayout({
    "row": unsigned(16),
    "gate": unsigned(16),
})

# DISPATCH: E uint16 token counts, then expert e's queue at `dispatch_offsets`: (token, Q15 gate).
DISPATCH_ENTRY = GATES_ENTRY

# EXPERT_LOOP: one expert's descriptor, 32 bytes: DRAM offsets of its first-pass weights (gate/up
# fused under SwiGLU, `sw.ffn.fuse_swiglu`), its down weights, their PARAMS images, its 256-byte
# activation table, and the SwiGLU requantisation.
DESCRIPTOR = data.StructLayout({
    "first": unsigned(ADDRESS_BITS),
    "down": unsigned(ADDRESS_BITS),
    "first_params": unsigned(ADDRESS_BITS),
    "down_params": unsigned(ADDRESS_BITS),
    "table": unsigned(ADDRESS_BITS),
    "swiglu_multiplier": unsigned(16),
    "swiglu_shift": unsigned(8),
    "reserved": unsigned(72),
})
DESCRIPTOR_BYTES = DESCRIPTOR.size // 8

# VECTOR operands at DRAM `params`: RMSNORM/LAYERNORM an int64 eps_q, then width int16 weights,
# then width int32 biases; ROPE rows x head_dim int16 (each row's Q14 cos, then sin); GATE width
# int8 weights.


def as_dtype(layout: data.StructLayout):
    """The numpy dtype of a byte-aligned format above (little-endian; ``reserved`` fields become
    padding), so that a buffer's bytes read as records of it."""
    import numpy as np
    names, formats, offsets = [], [], []
    for name, field in layout:
        shape = field.shape
        if name == "reserved":
            continue
        if field.offset % 8 or shape.width not in (8, 16, 32, 64):
            raise ValueError(f"field {name} is not a whole byte-aligned integer")
        names.append(name)
        formats.append(f"<{'i' if shape.signed else 'u'}{shape.width // 8}")
        offsets.append(field.offset // 8)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": layout.size // 8})


def router_record_bytes(config: AccelConfig) -> int:
    """ROUTER_WEIGHTS: expert e's record at byte ``e x router_record_bytes``: ``router_chunks x
    router_lanes`` int8 weights (zero-padded), a uint16 multiplier and a uint8 shift (its logit's
    requantisation), one reserved byte."""
    return config.router_chunks * config.router_lanes + 4


def dispatch_offsets(config: AccelConfig) -> tuple[int, int]:
    """DISPATCH: (byte of the first queue, bytes per queue); the counts come first."""
    return 2 * config.max_experts, 4 * config.dispatch_capacity


def act_row_bytes(config: AccelConfig, width: int) -> int:
    """Bytes between rows of `width` int8 values in an activation buffer (whole words)."""
    return -(-width // config.act_word_bytes) * config.act_word_bytes


def out_row_bytes(config: AccelConfig, width: int) -> int:
    """Bytes between rows of `width` int32 values in OUT (whole tiles of ``mac_rows``)."""
    return -(-width // config.mac_rows) * config.mac_rows * 4


def _bodies(config: AccelConfig) -> dict:
    transfer = transfer_body(config)
    return {
        Opcode.LOAD: transfer, Opcode.STORE: transfer,
        Opcode.LINEAR: linear_body(config), Opcode.ROUTE: route_body(config),
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
                   .linear(step.command(), weights=w, pop_prev=True)
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
        """One Expert-FFN pass: `command` holds `hw.layouts.ffn_command` fields
        (`sw.ffn.FFNPass.command()`); its weights at DRAM `weights`, or `preloaded` in WEIGHT at
        byte `sram`."""
        return self.add(Opcode.LINEAR, {"command": command, "weights": weights,
                                        "preloaded": int(preloaded), "sram": sram}, **tokens)

    def route(self, command: dict, *, row_words: int = 0, logits: int = 0,
              **tokens) -> "Program":
        """A router run: `hw.layouts.router_command` fields; tokens from ACT0 rows `row_words`
        words apart (``compute``), else int16 logits from DRAM at `logits`."""
        return self.add(Opcode.ROUTE, {"command": command, "row_words": row_words,
                                       "logits": logits}, **tokens)

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
        text = " ".join(_BODY_DOCS[opcode].__doc__.split(": ", 1)[1].split()).replace("``", "`")
        out += ["", f"## {title}", "", text[0].upper() + text[1:], "",
                "| field | bits | width | type |", "|---|---|---|---|"]
        out += [f"| {n} | {body_offset + o}..{body_offset + o + w - 1} | {w} | {t} |"
                for n, o, w, t in _layout_rows(bodies[opcode])]
    out += ["", "SYNC, FINISH and NOP have no body. A SYNC holds every instruction after it until "
            "all before it have ended.", ""]
    first_queue, queue_bytes = dispatch_offsets(config)
    out += ["## Buffer and descriptor formats", "",
            "Bytes are little-endian. Rows of int8 values in ACT0/ACT1 are "
            f"`act_row_bytes(width)` apart (whole {config.act_word_bytes}-byte activation words); "
            "int32 rows in OUT `out_row_bytes(width)` apart (whole tiles of "
            f"{config.mac_rows} channels). WEIGHT and the weight streams hold packed M:N words "
            "(`sw.sparsity.pack`: per tile of `mac_rows` channels, `chunks` words, each padded to "
            "whole bus beats). TABLE holds 256 int8 entries (entry q + 128). ROUTER_WEIGHTS holds "
            f"one {router_record_bytes(config)}-byte record per expert (`router_record_bytes`: the "
            "int8 weights, a uint16 multiplier, a uint8 shift). ROUTER_BIAS holds int32 Q15 biases. "
            f"DISPATCH holds uint16 token counts for {config.max_experts} experts, then from byte "
            f"{first_queue} one queue of {queue_bytes} bytes per expert (`DISPATCH_ENTRY`). VECTOR "
            "operands in DRAM: RMSNORM/LAYERNORM an int64 `eps_q`, `width` int16 weights, `width` "
            "int32 biases; ROPE `rows x head_dim` int16 (Q14 cos of the first half, then sin); GATE "
            "`width` int8 weights."]
    for name, layout in (("PARAMS_ENTRY", PARAMS_ENTRY), ("GATES_ENTRY", GATES_ENTRY),
                         ("DISPATCH_ENTRY", DISPATCH_ENTRY), ("DESCRIPTOR", DESCRIPTOR)):
        out += ["", f"### `{name}` ({layout.size // 8} bytes)", "",
                "| field | bits | width | type |", "|---|---|---|---|"]
        out += [f"| {n} | {o}..{o + w - 1} | {w} | {t} |" for n, o, w, t in _layout_rows(layout)]
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
