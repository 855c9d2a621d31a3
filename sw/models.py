"""The bundled tiny MoE models: seeded random weights, one per router variant, exported to ONNX.

`python -m moeaccel.sw.models OUT_DIR` writes ``<name>.onnx`` for each of them with the dynamo
exporter (no downloads: everything is built here from the seed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch

from .reference import MoELayer, MoESpec

__all__ = ["TINY_MODELS", "build_model", "export_onnx"]

TINY_MODELS: dict[str, MoESpec] = {
    "tiny-mixtral": MoESpec(d_model=32, d_ff=64, n_experts=8, k=2, router="softmax_topk_renorm"),
    "tiny-qwen2-moe": MoESpec(d_model=32, d_ff=32, n_experts=8, k=2, router="softmax_topk",
                              shared_d_ff=64, shared_gate=True),
    "tiny-switch": MoESpec(d_model=32, d_ff=64, n_experts=4, k=1, router="top1", activation="relu"),
    "tiny-deepseek-v3": MoESpec(d_model=32, d_ff=32, n_experts=16, k=4, router="sigmoid_bias",
                                n_groups=4, topk_groups=2, routed_scaling=2.5, shared_d_ff=32,
                                shared_gate=False),
    "tiny-olmoe-gelu": MoESpec(d_model=32, d_ff=64, n_experts=8, k=2, router="softmax_topk",
                               activation="gelu"),
}


def build_model(name: str, seed: int = 0) -> MoELayer:
    """The named tiny model with weights drawn from `seed` (the same weights on every machine)."""
    try:
        spec = TINY_MODELS[name]
    except KeyError:
        raise KeyError(f"no bundled model named {name!r}; models are: {', '.join(TINY_MODELS)}") \
            from None
    generator = torch.Generator().manual_seed(seed)
    layer = MoELayer(spec).eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            bound = 1.0 / parameter.shape[-1] ** 0.5
            parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
        if layer.score_bias is not None:
            layer.score_bias.copy_(torch.randn(spec.n_experts, generator=generator) * 0.05)
    return layer


def export_onnx(layer: MoELayer, path: Path, tokens: int = 16) -> Path:
    """Export `layer` to ONNX with the dynamo exporter; the token count is a dynamic dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(tokens, layer.spec.d_model, generator=torch.Generator().manual_seed(0))
    # The exporter reports every torchvision operator it could not register; none is used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(layer, (example,), str(path), dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes={"x": {0: torch.export.Dim("tokens")}},
                          external_data=False, verbose=False)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=list(TINY_MODELS), action="append",
                        help="export only this model (repeatable)")
    args = parser.parse_args(argv)
    names = args.model or list(TINY_MODELS)
    for index, name in enumerate(names, 1):
        print(f"step {index}/{len(names)}: export {name}", file=sys.stderr)
        path = export_onnx(build_model(name, args.seed), args.out_dir / f"{name}.onnx")
        print(path)


if __name__ == "__main__":
    main()
