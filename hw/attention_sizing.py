"""Sizing models of the attention unit (`hw.attention.Attention`): the register widths that hold
every value `sw.attention` can produce within a configuration's limits, the on-chip bytes a call
occupies, and the bytes the unit instantiates."""

from ..config import AccelConfig
from ..sw import attention as sa
from ..sw import numerics as nx

__all__ = ["RECIP_OUT_BITS", "attention_widths", "attention_state_bytes", "attention_onchip_bytes"]

RECIP_OUT_BITS = nx.ATTENTION_RECIP_BITS - nx.GATE_FRAC_BITS + 1     # 2**40 // s for s >= 2**15


def attention_widths(config: AccelConfig) -> dict:
    """Register widths that hold every value `sw.attention` can produce within `config`'s limits."""
    seq_bits = config.max_seq_len.bit_length()
    padded_dim = config.attention_row_words * config.axi_data_bytes
    return {
        "score": 2 * 7 + padded_dim.bit_length() + 1,          # |q . k| <= dim * 2**14
        "sum": nx.GATE_FRAC_BITS + seq_bits,                    # s <= keys * 2**15
        "acc": nx.GATE_FRAC_BITS + 8 + seq_bits,                # |acc| <= keys * 2**15 * 128
    }


def _state_bits(config: AccelConfig) -> int:
    """Softmax state and reciprocal of one (row, head)."""
    widths = attention_widths(config)
    return nx.ATTENTION_LOGIT_BITS + widths["sum"] + 2 * (nx.GATE_FRAC_BITS + 1) + RECIP_OUT_BITS


def attention_state_bytes(config: AccelConfig, shape: "sa.AttentionShape") -> int:
    """On-chip bytes a call occupies: per query row of the group, its Q words and accumulators and
    its softmax state per head, and the partial scores of the query heads sharing a key head. It
    depends on the group, the heads and the head size, never on the sequence length."""
    widths = attention_widths(config)
    words = shape.heads * shape.head_words(config.axi_data_bytes)
    bits = config.attention_group * (words * config.axi_data_bytes * (8 + widths["acc"])
                                     + shape.heads * _state_bits(config)
                                     + shape.rep * widths["score"])
    return -(-bits // 8)


def attention_onchip_bytes(config: AccelConfig) -> int:
    """Bytes of the attention unit's memories and its wide registers (partial scores, pipeline,
    dividers), for the configuration's limits; none of them is sized by a sequence length."""
    group, word, row_words = config.attention_group, config.axi_data_bytes, config.attention_row_words
    widths = attention_widths(config)
    registers = (widths["score"] + nx.ATTENTION_LOGIT_BITS                   # S1 score, S2 logit
                 + 2 * widths["sum"] + nx.ATTENTION_RECIP_BITS + 1)          # divider
    bits = (group * row_words * word * (8 + widths["acc"])           # Q words, accumulators
            + group * config.max_heads * _state_bits(config)       # softmax state
            + group * config.max_heads * widths["score"]            # partial scores
            + group * registers)
    return -(-bits // 8)
