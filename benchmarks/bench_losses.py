"""Accuracy and timing figures of the losses.

    python -m benchmarks --only losses      (or: python -m benchmarks.bench_losses)

Prints (1) the largest deviation of h^2 and TV from adaptive quadrature (tests/naive_losses.py)
over many x and random fits on designs T and S, and (2) the time per call of compute_metrics and
of its parts, with ratios against the naive references measured in the same process.
"""

from __future__ import annotations

import time

import numpy as np

from simstudy.losses import compute_metrics, density_distances_at, input_sample, voronoi_losses
from simstudy.model import get_design
from tests.naive_losses import naive_expected, naive_h2_tv_at, naive_losses, random_fit


def per_call(fn, repeat, clock=time.perf_counter):
    """Median seconds per call over ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times))


def accuracy(n_fits=4, n_x=6):
    print("accuracy per x against quad (defaults: 12 GL nodes, panels of 2 local sd)")
    for name in ("T", "S"):
        D = get_design(name)
        rng = np.random.default_rng(0)
        worst = {"h2_abs": 0.0, "h2_rel": 0.0, "tv_abs": 0.0}
        for owners in (list(range(D.k)), [*range(D.k), 0]):
            for scale in (0.003, 0.03, 0.3):
                for _ in range(n_fits):
                    fitted = random_fit(rng, D.params, owners, scale=scale)
                    X = D.inputs.sample(n_x, rng)
                    h, tv = density_distances_at(fitted, D.params, X)
                    for x, hx, tvx in zip(X, h, tv, strict=True):
                        h2_ref, tv_ref = naive_h2_tv_at(fitted, D.params, list(x))
                        err = abs(hx**2 - h2_ref)
                        worst["h2_abs"] = max(worst["h2_abs"], err)
                        worst["h2_rel"] = max(worst["h2_rel"], err / max(h2_ref, 1e-300))
                        worst["tv_abs"] = max(worst["tv_abs"], abs(tvx - tv_ref))
        n = 2 * 3 * n_fits * n_x
        figures = ", ".join(f"max {k} {v:.1e}" for k, v in worst.items())
        print(f"  design {name} ({n} x): {figures}")


def timing(m_naive=16):
    print("time per call (median); ratios against the naive references in this process")
    for name, owners in (("T", [0, 1, 2]), ("T", [0, 1, 2, 0]), ("S", [0, 1]), ("S", [0, 1, 0])):
        D = get_design(name)
        fitted = random_fit(np.random.default_rng(1), D.params, owners, scale=0.05)
        t_all = per_call(lambda: compute_metrics(fitted, D.params, D.inputs), 30)  # noqa: B023
        # CPU time of this process: less inflated than wall time on a shared, loaded machine
        t_cpu = per_call(
            lambda: compute_metrics(fitted, D.params, D.inputs),  # noqa: B023
            30,
            time.process_time,
        )
        t_vor = per_call(lambda: voronoi_losses(fitted, D.params), 200)  # noqa: B023
        t_vor_naive = per_call(lambda: naive_losses(fitted, D.params), 200)  # noqa: B023
        X = input_sample(D.inputs, m_naive)
        t_dist = per_call(lambda: density_distances_at(fitted, D.params, X), 30)  # noqa: B023
        t_naive = per_call(lambda: naive_expected(fitted, D.params, X), 1)  # noqa: B023
        print(
            f"  {name} k={len(owners)}: compute_metrics (m=256) {1e3 * t_all:.2f} ms wall, "
            f"{1e3 * t_cpu:.2f} ms CPU; "
            f"Voronoi part {1e6 * t_vor:.0f} us (naive / library {t_vor_naive / t_vor:.1f}); "
            f"distances at m={m_naive}: naive quad / library {t_naive / t_dist:.0f}"
        )


def run(quick: bool = False) -> str:
    """Run both parts and return a markdown report (the printed lines in a code block)."""
    import contextlib
    import io
    import os

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        accuracy(n_fits=2 if quick else 4)
        timing(m_naive=8 if quick else 16)
    head = "# Losses: accuracy and speed\n\nCommand: `python -m benchmarks --only losses`.\n\n"
    return head + "```\n" + buf.getvalue() + "```\n"


if __name__ == "__main__":
    print(run())
