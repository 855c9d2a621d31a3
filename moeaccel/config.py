"""`AccelConfig`: the one description of an accelerator build.

Hardware elaboration, the compiler, the emulator, the boards and the tests all read their numbers from
here; derived quantities are properties, never copies. Construction validates every field and says what
would be right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from functools import cached_property

__all__ = ["AccelConfig", "ConfigError", "SparsityPattern", "PRESETS", "preset"]


class ConfigError(ValueError):
    """An `AccelConfig` field (or combination of fields) the design cannot be built with."""


@dataclass(frozen=True, order=True)
class SparsityPattern:
    """N:M structured sparsity: in every group of `m` consecutive input elements, `n` are kept.

    Dense is the M:M case of the same datapath (`n == m`).
    """

    n: int
    m: int

    def __post_init__(self):
        if not isinstance(self.m, int) or self.m < 1 or self.m & (self.m - 1):
            raise ConfigError(f"sparsity group size M must be a power of two, not {self.m!r}")
        if not isinstance(self.n, int) or not 1 <= self.n <= self.m:
            raise ConfigError(f"sparsity N must be between 1 and M={self.m}, not {self.n!r}")

    @classmethod
    def parse(cls, text: str) -> "SparsityPattern":
        """Parse ``"2:4"``; ``"dense"`` is the 1:1 pattern."""
        if text.strip().lower() == "dense":
            return cls(1, 1)
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise ConfigError(f"sparsity pattern must be 'N:M' (e.g. '2:4') or 'dense', not {text!r}")
        return cls(n, m)

    @property
    def is_dense(self) -> bool:
        return self.n == self.m

    @property
    def density(self) -> float:
        return self.n / self.m

    @cached_property
    def combinations(self) -> tuple[tuple[int, ...], ...]:
        """The index sets a group can keep, in lexicographic order: a set's code is its position."""
        return tuple(itertools.combinations(range(self.m), self.n))

    @property
    def code_bits(self) -> int:
        """Bits of a group's index code (0 for dense, 3 for 2:4: six possible pairs)."""
        return math.ceil(math.log2(len(self.combinations)))

    def __str__(self) -> str:
        return "dense" if self.is_dense else f"{self.n}:{self.m}"


DENSE = SparsityPattern(1, 1)


def _power_of_two(value) -> bool:
    return isinstance(value, int) and value >= 1 and not value & (value - 1)


@dataclass(frozen=True)
class AccelConfig:
    """Hardware parameters of one accelerator build.

    The MAC array computes ``mac_rows`` output channels at once, each as a dot product over
    ``mac_cols`` input elements per cycle: ``mac_rows * mac_cols`` int8 multipliers in all.
    """

    name: str = "custom"
    # -- MAC array
    mac_rows: int = 4
    mac_cols: int = 8
    # -- data widths (the integer arithmetic of docs/numerics.md is defined for exactly these)
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    # -- on-chip buffers, in bytes
    weight_buffer_bytes: int = 16 * 1024       # per bank
    weight_banks: int = 2                      # double buffering: one bank fills while one computes
    act_buffer_bytes: int = 16 * 1024
    out_buffer_bytes: int = 16 * 1024         # int32 rows the experts' outputs accumulate into
    # -- model limits
    max_tokens: int = 64
    max_d_model: int = 256
    max_d_ff: int = 1024
    max_experts: int = 64
    max_k: int = 8
    max_groups: int = 8                        # expert groups of group-limited routing
    router_lanes: int = 16                     # int8 MACs of the router's logits GEMM
    vector_lanes: int = 4                      # elements a cycle through the vector unit
    expert_capacity: int = 0                   # dispatch-table slots per expert; 0: max_tokens
    max_seq_len: int = 1024
    max_heads: int = 16
    attention_group: int = 4                   # query rows that share one pass over K and V
    # -- structured sparsity patterns built into the Expert-FFN datapath (dense is always built)
    sparsity: tuple[SparsityPattern, ...] = (SparsityPattern(1, 4), SparsityPattern(2, 4),
                                             SparsityPattern(4, 8))
    # -- system
    axi_data_width: int = 64                   # bits, the DRAM master port
    axi_addr_width: int = 32
    clock_mhz: float = 100.0

    def __post_init__(self):
        def fail(message):
            raise ConfigError(f"{self.name}: {message}")

        if not isinstance(self.name, str) or not self.name:
            fail(f"name must be a non-empty string, not {self.name!r}")
        for attr in ("mac_rows", "mac_cols"):
            value = getattr(self, attr)
            if not _power_of_two(value) or value > 128:
                fail(f"{attr} must be a power of two from 1 to 128, not {value!r}")
        if self.act_bits != 8:
            fail(f"act_bits must be 8 (the int8 activation datapath), not {self.act_bits!r}")
        if self.weight_bits != 8:
            fail(f"weight_bits must be 8 (the int8 weight datapath), not {self.weight_bits!r}")
        if self.acc_bits != 32:
            fail(f"acc_bits must be 32 (int32 accumulation), not {self.acc_bits!r}")
        if self.weight_banks != 2:
            fail(f"weight_banks must be 2 (double-buffered expert weights), not {self.weight_banks!r}")
        for attr in ("weight_buffer_bytes", "act_buffer_bytes", "out_buffer_bytes"):
            value = getattr(self, attr)
            if not _power_of_two(value) or value < 256:
                fail(f"{attr} must be a power of two of at least 256, not {value!r}")
        for attr in ("max_tokens", "max_d_model", "max_d_ff", "max_experts", "max_k", "max_seq_len",
                     "max_heads", "attention_group"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 1:
                fail(f"{attr} must be a positive integer, not {value!r}")
        # int8 x int8 products are below 2**14 in magnitude, so a dot product of up to 2**17 - 1 terms
        # cannot overflow the int32 accumulator.
        for attr in ("max_d_model", "max_d_ff"):
            value = getattr(self, attr)
            if value > 65536:
                fail(f"{attr} must be at most 65536 (int32 accumulation of int8 products), not {value}")
        if self.max_experts > 1024:
            fail(f"max_experts must be at most 1024, not {self.max_experts}")
        if self.max_k > self.max_experts:
            fail(f"max_k must be at most max_experts={self.max_experts}, not {self.max_k}")
        if self.max_k > 16:
            fail(f"max_k must be at most 16, not {self.max_k}")
        if not _power_of_two(self.router_lanes) or self.router_lanes > 256:
            fail(f"router_lanes must be a power of two from 1 to 256, not {self.router_lanes!r}")
        if not _power_of_two(self.vector_lanes) or self.vector_lanes > 64:
            fail(f"vector_lanes must be a power of two from 1 to 64, not {self.vector_lanes!r}")
        if 2 * self.vector_lanes > self.attention_row_words * self.axi_data_bytes:
            fail(f"vector_lanes={self.vector_lanes}: ROPE rotates heads of whole pairs of lane words, "
                 f"so 2 x vector_lanes must not exceed the widest head, "
                 f"{self.attention_row_words * self.axi_data_bytes}")
        if not isinstance(self.max_groups, int) or not 1 <= self.max_groups <= self.max_experts:
            fail(f"max_groups must be between 1 and max_experts={self.max_experts}, "
                 f"not {self.max_groups!r}")
        if not isinstance(self.expert_capacity, int) or not 0 <= self.expert_capacity \
                <= self.max_tokens:
            fail(f"expert_capacity must be between 0 (max_tokens) and max_tokens={self.max_tokens}, "
                 f"not {self.expert_capacity!r}")
        if not isinstance(self.sparsity, tuple) or not all(isinstance(p, SparsityPattern)
                                                           for p in self.sparsity):
            fail(f"sparsity must be a tuple of SparsityPattern, not {self.sparsity!r}")
        for pattern in self.sparsity:
            if pattern.m > self.mac_cols:
                fail(f"sparsity pattern {pattern} has groups wider than mac_cols={self.mac_cols} "
                     f"(a group must fit in one row of the array)")
            if pattern.n & (pattern.n - 1):
                fail(f"sparsity pattern {pattern}: N must be a power of two (a row of the array "
                     f"holds whole groups)")
        if self.axi_data_width not in (32, 64, 128, 256, 512):
            fail(f"axi_data_width must be one of 32, 64, 128, 256, 512, not {self.axi_data_width!r}")
        if self.axi_addr_width not in (32, 40, 48, 64):
            fail(f"axi_addr_width must be one of 32, 40, 48, 64, not {self.axi_addr_width!r}")
        if not isinstance(self.clock_mhz, (int, float)) or not 1 <= self.clock_mhz <= 1000:
            fail(f"clock_mhz must be between 1 and 1000, not {self.clock_mhz!r}")
        if self.weight_bank_bytes > self.weight_buffer_bytes:
            fail(f"weight_buffer_bytes={self.weight_buffer_bytes} cannot hold one weight block: "
                 f"{self.weight_bank_words} words of {self.weight_word_bytes} bytes "
                 f"({self.weight_bank_bytes} bytes) are needed for max_d_model/max_d_ff="
                 f"{self.max_inputs}; raise weight_buffer_bytes or lower max_d_model/max_d_ff")
        if self.max_inputs > self.act_buffer_bytes:
            fail(f"act_buffer_bytes={self.act_buffer_bytes} cannot hold one token of "
                 f"{self.max_inputs} activations (max_d_model/max_d_ff)")
        if -(-self.max_d_model // self.mac_rows) > self.out_buffer_words:
            fail(f"out_buffer_bytes={self.out_buffer_bytes} cannot hold one int32 output row of "
                 f"max_d_model={self.max_d_model}")
        if self.attention_group > self.max_tokens:
            fail(f"attention_group must be at most max_tokens={self.max_tokens}, "
                 f"not {self.attention_group}")

    # -- derived quantities
    @property
    def mac_units(self) -> int:
        """int8 multipliers in the MAC array."""
        return self.mac_rows * self.mac_cols

    @property
    def epilogue_lanes(self) -> int:
        """Output channels the epilogue finishes per cycle: one per row of the array."""
        return self.mac_rows

    @property
    def axi_data_bytes(self) -> int:
        return self.axi_data_width // 8

    @property
    def max_inputs(self) -> int:
        """The widest input a projection can have (d_model, or d_ff for a down projection)."""
        return max(self.max_d_model, self.max_d_ff)

    @property
    def max_ratio(self) -> int:
        """The largest M/N among the patterns: input elements per kept weight."""
        return max(p.m // p.n for p in self.patterns)

    @property
    def act_word_bytes(self) -> int:
        """Width of the activation buffers: the inputs of one cycle at the sparsest pattern."""
        return self.mac_cols * self.max_ratio

    @property
    def act_buffer_words(self) -> int:
        return self.act_buffer_bytes // self.act_word_bytes

    @property
    def weight_word_bits(self) -> int:
        """Width of a weight-bank word: the widest packed word among the patterns."""
        return max(self.mac_rows * self.mac_cols * 8
                   + self.mac_rows * (self.mac_cols // p.n) * p.code_bits for p in self.patterns)

    @property
    def weight_word_bytes(self) -> int:
        return -(-self.weight_word_bits // 8)

    @property
    def weight_bank_words(self) -> int:
        """Words of a weight bank: one block, ``mac_rows`` channels over the widest input, dense."""
        return -(-self.max_inputs // self.mac_cols)

    @property
    def weight_bank_bytes(self) -> int:
        return self.weight_bank_words * self.weight_word_bytes

    @property
    def router_chunks(self) -> int:
        """Words of ``router_lanes`` int8 values in the widest token (and router weight row)."""
        return -(-self.max_d_model // self.router_lanes)

    @property
    def attention_lanes(self) -> int:
        """int8 MACs of the attention unit: one bus word against each query row of a group."""
        return self.attention_group * self.axi_data_bytes

    @property
    def attention_row_words(self) -> int:
        """Bus words of the widest Q/K/V row the attention unit holds (``max_d_model`` int8)."""
        return -(-self.max_d_model // self.axi_data_bytes)

    @property
    def dispatch_capacity(self) -> int:
        """Dispatch-table slots per expert (tokens beyond it are counted as overflow)."""
        return self.expert_capacity or self.max_tokens

    @property
    def out_buffer_words(self) -> int:
        """Words of the output accumulator: ``mac_rows`` int32 values each."""
        return self.out_buffer_bytes // (self.acc_bits // 8 * self.mac_rows)

    @property
    def max_tiles(self) -> int:
        """Output tiles of the largest projection (SwiGLU's gate and up rows together)."""
        return -(-max(2 * self.max_d_ff, self.max_d_model) // self.mac_rows)

    @property
    def patterns(self) -> tuple[SparsityPattern, ...]:
        """Every pattern the Expert-FFN datapath accepts, dense first."""
        return (DENSE,) + tuple(sorted(set(self.sparsity) - {DENSE}))

    @property
    def peak_gops(self) -> float:
        """Peak int8 throughput, two operations per multiply-accumulate."""
        return 2 * self.mac_units * self.clock_mhz / 1000

    def supports(self, pattern: SparsityPattern | str) -> bool:
        if isinstance(pattern, str):
            pattern = SparsityPattern.parse(pattern)
        if pattern.is_dense:
            return True
        return pattern in self.sparsity

    def replace(self, **changes) -> "AccelConfig":
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def build_id(self) -> int:
        """A 32-bit hash of every field: the ``build_id`` register of hardware built from this
        configuration, which the host checks against a compiled program's configuration."""
        text = json.dumps(dataclasses.asdict(self) | {"sparsity": [str(p) for p in self.sparsity]},
                          sort_keys=True)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")

    def summary(self) -> dict:
        """Fields and derived figures as plain data (for reports and JSON)."""
        data = dataclasses.asdict(self)
        data["sparsity"] = [str(p) for p in self.sparsity]
        data.update(mac_units=self.mac_units, peak_gops=self.peak_gops)
        return data


PRESETS: dict[str, AccelConfig] = {
    # Small enough for quick RTL simulation; every feature enabled.
    "tiny": AccelConfig(
        name="tiny", mac_rows=4, mac_cols=8,
        weight_buffer_bytes=4096, act_buffer_bytes=16 * 1024, out_buffer_bytes=32 * 1024,
        max_tokens=64, max_d_model=128, max_d_ff=256, max_experts=64, max_k=8, max_seq_len=1024,
        max_heads=8, attention_group=4, axi_data_width=64, clock_mhz=100.0, router_lanes=8,
        vector_lanes=4),
    # PYNQ-Z2 (xc7z020: 220 DSP48E1, 140 BRAM36): 128 MAC lanes leave DSPs for the epilogue and router.
    "pynq-z2": AccelConfig(
        name="pynq-z2", mac_rows=8, mac_cols=16,
        weight_buffer_bytes=64 * 1024, act_buffer_bytes=64 * 1024, out_buffer_bytes=128 * 1024,
        max_tokens=256, max_d_model=1024, max_d_ff=4096, max_experts=64, max_k=8, max_seq_len=1024,
        max_heads=16, attention_group=4, axi_data_width=64, clock_mhz=100.0, router_lanes=32,
        vector_lanes=8),
    # KV260 (xck26: 1248 DSP48E2, 144 BRAM36 + 64 URAM).
    "kv260": AccelConfig(
        name="kv260", mac_rows=16, mac_cols=32,
        weight_buffer_bytes=256 * 1024, act_buffer_bytes=128 * 1024, out_buffer_bytes=512 * 1024,
        max_tokens=512, max_d_model=4096, max_d_ff=8192, max_experts=128, max_k=8, max_seq_len=2048,
        max_heads=32, attention_group=4, axi_data_width=128, clock_mhz=200.0, router_lanes=32,
        vector_lanes=16),
    # ZCU104 (xczu7ev: 1728 DSP48E2, 312 BRAM36 + 96 URAM): DeepSeek-V3-scale routing.
    "zcu104": AccelConfig(
        name="zcu104", mac_rows=32, mac_cols=32,
        weight_buffer_bytes=1024 * 1024, act_buffer_bytes=256 * 1024, out_buffer_bytes=1024 * 1024,
        max_tokens=1024, max_d_model=8192, max_d_ff=16384, max_experts=256, max_k=8, max_seq_len=4096,
        expert_capacity=256,
        max_heads=64, attention_group=8, axi_data_width=128, clock_mhz=200.0, router_lanes=64,
        vector_lanes=16),
}


def preset(name: str) -> AccelConfig:
    """The named preset, or an error that lists the names there are."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"no preset named {name!r}; presets are: {', '.join(sorted(PRESETS))}") \
            from None
