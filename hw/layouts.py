"""Payload layouts of the streams between blocks, as `lib.data` layouts: the one definition that the
gateware, the emulator, the host and the testbenches encode and decode with.

Field widths come from `sw.numerics`, the definition of the arithmetic, never restated here.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from ..sw import numerics as nx
from ..sw.reference import ROUTER_MODES

__all__ = ["CHANNEL_PARAMS", "EPILOGUE_LANE", "TABLE_WRITE", "epilogue_in", "epilogue_out", "weight_word",
           "pattern_bits", "mac_in", "mac_out", "ffn_tag", "ffn_command", "ffn_out", "act_write",
           "params_write", "gate_entry", "gates_write", "RouterMode", "router_command",
           "dispatch_entry", "router_logit", "bias_write", "router_token", "router_weight_write",
           "attention_command", "attention_word"]

# Per-channel epilogue parameters.
CHANNEL_PARAMS = data.StructLayout({
    "bias": signed(32),
    "multiplier": unsigned(nx.MULT_BITS),
    "shift": unsigned(nx.SHIFT_BITS),
})

# One output channel's operands: the int32 accumulator, its parameters, and whether the activation
# table applies to it (else the requantised value passes through).
EPILOGUE_LANE = data.StructLayout({
    "acc": signed(32),
    "params": CHANNEL_PARAMS,
    "apply_table": unsigned(1),
})

# One entry of the 256-entry activation table: entry `index` is the output for input `index - 128`.
TABLE_WRITE = data.StructLayout({
    "index": unsigned(8),
    "value": signed(8),
})


def epilogue_in(lanes: int, tag_bits: int = 0) -> data.StructLayout:
    """A row of `lanes` accumulators with their parameters, and a tag that travels with the row."""
    return data.StructLayout({
        "lanes": data.ArrayLayout(EPILOGUE_LANE, lanes),
        "tag": unsigned(tag_bits),
    })


def epilogue_out(lanes: int, tag_bits: int = 0) -> data.StructLayout:
    """A row of `lanes` int8 results, with the tag its input row carried."""
    return data.StructLayout({
        "values": data.ArrayLayout(signed(8), lanes),
        "tag": unsigned(tag_bits),
    })


def weight_word(rows: int, cols: int, pattern) -> data.StructLayout:
    """One word of a weight block: for each of `rows` output channels, `cols` kept int8 values (lane
    `l` belongs to group ``l // N`` of the chunk) and, unless dense, one code per group naming which
    `N` of its `M` inputs were kept (the rank of the index set among ``combinations(range(M), N)``).

    Words are what one cycle of the MAC array consumes; `sw.sparsity.pack` writes them, bytes
    little-endian, each padded to whole bus beats.
    """
    fields = {"values": data.ArrayLayout(data.ArrayLayout(signed(8), cols), rows)}
    if pattern.code_bits:
        fields["codes"] = data.ArrayLayout(
            data.ArrayLayout(unsigned(pattern.code_bits), cols // pattern.n), rows)
    return data.StructLayout(fields)


def pattern_bits(config) -> int:
    """Width of a pattern selector: an index into ``config.patterns`` (0 is dense)."""
    return max(1, (len(config.patterns) - 1).bit_length())


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


def _index_bits(count: int) -> int:
    """Bits of an index below `count` (at least one)."""
    return max(1, (count - 1).bit_length())


def ffn_tag(config) -> data.StructLayout:
    """What travels with a row through the Expert-FFN engine: its token, its output tile, and
    whether it is the pass's last row."""
    return data.StructLayout({
        "token": unsigned(_index_bits(config.max_tokens)),
        "tile": unsigned(_index_bits(config.max_tiles)),
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
    go through the epilogue and out on `o`, and are cleared.
    """
    words = config.act_buffer_words.bit_length()
    return data.StructLayout({
        "tokens": unsigned(config.max_tokens.bit_length()),
        "tiles": unsigned(config.max_tiles.bit_length()),
        "chunks": unsigned(config.weight_bank_words.bit_length()),
        "pattern": unsigned(pattern_bits(config)),
        "src": unsigned(1),
        "src_row_words": unsigned(words),
        "to_buffer": unsigned(1),
        "dst_row_words": unsigned(words),
        "activation": unsigned(1),
        "swiglu": unsigned(1),
        "swiglu_multiplier": unsigned(nx.MULT_BITS),
        "swiglu_shift": unsigned(nx.SHIFT_BITS),
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
        "addr": unsigned(_index_bits(config.act_buffer_words)),
        "data": data.ArrayLayout(signed(8), config.act_word_bytes),
    })


def params_write(config) -> data.StructLayout:
    """The epilogue parameters of the ``mac_rows`` channels of output tile `tile`."""
    return data.StructLayout({
        "tile": unsigned(_index_bits(config.max_tiles)),
        "params": data.ArrayLayout(CHANNEL_PARAMS, config.mac_rows),
    })


def gate_entry(config) -> data.StructLayout:
    """Where a token of an expert's queue goes: its row of the output accumulator, and its Q15 gate
    weight."""
    return data.StructLayout({
        "row": unsigned(_index_bits(config.max_tokens)),
        "gate": unsigned(nx.GATE_FRAC_BITS + 1),
    })


def gates_write(config) -> data.StructLayout:
    """The gate-table entry of the pass's token `slot`."""
    return data.StructLayout({
        "slot": unsigned(_index_bits(config.max_tokens)),
        "entry": gate_entry(config),
    })


class RouterMode(enum.Enum, shape=unsigned(2)):
    """How the router turns logits into gate weights (`sw.reference.ROUTER_MODES`, same order)."""

    SOFTMAX_TOPK_RENORM = 0
    SOFTMAX_TOPK = 1
    TOP1 = 2
    SIGMOID_BIAS = 3

    @classmethod
    def named(cls, name: str) -> "RouterMode":
        return cls(ROUTER_MODES.index(name))


assert [mode.name.lower() for mode in RouterMode] == list(ROUTER_MODES)


def router_command(config) -> data.StructLayout:
    """A routing run: ``tokens`` tokens of ``experts`` logits each, ``k`` chosen per token; under
    ``sigmoid_bias``, selection limited to the best ``topk_groups`` of ``groups`` groups of
    ``group_size`` consecutive experts (``groups == 1``: no limit). The dispatch table's counts are
    cleared first. ``compute``: the logits come from the router's own GEMM over tokens of ``chunks``
    words (`router_token`) and the loaded router weights, instead of the `logits` stream."""
    return data.StructLayout({
        "tokens": unsigned(config.max_tokens.bit_length()),
        "experts": unsigned(config.max_experts.bit_length()),
        "k": unsigned(config.max_k.bit_length()),
        "mode": RouterMode,
        "groups": unsigned(config.max_groups.bit_length()),
        "group_size": unsigned(config.max_experts.bit_length()),
        "topk_groups": unsigned(config.max_groups.bit_length()),
        "compute": unsigned(1),
        "chunks": unsigned(config.router_chunks.bit_length()),
    })


def dispatch_entry(config) -> data.StructLayout:
    """One slot of an expert's queue in the dispatch table: a token and its Q15 gate weight."""
    return data.StructLayout({
        "token": unsigned(_index_bits(config.max_tokens)),
        "gate": unsigned(nx.GATE_FRAC_BITS + 1),
    })


def router_logit(config) -> data.StructLayout:
    """One router logit (int16, Q8); the logits of a token arrive in expert order."""
    return data.StructLayout({"value": signed(16)})


def bias_write(config) -> data.StructLayout:
    """The sigmoid_bias selection bias (Q15) of one expert."""
    return data.StructLayout({
        "expert": unsigned(_index_bits(config.max_experts)),
        "bias": signed(nx.GATE_FRAC_BITS + 3),
    })


def router_token(config) -> data.StructLayout:
    """``router_lanes`` int8 activations of a token; a token is ``chunks`` of them, in order."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), config.router_lanes)})


def router_weight_write(config) -> data.StructLayout:
    """``router_lanes`` int8 router weights: word `chunk` of expert `expert`'s row, with the
    requantisation of that expert's logit (int32 accumulator to Q8)."""
    return data.StructLayout({
        "expert": unsigned(_index_bits(config.max_experts)),
        "chunk": unsigned(_index_bits(config.router_chunks)),
        "data": data.ArrayLayout(signed(8), config.router_lanes),
        "multiplier": unsigned(nx.MULT_BITS),
        "shift": unsigned(nx.SHIFT_BITS),
    })


def attention_command(config) -> data.StructLayout:
    """An attention call (`sw.attention.AttentionShape`): ``seq_q`` query rows against ``seq_kv`` keys,
    ``kv_heads`` key/value heads each shared by ``rep`` query heads, heads of ``head_words`` bus words
    (zero-padded); the Q8-logit and output requantisations (`sw.attention.AttentionParams`)."""
    seq = unsigned(config.max_seq_len.bit_length())
    heads = unsigned(config.max_heads.bit_length())
    return data.StructLayout({
        "seq_q": seq,
        "seq_kv": seq,
        "kv_heads": heads,
        "rep": heads,
        "head_words": unsigned(config.attention_row_words.bit_length()),
        "causal": unsigned(1),
        "score_mult": unsigned(nx.MULT_BITS),
        "score_shift": unsigned(nx.SHIFT_BITS),
        "out_mult": unsigned(nx.MULT_BITS),
        "out_shift": unsigned(nx.SHIFT_BITS),
    })


def attention_word(config) -> data.StructLayout:
    """One bus word of Q, K, V or O: ``axi_data_bytes`` int8 values of one head."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), config.axi_data_bytes)})
