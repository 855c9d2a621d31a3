"""Mutants of the vector unit that its regression must catch: the rsqrt's normalising shift and its
square root, ROPE's pairing, and the saturation. Each runs the cocotb regression's cases of the ops
it touches, with stalls, and must fail it."""

import pytest
from amaranth.hdl import Cat, Mux

from moeaccel.config import preset
from moeaccel.formats.vector import VectorOp
from moeaccel.hw.arith import round_shift_saturate
from moeaccel.hw.vector import RowRsqrt, VectorUnit
from moeaccel.sim.tb import vector as tb

from .test_vector_unit_rtl import run_vector


class ShiftRoundedUp(RowRsqrt):
    """Normalises by ``ceil`` of half the shift, not its floor: s lands outside [2**30, 2**32)."""

    @staticmethod
    def half_shift(length):
        return (33 - length) >> 1


class RootComparesStrictly(RowRsqrt):
    """The square root's restoring step keeps the remainder when it equals the trial divisor."""

    def isqrt_step(self, m, remainder, root, radicand):
        current = Cat(radicand[-2:], remainder)
        trial = Cat(1, 0, root)
        with m.If(current > trial):
            m.d.sync += [remainder.eq(current - trial), root.eq(Cat(1, root))]
        with m.Else():
            m.d.sync += [remainder.eq(current), root.eq(Cat(0, root))]
        m.d.sync += radicand.eq(radicand << 2)


class RsqrtShiftMutant(VectorUnit):
    Rsqrt = ShiftRoundedUp


class RsqrtRootMutant(VectorUnit):
    Rsqrt = RootComparesStrictly


class RopePairMutant(VectorUnit):
    """The second half of a head pairs with the half after it, not the one before."""

    @staticmethod
    def partner_word(word, half_words, first_half):
        return word + half_words


class SaturationMutant(VectorUnit):
    """Rounds and shifts, but wraps instead of saturating."""

    @staticmethod
    def round_saturate(value, shift, max_shift, bits):
        wide = round_shift_saturate(value, shift, max_shift, bits=max_shift + 1)
        return wide[:bits].as_signed()


def _cases(ops, config, seeds=range(3)):
    cases = []
    for op in ops:
        narrow = 2 * config.vector_lanes * 3
        cases += [dict(tb._case(op, 4, narrow, seed=seed, head_dim=2 * config.vector_lanes),
                       idle=0.2, backpressure=0.2) for seed in seeds]
        if op in (VectorOp.RMSNORM, VectorOp.LAYERNORM):
            cases.append(dict(tb._case(op, 3, narrow, seed=7, kind="outlier"), idle=0.2,
                              backpressure=0.2))
    return cases


@pytest.mark.sim
@pytest.mark.parametrize("mutant, ops", [
    (RsqrtShiftMutant, (VectorOp.RMSNORM, VectorOp.LAYERNORM)),
    (RsqrtRootMutant, (VectorOp.RMSNORM, VectorOp.LAYERNORM)),
    (RopePairMutant, (VectorOp.ROPE,)),
    (SaturationMutant, (VectorOp.ADD, VectorOp.MUL, VectorOp.REQUANT)),
], ids=["rsqrt-shift", "rsqrt-root", "rope-pairing", "saturation"])
def test_regression_catches_the_mutant(mutant, ops):
    config = preset("tiny")
    with pytest.raises(AssertionError, match="vector unit outputs differ from the golden model"):
        run_vector("tiny", {"cases": _cases(ops, config)}, component=mutant(config),
                   toplevel=f"vector_{mutant.__name__.lower()}")
