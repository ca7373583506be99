"""Slow, obviously-correct references for the losses (plain Python loops, scipy.integrate.quad).

Nothing here is vectorised or clever: each formula of spec section 3 is written as it reads.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq

RBAR = {1: 1, 2: 4, 3: 6}


def atom(params, i):
    """theta_i = (beta1_i, a_i, b_i, v_i) as a flat list."""
    return [*params.beta1[i], *params.a[i], params.b[i], params.v[i]]


def dist(u, w):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(u, w, strict=True)))


def naive_cells(fitted, truth):
    """Cell (0-based true index) of each fitted atom; ties to the lowest index (strict <)."""
    labels = []
    for i in range(fitted.k):
        best, best_d = 0, dist(atom(fitted, i), atom(truth, 0))
        for j in range(1, truth.k):
            dj = dist(atom(fitted, i), atom(truth, j))
            if dj < best_d:
                best, best_d = j, dj
        labels.append(best)
    return labels


def deltas(fitted, truth, i, j):
    """(|Dbeta1|, |Da|, |Db|, |Dv|) of fitted atom i against true atom j."""
    return (
        dist(fitted.beta1[i], truth.beta1[j]),
        dist(fitted.a[i], truth.a[j]),
        abs(fitted.b[i] - truth.b[j]),
        abs(fitted.v[i] - truth.v[j]),
    )


def naive_exponent(p, m):
    """s of the per-parameter error: rbar(m) for beta1 (p=0) and b (p=2), rbar(m)/2 for a and v."""
    if m == 1:
        return 1.0
    if m not in RBAR:
        return None
    return float(RBAR[m]) if p in (0, 2) else RBAR[m] / 2


def naive_losses(fitted, truth):
    """Dict with 'kind', 'value' (max over K-subsets, literally), per-cell lists.

    'errs' are the weighted power means e_j^(p) of spec section 3 (p = beta1, a, b, v),
    'heavy' the heaviest atom's |Delta|, 'umax' the unweighted max, 'wmin' the lightest weight.
    A dense fit (K-bar = k) of a sparse truth (K < k*) makes every cell-based value NaN.
    """
    labels = naive_cells(fitted, truth)
    kind = "D1" if fitted.k == truth.k else "D2"
    terms, masses, sizes, errs, heavy, umax, wmin = [], [], [], [], [], [], []
    for j in range(truth.k):
        cell = [i for i in range(fitted.k) if labels[i] == j]
        sizes.append(len(cell))
        masses.append(abs(sum(math.exp(fitted.beta0[i]) for i in cell) - math.exp(truth.beta0[j])))
        if not cell:
            terms.append(math.nan)
            for lst in (errs, heavy, umax):
                lst.append([math.nan] * 4)
            wmin.append(math.nan)
            continue
        wts = {i: math.exp(fitted.beta0[i]) for i in cell}
        heaviest = cell[0]
        for i in cell:
            if wts[i] > wts[heaviest]:
                heaviest = i
        wmin.append(min(wts.values()))
        heavy.append(list(deltas(fitted, truth, heaviest, j)))
        umax.append([max(deltas(fitted, truth, i, j)[p] for i in cell) for p in range(4)])
        row = []
        for p in range(4):
            s = naive_exponent(p, len(cell))
            if s is None:
                row.append(math.nan)
                continue
            num = sum(wts[i] * deltas(fitted, truth, i, j)[p] ** s for i in cell)
            row.append((num / sum(wts.values())) ** (1 / s))
        errs.append(row)
        if kind == "D1" or len(cell) == 1:
            e1 = 0.0
            for i in cell:
                db1, da, db, dv = deltas(fitted, truth, i, j)
                e1 += math.exp(fitted.beta0[i]) * (db1 + da + db + dv)
            terms.append(e1)
        elif len(cell) in RBAR:
            r = RBAR[len(cell)]
            er = 0.0
            for i in cell:
                db1, da, db, dv = deltas(fitted, truth, i, j)
                er += math.exp(fitted.beta0[i]) * (db1**r + da ** (r / 2) + db**r + dv ** (r / 2))
            terms.append(er)
        else:
            terms.append(math.nan)
    best = -math.inf
    for subset in itertools.combinations(range(truth.k), truth.K):
        total = sum(terms[j] + masses[j] for j in subset)
        if math.isnan(total):
            best = math.nan
            break
        best = max(best, total)
    if fitted.K == fitted.k and truth.K < truth.k:  # dense fit of a sparse truth
        best = math.nan
        masses = [math.nan] * truth.k
        errs = [[math.nan] * 4 for _ in range(truth.k)]
        heavy = [[math.nan] * 4 for _ in range(truth.k)]
        umax = [[math.nan] * 4 for _ in range(truth.k)]
        wmin = [math.nan] * truth.k
    return {
        "kind": kind,
        "value": best,
        "labels": labels,
        "sizes": sizes,
        "masses": masses,
        "errs": errs,
        "heavy": heavy,
        "umax": umax,
        "wmin": wmin,
        "max_abs_beta1": max(math.sqrt(sum(c * c for c in fitted.beta1[i]))
                             for i in range(fitted.k)),
    }


def naive_weights(params, x):
    """Gating weights at one x: top-K by beta1.x (ties to the lower index), softmax inside."""
    s = [sum(params.beta1[i][c] * x[c] for c in range(params.d)) for i in range(params.k)]
    order = sorted(range(params.k), key=lambda i: (-s[i], i))
    chosen = order[: params.K]
    den = sum(math.exp(s[i] + params.beta0[i]) for i in chosen)
    return [math.exp(s[i] + params.beta0[i]) / den if i in chosen else 0.0 for i in range(params.k)]


def naive_components(params, x):
    """(weight, mean, sd) of each expert at x."""
    w = naive_weights(params, x)
    out = []
    for i in range(params.k):
        mean = sum(params.a[i][c] * x[c] for c in range(params.d)) + params.b[i]
        out.append((w[i], mean, math.sqrt(params.v[i])))
    return out


def naive_pdf(comps, y):
    total = 0.0
    for w, mean, sd in comps:
        if w > 0:
            total += w * math.exp(-0.5 * ((y - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return total


def naive_crossings(g, lo, hi, n_grid=20001):
    """Sign changes of g on a fine uniform grid, each refined by brentq."""
    ys = [lo + (hi - lo) * s / (n_grid - 1) for s in range(n_grid)]
    vals = [g(y) for y in ys]
    roots = []
    for s in range(n_grid - 1):
        if vals[s] * vals[s + 1] < 0:
            roots.append(brentq(g, ys[s], ys[s + 1], xtol=1e-14, rtol=1e-15))
    return roots


def naive_h2_tv_at(fitted, truth, x, epsabs=1e-13):
    """(h^2, TV) at one x by adaptive quadrature over every component mean +- 12 sd.

    |p - q| has kinks where p = q; quad is told about them (found on a fine grid), since
    without them it loses about 1e-8.
    """
    cp, cq = naive_components(fitted, x), naive_components(truth, x)
    comps = [c for c in cp + cq if c[0] > 0]
    lo = min(mean - 12 * sd for _, mean, sd in comps)
    hi = max(mean + 12 * sd for _, mean, sd in comps)
    means = [mean for _, mean, _ in comps]

    def hell(y):
        return (math.sqrt(naive_pdf(cp, y)) - math.sqrt(naive_pdf(cq, y))) ** 2

    def diff(y):
        return naive_pdf(cp, y) - naive_pdf(cq, y)

    kw = {"limit": 1000, "epsabs": epsabs, "epsrel": 1e-12}
    h2 = 0.5 * quad(hell, lo, hi, points=sorted(set(means)), **kw)[0]
    kinks = naive_crossings(diff, lo, hi)
    tv = 0.5 * quad(lambda y: abs(diff(y)), lo, hi, points=sorted(set(means + kinks)), **kw)[0]
    return h2, tv


def naive_expected(fitted, truth, X):
    """(mean of h(x), mean of TV(x)) over the rows of X."""
    hs, tvs = [], []
    for x in X:
        h2, tv = naive_h2_tv_at(fitted, truth, list(x))
        hs.append(math.sqrt(max(h2, 0.0)))
        tvs.append(tv)
    return sum(hs) / len(hs), sum(tvs) / len(tvs)


# -- random test inputs ----------------------------------------------------------------------


def random_truth(rng, k, d, K, ref=None):
    """Random true parameters with well-separated atoms; reference gating at (0, 0)."""
    from simstudy.model import MoEParams

    ref = int(rng.integers(k)) if ref is None else ref
    beta0 = rng.normal(0.0, 0.7, k)
    beta1 = rng.normal(0.0, 3.0, (k, d))
    beta0[ref] = 0.0
    beta1[ref] = 0.0
    return MoEParams(
        beta0=beta0,
        beta1=beta1,
        a=rng.normal(0.0, 2.0, (k, d)),
        b=rng.normal(0.0, 3.0, k),
        v=rng.uniform(0.1, 0.6, k),
        K=K,
        ref=ref,
    )


def random_fit(rng, truth, owners, scale=0.1, ref_atom=None):
    """A fit whose atom i is a noisy copy of true atom owners[i] (mass split among copies).

    The fitted reference is ``ref_atom`` (default: the first atom owned by the true reference),
    with gating (0, 0).
    """
    from simstudy.model import MoEParams

    owners = list(owners)
    k = len(owners)
    copies = [owners.count(j) for j in owners]
    beta0 = np.array([truth.beta0[j] - np.log(c) for j, c in zip(owners, copies, strict=True)])
    beta0 = beta0 + rng.normal(0.0, scale, k)
    beta1 = truth.beta1[owners] + rng.normal(0.0, scale, (k, truth.d))
    if ref_atom is None:
        ref_atom = owners.index(truth.ref) if truth.ref in owners else 0
    beta0[ref_atom] = 0.0
    beta1[ref_atom] = 0.0
    return MoEParams(
        beta0=beta0,
        beta1=beta1,
        a=truth.a[owners] + rng.normal(0.0, scale, (k, truth.d)),
        b=truth.b[owners] + rng.normal(0.0, scale, k),
        v=truth.v[owners] * np.exp(rng.normal(0.0, scale, k)),
        K=min(truth.K + k - truth.k, k),
        ref=ref_atom,
    )
