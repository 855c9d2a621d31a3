"""The DMA engine: cocotb on Verilator with cocotbext-axi's AxiRam, byte for byte against the
emulator's LOAD and STORE, under random pauses on every AXI channel."""

import pytest

from moeaccel.config import preset
from moeaccel.hw.dma import Dma
from moeaccel.sim.harness import run_cocotb


def run_dma(config_name: str, parameters: dict):
    return run_cocotb(Dma(preset(config_name)), toplevel="dma", test_module="moeaccel.sim.tb.dma",
                      build_key=config_name, parameters={"config": config_name, **parameters},
                      timeout_s=600)


@pytest.mark.sim
@pytest.mark.parametrize("config_name", ["tiny", "zcu104"])
def test_dma_transfers_match_the_emulator(config_name):
    run_dma(config_name, {"random": 40})


STREAMING = [(store, rows, row_bytes) for store in (0, 1)
             for rows, row_bytes in ((1, 4096), (4, 1024), (8, 64))]


@pytest.mark.sim
def test_dma_streams_at_the_bus_rate_as_the_docs_say(tmp_path):
    """Aligned rows on tiny's 64-bit bus, without pauses: the cycles docs/dma.md quotes."""
    import json
    from pathlib import Path

    cases = [dict(store=store, buffer="WEIGHT", dram=0, dram_stride=4096, sram=0, sram_stride=0,
                  rows=rows, row_bytes=row_bytes, window_base=0x1000, window_size=1 << 16)
             for store, rows, row_bytes in STREAMING]
    report = tmp_path / "dma.json"
    run_dma("tiny", {"cases": cases, "report_file": str(report)})
    measured = {(r["case"]["store"], r["case"]["rows"], r["case"]["row_bytes"]): r
                for r in json.loads(Path(f"{report}.pause0.0").read_text())}
    cycles = {key: r["cycles"] for key, r in measured.items()}
    assert all(r["beats"] == (512 if rows * row_bytes == 4096 else 64)
               for (_, rows, row_bytes), r in measured.items())
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "dma.md").read_text().split())
    assert (f"a 4 096-byte row moves in {cycles[0, 1, 4096]} cycles as a LOAD and "
            f"{cycles[1, 1, 4096]} as a STORE, for 512 beats; four rows of 1 024 bytes in "
            f"{cycles[0, 4, 1024]} and {cycles[1, 4, 1024]}") in doc
    assert (f"eight rows of 64 bytes take {cycles[0, 8, 64]} cycles as a LOAD, "
            f"{cycles[1, 8, 64]} as a STORE, for 64 beats") in doc
