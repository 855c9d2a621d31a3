"""cocotb regression of `hw.registers.ControlRegisters` against the compiled register map
(`formats.registers.register_map`), through cocotbext-axi's `AxiLiteMaster` with random pauses.

Every register is checked by its fields' access: reset values; ``rw`` written whole and byte by
byte (strobes) and read back, and seen on its port; ``ro`` driven on its port and read; ``const``
read; ``pulse`` high for exactly one cycle per write of 1, reading 0; ``w1c`` set by its port,
cleared by writing 1, kept by writing 0.
Offsets outside the map answer SLVERR and change nothing.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from ...config import preset
from ...formats.registers import register_map
from ..harness import pause_axi, reset, start_clock, tb_params

SLVERR = 2


def _port(dut, register, name):
    return getattr(dut, f"{register.name}__{name}")


class RegistersTB:
    def __init__(self, dut, config, rng: random.Random, pause: float):
        self.dut, self.rng = dut, rng
        self.map = register_map(config.build_id)
        self.build_id = config.build_id
        self.master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                    dut.clk, dut.rst)
        pause_axi(self.master, rng, pause)
        self.pulses = {}

    async def start(self):
        await start_clock(self.dut)
        for register in self.map.registers:
            for field in register.fields:
                if field.access == "ro":
                    _port(self.dut, register, field.name).value = 0
                if field.access == "w1c":
                    _port(self.dut, register, f"{field.name}_set").value = 0
        await reset(self.dut)
        cocotb.start_soon(self._count_pulses())

    async def _count_pulses(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            for register in self.map.registers:
                for field in register.fields:
                    if field.access == "pulse":
                        value = int(_port(self.dut, register, field.name).value)
                        key = (register.name, field.name)
                        self.pulses[key] = self.pulses.get(key, 0) + value

    async def read(self, offset: int) -> tuple[int, int]:
        response = await self.master.read(offset, 4)
        return int.from_bytes(response.data, "little"), int(response.resp)

    async def write(self, offset: int, value: int, length: int = 4, at: int = 0) -> int:
        data = (value >> (8 * at) & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
        response = await self.master.write(offset + at, data)
        return int(response.resp)


def _fields_value(register, values: dict) -> int:
    return sum((values[f.name] & ((1 << f.width) - 1)) << f.lsb for f in register.fields)


@cocotb.test()
@cocotb.parametrize(pause=[0.0, 0.4])
async def registers_follow_the_map(dut, pause):
    params = tb_params()
    config = preset(params["config"])
    rng = random.Random(cocotb.RANDOM_SEED * 2 + int(pause * 10))     # MOEACCEL_SEED replays it
    tb = RegistersTB(dut, config, rng, pause)
    await tb.start()
    errors = []

    def expect(what, got, want):
        if got != want:
            errors.append(f"{what}: got {got:#x}, expected {want:#x}")

    for register in tb.map.registers:
        accesses = {f.access for f in register.fields}
        # reset values (pulses read 0, ro fields are driven 0)
        value, resp = await tb.read(register.offset)
        expect(f"{register.name} after reset", value,
               _fields_value(register, {f.name: (f.reset if f.access in ("rw", "w1c", "const")
                                                 else 0) for f in register.fields}))
        expect(f"{register.name} read response", resp, 0)
        if "const" in accesses:
            expect(f"{register.name} (build ID)", value, tb.build_id)
        if "ro" in accesses:
            for _ in range(3):
                driven = {f.name: rng.getrandbits(f.width) for f in register.fields}
                for field in register.fields:
                    _port(dut, register, field.name).value = driven[field.name]
                value, _ = await tb.read(register.offset)
                expect(f"{register.name} driven", value, _fields_value(register, driven))
        if accesses & {"rw"}:
            for _ in range(3):
                written = rng.getrandbits(32)
                expect(f"{register.name} write response", await tb.write(register.offset, written), 0)
                want = {f.name: (written >> f.lsb if f.access == "rw" else 0)
                        for f in register.fields}
                value, _ = await tb.read(register.offset)
                expect(f"{register.name} written", value, _fields_value(register, want))
                for field in register.fields:
                    if field.access == "rw":
                        expect(f"{register.name}.{field.name} port",
                               int(_port(dut, register, field.name).value),
                               want[field.name] & ((1 << field.width) - 1))
            # one byte at a time: the strobes keep the other bytes
            before, _ = await tb.read(register.offset)
            lane = rng.randrange(4)
            byte = rng.getrandbits(8)
            await tb.write(register.offset, byte << (8 * lane), length=1, at=lane)
            mask = sum(((1 << f.width) - 1) << f.lsb for f in register.fields if f.access == "rw")
            want = (before & ~(0xFF << 8 * lane)) | ((byte << 8 * lane) & mask)
            value, _ = await tb.read(register.offset)
            expect(f"{register.name} byte {lane} written", value, want)
        if "pulse" in accesses:
            for field in (f for f in register.fields if f.access == "pulse"):
                key = (register.name, field.name)
                count = tb.pulses.get(key, 0)
                keep = {f.name: (int(_port(dut, register, f.name).value) if f.access == "rw"
                                 else 0) for f in register.fields}
                await tb.write(register.offset, _fields_value(register, keep) | (1 << field.lsb))
                for _ in range(4):
                    await RisingEdge(dut.clk)
                expect(f"{register.name}.{field.name} pulses", tb.pulses.get(key, 0) - count, 1)
        if "w1c" in accesses:
            for field in (f for f in register.fields if f.access == "w1c"):
                port = _port(dut, register, f"{field.name}_set")
                await RisingEdge(dut.clk)
                port.value = 1
                await RisingEdge(dut.clk)
                port.value = 0
                value, _ = await tb.read(register.offset)
                expect(f"{register.name}.{field.name} set", value >> field.lsb & 1, 1)
                await tb.write(register.offset, 0)
                value, _ = await tb.read(register.offset)
                expect(f"{register.name}.{field.name} after writing 0", value >> field.lsb & 1, 1)
                await tb.write(register.offset, 1 << field.lsb)
                value, _ = await tb.read(register.offset)
                expect(f"{register.name}.{field.name} cleared", value >> field.lsb & 1, 0)

    # offsets outside the map: SLVERR, nothing changes
    mapped = {r.offset for r in tb.map.registers}
    snapshot = [(await tb.read(r.offset))[0] for r in tb.map.registers if
                {f.access for f in r.fields} & {"rw", "const"}]
    for offset in [0x0C, tb.map.span, 0xFFC] + [rng.randrange(0, 0x1000, 4) for _ in range(8)]:
        if offset in mapped:
            continue
        _, resp = await tb.read(offset)
        expect(f"read of unmapped {offset:#x}", resp, SLVERR)
        expect(f"write of unmapped {offset:#x}", await tb.write(offset, 0xFFFFFFFF), SLVERR)
    after = [(await tb.read(r.offset))[0] for r in tb.map.registers if
             {f.access for f in r.fields} & {"rw", "const"}]
    if after != snapshot:
        errors.append("a write outside the map changed a register")
    assert not errors, "registers differ from the map:\n" + "\n".join(errors)
