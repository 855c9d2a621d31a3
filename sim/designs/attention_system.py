"""The attention unit with its sequencer and a word-wide memory standing for DRAM: the benchmark's
design, where whole sequences run in Verilator without the testbench touching every word.

The testbench fills the memory through ``load`` (Q, K and V rows), starts a call on ``cmd``, waits for
``busy`` to fall and reads the output rows back through ``dump``. The memory answers a read a cycle
later, a word per cycle: the unit sees an ideal bus of ``axi_data_width`` bits.

The memory is a plain Verilog RAM (`WORD_RAM_VERILOG`, passed to `run_cocotb` as ``extra_verilog``)
rather than an Amaranth `Memory`, whose Verilog would spell out an initial value for each of its
hundreds of thousands of words.
"""

from amaranth.hdl import ClockSignal, Instance, Module
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ...config import AccelConfig
from ...formats.attention import ATTENTION_COUNTERS, attention_word, sequencer_command
from ...hw.attention import Attention
from ...hw.attention_sequencer import AttentionSequencer

__all__ = ["AttentionSystem", "system_words", "WORD_RAM_VERILOG"]

WORD_RAM_VERILOG = """
module moeaccel_word_ram #(parameter WIDTH = 64, parameter DEPTH = 1024, parameter AW = 10) (
  input clk,
  input [AW-1:0] wa0, input [WIDTH-1:0] wd0, input we0,
  input [AW-1:0] wa1, input [WIDTH-1:0] wd1, input we1,
  input [AW-1:0] ra0, input re0, output reg [WIDTH-1:0] rd0,
  input [AW-1:0] ra1, input re1, output reg [WIDTH-1:0] rd1);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  always @(posedge clk) begin
    if (we0) mem[wa0] <= wd0;
    if (we1) mem[wa1] <= wd1;
    if (re0) rd0 <= mem[ra0];
    if (re1) rd1 <= mem[ra1];
  end
endmodule
"""


def system_words(config: AccelConfig) -> int:
    """Memory words: Q, K, V and O arrays of the longest sequence at the widest row."""
    return 4 * config.max_seq_len * config.attention_row_words


class AttentionSystem(wiring.Component):
    def __init__(self, config: AccelConfig):
        self.config = config
        self.words = system_words(config)
        self.address_bits = (self.words - 1).bit_length()
        word = attention_word(config)
        super().__init__({
            "cmd": In(stream.Signature(sequencer_command(config, self.address_bits))),
            "load": Out(memory.WritePort.Signature(addr_width=self.address_bits, shape=word)),
            "dump": Out(memory.ReadPort.Signature(addr_width=self.address_bits, shape=word)),
            "busy": Out(1),
            "error": Out(1),
            "perf": Out(ATTENTION_COUNTERS),
            "dram_reads": Out(32),
            "dram_writes": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = Attention(self.config)
        m.submodules.sequencer = sequencer = AttentionSequencer(self.config, self.address_bits)
        wiring.connect(m, sequencer.words, unit.data)
        wiring.connect(m, unit.out, sequencer.results)
        read, write = sequencer.read, sequencer.write
        m.submodules.dram = Instance(
            "moeaccel_word_ram",
            p_WIDTH=attention_word(self.config).size, p_DEPTH=self.words, p_AW=self.address_bits,
            i_clk=ClockSignal(),
            i_wa0=write.addr, i_wd0=write.data.as_value(), i_we0=write.en,
            i_wa1=self.load.addr, i_wd1=self.load.data.as_value(), i_we1=self.load.en,
            i_ra0=read.addr, i_re0=read.en, o_rd0=read.data.as_value(),
            i_ra1=self.dump.addr, i_re1=self.dump.en, o_rd1=self.dump.data.as_value())
        both_idle = unit.cmd.ready & sequencer.cmd.ready     # both take the call, or neither
        m.d.comb += [
            sequencer.cmd.valid.eq(self.cmd.valid & both_idle),
            sequencer.cmd.payload.eq(self.cmd.payload),
            unit.cmd.valid.eq(self.cmd.valid & both_idle),
            unit.cmd.payload.eq(self.cmd.payload.attention),
            self.cmd.ready.eq(both_idle),
            self.busy.eq(unit.busy | sequencer.busy),
            self.error.eq(unit.error),
            self.perf.eq(unit.perf),
            sequencer.abort.eq(unit.error),
            self.dram_reads.eq(sequencer.perf.words_read),
            self.dram_writes.eq(sequencer.perf.words_written),
        ]
        return m
