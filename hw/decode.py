"""The controller's decode stage: an instruction word into its opcode, queue and dependency tokens,
with the faults the ISA raises at decode: ILLEGAL_OPCODE (a code no `Opcode` has) and BAD_FIELD
(the body breaks one of `formats.instructions.rules`, the same expressions the emulator and the
`Program` builder check, and each unit's own ``illegal``).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
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
                    refused = 0
                    if name is not None:
                        body = getattr(word.body, name)
                        rules = instructions.rules(config, opcode, body)
                        if rules:
                            refused = refused_by(rules)
                    m.d.comb += self.error_code.eq(Mux(refused, ErrorCode.BAD_FIELD,
                                                       ErrorCode.NONE))
            with m.Default():
                m.d.comb += self.error_code.eq(ErrorCode.ILLEGAL_OPCODE)
        return m
