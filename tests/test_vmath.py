"""The vectorisable exp/log of simstudy.model.kernels against libm (<= 2 ulp, special values),
jitted and as plain Python (the fallback that runs under NUMBA_DISABLE_JIT=1)."""

import math

import numpy as np
import pytest

from simstudy.model import kernels as vmath


def _ulps(got, want):
    want = np.asarray(want, dtype=np.float64)
    err = np.abs(got - want) / np.spacing(np.abs(want))
    return np.where(got == want, 0.0, err)


def _py(f):
    return getattr(f, "py_func", f)


EXP_ARGS = np.concatenate([
    np.random.default_rng(0).uniform(-745.0, 709.7, 20000),
    np.random.default_rng(1).uniform(-40.0, 0.0, 20000),
    np.random.default_rng(2).uniform(-1e-3, 1e-3, 2000),
    [0.0, -0.0, 1e-300, -1e-300, 709.78, -708.4, -744.4, -745.13, 0.5 * math.log(2.0)],
])  # fmt: skip
LOG_ARGS = np.concatenate([
    np.exp(np.random.default_rng(3).uniform(-744.0, 709.0, 20000)),
    np.random.default_rng(4).uniform(1.0, 8.0, 20000),
    1.0 + np.random.default_rng(5).uniform(-1e-6, 1e-6, 2000),
    [1.0, 2.0, math.sqrt(2.0), np.nextafter(math.sqrt(2.0), 2.0), 5e-324, 1e-310,
     2.2250738585072014e-308, 1.7976931348623157e308],
])  # fmt: skip


NONPOS = EXP_ARGS[(EXP_ARGS <= 0.0) & (EXP_ARGS >= -708.0)]
NORMAL = LOG_ARGS[LOG_ARGS >= 2.2250738585072014e-308]


@pytest.mark.parametrize("fn,ref,args", [(vmath.vexp, np.exp, EXP_ARGS),
                                         (vmath.vlog, np.log, LOG_ARGS),
                                         (vmath.vexp_nonpos, np.exp, NONPOS),
                                         (vmath.vlog_pos, np.log, NORMAL)],
                         ids=["exp", "log", "exp_nonpos", "log_pos"])  # fmt: skip
def test_within_two_ulp_of_libm(fn, ref, args):
    out = args.copy()
    fn(out, out.size)
    assert np.all(np.isfinite(out) | (args > 709.78))
    # libm itself is within ~0.5 ulp, so <= 2 ulp from it is <= 2.5 ulp from the exact value
    assert _ulps(out, ref(args)).max() <= 2.0


@pytest.mark.parametrize("fn,x,want", [
    (vmath.vexp, [-np.inf, np.inf, np.nan, -1000.0, 710.0, 0.0, -745.2],
     [0.0, np.inf, np.nan, 0.0, np.inf, 1.0, 0.0]),
    (vmath.vlog, [0.0, -0.0, -1.0, np.inf, np.nan, -np.inf, 1.0],
     [-np.inf, -np.inf, np.nan, np.inf, np.nan, np.nan, 0.0]),
], ids=["exp", "log"])  # fmt: skip
def test_special_values(fn, x, want):
    out = np.array(x)
    with np.errstate(over="ignore"):  # exp(710) overflows (numpy scalars warn without the JIT)
        fn(out, out.size)
    np.testing.assert_array_equal(out, np.array(want))


def test_lean_variants_flush_underflow_clamp_positive_and_pass_nan():
    x = np.array([-708.5, -1000.0, -np.inf, np.nan, 0.0, 3.0])
    vmath.vexp_nonpos(x, x.size)
    np.testing.assert_array_equal(x, [0.0, 0.0, 0.0, np.nan, 1.0, 1.0])
    x = np.array([np.nan, 1.0, 0.5])
    vmath.vlog_pos(x, x.size)
    np.testing.assert_array_equal(x[:2], [np.nan, 0.0])
    assert x[2] == pytest.approx(np.log(0.5), rel=4e-16)


def test_only_the_first_nb_entries_are_written():
    for fn in (vmath.vexp, vmath.vlog):
        x = np.linspace(0.5, 3.0, 9)
        want = x.copy()
        fn(x, 4)
        np.testing.assert_array_equal(x[4:], want[4:])
        assert np.all(x[:4] != want[:4])


def test_pure_python_fallback_gives_the_same_bits():
    """The struct-based bit casts and the plain-Python loop agree with the compiled code
    (FMA contraction may move the last bit, so equality is to 1 ulp)."""
    for v in (0.0, -0.0, 1.0, -2.5, 5e-324, np.inf, 1.7976931348623157e308):
        assert vmath.bits_f64(vmath.f64_bits(v)) == v or np.isnan(v)
        assert vmath.f64_bits(v) == int(np.float64(v).view(np.int64))
    for fn, args in ((vmath.vexp, EXP_ARGS[::97]), (vmath.vlog, LOG_ARGS[::97]),
                     (vmath.vexp_nonpos, NONPOS[::97]), (vmath.vlog_pos, NORMAL[::97])):
        jit, py = args.copy(), args.copy()
        fn(jit, jit.size)
        _py(fn)(py, py.size)
        assert _ulps(py, jit).max() <= 1.0
