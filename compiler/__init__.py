"""The compiler: from a model to a program and its DRAM image for one `AccelConfig`.

Its passes, in order (each a module here): ``plan`` (how each projection runs on the Expert-FFN
engine, refusing what the configuration cannot hold) and ``emit`` (the program, written with
`isa.Program`, and the DRAM image laid out in the records of `moeaccel.formats`). Import from ONNX and
quantisation come before them.
"""
