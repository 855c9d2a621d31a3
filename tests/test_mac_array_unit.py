"""Fast check of the MAC array in Amaranth's simulator against sw.sparsity.sparse_matmul."""

import random

import pytest
import torch

from moeaccel.config import preset
from moeaccel.formats.expert_ffn import chunk_inputs
from moeaccel.formats.expert_ffn import mac_in
from moeaccel.hw.mac_array import MacArray
from moeaccel.sw import sparsity as sp

from . import stream_sim


@pytest.mark.parametrize("pattern_index", range(4))
def test_mac_array_rows_match_sparse_matmul(pattern_index):
    config = preset("tiny")
    pattern = config.patterns[pattern_index]
    rng = random.Random(pattern_index)
    generator = torch.Generator().manual_seed(pattern_index)
    tokens, inputs = 3, 45
    weight = sp.prune(torch.randint(-128, 128, (config.mac_rows, inputs), generator=generator),
                      pattern)
    x = torch.randint(-128, 128, (tokens, inputs), generator=generator)
    blocks = sp.pack(weight, pattern, config)
    per_chunk = chunk_inputs(config, pattern)
    layout = mac_in(config, tag_bits=4)
    words = []
    for t in range(tokens):
        for chunk in range(blocks.chunks):
            window = [0] * config.act_word_bytes
            for offset in range(per_chunk):
                if chunk * per_chunk + offset < inputs:
                    window[offset] = int(x[t, chunk * per_chunk + offset])
            raw = blocks.data[chunk * blocks.word_bytes:(chunk + 1) * blocks.word_bytes]
            words.append(layout.const({
                "window": window, "weights": int.from_bytes(raw, "little") &
                ((1 << config.weight_word_bits) - 1), "pattern": pattern_index,
                "first": chunk == 0, "last": chunk == blocks.chunks - 1, "tag": t}))
    expected = [(t, (x[t:t + 1] @ weight.T)[0].tolist()) for t in range(tokens)]
    dut = MacArray(config, tag_bits=4)

    async def sender(ctx):
        await stream_sim.send(ctx, dut.i, words, rng, idle=0.3)

    received = [(payload.tag, [payload.sums[r] for r in range(config.mac_rows)]) for payload in
                stream_sim.run(dut, sender, dut.o, tokens, rng, backpressure=0.5)]
    assert received == expected
