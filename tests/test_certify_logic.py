"""`certify`'s decisions on a scripted likelihood: each refusal on its own, on its boundary,
and what the certificate records (the scan interval, the tolerance, counts, the improvement
it hands the optimiser). The design-level tests (tests/test_certificates.py) reach these
branches only together; `make mutate MODULE=estimation/certificate.py` showed that mutants of
each single comparison survived them."""

import numpy as np
import pytest

from simstudy.estimation.certificate import (
    Certificate,
    CertificateSettings,
    _interval,
    _verify,
    certify,
)
from simstudy.estimation.scan import LineScan

N = 1000
GT = 1e-6  # the default grad_tol
SLOPES, SMOOTH = [0, 1], [2, 3]
XMAX = 2.0  # score scale per unit slope step


class ScriptedLik:
    """Four parameters: two gating slopes (0, 1) and two smooth ones (2, 3) in the box
    [-10, 10]; scores move by XMAX per unit slope step. ``scans`` maps a direction's slope
    coordinate (or -1 for the gradient direction) to the LineScan it returns (default: smooth);
    ``loglik`` is a function of theta; ``ties`` the pairs reported tied."""

    def __init__(self, scans=None, loglik=None, ties=(), lower=-10.0, upper=10.0):
        self.n, self.m = N, 4
        self.slopes, self.smooth = list(SLOPES), list(SMOOTH)
        self.lower = np.full(4, lower)
        self.upper = np.full(4, upper)
        self.scans = scans or {}
        self._loglik = loglik or (lambda th: 0.0)
        self.ties = set(ties)
        self.calls = []  # (key, t_lo, t_hi, tol) per scan
        self.gradient_first = False  # set by run(): the first scan is the gradient direction

    def sharpness(self, theta):
        return XMAX * float(np.max(np.abs(theta[SLOPES])))

    def score_scale(self, delta):
        return XMAX * float(np.max(np.abs(delta[SLOPES])))

    def scan(self, theta, delta, t_lo, t_hi, tol):
        nz = np.flatnonzero(delta)
        first = not self.calls and self.gradient_first
        key = -1 if first or nz.size != 1 else int(nz[0])
        self.calls.append((key, t_lo, t_hi, tol))
        return self.scans.get(key, LineScan())

    def loglik(self, theta):
        return self._loglik(theta)

    def clip(self, theta):
        return np.minimum(np.maximum(theta, self.lower), self.upper)

    def is_tie(self, theta, pair):
        return tuple(pair) in self.ties

    def grad_hess(self, theta):
        return 0.0, np.zeros(4), -np.eye(4)


def run(g=(0, 0, 0, 0), theta=(1.0, 0.5, 0.0, 0.0), lik=None, normals=None, pairs=(),
        settings=None, l0=0.0):
    lik = lik or ScriptedLik()
    settings = settings or CertificateSettings()
    theta, g = np.asarray(theta, float), np.asarray(g, float)
    held = [u for u in SLOPES if abs(theta[u]) >= lik.upper[u] and g[u] * theta[u] > 0]
    lik.gradient_first = any(g[u] != 0 for u in SLOPES if u not in held)
    normals = np.zeros((0, 4)) if normals is None else np.asarray(normals, float)
    cert = certify(lik, theta, l0, g * N, normals,
                   list(pairs), settings)
    return cert, lik


def event_scan(gain, cleared=False, t_best=0.01, piece=(0.0, 0.02)):
    return LineScan(t_best=t_best, gain_best=gain, piece=piece, cleared=cleared, smooth=False)


# -- a clean point ---------------------------------------------------------------------------


def test_a_stationary_point_with_smooth_scans_is_certified_and_records_its_settings():
    cert, lik = run()
    assert cert.passed and cert.reason == "certified" and cert.refusal == ""
    assert cert.grad_smooth == 0.0 and cert.grad_slopes == 0.0 and cert.grad_projected == 0.0
    assert np.isnan(cert.min_multiplier)  # no constraint, no multiplier
    assert cert.radius == 0.05 and cert.tol == pytest.approx(1e-9 * N)
    # no gradient direction (the slope gradient is zero): one scan per slope coordinate
    assert cert.n_scans == 2 and cert.n_scans_with_events == 0 and cert.max_gain == 0.0
    assert [c[0] for c in lik.calls] == [0, 1]
    assert cert.n_faces == 0 and cert.ties == () and cert.n_bound == 0


def test_each_scan_covers_the_radius_in_score_units_with_the_tolerance_per_observation():
    settings = CertificateSettings(radius=0.3, tol_per_obs=1e-7)
    cert, lik = run(settings=settings)
    for _, t_lo, t_hi, tol in lik.calls:
        assert t_lo == pytest.approx(-0.3 / XMAX) and t_hi == pytest.approx(0.3 / XMAX)
        assert tol == pytest.approx(1e-7 * N)
    assert cert.radius == 0.3 and cert.tol == pytest.approx(1e-7 * N)


# -- (a) the smooth parameters ---------------------------------------------------------------


@pytest.mark.parametrize("factor, passed", [(0.99, True), (1.01, False)])
def test_the_smooth_parameter_gradient_alone_refuses_beyond_grad_tol(factor, passed):
    cert, _ = run(g=(0, 0, factor * GT, 0))
    assert cert.grad_smooth == pytest.approx(factor * GT)
    assert cert.passed is passed
    if not passed:
        assert cert.refusal.startswith("smooth-parameter gradient")
        assert cert.reason == ""


def test_the_smooth_gradient_is_a_euclidean_norm_over_the_smooth_parameters_only():
    # 0.6 and 0.8 of grad_tol: norm 1.0 x grad_tol (sum would be 1.4, max 0.8)
    cert, _ = run(g=(0, 0, 0.6 * GT, 0.8 * GT), settings=CertificateSettings(grad_tol=0.99 * GT))
    assert cert.grad_smooth == pytest.approx(GT)
    assert not cert.passed and "smooth-parameter gradient" in cert.refusal
    cert, _ = run(g=(0, 0, 0.6 * GT, 0.8 * GT), settings=CertificateSettings(grad_tol=1.01 * GT))
    assert cert.passed


def test_a_smooth_parameter_held_on_the_box_does_not_count_and_certifies_on_bound():
    # coordinate 2 on its lower bound with the gradient pointing out of the box
    cert, _ = run(g=(0, 0, -5 * GT, 0), theta=(1.0, 0.5, -10.0, 0.0))
    assert cert.n_bound == 1 and cert.grad_smooth == 0.0
    assert cert.passed and cert.reason == "certified_on_bound"
    # pointing into the box it is not held, and the gradient refuses
    cert, _ = run(g=(0, 0, 5 * GT, 0), theta=(1.0, 0.5, -10.0, 0.0))
    assert cert.n_bound == 0 and not cert.passed


# -- (b) smooth directional derivatives along the slopes ------------------------------------


@pytest.mark.parametrize("factor, passed", [(0.99, True), (1.01, False)])
def test_a_slope_gradient_on_smooth_scans_refuses_beyond_grad_tol(factor, passed):
    cert, lik = run(g=(factor * GT, 0, 0, 0))
    assert cert.grad_slopes == pytest.approx(factor * GT)
    # the gradient direction comes first, then each slope coordinate
    assert [c[0] for c in lik.calls] == [-1, 0, 1]
    assert cert.n_scans == 3
    assert cert.passed is passed
    if not passed:
        assert cert.refusal.startswith("gradient: smooth directional derivative")


def test_the_gradient_direction_is_normalised_so_its_derivative_is_the_gradient_norm():
    # along the unit gradient the derivative is |g| / n = 1.0 grad_tol (0.6, 0.8)
    g = (0.6 * GT, 0.8 * GT, 0, 0)
    assert not run(g=g, settings=CertificateSettings(grad_tol=0.99 * GT))[0].passed
    cert, _ = run(g=g, settings=CertificateSettings(grad_tol=1.01 * GT))
    assert cert.passed and cert.grad_slopes == pytest.approx(GT)


def test_a_derivative_on_a_single_coordinate_names_that_coordinate():
    # the gradient direction has events (cleared), so the first smooth refusal is slope 0's
    lik = ScriptedLik(scans={-1: event_scan(0.0, cleared=True)})
    cert, _ = run(g=(2 * GT, 0, 0, 0), lik=lik)
    assert cert.refusal.startswith("slope 0: smooth directional derivative")
    assert cert.n_scans_with_events == 1


# -- scans with events ----------------------------------------------------------------------


def test_cleared_scans_certify_and_record_the_largest_gain():
    lik = ScriptedLik(scans={0: event_scan(3e-7, cleared=True), 1: event_scan(5e-7, cleared=True)})
    cert, _ = run(lik=lik)
    assert cert.passed and cert.n_scans_with_events == 2
    assert cert.max_gain == pytest.approx(5e-7)


def test_a_scan_that_cannot_exclude_a_higher_value_refuses():
    lik = ScriptedLik(scans={1: event_scan(0.5e-6, cleared=False)})  # gain below tol = 1e-6
    cert, _ = run(lik=lik)
    assert not cert.passed and cert.improvement is None
    assert cert.refusal == "slope 1: the scan could not exclude a higher value"


def test_a_verified_higher_value_is_handed_over_and_stops_the_scans():
    target = 0.01  # the scan's best step along slope 0

    def loglik(th):
        return 0.5 if abs(th[0] - (1.0 + target)) < 0.02 else 0.0

    lik = ScriptedLik(scans={0: event_scan(0.5, t_best=target, piece=(0.0, target))},
                      loglik=loglik)
    cert, _ = run(lik=lik)
    assert not cert.passed and cert.refusal.startswith("slope 0: a higher value at t = 1.000e-02")
    th, lt = cert.improvement
    assert lt == 0.5 and th[0] == pytest.approx(1.0 + target, abs=1e-3)
    assert [c[0] for c in lik.calls] == [0]  # slope 1 not scanned: the optimiser moves first
    assert cert.n_scans == 1


def test_a_scan_gain_that_a_full_evaluation_does_not_confirm_refuses_without_improvement():
    lik = ScriptedLik(scans={0: event_scan(0.5)})  # loglik is 0 everywhere
    cert, _ = run(lik=lik)
    assert not cert.passed and cert.improvement is None
    assert cert.refusal == "slope 0: the scan could not exclude a higher value"
    assert [c[0] for c in lik.calls] == [0, 1]  # nothing to move to: it scans on


# -- the box ----------------------------------------------------------------------------------


def test_a_slope_held_on_its_upper_bound_is_scanned_inwards_only_and_its_gradient_ignored():
    cert, lik = run(g=(5 * GT, 0, 0, 0), theta=(10.0, 0.5, 0.0, 0.0))
    assert cert.n_bound == 1
    # no gradient direction (the only slope gradient is held); slope 0 scanned on [-r/h, 0]
    assert cert.n_scans == 2 and [c[0] for c in lik.calls] == [0, 1]
    _, t_lo, t_hi, _ = lik.calls[0]
    assert t_lo == pytest.approx(-0.05 / XMAX) and t_hi == 0.0
    assert cert.passed and cert.reason == "certified_on_bound"


def test_a_slope_held_on_its_lower_bound_is_scanned_upwards_only():
    cert, lik = run(g=(-5 * GT, 0, 0, 0), theta=(-10.0, 0.5, 0.0, 0.0))
    _, t_lo, t_hi, _ = lik.calls[0]
    assert t_lo == 0.0 and t_hi == pytest.approx(0.05 / XMAX)
    assert cert.passed and cert.reason == "certified_on_bound"


def test_a_projected_gradient_on_the_bound_refuses():
    # held slope 0, free slope 1 with a gradient: smooth scans would refuse it anyway, so
    # give slope 1 cleared event scans and check the projected-gradient refusal
    lik = ScriptedLik(scans={-1: event_scan(0.0, cleared=True), 1: event_scan(0.0, cleared=True)})
    cert, _ = run(g=(5 * GT, 2 * GT, 0, 0), theta=(10.0, 0.5, 0.0, 0.0), lik=lik)
    assert cert.grad_projected == pytest.approx(2 * GT)
    assert not cert.passed and cert.refusal.startswith("projected gradient")


def test_interval_is_the_radius_cut_by_the_box_and_always_contains_zero():
    lik = ScriptedLik()
    theta = np.array([9.0, 0.0, 0.0, 0.0])
    e0 = np.array([1.0, 0, 0, 0])
    assert _interval(lik, theta, e0, 5.0) == (-5.0, 1.0)
    assert _interval(lik, theta, -e0, 5.0) == (-1.0, 5.0)
    assert _interval(lik, theta, e0, 0.5) == (-0.5, 0.5)
    # two coordinates: the tighter one wins on each side
    d = np.array([1.0, -2.0, 0, 0])
    lo, hi = _interval(lik, np.array([9.0, -9.0, 0, 0]), d, 5.0)
    assert hi == pytest.approx(0.5) and lo == pytest.approx(-5.0)
    # a zero direction leaves the radius as it is
    assert _interval(lik, theta, np.zeros(4), 2.0) == (-2.0, 2.0)
    # a point outside the box (never produced, but clamped): the interval still holds 0
    lo, hi = _interval(lik, np.array([11.0, 0, 0, 0]), e0, 5.0)
    assert lo <= 0.0 <= hi and hi == 0.0


# -- ties -------------------------------------------------------------------------------------

NORMAL = [[1.0, -1.0, 0, 0]]  # the tie of slopes 0 and 1


def test_a_tie_with_a_multiplier_across_it_is_certified_on_tie():
    # g + normal' lambda = 0 with lambda = 3 grad_tol >= 0: the gradient pushes across the tie
    lik = ScriptedLik(scans={k: event_scan(0.0, cleared=True) for k in (-1, 0, 1)}, ties={(0, 1)})
    cert, _ = run(g=(-3 * GT, 3 * GT, 0, 0), theta=(0.5, 0.5, 0, 0), lik=lik, normals=NORMAL,
                  pairs=[(0, 1)])
    assert cert.ties == ((0, 1),) and cert.n_faces == 0
    assert cert.min_multiplier == pytest.approx(3 * GT)
    assert cert.grad_projected == pytest.approx(0.0, abs=1e-15)
    assert cert.passed and cert.reason == "certified_on_tie"


@pytest.mark.parametrize("factor, passed", [(0.99, True), (1.01, False)])
def test_a_tie_multiplier_pointing_into_the_piece_refuses_beyond_grad_tol(factor, passed):
    lik = ScriptedLik(scans={k: event_scan(0.0, cleared=True) for k in (-1, 0, 1)}, ties={(0, 1)})
    cert, _ = run(g=(factor * GT, -factor * GT, 0, 0), theta=(0.5, 0.5, 0, 0), lik=lik,
                  normals=NORMAL, pairs=[(0, 1)])
    assert cert.min_multiplier == pytest.approx(-factor * GT)
    assert cert.passed is passed
    if not passed:
        assert cert.refusal.startswith("tie multiplier")


def test_a_face_that_is_not_a_tie_counts_as_a_face_and_needs_no_multiplier_sign():
    lik = ScriptedLik(scans={k: event_scan(0.0, cleared=True) for k in (-1, 0, 1)})
    cert, _ = run(g=(3 * GT, -3 * GT, 0, 0), lik=lik, normals=NORMAL, pairs=[(0, 1)])
    assert cert.ties == () and cert.n_faces == 1
    # not on a tie or a bound: the projected gradient is not a condition
    assert cert.passed and cert.reason == "certified"


def test_a_projected_gradient_on_a_tie_refuses():
    lik = ScriptedLik(scans={k: event_scan(0.0, cleared=True) for k in (-1, 0, 1)}, ties={(0, 1)})
    # the gradient along (1, 1) is orthogonal to the tie's normal: it stays after projection
    cert, _ = run(g=(2 * GT, 2 * GT, 0, 0), theta=(0.5, 0.5, 0, 0), lik=lik, normals=NORMAL,
                  pairs=[(0, 1)])
    assert cert.grad_projected == pytest.approx(np.sqrt(8) * GT)
    assert not cert.passed and cert.refusal.startswith("projected gradient")


# -- diverging slopes -------------------------------------------------------------------------


def test_diverging_slopes_refuse_before_anything_else_with_nan_diagnostics():
    # sharpness 2 * 6000 > 100 x diverge_score: diverging without a probe
    cert, lik = run(theta=(6000.0, 0.5, 0, 0), lik=ScriptedLik(lower=-1e4, upper=1e4))
    assert not cert.passed and cert.refusal.startswith("diverging slopes")
    assert lik.calls == []  # nothing scanned
    m = cert.to_metrics()
    assert np.isnan(m["cert_grad_smooth"]) and np.isnan(m["cert_grad_projected"])


def test_no_divergence_probe_when_switched_off_or_at_the_threshold():
    lik = ScriptedLik(lower=-1e4, upper=1e4)
    cert, _ = run(theta=(6000.0, 0.5, 0, 0), lik=lik,
                  settings=CertificateSettings(diverge_score=None))
    assert cert.passed
    # sharpness exactly diverge_score (2 x 50 = 100): not probed
    cert, _ = run(theta=(50.0, 0.5, 0, 0), lik=ScriptedLik(lower=-1e4, upper=1e4))
    assert cert.passed
    # just above, with sharpness beyond 100 x a lower threshold: refused
    cert, _ = run(theta=(50.0, 0.5, 0, 0), lik=ScriptedLik(lower=-1e4, upper=1e4),
                  settings=CertificateSettings(diverge_score=0.99))
    assert not cert.passed


# -- verification of a scan's best point, metrics ---------------------------------------------


def test_verify_returns_the_best_confirmed_point_and_none_when_nothing_is_higher():
    lik = ScriptedLik(loglik=lambda th: float(th[0]))  # l rises along slope 0
    theta = np.array([1.0, 0.0, 0.0, 0.0])
    e0 = np.array([1.0, 0, 0, 0])
    sc = event_scan(gain=1.0, t_best=0.2, piece=(0.0, 0.2))
    th, lt = _verify(lik, theta, e0, sc, l0=1.0, tol=1e-3)
    assert lt > 1.0 + 1e-3 and th[0] == lt  # a full evaluation, not the scan's number
    assert th[0] <= 1.2  # nudged into the piece from its end
    # the same with a higher l0: no point above it
    assert _verify(lik, theta, e0, sc, l0=5.0, tol=1e-3) is None
    # non-finite values never count
    lik_nan = ScriptedLik(loglik=lambda th: np.nan)
    assert _verify(lik_nan, theta, e0, sc, l0=-1.0, tol=1e-3) is None


def test_verify_takes_the_highest_nudge_when_none_reaches_half_the_gain():
    # l grows with t inside (0, 0.2] but each nudge gives less than half the scan's gain:
    # all nudges are evaluated and the highest (the end itself) is returned
    lik = ScriptedLik(loglik=lambda th: float(th[0] - 1.0))
    theta = np.array([1.0, 0.0, 0.0, 0.0])
    sc = event_scan(gain=10.0, t_best=0.2, piece=(0.0, 0.2))
    th, lt = _verify(lik, theta, np.array([1.0, 0, 0, 0]), sc, l0=0.0, tol=1e-6)
    assert th[0] == pytest.approx(1.2) and lt == pytest.approx(0.2)


def test_to_metrics_is_flat_floats_with_the_counts():
    cert = Certificate(grad_smooth=1.0, grad_slopes=2.0, grad_projected=3.0, min_multiplier=4.0,
                       ties=((0, 1), (1, 2)), n_faces=5, n_bound=6, radius=0.05, tol=1e-6,
                       n_scans=7, n_scans_with_events=8, max_gain=9.0)
    m = cert.to_metrics()
    assert m == {"cert_grad_smooth": 1.0, "cert_grad_slopes": 2.0, "cert_grad_projected": 3.0,
                 "cert_min_multiplier": 4.0, "cert_ties": 2.0, "cert_faces": 5.0,
                 "cert_bound": 6.0, "cert_radius": 0.05, "cert_tol": 1e-6, "cert_scans": 7.0,
                 "cert_scans_with_events": 8.0, "cert_max_gain": 9.0}
    assert all(type(v) is float for v in m.values())
    fresh = Certificate()
    assert not fresh.passed and fresh.reason == "" and fresh.refusal == ""
    assert fresh.improvement is None and fresh.n_scans == 0 and fresh.max_gain == 0.0
    assert all(np.isnan(getattr(fresh, k)) for k in
               ("grad_smooth", "grad_slopes", "grad_projected", "min_multiplier"))
