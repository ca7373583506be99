"""Named fitting protocols (spec section 2): keyword arguments of :class:`TopKMoEEM`.

Two base protocols, "papers" and "strict", and two composed ones that cross their factors (the
2 x 2 factorial of the reports, :mod:`simstudy.reports.factorial`). A protocol is a start
(where the near-truth start lies: :data:`START_KEYS`) and a stopping rule (every other setting:
tolerances, iteration cap, acceleration, number of starts). A composed protocol takes the start
of one base protocol and everything else from the other, so changes to either flow into it:

* ``"shrinking_strict"``: the papers' start (noise shrinking with n) with the strict protocol's
  stopping rule;
* ``"fixed_tol"``: the strict protocol's start (fixed noise) with the papers' stopping rule
  (tol 1e-6, at most 2000 iterations, best of 5 starts for over-specified fits).
"""

from __future__ import annotations

__all__ = ["PROTOCOLS", "BASE_PROTOCOLS", "COMPOSED", "START_KEYS", "STRICT_DATA_STARTS",
           "protocol_options"]

#: data-driven starts of the strict protocol's global check (chosen by measurement: see
#: docs/estimation.md)
STRICT_DATA_STARTS = 2
BASE_PROTOCOLS = ("papers", "strict")
#: composed protocol -> (base protocol whose start it takes, base protocol giving the rest)
COMPOSED = {"shrinking_strict": ("papers", "strict"), "fixed_tol": ("strict", "papers")}
PROTOCOLS = BASE_PROTOCOLS + tuple(COMPOSED)
#: the settings that make a protocol's start; every other setting belongs to its stopping rule
#: (extend this when a base protocol gains a start setting)
START_KEYS = ("init", "init_noise", "noise_schedule")


def protocol_options(name: str, n: int, *, over_specified: bool = True) -> dict:
    """Keyword arguments of :class:`~simstudy.estimation.TopKMoEEM` for a named protocol.

    Parameters
    ----------
    name : {"papers", "strict", "shrinking_strict", "fixed_tol"}
        ``"papers"``: the authors' protocol: near-truth start with the n-dependent noise
        schedule, tol = 1e-6 relative, max_iter = 2000, best of 5 starts for over-specified
        fits. ``"strict"``: near-truth start with fixed noise 0.1; EM to a relative change of
        1e-4, a smoothed-selection continuation where boundaries move, then trust-region
        Newton with boundary moves (``acceleration="newton"``) until a certificate holds on
        the piecewise-smooth likelihood (gradients <= 1e-6 per observation, exact scans
        across the region boundaries; see :mod:`simstudy.estimation.certificate`); global
        checks from the truth and ``STRICT_DATA_STARTS`` data-driven starts, keeping the best
        admissible fit; at most 5000 iterations per start.
    n : int
        Sample size (the papers' noise shrinks with n; kept in the signature for both).
    over_specified : bool, default=True
        Only for "papers": best of 5 starts when True (the papers' rule for over-specified
        fits), a single start for exact fits.

    Returns
    -------
    dict
        ``tol, grad_tol, max_iter, acceleration, init, init_noise, noise_schedule, n_init``,
        and for "strict" also ``truth_start, n_data_starts``.
    """
    if name in COMPOSED:
        start_from, rest_from = COMPOSED[name]
        out = protocol_options(rest_from, n, over_specified=over_specified)
        start = protocol_options(start_from, n, over_specified=over_specified)
        out.update({key: start[key] for key in START_KEYS if key in start})
        return out
    if name not in PROTOCOLS:
        raise ValueError(f"name: unknown protocol {name!r}; allowed: {list(PROTOCOLS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: the sample size must be an integer >= 1, got {n!r}")
    if name == "papers":
        return {
            "tol": 1e-6,
            "grad_tol": None,
            "max_iter": 2000,
            "acceleration": None,
            "init": "near_truth",
            "init_noise": 0.0,
            "noise_schedule": "papers",
            "n_init": 5 if over_specified else 1,
        }
    return {
        "tol": 1e-10,
        "grad_tol": 1e-6,
        "max_iter": 5000,
        "acceleration": "newton",
        "init": "near_truth",
        "init_noise": 0.1,
        "noise_schedule": None,
        "n_init": 1,
        "truth_start": True,
        "n_data_starts": STRICT_DATA_STARTS,
    }
