"""moeaccel: hardware/software co-design kit for Mixture-of-Experts inference on FPGAs.

Subpackages: `hw` (Amaranth RTL), `sw` (golden models), `sim` (cocotb/Verilator harness), `compiler`,
`host`, `boards`; `config` holds `AccelConfig`, the one description of an accelerator build.
"""

__version__ = "0.1.0"
