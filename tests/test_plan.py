"""The compiler's pass planning (`compiler.plan`): a pass is refused with the engine's own reasons
(`formats.expert_ffn.check`) and, when fewer tokens would fit, how many."""

import pytest

from moeaccel.compiler.plan import ShapeError, max_pass_tokens, plan_pass
from moeaccel.config import ConfigError, SparsityPattern, preset
from moeaccel.formats import expert_ffn


@pytest.mark.parametrize("shape, message", [
    (dict(tokens=65, inputs=8, outputs=8),
     r"^a pass of 65 tokens x 8 inputs -> 8 outputs \(dense\) does not fit the tiny configuration: "
     r"tokens=65 \(1 \.\. 64\); at most 64 tokens a pass$"),
    (dict(tokens=1, inputs=257, outputs=8),
     r"^a pass of 1 tokens x 257 inputs -> 8 outputs \(dense\) does not fit the tiny "
     r"configuration: chunks=33 \(1 \.\. 32\)$"),
    (dict(tokens=1, inputs=8, outputs=600),
     r"^a pass of 1 tokens x 8 inputs -> 600 outputs \(dense\) does not fit the tiny configuration: "
     r"tiles=150 \(1 \.\. 128\)$"),
    (dict(tokens=64, inputs=8, outputs=512, swiglu=True, to_buffer=True), r": tiles=256 \(1 \.\. 128\)"),
    (dict(tokens=1, inputs=8, outputs=8, pattern="3:8"),
     r"^sparsity 3:8 is not built into the tiny configuration \(it has dense, 1:4, 2:4, 4:8\)$"),
    (dict(tokens=0, inputs=8, outputs=8), r"^tokens must be a positive integer, not 0$"),
])
def test_plan_refuses_what_the_configuration_cannot_hold(shape, message):
    with pytest.raises((ShapeError, ConfigError), match=message):
        plan_pass(preset("tiny"), **shape)


def test_a_pass_that_fits_is_planned():
    step = plan_pass(preset("tiny"), 64, 256, 8, src=0)
    assert step.src_row_words == 8 and not expert_ffn.check(preset("tiny"), step.command())


def test_plan_refuses_tokens_beyond_the_activation_buffer_and_says_how_many_fit():
    config = preset("tiny").replace(act_buffer_bytes=4096)
    with pytest.raises(ShapeError, match=r"^a pass of 64 tokens x 256 inputs -> 8 outputs \(dense\) "
                                         r"does not fit the tiny configuration: 64 rows of 8 words "
                                         r"\(an activation buffer holds 128\); at most 16 tokens a "
                                         r"pass$"):
        plan_pass(config, 64, 256, 8)


@pytest.mark.parametrize("name", ["tiny", "pynq-z2"])
def test_max_pass_tokens_is_the_largest_count_the_engine_takes(name):
    """Against the engine's rules token by token, on configurations whose activation buffer holds
    fewer tokens than max_tokens: the figure is taken, one more refused, and every count up to it
    taken."""
    config = preset(name)
    config = config.replace(act_buffer_bytes=max(256, config.max_inputs * 2))
    for inputs, outputs, options in ((config.max_d_model, config.max_d_ff,
                                      dict(swiglu=True, to_buffer=True)),
                                     (config.max_inputs, 64, {}), (64, 64, dict(drain=True))):
        fit = max_pass_tokens(config, inputs, outputs, SparsityPattern(1, 1), **options)
        assert 1 <= fit <= config.max_tokens
        for tokens in range(1, fit + 1):
            assert not expert_ffn.check(config, plan_pass(config, tokens, inputs, outputs,
                                                          **options).command())
        if fit < config.max_tokens:
            with pytest.raises(ShapeError, match=rf"; at most {fit} tokens a pass$"):
                plan_pass(config, fit + 1, inputs, outputs, **options)
    assert max_pass_tokens(config, config.max_inputs, 64, SparsityPattern(1, 1)) < \
        config.max_tokens                   # the refusal above ran at least once
