"""Named fitting protocols (spec section 2): keyword arguments of :class:`TopKMoEEM`."""

from __future__ import annotations

__all__ = ["PROTOCOLS", "protocol_options"]

PROTOCOLS = ("papers", "strict")
#: data-driven starts of the strict protocol's global check (chosen by measurement: see
#: docs/estimation.md)
STRICT_DATA_STARTS = 2


def protocol_options(name: str, n: int, *, over_specified: bool = True) -> dict:
    """Keyword arguments of :class:`~simstudy.estimation.TopKMoEEM` for a named protocol.

    Parameters
    ----------
    name : {"papers", "strict"}
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
