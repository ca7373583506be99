"""Numba kernels of the top-K sparse softmax gating Gaussian MoE (the EM hot loops).

Every kernel makes one pass over the data and keeps O(k) scratch memory per point (plus the
O(k^2 p^2) accumulators of the gating Hessian), so no (n, k, p) temporaries are built.

Conventions shared by all kernels
---------------------------------
* ``X`` (n, d) C-contiguous float64, ``y`` (n,), model arrays ``beta0`` (k,), ``beta1`` (k, d),
  ``a`` (k, d), ``b`` (k,), ``v`` (k,) variances, ``K`` the number of selected experts.
* Top-K selection uses ``s_i = beta1_i . x`` only; ties go to the lower index.
* The regressor of both the gating and the expert regressions is ``z = (x_1, ..., x_d, 1)``,
  so a gating block is ``(beta1_j, beta0_j)`` and an expert block is ``(a_i, b_i)``.
* Free parameters (for gradients): the gating blocks of every expert but ``ref`` in index
  order, then the expert blocks ``(a_i, b_i)`` of every expert, then ``log v_i`` of every
  expert. The variance enters on the log scale so the gradient is scale free.

Kernels are plain Python under ``NUMBA_DISABLE_JIT=1`` (coverage runs them that way).
"""

from __future__ import annotations

import math
import struct

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

__all__ = [
    "LOG_2PI",
    "n_gating_free",
    "n_free",
    "select_topk",
    "topk_mask",
    "log_density_points",
    "loglik",
    "e_step",
    "expert_stats",
    "gating_grad_hess",
    "em_pass",
    "obs_grad",
    "obs_hess",
    "BLOCK",
    "CHUNK_BLOCKS",
    "f64_bits",
    "bits_f64",
    "vexp",
    "vlog",
    "vexp_nonpos",
    "vlog_pos",
    "exp_nonpos",
    "log_pos",
]

LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=True, nogil=True)
def n_gating_free(k, d):
    """Number of free gating parameters: (k - 1) blocks of (beta1, beta0)."""
    return (k - 1) * (d + 1)


@njit(cache=True, nogil=True)
def n_free(k, d):
    """Number of free parameters: gating blocks, expert blocks (a, b), log variances."""
    return (k - 1) * (d + 1) + k * (d + 1) + k


@njit(cache=True, nogil=True)
def select_topk(s, K, active):
    """Mark in ``active`` (k,) the K largest entries of ``s`` (ties to the lower index).

    Expert i is selected when fewer than K experts beat it, where j beats i if
    ``s_j > s_i`` or (``s_j == s_i`` and ``j < i``). O(k^2), which is cheap for small k.
    """
    k = s.shape[0]
    if K >= k:
        for i in range(k):
            active[i] = True
        return
    for i in range(k):
        beaten = 0
        si = s[i]
        for j in range(k):
            if s[j] > si or (s[j] == si and j < i):
                beaten += 1
        active[i] = beaten < K


@njit(cache=True, nogil=True)
def _point(X, nn, yv, beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res):
    """Everything one point needs, with two max-shifted log-sum-exps (2K exp, 2 log).

    Fills the active set, ``ew_i = exp(eta_i - max eta)`` (gating, 0 off the active set),
    ``ej_i = exp(lj_i - max lj)`` with ``lj_i = eta_i + log N(y; a_i.x + b_i, v_i)`` and the
    residuals ``res_i``. Returns ``(log p(y | x), sum ew, sum ej)``, so that the gating
    weights are ``ew / sum ew`` and the responsibilities ``ej / sum ej``.
    """
    k, d = beta1.shape
    for i in range(k):
        acc = 0.0
        for t in range(d):
            acc += beta1[i, t] * X[nn, t]
        s[i] = acc
    select_topk(s, K, active)
    m1 = -np.inf
    m2 = -np.inf
    for i in range(k):
        if active[i]:
            eta = s[i] + beta0[i]
            mu = b[i]
            for t in range(d):
                mu += a[i, t] * X[nn, t]
            e = yv - mu
            res[i] = e
            lj = eta - 0.5 * (LOG_2PI + logv[i] + e * e * invv[i])
            ew[i] = eta  # logits and log joints are kept until the shifts are known
            ej[i] = lj
            if eta > m1:
                m1 = eta
            if lj > m2:
                m2 = lj
    totw = 0.0
    totj = 0.0
    for i in range(k):
        if active[i]:
            ew[i] = math.exp(ew[i] - m1)
            ej[i] = math.exp(ej[i] - m2)
            totw += ew[i]
            totj += ej[i]
        else:
            ew[i] = 0.0
            ej[i] = 0.0
            res[i] = 0.0
    lp = (m2 + math.log(totj)) - (m1 + math.log(totw))
    return lp, totw, totj


@njit(cache=True, nogil=True)
def _scratch(k):
    return (
        np.empty(k),
        np.empty(k, dtype=np.bool_),
        np.empty(k),
        np.empty(k),
        np.empty(k),
    )


@njit(cache=True, nogil=True)
def topk_mask(X, beta1, K, mask):
    """Fill the boolean ``mask`` (n, k) with the top-K active sets of ``beta1 @ x``."""
    n, d = X.shape
    k = beta1.shape[0]
    s = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    for nn in range(n):
        for i in range(k):
            acc = 0.0
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            s[i] = acc
        select_topk(s, K, active)
        for i in range(k):
            mask[nn, i] = active[i]


@njit(cache=True, nogil=True)
def e_step(X, y, beta0, beta1, a, b, v, K, R, mask):
    """E-step: fill responsibilities ``R`` (n, k) and active sets ``mask``; return log-lik."""
    n = X.shape[0]
    k = beta0.shape[0]
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    total = 0.0
    for nn in range(n):
        lp, totw, totj = _point(
            X, nn, y[nn], beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res
        )
        total += lp
        for i in range(k):
            mask[nn, i] = active[i]
            R[nn, i] = ej[i] / totj
    return total


@njit(cache=True, nogil=True)
def _accumulate_expert(X, nn, yv, r, i, XtX, Xty, sr, syy):
    d = X.shape[1]
    for u in range(d + 1):
        zu = X[nn, u] if u < d else 1.0
        rz = r * zu
        Xty[i, u] += rz * yv
        for w in range(u, d + 1):
            zw = X[nn, w] if w < d else 1.0
            XtX[i, u, w] += rz * zw
    sr[i] += r
    syy[i] += r * yv * yv


@njit(cache=True, nogil=True)
def _symmetrize_expert(XtX):
    k, p, _ = XtX.shape
    for i in range(k):
        for u in range(p):
            for w in range(u):
                XtX[i, u, w] = XtX[i, w, u]


@njit(cache=True, nogil=True)
def expert_stats(X, y, R, XtX, Xty, sr, syy):
    """Weighted sufficient statistics of the expert step, from responsibilities ``R``.

    Fills (zeroing first) ``XtX`` (k, p, p) = sum_n r_ni z z', ``Xty`` (k, p) = sum r z y,
    ``sr`` (k,) = sum r, ``syy`` (k,) = sum r y^2, with z = (x, 1) and p = d + 1.
    """
    n = X.shape[0]
    k = R.shape[1]
    XtX[:] = 0.0
    Xty[:] = 0.0
    sr[:] = 0.0
    syy[:] = 0.0
    for nn in range(n):
        for i in range(k):
            r = R[nn, i]
            if r != 0.0:
                _accumulate_expert(X, nn, y[nn], r, i, XtX, Xty, sr, syy)
    _symmetrize_expert(XtX)


@njit(cache=True, nogil=True)
def _accumulate_gating(X, nn, r, w, active, ref, g, H):
    """Add one point to the gradient and Hessian of Q(beta) in the free gating parameters.

    Q_n = sum_i r_i log w_i with the point's active set held; dQ/dbeta_j = (r_j - w_j) z and
    d2Q/dbeta_j dbeta_l' = -(w_j 1[j=l] - w_j w_l) z z'. Only the upper triangle of H is
    accumulated (symmetrised afterwards).
    """
    k = w.shape[0]
    d = X.shape[1]
    p = d + 1
    bj = 0
    for j in range(k):
        if j == ref:
            continue
        if active[j]:
            cj = r[j] - w[j]
            for u in range(p):
                zu = X[nn, u] if u < d else 1.0
                g[bj * p + u] += cj * zu
            bl = bj
            for l in range(j, k):
                if l == ref:
                    continue
                if active[l]:
                    c = w[j] * w[l]
                    if l == j:
                        c -= w[j]
                    for u in range(p):
                        cz = c * (X[nn, u] if u < d else 1.0)
                        w0 = u if l == j else 0
                        for q in range(w0, p):
                            zq = X[nn, q] if q < d else 1.0
                            H[bj * p + u, bl * p + q] += cz * zq
                bl += 1
        bj += 1


@njit(cache=True, nogil=True)
def _symmetrize(H):
    m = H.shape[0]
    for u in range(m):
        for w in range(u):
            H[u, w] = H[w, u]


@njit(cache=True, nogil=True)
def gating_grad_hess(X, R, mask, beta0, beta1, ref, g, H):
    """Gradient ``g`` and Hessian ``H`` of Q(beta) = sum_n sum_i r_ni log w_i(x_n; beta).

    Active sets are held at ``mask``; the free parameters are the (beta1_j, beta0_j) blocks
    of every expert but ``ref``. ``g`` and ``H`` are zeroed first. Returns Q.
    """
    n, d = X.shape
    k = beta0.shape[0]
    g[:] = 0.0
    H[:] = 0.0
    eta = np.empty(k)
    w = np.empty(k)
    r = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    Q = 0.0
    for nn in range(n):
        m = -np.inf
        for i in range(k):
            active[i] = mask[nn, i]
            r[i] = R[nn, i]
            acc = beta0[i]
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            eta[i] = acc
            if active[i] and acc > m:
                m = acc
        tot = 0.0
        for i in range(k):
            if active[i]:
                tot += math.exp(eta[i] - m)
        lse = m + math.log(tot)
        for i in range(k):
            if active[i]:
                w[i] = math.exp(eta[i] - lse)
                if r[i] != 0.0:
                    Q += r[i] * (eta[i] - lse)
            else:
                w[i] = 0.0
        _accumulate_gating(X, nn, r, w, active, ref, g, H)
    _symmetrize(H)
    return Q


# =================================================================================================
# Vectorisable exp and log (here, not in a module of their own: numba's cache of a function is
# invalidated only by changes to its own file, and the passes below inline these)
# =================================================================================================
# numba calls scalar libm for math.exp/math.log, which keeps LLVM from vectorising a loop (4-5
# ns an element here). These use only arithmetic, comparisons and bit casts, so a loop over a
# block of points compiles to AVX2/AVX-512 code.
#
# * exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-11 Chebyshev fit of
#   exp(r) (3e-18 relative) in Estrin form, and 2^n built from its exponent bits; the rounding
#   shift 1.5 * 2^52 gives n without a float-to-int conversion (AVX2 has none for 64-bit lanes).
# * log: exponent and mantissa from the bits, mantissa in [sqrt(1/2), sqrt(2)), and
#   log(1 + f) = 2 atanh(s), s = f / (2 + f), written as f - (f^2/2 - s (f^2/2 + R)) with the
#   Taylor tail R of atanh (9 terms) so the exact f carries the leading part.
#
# Two flavours. vexp/vlog (block functions, in place) take any argument and follow libm
# (subnormals, overflow, exp(-inf) = 0, log(0) = -inf, log(x < 0) = nan, nan passes). The lean
# scalar cores exp_nonpos (x <= 0, results below 2^-1021 flushed to 0, a positive x read as 0)
# and log_pos (positive normal arguments, nan passes) are inlined into the passes' loops: their
# arguments are max-shifted logits and ratios of sums in [1/k, k]. <= 2 ulp against libm
# (tests/test_vmath.py). Block functions work in place: with a separate output array LLVM adds
# a runtime overlap check that an in-place call would fail (scalar loop). Lanes that would
# underflow are computed on a harmless argument and replaced afterwards: the arithmetic of an
# underflowing lane costs a microcode assist even when the lane is discarded.
#
# The bit casts are numba intrinsics with a pure-Python fallback (struct), so the same code runs
# under NUMBA_DISABLE_JIT=1; the tests run both.


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


# =================================================================================================
# Blocked passes: log_density_points, loglik, em_pass, obs_grad, obs_hess
# =================================================================================================
# Points are processed in blocks of BLOCK in structure-of-arrays form ((k, BLOCK) rows per
# quantity), with masks instead of branches and the exp/log above, so every inner
# loop runs over the points of a block and vectorises. Blocks are grouped into chunks of
# CHUNK_BLOCKS; each chunk sums its blocks in order into its own row of partial sums, and the
# rows are added in chunk order. The partition depends on n only, so the serial and the
# parallel (prange over chunks) passes give bit-identical results for any number of threads.
#
# Floating-point flags: the top-K scores are computed exactly as the scalar kernels do (no
# fastmath: a reordered dot product could flip a near tie); per-point arithmetic may contract
# to FMA; only the sums over the points of a block may be reassociated (vectorised reductions).

#: points per block
BLOCK = 256
#: blocks per chunk of partial sums (the unit of the optional parallel loop)
CHUNK_BLOCKS = 16

_EXACT = dict(cache=True, nogil=True, error_model="numpy")
_POINTWISE = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz"})
_ORDER_FREE = dict(
    cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"}
)

# what a chunk accumulates
_MODE_LL = 0  # log-likelihood only
_MODE_POINTS = 1  # log p(y_n | x_n) per point (written to ``out``)
_MODE_GRAD = 2  # + gradient of the observed log-likelihood
_MODE_EM = 3  # + expert statistics and gating Hessian of Q
_MODE_HESS = 4  # + Hessian of the observed log-likelihood


@njit(**_ORDER_FREE)
def _dot(A, a, B, b, nb):
    """sum_j A[a, j] B[b, j] (rows of 2-d arrays: a row view would cost two atomic reference
    count updates, which add up over the many small loops of a block)."""
    acc = 0.0
    for j in range(nb):
        acc += A[a, j] * B[b, j]
    return acc


@njit(**_ORDER_FREE)
def _dot4(A, a, B, b, nb):
    """The four dots of row ``a`` of A with rows b..b+3 of B in one sweep (row a is loaded
    once for four products: the rank-one part of the Hessian is load-bound otherwise)."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for j in range(nb):
        x = A[a, j]
        s0 += x * B[b, j]
        s1 += x * B[b + 1, j]
        s2 += x * B[b + 2, j]
        s3 += x * B[b + 3, j]
    return s0, s1, s2, s3


@njit(**_ORDER_FREE)
def _sum(A, a, nb):
    acc = 0.0
    for j in range(nb):
        acc += A[a, j]
    return acc


@njit(**_EXACT)
def _gating_blocks(k, p, ref):
    """Offset of every expert's gating block in the free parameters (-1 for the reference)."""
    blk = np.empty(k, dtype=np.int64)
    c = 0
    for i in range(k):
        if i == ref:
            blk[i] = -1
        else:
            blk[i] = c * p
            c += 1
    return blk


@njit(**_EXACT)
def _layout(mode, k, d):
    """Offsets in a chunk's row of partial sums: (XtX, Xty, syy, H, grad, loglik, size)."""
    p = d + 1
    ng = (k - 1) * p
    nf = ng + k * p + k
    o_xtx = o_xty = o_syy = o_h = o_grad = o_ll = 0
    if mode == _MODE_EM:
        o_xty = k * p * p
        o_syy = o_xty + k * p
        o_h = o_syy + k
        o_grad = o_h + ng * ng
        o_ll = o_grad + nf
    elif mode == _MODE_HESS:
        o_h = nf
        o_ll = o_h + nf * nf
    elif mode == _MODE_GRAD:
        o_ll = nf
    return o_xtx, o_xty, o_syy, o_h, o_grad, o_ll, o_ll + 1


# rows of the per-point scratch ``pt``
_Y, _YY, _M1, _M2, _TW, _TJ, _T1, _T2 = 0, 1, 2, 3, 4, 5, 6, 7


@njit(**_EXACT)
def _work(k, d, mode):
    """Scratch of one chunk: (k, BLOCK) arrays per quantity and (8, BLOCK) per-point rows."""
    p = d + 1
    nf = (k - 1) * p + k * p + k
    zs = np.ones((p, BLOCK))  # regressors z = (x, 1) by row; the last row stays 1
    pt = np.empty((8, BLOCK))
    kb = np.empty((6, k, BLOCK))  # s, eta, e, lj, gating exps -> w, joint exps -> r
    act = np.empty((k, BLOCK), dtype=np.bool_)
    cnt = np.empty(BLOCK, dtype=np.int64)
    rz = np.empty((p, BLOCK))
    U = np.empty((nf if mode == _MODE_HESS else 1, BLOCK))  # rows of Gbar (obs_hess)
    return zs, pt, kb[0], kb[1], kb[2], kb[3], kb[4], kb[5], act, cnt, rz, U


@njit(**_EXACT)
def _block_load_select(X, y, n0, nb, beta0, beta1, K, zs, pt, s, eta, act, cnt):
    """Copy the block to SoA, scores s = beta1 x (summed as the scalar kernels do), logits and
    top-K masks (j beats i if s_j > s_i, or s_j == s_i and j < i)."""
    k, d = beta1.shape
    for j in range(nb):
        pt[_Y, j] = y[n0 + j]
    for j in range(nb):
        pt[_YY, j] = pt[_Y, j] * pt[_Y, j]
    for t in range(d):
        for j in range(nb):
            zs[t, j] = X[n0 + j, t]
    for i in range(k):
        for j in range(nb):
            s[i, j] = 0.0
        for t in range(d):
            c = beta1[i, t]
            for j in range(nb):
                s[i, j] += c * zs[t, j]
        c0 = beta0[i]
        for j in range(nb):
            eta[i, j] = s[i, j] + c0
    if K >= k:
        for i in range(k):
            for j in range(nb):
                act[i, j] = True
        return
    for i in range(k):
        for j in range(nb):
            cnt[j] = 0
        for m in range(k):
            if m < i:
                for j in range(nb):
                    cnt[j] += s[m, j] >= s[i, j]
            elif m > i:
                for j in range(nb):
                    cnt[j] += s[m, j] > s[i, j]
        for j in range(nb):
            act[i, j] = cnt[j] < K


@njit(**_POINTWISE)
def _block_estep(nb, a, b, logv, invv, zs, pt, eta, act, e, lj, w, r, lp, normalise):
    """Residuals ``e``, log joints, the two max-shifted log-sum-exps and log p(y | x) into ``lp``.

    ``w``/``r`` receive exp(eta - max) and exp(lj - max) on the active set (exactly 0 off it);
    with ``normalise`` they become the gating weights and the responsibilities. Every loop
    stores to one array only and loads before it selects: LLVM gives up vectorising a loop
    whose overlap checks get too many, or that loads inside a branch.
    """
    k, d = a.shape
    for j in range(nb):
        pt[_M1, j] = -np.inf
    for j in range(nb):
        pt[_M2, j] = -np.inf
    for i in range(k):
        c0 = b[i]
        for j in range(nb):
            e[i, j] = c0
        for t in range(d):
            c = a[i, t]
            for j in range(nb):
                e[i, j] += c * zs[t, j]
        for j in range(nb):
            e[i, j] = pt[_Y, j] - e[i, j]
        lv = LOG_2PI + logv[i]
        iv = invv[i]
        for j in range(nb):
            res = e[i, j]
            lj[i, j] = eta[i, j] - 0.5 * (lv + res * res * iv)
        for j in range(nb):
            h = eta[i, j]
            m = pt[_M1, j]
            pt[_M1, j] = h if (act[i, j] & (h > m)) else m
        for j in range(nb):
            h = lj[i, j]
            m = pt[_M2, j]
            pt[_M2, j] = h if (act[i, j] & (h > m)) else m
    for j in range(nb):
        pt[_TW, j] = 0.0
    for j in range(nb):
        pt[_TJ, j] = 0.0
    for i in range(k):
        for j in range(nb):
            val = exp_nonpos(eta[i, j] - pt[_M1, j])
            w[i, j] = val if act[i, j] else 0.0
        for j in range(nb):
            val = exp_nonpos(lj[i, j] - pt[_M2, j])
            r[i, j] = val if act[i, j] else 0.0
        for j in range(nb):
            pt[_TW, j] += w[i, j]
        for j in range(nb):
            pt[_TJ, j] += r[i, j]
    for j in range(nb):
        # log of sum exp(lj - m2) / sum exp(eta - m1): one log a point
        lp[j] = (pt[_M2, j] - pt[_M1, j]) + log_pos(pt[_TJ, j] / pt[_TW, j])
    if normalise:
        for j in range(nb):
            pt[_TW, j] = 1.0 / pt[_TW, j]
        for j in range(nb):
            pt[_TJ, j] = 1.0 / pt[_TJ, j]
        for i in range(k):
            for j in range(nb):
                w[i, j] *= pt[_TW, j]
            for j in range(nb):
                r[i, j] *= pt[_TJ, j]


@njit(**_ORDER_FREE)
def _acc_grad(nb, zs, pt, w, r, e, invv, blk, rz, row, o_grad, o_xtx, o_xty, o_syy, stats):
    """Gradient of the observed log-likelihood (Fisher's identity), and with ``stats`` the
    expert sufficient statistics (upper triangles of XtX), into ``row``."""
    k = r.shape[0]
    p = zs.shape[0]
    ng = (k - 1) * p
    for i in range(k):
        iv = invv[i]
        for u in range(p):
            for j in range(nb):
                rz[u, j] = r[i, j] * zs[u, j]
        gb = o_grad + ng + i * p
        for u in range(p):
            row[gb + u] += iv * _dot(rz, u, e, i, nb)
        for j in range(nb):
            res = e[i, j]
            pt[_T1, j] = r[i, j] * (res * res * iv - 1.0)
        row[o_grad + ng + k * p + i] += 0.5 * _sum(pt, _T1, nb)
        if stats:
            for u in range(p):
                for q in range(u, p):
                    row[o_xtx + (i * p + u) * p + q] += _dot(rz, u, zs, q, nb)
                row[o_xty + i * p + u] += _dot(rz, u, pt, _Y, nb)
            row[o_syy + i] += _dot(r, i, pt, _YY, nb)
        bi = blk[i]
        if bi >= 0:
            for j in range(nb):
                pt[_T1, j] = r[i, j] - w[i, j]
            for u in range(p):
                row[o_grad + bi + u] += _dot(pt, _T1, zs, u, nb)


@njit(**_ORDER_FREE)
def _acc_zz(nb, zs, c, ci, rz, row, base, ld, sym):
    """row[base + u*ld + q] += sum_j c[ci, j] z_u z_q for u <= q (and the mirrored (q, u)
    entry of an off-diagonal block when ``sym``)."""
    p = zs.shape[0]
    for u in range(p):
        for j in range(nb):
            rz[u, j] = c[ci, j] * zs[u, j]
    for u in range(p):
        for q in range(u, p):
            val = _dot(rz, u, zs, q, nb)
            row[base + u * ld + q] += val
            if sym and q != u:
                row[base + q * ld + u] += val


@njit(**_ORDER_FREE)
def _acc_gating_hess(nb, zs, pt, w, blk, rz, row, o_h):
    """Hessian of the gating Q in the free gating blocks, active sets held (upper blocks)."""
    k = w.shape[0]
    p = zs.shape[0]
    ng = (k - 1) * p
    for i in range(k):
        bi = blk[i]
        if bi < 0:
            continue
        for j in range(nb):
            wij = w[i, j]
            pt[_T1, j] = wij * wij - wij
        _acc_zz(nb, zs, pt, _T1, rz, row, o_h + bi * ng + bi, ng, False)
        for m in range(i + 1, k):
            bm = blk[m]
            if bm < 0:
                continue
            for j in range(nb):
                pt[_T1, j] = w[i, j] * w[m, j]
            _acc_zz(nb, zs, pt, _T1, rz, row, o_h + bi * ng + bm, ng, True)


@njit(**_ORDER_FREE)
def _acc_obs_hess(nb, zs, pt, w, r, e, invv, blk, rz, U, row, o_grad, o_h):
    """Gradient and Hessian of the observed log-likelihood, active sets held (upper triangle):
    the block-diagonal part sum_i r_i (Hess lj_i + G_i G_i') - w_i g_i g_i' per expert, then
    the rank-two part -Gbar Gbar' + gbar gbar' from the rows of Gbar (``U``) and gbar.
    See :func:`obs_hess` for the notation."""
    k = r.shape[0]
    p = zs.shape[0]
    ng = (k - 1) * p
    nf = ng + k * p + k
    for i in range(k):
        iv = invv[i]
        xb = ng + i * p
        ti = ng + k * p + i
        for j in range(nb):
            res = e[i, j]
            U[ti, j] = r[i, j] * (0.5 * (res * res * iv - 1.0))  # r h
        for j in range(nb):
            pt[_T2, j] = r[i, j] * (e[i, j] * iv)  # r e / v
        for j in range(nb):
            ev = e[i, j] * iv
            pt[_T1, j] = r[i, j] * (ev * ev - iv)
        for u in range(p):
            for j in range(nb):
                U[xb + u, j] = pt[_T2, j] * zs[u, j]
        _acc_zz(nb, zs, pt, _T1, rz, row, o_h + xb * nf + xb, nf, False)  # (phi_i, phi_i)
        for j in range(nb):
            res = e[i, j]
            pt[_T1, j] = pt[_T2, j] * (0.5 * (res * res * iv - 1.0) - 1.0)
        for u in range(p):
            row[o_h + (xb + u) * nf + ti] += _dot(pt, _T1, zs, u, nb)  # (phi_i, tau_i)
        for j in range(nb):
            res = e[i, j]
            ev = res * iv
            h = 0.5 * (res * ev - 1.0)
            pt[_T1, j] = r[i, j] * (h * h - 0.5 * res * ev)
        row[o_h + ti * nf + ti] += _sum(pt, _T1, nb)  # (tau_i, tau_i)
        gb = blk[i]
        if gb < 0:
            continue
        for u in range(p):
            for j in range(nb):
                U[gb + u, j] = r[i, j] * zs[u, j]
        for j in range(nb):
            pt[_T1, j] = r[i, j] - w[i, j]
        _acc_zz(nb, zs, pt, _T1, rz, row, o_h + gb * nf + gb, nf, False)  # (theta_i, theta_i)
        _acc_zz(nb, zs, pt, _T2, rz, row, o_h + gb * nf + xb, nf, True)  # (theta_i, phi_i)
        for u in range(p):
            row[o_h + (gb + u) * nf + ti] += _dot(U, ti, zs, u, nb)  # (theta_i, tau_i)
    # the gradient sum (Gbar - gbar); then -Gbar Gbar' over all free parameters and
    # + gbar gbar' over the gating ones (gbar = w z)
    for A in range(nf):
        row[o_grad + A] += _sum(U, A, nb)
    for i in range(k):
        bi = blk[i]
        if bi >= 0:
            for u in range(p):
                row[o_grad + bi + u] -= _dot(w, i, zs, u, nb)
    for A in range(nf):
        base = o_h + A * nf
        C = A
        while C + 4 <= nf:
            s0, s1, s2, s3 = _dot4(U, A, U, C, nb)
            row[base + C] -= s0
            row[base + C + 1] -= s1
            row[base + C + 2] -= s2
            row[base + C + 3] -= s3
            C += 4
        while C < nf:
            row[base + C] -= _dot(U, A, U, C, nb)
            C += 1
    for i in range(k):
        bi = blk[i]
        if bi < 0:
            continue
        for m in range(i, k):
            bm = blk[m]
            if bm < 0:
                continue
            for j in range(nb):
                pt[_T1, j] = w[i, j] * w[m, j]
            _acc_zz(nb, zs, pt, _T1, rz, row, o_h + bi * nf + bm, nf, m != i)


@njit(**_EXACT)
def _chunk(c, X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, row, out):
    """Accumulate chunk ``c`` into its row of partial sums (see the section comment)."""
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    blk = _gating_blocks(k, p, ref)
    o_xtx, o_xty, o_syy, o_h, o_grad, o_ll, _ = _layout(mode, k, d)
    zs, pt, s, eta, e, lj, w, r, act, cnt, rz, U = _work(k, d, mode)
    lo = c * CHUNK_BLOCKS * BLOCK
    hi = min(n, lo + CHUNK_BLOCKS * BLOCK)
    normalise = mode >= _MODE_GRAD
    lp = np.empty((1, BLOCK))
    for n0 in range(lo, hi, BLOCK):
        nb = min(BLOCK, hi - n0)
        _block_load_select(X, y, n0, nb, beta0, beta1, K, zs, pt, s, eta, act, cnt)
        _block_estep(nb, a, b, logv, invv, zs, pt, eta, act, e, lj, w, r, lp[0], normalise)
        row[o_ll] += _sum(lp, 0, nb)
        if mode == _MODE_POINTS:
            for j in range(nb):
                out[n0 + j] = lp[0, j]
        elif mode == _MODE_GRAD or mode == _MODE_EM:
            _acc_grad(nb, zs, pt, w, r, e, invv, blk, rz, row, o_grad, o_xtx, o_xty, o_syy,
                      mode == _MODE_EM)  # fmt: skip
            if mode == _MODE_EM:
                _acc_gating_hess(nb, zs, pt, w, blk, rz, row, o_h)
        elif mode == _MODE_HESS:
            _acc_obs_hess(nb, zs, pt, w, r, e, invv, blk, rz, U, row, o_grad, o_h)


@njit(**_EXACT)
def _chunks_serial(X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts, out):
    for c in range(parts.shape[0]):
        _chunk(c, X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts[c], out)


@njit(parallel=True, **_EXACT)
def _chunks_parallel(X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts, out):
    for c in prange(parts.shape[0]):
        _chunk(c, X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts[c], out)


@njit(**_EXACT)
def _run(X, y, beta0, beta1, a, b, v, K, ref, mode, out, parallel):
    """All chunks of one pass; returns the partial sums added in chunk order."""
    n = X.shape[0]
    k, d = beta1.shape
    size = _layout(mode, k, d)[6]
    n_chunks = max(1, -(-n // (CHUNK_BLOCKS * BLOCK)))
    parts = np.zeros((n_chunks, size))
    logv = np.log(v)
    invv = 1.0 / v
    if parallel and n_chunks > 1:
        _chunks_parallel(X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts, out)
    else:
        _chunks_serial(X, y, beta0, beta1, a, b, logv, invv, K, ref, mode, parts, out)
    total = np.zeros(size)
    for c in range(n_chunks):
        for u in range(size):
            total[u] += parts[c, u]
    return total


@njit(**_EXACT)
def _upper_to_full(src, off, m, H):
    """H (m, m) from the upper triangle stored row-major at src[off:]."""
    for u in range(m):
        for q in range(u, m):
            H[u, q] = src[off + u * m + q]
            H[q, u] = H[u, q]


@njit(**_EXACT)
def log_density_points(X, y, beta0, beta1, a, b, v, K, out, parallel=False):
    """Fill ``out`` (n,) with log p(y_n | x_n)."""
    _run(X, y, beta0, beta1, a, b, v, K, 0, _MODE_POINTS, out, parallel)


@njit(**_EXACT)
def loglik(X, y, beta0, beta1, a, b, v, K, parallel=False):
    """Observed log-likelihood sum_n log p(y_n | x_n) (selection recomputed)."""
    return _run(X, y, beta0, beta1, a, b, v, K, 0, _MODE_LL, np.empty(0), parallel)[0]


@njit(**_EXACT)
def em_pass(X, y, beta0, beta1, a, b, v, K, ref, XtX, Xty, sr, syy, g, H, grad, parallel=False):
    """One fused pass: E-step and the statistics of both M-steps, responsibilities not stored.

    At the current parameters computes, per point, the responsibilities (top-K selection,
    log-sum-exp over the active set) and accumulates: the expert sufficient statistics
    (see :func:`expert_stats`), the gradient ``g`` and Hessian ``H`` of the gating Q with the
    active sets held (see :func:`gating_grad_hess`), and ``grad``, the gradient of the observed
    log-likelihood in all free parameters (see :func:`obs_grad`). All outputs are overwritten.
    Returns the observed log-likelihood. ``parallel=True`` runs the chunks in a numba
    ``prange`` (same result to the bit).
    """
    k, d = beta1.shape
    p = d + 1
    ng = (k - 1) * p
    nf = ng + k * p + k
    tot = _run(X, y, beta0, beta1, a, b, v, K, ref, _MODE_EM, np.empty(0), parallel)
    o_xtx, o_xty, o_syy, o_h, o_grad, o_ll, _ = _layout(_MODE_EM, k, d)
    for i in range(k):
        for u in range(p):
            for q in range(u, p):
                XtX[i, u, q] = tot[o_xtx + (i * p + u) * p + q]
                XtX[i, q, u] = XtX[i, u, q]
            Xty[i, u] = tot[o_xty + i * p + u]
        sr[i] = XtX[i, d, d]  # sum_n r_ni, the (1, 1) entry of XtX
        syy[i] = tot[o_syy + i]
    _upper_to_full(tot, o_h, ng, H)
    for u in range(nf):
        grad[u] = tot[o_grad + u]
    for u in range(ng):
        g[u] = grad[u]  # dQ/dbeta = the gating part of the observed gradient (Fisher)
    return tot[o_ll]


@njit(**_EXACT)
def obs_grad(X, y, beta0, beta1, a, b, v, K, ref, grad, parallel=False):
    """Gradient of the observed log-likelihood in the free parameters, active sets held.

    By Fisher's identity: gating block j: sum_n (r_nj - w_nj) z_n; expert block i:
    sum_n r_ni e_ni / v_i z_n with e = y - a_i.x - b_i; log-variance i:
    sum_n r_ni (e_ni^2 / v_i - 1) / 2. ``grad`` (n_free,) is overwritten. Returns log-lik.
    """
    k, d = beta1.shape
    tot = _run(X, y, beta0, beta1, a, b, v, K, ref, _MODE_GRAD, np.empty(0), parallel)
    for u in range(grad.shape[0]):
        grad[u] = tot[u]
    return tot[_layout(_MODE_GRAD, k, d)[5]]


@njit(**_EXACT)
def obs_hess(X, y, beta0, beta1, a, b, v, K, ref, grad, H, parallel=False):
    """Gradient and exact Hessian of the observed log-likelihood, every active set held.

    Per point l = LSE_i(lj_i) - LSE_i(eta_i) over the active set, with eta_i the gating logit
    and lj_i = eta_i + log N(y; a_i.x + b_i, v_i). Each lj_i depends only on its own blocks
    (gating theta_i, expert phi_i, tau_i = log v_i), with gradient
    G_i = (z, (e_i / v_i) z, h_i), h_i = (e_i^2 / v_i - 1) / 2, and second derivatives
    d2/dphi2 = -z z' / v_i, d2/dphi dtau = -(e_i / v_i) z, d2/dtau2 = -e_i^2 / (2 v_i). So

        Hess l = sum_i r_i (Hess lj_i + G_i G_i') - Gbar Gbar' - sum_i w_i g_i g_i' + gbar gbar'

    with Gbar = sum_i r_i G_i and gbar = sum_i w_i g_i, g_i = (z, 0, 0). Fills ``grad``
    (n_free,) = sum_n (Gbar - gbar) and ``H`` (n_free, n_free) in the order of
    :func:`obs_grad` (both overwritten) and returns the log-likelihood.
    """
    k, d = beta1.shape
    nf = grad.shape[0]
    tot = _run(X, y, beta0, beta1, a, b, v, K, ref, _MODE_HESS, np.empty(0), parallel)
    o_h = _layout(_MODE_HESS, k, d)[3]
    _upper_to_full(tot, o_h, nf, H)
    # the gradient from the same rows: sum Gbar - sum gbar, i.e. Fisher's identity again
    for u in range(nf):
        grad[u] = tot[u]
    return tot[_layout(_MODE_HESS, k, d)[5]]
