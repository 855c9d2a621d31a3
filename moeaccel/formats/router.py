"""The router's formats: its command and modes, the streams it takes, the records of its weights and
biases, the dispatch table it writes (per expert a token count and a queue of token and gate) and its
counters; `check`, the commands it refuses."""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from .epilogue import REQUANT
from .numbers import BIAS_BITS, GATE_BITS, LOGIT_BITS, count_bits, index_bits
from .records import Pair
from .rules import Fields, check_rules, normalise

__all__ = ["ROUTER_MODES", "RouterMode", "TOKEN_GATE", "DISPATCH_COUNT", "LOGIT", "SELECTION_BIAS",
           "ROUTER_COUNTERS", "router_command", "router_token",
           "router_weight_write", "bias_write", "router_record", "dispatch_table", "rules", "check"]

# How the router turns logits into gate weights (`RouterMode` in the same order).
ROUTER_MODES = ("softmax_topk_renorm", "softmax_topk", "top1", "sigmoid_bias")


class RouterMode(enum.Enum, shape=unsigned(2)):
    """How the router turns logits into gate weights (`ROUTER_MODES`, same order)."""

    SOFTMAX_TOPK_RENORM = 0
    SOFTMAX_TOPK = 1
    TOP1 = 2
    SIGMOID_BIAS = 3

    @classmethod
    def named(cls, name: str) -> "RouterMode":
        if name not in ROUTER_MODES:
            raise ValueError(f"router mode must be one of {', '.join(ROUTER_MODES)}, not {name!r}")
        return cls(ROUTER_MODES.index(name))

    @property
    def label(self) -> str:
        return ROUTER_MODES[self.value]


assert [mode.name.lower() for mode in RouterMode] == list(ROUTER_MODES)

# A token of an expert's queue: its index (its row of ACT0, gathered from, and of OUT, added into) and
# its Q15 gate weight. The dispatch table's queues and the Expert-FFN engine's gate table hold these.
TOKEN_GATE = Pair("token gate", {
    "token": (lambda config: unsigned(index_bits(config.max_tokens)), unsigned(16)),
    "gate": (unsigned(GATE_BITS), unsigned(16)),
})

# An expert's token count in the dispatch table.
DISPATCH_COUNT = Pair("dispatch count", {
    "count": (lambda config: unsigned(count_bits(config.dispatch_capacity)), unsigned(16)),
})

# A router logit (Q8): streamed into the router, or an int16 of the logits array in DRAM.
LOGIT = Pair("router logit", {"value": (signed(LOGIT_BITS), signed(16))})

# A sigmoid_bias selection bias (Q15), one per expert: ROUTER_BIAS holds an int32 each.
SELECTION_BIAS = Pair("selection bias", {"bias": (signed(BIAS_BITS), signed(32))})

# Counters of one router run (`perf`), cleared when a run starts.
ROUTER_COUNTERS = data.StructLayout({
    "busy_cycles": unsigned(32),       # cycles with a run under way
    "dropped_tokens": unsigned(32),    # choices dropped because an expert's queue was full
})


def router_command(config) -> data.StructLayout:
    """A routing run: ``tokens`` tokens of ``experts`` logits each, ``k`` chosen per token; under
    ``sigmoid_bias``, selection limited to the best ``topk_groups`` of ``groups`` groups of
    ``group_size`` consecutive experts (``groups == 1``: no limit). The dispatch table's counts of
    the first ``experts`` are cleared first. ``compute``: the logits come from the router's own
    GEMM over tokens of ``chunks`` words (`router_token`) and the loaded router weights, instead of
    the `logits` stream."""
    return data.StructLayout({
        "tokens": unsigned(count_bits(config.max_tokens)),
        "experts": unsigned(count_bits(config.max_experts)),
        "k": unsigned(count_bits(config.max_k)),
        "mode": RouterMode,
        "groups": unsigned(count_bits(config.max_groups)),
        "group_size": unsigned(count_bits(config.max_experts)),
        "topk_groups": unsigned(count_bits(config.max_groups)),
        "compute": unsigned(1),
        "chunks": unsigned(count_bits(config.router_chunks)),
    })


def router_token(config) -> data.StructLayout:
    """``router_lanes`` int8 activations of a token; a token is ``chunks`` of them, in order."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), config.router_lanes)})


def router_weight_write(config) -> data.StructLayout:
    """``router_lanes`` int8 router weights: word `chunk` of expert `expert`'s row, with the
    requantisation of that expert's logit."""
    return data.StructLayout({
        "expert": unsigned(index_bits(config.max_experts)),
        "chunk": unsigned(index_bits(config.router_chunks)),
        "data": data.ArrayLayout(signed(8), config.router_lanes),
        **REQUANT.onchip_fields(config),
    })


def bias_write(config) -> data.StructLayout:
    """The selection bias of one expert."""
    return data.StructLayout({
        "expert": unsigned(index_bits(config.max_experts)),
        **SELECTION_BIAS.onchip_fields(config),
    })


def router_record(config) -> data.StructLayout:
    """ROUTER_WEIGHTS: expert e's record at byte ``e x`` its size: its ``router_chunks x
    router_lanes`` int8 weights (zero-padded), then its logit's requantisation (int32 accumulator to
    Q8, `epilogue.REQUANT`) in a word of ``router_lanes`` bytes of its own (reserved bytes after
    it), so the router reads a word of weights, or the requantisation, an access."""
    lanes = config.router_lanes
    word = max(lanes, -(-REQUANT.size // lanes) * lanes)
    return data.StructLayout({
        "weights": data.ArrayLayout(signed(8), config.router_chunks * lanes),
        "requant": REQUANT.dram,
        "reserved": unsigned(8 * (word - REQUANT.size)) if word > REQUANT.size else unsigned(0),
    })


def dispatch_table(config) -> data.StructLayout:
    """DISPATCH, as the buffer's bytes: every expert's token count, then every expert's queue of
    ``dispatch_capacity`` entries (the first ``count`` of them valid)."""
    return data.StructLayout({
        "counts": data.ArrayLayout(DISPATCH_COUNT.dram, config.max_experts),
        "queues": data.ArrayLayout(data.ArrayLayout(TOKEN_GATE.dram, config.dispatch_capacity),
                                   config.max_experts),
    })


def rules(config, c):
    """The router's refusals of command `c` (`moeaccel.formats.rules`)."""
    grouped = c.groups > 1
    return [
        (lambda: f"tokens={c.tokens} (1 .. {config.max_tokens})",
         (c.tokens == 0) | (c.tokens > config.max_tokens)),
        (lambda: f"experts={c.experts} (1 .. {config.max_experts})",
         (c.experts == 0) | (c.experts > config.max_experts)),
        (lambda: f"k={c.k} (1 .. min(experts={c.experts}, max_k={config.max_k}))",
         (c.k == 0) | (c.k > c.experts) | (c.k > config.max_k)),
        (lambda: f"k={c.k} in top1 mode (top1 chooses one expert)",
         (c.mode == RouterMode.TOP1) & (c.k != 1)),
        (lambda: f"groups={c.groups} (1 .. {config.max_groups})",
         (c.groups == 0) | (c.groups > config.max_groups)),
        (lambda: f"chunks={c.chunks} of a computed run (1 .. {config.router_chunks})",
         (c.compute == 1) & ((c.chunks == 0) | (c.chunks > config.router_chunks))),
        (lambda: f"groups={c.groups} outside sigmoid_bias mode",
         grouped & (c.mode != RouterMode.SIGMOID_BIAS)),
        (lambda: f"{c.groups} groups of {c.group_size} for {c.experts} experts (groups of at "
                 f"least 2 that cover the experts exactly)",
         grouped & ((c.group_size * c.groups != c.experts) | (c.group_size < 2))),
        (lambda: f"the best {c.topk_groups} of {c.groups} groups (1 .. groups)",
         grouped & ((c.topk_groups == 0) | (c.topk_groups > c.groups))),
        (lambda: f"k={c.k} from {c.topk_groups} groups of {c.group_size}",
         grouped & (c.k > c.topk_groups * c.group_size)),
    ]


def check(config, command: dict) -> list[str]:
    """What the router refuses in a `router_command` (empty: it runs)."""
    command, reasons = normalise(router_command(config), command)
    return reasons or check_rules(rules(config, Fields.of(command)))
