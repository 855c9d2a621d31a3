"""The attention unit: cocotb regression on Verilator, bit-exact against the integer golden model,
under random input idles and output backpressure."""

import pytest

from moeaccel.config import preset
from moeaccel.hw.attention import Attention
from moeaccel.sim.harness import run_cocotb


def _case(seq_q, seq_kv, heads, kv_heads, head_dim, causal=False, kind="random", seed=0, idle=0.3,
          backpressure=0.3):
    return dict(seq_q=seq_q, seq_kv=seq_kv, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                causal=causal, kind=kind, seed=seed, idle=idle, backpressure=backpressure)


def run_attention(config_name, cases, overrides=None, timeout_s=1200):
    overrides = overrides or {}
    parameters = {"config": config_name, "overrides": overrides, "cases": cases}
    key = config_name + "".join(f"_{name}{value}" for name, value in sorted(overrides.items()))
    return run_cocotb(Attention(preset(config_name).replace(**overrides)), toplevel="attention",
                      test_module="moeaccel.sim.tb.attention", build_key=key,
                      parameters=parameters, timeout_s=timeout_s)


@pytest.mark.sim
def test_attention_bit_exact_edge_cases():
    run_attention("tiny", [
        _case(1, 1, 2, 2, 8, seed=1, idle=0.0, backpressure=0.0),         # L = 1
        _case(1, 1, 1, 1, 5, causal=True, seed=2),                        # L = 1, causal, padded head
        _case(7, 7, 2, 2, 16, seed=3),                                    # L not a multiple of G
        _case(10, 10, 4, 4, 8, causal=True, seed=4),                      # causal, 3 groups
        _case(6, 13, 4, 1, 16, causal=True, seed=5),                      # multi-query, decode-like
        _case(9, 9, 8, 2, 12, causal=True, seed=6),                       # GQA, head not whole words
        _case(5, 11, 4, 2, 32, kind="extreme", seed=7),                   # saturated logits
        _case(8, 8, 2, 1, 16, causal=True, kind="extreme", seed=8),
        _case(6, 24, 2, 2, 24, kind="peaked", seed=9),                    # late maxima: rescales
        _case(1, 19, 8, 8, 16, causal=True, seed=10),                     # one decode query
        _case(4, 4, 1, 1, 128, seed=11, idle=0.6, backpressure=0.6),      # widest row, heavy stalls
        _case(3, 7, 1, 1, 8, seed=12),                                    # one-word K and V rows
        _case(5, 6, 1, 1, 5, causal=True, kind="peaked", seed=13, idle=0.0, backpressure=0.0),
    ])


@pytest.mark.sim
def test_attention_bit_exact_at_the_width_limits():
    """max_seq_len 16: the running sum of 16 equal keys is exactly 2**19, the largest its 20 bits
    hold; the accumulators reach 16 x 2**15 x 128."""
    run_attention("tiny", [
        _case(4, 16, 2, 1, 16, kind="flat", seed=20),
        _case(3, 16, 2, 2, 8, kind="extreme", seed=21),
        _case(16, 16, 4, 2, 16, causal=True, seed=22),
    ], overrides={"max_seq_len": 16})


@pytest.mark.sim
def test_attention_bit_exact_random():
    import random
    rng = random.Random(2026)
    cases = []
    for seed in range(12):
        kv_heads = rng.choice([1, 2, 4])
        heads = kv_heads * rng.choice([1, 2])
        head_dim = rng.choice([4, 8, 13, 16, 24])
        if heads * -(-head_dim // 8) > 16:
            head_dim = 8
        seq_kv = rng.randint(1, 40)
        causal = rng.random() < 0.5
        seq_q = rng.randint(1, seq_kv) if causal else rng.randint(1, 20)
        cases.append(_case(seq_q, seq_kv, heads, kv_heads, head_dim, causal,
                           rng.choice(["random", "random", "peaked", "extreme"]), seed=100 + seed,
                           idle=rng.choice([0.0, 0.3, 0.5]), backpressure=rng.choice([0.0, 0.3, 0.5])))
    run_attention("tiny", cases)


def _emulated_cycles(config, shape) -> tuple[int, int]:
    """The emulator's compute-queue cycles for one ATTENTION instruction and its FINISH (they do
    not depend on the data), and the cycles the top's port adds to the unit's
    (`cycles.attention_top_cycles` beyond `cycles.attention_cycles`)."""
    from moeaccel.cycles import attention_cycles, attention_top_cycles
    from moeaccel.formats.instructions import Queue
    from moeaccel.host.emulator import Emulator
    from moeaccel.isa import Program
    from moeaccel.sw.attention import AttentionParams
    row_q = shape.heads * shape.head_words(config.axi_data_bytes) * config.axi_data_bytes
    row_kv = row_q // shape.rep
    k = shape.seq_q * row_q
    v = k + shape.seq_kv * row_kv
    o = v + shape.seq_kv * row_kv
    program = Program(config).attention(shape, AttentionParams(1 << 14, 20, 1 << 14, 20), q=0,
                                        k=k, v=v, o=o).finish()
    result = Emulator(config, o + shape.seq_q * row_q).run(program.encode())
    assert result.ok, result
    port = (attention_top_cycles(config, program.instructions[0].fields)
            - attention_cycles(shape, config.attention_group, config.axi_data_bytes)["total"])
    return result.busy_cycles[Queue.COMPUTE], port


@pytest.mark.sim
def test_bench_attention_reports_cycles_bytes_and_bit_exactness(capsys):
    """A whole call through unit, sequencer and memory: bit-exact, cycles as the model predicts
    (and, with the top's port's cycles, as the emulator's ATTENTION takes), DRAM bytes as the
    formula says."""
    import json
    from moeaccel.cli import main
    from moeaccel.formats.attention import AttentionShape
    results = []
    for seq in (9, 21):
        assert main(["bench", "attention", "--seq", str(seq), "--heads", "4", "--kv-heads", "2",
                     "--head-dim", "12", "--causal", "--config", "tiny", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    for result in results:
        assert result["bit_exact"] is True
        assert result["cycles"] == result["model_cycles"]
        shape = AttentionShape(result["seq_q"], result["seq_kv"], 4, 2, 12, causal=True)
        busy, port = _emulated_cycles(preset("tiny"), shape)
        assert busy == result["cycles"] + port + 1       # the unit's, the top's port's, FINISH
        # words the memory served and took (the sequencer's count) = the unit's handshakes = formula
        assert result["dram_bytes"] == result["dram_bytes_formula"] == result["unit_words"] * 8
        assert result["ideal_cycles"] == -(-result["macs"] // 32)
        assert 0 < result["utilization"] < 1
    assert results[1]["dram_bytes"] > results[0]["dram_bytes"]


def test_bench_attention_refuses_what_the_configuration_cannot_hold(capsys):
    from moeaccel.cli import main
    assert main(["bench", "attention", "--seq", "2048", "--heads", "2", "--head-dim", "8",
                 "--config", "tiny"]) == 2
    assert capsys.readouterr().err == (
        "moeaccel bench: attention of 2048 x 2048, 2 heads of 8 does not fit the tiny "
        "configuration: seq_q=2048 (1 .. max_seq_len=1024); seq_kv=2048 (1 .. max_seq_len=1024)\n")


@pytest.mark.sim
def test_attention_bit_exact_on_pynq_z2():
    """The benchmark's preset: 8 heads of 64 (a 64-word row), GQA and causal, under stalls."""
    run_attention("pynq-z2", [
        _case(9, 13, 8, 2, 64, causal=True, seed=30),
        _case(5, 7, 16, 16, 64, kind="peaked", seed=31),                  # the widest row, 128 words
        _case(4, 6, 8, 1, 96, kind="extreme", seed=32),
    ])
