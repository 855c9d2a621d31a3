"""`moeaccel demo`: what the kit does today, end to end on the bundled tiny MoE models.

1. build the bundled models and export them to ONNX, checked against onnxruntime;
2. quantise them and run the integer golden model, measured against the float one;
3. run one expert's projection with its activation table through the epilogue RTL in Verilator,
   bit-exact against the golden model, and count its cycles;
4. run a whole MoE layer (routing from the golden router) through the Expert-FFN engine RTL:
   every expert's token queue, gate-weighted accumulation, the final requantisation, bit-exact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import preset

__all__ = ["run_demo"]


class Steps:
    """Prints "step n/N: name", then the step's time when it ends."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __call__(self, name: str):
        self.done += 1
        print(f"\nstep {self.done}/{self.total}: {name}", flush=True)
        self.start = time.monotonic()
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            print(f"  ({time.monotonic() - self.start:.1f} s)", flush=True)


def export_models(out_dir: Path) -> None:
    import numpy as np
    import onnxruntime

    from .sw.models import TINY_MODELS, build_model, export_onnx

    for name, spec in TINY_MODELS.items():
        layer = build_model(name)
        path = export_onnx(layer, out_dir / f"{name}.onnx")
        x = torch.randn(32, spec.d_model, generator=torch.Generator().manual_seed(1))
        (y_onnx,) = onnxruntime.InferenceSession(str(path)).run(None, {"x": x.numpy()})
        with torch.no_grad():
            difference = float(np.abs(y_onnx - layer(x).numpy()).max())
        print(f"  {path}  router={spec.router} E={spec.n_experts} k={spec.k} "
              f"experts={spec.activation}{' +shared' if spec.shared_d_ff else ''}  "
              f"|onnxruntime - torch| = {difference:.1e}")


def integer_models(calib_tokens: int = 512, eval_tokens: int = 512) -> None:
    from .sw.accuracy import measure
    from .sw.models import TINY_MODELS, build_model
    from .sw.quantized import QuantizedMoE

    print(f"  {'model':18} {'routing agrees':>14} {'cosine':>7} {'max err (LSB)':>13}")
    for name, spec in TINY_MODELS.items():
        layer = build_model(name)
        generator = torch.Generator().manual_seed(2)
        quantized = QuantizedMoE.from_float(layer, torch.randn(calib_tokens, spec.d_model,
                                                               generator=generator))
        accuracy = measure(layer, quantized, torch.randn(eval_tokens, spec.d_model,
                                                         generator=generator))
        print(f"  {name:18} {accuracy.routing_agreement:>14.3f} {accuracy.cosine:>7.4f} "
              f"{accuracy.max_error_lsb:>13.1f}")
    print("  (max error over tokens both routers send to the same experts; see docs/numerics.md)")


def epilogue_in_rtl(out_dir: Path, config_name: str = "tiny") -> dict:
    """The GELU up-projection of one expert of tiny-olmoe-gelu, for the tokens routed to it, through
    the epilogue RTL: accumulators in, int8 activations out, compared with the integer model."""
    from .hw.epilogue import Epilogue
    from .sim.harness import run_cocotb
    from .sw.models import build_model
    from .sw.quantized import QuantizedMoE
    from .sw.router import dispatch_table

    lanes = preset(config_name).epilogue_lanes
    layer = build_model("tiny-olmoe-gelu")
    generator = torch.Generator().manual_seed(3)
    quantized = QuantizedMoE.from_float(layer, torch.randn(512, layer.spec.d_model,
                                                           generator=generator))
    x_q = quantized.quantize_input(torch.randn(64, layer.spec.d_model, generator=generator))
    tokens, _ = dispatch_table(quantized.router(x_q), layer.spec.n_experts)[0]
    up = quantized.experts[0].up
    acc = up.accumulate(x_q[tokens])                                   # [tokens, d_ff]
    channels = acc.shape[1]
    assert channels % lanes == 0
    rows = [{"tag": 0,
             "lanes": [{"acc": int(acc[t, c]), "apply_table": 1,
                        "params": {"bias": int(up.bias[c]), "multiplier": int(up.multiplier[c]),
                                   "shift": int(up.shift[c])}}
                       for c in range(start, start + lanes)]}
            for t in range(acc.shape[0]) for start in range(0, channels, lanes)]
    job_dir = out_dir.resolve() / "epilogue"
    job_dir.mkdir(parents=True, exist_ok=True)
    rows_file, report_file = job_dir / "rows.json", job_dir / "report.json"
    rows_file.write_text(json.dumps({"table": up.table.tolist(), "rows": rows}))
    report_file.unlink(missing_ok=True)
    print(f"  expert 0 of tiny-olmoe-gelu: {len(tokens)} tokens x d_ff {channels} = {len(rows)} rows "
          f"of {lanes} lanes ({config_name} preset)")
    run_cocotb(Epilogue(lanes), toplevel="epilogue", test_module="moeaccel.sim.tb.epilogue_replay",
               build_key=f"lanes{lanes}_tag0", timeout_s=600, log_file=job_dir / "sim.log",
               parameters={"lanes": lanes, "rows_file": str(rows_file),
                           "report_file": str(report_file)})
    report = json.loads(report_file.read_text())
    report.update(ideal_cycles=len(rows), latency=Epilogue.LATENCY)
    print(f"  simulation log: {job_dir / 'sim.log'}")
    print(f"  RTL output bit-exact with the golden model: {report['errors'] == 0} "
          f"({report['rows']} rows checked)")
    print(f"  cycles: {report['cycles']} for {len(rows)} rows (ideal {len(rows)} at one row per "
          f"cycle, plus {Epilogue.LATENCY} cycles of pipeline latency)")
    return report


def moe_layer_in_rtl(out_dir: Path, model: str = "tiny-mixtral", tokens: int = 16,
                     config_name: str = "tiny") -> dict:
    """A bundled MoE layer through the Expert-FFN engine RTL: every routed expert's token queue
    (gathered), gate-weighted accumulation into the output rows, the final requantisation; the int8
    output compared with the integer golden model."""
    from .hw.expert_ffn import FFNEngine
    from .sim.harness import run_cocotb

    config = preset(config_name)
    job_dir = out_dir.resolve() / "moe_layer"
    job_dir.mkdir(parents=True, exist_ok=True)
    report_file = job_dir / "report.json"
    report_file.unlink(missing_ok=True)
    case = dict(kind="moe", model=model, pattern="dense", tokens=tokens, seed=0, weight_idle=0.0,
                backpressure=0.0)
    print(f"  {model}: {tokens} tokens through the Expert-FFN engine ({config_name} preset, "
          f"{config.mac_rows}x{config.mac_cols} MAC array)")
    run_cocotb(FFNEngine(config), toplevel="expert_ffn", test_module="moeaccel.sim.tb.expert_ffn",
               build_key=config_name, timeout_s=1200, log_file=job_dir / "sim.log",
               parameters={"config": config_name, "cases": [case], "report_file": str(report_file)})
    (report,) = json.loads(report_file.read_text())
    print(f"  simulation log: {job_dir / 'sim.log'}")
    print(f"  experts run: {report['experts_run']} (experts without tokens are skipped)")
    print(f"  layer output bit-exact with the golden model: {report['mismatches'] == 0} "
          f"({report['values']} values)")
    print(f"  cycles: {report['busy_cycles']} (ideal {report['ideal_cycles']} = "
          f"{report['macs']} MACs / {config.mac_units} lanes; {report['weight_stall_cycles']} waiting "
          f"for weights at {config.axi_data_width}-bit)")
    return report


def attention_in_rtl(config_name: str = "tiny") -> dict:
    """A causal grouped-query attention call through the attention unit, its sequencer and a memory
    in Verilator; the output compared with the integer golden model, cycles with the model."""
    from .bench import bench_attention

    result = bench_attention(48, 4, 2, 16, causal=True, config_name=config_name)
    print(f"  L={result['seq_kv']}, {result['heads']} query heads sharing {result['kv_heads']} "
          f"key/value heads of {result['head_dim']}, causal ({config_name} preset, "
          f"{result['lanes']} MAC lanes, groups of {result['group']} queries)")
    print(f"  output bit-exact with the golden model: {result['bit_exact']}")
    print(f"  cycles: {result['cycles']} (model {result['model_cycles']}, ideal "
          f"{result['ideal_cycles']}, utilization {result['utilization']})")
    print(f"  DRAM bytes: {result['dram_bytes']} measured, {result['dram_bytes_formula']} by the "
          f"formula ({result['dram_formula']}); on-chip state {result['onchip_bytes']} bytes")
    return result


def layers_as_programs(out_dir: Path, config_name: str = "tiny", tokens: int = 16) -> None:
    """Each bundled model's MoE layer as an instruction program and DRAM image, run on the ISA
    emulator and compared with the integer golden model; the programs and their disassembly are
    written to `out_dir`."""
    from .host.emulator import Emulator
    from .compiler.emit import moe_layer_program
    from .sw.models import TINY_MODELS, build_model
    from .sw.quantized import QuantizedMoE

    config = preset(config_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TINY_MODELS:
        generator = torch.Generator().manual_seed(1)
        layer = QuantizedMoE.from_float(build_model(name), torch.randn(
            256, TINY_MODELS[name].d_model, generator=generator))
        x_q = layer.quantize_input(torch.randn(tokens, layer.spec.d_model, generator=generator))
        program = moe_layer_program(config, layer, tokens)
        emulator = Emulator(config, program.window_bytes)
        program.load(emulator.dram, x_q)
        blob = program.program.encode()
        result = emulator.run(blob)
        exact = result.ok and bool(torch.equal(program.result(emulator.dram), layer(x_q)))
        (out_dir / f"{name}.bin").write_bytes(blob)
        (out_dir / f"{name}.txt").write_text("\n".join(program.program.disassemble()) + "\n")
        print(f"  {name:<18} {len(program.program):3d} instructions, "
              f"{program.window_bytes:6d}-byte image: {result.status.name}, bit-exact {exact}, "
              f"{result.cycles} cycles (model)")


def run_demo(out_dir: Path, rtl: bool = True) -> None:
    out_dir = Path(out_dir)
    steps = Steps(6 if rtl else 3)
    with steps("export the bundled tiny MoE models to ONNX (dynamo exporter)"):
        export_models(out_dir / "models")
    with steps("quantise them and run the integer golden model against the float one"):
        integer_models()
    with steps("each MoE layer as an instruction program on the bit-exact ISA emulator"):
        layers_as_programs(out_dir / "programs")
    if rtl:
        with steps("epilogue RTL in Verilator on a real expert's accumulators"):
            epilogue_in_rtl(out_dir)
        with steps("a whole MoE layer through the Expert-FFN engine RTL in Verilator"):
            moe_layer_in_rtl(out_dir)
        with steps("attention, keys and values streamed once per query group, in Verilator"):
            attention_in_rtl()
    print(f"\nartefacts in {out_dir}")
