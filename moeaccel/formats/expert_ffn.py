"""The Expert-FFN engine's formats: its command, the packed weight word, the streams into and out of the
MAC array, the writes that fill its buffers, and its counters; `pass_command`, the arithmetic of a
pass's counts, and `check`, the commands the engine refuses."""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .epilogue import CHANNEL_PARAMS
from .numbers import MULT_BITS, SHIFT_BITS, SHIFT_MAX, count_bits, index_bits
from .router import TOKEN_GATE
from .rules import Fields, check_rules, normalise

__all__ = ["EXPERT_ACTIVATIONS", "EXPERT_FFN_COUNTERS", "weight_word", "weight_word_beats",
           "weight_word_bytes", "chunk_inputs", "pattern_bits", "mac_in", "mac_out", "ffn_tag",
           "ffn_command", "ffn_out", "act_write", "params_write", "gates_write", "tile_channels",
           "pass_command", "weight_bytes", "pass_weight_bytes", "rules", "check"]

# The expert FFNs the engine runs: SwiGLU (gate and up fused in one pass), GELU and ReLU (the
# activation table).
EXPERT_ACTIVATIONS = ("swiglu", "gelu", "relu")

# Counters of one pass (`perf`), cleared when a pass starts.
EXPERT_FFN_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),           # cycles with a pass under way
    "mac_cycles": unsigned(32),            # cycles a weight word entered the array
    "weight_stall_cycles": unsigned(32),   # cycles the array waited for a weight block to arrive
    "output_stall_cycles": unsigned(32),   # cycles a result row waited for the `o` stream
})


def weight_word(rows: int, cols: int, pattern) -> data.StructLayout:
    """One word of a weight block: for each of `rows` output channels, `cols` kept int8 values (lane
    `l` belongs to group ``l // N`` of the chunk) and, unless dense, one code per group naming which
    `N` of its `M` inputs were kept (the rank of the index set among ``combinations(range(M), N)``).

    Words are what one cycle of the MAC array consumes; `sw.sparsity.pack` writes them, bytes
    little-endian, each padded to whole bus beats (`weight_word_bytes`).
    """
    fields = {"values": data.ArrayLayout(data.ArrayLayout(signed(8), cols), rows)}
    if pattern.code_bits:
        fields["codes"] = data.ArrayLayout(
            data.ArrayLayout(unsigned(pattern.code_bits), cols // pattern.n), rows)
    return data.StructLayout(fields)


def weight_word_beats(config, pattern) -> int:
    """Bus beats of one packed weight word (each word is padded to whole beats)."""
    bits = weight_word(config.mac_rows, config.mac_cols, pattern).size
    return -(-bits // config.axi_data_width)


def weight_word_bytes(config, pattern) -> int:
    """Bytes of one packed weight word in DRAM and in WEIGHT: whole bus beats."""
    return weight_word_beats(config, pattern) * config.axi_data_bytes


def chunk_inputs(config, pattern) -> int:
    """Input elements one weight word covers: ``mac_cols * M / N``."""
    return config.mac_cols * pattern.m // pattern.n


def pattern_bits(config) -> int:
    """Width of a pattern selector: an index into ``config.patterns`` (0 is dense)."""
    return index_bits(len(config.patterns))


def mac_in(config, tag_bits: int = 0) -> data.StructLayout:
    """One cycle of work for the MAC array: an activation window, a weight word, the pattern, and
    whether this word starts (`first`) or ends (`last`) an output row; the tag travels along."""
    return data.StructLayout({
        "window": data.ArrayLayout(signed(8), config.act_word_bytes),
        "weights": unsigned(config.weight_word_bits),
        "pattern": unsigned(pattern_bits(config)),
        "first": unsigned(1),
        "last": unsigned(1),
        "tag": unsigned(tag_bits),
    })


def mac_out(config, tag_bits: int = 0) -> data.StructLayout:
    """A finished row of ``mac_rows`` int32 dot products, with the tag of its last word."""
    return data.StructLayout({
        "sums": data.ArrayLayout(signed(32), config.mac_rows),
        "tag": unsigned(tag_bits),
    })


def ffn_tag(config) -> data.StructLayout:
    """What travels with a row through the Expert-FFN engine: its token, its output tile, and
    whether it is the pass's last row."""
    return data.StructLayout({
        "token": unsigned(index_bits(config.max_tokens)),
        "tile": unsigned(index_bits(config.max_tiles)),
        "last": unsigned(1),
    })


def ffn_command(config) -> data.StructLayout:
    """One pass of the Expert-FFN engine: ``tokens`` rows of activations (from act buffer `src`, each
    ``src_row_words`` words) times ``tiles`` weight blocks of ``chunks`` words each.

    ``swiglu``: each tile holds ``mac_rows/2`` gate channels then as many up channels; the engine
    outputs ``requantise(silu(gate) * up)`` with ``swiglu_multiplier``/``swiglu_shift``.
    ``activation``: the epilogue's table applies (to the gate channels under ``swiglu``).
    ``to_buffer``: the rows go into the other activation buffer (``dst_row_words`` words per
    token), ready as the input of the next pass, instead of out on the `o` stream.
    ``accumulate``: each row, times its token's gate weight, is added into the token's row of the
    output accumulator (the gate table maps the pass's tokens to rows and gates).
    ``drain``: no weights; rows ``0 .. tokens-1`` of the output accumulator (``tiles`` words each)
    go through the epilogue and out on `o` (or into the other activation buffer), and are cleared.
    """
    words = count_bits(config.act_buffer_words)
    return data.StructLayout({
        "tokens": unsigned(count_bits(config.max_tokens)),
        "tiles": unsigned(count_bits(config.max_tiles)),
        "chunks": unsigned(count_bits(config.weight_bank_words)),
        "pattern": unsigned(pattern_bits(config)),
        "src": unsigned(1),
        "src_row_words": unsigned(words),
        "to_buffer": unsigned(1),
        "dst_row_words": unsigned(words),
        "activation": unsigned(1),
        "swiglu": unsigned(1),
        "swiglu_multiplier": unsigned(MULT_BITS),
        "swiglu_shift": unsigned(SHIFT_BITS),
        "accumulate": unsigned(1),
        "drain": unsigned(1),
    })


def ffn_out(config) -> data.StructLayout:
    """A result row: ``mac_rows`` int8 values (the first ``mac_rows/2`` under SwiGLU) of output
    channels ``tile * per_tile ...``, for one token."""
    return data.StructLayout({
        "values": data.ArrayLayout(signed(8), config.mac_rows),
        "tag": ffn_tag(config),
    })


def act_write(config) -> data.StructLayout:
    """A word written into activation buffer `buffer` at `addr`."""
    return data.StructLayout({
        "buffer": unsigned(1),
        "addr": unsigned(index_bits(config.act_buffer_words)),
        "data": data.ArrayLayout(signed(8), config.act_word_bytes),
    })


def params_write(config) -> data.StructLayout:
    """The epilogue parameters of the ``mac_rows`` channels of output tile `tile`."""
    return data.StructLayout({
        "tile": unsigned(index_bits(config.max_tiles)),
        "params": data.ArrayLayout(CHANNEL_PARAMS.onchip(config), config.mac_rows),
    })


def gates_write(config) -> data.StructLayout:
    """The gate-table entry of the pass's token `slot`."""
    return data.StructLayout({
        "slot": unsigned(index_bits(config.max_tokens)),
        "entry": TOKEN_GATE.onchip(config),
    })


def tile_channels(config, swiglu: bool) -> int:
    """Output channels a tile of ``mac_rows`` array rows produces: half of them under SwiGLU (the
    other half are the up channels the gate channels multiply)."""
    return config.mac_rows // 2 if swiglu else config.mac_rows


def pass_command(config, tokens: int, inputs: int, outputs: int, pattern, *, swiglu=False,
                 activation=False, src=0, to_buffer=False, accumulate=False, drain=False,
                 swiglu_multiplier=0, swiglu_shift=0) -> dict:
    """The `ffn_command` fields of a pass of ``tokens x inputs -> outputs`` at `pattern` (a
    `SparsityPattern` built into `config`): ``outputs`` channels in tiles of ``mac_rows`` (of
    ``mac_rows/2`` hidden channels under SwiGLU), ``inputs`` in chunks of `chunk_inputs`, rows in
    whole activation words. Nothing is checked here: `check` says what the engine refuses."""
    per_tile = tile_channels(config, swiglu)
    tiles = -(-outputs // per_tile)
    return {
        "tokens": tokens, "tiles": tiles, "chunks": -(-inputs // chunk_inputs(config, pattern)),
        "pattern": config.patterns.index(pattern), "src": int(src),
        "src_row_words": -(-inputs // config.act_word_bytes), "to_buffer": int(to_buffer),
        "dst_row_words": -(-tiles * per_tile // config.act_word_bytes),
        "activation": int(activation), "swiglu": int(swiglu),
        "swiglu_multiplier": swiglu_multiplier, "swiglu_shift": swiglu_shift,
        "accumulate": int(accumulate), "drain": int(drain),
    }


def weight_bytes(config, command: dict) -> int:
    """Bytes of a pass's packed weight words (none for a drain)."""
    return pass_weight_bytes(config, Fields.of(command))


def pass_weight_bytes(config, c):
    """`weight_bytes` of a command `c` as `rules` take it (a decoded command, or an Amaranth view
    of one): ``tiles x chunks`` words of its pattern, none for a drain or a pattern not built."""
    per_word = 0
    for index, pattern in enumerate(config.patterns):
        per_word = per_word + (c.pattern == index) * weight_word_bytes(config, pattern)
    return (c.drain == 0) * c.tiles * c.chunks * per_word


def rules(config, c):
    """The engine's refusals of command `c` (`moeaccel.formats.rules`): counts of zero or beyond
    the buffers, a pattern that is not built, rows that would overrun an activation buffer or the
    output accumulator, and flags that do not go together."""
    rows, half = config.mac_rows, config.mac_rows // 2
    word, words = config.act_word_bytes, config.act_buffer_words
    plain = c.swiglu == 0
    weights = c.drain == 0
    return [
        (lambda: f"tokens={c.tokens} (1 .. {config.max_tokens})",
         (c.tokens == 0) | (c.tokens > config.max_tokens)),
        (lambda: f"tiles={c.tiles} (1 .. {config.max_tiles})",
         (c.tiles == 0) | (c.tiles > config.max_tiles)),
        (lambda: f"chunks={c.chunks} (1 .. {config.weight_bank_words})",
         weights & ((c.chunks == 0) | (c.chunks > config.weight_bank_words))),
        (lambda: f"pattern={c.pattern} ({len(config.patterns)} built)",
         c.pattern >= len(config.patterns)),
        (lambda: f"a drain of {c.tokens} x {c.tiles} words (OUT holds {config.out_buffer_words})",
         (c.drain == 1) & (c.tokens * c.tiles > config.out_buffer_words)),
        (lambda: f"{c.tokens} rows of {c.src_row_words} words (an activation buffer holds "
                 f"{words})",
         weights & (c.tokens * c.src_row_words > words)),
        (lambda: f"result rows of {c.dst_row_words} words for {c.tiles} tiles of "
                 f"{half if c.swiglu else rows} channels",
         (c.to_buffer == 1) & ((plain & (c.dst_row_words * word < c.tiles * rows))
                               | ((c.swiglu == 1) & (c.dst_row_words * word < c.tiles * half)))),
        (lambda: f"{c.tokens} result rows of {c.dst_row_words} words (an activation buffer holds "
                 f"{words})",
         (c.to_buffer == 1) & (c.tokens * c.dst_row_words > words)),
        (lambda: "swiglu with accumulate or drain (a SwiGLU pass feeds the next pass)",
         (c.swiglu == 1) & ((c.accumulate == 1) | (c.drain == 1))),
        (lambda: "accumulate with to_buffer or drain (a row goes to one place)",
         (c.accumulate == 1) & ((c.to_buffer == 1) | (c.drain == 1))),
        (lambda: f"swiglu_shift={c.swiglu_shift} (0 .. {SHIFT_MAX})",
         (c.swiglu == 1) & (c.swiglu_shift > SHIFT_MAX)),
    ]


def check(config, command: dict) -> list[str]:
    """What the engine refuses in an `ffn_command` (empty: it runs)."""
    command, reasons = normalise(ffn_command(config), command)
    return reasons or check_rules(rules(config, Fields.of(command)))
