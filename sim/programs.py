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

__all__ = ["random_fields", "random_instruction", "random_program", "random_pipeline",
           "random_linear", "random_expert_loop", "random_route", "random_attention",
           "EXPERT_LOOP_FAULTS", "ROUTE_FAULTS", "ATTENTION_FAULTS", "LINEAR_WINDOW"]

LINEAR_WINDOW = 1 << 15         # a `random_linear` or `random_expert_loop` program's window: its
                                # data, then its results


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


def _channel_params(rng, nrng, config, channels: int, inputs: int, pattern, drain: bool,
                    refused: bool):
    """`CHANNEL_PARAMS` records whose requantisations bring a pass's sums back into int8 mostly
    unsaturated: a sum of `kept` products of int8 values spreads about sqrt(kept) x 74 x 74 (a
    drain's sums, loaded at random, about 2 ** 20); `refused`: one record the hardware refuses."""
    import numpy as np

    from ..formats import records
    from ..formats.epilogue import CHANNEL_PARAMS
    from ..formats.numbers import MULT_BITS

    kept = inputs * pattern.n // pattern.m
    spread = (1 << 20) if drain else max(1, kept) ** 0.5 * 74 * 74
    params = records.zeros(CHANNEL_PARAMS.dram, channels)
    params["bias"] = nrng.integers(-int(spread), int(spread) + 1, channels)
    params["multiplier"] = nrng.integers(1 << 13, 1 << MULT_BITS, channels)
    scale = int(np.log2(spread * (1 << 14) / 40))
    params["shift"] = nrng.integers(scale - 1, scale + 2, channels)
    if refused:
        field, value = rng.choice([("multiplier", 1 << MULT_BITS), ("shift", 200)])
        params[rng.randrange(channels)][field] = value
    return params


class _Data:
    """A program's data laid out from DRAM byte 0, each piece on 64 bytes, below `end`."""

    def __init__(self, end: int):
        self.end, self.free, self.patches, self.at = end, 0, [], {}

    def put(self, name: str, blob: bytes) -> int:
        self.at[name] = self.free
        self.free = -(-(self.free + len(blob)) // 64) * 64
        assert self.free <= self.end, f"a program's data past {self.end} bytes"
        self.patches.append((self.at[name], bytes(blob).hex()))
        return self.at[name]


def random_linear(rng: random.Random, config, window: int, bad: float = 0.1,
                  fault: str | None = None, size: int = 1) -> tuple[bytes, list]:
    """A LINEAR program with its data: a pass of random shape at a random built pattern (plain,
    SwiGLU or with the activation table into the other activation buffer, accumulating gate x row
    into OUT, or draining OUT), its weights pruned and packed (`sw.sparsity.pack`), streamed or
    preloaded into WEIGHT, its PARAMS records, table and gate table valid (the gate table often
    naming a row twice in a row), and its inputs random; with probability `bad` (or always, when
    `fault` names one: "params", "gates", "window") one of them is not: a parameter or a gate-table
    token the hardware refuses, weights past the window. `size` scales the largest shape (tokens,
    inputs, outputs). Returns the program and the DRAM patches ``(address, hex bytes)`` that hold
    its data; the results are stored from ``window // 2`` on."""
    import numpy as np
    import torch

    from ..formats import expert_ffn, records
    from ..formats.buffers import out_row_bytes
    from ..formats.numbers import GATE_FRAC_BITS, MULT_BITS
    from ..formats.router import TOKEN_GATE
    from ..sw.sparsity import pack, prune

    nrng = np.random.default_rng(rng.randrange(1 << 30))
    pattern = rng.choice(config.patterns)
    if fault is None and rng.random() < bad:
        fault = rng.choice(["params", "gates", "window"])
    modes = ["accumulate"] if fault == "gates" else ["plain", "swiglu", "accumulate", "drain"]
    mode = rng.choice(modes)
    if fault == "window" and mode == "drain":
        mode = "plain"
    swiglu = mode == "swiglu"
    tokens = rng.randint(1, min(6 * size, config.max_tokens))
    per_tile = expert_ffn.tile_channels(config, swiglu)
    inputs = rng.randint(1, 3 * size * expert_ffn.chunk_inputs(config, pattern))
    outputs = rng.randint(1, 3 * size * per_tile)
    src = rng.randrange(2)
    command = expert_ffn.pass_command(
        config, tokens, inputs, outputs, pattern, swiglu=swiglu,
        activation=mode != "drain" and rng.random() < 0.5, src=src,
        to_buffer=mode in ("plain", "swiglu", "drain"), accumulate=mode == "accumulate",
        drain=mode == "drain", swiglu_multiplier=rng.randrange(1 << 13, 1 << MULT_BITS),
        swiglu_shift=rng.randint(18, 21))          # int8 x int8 products back to int8
    tiles, channels = command["tiles"], command["tiles"] * config.mac_rows
    half = window // 2
    image = _Data(half)
    at, patch, patches = image.at, image.put, image.patches

    src_buffer, dst_buffer = (Buffer.ACT1, Buffer.ACT0) if src else (Buffer.ACT0, Buffer.ACT1)
    src_row = command["src_row_words"] * config.act_word_bytes
    dst_row = command["dst_row_words"] * config.act_word_bytes
    program = isa.Program(config)
    loads = []
    if mode != "drain":
        patch("x", nrng.integers(-128, 128, tokens * inputs, dtype=np.int8).tobytes())
        loads.append(dict(buffer=src_buffer, dram=at["x"], rows=tokens, row_bytes=inputs,
                          dram_stride=inputs, sram_stride=src_row))
        weight = prune(torch.from_numpy(nrng.integers(-128, 128, (channels, inputs))), pattern)
        words = pack(weight, pattern, config).data
        patch("w", words)
    params = _channel_params(rng, nrng, config, channels, inputs, pattern, mode == "drain",
                             fault == "params")
    patch("p", params.tobytes())
    loads.append(dict(buffer=Buffer.PARAMS, dram=at["p"], row_bytes=len(params.tobytes())))
    if command["activation"]:
        patch("t", nrng.integers(-128, 128, 256, dtype=np.int8).tobytes())
        loads.append(dict(buffer=Buffer.TABLE, dram=at["t"], row_bytes=256))
    out_rows = tokens
    if mode == "accumulate":
        gates = records.zeros(TOKEN_GATE.dram, tokens)
        out_rows = rng.randint(1, 2 * tokens)
        rows = nrng.integers(0, out_rows, tokens)
        for n in range(1, tokens):                   # rows named twice in a row
            if rng.random() < 0.3:
                rows[n] = rows[n - 1]
        gates["token"] = rows
        gates["gate"] = nrng.integers(0, (1 << GATE_FRAC_BITS) + 1, tokens)
        if fault == "gates":
            gates[rng.randrange(tokens)]["token"] = rng.choice(
                [config.max_tokens, config.out_buffer_words // tiles])
        patch("g", gates.tobytes())
        loads.append(dict(buffer=Buffer.GATES, dram=at["g"], row_bytes=len(gates.tobytes())))
    out_stride = out_row_bytes(config, channels)
    if mode in ("accumulate", "drain"):
        patch("o", nrng.integers(-(1 << 20), 1 << 20, out_rows * channels,
                                 dtype=np.int32).tobytes())
        loads.append(dict(buffer=Buffer.OUT, dram=at["o"], rows=out_rows,
                          row_bytes=4 * channels, dram_stride=4 * channels,
                          sram_stride=out_stride))
    preloaded = mode != "drain" and fault != "window" and rng.random() < 0.4
    sram = 0
    if preloaded:
        bus = config.axi_data_bytes
        sram = bus * rng.randrange((buffer_bytes(config)[Buffer.WEIGHT] - len(words)) // bus + 1)
        loads.append(dict(buffer=Buffer.WEIGHT, dram=at["w"], row_bytes=len(words), sram=sram))
    for n, load in enumerate(loads):
        program.load(**load, push_next=n == len(loads) - 1)
    weights = window - 8 if fault == "window" else at.get("w", 0)
    program.linear(command, weights=weights, preloaded=preloaded, sram=sram, pop_prev=True,
                   push_next=True)
    if mode == "accumulate":
        program.store(Buffer.OUT, dram=half, rows=out_rows, row_bytes=4 * channels,
                      dram_stride=4 * channels, sram_stride=out_stride, pop_prev=True)
    else:
        program.store(dst_buffer, dram=half, rows=tokens, row_bytes=dst_row,
                      dram_stride=dst_row, sram_stride=dst_row, pop_prev=True,
                      push_prev=mode == "drain")
        if mode == "drain":
            program.store(Buffer.OUT, dram=half + 4096, rows=out_rows, row_bytes=4 * channels,
                          dram_stride=4 * channels, sram_stride=out_stride)
    return program.finish().encode(), patches


EXPERT_LOOP_FAULTS = ("count", "token", "descriptors", "descriptor", "table", "weights",
                      "params", "gather")


def random_expert_loop(rng: random.Random, config, window: int, bad: float = 0.1,
                       fault: str | None = None, size: int = 1,
                       experts: int | None = None) -> tuple[bytes, list]:
    """An EXPERT_LOOP program with its data: 1 .. 5 experts (some without tokens) at a random built
    pattern, SwiGLU or with their activation tables, each with random distinct tokens and gates in
    DISPATCH (loaded from DRAM), its descriptor, packed weights, parameters and table in DRAM; the
    tokens' rows in ACT0 and random sums in OUT. With probability `bad` (or always, when `fault`
    names one of `EXPERT_LOOP_FAULTS`) one thing is refused: a count past the queue's capacity, a
    queued token past ``max_tokens``, the descriptors or an expert's table or weights past the
    window, a descriptor value past its on-chip field, a parameter record, a gathered row past
    ACT0. `size` scales the shapes; `experts` fixes their number (every one with tokens). Results (OUT's rows, then ACT1's) are stored from
    ``window // 2`` on. Returns the program and its DRAM patches."""
    import numpy as np
    import torch

    from ..formats import instructions, records
    from ..formats.expert_ffn import chunk_inputs
    from ..formats.buffers import act_row_bytes, out_row_bytes
    from ..formats.epilogue import ACTIVATION_TABLE
    from ..formats.instructions import DESCRIPTOR
    from ..formats.numbers import GATE_FRAC_BITS, MULT_BITS
    from ..formats.router import TOKEN_GATE, dispatch_table
    from ..sw.sparsity import pack, prune

    nrng = np.random.default_rng(rng.randrange(1 << 30))
    if fault is None and rng.random() < bad:
        fault = rng.choice(EXPERT_LOOP_FAULTS)
    pattern = rng.choice(config.patterns)
    swiglu = rng.random() < 0.5
    every_one = experts is not None
    experts = experts if every_one else rng.randint(1, 5)
    tokens = rng.randint(1, min(6 * size, config.max_tokens, config.dispatch_capacity))
    d_model = rng.randint(1, 2 * size * chunk_inputs(config, pattern))
    if fault == "gather":
        # rows so wide that the row of token max_tokens - 1 lies past ACT0's end (where the
        # configuration allows rows that wide; otherwise a token past max_tokens instead)
        wide = (config.act_buffer_words // config.max_tokens + 1) * config.act_word_bytes
        if wide <= config.max_d_model:
            d_model = wide
        else:
            fault = "token"
    d_ff = rng.randint(1, 2 * size * config.mac_rows)
    body = {"experts": experts, "d_model": d_model, "d_ff": d_ff,
            "pattern": config.patterns.index(pattern), "swiglu": int(swiglu),
            "prefetch": rng.randrange(2)}
    half = window // 2
    image = _Data(half)
    table_layout = dispatch_table(config)
    counts_at = table_layout["counts"].offset // 8
    queues_at = table_layout["queues"].offset // 8
    queue_bytes = config.dispatch_capacity * TOKEN_GATE.size

    counts = records.zeros(table_layout["counts"].shape.elem_shape, experts)
    queues = []
    for expert in range(experts):
        count = rng.randint(1 if every_one else 0, tokens) if every_one or rng.random() < 0.8 \
            else 0
        entries = records.zeros(TOKEN_GATE.dram, count)
        entries["token"] = nrng.permutation(tokens)[:count]
        entries["gate"] = nrng.integers(0, (1 << GATE_FRAC_BITS) + 1, count)
        counts[expert]["count"] = count
        queues.append(entries)
    active = [e for e in range(experts) if counts[e]["count"]]
    if fault is not None and not active:
        counts[0]["count"] = 1
        queues[0] = records.zeros(TOKEN_GATE.dram, 1)
        active = [0]
    victim = rng.choice(active) if active else 0
    victim_pass = rng.choice(["first", "down"])
    if fault == "count":
        counts[victim]["count"] = config.dispatch_capacity + 1
    if fault == "token":
        queues[victim][rng.randrange(len(queues[victim]))]["token"] = config.max_tokens
    if fault == "gather":
        queues[victim][0]["token"] = config.max_tokens - 1
    descriptors = records.zeros(DESCRIPTOR.dram, experts)
    for expert in range(experts):
        count = max(1, len(queues[expert]))
        first, down = instructions.expert_loop_commands(
            config, body, count, rng.randrange(1 << 13, 1 << MULT_BITS), rng.randint(18, 21))
        fields = {}
        for name, command, inputs in (("first", first, d_model), ("down", down, d_ff)):
            channels = command["tiles"] * config.mac_rows
            weight = prune(torch.from_numpy(nrng.integers(-128, 128, (channels, inputs))), pattern)
            fields[name] = image.put(f"{expert}.{name}", pack(weight, pattern, config).data)
            params = _channel_params(rng, nrng, config, channels, inputs, pattern, False,
                                     fault == "params" and expert == victim
                                     and name == victim_pass)
            fields[f"{name}_params"] = image.put(f"{expert}.{name}_params", params.tobytes())
        fields["table"] = image.put(f"{expert}.table", nrng.integers(
            -128, 128, ACTIVATION_TABLE.size // 8, dtype=np.int8).tobytes())
        fields["swiglu_multiplier"] = first["swiglu_multiplier"]
        fields["swiglu_shift"] = first["swiglu_shift"]
        for name, value in fields.items():
            descriptors[expert][name] = value
    if fault == "descriptor":
        descriptors[victim]["swiglu_shift"] = 100
    if fault == "table":
        descriptors[victim]["table"] = window - 100
    if fault == "weights":
        descriptors[victim][victim_pass] = window - 8
    table = image.put("descriptors", descriptors.tobytes())
    if fault == "descriptors":
        table = window - DESCRIPTOR.size // 2        # every descriptor past the window's end
    x = image.put("x", nrng.integers(-128, 128, tokens * d_model, dtype=np.int8).tobytes())
    down_channels = instructions.expert_loop_commands(config, body, 1)[1]["tiles"] * \
        config.mac_rows
    out_rows = tokens
    out_row = out_row_bytes(config, down_channels)
    out = image.put("out", nrng.integers(-(1 << 20), 1 << 20, out_rows * down_channels,
                                         dtype=np.int32).tobytes())
    counts_dram = image.put("counts", counts.tobytes())
    queue_dram = {e: image.put(f"queue{e}", queues[e].tobytes()) for e in range(experts)
                  if len(queues[e])}

    loads = [dict(buffer=Buffer.ACT0, dram=x, rows=tokens, row_bytes=d_model,
                  dram_stride=d_model, sram_stride=act_row_bytes(config, d_model)),
             dict(buffer=Buffer.OUT, dram=out, rows=out_rows, row_bytes=4 * down_channels,
                  dram_stride=4 * down_channels, sram_stride=out_row),
             dict(buffer=Buffer.DISPATCH, dram=counts_dram, row_bytes=len(counts.tobytes()),
                  sram=counts_at)]
    loads += [dict(buffer=Buffer.DISPATCH, dram=at, row_bytes=len(queues[expert].tobytes()),
                   sram=queues_at + expert * queue_bytes) for expert, at in queue_dram.items()]
    program = isa.Program(config)
    for n, load in enumerate(loads):
        program.load(**load, push_next=n == len(loads) - 1)
    program.expert_loop(**body, table=table, pop_prev=True, push_next=True)
    program.store(Buffer.OUT, dram=half, rows=out_rows, row_bytes=4 * down_channels,
                  dram_stride=4 * down_channels, sram_stride=out_row, pop_prev=True)
    first_row = instructions.expert_loop_commands(config, body, 1)[0]["dst_row_words"] * \
        config.act_word_bytes
    program.store(Buffer.ACT1, dram=half + out_rows * 4 * down_channels, rows=tokens,
                  row_bytes=first_row, dram_stride=first_row, sram_stride=first_row)
    return program.finish().encode(), image.patches


ROUTE_FAULTS = ("requant", "bias", "logits", "rows")


def random_route(rng: random.Random, config, window: int, bad: float = 0.1,
                 fault: str | None = None) -> tuple[bytes, list]:
    """A ROUTE program with its data: 2 .. 8 experts, k of them a token, a random mode (group-limited
    now and then under ``sigmoid_bias``), the logits computed from the tokens' rows in ACT0 and the
    router weights in ROUTER_WEIGHTS (their requantisations scaled to Q8 logits of a few units) or
    given in DRAM, selection biases in ROUTER_BIAS. With probability `bad` (or always, when `fault`
    names one of `ROUTE_FAULTS`) one thing is refused: a requantisation or a bias past its on-chip
    field, given logits past the window, token rows past ACT0. DISPATCH's counts and queues are
    stored from ``window // 2`` on. Returns the program and its DRAM patches."""
    import numpy as np

    from ..formats import records
    from ..formats import router as router_formats
    from ..formats.buffers import act_row_bytes
    from ..formats.numbers import BIAS_BITS, MULT_BITS
    from ..formats.router import (LOGIT, SELECTION_BIAS, TOKEN_GATE, RouterMode, dispatch_table,
                                  router_record)

    nrng = np.random.default_rng(rng.randrange(1 << 30))
    if fault is None and rng.random() < bad:
        fault = rng.choice(ROUTE_FAULTS)
    while True:
        experts = rng.randint(2, min(8, config.max_experts))
        mode = rng.choice(list(RouterMode))
        k = 1 if mode is RouterMode.TOP1 else rng.randint(1, min(experts, config.max_k, 4))
        groups, group_size, topk_groups = 1, 0, 1
        if mode is RouterMode.SIGMOID_BIAS and experts % 2 == 0 and rng.random() < 0.5:
            groups = 2
            group_size, topk_groups = experts // 2, rng.randint(1, 2)
        tokens = rng.randint(3 if fault == "rows" else 1, min(8, config.max_tokens))
        compute = fault in ("requant", "rows") or (fault != "logits" and rng.random() < 0.5)
        d_model = rng.randint(1, min(config.max_d_model, 3 * config.router_lanes))
        command = {"tokens": tokens, "experts": experts, "k": k, "mode": mode, "groups": groups,
                   "group_size": group_size, "topk_groups": topk_groups, "compute": int(compute),
                   "chunks": -(-d_model // config.router_lanes) if compute else 0}
        if not router_formats.check(config, command):
            break
    half = window // 2
    image = _Data(half)
    program = isa.Program(config, checked=fault != "rows")      # rows past ACT0: refused
    loads = []
    row_words = -(-d_model // config.act_word_bytes)
    logits_at = 0
    if compute:
        x = image.put("x", nrng.integers(-128, 128, tokens * d_model, dtype=np.int8).tobytes())
        loads.append(dict(buffer=Buffer.ACT0, dram=x, rows=tokens, row_bytes=d_model,
                          dram_stride=d_model, sram_stride=act_row_bytes(config, d_model)))
        weights = records.zeros(router_record(config), experts)
        weights["weights"][:, :d_model] = nrng.integers(-128, 128, (experts, d_model))
        spread = max(1, d_model) ** 0.5 * 74 * 74          # a dot product's spread
        weights["requant"]["multiplier"] = nrng.integers(1 << 13, 1 << MULT_BITS, experts)
        weights["requant"]["shift"] = int(np.log2(spread * (1 << 14) / (4 << 8)))
        if fault == "requant":
            weights[rng.randrange(experts)]["requant"]["multiplier"] = 1 << MULT_BITS
        at = image.put("weights", weights.tobytes())
        loads.append(dict(buffer=Buffer.ROUTER_WEIGHTS, dram=at, row_bytes=len(weights.tobytes())))
        if fault == "rows":                 # the last token's row past ACT0's end
            row_words = config.act_buffer_words // (tokens - 1) + 1
    else:
        logits = records.zeros(LOGIT.dram, tokens * experts)
        logits["value"] = nrng.integers(-(4 << 8), 4 << 8, tokens * experts)
        logits_at = window - 8 if fault == "logits" else image.put("logits", logits.tobytes())
    if mode is RouterMode.SIGMOID_BIAS:
        biases = records.zeros(SELECTION_BIAS.dram, experts)
        biases["bias"] = nrng.integers(-(1 << 14), 1 << 14, experts)
        if fault == "bias":
            biases[rng.randrange(experts)]["bias"] = 1 << (BIAS_BITS - 1)
        at = image.put("bias", biases.tobytes())
        loads.append(dict(buffer=Buffer.ROUTER_BIAS, dram=at, row_bytes=len(biases.tobytes())))
    for n, load in enumerate(loads):
        program.load(**load, push_next=n == len(loads) - 1)
    program.add(isa.Opcode.ROUTE, {"command": command, "row_words": row_words,
                                   "logits": logits_at}, pop_prev=bool(loads), push_next=True)
    layout = dispatch_table(config)
    counts_at, queues_at = layout["counts"].offset // 8, layout["queues"].offset // 8
    queue_bytes = config.dispatch_capacity * TOKEN_GATE.size
    program.store(Buffer.DISPATCH, dram=half, row_bytes=2 * experts, sram=counts_at,
                  pop_prev=True)
    program.store(Buffer.DISPATCH, dram=half + 64, rows=experts, row_bytes=TOKEN_GATE.size * tokens,
                  dram_stride=TOKEN_GATE.size * tokens, sram=queues_at, sram_stride=queue_bytes)
    return program.finish().encode(), image.patches


ATTENTION_FAULTS = ("command", "window")


def random_attention(rng: random.Random, config, window: int, bad: float = 0.1,
                     fault: str | None = None) -> tuple[bytes, list]:
    """An ATTENTION program: a random call the unit holds (grouped-query heads now and then, causal
    half the time, heads of one to three bus words, up to three query groups) over the window's
    bytes as Q, K and V, at any byte offsets in its first half, writing O into the second; the
    requantisations from scales that keep the logits to a few units. With probability `bad` (or
    always, when `fault` names one of `ATTENTION_FAULTS`) it is refused: a command the unit
    refuses, or rows past the window. Returns the program and its DRAM patches (none: the
    window's bytes are the data)."""
    from ..formats.attention import AttentionShape, command_fields
    from ..sw.attention import AttentionParams

    if fault is None and rng.random() < bad:
        fault = rng.choice(ATTENTION_FAULTS)
    word = config.axi_data_bytes
    while True:
        kv_heads = rng.randint(1, min(3, config.max_heads))
        rep = rng.choice([1, 1, 2, 3])
        head_words = rng.randint(1, 3)
        if kv_heads * rep * head_words <= config.attention_row_words \
                and kv_heads * rep <= config.max_heads:
            break
    seq_kv = rng.randint(1, min(3 * config.attention_group + 2, config.max_seq_len))
    seq_q = rng.randint(1, seq_kv)
    shape = AttentionShape(seq_q, seq_kv, kv_heads * rep, kv_heads, head_words * word,
                           causal=rng.random() < 0.5)
    scale = 2.0 / 74                        # int8 values of spread ~74: a few units each
    params = AttentionParams.from_scales(scale, scale, scale, scale * rng.uniform(0.5, 2),
                                         shape.head_dim)
    half = window // 2
    row_q = shape.heads * shape.head_dim
    row_kv = shape.kv_heads * shape.head_dim
    q, k, v = (rng.randrange(half - rows * row)
               for rows, row in ((seq_q, row_q), (seq_kv, row_kv), (seq_kv, row_kv)))
    o = half + rng.randrange(half - seq_q * row_q)
    if fault == "window":
        o = window - seq_q * row_q + rng.randint(1, row_q)
    command = command_fields(config, shape, params)
    if fault == "command":
        command.update(rng.choice([{"seq_q": 0}, {"kv_heads": 0}, {"head_words": 0},
                                   {"score_shift": 60},
                                   {"head_words": config.attention_row_words + 1}]))
    program = isa.Program(config, checked=fault is None)
    program.add(Opcode.ATTENTION, {"command": command, "q": q, "k": k, "v": v, "o": o})
    return program.finish().encode(), []
