"""Runs cocotb testbenches against Amaranth components simulated with Verilator.

Environment variables (read by the pytest process):
    MOEACCEL_BUILD_DIR  root of the simulation builds (default: <repo>/build/sim)
    MOEACCEL_WAVES=1    build with FST tracing and write <build dir>/dump.fst
    MOEACCEL_SEED=<int> replay a regression with this cocotb random seed
Environment variable read inside the simulator:
    MOEACCEL_TB_PARAMS  JSON test parameters, see encode_params() and tb_params()
"""

import fcntl
import functools
import re
import json
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

from amaranth.back import verilog
from amaranth.hdl import Const, ValueCastable
from amaranth.hdl._ir import PortDirection
from amaranth.lib import wiring
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotb_tools.runner import get_results, get_runner

from .toolchain import fst_build_args, verilator_env


def _default_build_root() -> Path:
    """<checkout>/build/sim in a source checkout (editable install), else ./build/sim."""
    checkout = Path(__file__).resolve().parents[1]
    base = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return base / "build" / "sim"


BUILD_ROOT = Path(os.environ.get("MOEACCEL_BUILD_DIR") or _default_build_root()).resolve()
PARAMS_ENV = "MOEACCEL_TB_PARAMS"

# -Wno-fatal keeps lint warnings from failing a build; the rest silence warnings that Amaranth's
# Verilog output (via Yosys) raises on every design and that carry no information.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE"]
WAVES_ARGS = ["--trace-fst", "--trace-structs"]
LZ4_SHIM_DIR = BUILD_ROOT / "_lz4_shim"
WAVES_FILE = "dump.fst"  # name chosen by cocotb's verilator.cpp when built with --trace-fst


def component_ports(component) -> dict:
    """The top-level ports of a `wiring.Component`, from its signature.

    Members that are constants (the `ready` of an `always_ready` stream, the `valid` of an
    `always_valid` one) are not ports; Amaranth 0.5's own port collection refuses them.
    """
    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        if isinstance(value, Const):
            continue
        direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
        ports["__".join(map(str, path))] = (value, direction)
    return ports


def to_verilog(component, name: str, ports=None) -> str:
    """Return the Verilog text of an Amaranth elaboratable (a wiring.Component needs no ports).

    Raises ValueError where the text holds an ``always @*`` block that only sets constant bits (a
    signal a process drives in part, with bits set only by an unconditional constant elsewhere):
    an event-driven simulator never runs such a block, so those bits would keep their initial
    value there and differ from the design."""
    if ports is None and isinstance(getattr(component, "signature", None), wiring.Signature):
        ports = component_ports(component)
    text = verilog.convert(component, name=name, ports=ports, emit_src=False)
    constant = re.findall(r"always @\*\n\s+(\S+) = \d+'[hbd][0-9a-fA-F_]+;\n", text)
    if constant:
        raise ValueError(f"{name}: constant-only always @* blocks for {', '.join(constant)}; "
                         f"drive these bits in the process that drives the rest of the signal, "
                         f"or drive the whole signal outside processes")
    return text


def clocked_top(verilog_text: str, toplevel: str, period_ns: int) -> tuple[str, str]:
    """A Verilog top around `toplevel` that drives its ``clk`` itself (``always #period/2``): built
    with ``--timing``, the simulator then runs cycles without a callback into cocotb per edge, for
    long runs where the testbench only waits for a signal. Returns (name, text)."""
    header = re.search(rf"^module {re.escape(toplevel)}\(.*?^endmodule", verilog_text, re.S | re.M)
    if header is None:
        raise ValueError(f"no module {toplevel} in the Verilog text")
    ports = re.findall(r"^\s*(input|output)\s*(\[[^\]]+\])?\s*(\w+);", header.group(0), re.M)
    name = f"{toplevel}_clocked"
    lines = ["`timescale 1ns/1ps", f"module {name}(" + ", ".join(
        p[2] for p in ports if p[2] != "clk") + ");"]
    for direction, width, port in ports:
        if port != "clk":
            lines.append(f"  {direction} {width + ' ' if width else ''}{port};")
    lines += ["  reg clk = 1'b0;", f"  always #{period_ns / 2:g} clk = ~clk;",
              f"  {toplevel} dut(" + ", ".join(f".{p[2]}({p[2]})" for p in ports) + ");",
              "endmodule", ""]
    return name, "\n".join(lines)


_PARAMS_INLINE = 64 * 1024     # longer parameters go through a file (an environment string
                                # is limited to 128 KiB)


def encode_params(params: dict) -> dict[str, str]:
    """Return the environment entry that hands JSON-able `params` to the cocotb test: the JSON
    itself, or, when long, ``@`` and the path of a temporary file holding it."""
    text = json.dumps(params, sort_keys=True)
    if len(text) <= _PARAMS_INLINE:
        return {PARAMS_ENV: text}
    handle, path = tempfile.mkstemp(prefix="moeaccel-tb-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return {PARAMS_ENV: "@" + path}


@functools.cache
def tb_params() -> dict:
    """Return the parameters passed by run_cocotb (call inside the cocotb test)."""
    text = os.environ.get(PARAMS_ENV, "{}")
    if text.startswith("@"):
        with open(text[1:]) as file:
            text = file.read()
    return json.loads(text)


async def start_clock(dut, period_ns: int = 10):
    """Start a GPI clock on dut.clk (low first, so the first rising edge is at period/2)."""
    clock = Clock(dut.clk, period_ns, unit="ns", impl="gpi")
    clock.start(start_high=False)
    return clock


async def reset(dut, cycles: int = 2) -> None:
    """Hold dut.rst high for `cycles` rising edges; returns just after the edge releasing it."""
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0  # inertial write: the flops see it from the next edge on


async def check_cases(dut, cases: list[dict], run_case, describe, what: str) -> list[dict]:
    """Run each case (``await run_case(case)`` returns its report, with ``mismatches`` a count or a
    list), log ``describe(case, report)``, write the reports to the ``report_file`` parameter, and
    fail naming every case whose output differs from the golden model's (after running them all)."""
    reports, failures = [], []
    for case in cases:
        report = await run_case(case)
        reports.append(report)
        line = describe(case, report)
        dut._log.info(line)
        if report["mismatches"]:
            failures.append(line if isinstance(report["mismatches"], int)
                            else f"{line}: {report['mismatches'][:3]}")
    report_file = tb_params().get("report_file")
    if report_file:
        with open(report_file, "w") as file:
            json.dump(reports, file, indent=1)
    assert not failures, f"{what} differ from the golden model: {failures}"
    return reports


def pause_axi(bus_model, rng: random.Random, probability: float) -> None:
    """Random pauses on all five channels of a cocotbext-axi model (`AxiRam`, `AxiLiteMaster`, …:
    anything with ``write_if`` and ``read_if``), each channel pausing with `probability`."""
    if not probability:
        return
    for channel in (bus_model.write_if.aw_channel, bus_model.write_if.w_channel,
                    bus_model.write_if.b_channel, bus_model.read_if.ar_channel,
                    bus_model.read_if.r_channel):
        channel.set_pause_generator(iter(StallGenerator(rng, probability)))


class StallGenerator:
    """Infinite iterator of bools, True (stall) with the given probability."""

    def __init__(self, rng: random.Random, probability: float):
        """Draw from `rng`; `probability` is the chance that a cycle stalls."""
        self.rng = rng
        self.probability = probability

    def __iter__(self):
        """Return self."""
        return self

    def __next__(self) -> bool:
        """Return True when this cycle should stall."""
        return self.rng.random() < self.probability


def run_cocotb(
    component,
    *,
    toplevel: str,
    test_module: str,
    build_key: str,
    parameters: dict | None = None,
    extra_env: dict | None = None,
    testcase: str | list[str] | None = None,
    timeout_s: float | None = None,
    log_file: Path | None = None,
    free_clock_ns: int | None = None,
    extra_verilog: str = "",
) -> Path:
    """Build `component` with Verilator, run cocotb `test_module` on it; return the results xml.

    `parameters` reach the test through tb_params(); `timeout_s` bounds the simulation's wall
    time; `log_file` takes the build's and the simulation's output instead of the console;
    `free_clock_ns` builds the design inside `clocked_top` (the testbench must not start a clock);
    `extra_verilog` is appended to the design's Verilog (modules its `Instance`s name).
    Raises AssertionError if a cocotb test fails, none runs, or the simulator dies.
    """
    build_dir = BUILD_ROOT / toplevel / (build_key + ("_clocked" if free_clock_ns else ""))
    build_dir.mkdir(parents=True, exist_ok=True)
    waves = os.environ.get("MOEACCEL_WAVES", "0") == "1"
    seed = int(os.environ.get("MOEACCEL_SEED") or random.randrange(1 << 31))
    env = dict(extra_env or {})
    if parameters is not None:
        env.update(encode_params(parameters))
    build_args = VERILATOR_ARGS + (WAVES_ARGS + fst_build_args(LZ4_SHIM_DIR) if waves else [])
    results_xml = build_dir / "results.xml"

    verilator_env()
    runner = get_runner("verilator")
    with _locked(build_dir / ".lock"):
        source = build_dir / f"{toplevel}.v"
        text = to_verilog(component, toplevel) + extra_verilog
        if not source.is_file() or source.read_text() != text:
            source.write_text(text)
        sources, top = [source], toplevel
        if free_clock_ns is not None:
            top, wrapper_text = clocked_top(text, toplevel, free_clock_ns)
            wrapper = build_dir / f"{top}.v"
            if not wrapper.is_file() or wrapper.read_text() != wrapper_text:
                wrapper.write_text(wrapper_text)
            sources.append(wrapper)
            build_args = build_args + ["--timing"]
        runner.build(
            sources=sources,
            hdl_toplevel=top,
            build_dir=build_dir,
            always=False,
            waves=waves,
            build_args=build_args,
            log_file=log_file,
        )
        print(f"cocotb seed {seed} (replay with MOEACCEL_SEED={seed})", file=sys.stderr)
        what = f"{toplevel} ({test_module}, seed {seed})"
        if log_file is not None:
            what += f", log in {log_file}"
        start = time.monotonic()
        with _sim_timeout(timeout_s):
            try:
                runner.test(
                    hdl_toplevel=top,
                    test_module=test_module,
                    build_dir=build_dir,
                    test_dir=build_dir,
                    results_xml=str(results_xml),
                    testcase=testcase,
                    waves=waves,
                    extra_env=env,
                    seed=seed,
                    log_file=log_file,
                )
                problem = None
            except SystemExit as exc:  # under pytest the runner exits on failed tests
                problem = f"runner exit status {exc.code}"
            except RuntimeError as exc:  # the simulator exited with a non-zero status
                problem = str(exc)
            finally:
                if env.get(PARAMS_ENV, "").startswith("@"):
                    Path(env[PARAMS_ENV][1:]).unlink(missing_ok=True)
        if waves:
            print(f"waveform: {build_dir / WAVES_FILE}", file=sys.stderr)
        if problem and timeout_s is not None and time.monotonic() - start >= timeout_s:
            raise AssertionError(f"{what}: simulation timed out after {timeout_s} s")
        _check_results(results_xml, problem, what)
    return results_xml


@contextmanager
def _locked(path: Path):
    """Hold an exclusive flock on `path` (serialises builds sharing a build dir)."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def _sim_timeout(timeout_s: float | None):
    """Prefix the simulator command with coreutils `timeout` (the runner reads SIM_CMD_PREFIX)."""
    if timeout_s is None:
        yield
        return
    saved = os.environ.get("SIM_CMD_PREFIX")
    os.environ["SIM_CMD_PREFIX"] = f"timeout -k 10 {timeout_s} {saved or ''}"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SIM_CMD_PREFIX"]
        else:
            os.environ["SIM_CMD_PREFIX"] = saved


def _check_results(results_xml: Path, problem: str | None, what: str) -> None:
    """Raise AssertionError unless the run went cleanly and at least one test ran, none failing."""
    try:
        num_tests, num_failed = get_results(results_xml)
    except RuntimeError:
        raise AssertionError(f"{what}: simulator ended without results ({problem})") from None
    cases = list(ElementTree.parse(results_xml).getroot().iter("testcase"))
    failed = [
        f"{case.get('name')}: {bad.get('message', '').strip()}"
        for case in cases
        for bad in case
        if bad.tag in ("failure", "error")
    ]
    ran = num_tests - sum(case.find("skipped") is not None for case in cases)
    if num_failed or failed:
        raise AssertionError(f"{what}: {num_failed} of {num_tests} cocotb tests failed: {failed}")
    if ran == 0:
        raise AssertionError(f"{what}: no cocotb test ran")
    if problem:
        raise AssertionError(f"{what}: {problem}")
