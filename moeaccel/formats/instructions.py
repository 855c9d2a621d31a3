"""The instruction formats: opcodes, queues, error codes, the dependency tokens, the body of every
opcode and the expert descriptor an EXPERT_LOOP reads, with the checks a program's instructions must
pass. `moeaccel.isa` encodes, decodes and disassembles with these.

An instruction is ``INSTRUCTION_BITS`` wide: an `Opcode`, four dependency-token bits (`DEPS`) and an
opcode-specific body. The compute bodies *are* the units' command layouts (`expert_ffn.ffn_command`,
`router.router_command`, `attention.attention_command`), so an instruction hands its unit exactly
the bits the unit decodes; widths follow the `AccelConfig`.
"""

from __future__ import annotations

import functools
import types

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from . import attention, expert_ffn, router, vector
from .buffers import Buffer, buffer_bytes
from .epilogue import REQUANT
from .numbers import MULT_BITS, SHIFT_BITS, count_bits
from .records import Pair
from .rules import Fields, check_rules, normalise
from .vector import VectorOp

__all__ = ["INSTRUCTION_BITS", "QUEUE_DEPTH", "NEIGHBOUR", "INSTRUCTION_BYTES", "ADDRESS_BITS", "SRAM_ADDRESS_BITS", "Opcode",
           "Queue", "QUEUE_OF", "ErrorCode", "DEPS", "transfer_body", "linear_body", "route_body",
           "expert_loop_body", "attention_body", "vector_body", "DESCRIPTOR", "bodies",
           "body_name", "instruction_layout", "expert_loop_commands", "rules", "check",
           "expert_check"]

INSTRUCTION_BITS = 256
QUEUE_DEPTH = 8               # instructions dispatched to a queue that wait to start
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
ADDRESS_BITS = 32             # byte offsets inside the DMA window the host grants
SRAM_ADDRESS_BITS = 24        # byte offsets inside an on-chip buffer


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


# The queue each queue exchanges dependency tokens with on each side: load -> compute -> store. A
# load queue has no previous queue, a store queue no next one.
NEIGHBOUR = {(Queue.LOAD, "next"): Queue.COMPUTE, (Queue.COMPUTE, "prev"): Queue.LOAD,
             (Queue.COMPUTE, "next"): Queue.STORE, (Queue.STORE, "prev"): Queue.COMPUTE}


class ErrorCode(enum.Enum, shape=4):
    """The error status the hardware raises and the emulator reports; the run stops at once."""
    NONE = 0
    ILLEGAL_OPCODE = 1        # an opcode outside `Opcode`
    BAD_FIELD = 2             # a field the configuration cannot hold (the block refused it)
    DMA_WINDOW = 3            # a LOAD/STORE (or a descriptor) outside the granted DMA window
    WATCHDOG = 4              # the run exceeded its cycle budget
    DEADLOCK = 5              # every queue waits for a token no instruction will push
    NO_FINISH = 6             # the program ended without FINISH
    ABORTED = 7               # the host aborted the run (the hardware's abort register)


DEPS = data.StructLayout({
    "pop_prev": unsigned(1),  # wait for a token from the previous queue (load <- compute <- store)
    "pop_next": unsigned(1),  # wait for a token from the next queue
    "push_prev": unsigned(1), # give a token to the previous queue when done
    "push_next": unsigned(1), # give a token to the next queue when done
})


def transfer_body(config) -> data.StructLayout:
    """LOAD and STORE: ``rows`` rows of ``row_bytes`` between DRAM (``dram``, rows ``dram_stride``
    bytes apart) and a buffer (``sram``, rows ``sram_stride`` bytes apart; 0: packed). A LOAD into
    WEIGHT moves packed M:N weight words (`sw.sparsity.pack`) as they are: the compressed form is
    what travels."""
    return data.StructLayout({
        "buffer": Buffer,
        "dram": unsigned(ADDRESS_BITS),
        "dram_stride": unsigned(ADDRESS_BITS),
        "sram": unsigned(SRAM_ADDRESS_BITS),
        "sram_stride": unsigned(SRAM_ADDRESS_BITS),
        "rows": unsigned(16),
        "row_bytes": unsigned(SRAM_ADDRESS_BITS),
    })


def linear_body(config) -> data.StructLayout:
    """LINEAR: one pass of the Expert-FFN engine (`expert_ffn.ffn_command`). Its packed weight words
    (``tiles x chunks`` words, `sw.sparsity.pack`) stream from DRAM at ``weights``, or, with
    ``preloaded``, come from the WEIGHT buffer at byte ``sram`` (put there by LOADs that the load
    queue can run while the previous pass computes). Parameters come from PARAMS, the table from
    TABLE, the gate table from GATES. Result rows go (``to_buffer``) to activation buffer
    ``1 - src`` (``dst_row_words`` words a token; a row's channels from its first byte, the bytes
    after them unchanged), or (``accumulate``) into OUT, gate x row added to the row the gate table
    names (a row named twice adds twice); a ``drain`` requantises OUT's rows into activation
    buffer ``1 - src`` and clears them. Refused as the pass starts, before it writes anything:
    weights past the DMA window (DMA_WINDOW); a PARAMS record, or a gate-table entry, its on-chip
    field cannot hold, or a gate-table row past ``max_tokens`` or past OUT (BAD_FIELD)."""
    return data.StructLayout({
        "command": expert_ffn.ffn_command(config),
        "weights": unsigned(ADDRESS_BITS),
        "preloaded": unsigned(1),
        "sram": unsigned(SRAM_ADDRESS_BITS),
    })


def route_body(config) -> data.StructLayout:
    """ROUTE: a router run (`router.router_command`) into DISPATCH. With ``command.compute`` the
    router's GEMM reads the tokens from ACT0 (rows ``row_words`` activation words apart) and the
    weights from ROUTER_WEIGHTS; otherwise it reads int16 Q8 logits ``[tokens, experts]`` from DRAM
    at ``logits``."""
    return data.StructLayout({
        "command": router.router_command(config),
        "row_words": unsigned(count_bits(config.act_buffer_words)),
        "logits": unsigned(ADDRESS_BITS),
    })


def expert_loop_body(config) -> data.StructLayout:
    """EXPERT_LOOP: for each expert ``e < experts`` with tokens in DISPATCH, in order: read its
    `DESCRIPTOR` at DRAM ``table + e x`` its size, gather its tokens' rows from ACT0, run the first
    pass (gate and up fused under ``swiglu``, the descriptor's table applied) into ACT1 and the down
    pass adding ``gate x row`` into OUT (`expert_loop_commands`). Experts without tokens cost
    nothing; each expert's weights are read once. ``prefetch``: expert e+1's first weight block
    loads while e computes."""
    return data.StructLayout({
        "experts": unsigned(count_bits(config.max_experts)),
        "table": unsigned(ADDRESS_BITS),
        "d_model": unsigned(count_bits(config.max_d_model)),
        "d_ff": unsigned(count_bits(config.max_d_ff)),
        "pattern": unsigned(expert_ffn.pattern_bits(config)),
        "swiglu": unsigned(1),
        "prefetch": unsigned(1),
    })


def attention_body(config) -> data.StructLayout:
    """ATTENTION: the attention unit's command and the DRAM offsets of its Q, K, V and O rows."""
    return data.StructLayout({
        "command": attention.attention_command(config),
        "q": unsigned(ADDRESS_BITS),
        "k": unsigned(ADDRESS_BITS),
        "v": unsigned(ADDRESS_BITS),
        "o": unsigned(ADDRESS_BITS),
    })


def vector_body(config) -> data.StructLayout:
    return vector.vector_command(config)


vector_body.__doc__ = vector.vector_command.__doc__     # the unit's command is the body


# EXPERT_LOOP: one expert's descriptor, a 32-byte record at DRAM ``table + e x`` its size: DRAM
# offsets of its first-pass weights (gate/up fused under SwiGLU, `compiler.plan.fuse_swiglu`), its
# down weights, their PARAMS images, its activation table, and the SwiGLU requantisation.
_ADDRESS = (unsigned(ADDRESS_BITS), unsigned(ADDRESS_BITS))
DESCRIPTOR = Pair("expert descriptor", {
    "first": _ADDRESS, "down": _ADDRESS, "first_params": _ADDRESS, "down_params": _ADDRESS,
    "table": _ADDRESS,
    "swiglu_multiplier": REQUANT.fields["multiplier"],
    "swiglu_shift": REQUANT.fields["shift"],
}, dram_bytes=32)


@functools.cache
def bodies(config) -> dict:
    """Each opcode's body layout (SYNC, FINISH and NOP have none); built once a configuration."""
    transfer = transfer_body(config)
    return types.MappingProxyType({
        Opcode.LOAD: transfer, Opcode.STORE: transfer,
        Opcode.LINEAR: linear_body(config), Opcode.ROUTE: route_body(config),
        Opcode.EXPERT_LOOP: expert_loop_body(config), Opcode.ATTENTION: attention_body(config),
        Opcode.VECTOR: vector_body(config),
    })


def body_name(opcode: Opcode) -> str | None:
    """The member of the instruction's body union an opcode's fields are in (LOAD and STORE share
    one)."""
    if opcode in (Opcode.LOAD, Opcode.STORE):
        return "load"
    return opcode.name.lower() if opcode in (Opcode.LINEAR, Opcode.ROUTE, Opcode.EXPERT_LOOP,
                                             Opcode.ATTENTION, Opcode.VECTOR) else None


@functools.cache
def instruction_layout(config) -> data.StructLayout:
    """The instruction of `config`: opcode, dependency tokens, the body as a union over opcodes
    (named by the opcode, lower case), padded to `INSTRUCTION_BITS`; built once a configuration."""
    layouts = bodies(config)
    union = data.UnionLayout({op.name.lower(): layout for op, layout in layouts.items()
                              if op is not Opcode.STORE})
    header = Opcode.as_shape().width + DEPS.size
    if header + union.size > INSTRUCTION_BITS:
        widest = max(layouts.items(), key=lambda item: item[1].size)[0].name
        raise ValueError(f"{config.name}: the {widest} body takes {union.size} bits, more than the "
                         f"{INSTRUCTION_BITS - header} an instruction has")
    largest = max(buffer_bytes(config).items(), key=lambda item: item[1])
    if largest[1] > 1 << SRAM_ADDRESS_BITS:
        raise ValueError(f"{config.name}: {largest[0].name} holds {largest[1]} bytes, more than "
                         f"the {SRAM_ADDRESS_BITS}-bit on-chip offsets of a transfer reach")
    return data.StructLayout({"opcode": Opcode, "deps": DEPS, "body": union,
                              "reserved": unsigned(INSTRUCTION_BITS - header - union.size)})


def expert_loop_commands(config, fields: dict, tokens: int,
                         swiglu_multiplier: int = 0, swiglu_shift: int = 0) -> tuple[dict, dict]:
    """The two Expert-FFN commands an EXPERT_LOOP (body `fields`) runs for an expert with `tokens`
    tokens: the first pass (gate and up fused under ``swiglu``, its table applied) from the
    gathered rows in ACT0 into ACT1, and the down pass from ACT1 adding ``gate x row`` into OUT.
    The pattern index must name a built pattern (`check` refuses one that does not)."""
    pattern = config.patterns[fields["pattern"]]
    first = expert_ffn.pass_command(config, tokens, fields["d_model"], fields["d_ff"], pattern,
                                    swiglu=bool(fields["swiglu"]), activation=True,
                                    to_buffer=True, swiglu_multiplier=swiglu_multiplier,
                                    swiglu_shift=swiglu_shift)
    down = expert_ffn.pass_command(config, tokens, fields["d_ff"], fields["d_model"], pattern,
                                   src=1, accumulate=True)
    return first, down


def rules(config, opcode: Opcode, c) -> list:
    """The refusals of an instruction's body `c` (`moeaccel.formats.rules`: a Python bool for a
    decoded body, an Amaranth value for a view of one): its unit's rules and the instruction's
    own. Beyond them are the DMA window and the buffers' bounds, which depend on the data (a LOAD's
    or STORE's rows against their buffer are `dma.rules`, checked as the transfer starts)."""
    if opcode is Opcode.LINEAR:
        size = expert_ffn.pass_weight_bytes(config, c.command)
        bus, weight = config.axi_data_bytes, buffer_bytes(config)[Buffer.WEIGHT]
        return expert_ffn.rules(config, c.command) + [
            (lambda: "the rows go nowhere: a LINEAR writes to_buffer or accumulates",
             (c.command.to_buffer == 0) & (c.command.accumulate == 0)),
            (lambda: f"preloaded weights at WEIGHT byte {c.sram}, not a whole bus word of {bus} "
                     f"bytes",
             (c.preloaded == 1) & (size != 0) & (c.sram % bus != 0)),
            (lambda: f"preloaded weights at WEIGHT bytes {c.sram} .. {c.sram + size - 1}, beyond "
                     f"its {weight}",
             (c.preloaded == 1) & (size != 0) & (c.sram + size > weight))]
    if opcode is Opcode.ROUTE:
        word, lanes = config.act_word_bytes, config.router_lanes
        return router.rules(config, c.command) + [
            (lambda: f"rows of {c.row_words} words are narrower than {c.command.chunks} router "
                     f"chunks",
             (c.command.compute != 0)
             & (c.row_words * word < c.command.chunks * lanes)),
            (lambda: f"{c.command.tokens} token rows of {c.row_words} words run past ACT0's "
                     f"{config.act_buffer_bytes} bytes",
             (c.command.compute != 0) & (c.command.tokens != 0)
             & ((c.command.tokens - 1) * c.row_words * word + c.command.chunks * lanes
                > config.act_buffer_bytes))]
    if opcode is Opcode.EXPERT_LOOP:
        return [
            (lambda: f"experts={c.experts} (1 .. {config.max_experts})",
             (c.experts == 0) | (c.experts > config.max_experts)),
            (lambda: f"pattern={c.pattern} ({len(config.patterns)} built)",
             c.pattern >= len(config.patterns)),
            (lambda: f"d_model={c.d_model}, d_ff={c.d_ff} (both at least 1)",
             (c.d_model == 0) | (c.d_ff == 0)),
        ]
    if opcode is Opcode.ATTENTION:
        return attention.rules(config, c.command)
    if opcode is Opcode.VECTOR:
        return vector.rules(config, c) + vector.buffer_rules(config, c)
    return []


def check(config, opcode: Opcode, fields: dict) -> list[str]:
    """What the hardware refuses in an instruction's body (`rules`; empty: it runs)."""
    layout = bodies(config).get(opcode)
    if layout is None or opcode in (Opcode.LOAD, Opcode.STORE):
        return []
    fields, reasons = normalise(layout, fields)
    return reasons or check_rules(rules(config, opcode, Fields.of(fields)))


def expert_check(config, fields: dict, tokens: int, swiglu_multiplier: int,
                 swiglu_shift: int) -> list[str]:
    """What the hardware refuses of one expert of an EXPERT_LOOP, its descriptor's values already
    within their on-chip fields (`DESCRIPTOR.refusals`): its two commands' `check`."""
    reasons = []
    for name, command in zip(("first", "down"), expert_loop_commands(
            config, fields, tokens, swiglu_multiplier, swiglu_shift)):
        reasons += [f"the {name} pass: {reason}" for reason in expert_ffn.check(config, command)]
    return reasons
