"""The control registers: one SystemRDL description compiled into the map the RTL, the host and
docs/registers.md read; the AXI4-Lite block checked against it with cocotbext-axi."""

import re
from pathlib import Path

import pytest

from moeaccel.config import PRESETS, preset
from moeaccel.formats import registers
from moeaccel.formats.registers import COUNTER_BASE, COUNTER_BLOCKS, register_map
from moeaccel.hw.registers import ControlRegisters
from moeaccel.sim.harness import run_cocotb

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_registers_md_is_generated_from_the_description():
    assert (DOCS / "registers.md").read_text() == registers.markdown()


def test_every_unit_counter_has_a_register_in_layout_order():
    regs = register_map()
    offset = COUNTER_BASE
    for prefix, layout, _ in COUNTER_BLOCKS:
        for name, _member in layout:
            assert regs.offset(f"{prefix}_{name}") == offset
            offset += 4
    assert regs.span == offset


def test_registers_do_not_overlap_and_fields_fit():
    regs = register_map()
    offsets = [r.offset for r in regs.registers]
    assert len(offsets) == len(set(offsets)) and all(o % 4 == 0 for o in offsets)
    for register in regs.registers:
        bits = [b for f in register.fields for b in range(f.lsb, f.lsb + f.width)]
        assert len(bits) == len(set(bits)) and max(bits) < 32, register.name


def test_build_ids_differ_between_presets_and_follow_every_field():
    ids = {name: config.build_id for name, config in PRESETS.items()}
    assert len(set(ids.values())) == len(ids)
    tiny = preset("tiny")
    assert tiny.replace(vector_lanes=8).build_id != tiny.build_id
    assert tiny.replace().build_id == tiny.build_id
    assert register_map(tiny.build_id)["build_id"].fields[0].reset == tiny.build_id


def test_a_register_access_the_rtl_does_not_build_is_refused(monkeypatch, tmp_path):
    source = registers.RDL_FILE.read_text().replace(
        "onwrite = woclr; hwset;", "onwrite = wzs; hwset;", 1)
    bad = tmp_path / "registers.rdl"
    bad.write_text(source)
    monkeypatch.setattr(registers, "RDL_FILE", bad)
    registers.register_map.cache_clear()
    try:
        with pytest.raises(ValueError, match=re.escape("irq_status.done: onwrite = wzs is not built")):
            registers.register_map(1)
    finally:
        registers.register_map.cache_clear()


@pytest.mark.sim
@pytest.mark.parametrize("config_name", ["tiny"])
def test_control_registers_follow_the_map(config_name):
    run_cocotb(ControlRegisters(preset(config_name)), toplevel="control_registers",
               test_module="moeaccel.sim.tb.registers", build_key=config_name,
               parameters={"config": config_name}, timeout_s=600)
