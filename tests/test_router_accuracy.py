"""The integer router against the float one: on tokens that quantisation cannot tie, the same experts."""

import pytest
import torch

from moeaccel.sw.quantized import QuantizedMoE
from moeaccel.sw.reference import MoELayer
from moeaccel.sw.router_accuracy import ROUTER_SPECS, logit_error_bound, router_agreement


@pytest.mark.parametrize("name", ROUTER_SPECS)
def test_same_experts_on_non_tied_tokens(name):
    result = router_agreement(ROUTER_SPECS[name], tokens=20_000, seed=1)
    assert result["non_tied_fraction"] > 0
    assert result["agreement_non_tied"] >= 0.999, result


def test_logit_bound_covers_the_measured_errors():
    """The bound is not a fit to the data: the real logit errors sit well inside it."""
    spec = ROUTER_SPECS["olmoe (softmax_topk, E=64, k=8)"]
    torch.manual_seed(3)
    layer = MoELayer(spec).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.5 / spec.d_model ** 0.5)
    x = torch.randn(4000, spec.d_model)
    quantized = QuantizedMoE.from_float(layer, x)
    with torch.no_grad():
        exact = layer.router(x).double()
    integer = quantized.router.logits_q8(quantized.quantize_input(x)).double() / 256
    error = (integer - exact).abs()
    bound = logit_error_bound(quantized, x)
    assert bool((error <= bound).all())
    assert float((error / bound).max()) < 0.9
