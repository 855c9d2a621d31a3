"""The attention unit's formats: the shape of a call, its command, the bus word it streams, its
counters; `check`, the calls the unit refuses."""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .numbers import MULT_BITS, SHIFT_BITS, SHIFT_MAX, count_bits
from .rules import Fields, check_rules, normalise

__all__ = ["AttentionShape", "group_keys", "ATTENTION_COUNTERS", "attention_command",
           "attention_word", "command_fields", "padded_shape", "rules", "check",
           "SEQUENCER_COUNTERS", "STORE_CHUNK", "sequencer_command"]


@dataclass(frozen=True)
class AttentionShape:
    """One attention call: ``seq_q`` query rows against ``seq_kv`` keys, ``heads`` query heads sharing
    ``kv_heads`` key/value heads (grouped-query attention when fewer), ``head_dim`` each."""

    seq_q: int
    seq_kv: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = False

    def __post_init__(self):
        for name in ("seq_q", "seq_kv", "heads", "kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"attention {name} must be a positive integer, not {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"attention heads={self.heads} must be a multiple of "
                             f"kv_heads={self.kv_heads} (grouped-query attention)")
        if self.causal and self.seq_q > self.seq_kv:
            raise ValueError(f"causal attention needs seq_q <= seq_kv (the queries are the last "
                             f"positions), not seq_q={self.seq_q} > seq_kv={self.seq_kv}")

    @property
    def rep(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def offset(self) -> int:
        """Position of query row 0 among the keys (causal masking)."""
        return self.seq_kv - self.seq_q

    def head_words(self, word: int) -> int:
        """Bus words of `word` int8 lanes per head (the head zero-padded to whole words)."""
        return -(-self.head_dim // word)


def group_keys(shape: AttentionShape, first_row: int, rows: int) -> int:
    """Keys the query rows ``first_row .. first_row + rows - 1`` stream: all of them, or under a
    causal mask those up to the last row's position."""
    if not shape.causal:
        return shape.seq_kv
    return min(shape.seq_kv, shape.offset + first_row + rows)


# Counters of one call (`perf`), cleared when a call starts.
ATTENTION_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),           # cycles with a call under way
    "words_in": unsigned(32),              # Q, K and V words taken
    "words_out": unsigned(32),             # O words given
    "input_stall_cycles": unsigned(32),    # cycles a phase that takes words found none
    "output_stall_cycles": unsigned(32),   # cycles an O word waited for the `out` stream
})


# Counters of the attention sequencer's memory traffic (`perf`), cleared when a call starts.
# On the accelerator top, output words a write of O waits for (fewer: the call's last words).
STORE_CHUNK = 16

SEQUENCER_COUNTERS = data.StructLayout({
    "words_read": unsigned(32),            # Q, K and V words read from the memory
    "words_written": unsigned(32),         # O words written to it
})


def attention_command(config) -> data.StructLayout:
    """An attention call: ``seq_q`` query rows against ``seq_kv`` keys, ``kv_heads`` key/value heads
    each shared by ``rep`` query heads, heads of ``head_words`` bus words (zero-padded); the Q8-logit
    and output requantisations (`sw.attention.AttentionParams`)."""
    seq = unsigned(count_bits(config.max_seq_len))
    heads = unsigned(count_bits(config.max_heads))
    return data.StructLayout({
        "seq_q": seq,
        "seq_kv": seq,
        "kv_heads": heads,
        "rep": heads,
        "head_words": unsigned(count_bits(config.attention_row_words)),
        "causal": unsigned(1),
        "score_mult": unsigned(MULT_BITS),
        "score_shift": unsigned(SHIFT_BITS),
        "out_mult": unsigned(MULT_BITS),
        "out_shift": unsigned(SHIFT_BITS),
    })


def attention_word(config) -> data.StructLayout:
    """One bus word of Q, K, V or O: ``axi_data_bytes`` int8 values of one head."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), config.axi_data_bytes)})


def sequencer_command(config, address_bits: int) -> data.StructLayout:
    """An attention call for the attention sequencer: the unit's command and the word addresses of
    the Q, K, V and O row arrays (rows of ``heads`` or ``kv_heads`` x ``head_words`` words,
    packed)."""
    address = unsigned(address_bits)
    return data.StructLayout({"attention": attention_command(config), "q_base": address,
                              "k_base": address, "v_base": address, "o_base": address})


def command_fields(config, shape: AttentionShape, params) -> dict:
    """The `attention_command` fields of one call (`params`: an `sw.attention.AttentionParams`)."""
    return {"seq_q": shape.seq_q, "seq_kv": shape.seq_kv, "kv_heads": shape.kv_heads,
            "rep": shape.rep, "head_words": shape.head_words(config.axi_data_bytes),
            "causal": int(shape.causal), "score_mult": params.score_mult,
            "score_shift": params.score_shift, "out_mult": params.out_mult,
            "out_shift": params.out_shift}


def padded_shape(config, command: dict) -> AttentionShape:
    """The shape the unit computes for a command: heads of ``head_words`` whole words. Raises
    ValueError for a command no shape has (a zero count; `check` names it)."""
    return AttentionShape(command["seq_q"], command["seq_kv"],
                          command["kv_heads"] * command["rep"], command["kv_heads"],
                          command["head_words"] * config.axi_data_bytes, bool(command["causal"]))


def rules(config, c):
    """The attention unit's refusals of command `c` (`moeaccel.formats.rules`)."""
    heads = c.kv_heads * c.rep
    return [
        (lambda: f"seq_q={c.seq_q} (1 .. max_seq_len={config.max_seq_len})",
         (c.seq_q == 0) | (c.seq_q > config.max_seq_len)),
        (lambda: f"seq_kv={c.seq_kv} (1 .. max_seq_len={config.max_seq_len})",
         (c.seq_kv == 0) | (c.seq_kv > config.max_seq_len)),
        (lambda: f"kv_heads={c.kv_heads} x rep={c.rep} heads (1 .. max_heads={config.max_heads})",
         (c.kv_heads == 0) | (c.rep == 0) | (heads > config.max_heads)),
        (lambda: f"rows of {heads} heads x {c.head_words} words, more than the "
                 f"{config.attention_row_words} words of {config.axi_data_bytes} int8 a row holds "
                 f"(max_d_model={config.max_d_model})",
         (c.head_words == 0) | (heads * c.head_words > config.attention_row_words)),
        (lambda: f"a causal call with seq_q={c.seq_q} > seq_kv={c.seq_kv} (the queries are the "
                 f"last positions)",
         (c.causal == 1) & (c.seq_q > c.seq_kv)),
        (lambda: f"score_shift={c.score_shift} (0 .. {SHIFT_MAX})", c.score_shift > SHIFT_MAX),
        (lambda: f"out_shift={c.out_shift} (0 .. {SHIFT_MAX})", c.out_shift > SHIFT_MAX),
    ]


def check(config, command: dict) -> list[str]:
    """What the attention unit refuses in an `attention_command` (empty: it runs)."""
    command, reasons = normalise(attention_command(config), command)
    return reasons or check_rules(rules(config, Fields.of(command)))
