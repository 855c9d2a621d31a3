"""The performance model: every cycle formula of the accelerator in one place, built from the units'
pipeline latencies (the ``LATENCY`` of `hw.mac_array.MacArray` and `hw.epilogue.Epilogue` are the
constants here) and equal to the RTL's counts.

Two levels, each held to RTL. The units on their own, cycle for cycle: `ffn_pass_cycles` (the
Expert-FFN engine's ``busy_cycles``, `tests/test_expert_ffn_cycles.py`), `router_cycles` (the
router's, `tests/test_router.py`), `attention_cycles` (the attention unit with its sequencer,
`tests/test_attention.py`), `vector_cycles` (the vector unit's, `tests/test_vector_unit_rtl.py`).
And the accelerator top (`hw.top`), whose ports add their checks, transfers and DRAM's latency:
`instruction_cycles` (LOAD and STORE `transfer_cycles`, LINEAR `linear_cycles`, ROUTE
`route_top_cycles`, ATTENTION `attention_top_cycles`, VECTOR `vector_top_cycles`, EXPERT_LOOP
`expert_loop_cycles`) and `fetched_cycle`, against the top in RTL simulation with DRAM as its
testbench models it (cocotbext-axi's AxiRam, no pauses): `tests/test_top_cycles.py`. Not counted:
the AXI port shared between the fetch unit, the DMA engines and the ports' readers (a LOAD beside
a weight stream takes longer on the top than here), and an attention call's reader falling behind
on rows under four bus words.

The emulator's timing (`instruction_cycles`), the benchmarks and the compiler's scheduler read this
module; it imports no RTL.
"""

from __future__ import annotations

from .config import AccelConfig
from .formats import attention as attention_formats
from .formats import expert_ffn, instructions, vector
from .formats.attention import STORE_CHUNK, AttentionShape, group_keys
from .formats.epilogue import ACTIVATION_TABLE, CHANNEL_PARAMS
from .formats.instructions import DESCRIPTOR, INSTRUCTION_BYTES, Opcode
from .formats.numbers import ATTENTION_RECIP_BITS, ROUTER_RECIP_BITS
from .formats.router import TOKEN_GATE, RouterMode
from .formats.vector import VectorOp

__all__ = ["MAC_ARRAY_LATENCY", "EPILOGUE_LATENCY", "FFN_ISSUE_STAGES", "FFN_PARAMS_STAGES",
           "FFN_COMBINE_STAGES", "FFN_ACCUMULATE_STAGES", "FFN_DRAIN_READ_STAGES",
           "FFN_PASS_TAIL", "FFN_DRAIN_TAIL", "ROUTER_GEMM_STAGES", "ROUTER_DIVIDE_CYCLES",
           "ATTENTION_SETTLE_CYCLES", "ATTENTION_HEAD_DIVIDE_CYCLES", "ATTENTION_DRAIN_STAGES",
           "WEIGHT_LEAD_CYCLES", "LOAD_SETUP_CYCLES", "STORE_SETUP_CYCLES",
           "DMA_ROW_CYCLES", "FETCH_LEAD_CYCLES", "FETCH_BURST", "FETCH_BURST_GAP_CYCLES",
           "ISSUE_CYCLES", "TRANSFER_TURNAROUND_CYCLES", "fetched_cycle", "VECTOR_LATENCY", "VECTOR_ROW_BANKS",
           "VECTOR_RSQRT_CYCLES", "FFN_PORT_CYCLES", "FFN_DRAM_LEAD_CYCLES",
           "FFN_BUFFER_LEAD_CYCLES", "TABLE_COPY_SETUP_CYCLES", "ROUTE_PORT_CYCLES",
           "ROUTE_LOGIT_LEAD_CYCLES", "ATTENTION_READ_LEAD_CYCLES", "ATTENTION_PORT_CYCLES",
           "VECTOR_PORT_CYCLES", "VECTOR_OPERAND_LEAD_CYCLES", "VECTOR_OPERAND_PHASE_CYCLES",
           "LOOP_COUNT_CYCLES", "LOOP_EXPERT_CYCLES",
           "ffn_pass_cycles", "router_cycles", "attention_cycles", "transfer_cycles",
           "expert_loop_cycles", "vector_cycles", "table_copy_cycles", "linear_cycles",
           "route_top_cycles", "attention_top_cycles", "vector_top_cycles", "instruction_cycles",
           "copies_table"]

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

# The vector unit (`hw.vector`).
VECTOR_LATENCY = 8           # issue, read, c, c x b1, t, a2 x b2 + c2, x m, round and saturate
VECTOR_ROW_BANKS = 3         # rows on chip: one streaming in, one waiting for its rsqrt, one leaving
# `hw.vector.RowRsqrt`, from the cycle a row's rsqrt starts to the first cycle its result is
# visible (and the next may start): normalise 1, square root 16, reciprocal 48, result and done 3.
VECTOR_RSQRT_CYCLES = 68

# The fetch unit and the controller on the top (measured, `tests/test_top_cycles.py`).
FETCH_LEAD_CYCLES = 3        # start -> the first burst's first beat (then a beat a cycle)
FETCH_BURST = 4              # instructions a fetch burst reads
FETCH_BURST_GAP_CYCLES = 2   # between one burst's last beat and the next one's first
ISSUE_CYCLES = 1             # a queue starts its next instruction the cycle after one ends; SYNC
                             # and FINISH the cycle after everything before them has ended
TRANSFER_TURNAROUND_CYCLES = 2   # a LOAD or STORE right after one on the same DMA engine

# The DMA engine on the top: from the queue's start to its first word, through the window check,
# the burst, DRAM's answer and the realigner.
LOAD_SETUP_CYCLES = 6
STORE_SETUP_CYCLES = 11      # the buffer's read and the write's response besides
DMA_ROW_CYCLES = 2           # a row's description, then its first burst


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


# -- transfers and the expert loop (on the top), the vector unit (measured) -------------------------

def fetched_cycle(config: AccelConfig, index: int) -> int:
    """The cycle instruction `index` of a program reaches the controller: the fetch unit streams
    the program a bus beat a cycle in bursts of `FETCH_BURST` instructions."""
    beats = INSTRUCTION_BYTES // config.axi_data_bytes
    return (FETCH_LEAD_CYCLES + (index + 1) * beats
            + (index // FETCH_BURST) * FETCH_BURST_GAP_CYCLES)


def transfer_cycles(config: AccelConfig, rows: int, row_bytes: int, *, store: bool = False,
                    dram: int = 0, sram: int = 0, dram_stride: int | None = None,
                    sram_stride: int = 0) -> int:
    """A LOAD or STORE on the top's DMA engine (`hw.dma.Dma`; `dram` an offset in a window that
    starts on a bus word): its set-up (`LOAD_SETUP_CYCLES`, `STORE_SETUP_CYCLES`), then each row
    as the realigner moves it. A row of ``in`` words in and ``out`` out takes ``max(in, out)``
    cycles, a cycle more where its first input word gives nothing out (a LOAD's row starting
    later in DRAM's bus word than in the buffer's), and a STORE's reader of the buffer a cycle
    between rows; a LOAD issues a row every `DMA_ROW_CYCLES` at the most."""
    if rows == 0 or row_bytes == 0:
        return LOAD_SETUP_CYCLES if not store else STORE_SETUP_CYCLES
    bus = config.axi_data_bytes
    dram_stride = row_bytes if dram_stride is None else dram_stride
    sram_stride = sram_stride or row_bytes
    total, last = 0, 0
    for row in range(rows):
        dram_offset = (dram + row * dram_stride) % bus
        sram_offset = (sram + row * sram_stride) % bus
        src, dst = (sram_offset, dram_offset) if store else (dram_offset, sram_offset)
        words_in, words_out = (_beats(config, offset + row_bytes) for offset in (src, dst))
        if store:
            last = max(words_out, words_in + 1)
        else:
            last = max(words_in, words_out + (src > dst))
        total += last
    if store:
        return STORE_SETUP_CYCLES + total - 1
    return LOAD_SETUP_CYCLES + max(total, DMA_ROW_CYCLES * (rows - 1) + last)


def expert_loop_cycles(config: AccelConfig, fields: dict, expert_tokens: list[int]) -> int:
    """An EXPERT_LOOP on the top (body `fields`) with `expert_tokens[e]` tokens for expert e, as
    `hw.ffn_port.FFNPort` runs it: per expert its count (`LOOP_COUNT_CYCLES`: an expert without
    tokens costs no more); for one with tokens, its queue scanned and later copied into GATES (two
    cycles a bus word of entries, each), its descriptor, table and the two passes' parameters
    fetched from DRAM (a transfer each, `transfer_cycles`, after a cycle to ask), its descriptor's
    check and the hand-offs between steps (`LOOP_EXPERT_CYCLES`), and its two passes (`linear_cycles`: the first gathers, after the table's copy); then
    a cycle to see the loop is done. The descriptor's transfers are taken to start on a bus word.
    ``prefetch`` changes nothing yet: the top does not act on it."""
    if instructions.check(config, Opcode.EXPERT_LOOP, fields):
        return 1                              # refused at once
    gate_bytes = TOKEN_GATE.size
    total = 1
    for tokens in expert_tokens[:fields["experts"]]:
        total += LOOP_COUNT_CYCLES
        if not tokens:
            continue
        first, down = instructions.expert_loop_commands(config, fields, tokens)
        if expert_ffn.check(config, first) or expert_ffn.check(config, down):
            return total                      # refused there
        queue = 2 * 2 * _beats(config, tokens * gate_bytes)          # the scan and the copy
        fetches = sum(1 + transfer_cycles(config, 1, size) for size in (
            DESCRIPTOR.size, ACTIVATION_TABLE.size // 8,
            first["tiles"] * config.mac_rows * CHANNEL_PARAMS.size,
            down["tiles"] * config.mac_rows * CHANNEL_PARAMS.size))
        passes = sum(1 + linear_cycles(config, {"command": command, "preloaded": 0}, True,
                                       gather=gather)
                     for command, gather in ((first, True), (down, False)))
        total += queue + fetches + LOOP_EXPERT_CYCLES + passes
    return total


def vector_cycles(config: AccelConfig, fields: dict, *, word_cycles: int = 1,
                  first_word: int = 1, row0_end: int = 0, shared: bool = False) -> int:
    """A VECTOR (body `fields`): the vector unit's busy cycles, exactly as `hw.vector.VectorUnit`
    counts them when its inputs keep pace and its outputs are taken at once (`busy_cycles`).

    ADD, MUL, REQUANT and GATE issue a word a cycle: ``rows x words``, then the pipeline's
    `VECTOR_LATENCY`. The norms and ROPE stream each row into one of `VECTOR_ROW_BANKS` banks (a
    word a cycle, once a bank is free), the norms form the row's rsqrt (`VECTOR_RSQRT_CYCLES`, one
    row at a time, in order), and the row leaves its bank a word a cycle after the row before it.
    A command the unit refuses takes one cycle.

    Inputs slower than that (`vector_top_cycles`): ADD, MUL, REQUANT and GATE take a word every
    `word_cycles`, or (`shared`: the results go into a buffer the inputs come from, through the
    one port) a word every other cycle, the results' writes in between, which hides the pipeline's
    latency; the first word comes in cycle `first_word`; a norm's row 0 takes its last word no
    earlier than cycle `row0_end` (its operands come with it)."""
    if vector.check(config, fields):
        return 1
    op, rows = VectorOp(fields["op"]), fields["rows"]
    words = vector.row_words(config, fields["width"])
    if op not in vector.ROW_OPS:
        if shared:               # the writes take every other cycle from the first result on
            return 2 * (rows * words + 1) + first_word - 1
        return rows * words * word_cycles + VECTOR_LATENCY + word_cycles + first_word - 1
    # cycle numbers: the command is accepted in cycle 0; *_end is a row's last word
    in_end, rsqrt_start, out_end = [], [], []
    for row in range(rows):
        start = max(in_end[-1] + 1 if in_end else first_word,
                    out_end[row - VECTOR_ROW_BANKS] + 1 if row >= VECTOR_ROW_BANKS else 1)
        in_end.append(max(start + words - 1, row0_end if row == 0 else 0))
        ready = in_end[-1] + 1
        if op in vector.NORMS:
            rsqrt_start.append(max(ready, rsqrt_start[-1] + VECTOR_RSQRT_CYCLES if rsqrt_start
                                   else ready))
            ready = rsqrt_start[-1] + VECTOR_RSQRT_CYCLES
        out_end.append(max(ready, out_end[-1] + 1 if out_end else ready) + words - 1)
    return out_end[-1] + VECTOR_LATENCY + 1


# -- the units on the accelerator top (measured on the top) ----------------------------------------
#
# `hw.top.Accelerator`'s ports around the units, in cycles of its compute queue, against DRAM that
# answers as the top's testbench's does (cocotbext-axi's `AxiRam`, no pauses):
# `tests/test_top_cycles.py` holds these to the top.

FFN_PORT_CYCLES = 3          # a pass: the table check, start, the command's check
FFN_DRAM_LEAD_CYCLES = 5     # the first weight beat, from DRAM through the port's DMA engine
FFN_BUFFER_LEAD_CYCLES = 3   # ... from WEIGHT (``preloaded``)
TABLE_COPY_SETUP_CYCLES = 2  # the copy of TABLE into the epilogue: its first read, its last write
ROUTE_PORT_CYCLES = 3        # the checks' last answer, start, the end (beside a cycle an expert)
ROUTE_LOGIT_LEAD_CYCLES = 6  # given logits: the first one's way from DRAM (the counts' clearing,
                             # a cycle an expert, hides as many)
ATTENTION_READ_LEAD_CYCLES = 4     # the first Q word's way from DRAM to the unit
ATTENTION_PORT_CYCLES = 16   # the checks, start, and the last O words' write (beside a cycle a word)
VECTOR_PORT_CYCLES = 3       # start, the unit's command, the end
LOOP_COUNT_CYCLES = 2        # an EXPERT_LOOP reads an expert's count from DISPATCH
LOOP_EXPERT_CYCLES = 3       # ... an expert's descriptor check and hand-offs between its steps
VECTOR_OPERAND_LEAD_CYCLES = 5     # an operand transfer's first element, from DRAM to the unit
VECTOR_OPERAND_PHASE_CYCLES = 1    # a norm's next operand transfer begins after the one before


def table_copy_cycles(config: AccelConfig) -> int:
    """The epilogue's copy of TABLE, a bus word of entries a cycle (after a write into TABLE)."""
    return ACTIVATION_TABLE.size // 8 // config.axi_data_bytes + TABLE_COPY_SETUP_CYCLES


def linear_cycles(config: AccelConfig, fields: dict, table_stale: bool = True, *,
                  gather: bool = False) -> int:
    """A LINEAR on the top (body `fields`): the port's checks (a cycle a tile's parameters, a cycle
    a gate-table entry when it accumulates or gathers), the table copy when the pass applies the
    table and TABLE was written since the last copy (`table_stale`), and the pass
    (`ffn_pass_cycles`) with its weights from DRAM or WEIGHT, a bus word a cycle either way.
    `gather`: an expert loop's first pass, whose gate-table entries are checked too."""
    command = fields["command"]
    gates = command["tokens"] + 1 if command["accumulate"] or gather else 1
    copy = table_copy_cycles(config) if (table_stale and command["activation"]
                                         and not command["drain"]) else 0
    lead = FFN_BUFFER_LEAD_CYCLES if fields["preloaded"] else FFN_DRAM_LEAD_CYCLES
    return (FFN_PORT_CYCLES + command["tiles"] + gates + copy
            + ffn_pass_cycles(config, command, weight_lead=lead))


def route_top_cycles(fields: dict) -> int:
    """A ROUTE on the top: the records' checks (a cycle an expert), the port's cycles, the router
    (`router_cycles`), and given logits' lead where the counts' clearing does not hide it."""
    command = fields["command"]
    lead = 0 if command["compute"] else max(0, ROUTE_LOGIT_LEAD_CYCLES - command["experts"])
    return command["experts"] + ROUTE_PORT_CYCLES + lead + router_cycles(command)


def attention_top_cycles(config: AccelConfig, fields: dict) -> int:
    """An ATTENTION on the top: the unit (`attention_cycles`), its first word's lead from DRAM, and
    a cycle more for each K row when K starts inside a bus word (the realigner's first beat of a
    row gives no word out; a V row's hides in the settle before it), and one for Q and one for O
    starting inside a bus word; then the port's cycles and the last writes, a cycle a word the
    writer trails the unit by."""
    command = fields["command"]
    shape = attention_formats.padded_shape(config, command)
    word, group = config.axi_data_bytes, config.attention_group
    groups = [(first, min(group, shape.seq_q - first)) for first in range(0, shape.seq_q, group)]
    row_q = shape.heads * shape.head_words(word)
    unaligned = bool(fields["q"] % word) + bool(fields["o"] % word)
    if fields["k"] % word:
        unaligned += sum(group_keys(shape, first, rows) for first, rows in groups)
    # the writer trails the drain by the words of a claim: the last query group's, at most
    # STORE_CHUNK (a claim waits for that many; from then on the writes keep pace)
    behind = min(groups[-1][1] * row_q, STORE_CHUNK)
    return (attention_cycles(shape, group, word)["total"] + ATTENTION_READ_LEAD_CYCLES + unaligned
            + ATTENTION_PORT_CYCLES + behind)


def vector_top_cycles(config: AccelConfig, fields: dict) -> int:
    """A VECTOR on the top: the port's cycles and the unit (`vector_cycles`) with its inputs as the
    top gives them. REQUANT's int32 words take their bus beats each; writing over the rows of
    ``a`` (in place), a word every other cycle: ``a`` is read on the unit side of its buffer, whose
    one port then takes the reads and the writes in turn (``b`` is read on the DMA side, so writing
    over it costs nothing). Operands come from DRAM:
    GATE's and ROPE's first after `VECTOR_OPERAND_LEAD_CYCLES`; a norm's row 0 waits for its
    operands (``eps_q``, then the weights, then the biases, each transfer after the one before,
    each with its lead)."""
    if vector.check(config, fields):
        return 1
    op, width = VectorOp(fields["op"]), fields["width"]
    bus = config.axi_data_bytes
    shared = op not in vector.ROW_OPS and fields["dst"] == fields["a"]
    beats = max(1, 4 * config.vector_lanes // bus) if op is VectorOp.REQUANT else 1
    first, row0_end = 1, 0
    if op in (VectorOp.GATE, VectorOp.ROPE):
        first += VECTOR_OPERAND_LEAD_CYCLES
    if op in vector.NORMS:
        row0_end = sum(VECTOR_OPERAND_LEAD_CYCLES + VECTOR_OPERAND_PHASE_CYCLES + _beats(config, n)
                       for n in (8, 2 * width, 4 * width))
    return VECTOR_PORT_CYCLES + vector_cycles(config, fields, word_cycles=beats, first_word=first,
                                              row0_end=row0_end, shared=shared)


def instruction_cycles(config: AccelConfig, opcode: Opcode, fields: dict,
                       expert_tokens: list[int] | None = None, table_stale: bool = True) -> int:
    """The cycles one instruction keeps its queue busy on the top. An EXPERT_LOOP's depend on its
    experts' token counts, `expert_tokens` (the dispatch table's when it starts); a LINEAR's on
    whether TABLE was written since the last pass copied it (`table_stale`). A command its unit
    refuses takes one cycle."""
    if opcode in (Opcode.LOAD, Opcode.STORE):
        return transfer_cycles(config, fields["rows"], fields["row_bytes"],
                               store=opcode is Opcode.STORE, dram=fields["dram"],
                               sram=fields["sram"], dram_stride=fields["dram_stride"],
                               sram_stride=fields["sram_stride"])
    if opcode is Opcode.EXPERT_LOOP:
        return expert_loop_cycles(config, fields, expert_tokens or [])
    if opcode in (Opcode.ROUTE, Opcode.ATTENTION, Opcode.LINEAR, Opcode.VECTOR) \
            and instructions.check(config, opcode, fields):
        return 1
    if opcode is Opcode.ROUTE:
        return route_top_cycles(fields)
    if opcode is Opcode.ATTENTION:
        return attention_top_cycles(config, fields)
    if opcode is Opcode.LINEAR:
        return linear_cycles(config, fields, table_stale)
    if opcode is Opcode.VECTOR:
        return vector_top_cycles(config, fields)
    return 1


def copies_table(config: AccelConfig, opcode: Opcode, fields: dict) -> bool:
    """Whether the instruction copies TABLE into the epilogue when TABLE is stale: a LINEAR that
    applies the table and runs."""
    return (opcode is Opcode.LINEAR and bool(fields["command"]["activation"])
            and not fields["command"]["drain"] and not instructions.check(config, opcode, fields))
