"""The formats of moeaccel, in one torch-free place below everything else: every unit's command and
stream payloads, every on-chip entry and DRAM record, the instruction bodies, the counter layouts and
the enums, as `lib.data` layouts with their sizes; and each unit's legality `check`.

The hardware decodes with these layouts, the ISA encodes with them, the emulator, the compiler and the
host lay out memory with them (through `records.dtype`), so no offset or record size is written
anywhere else. Submodules, one per unit or concern:

- `numbers`: integer ranges, fixed-point formats, requantisation widths;
- `records`: layouts as numpy records, and `Pair` (a record's on-chip and DRAM forms, declared once);
- `rules`: legality rules written once for the RTL and for Python;
- `epilogue`, `expert_ffn`, `router`, `attention`, `vector`: each unit's formats and `check`;
- `buffers`: the on-chip buffers and their sizes;
- `instructions`: opcodes, error codes, instruction bodies, the expert descriptor.
"""

from . import attention, buffers, dma, epilogue, expert_ffn, instructions, numbers, records, router, vector
from .attention import AttentionShape
from .buffers import Buffer
from .instructions import ErrorCode, Opcode, Queue
from .router import ROUTER_MODES, RouterMode
from .vector import VectorOp

__all__ = ["attention", "buffers", "dma", "epilogue", "expert_ffn", "instructions", "numbers", "records",
           "router", "vector", "AttentionShape", "Buffer", "ErrorCode", "Opcode", "Queue",
           "ROUTER_MODES", "RouterMode", "VectorOp"]
