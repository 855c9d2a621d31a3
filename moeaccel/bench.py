"""Benchmarks measured in cycles from RTL simulation: `moeaccel bench BLOCK ...`.

``expert-ffn`` runs one expert (a seeded random float expert, pruned to the pattern and quantised)
through the Expert-FFN engine in Verilator, checks its output bit for bit against the golden model,
and reports the engine's cycle counters against the ideal of ``MACs / MAC units``.

``vector`` runs one VECTOR (a seeded random case of one op) through the vector unit without stalls,
checks it bit for bit, and reports its cycles against the ideal of ``rows x width / vector_lanes``
and the cycle model.

``moe-layer`` runs a whole MoE layer as the compiler writes it on the accelerator top, checks it
byte for byte against the emulator (and the emulator against the golden model), and reports the
top's cycles against the emulator's model.

``figures`` re-measures every figure the docs quote, recorded in ``docs/figures.json`` (one entry
per measurement: the bench, its arguments, the values), and fails on any difference (`make bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .config import SparsityPattern, preset
from .figures import FIGURES_FILE, load_figures
from .formats.expert_ffn import EXPERT_ACTIVATIONS
from .formats.router import ROUTER_MODES
from .formats.vector import VectorOp
from .sw.inputs import ATTENTION_INPUT_KINDS

__all__ = ["SimulationFailed", "bench_expert_ffn", "bench_router", "bench_attention",
           "bench_vector", "bench_moe_layer", "VECTOR_OPS", "rope_head_dim", "sweep",
           "sweep_table", "measure_figure", "figure_differences", "figure_command", "check_figures",
           "add_arguments"]


class SimulationFailed(RuntimeError):
    """A benchmark's simulation did not pass: a cocotb test failed (a mismatch against the golden
    model included), none ran, or the simulator exited with an error or timed out."""


def _simulate_case(component, toplevel: str, config_name: str, case: dict, what: str,
                   testbench: str | None = None, extra: dict | None = None, **options) -> dict:
    """One case through `component`'s cocotb testbench (``moeaccel.sim.tb.<testbench>``, by
    default the toplevel's name; `extra` parameters beside the case); its report. Any failure of
    the simulation, whether or not it wrote a report, prints the log's tail and raises
    `SimulationFailed`: a report is used only from a run that passed."""
    from .sim.harness import run_cocotb

    with tempfile.TemporaryDirectory() as scratch:
        report_file = Path(scratch) / "report.json"
        log_file = Path(scratch) / "sim.log"
        print(f"simulating {what} on {config_name} ...", file=sys.stderr, flush=True)
        try:
            run_cocotb(component, toplevel=toplevel,
                       test_module=f"moeaccel.sim.tb.{testbench or toplevel}",
                       build_key=config_name, timeout_s=3600, log_file=log_file,
                       parameters={"config": config_name, "overrides": {}, "cases": [case],
                                   "report_file": str(report_file), **(extra or {})},
                       **options)
        except AssertionError as failure:
            if log_file.exists():
                print(log_file.read_text()[-4000:], file=sys.stderr)
            raise SimulationFailed(f"{what} on {config_name}: {failure}") from None
        (report,) = json.loads(report_file.read_text())
    return report


def bench_expert_ffn(tokens: int, d_model: int, d_ff: int, sparsity: str = "dense",
                     activation: str = "swiglu", config_name: str = "pynq-z2",
                     seed: int = 0) -> dict:
    """Run one expert in RTL simulation; return the measured figures (see module doc)."""
    from .hw.expert_ffn import FFNEngine

    config = preset(config_name)
    pattern = SparsityPattern.parse(sparsity)
    # Refuse what the configuration cannot hold before building anything.
    _check_shape(config, tokens, d_model, d_ff, pattern, activation)
    case = dict(kind="expert", activation=activation, pattern=str(pattern), tokens=tokens,
                d_model=d_model, d_ff=d_ff, seed=seed, weight_idle=0.0, backpressure=0.0)
    report = _simulate_case(FFNEngine(config), "expert_ffn", config.name, case,
                            f"{activation} expert T={tokens} D={d_model} F={d_ff} {pattern}")
    return {
        "block": "expert-ffn", "config": config.name, "tokens": tokens, "d_model": d_model,
        "d_ff": d_ff, "sparsity": str(pattern), "activation": activation,
        "cycles": report["busy_cycles"], "ideal_cycles": report["ideal_cycles"],
        "utilization": round(report["ideal_cycles"] / report["busy_cycles"], 4),
        "macs": report["macs"], "mac_units": config.mac_units,
        "weight_bytes": report["weight_bytes"],
        "weight_stall_cycles": report["weight_stall_cycles"], "output_stall_cycles": report["output_stall_cycles"],
        "bit_exact": report["mismatches"] == 0,
    }


def bench_router(tokens: int, experts: int, k: int, mode: str, config_name: str = "pynq-z2",
                 groups: int = 1, topk_groups: int = 1, seed: int = 0, d_model: int = 0) -> dict:
    """Route `tokens` tokens through the router RTL; cycles and bit-exactness of the dispatch
    table. With `d_model` the router computes the logits from int8 tokens and router weights with
    its own GEMM; without, random logits stream in."""
    from .hw.router import Router
    from .sw.reference import MoESpec

    config = preset(config_name)
    MoESpec(8, 8, experts, k, router=mode, n_groups=groups, topk_groups=topk_groups)  # validates
    for name, value, limit in (("tokens", tokens, config.max_tokens),
                               ("experts", experts, config.max_experts), ("k", k, config.max_k),
                               ("groups", groups, config.max_groups),
                               ("d_model", d_model, config.max_d_model)):
        if value > limit:
            raise ValueError(f"{name}={value} exceeds the {config.name} configuration's limit "
                             f"of {limit}")
    case = dict(mode=mode, experts=experts, k=k, tokens=tokens, logits="random", seed=seed,
                groups=groups, topk_groups=topk_groups, idle=0.0, d_model=d_model)
    report = _simulate_case(Router(config), "router", config.name, case,
                            f"the router: {tokens} tokens, E={experts}, k={k}, {mode}")
    return {"block": "router", "config": config.name, "tokens": tokens, "experts": experts,
            "k": k, "mode": mode, "d_model": d_model, "logits_gemm": bool(d_model),
            "router_lanes": config.router_lanes, "cycles": report["cycles"],
            "cycles_per_token": round(report["cycles_per_token"], 2),
            "overflow": report["overflow"], "bit_exact": not report["mismatches"]}


def bench_attention(seq: int, heads: int, kv_heads: int, head_dim: int, causal: bool = False,
                    config_name: str = "pynq-z2", seed: int = 0, kind: str = "random",
                    seq_q: int | None = None) -> dict:
    """Run one attention call (``seq_q`` queries, default `seq`, against `seq` keys) through the
    attention unit, its sequencer and a memory in Verilator; cycles against the ideal of
    ``MACs / lanes``, on-chip and DRAM bytes against their formulas, bit-exactness."""
    from .cycles import attention_cycles
    from .hw.attention_sizing import attention_onchip_bytes, attention_state_bytes
    from .sim.designs.attention_system import WORD_RAM_VERILOG, AttentionSystem
    from .sw import attention as sa

    config = preset(config_name)
    shape = sa.AttentionShape(seq if seq_q is None else seq_q, seq, heads, kv_heads, head_dim,
                              causal)
    sa.check_fits(shape, config)
    word, group = config.axi_data_bytes, config.attention_group
    case = dict(seq_q=shape.seq_q, seq_kv=shape.seq_kv, heads=heads, kv_heads=kv_heads,
                head_dim=head_dim, causal=causal, kind=kind, seed=seed)
    report = _simulate_case(AttentionSystem(config), "attention_system", config.name, case,
                            f"attention L={seq} H={heads}/{kv_heads} D={head_dim}"
                            f"{' causal' if causal else ''}", free_clock_ns=10,
                            extra_verilog=WORD_RAM_VERILOG)
    lanes = config.attention_lanes
    macs = sa.attention_macs(shape)
    ideal = -(-macs // lanes)
    traffic = sa.traffic_bytes(shape, group, word)
    model = attention_cycles(shape, group, word)
    return {
        "block": "attention", "config": config.name, "seq_q": shape.seq_q, "seq_kv": shape.seq_kv,
        "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "causal": causal,
        "group": group, "lanes": lanes,
        "cycles": report["busy_cycles"], "ideal_cycles": ideal,
        "utilization": round(ideal / report["busy_cycles"], 4),
        "model_cycles": model["total"], "macs": macs,
        "onchip_bytes": attention_state_bytes(config, shape),
        "onchip_capacity_bytes": attention_onchip_bytes(config),
        "dram_bytes": (report["dram_reads"] + report["dram_writes"]) * word,
        "dram_bytes_formula": traffic["total"],
        "dram_formula": "Q once + (K + V) once per query group + O once: "
                        f"{traffic['q']} + {traffic['kv']} + {traffic['o']}",
        "unit_words": report["words_in"] + report["words_out"],
        "input_stall_cycles": report["input_stall_cycles"],
        "bit_exact": not report["mismatches"],
    }


# The vector unit's ops as the command line names them.
VECTOR_OPS = tuple(op.name.lower() for op in VectorOp)
ROPE_HEAD_DIM = 64             # the smallest head `bench vector` picks for ROPE by itself


def rope_head_dim(config, width: int) -> int:
    """The head ROPE rotates over rows of `width` when none is given: the smallest multiple of
    ``2 x vector_lanes`` from `ROPE_HEAD_DIM` up that divides `width`."""
    pair = 2 * config.vector_lanes
    start = -(-ROPE_HEAD_DIM // pair) * pair
    for head_dim in range(start, width + 1, pair):
        if width % head_dim == 0:
            return head_dim
    raise ValueError(f"ROPE over width={width}: no multiple of {pair} (2 x vector_lanes) from "
                     f"{ROPE_HEAD_DIM} up divides it; give --head-dim")


def bench_vector(op: str, rows: int, width: int, head_dim: int | None = None,
                 config_name: str = "pynq-z2", seed: int = 0) -> dict:
    """Run one VECTOR of `op` over `rows` rows of `width` (seeded random int8 rows, int32 for
    requant, with realistic operands) through the vector unit in Verilator, without idles or
    backpressure. ``cycles`` counts from the command's accept to the last output transfer (both
    cycles counted); ``ideal_cycles`` is every element through the lanes once."""
    from .cycles import vector_cycles
    from .formats.vector import check
    from .hw.vector import VectorUnit
    from .sim.tb.vector import command_fields, ideal_cycles

    config = preset(config_name)
    if op not in VECTOR_OPS:
        raise ValueError(f"op={op!r} is no vector op (one of {', '.join(VECTOR_OPS)})")
    vector_op = VectorOp[op.upper()]
    if vector_op is VectorOp.ROPE and head_dim is None:
        head_dim = rope_head_dim(config, width)
    row_limit = config.max_tokens if vector_op is VectorOp.GATE else \
        max(config.max_tokens, config.max_seq_len)
    if rows > row_limit:
        raise ValueError(f"rows={rows} exceeds the {config.name} configuration's limit of "
                         f"{row_limit}" + (" (max_tokens: a gate's token index)"
                                           if vector_op is VectorOp.GATE else ""))
    fields = command_fields(vector_op, rows, width, head_dim or 0)
    reasons = check(config, fields)
    if reasons:
        raise ValueError(f"the {config.name} vector unit refuses it: {'; '.join(reasons)}")
    case = dict(op=op, rows=rows, width=width, head_dim=fields["head_dim"], kind="random",
                scales="realistic", eps="operands", seed=seed, idle=0.0, backpressure=0.0)
    shape = f"{rows}x{width}" + (f", head_dim {head_dim}" if vector_op is VectorOp.ROPE else "")
    report = _simulate_case(VectorUnit(config), "vector", config.name, case,
                            f"the vector unit: {op} over {shape}")
    ideal = ideal_cycles(config, rows, width)
    return {"block": "vector", "config": config.name, "op": op, "rows": rows, "width": width,
            "head_dim": fields["head_dim"], "vector_lanes": config.vector_lanes,
            "cycles": report["cycles"], "busy_cycles": report["busy_cycles"],
            "ideal_cycles": ideal, "utilization": round(ideal / report["cycles"], 4),
            "model_cycles": vector_cycles(config, fields),
            "input_stall_cycles": report["input_stall_cycles"],
            "output_stall_cycles": report["output_stall_cycles"],
            "bit_exact": not report["mismatches"]}


def bench_moe_layer(model: str | None = None, tokens: int = 16, sparsity: str = "dense",
                    config_name: str = "tiny", seed: int = 3, d_model: int = 256, d_ff: int = 512,
                    experts: int = 8, k: int = 2, prefetch: bool = True) -> dict:
    """One MoE layer as the compiler writes it (`compiler.emit.moe_layer_program`: ROUTE,
    EXPERT_LOOP, the shared expert, the drain) on the accelerator top in Verilator: a bundled model
    (`model`, one of `sw.models.TINY_MODELS`), or a seeded random SwiGLU layer of `d_model`,
    `d_ff`, `experts` and `k`; its experts pruned to `sparsity` and quantised; on `tokens` random
    tokens. The top's DRAM window must end as the emulator's, and the emulator's result be
    `QuantizedMoE`'s. Reports the top's cycles beside the emulator's model, and the ideals of the
    active experts: their MACs (kept weights) over the MAC array's ``mac_rows x mac_cols`` lanes,
    their packed weight bytes over the bus's bytes a cycle."""
    import torch

    from .compiler.emit import moe_layer_program
    from .formats import expert_ffn
    from .formats.instructions import expert_loop_commands
    from .host.emulator import Emulator
    from .host.units import expert_tokens
    from .hw.top import Accelerator
    from .sw.models import build_model
    from .sw.quantized import quantize_pruned
    from .sw.reference import MoELayer, MoESpec

    config = preset(config_name)
    pattern = SparsityPattern.parse(sparsity)
    if model is not None:
        layer = build_model(model, seed=seed)
    else:
        torch.manual_seed(seed)
        layer = MoELayer(MoESpec(d_model=d_model, d_ff=d_ff, n_experts=experts, k=k)).eval()
    layer_q, generator = quantize_pruned(layer, pattern, seed)
    spec = layer_q.spec
    x_q = layer_q.quantize_input(torch.randn(tokens, spec.d_model, generator=generator))
    program = moe_layer_program(config, layer_q, tokens, pattern, prefetch=prefetch)
    window = -(-program.window_bytes // 4096) * 4096
    image = bytearray(window)
    program.load(image, x_q)
    emulator = Emulator(config, window)
    emulator.dram[:] = image
    golden = emulator.run(program.program.encode())
    exact = golden.ok and torch.equal(program.result(emulator.dram), layer_q(x_q))
    # the ideals of the experts with tokens (the shared expert's passes are not counted)
    lanes = config.mac_rows * config.mac_cols
    body = {"d_model": spec.d_model, "d_ff": spec.d_ff, "pattern": config.patterns.index(pattern),
            "swiglu": int(spec.activation == "swiglu")}
    macs = weight_bytes = 0
    for count in expert_tokens(config, emulator.memory)[:spec.n_experts]:
        if count:
            for command in expert_loop_commands(config, body, count):
                rows = command["tiles"] * config.mac_rows
                inputs = command["chunks"] * expert_ffn.chunk_inputs(config, pattern)
                macs += count * rows * inputs * pattern.n // pattern.m
                weight_bytes += expert_ffn.weight_bytes(config, command)
    name = (f"{model} " if model else f"D={spec.d_model} F={spec.d_ff} E={spec.n_experts} "
            f"k={spec.k} ") + f"T={tokens} {sparsity}"
    case = {"name": name, "program": program.program.encode().hex(), "window": window,
            "patches": [(0, bytes(image).hex())],
            "cycles": max(200_000, 4 * golden.cycles)}        # the testbench's time limit
    report = _simulate_case(Accelerator(config), "accelerator", config_name, case,
                            f"the layer {name}", testbench="top", extra={"pause": 0})
    counters = report["counters"]
    return {
        "bit_exact": bool(exact and not report["mismatches"] and report["code"] == "NONE"),
        "cycles": counters["top_total_cycles"],
        "model_cycles": report["model_cycles"],
        "compute_cycles_ideal": -(-macs // lanes),
        "load_cycles_ideal": -(-weight_bytes // config.axi_data_bytes),
        "array_cycles": counters["expert_ffn_mac_cycles"],
        "router_cycles": counters["router_busy_cycles"],
        "experts_run": counters["top_experts_run"],
        "experts_skipped": counters["top_experts_skipped"],
        "instructions": len(program.program),
        "counters": counters,
    }


def _check_shape(config, tokens, d_model, d_ff, pattern, activation):
    """Plan the expert's passes (raises `ShapeError` naming what does not fit)."""
    from .compiler.plan import plan_pass

    swiglu = activation == "swiglu"
    plan_pass(config, tokens, d_model, d_ff, pattern, swiglu=swiglu, activation=True,
              to_buffer=True)
    plan_pass(config, tokens, d_ff, d_model, pattern, src=1)


SWEEP = [  # (tokens, d_model, d_ff, sparsity, activation) on pynq-z2
    (1, 256, 512, "dense", "swiglu"), (16, 256, 512, "dense", "swiglu"),
    (128, 256, 512, "dense", "swiglu"), (1, 256, 512, "2:4", "swiglu"),
    (16, 256, 512, "2:4", "swiglu"), (128, 256, 512, "2:4", "swiglu"),
    (128, 256, 512, "1:4", "swiglu"), (128, 256, 512, "4:8", "swiglu"),
    (64, 256, 1024, "dense", "gelu"), (64, 256, 1024, "2:4", "gelu"),
]


def sweep_table(rows: list[dict]) -> list[str]:
    """The Markdown table of expert-ffn results (docs/expert_ffn.md): utilization, and cycles and
    weight bytes against the dense row of the same shape."""
    dense = {(r["tokens"], r["d_model"], r["d_ff"], r["activation"]): r for r in rows
             if r["sparsity"] == "dense"}
    lines = ["| tokens | d_model | d_ff | act | sparsity | cycles | ideal | utilization | "
             "vs dense | weight bytes | bytes vs dense | weight wait |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = dense.get((r["tokens"], r["d_model"], r["d_ff"], r["activation"]))
        speedup = f"{base['cycles'] / r['cycles']:.2f}x" if base else "-"
        ratio = f"{r['weight_bytes'] / base['weight_bytes']:.3f}" if base else "-"
        lines.append(f"| {r['tokens']} | {r['d_model']} | {r['d_ff']} | {r['activation']} | "
                     f"{r['sparsity']} | {r['cycles']} | {r['ideal_cycles']} | "
                     f"{r['ideal_cycles'] / r['cycles']:.3f} | {speedup} | {r['weight_bytes']} | "
                     f"{ratio} | {r['weight_stall_cycles']} |")
    return lines


def sweep(out: Path, config_name: str = "pynq-z2") -> list[dict]:
    """Run the SWEEP shapes; write a Markdown table to `out` (and the rows as JSON beside it).
    Every row is bit-exact: a mismatch fails the run (`SimulationFailed`)."""
    rows = []
    for index, shape in enumerate(SWEEP, 1):
        print(f"step {index}/{len(SWEEP)}: expert-ffn {shape}", file=sys.stderr, flush=True)
        rows.append(bench_expert_ffn(*shape, config_name=config_name))
    lines = [f"# Expert-FFN engine: cycles in RTL simulation ({config_name}, "
             f"{preset(config_name).mac_units} MAC lanes)", ""] + sweep_table(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return rows


# -- the docs' figures: one home, re-measured by `moeaccel bench figures` ------------------------

BENCHES = {"expert-ffn": bench_expert_ffn, "router": bench_router, "attention": bench_attention,
           "vector": bench_vector, "moe-layer": bench_moe_layer}


def measure_figure(entry: dict) -> dict:
    """Run the entry's benchmark in RTL simulation; its result."""
    return BENCHES[entry["bench"]](**entry["args"])


def figure_differences(entry: dict, result: dict) -> list[str]:
    """Each recorded value the measurement does not reproduce, as ``key: measured X, recorded Y``."""
    return [f"{key}: measured {result.get(key)}, recorded {value}"
            for key, value in entry["measured"].items() if result.get(key) != value]


def figure_command(entry: dict) -> str:
    """The command line that measures the entry (its arguments are the bench function's, by
    name; ``config_name`` is ``--config``, True a flag)."""
    words = ["moeaccel", "bench", entry["bench"]]
    for key, value in entry["args"].items():
        option = "--config" if key == "config_name" else "--" + key.replace("_", "-")
        words += [option] if value is True else [option, str(value)]
    return " ".join(words + ["--json"])


def check_figures(names: list[str] | None = None, path: Path = FIGURES_FILE,
                  out: Path | None = None) -> int:
    """Re-measure the named entries (default: all) of `path`; print each against its record;
    0 when every value is reproduced, 1 otherwise (a value differs, or a simulation failed). `out`
    takes the measured results as JSON."""
    entries = load_figures(path)["cycles"]
    known = {entry["name"] for entry in entries}
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise KeyError(f"no figure named {unknown[0]!r} in {path}")
    chosen = [entry for entry in entries if not names or entry["name"] in names]
    results, failed = [], []
    for index, entry in enumerate(chosen, 1):
        print(f"step {index}/{len(chosen)}: {entry['name']}: {figure_command(entry)}",
              file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result = measure_figure(entry)
            differences = figure_differences(entry, result)
        except SimulationFailed as failure:
            result, differences = {}, [f"simulation failed: {failure}"]
        seconds = time.monotonic() - start
        results.append({"name": entry["name"], "seconds": round(seconds, 1),
                        "differences": differences, **result})
        verdict = "as recorded" if not differences else "DIFFERS: " + "; ".join(differences)
        print(f"{entry['name']}: {verdict} ({seconds:.0f} s)", flush=True)
        if differences:
            failed.append(entry["name"])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    if failed:
        print(f"{len(failed)} of {len(chosen)} figures differ from {path}: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    print(f"all {len(chosen)} figures as recorded in {path}")
    return 0


def add_arguments(commands) -> None:
    bench = commands.add_parser("bench", help="cycle benchmarks of the RTL blocks in simulation")
    blocks = bench.add_subparsers(dest="block", required=True, metavar="BLOCK")
    ffn = blocks.add_parser("expert-ffn", help="one expert through the Expert-FFN engine")
    ffn.add_argument("--tokens", type=int, required=True)
    ffn.add_argument("--d-model", type=int, required=True)
    ffn.add_argument("--d-ff", type=int, required=True)
    ffn.add_argument("--sparsity", default="dense", help="N:M or dense (default)")
    ffn.add_argument("--activation", choices=EXPERT_ACTIVATIONS, default="swiglu")
    ffn.add_argument("--config", default="pynq-z2", help="preset (default pynq-z2)")
    ffn.add_argument("--seed", type=int, default=0)
    ffn.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ffn.set_defaults(run=_run_expert_ffn)
    router = blocks.add_parser("router", help="tokens through the router into the dispatch table")
    router.add_argument("--tokens", type=int, required=True)
    router.add_argument("--experts", type=int, required=True)
    router.add_argument("--k", type=int, required=True)
    router.add_argument("--mode", required=True,
                        choices=ROUTER_MODES)
    router.add_argument("--d-model", type=int, default=0,
                        help="compute the logits with the router's GEMM over d_model-wide tokens "
                             "(default: stream random logits in)")
    router.add_argument("--groups", type=int, default=1)
    router.add_argument("--topk-groups", type=int, default=1)
    router.add_argument("--config", default="pynq-z2", help="preset (default pynq-z2)")
    router.add_argument("--seed", type=int, default=0)
    router.add_argument("--json", action="store_true", help="one JSON object on stdout")
    router.set_defaults(run=_run_router)
    attention = blocks.add_parser(
        "attention", help="an attention call through the attention unit (K/V once per query group)")
    attention.add_argument("--seq", type=int, required=True, help="keys (and queries) L")
    attention.add_argument("--seq-q", type=int, default=None,
                           help="query rows (default L; causal queries are the last positions)")
    attention.add_argument("--heads", type=int, required=True)
    attention.add_argument("--kv-heads", type=int, default=None,
                           help="key/value heads (default: heads; fewer is grouped-query)")
    attention.add_argument("--head-dim", type=int, required=True)
    attention.add_argument("--causal", action="store_true")
    attention.add_argument("--kind", choices=ATTENTION_INPUT_KINDS, default="random")
    attention.add_argument("--config", default="pynq-z2", help="preset (default pynq-z2)")
    attention.add_argument("--seed", type=int, default=0)
    attention.add_argument("--json", action="store_true", help="one JSON object on stdout")
    attention.set_defaults(run=_run_attention)
    vector = blocks.add_parser("vector", help="one VECTOR through the vector unit")
    vector.add_argument("--op", required=True, choices=VECTOR_OPS)
    vector.add_argument("--rows", type=int, required=True)
    vector.add_argument("--width", type=int, required=True)
    vector.add_argument("--head-dim", type=int, default=None,
                        help=f"ROPE's head (default: the smallest multiple of 2 x vector_lanes "
                             f"from {ROPE_HEAD_DIM} up that divides the width)")
    vector.add_argument("--config", default="pynq-z2", help="preset (default pynq-z2)")
    vector.add_argument("--seed", type=int, default=0)
    vector.add_argument("--json", action="store_true", help="one JSON object on stdout")
    vector.set_defaults(run=_run_vector)
    layer = blocks.add_parser("moe-layer", help="a whole MoE layer on the accelerator top")
    layer.add_argument("--model", default=None, help="a bundled model (default: a seeded random "
                       "layer of the shape below)")
    layer.add_argument("--tokens", type=int, default=16)
    layer.add_argument("--d-model", type=int, default=256)
    layer.add_argument("--d-ff", type=int, default=512)
    layer.add_argument("--experts", type=int, default=8)
    layer.add_argument("--k", type=int, default=2)
    layer.add_argument("--sparsity", default="dense", help="N:M or dense (default)")
    layer.add_argument("--no-prefetch", action="store_true",
                       help="the EXPERT_LOOP without prefetch")
    layer.add_argument("--config", default="tiny", help="preset (default tiny)")
    layer.add_argument("--seed", type=int, default=3)
    layer.add_argument("--json", action="store_true", help="one JSON object on stdout")
    layer.set_defaults(run=lambda args: _print(bench_moe_layer(
        args.model, args.tokens, args.sparsity, args.config, args.seed, args.d_model, args.d_ff,
        args.experts, args.k, not args.no_prefetch), args.json))
    table = blocks.add_parser("sweep", help="a sweep of expert shapes, written as a table")
    table.add_argument("--out", type=Path, default=Path("build/bench/expert_ffn.md"))
    table.add_argument("--config", default="pynq-z2")
    table.set_defaults(run=lambda args: 0 if all(
        row["bit_exact"] for row in sweep(args.out, args.config)) else 1)
    figures = blocks.add_parser(
        "figures", help="re-measure the figures the docs quote (docs/figures.json); fail on a "
                        "difference")
    figures.add_argument("names", nargs="*", metavar="NAME", help="entries to measure (default: all)")
    figures.add_argument("--figures", type=Path, default=FIGURES_FILE, help="the record")
    figures.add_argument("--out", type=Path, help="write the measured results here as JSON")
    figures.add_argument("--list", action="store_true", help="print each entry's command, measure "
                         "nothing")
    figures.set_defaults(run=_run_figures)


def _run_figures(args) -> int:
    if args.list:
        for entry in load_figures(args.figures)["cycles"]:
            print(f"{entry['name']}: {figure_command(entry)}")
        return 0
    return check_figures(args.names or None, args.figures, args.out)


def _run_router(args) -> int:
    return _print(bench_router(args.tokens, args.experts, args.k, args.mode, args.config,
                               args.groups, args.topk_groups, args.seed, args.d_model), args.json)


def _run_attention(args) -> int:
    return _print(bench_attention(args.seq, args.heads, args.kv_heads or args.heads, args.head_dim,
                                  args.causal, args.config, args.seed, args.kind, args.seq_q),
                  args.json)


def _run_vector(args) -> int:
    return _print(bench_vector(args.op, args.rows, args.width, args.head_dim, args.config,
                               args.seed), args.json)


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0 if result["bit_exact"] else 1


def _run_expert_ffn(args) -> int:
    return _print(bench_expert_ffn(args.tokens, args.d_model, args.d_ff, args.sparsity,
                                   args.activation, args.config, args.seed), args.json)


