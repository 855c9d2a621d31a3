"""The instruction set: encoder and decoder round-trip every instruction, the disassembler names every
field, docs/isa.md is the generated page, bad programs are refused by name."""

import re
from pathlib import Path

import pytest
from amaranth.lib import data, enum
from hypothesis import given, settings
from hypothesis import strategies as st

from moeaccel import isa
from moeaccel.config import preset
from moeaccel.formats.instructions import bodies

CONFIGS = ["tiny", "pynq-z2", "zcu104"]


def field_values(layout):
    """A strategy of every legal field dict of `layout`."""
    fields = {}
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.StructLayout):
            fields[name] = field_values(shape)
        elif isinstance(shape, type) and issubclass(shape, enum.Enum):
            fields[name] = st.sampled_from(list(shape))
        else:
            width = shape.width
            fields[name] = (st.integers(-(1 << (width - 1)), (1 << (width - 1)) - 1)
                            if shape.signed else st.integers(0, (1 << width) - 1))
    return st.fixed_dictionaries(fields)


def instructions(config):
    layouts = bodies(config)

    def one(opcode):
        body = field_values(layouts[opcode]) if opcode in layouts else st.just({})
        return st.builds(isa.Instruction, st.just(opcode), body, st.booleans(), st.booleans(),
                         st.booleans(), st.booleans())
    return st.sampled_from(list(isa.Opcode)).flatmap(one)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_instruction_round_trips(name):
    config = preset(name)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(instructions(config), min_size=1, max_size=8))
    def round_trip(program):
        blob = isa.encode(config, program)
        assert len(blob) == isa.INSTRUCTION_BYTES * len(program)
        assert isa.decode(config, blob) == program

    round_trip()


@pytest.mark.parametrize("name", CONFIGS)
def test_disassembler_prints_every_field_by_name(name):
    config = preset(name)

    @settings(max_examples=100, deadline=None)
    @given(instructions(config))
    def check(instruction):
        (line,) = isa.disassemble(config, isa.encode(config, [instruction]))
        assert instruction.opcode.name in line
        body = bodies(config).get(instruction.opcode)
        for field, _, _, _ in isa._layout_rows(body) if body is not None else []:
            leaf = field.split(".")[-1]
            assert re.search(rf"\b{leaf}=", line), (field, line)
        for token, bit in instruction.deps.items():
            assert (token in line) == bool(bit)

    check()


def test_docs_page_is_generated_from_the_layouts():
    page = Path(__file__).resolve().parents[1] / "docs" / "isa.md"
    assert page.read_text() == isa.markdown(preset("pynq-z2")), \
        "docs/isa.md is stale: python -m moeaccel.isa > docs/isa.md"


def test_decode_names_an_illegal_opcode():
    config = preset("tiny")
    blob = isa.encode(config, [isa.Instruction(isa.Opcode.SYNC, {})])
    bad = bytes([0x0F]) + blob[1:]
    with pytest.raises(ValueError, match=r"^instruction 0: illegal opcode 15$"):
        isa.decode(config, bad)


def test_decode_names_a_field_outside_its_enum():
    config = preset("tiny")
    blob = bytearray(isa.encode(config, [isa.Instruction(isa.Opcode.LOAD, {"buffer": isa.Buffer.OUT})]))
    blob[1] = 0x0F                            # the buffer field: bits 8..11
    with pytest.raises(ValueError, match=r"^instruction 0 \(LOAD\): field buffer: 15 is not a valid "
                                         r"Buffer$"):
        isa.decode(config, bytes(blob))


@pytest.mark.parametrize("instruction,message", [
    (isa.Instruction(isa.Opcode.LOAD, {"rows": 1 << 16}),
     r"^instruction 0 \(LOAD\): rows=65536 does not fit 16 bits \(0 \.\. 65535\)$"),
    (isa.Instruction(isa.Opcode.LINEAR, {"command": {"tokenz": 1}}),
     r"^instruction 0 \(LINEAR\)\.command: no field tokenz; it has tokens, tiles, "),
    (isa.Instruction(isa.Opcode.ROUTE, {"tokens": 1}),
     r"^instruction 0 \(ROUTE\): no field tokens; it has command, row_words, logits$"),
    (isa.Instruction(isa.Opcode.SYNC, {"rows": 1}), r"^instruction 0 \(SYNC\) takes no fields$"),
    (isa.Instruction(isa.Opcode.ATTENTION, {"command": {"seq_q": -1}}),
     r"^instruction 0 \(ATTENTION\)\.command: seq_q=-1 does not fit 11 bits"),
])
def test_encode_refuses_what_a_field_cannot_hold(instruction, message):
    with pytest.raises(ValueError, match=message):
        isa.encode(preset("tiny"), [instruction])


def test_decode_refuses_a_partial_instruction():
    with pytest.raises(ValueError, match=r"^a program is whole 32-byte instructions, not 33 bytes$"):
        isa.decode(preset("tiny"), bytes(33))


def test_disasm_command(tmp_path, capsys):
    from moeaccel.cli import main
    config = preset("tiny")
    program = tmp_path / "layer.bin"
    program.write_bytes(isa.encode(config, [
        isa.Instruction(isa.Opcode.LOAD, {"buffer": isa.Buffer.ACT0, "rows": 4, "row_bytes": 64},
                        push_next=True),
        isa.Instruction(isa.Opcode.FINISH, {}, pop_prev=True)]))
    assert main(["disasm", str(program), "--config", "tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("   0  load    LOAD        [push_next]  buffer=ACT0 dram=0 ")
    assert out[1] == "   1  compute FINISH      [pop_prev]"
    program.write_bytes(bytes(40))
    assert main(["disasm", str(program), "--config", "tiny"]) == 2
    assert "whole 32-byte instructions" in capsys.readouterr().err


def test_program_builder_writes_what_it_says():
    from moeaccel.sw.attention import AttentionParams, AttentionShape
    config = preset("pynq-z2")
    shape = AttentionShape(16, 16, 8, 2, 64, causal=True)
    params = AttentionParams(20000, 20, 16384, 22)
    program = (isa.Program(config)
               .load(isa.Buffer.ACT0, dram=0x100, rows=16, row_bytes=512, push_next=True)
               .attention(shape, params, q=0x1000, k=0x3000, v=0x5000, o=0x7000, pop_prev=True,
                          push_next=True)
               .store(isa.Buffer.OUT, dram=0x9000, rows=16, row_bytes=2048, pop_prev=True)
               .sync().finish())
    decoded = isa.decode(config, program.encode())
    assert [i.opcode for i in decoded] == [isa.Opcode.LOAD, isa.Opcode.ATTENTION, isa.Opcode.STORE,
                                           isa.Opcode.SYNC, isa.Opcode.FINISH]
    assert decoded[0].fields["dram_stride"] == 512 and decoded[0].push_next
    assert decoded[1].fields["command"]["rep"] == 4 and decoded[1].fields["command"]["causal"] == 1
    assert decoded[1].fields["command"]["head_words"] == 8 and decoded[1].fields["o"] == 0x7000
    assert decoded[2].queue is isa.Queue.STORE and decoded[2].pop_prev
    assert len(program.disassemble()) == 5
