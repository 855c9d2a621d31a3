"""The `moeaccel` command line (also `python -m moeaccel`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Subcommands whose issues have not landed: named now so that scripts and docs can refer to them.
PLANNED = {
    "compile": "the ONNX -> instruction stream compiler",
    "run": "running a model on a backend (emu, sim, pynq)",
    "report": "performance reports of a run",
    "boards": "the board descriptions",
    "build": "bitstream builds for a board",
    "flash": "loading a bitstream onto a board",
}


def _config(args) -> int:
    from .config import PRESETS, preset

    names = [args.name] if args.name else list(PRESETS)
    configs = {name: preset(name).summary() for name in names}
    if args.json:
        print(json.dumps(configs, indent=1))
        return 0
    for name, fields in configs.items():
        print(f"{name}: {fields['mac_rows']}x{fields['mac_cols']} MAC array ({fields['mac_units']} "
              f"int8 MACs, {fields['peak_gops']:.1f} GOPS at {fields['clock_mhz']:g} MHz), "
              f"E<={fields['max_experts']} k<={fields['max_k']} tokens<={fields['max_tokens']} "
              f"d_model<={fields['max_d_model']} d_ff<={fields['max_d_ff']} "
              f"L<={fields['max_seq_len']}, sparsity {', '.join(fields['sparsity']) or 'dense only'}, "
              f"AXI {fields['axi_data_width']} bit")
    return 0


def _models(args) -> int:
    from .sw.models import main

    main([str(args.out_dir), "--seed", str(args.seed)])
    return 0


def _accuracy(args) -> int:
    from .sw.accuracy import main

    main(["--tokens", str(args.tokens), "--seed", str(args.seed)] + (["--json"] if args.json else []))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, rtl=not args.no_rtl)
    return 0


def _planned(name):
    def run(args) -> int:
        print(f"moeaccel {name}: {PLANNED[name]} is not part of this version yet", file=sys.stderr)
        return 2
    return run


def _disasm(args) -> int:
    from .config import preset
    from .isa import disassemble
    try:
        program = args.program.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {args.program}: {error.strerror}") from None
    for line in disassemble(preset(args.config), program):
        print(line)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="moeaccel", description="Mixture-of-Experts inference on "
                                   "FPGAs: RTL, golden model, compiler and runtime.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the demonstration on the bundled tiny models")
    demo.add_argument("--out", type=Path, default=Path("build/demo"), help="artefact folder")
    demo.add_argument("--no-rtl", action="store_true", help="skip the RTL simulation step")
    demo.set_defaults(run=_demo)

    config = commands.add_parser("config", help="show the accelerator presets")
    config.add_argument("name", nargs="?", help="one preset (default: all)")
    config.add_argument("--json", action="store_true")
    config.set_defaults(run=_config)

    models = commands.add_parser("models", help="export the bundled tiny MoE models to ONNX")
    models.add_argument("out_dir", type=Path)
    models.add_argument("--seed", type=int, default=0)
    models.set_defaults(run=_models)

    accuracy = commands.add_parser("accuracy", help="measure the integer golden model against the "
                                   "float one")
    accuracy.add_argument("--tokens", type=int, default=2048)
    accuracy.add_argument("--seed", type=int, default=0)
    accuracy.add_argument("--json", action="store_true")
    accuracy.set_defaults(run=_accuracy)

    from .bench import add_arguments as add_bench
    add_bench(commands)

    disasm = commands.add_parser("disasm", help="print an instruction stream, every field by name")
    disasm.add_argument("program", type=Path, help="the instruction bytes (docs/isa.md)")
    disasm.add_argument("--config", default="pynq-z2", help="preset the program was built for")
    disasm.set_defaults(run=_disasm)

    for name, what in PLANNED.items():
        planned = commands.add_parser(name, help=f"{what} (not in this version yet)")
        planned.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        planned.set_defaults(run=_planned(name))
    return root


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:                      # configuration and input errors: one line
        from .bench import SimulationFailed
        from .config import ConfigError
        if isinstance(error, (ConfigError, KeyError, ValueError)):     # ShapeError included
            print(f"moeaccel {args.command}: {error}", file=sys.stderr)
            return 2
        if isinstance(error, SimulationFailed):     # the log's tail is already printed
            print(f"moeaccel {args.command}: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
