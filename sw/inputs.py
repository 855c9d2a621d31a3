"""The kinds of random inputs the golden model draws for tests and benchmarks, by name: torch-free,
so that the command line can offer them without loading torch."""

__all__ = ["ATTENTION_INPUT_KINDS"]

# `sw.attention.random_inputs`: uniform int8; saturating logits; late, dominant keys; all keys alike.
ATTENTION_INPUT_KINDS = ("random", "extreme", "peaked", "flat")
