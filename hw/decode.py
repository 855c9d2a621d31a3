"""The controller's decode stage: an instruction word into its opcode, queue and dependency tokens,
with the faults the ISA raises: ILLEGAL_OPCODE (a code no `Opcode` has) and BAD_FIELD (the body
breaks one of `formats.instructions.rules`, the same expressions the emulator and the `Program`
builder check, and each unit's own ``illegal``).

``undecodable`` marks the words that stop the fetch unit (`isa.decode_one` raises for them): an
illegal opcode, or an enum field whose code no member has. The other refusals are the
instruction's to raise when its queue starts it.
"""

import functools
import operator

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..formats import instructions
from ..formats.instructions import DEPS, QUEUE_OF, ErrorCode, Opcode, Queue, body_name
from ..formats.rules import refused_by

__all__ = ["Decoder"]


class Decoder(wiring.Component):
    """Combinational decode of one instruction of an `AccelConfig`.

    Ports
    -----
    instruction : In(`formats.instructions.instruction_layout(config)`)
    opcode : the instruction's `Opcode` field
    queue : the `Queue` that runs it (`formats.instructions.QUEUE_OF`)
    deps : its dependency tokens (`DEPS`)
    error_code : ILLEGAL_OPCODE, BAD_FIELD or NONE
    undecodable : the word does not decode (fetch stops at it): ILLEGAL_OPCODE, or BAD_FIELD for
        an enum field outside its enum
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Decoder needs an AccelConfig, not {config!r}")
        self.config = config
        super().__init__({
            "instruction": In(instructions.instruction_layout(config)),
            "opcode": Out(Opcode),
            "queue": Out(Queue),
            "deps": Out(DEPS),
            "error_code": Out(ErrorCode),
            "undecodable": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self.config
        word = self.instruction
        m.d.comb += [self.opcode.eq(word.opcode), self.deps.eq(word.deps)]
        with m.Switch(word.opcode):
            for opcode in Opcode:
                with m.Case(opcode):
                    m.d.comb += self.queue.eq(QUEUE_OF[opcode])
                    name = body_name(opcode)
                    refused = undecodable = 0
                    if name is not None:
                        body = getattr(word.body, name)
                        rules = instructions.rules(config, opcode, body)
                        if rules:
                            refused = refused_by(rules)
                        undecodable = _outside_enums(body, instructions.bodies(config)[opcode])
                    m.d.comb += [self.error_code.eq(Mux(refused | undecodable,
                                                        ErrorCode.BAD_FIELD, ErrorCode.NONE)),
                                 self.undecodable.eq(undecodable)]
            with m.Default():
                m.d.comb += [self.error_code.eq(ErrorCode.ILLEGAL_OPCODE),
                             self.undecodable.eq(1)]
        return m


def _outside_enums(view, layout):
    """High when an enum field of `view` (of struct `layout`, nested) holds a code no member has."""
    outside = []
    for name, field in layout:
        if isinstance(field.shape, data.StructLayout):
            outside.append(_outside_enums(view[name], field.shape))
        elif isinstance(field.shape, enum.EnumType):
            value = view[name].as_value()
            outside.append(~functools.reduce(operator.or_,
                                             (value == member.value for member in field.shape)))
    return functools.reduce(operator.or_, outside, 0)
