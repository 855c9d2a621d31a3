"""The integer reference of an MoE layer: what the hardware computes, bit for bit.

The router's integer reference is `sw.router`. `QuantizedMoE.from_float` quantises a float `MoELayer` against calibration tokens (int8 weights with
per-output-channel scales, int8 activations with per-tensor scales, int32 biases, requantisation
multipliers and shifts, activation tables); `QuantizedMoE.forward` then runs on int8 tokens using only
the integer rules of `numerics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import numerics as nx
from .reference import Expert, MoELayer, MoESpec
from .router import QuantizedRouter, Routing, dispatch_table

__all__ = ["quantize_tensor", "dequantize", "QuantizedLinear", "swiglu_hidden", "QuantizedExpert",
           "QuantizedMoE", "quantize_pruned"]


def _scale_of(values: torch.Tensor, dim=None) -> torch.Tensor:
    """Symmetric int8 scale: max |value| maps to 127 (a zero range gets scale 1)."""
    peak = values.abs().amax() if dim is None else values.abs().amax(dim=dim)
    peak = peak.to(torch.float64)
    return torch.where(peak > 0, peak / nx.INT8_MAX, torch.ones_like(peak))


def quantize_tensor(values: torch.Tensor, scale) -> torch.Tensor:
    """Float -> int8: ``saturate(floor(v / scale + 1/2))`` (round half up), as the host does."""
    scaled = values.to(torch.float64) / torch.as_tensor(scale, dtype=torch.float64)
    return nx.saturate(torch.floor(scaled + 0.5).to(torch.int64))


def dequantize(values: torch.Tensor, scale) -> torch.Tensor:
    return values.to(torch.float64) * torch.as_tensor(scale, dtype=torch.float64)


def _matmul(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 dot products, ``x [T, in] @ w [out, in]^T``.

    Computed in float64, whose BLAS is far faster than integer matmul: every partial sum is an integer
    below 2**53 in magnitude (products below 2**14, fewer than 2**39 terms), so each is exact and the
    order of summation cannot change the result.
    """
    return (x_q.to(torch.float64) @ w_q.to(torch.float64).T).to(torch.int64)


@dataclass
class QuantizedLinear:
    """``y = epilogue(x_q @ weight^T, bias, multiplier, shift, table)``: int8 in, int8 out.

    weight int8 ``[out, in]``, bias int32 ``[out]``, multiplier/shift per output channel, an optional
    256-entry activation table, and the float scales the integers stand for.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    multiplier: torch.Tensor
    shift: torch.Tensor
    weight_scale: torch.Tensor
    in_scale: float
    out_scale: float
    table: torch.Tensor | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, in_scale: float,
                   out_scale: float, table: torch.Tensor | None = None,
                   output_factor: float = 1.0) -> "QuantizedLinear":
        """Quantise a float linear layer. `output_factor` folds a constant multiple of the output into
        the requantisation (e.g. a routed scaling factor); `table` applies after requantisation."""
        weight = weight.detach().to(torch.float64)
        weight_scale = _scale_of(weight, dim=1)
        weight_q = quantize_tensor(weight, weight_scale.unsqueeze(1))
        acc_scale = in_scale * weight_scale
        if bias is None:
            bias_q = torch.zeros(weight.shape[0], dtype=torch.int64)
        else:
            bias_q = nx.saturate(torch.floor(bias.detach().to(torch.float64) / acc_scale + 0.5)
                                 .to(torch.int64), 32)
        multiplier, shift = nx.quantize_multiplier(acc_scale * output_factor / out_scale)
        return cls(weight_q, bias_q, multiplier, shift, weight_scale, float(in_scale),
                   float(out_scale), table)

    def accumulate(self, x_q: torch.Tensor) -> torch.Tensor:
        """The int32 accumulators before the epilogue (bias not yet added)."""
        return _matmul(x_q, self.weight)

    def __call__(self, x_q: torch.Tensor) -> torch.Tensor:
        return nx.epilogue(self.accumulate(x_q), self.bias, self.multiplier, self.shift, self.table)


class _Ranges:
    """Max |value| seen on calibration tokens, per named tensor."""

    def __init__(self):
        self.peaks: dict[str, float] = {}

    def see(self, name: str, values: torch.Tensor) -> torch.Tensor:
        peak = float(values.detach().abs().max()) if values.numel() else 0.0
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        return values

    def scale(self, name: str) -> float:
        peak = self.peaks[name]
        return peak / nx.INT8_MAX if peak > 0 else 1.0


def swiglu_hidden(gate: QuantizedLinear, up: QuantizedLinear, multiplier, shift,
                  x_q: torch.Tensor) -> torch.Tensor:
    """The hidden values of a SwiGLU expert: ``requantise(table(gate(x)) * up(x))``."""
    return nx.requantize(gate(x_q) * up(x_q), multiplier, shift)


@dataclass
class QuantizedExpert:
    """An expert in integers. SwiGLU: ``h = requant(silu_table(gate(x)) * up(x))``; GELU/ReLU:
    ``h = table(up(x))``; then ``y = down(h)``, int8 at the layer's common expert-output scale."""

    activation: str
    up: QuantizedLinear
    gate: QuantizedLinear | None
    down: QuantizedLinear
    hidden_multiplier: torch.Tensor | None = None
    hidden_shift: torch.Tensor | None = None

    @classmethod
    def from_float(cls, expert: Expert, calib_x: torch.Tensor, in_scale: float, out_scale: float,
                   output_factor: float = 1.0) -> "QuantizedExpert":
        ranges = _Ranges()
        with torch.no_grad():
            up = ranges.see("up", expert.up(calib_x))
            if expert.activation == "swiglu":
                gate = ranges.see("gate", expert.gate(calib_x))
                act = ranges.see("act", torch.nn.functional.silu(gate))
                ranges.see("hidden", act * up)
            else:
                ranges.see("hidden", expert.hidden(calib_x))
        bias = lambda layer: layer.bias                                     # noqa: E731
        if expert.activation == "swiglu":
            gate_scale, act_scale = ranges.scale("gate"), ranges.scale("act")
            up_scale, hidden_scale = ranges.scale("up"), ranges.scale("hidden")
            gate_q = QuantizedLinear.from_float(expert.gate.weight, bias(expert.gate), in_scale,
                                                gate_scale,
                                                nx.activation_table("silu", gate_scale, act_scale))
            up_q = QuantizedLinear.from_float(expert.up.weight, bias(expert.up), in_scale, up_scale)
            hidden_multiplier, hidden_shift = nx.quantize_multiplier(
                act_scale * up_scale / hidden_scale)
        else:
            up_scale, hidden_scale = ranges.scale("up"), ranges.scale("hidden")
            table = nx.activation_table(expert.activation, up_scale, hidden_scale)
            up_q = QuantizedLinear.from_float(expert.up.weight, bias(expert.up), in_scale, up_scale,
                                              table)
            gate_q, hidden_multiplier, hidden_shift = None, None, None
        down_q = QuantizedLinear.from_float(expert.down.weight, bias(expert.down), hidden_scale,
                                            out_scale, output_factor=output_factor)
        return cls(expert.activation, up_q, gate_q, down_q, hidden_multiplier, hidden_shift)

    def hidden(self, x_q: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return swiglu_hidden(self.gate, self.up, self.hidden_multiplier, self.hidden_shift,
                                 x_q)
        return self.up(x_q)

    def __call__(self, x_q: torch.Tensor) -> torch.Tensor:
        return self.down(self.hidden(x_q))


@dataclass
class QuantizedMoE:
    """The whole MoE layer in integers: int8 tokens ``[T, d_model]`` in, int8 ``[T, d_model]`` out.

    Output: ``requant(sum_i gate_i * y_i + gate_shared * y_shared)`` where the y are int8 expert
    outputs at a common scale and the gates Q15.
    """

    spec: MoESpec
    in_scale: float
    expert_scale: float
    out_scale: float
    router: QuantizedRouter
    experts: list[QuantizedExpert]
    shared: QuantizedExpert | None
    shared_gate: QuantizedLinear | None
    combine_multiplier: torch.Tensor
    combine_shift: torch.Tensor

    @classmethod
    def from_float(cls, layer: MoELayer, calib_x: torch.Tensor) -> "QuantizedMoE":
        """Quantise `layer`, taking activation ranges from the calibration tokens `calib_x`."""
        spec = layer.spec
        calib_x = calib_x.detach().to(torch.float32)
        if calib_x.ndim != 2 or calib_x.shape[1] != spec.d_model:
            raise ValueError(f"calibration tokens must have shape [T, {spec.d_model}], "
                             f"not {list(calib_x.shape)}")
        in_scale = float(_scale_of(calib_x))
        with torch.no_grad():
            expert_peak = max(float(expert(calib_x).abs().max()) for expert in layer.experts)
            expert_peak *= spec.routed_scaling
            if layer.shared is not None:
                expert_peak = max(expert_peak, float(layer.shared(calib_x).abs().max()))
            out_peak = float(layer(calib_x).abs().max())
        expert_scale = expert_peak / nx.INT8_MAX if expert_peak > 0 else 1.0
        out_scale = out_peak / nx.INT8_MAX if out_peak > 0 else 1.0
        experts = [QuantizedExpert.from_float(expert, calib_x, in_scale, expert_scale,
                                              output_factor=spec.routed_scaling)
                   for expert in layer.experts]
        shared = shared_gate = None
        if layer.shared is not None:
            shared = QuantizedExpert.from_float(layer.shared, calib_x, in_scale, expert_scale)
            if layer.shared_gate is not None:
                shared_gate = QuantizedLinear.from_float(layer.shared_gate.weight, None, in_scale,
                                                         2.0 ** -nx.LOGIT_FRAC_BITS)
        combine_multiplier, combine_shift = nx.quantize_multiplier(
            expert_scale / (nx.GATE_ONE * out_scale))
        return cls(spec, in_scale, expert_scale, out_scale, QuantizedRouter.from_float(layer, in_scale),
                   experts, shared, shared_gate, combine_multiplier, combine_shift)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_tensor(x, self.in_scale)

    def dequantize_output(self, y_q: torch.Tensor) -> torch.Tensor:
        return dequantize(y_q, self.out_scale)

    def shared_gate_q15(self, x_q: torch.Tensor) -> torch.Tensor:
        """The shared expert's Q15 gate per token ``[T]`` (1.0 when it has no gate)."""
        if self.shared_gate is None:
            return torch.full((x_q.shape[0],), nx.GATE_ONE, dtype=torch.int64)
        logit = nx.requantize(self.shared_gate.accumulate(x_q), self.shared_gate.multiplier,
                              self.shared_gate.shift, bits=16)
        return nx.sigmoid_fixed(logit)[:, 0]

    def accumulate(self, x_q: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        """The gate-weighted sum ``[T, d_model]`` before the final requantisation, walking experts
        through their token queues as the hardware does."""
        x_q = torch.as_tensor(x_q, dtype=torch.int64)
        if x_q.ndim != 2 or x_q.shape[1] != self.spec.d_model:
            raise ValueError(f"tokens must have shape [T, {self.spec.d_model}], not {list(x_q.shape)}")
        routing = self.router(x_q) if routing is None else routing
        acc = torch.zeros(x_q.shape, dtype=torch.int64)
        for expert_id, (tokens, gates) in enumerate(dispatch_table(routing, self.spec.n_experts)):
            if tokens.numel():
                acc[tokens] += gates.unsqueeze(1) * self.experts[expert_id](x_q[tokens])
        if self.shared is not None:
            acc += self.shared_gate_q15(x_q).unsqueeze(1) * self.shared(x_q)
        return acc

    def forward(self, x_q: torch.Tensor) -> torch.Tensor:
        return nx.requantize(self.accumulate(x_q), self.combine_multiplier, self.combine_shift)

    __call__ = forward

    def run_float(self, x: torch.Tensor) -> torch.Tensor:
        """Quantise float tokens, run the integer layer, dequantise the result."""
        return self.dequantize_output(self.forward(self.quantize_input(x)))


def quantize_pruned(layer: MoELayer, pattern="dense", seed: int = 1,
                    calibration_tokens: int = 256) -> tuple["QuantizedMoE", torch.Generator]:
    """`layer`'s experts (and shared expert) pruned to `pattern` in place (a `SparsityPattern` or
    its name; the router and the shared expert's gate stay dense), then quantised on
    `calibration_tokens` random tokens; the generator, seeded with `seed`, goes on to draw inputs."""
    from ..config import SparsityPattern
    from .sparsity import prune

    pattern = SparsityPattern.parse(pattern) if isinstance(pattern, str) else pattern
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear) and module is not layer.router \
                    and module is not layer.shared_gate:
                module.weight.copy_(prune(module.weight, pattern))
    generator = torch.Generator().manual_seed(seed)
    layer_q = QuantizedMoE.from_float(layer, torch.randn(calibration_tokens, layer.spec.d_model,
                                                         generator=generator))
    return layer_q, generator
