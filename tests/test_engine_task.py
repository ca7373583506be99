"""The real task (generate / fit / summarise) with the estimator and the losses, small n."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simstudy.cli import main
from simstudy.engine import load_results, load_spec, run_study
from simstudy.engine.task import fit_options, generate, run_task
from simstudy.model import MoEParams, gating_weights, loglik

# these land from other branches; until then the real-task tests are skipped
estimation = pytest.importorskip("simstudy.estimation")
losses = pytest.importorskip("simstudy.losses")

REAL = Path(__file__).parent / "data" / "engine_real.toml"


@pytest.fixture(scope="module")
def spec():
    return load_spec(REAL)


@pytest.fixture(scope="module")
def stored(spec, tmp_path_factory):
    store = tmp_path_factory.mktemp("real")
    summary = run_study(spec, jobs=1, store_dir=store, progress=False)
    return store, summary, load_results(spec, store_dir=store)


def test_generate_is_the_model_sample(spec):
    """generate() draws the task's data set from the true model, and the data set depends on
    the replication and n only: every fit and protocol of a replication sees the same data
    (common random numbers), other replications other data."""
    tasks = spec.tasks()
    by_rep = {}
    for t in tasks:
        X, y = generate(t)
        assert X.shape == (t.n, 1) and y.shape == (t.n,)
        by_rep.setdefault(t.rep, []).append((X, y))
    assert len(by_rep) == 2 and all(len(v) == 3 for v in by_rep.values())
    for data in by_rep.values():
        for X, y in data[1:]:
            assert np.array_equal(X, data[0][0]) and np.array_equal(y, data[0][1])
    assert not np.array_equal(by_rep[0][0][1], by_rep[1][0][1])
    # a large sample has the conditional moments of the true model: E[y | x] = sum_i w_i mu_i
    # and Var[y | x] = sum_i w_i (v_i + mu_i^2) - E[y | x]^2 (checked within 5 SE)
    X, y = generate(replace(tasks[0], n=20000))
    truth = spec.design.params
    w = gating_weights(truth, X)
    mu = X @ truth.a.T + truth.b
    m = np.sum(w * mu, axis=1)
    var = np.sum(w * (truth.v + mu**2), axis=1) - m**2
    r = y - m
    assert abs(r.mean()) < 5 * r.std() / np.sqrt(r.size)
    q = r**2 - var
    assert abs(q.mean()) < 5 * q.std() / np.sqrt(q.size)
    assert np.all((X >= -1) & (X <= 1)) and abs(X.mean()) < 5 * np.sqrt(1 / 3 / X.size)


def test_fit_options_layering(spec):
    by_label = {(c.label, c.protocol): c for c in spec.conditions()}
    exact = spec.make_task(by_label["exact", "papers"], 0)
    over = spec.make_task(by_label["over", "strict"], 0)
    opts = fit_options(exact)
    base = estimation.protocol_options("papers", 200)
    assert opts["max_iter"] == 25  # the [em] override wins
    assert opts["tol"] == base["tol"] and opts["init"] == "near_truth"
    assert opts["extra_atoms"] == () and opts["true_params"] == spec.design.params
    opts = fit_options(over)
    assert opts["extra_atoms"] == (0,) and opts["init_noise"] == 0.05
    assert opts["acceleration"] == estimation.protocol_options("strict", 200)["acceleration"]


def test_real_run_stores_fits_and_metrics(spec, stored):
    _, summary, df = stored
    assert summary.run == len(spec.tasks()) == 6 and summary.failed == 0
    assert set(df["status"]) <= {"ok", "not_converged", "degenerate"}
    assert (df["n_iter"] <= 25 * 3).all()  # SQUAREM cycles count up to ~3 EM steps
    assert np.isfinite(df["loglik"]).all()
    exact = df[df["label"] == "exact"]
    over = df[df["label"] == "over"]
    assert np.isfinite(exact["D1"]).all() and exact["D2"].isna().all()
    assert np.isfinite(over["D2"]).all() and over["D1"].isna().all()
    assert (over["cell_size_1"] == 2).all() and (over["cell_size_2"] == 1).all()
    assert ((df["hellinger"] > 0) & (df["hellinger"] < 1)).all()
    # the stored parameters give back the stored metrics
    row = over.iloc[0]
    params = MoEParams.from_dict(json.loads(row["params_json"]))
    assert params.k == 4 and params.K == 3
    metrics = losses.compute_metrics(params, spec.design.params, spec.design.inputs)
    assert metrics["D2"] == pytest.approx(row["D2"], rel=1e-12)
    # every stored fit was made on its replication's data set: the stored parameters give
    # the stored log-likelihood on the regenerated data, and both protocols of the exact fit
    # (common random numbers) share that data set
    tasks = {t.key: t for t in spec.tasks()}
    data = {}
    for row in df.itertuples(index=False):
        task = tasks[row.condition_id, row.rep]
        X, y = generate(task)
        fitted = MoEParams.from_dict(json.loads(row.params_json))
        assert loglik(fitted, X, y) == pytest.approx(row.loglik, rel=1e-10)
        data.setdefault((row.label, row.rep), []).append((row.protocol, y))
    for rep in (0, 1):
        (p1, y1), (p2, y2) = data["exact", rep]
        assert {p1, p2} == {"papers", "strict"} and np.array_equal(y1, y2)


def test_replay_reproduces_stored_row(spec, stored, capsys):
    store, _, df = stored
    row = df[df["label"] == "over"].iloc[1]
    code = main(["replay", str(REAL), "--store-dir", str(store), "--condition",
                 row["condition_id"], "--rep", str(row["rep"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "equals stored row: yes" in out and "beta1" in out and "D2" in out


def test_two_workers_give_identical_fits(spec, stored, tmp_path):
    _, _, ref = stored
    run_study(spec, jobs=2, store_dir=tmp_path, progress=False)
    got = load_results(spec, store_dir=tmp_path)
    cols = [c for c in ref.columns if c not in ("seconds", "created")]
    key = ["condition_id", "rep"]
    a = ref[cols].sort_values(key).reset_index(drop=True)
    b = got[cols].sort_values(key).reset_index(drop=True)
    assert a.equals(b)


def test_a_raising_fit_is_an_error_result(spec):
    task = spec.tasks()[0]
    bad = replace(task, fit={**task.fit, "K": 5})
    result = run_task(bad)
    assert result["status"] == "error" and result["message"].startswith("ValueError: K")
    assert np.isnan(result["loglik"]) and result["params_json"] is None
