"""Vectorisable ``exp`` and ``log`` for the blocked kernels (numba), at <= 2 ulp.

numba calls scalar libm for ``math.exp``/``math.log``, which keeps LLVM from vectorising a
loop (4-5 ns an element here). These functions use only arithmetic, comparisons and bit
casts, so a loop over a block of points compiles to AVX2/AVX-512 code.

* ``exp``: Cody-Waite reduction ``x = n ln2 + r``, ``|r| <= ln2 / 2``, a degree-11 Chebyshev
  fit of ``exp(r)`` (3e-18 relative) in Estrin form, and ``2^n`` built from its exponent bits;
  the rounding shift ``1.5 * 2^52`` gives ``n`` without a float-to-int conversion (which AVX2
  lacks for 64-bit lanes).
* ``log``: exponent and mantissa from the bits, mantissa in [sqrt(1/2), sqrt(2)), and
  ``log(1 + f) = 2 atanh(s)``, ``s = f / (2 + f)``, written as ``f - (f^2/2 - s (f^2/2 + R))``
  with the Taylor tail ``R`` of atanh (9 terms) so the exact ``f`` carries the leading part.

Two flavours. ``vexp``/``vlog`` take any argument and follow libm (subnormal results and
arguments, overflow, ``exp(-inf) = 0``, ``log(0) = -inf``, ``log(x < 0) = nan``, nan passes).
The lean scalar cores ``exp_nonpos`` (x <= 0, results below 2^-1021 flushed to 0, positive
arguments read as 0) and ``log_pos`` (positive normal arguments) are what the kernels inline
into their loops: their arguments are max-shifted logits and ratios of sums in [1/k, k].
Measured against libm on 4e4 arguments each (tests/test_vmath.py): <= 2 ulp.

The block functions work in place: with a separate output array LLVM adds a runtime overlap
check, and an in-place call would fail it and run the scalar loop. Lanes that would underflow
are computed on a harmless argument and replaced afterwards: the arithmetic of an underflowing
lane costs a microcode assist even when the lane is discarded.

The bit casts are numba intrinsics with a pure-Python fallback (``struct``), so the same
functions run unchanged under ``NUMBA_DISABLE_JIT=1``; the tests run both.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["f64_bits", "bits_f64", "vexp", "vlog", "exp_nonpos", "log_pos", "vexp_nonpos",
           "vlog_pos"]  # fmt: skip


# -- bit casts ---------------------------------------------------------------------------------
def f64_bits(x):
    """The IEEE-754 bits of the float ``x`` as a signed 64-bit integer."""
    return struct.unpack("<q", struct.pack("<d", x))[0]


def bits_f64(i):
    """The float whose IEEE-754 bits are the 64-bit integer ``i`` (wrapped like int64)."""
    return struct.unpack("<d", struct.pack("<Q", int(i) & 0xFFFFFFFFFFFFFFFF))[0]


@intrinsic
def _bitcast_f2i(typingctx, x):
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bitcast_i2f(typingctx, i):
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@overload(f64_bits)
def _f64_bits_jit(x):
    return lambda x: _bitcast_f2i(x)


@overload(bits_f64)
def _bits_f64_jit(i):
    return lambda i: _bitcast_i2f(i)


# -- constants ---------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: x + _SHIFT rounds x to an integer in the low bits
_SHIFT_BITS = f64_bits(_SHIFT)
_EXP_BIAS = 1023
_TWO_M100 = 2.0**-100
_TWO_P100 = 2.0**100
# exp(r) on |r| <= ln2/2 + 1e-3: Chebyshev fit of degree 11 (mpmath.chebyfit), relative error
# 3.3e-18 (Taylor needs degree 13 for the same)
_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11 = (
    1.0, 1.0, 0.5000000000000019, 0.16666666666666682, 0.04166666666648393,
    0.00833333333331928, 0.0013888888953421457, 0.0001984126989089813,
    2.4801484301104542e-05, 2.755724001024349e-06, 2.763307546557511e-07,
    2.5110372746250102e-08,
)  # fmt: skip

_SQRT2 = math.sqrt(2.0)
_MANT_MASK = (1 << 52) - 1
_EXP_MASK = 0x7FF << 52
_ONE_BITS = f64_bits(1.0)
_TWO52 = 2.0**52
_TWO52_BITS = f64_bits(_TWO52)
_TWO54 = 2.0**54
_MIN_NORMAL = 2.2250738585072014e-308
# atanh tail: log(1 + f) = 2 s + s R(s^2), R = sum_j 2 s^(2j) / (2j + 1)
_L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9 = (2.0 / (2 * j + 1) for j in range(1, 10))

# Contraction (FMA) and no-signed-zeros only: reassociation would undo the Cody-Waite split and
# the rounding shift, so ``fastmath=True`` must never be used here.
_FLAGS = {"contract", "nsz"}


@njit(inline="always", fastmath=_FLAGS)
def _reduce(x):
    """(t, r): ``x = n ln2 + r`` with ``n`` held in the low bits of ``t = x log2(e) + 1.5 2^52``."""
    t = x * _LOG2E + _SHIFT
    nf = t - _SHIFT
    return t, (x - nf * _LN2_HI) - nf * _LN2_LO


@njit(inline="always", fastmath=_FLAGS)
def _exp_poly(r):
    r2 = r * r
    r4 = r2 * r2
    lo = ((_E0 + _E1 * r) + (_E2 + _E3 * r) * r2) + ((_E4 + _E5 * r) + (_E6 + _E7 * r) * r2) * r4
    return lo + ((_E8 + _E9 * r) + (_E10 + _E11 * r) * r2) * (r4 * r4)


@njit(inline="always", fastmath=_FLAGS)
def exp_nonpos(x):
    """exp(x) for x <= 0, flushing results below 2^-1021 (x < -708) to 0; a positive x is read
    as 0 and nan passes.

    The lean variant for the kernels' max-shifted arguments. Inlined at numba level, so it
    takes the caller's fastmath flags: call it only from functions without reassociation.
    """
    zero = x < -708.0
    xb = 0.0 if (zero | (x > 0.0)) else x
    t, r = _reduce(xb)
    val = _exp_poly(r) * bits_f64((f64_bits(t) - _SHIFT_BITS + _EXP_BIAS) << 52)
    return 0.0 if zero else val


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def vexp_nonpos(x, nb):
    """``x[:nb] = exp_nonpos(x[:nb])`` in place (arguments <= 0; see :func:`exp_nonpos`)."""
    for b in range(nb):
        x[b] = exp_nonpos(x[b])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def vexp(x, nb):
    """``x[:nb] = exp(x[:nb])`` in place, any argument (libm's underflow and overflow)."""
    for b in range(nb):
        x0 = x[b]
        zero = x0 < -745.2
        xb = 0.0 if zero else (710.0 if x0 > 710.0 else x0)
        t, r = _reduce(xb)
        n = f64_bits(t) - _SHIFT_BITS
        # subnormal and top-range results go through 2^+-100 so 2^n stays a normal number
        small = xb < -700.0
        big = xb > 700.0
        off = 100 if small else (-100 if big else 0)
        scale = _TWO_M100 if small else (_TWO_P100 if big else 1.0)
        val = _exp_poly(r) * bits_f64((n + off + _EXP_BIAS) << 52) * scale
        x[b] = 0.0 if zero else val


@njit(inline="always", fastmath=_FLAGS)
def _log_normal(x, adj):
    """log(x) - adj ln2 for a positive normal x (garbage otherwise)."""
    bits = f64_bits(x)
    m = bits_f64((bits & _MANT_MASK) | _ONE_BITS)
    # the biased exponent as a float without an int-to-float conversion (none in AVX2)
    ef = bits_f64(((bits & _EXP_MASK) >> 52) | _TWO52_BITS) - (_TWO52 + _EXP_BIAS + adj)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    ef = ef + 1.0 if big else ef
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    s4 = s2 * s2
    hf = 0.5 * f * f
    R = ((_L1 + _L2 * s2) + (_L3 + _L4 * s2) * s4) + (
        (_L5 + _L6 * s2) + (_L7 + _L8 * s2) * s4 + _L9 * (s4 * s4)
    ) * (s4 * s4)
    R = R * s2
    return ef * _LN2_HI - ((hf - (s * (hf + R) + ef * _LN2_LO)) - f)


@njit(inline="always", fastmath=_FLAGS)
def log_pos(x):
    """log(x) for a positive finite normal x; nan passes (the lean variant for the kernels,
    inlined with the caller's flags like :func:`exp_nonpos`)."""
    return _log_normal(x, 0.0) + (x - x)  # x - x is nan for nan (and inf), 0 otherwise


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def vlog_pos(x, nb):
    """``x[:nb] = log_pos(x[:nb])`` in place (positive normal arguments or nan)."""
    for b in range(nb):
        x[b] = log_pos(x[b])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def vlog(x, nb):
    """``x[:nb] = log(x[:nb])`` in place, any argument (libm's special values)."""
    for b in range(nb):
        xb = x[b]
        sub = xb < _MIN_NORMAL
        o = _log_normal(xb * _TWO54 if sub else xb, 54.0 if sub else 0.0)
        o = -np.inf if xb == 0.0 else o
        o = np.nan if xb < 0.0 else o
        x[b] = xb if (xb != xb or xb == np.inf) else o
