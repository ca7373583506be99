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
from simstudy.model import MoEParams, sample

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
    task = spec.tasks()[0]
    X, y = generate(task)
    X2, y2 = sample(spec.design.params, task.n, spec.design.inputs,
                    np.random.default_rng(task.data_seed()))
    assert X.shape == (200, 1) and np.array_equal(X, X2) and np.array_equal(y, y2)


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
    # common random numbers: both protocols of the exact fit start from the same data, so
    # their fits differ only through the fit seeds and settings
    assert exact.groupby("rep")["loglik"].nunique().max() >= 1


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
