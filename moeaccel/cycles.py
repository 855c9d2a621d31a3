"""The performance model: every cycle formula of the accelerator in one place, built from the units'
pipeline latencies (the ``LATENCY`` of `hw.mac_array.MacArray` and `hw.epilogue.Epilogue` are the
constants here) and equal to the RTL's counts where a unit exists in RTL.

Measured against RTL, cycle for cycle: `ffn_pass_cycles` (the Expert-FFN engine's ``busy_cycles``,
`tests/test_expert_ffn_cycles.py`), `router_cycles` (the router's, `tests/test_router.py`),
`attention_cycles` (the attention unit with its sequencer, `tests/test_attention.py`),
`vector_cycles` (the vector unit's, `tests/test_vector_unit.py`). Modelled, with no RTL behind them
until the accelerator top is built: `transfer_cycles` (a LOAD or STORE), the descriptor and
parameter transfers and the ``prefetch`` overlap of `expert_loop_cycles`, a LINEAR's ``preloaded``
weights, and a VECTOR's operands reaching the unit as fast as it takes them.

The emulator's timing (`instruction_cycles`), the benchmarks and the compiler's scheduler read this
module; it imports no RTL.
"""

from __future__ import annotations

from .config import AccelConfig
from .formats import attention as attention_formats
from .formats import expert_ffn, instructions, vector
from .formats.attention import AttentionShape, group_keys
from .formats.epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS
from .formats.instructions import DESCRIPTOR, Opcode
from .formats.numbers import ATTENTION_RECIP_BITS, ROUTER_RECIP_BITS
from .formats.router import RouterMode
from .formats.vector import VectorOp

__all__ = ["MAC_ARRAY_LATENCY", "EPILOGUE_LATENCY", "FFN_ISSUE_STAGES", "FFN_PARAMS_STAGES",
           "FFN_COMBINE_STAGES", "FFN_ACCUMULATE_STAGES", "FFN_DRAIN_READ_STAGES",
           "FFN_PASS_TAIL", "FFN_DRAIN_TAIL", "ROUTER_GEMM_STAGES", "ROUTER_DIVIDE_CYCLES",
           "ATTENTION_SETTLE_CYCLES", "ATTENTION_HEAD_DIVIDE_CYCLES", "ATTENTION_DRAIN_STAGES",
           "WEIGHT_LEAD_CYCLES", "TRANSFER_SETUP_CYCLES", "VECTOR_LATENCY", "VECTOR_ROW_BANKS",
           "VECTOR_RSQRT_CYCLES", "ffn_pass_cycles", "router_cycles", "attention_cycles",
           "transfer_cycles", "expert_loop_cycles", "vector_cycles", "instruction_cycles"]

# -- the units' pipelines ------------------------------------------------------------------------

MAC_ARRAY_LATENCY = 4        # select activations, multiply, add, accumulate
EPILOGUE_LATENCY = 3         # exact sum; exact product; round, saturate and the table

# The Expert-FFN engine around them.
FFN_ISSUE_STAGES = 2         # read the weight and activation words; take the window out
FFN_PARAMS_STAGES = 1        # the row's tile selects its channels' parameters
FFN_COMBINE_STAGES = 2       # SwiGLU's product and its requantisation (plain rows pass alongside)
FFN_ACCUMULATE_STAGES = 1    # the read-add-write of a row into the output accumulator
FFN_DRAIN_READ_STAGES = 1    # a drain reads the accumulator row
FFN_PASS_TAIL = (FFN_ISSUE_STAGES + MAC_ARRAY_LATENCY + FFN_PARAMS_STAGES + EPILOGUE_LATENCY
                 + FFN_COMBINE_STAGES)                        # the last word's way out: 12
FFN_DRAIN_TAIL = (FFN_DRAIN_READ_STAGES + FFN_PARAMS_STAGES + EPILOGUE_LATENCY
                  + FFN_COMBINE_STAGES)                       # the last row's way out: 7

# The router.
ROUTER_GEMM_STAGES = 5       # read, multiply, add, accumulate, requantise
ROUTER_DIVIDE_CYCLES = ROUTER_RECIP_BITS + 1                  # one quotient bit a cycle

# The attention unit and its sequencer.
ATTENTION_SETTLE_CYCLES = 3  # K row -> V row: the last heads' softmax updates leave the pipeline
ATTENTION_HEAD_DIVIDE_CYCLES = ATTENTION_RECIP_BITS + 4   # per head: read, load, 41 bits, store
ATTENTION_DRAIN_STAGES = 2   # the accumulator read and the output register of a group's drain

# The weights' source: the first beat is offered this many cycles after the pass's command (the
# engine's testbench, and the model's assumption for a pass fed from the bus).
WEIGHT_LEAD_CYCLES = 3

# The DMA engine (modelled until the accelerator top is built).
# The vector unit (`hw.vector`).
VECTOR_LATENCY = 8           # issue, read, c, c x b1, t, a2 x b2 + c2, x m, round and saturate
VECTOR_ROW_BANKS = 3         # rows on chip: one streaming in, one waiting for its rsqrt, one leaving
# `hw.vector.RowRsqrt`, from the cycle a row's rsqrt starts to the first cycle its result is
# visible (and the next may start): normalise 1, square root 16, reciprocal 48, result and done 3.
VECTOR_RSQRT_CYCLES = 68

TRANSFER_SETUP_CYCLES = 8    # a LOAD or STORE: address set-up before its first beat


def _beats(config: AccelConfig, size: int) -> int:
    return -(-size // config.axi_data_bytes)


# -- the Expert-FFN engine (measured) ---------------------------------------------------------------

def ffn_pass_cycles(config: AccelConfig, command: dict, *, weight_lead: int = WEIGHT_LEAD_CYCLES,
                    word_beats: int | None = None) -> int:
    """Cycles of one pass (`formats.expert_ffn.ffn_command` fields): the engine's ``busy_cycles``,
    with weight beats offered back to back from cycle ``weight_lead + 1`` of the pass
    (`WEIGHT_LEAD_CYCLES`: the testbench's source starts after the command handshake) and the results never held back.

    A weight pass: ``weight_lead``, then block 0 fills its bank (``L = chunks x beats`` cycles,
    `expert_ffn.weight_word_beats` beats a word), then each tile issues ``P = tokens x chunks``
    words, one a cycle, while the next block fills the other bank: a later tile starts when both
    the previous tile is issued and its block is in, ``max(L, P)`` after the one before; then the
    last word's way out (`FFN_PASS_TAIL`), and `FFN_ACCUMULATE_STAGES` more when the rows are
    accumulated. A drain pass has no weights: ``tokens x tiles`` accumulator rows read one a cycle
    from the cycle after the command, then `FFN_DRAIN_TAIL`. `word_beats` overrides the beats a
    weight word takes to arrive (1 when the words come from the on-chip WEIGHT buffer)."""
    tokens, tiles = command["tokens"], command["tiles"]
    if command["drain"]:
        return tokens * tiles + FFN_DRAIN_TAIL
    chunks = command["chunks"]
    beats = expert_ffn.weight_word_beats(config, config.patterns[command["pattern"]]) \
        if word_beats is None else word_beats
    fill = chunks * beats                                                             # L
    compute = tokens * chunks                                                         # P
    return (weight_lead + fill + (tiles - 1) * max(fill, compute) + compute + FFN_PASS_TAIL
            + (FFN_ACCUMULATE_STAGES if command["accumulate"] else 0))


# -- the router (measured) -------------------------------------------------------------------------

def router_cycles(command: dict) -> int:
    """Cycles of one run (`formats.router.router_command` fields), its inputs arriving a word a
    cycle: the counts cleared (E), then per token its logits (E streamed in, or the token's chunks
    and the GEMM's ``E x chunks`` plus `ROUTER_GEMM_STAGES`), group scores and choice when
    group-limited (E + 1 + G + 1), selection (E + 1), the chosen weights' sum (k, in the two
    renormalising modes), the reciprocal (1 + `ROUTER_DIVIDE_CYCLES`) and the gates (k + 1)."""
    experts, k, chunks = command["experts"], command["k"], command["chunks"]
    mode = RouterMode(command["mode"])
    load = chunks + experts * chunks + ROUTER_GEMM_STAGES if command["compute"] else experts
    grouped = mode is RouterMode.SIGMOID_BIAS and command["groups"] > 1
    token = (load + (experts + 1 + command["groups"] + 1 if grouped else 0) + experts + 1
             + (k if mode in (RouterMode.SOFTMAX_TOPK_RENORM, RouterMode.SIGMOID_BIAS) else 0)
             + 1 + ROUTER_DIVIDE_CYCLES + k + 1)
    return experts + command["tokens"] * token


# -- attention (measured) ---------------------------------------------------------------------------

def attention_cycles(shape: AttentionShape, group: int, word: int) -> dict:
    """Cycles of `hw.attention.Attention` fed by its sequencer from a memory answering a read a
    cycle later (a word every cycle after the first), with no backpressure, by phase.

    Per group: a cycle to start it, its Q words; per key, the K row and the V row (``heads x
    head_words`` cycles each: a word is held for each query head that shares it) and the settle
    between them (`ATTENTION_SETTLE_CYCLES`); one reciprocal per head
    (`ATTENTION_HEAD_DIVIDE_CYCLES`); the drain of the group's output words and its pipeline
    (`ATTENTION_DRAIN_STAGES`).
    """
    head_words = shape.head_words(word)
    row_q = shape.heads * head_words
    phases = {"q": 0, "keys": 0, "settle": 0, "divide": 0, "drain": 0,
              "control": 1}      # the first word's read latency
    for first in range(0, shape.seq_q, group):
        rows = min(group, shape.seq_q - first)
        keys = group_keys(shape, first, rows)
        phases["control"] += 1
        phases["q"] += rows * row_q
        phases["keys"] += 2 * keys * row_q
        phases["settle"] += keys * ATTENTION_SETTLE_CYCLES
        phases["divide"] += shape.heads * ATTENTION_HEAD_DIVIDE_CYCLES
        phases["drain"] += rows * row_q + ATTENTION_DRAIN_STAGES
    phases["total"] = sum(phases.values())
    return phases


# -- transfers, the expert loop and the vector unit (modelled) --------------------------------------

def transfer_cycles(config: AccelConfig, rows: int, row_bytes: int) -> int:
    """A LOAD or STORE: the set-up, then a bus beat a cycle. (Modelled.)"""
    return TRANSFER_SETUP_CYCLES + rows * _beats(config, row_bytes)


def expert_loop_cycles(config: AccelConfig, fields: dict, expert_tokens: list[int]) -> int:
    """An EXPERT_LOOP (body `fields`) with `expert_tokens[e]` tokens for expert e. Per expert with
    tokens: its descriptor, activation table and the two passes' parameters arrive (a transfer
    each), then its two passes (`ffn_pass_cycles`). With ``prefetch`` an expert's transfers and its
    first weight block load while the expert before it issues its last tile, hiding up to that
    tile's ``tokens x chunks`` cycles. Experts without tokens cost nothing. (The passes are
    measured; the transfers and the overlap are modelled until the accelerator top is built.)"""
    if instructions.check(config, Opcode.EXPERT_LOOP, fields):
        return 1                              # refused at once
    pattern = config.patterns[fields["pattern"]]
    beats = expert_ffn.weight_word_beats(config, pattern)
    total, hidden_window = 0, 0
    for tokens in expert_tokens[:fields["experts"]]:
        if not tokens:
            continue
        first, down = instructions.expert_loop_commands(config, fields, tokens)
        if expert_ffn.check(config, first) or expert_ffn.check(config, down):
            return total + 1                  # refused there
        setup = sum(transfer_cycles(config, 1, size) for size in (
            DESCRIPTOR.size, ACTIVATION_TABLE.size // 8,
            first["tiles"] * config.mac_rows * CHANNEL_PARAMS.size,
            down["tiles"] * config.mac_rows * CHANNEL_PARAMS.size))
        cost = setup + ffn_pass_cycles(config, first) + ffn_pass_cycles(config, down)
        if fields["prefetch"]:
            lead = setup + WEIGHT_LEAD_CYCLES + first["chunks"] * beats  # what can load ahead
            cost -= min(lead, hidden_window)
        total += cost
        hidden_window = tokens * down["chunks"]
    return total


def vector_cycles(config: AccelConfig, fields: dict) -> int:
    """A VECTOR (body `fields`): the vector unit's busy cycles, exactly as `hw.vector.VectorUnit`
    counts them when its inputs keep pace and its outputs are taken at once (`busy_cycles`).

    ADD, MUL, REQUANT and GATE issue a word a cycle: ``rows x words``, then the pipeline's
    `VECTOR_LATENCY`. The norms and ROPE stream each row into one of `VECTOR_ROW_BANKS` banks (a
    word a cycle, once a bank is free), the norms form the row's rsqrt (`VECTOR_RSQRT_CYCLES`, one
    row at a time, in order), and the row leaves its bank a word a cycle after the row before it.
    A command the unit refuses takes one cycle."""
    if vector.check(config, fields):
        return 1
    op, rows = VectorOp(fields["op"]), fields["rows"]
    words = vector.row_words(config, fields["width"])
    if op not in vector.ROW_OPS:
        return rows * words + VECTOR_LATENCY + 1
    # cycle numbers: the command is accepted in cycle 0; *_end is a row's last word
    in_end, rsqrt_start, out_end = [], [], []
    for row in range(rows):
        start = max(in_end[-1] + 1 if in_end else 1,
                    out_end[row - VECTOR_ROW_BANKS] + 1 if row >= VECTOR_ROW_BANKS else 1)
        in_end.append(start + words - 1)
        ready = in_end[-1] + 1
        if op in vector.NORMS:
            rsqrt_start.append(max(ready, rsqrt_start[-1] + VECTOR_RSQRT_CYCLES if rsqrt_start
                                   else ready))
            ready = rsqrt_start[-1] + VECTOR_RSQRT_CYCLES
        out_end.append(max(ready, out_end[-1] + 1 if out_end else ready) + words - 1)
    return out_end[-1] + VECTOR_LATENCY + 1


# -- an instruction ---------------------------------------------------------------------------------

def instruction_cycles(config: AccelConfig, opcode: Opcode, fields: dict,
                       expert_tokens: list[int] | None = None) -> int:
    """The cycles one instruction keeps its queue busy. An EXPERT_LOOP's depend on its experts'
    token counts, `expert_tokens` (the dispatch table's when it starts). A command its unit
    refuses takes one cycle."""
    if opcode in (Opcode.LOAD, Opcode.STORE):
        return transfer_cycles(config, fields["rows"], fields["row_bytes"])
    if opcode is Opcode.EXPERT_LOOP:
        return expert_loop_cycles(config, fields, expert_tokens or [])
    if opcode in (Opcode.ROUTE, Opcode.ATTENTION, Opcode.LINEAR, Opcode.VECTOR) \
            and instructions.check(config, opcode, fields):
        return 1
    if opcode is Opcode.ROUTE:
        return router_cycles(fields["command"])
    if opcode is Opcode.ATTENTION:
        shape = attention_formats.padded_shape(config, fields["command"])
        return attention_cycles(shape, config.attention_group, config.axi_data_bytes)["total"]
    if opcode is Opcode.LINEAR:
        return ffn_pass_cycles(config, fields["command"],
                               word_beats=1 if fields["preloaded"] else None)
    if opcode is Opcode.VECTOR:
        return vector_cycles(config, fields)
    return 1
