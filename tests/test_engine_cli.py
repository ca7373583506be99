"""The command line: status, replay, export, list, forwarding, one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from simstudy.cli import main
from simstudy.engine import TIDY_COLUMNS, ResultStore, load_results, load_spec, store_path

DATA = Path(__file__).parent / "data"
SMALL = DATA / "engine_small.toml"
ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--task", "simstudy.engine.fakes:failing_fake_task"]


@pytest.fixture()
def store(tmp_path):
    assert main(["run", str(SMALL), "--jobs", "1", "--no-progress", "--store-dir",
                 str(tmp_path), *FAKE]) == 0
    return tmp_path


def test_run_prints_summary(tmp_path, capsys):
    assert main(["run", str(SMALL), "--jobs", "1", "--no-progress", "--store-dir",
                 str(tmp_path), *FAKE]) == 0
    out = capsys.readouterr().out
    assert "engine_small: finished: 18 task(s) done now" in out and "6 failed" in out


def test_status_table(store, capsys):
    spec = load_spec(SMALL)
    assert main(["status", str(SMALL), "--store-dir", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["condition", "label", "protocol", "n", "done", "missing", "failed",
                              "non_conv", "degenerate", "timeout"]
    n = len(spec.conditions())
    rows = [line.split() for line in out[1:1 + n]]
    assert [r[0] for r in rows] == [c.condition_id for c in spec.conditions()]
    assert all(r[4] == "3" and r[5] == "0" and r[6] == "1" for r in rows)
    assert out[1 + n].startswith("engine_small: 18/18 tasks done, 0 missing, 6 failed")
    assert out[2 + n].startswith("store: ")
    # who computed the rows
    assert out[3 + n].startswith("computed by (18 rows): simstudy.engine.fakes:failing_fake_task")
    assert "numpy" in out[3 + n] and "host" in out[3 + n]


def test_status_without_store(tmp_path, capsys):
    assert main(["status", str(SMALL), "--store-dir", str(tmp_path)]) == 0
    assert "0/18 tasks done, 18 missing" in capsys.readouterr().out


def test_replay_matches_and_detects_a_changed_row(store, capsys):
    cond = load_spec(SMALL).conditions()[3]
    args = ["replay", str(SMALL), "--store-dir", str(store), "--condition",
            cond.condition_id[:6], "--rep", "2", *FAKE]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "equals stored row: yes" in out and "loglik:" in out and "hellinger" in out
    assert main(args[:-3] + ["1", *FAKE]) == 0  # the error row replays too
    assert "RuntimeError: injected failure" in capsys.readouterr().out
    # a row whose log-likelihood differs (written through the store, so its checksum holds)
    with ResultStore(store_path("engine_small", store)) as st:
        row = st.get_task(cond.condition_id, 2)
        result = {**row, "flags": {}, "metrics": row["metrics"], "loglik": row["loglik"] + 1e-6}
        st.write(cond.condition_id, 2, row["spec_hash"], row["n"], result, row["provenance_id"])
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "equals stored row: NO (within rtol 1e-09, atol 1e-12; differs in loglik: " in out


def test_replay_errors(store, capsys):
    assert main(["replay", str(SMALL), "--store-dir", str(store), "--condition", "zzzz",
                 "--rep", "0"]) == 2
    assert "no condition with id 'zzzz'" in capsys.readouterr().err
    cid = load_spec(SMALL).conditions()[0].condition_id
    assert main(["replay", str(SMALL), "--store-dir", str(store), "--condition", cid,
                 "--rep", "3"]) == 2
    assert "--rep: must be in 0..2" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export(store, tmp_path, fmt, capsys):
    out = tmp_path / f"x.{fmt}"
    assert main(["export", str(SMALL), "--store-dir", str(store), "--format", fmt,
                 "--out", str(out)]) == 0
    df = pd.read_csv(out, keep_default_na=False, na_values=[""]) if fmt == "csv" \
        else pd.read_parquet(out)
    assert list(df.columns[: len(TIDY_COLUMNS)]) == list(TIDY_COLUMNS)
    assert {"hellinger", "tv", "loss_note"} <= set(df.columns) and len(df) == 18
    ref = load_results(SMALL, store_dir=store)
    pd.testing.assert_series_equal(df["loglik"], ref["loglik"])
    assert list(df["condition_id"]) == list(ref["condition_id"])
    assert "wrote 18 rows" in capsys.readouterr().out


def test_export_without_results(tmp_path, capsys):
    assert main(["export", str(SMALL), "--store-dir", str(tmp_path)]) == 2
    assert "no results yet" in capsys.readouterr().err


def test_list(store, tmp_path, capsys):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "engine_small.toml").write_text(SMALL.read_text())
    (studies / "broken.toml").write_text("[study]\nname = 'broken'\n")
    assert main(["list", "--studies-dir", str(studies), "--store-dir", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "conditions", "tasks", "done"]
    small = [line for line in out if line.startswith("engine_small")][0].split()
    assert small[1:4] == ["6", "18", "18"] and "Tiny" in small
    broken = [line for line in out if line.startswith("broken")][0]
    assert "INVALID" in broken


def test_forwarding_when_reports_missing(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name.startswith("simstudy.reports"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert main(["check", "studies/ci.toml"]) == 2
    assert "simstudy.reports.check is not available" in capsys.readouterr().err
    assert main(["report", "x.toml"]) == 2
    assert "simstudy.reports.build is not available" in capsys.readouterr().err


def test_forwarding_passes_argv(monkeypatch):
    import importlib
    import types

    seen = {}
    module = types.SimpleNamespace(main=lambda argv: seen.setdefault("argv", argv) and 3)
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a, **k: module if name == "simstudy.reports.check"
                        else real(name, *a, **k))
    assert main(["check", "studies/ci.toml", "--update-reference"]) == 3
    assert seen["argv"] == ["studies/ci.toml", "--update-reference"]


def test_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nname = 'bad'\nroot_seed = 1\nreplications = 'x'\n")
    for args in (["run", str(bad)], ["status", str(tmp_path / "missing.toml")],
                 ["run", str(SMALL), "--task", "nomodule:fn", "--store-dir", str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-m", "simstudy", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "key 'study.replications': expected an integer" in \
        subprocess.run([sys.executable, "-m", "simstudy", "run", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120).stderr


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "simstudy", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    for option in ("--jobs", "--backend", "--scheduler", "--force-new", "--no-progress",
                   "--store-dir", "--retry-errors", "--task"):
        assert option in proc.stdout


def _rewrite(store, cond, rep, **changes):
    """Write a stored row again with some columns changed (its checksum stays valid)."""
    with ResultStore(store_path("engine_small", store)) as st:
        row = st.get_task(cond.condition_id, rep)
        flags = {f: bool(row[f"flag_{f}"]) for f in ("var_floor", "empty_expert", "non_finite")}
        result = {**row, "flags": flags, **changes}
        st.write(cond.condition_id, rep, changes.get("spec_hash", row["spec_hash"]),
                 changes.get("n", row["n"]), result, row["provenance_id"])


@pytest.mark.parametrize(("changes", "needle"), [
    ({"n": 61}, "n: stored 61, the condition has 60"),
    ({"spec_hash": "0000000000000000"}, "spec_hash: stored '0000000000000000' is no spec"),
    ({"stop_reason": "stalled"}, "stop_reason: stored 'stalled'"),
])
def test_replay_compares_every_stored_column(store, capsys, changes, needle):
    cond = next(c for c in load_spec(SMALL).conditions() if c.n == 60)
    _rewrite(store, cond, 0, **changes)
    args = ["replay", str(SMALL), "--store-dir", str(store), "--condition", cond.condition_id,
            "--rep", "0", *FAKE]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "equals stored row: NO" in out and needle in out, out


def test_replay_tolerance_is_stated_and_exact_on_request(store, capsys):
    cond = load_spec(SMALL).conditions()[0]
    args = ["replay", str(SMALL), "--store-dir", str(store), "--condition", cond.condition_id,
            "--rep", "0", *FAKE]
    with ResultStore(store_path("engine_small", store), readonly=True) as st:
        row = st.get_task(cond.condition_id, 0)
    # a different BLAS kernel: the last digits move
    params = json.loads(row["params_json"])
    params["mean_y"] *= 1 + 3e-12
    _rewrite(store, cond, 0, loglik=row["loglik"] * (1 + 5e-13),
             params_json=json.dumps(params))
    assert main(args) == 0
    assert "equals stored row: yes (every stored column within rtol 1e-09, atol 1e-12" in \
        capsys.readouterr().out
    assert main([*args, "--exact"]) == 1
    out = capsys.readouterr().out
    assert "equals stored row: NO (exactly; differs in loglik" in out and "params.mean_y" in out
    assert main([*args, "--rtol", "1e-13"]) == 1
    assert main([*args, "--rtol", "-1"]) == 2


def test_help_is_quick_to_load():
    """report/check --help import neither numpy, pandas, statsmodels nor matplotlib."""
    code = ("import sys\nfrom simstudy.cli import main\n"
            "for cmd in ('report', 'check'):\n"
            "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('numpy', 'pandas', 'statsmodels', 'matplotlib', 'scipy')"
            " if m in sys.modules]\nprint('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "--store-dir" in proc.stdout and "``" not in proc.stdout


def test_report_and_check_take_a_store_dir(monkeypatch, tmp_path):
    import importlib
    import types

    seen = []
    for name in ("simstudy.reports.check", "simstudy.reports.build"):
        module = importlib.import_module(name)
        parsed = module._parser().parse_args([str(SMALL), "--store-dir", str(tmp_path)])
        seen.append(parsed.store_dir)
    assert seen == [str(tmp_path)] * 2
    # check passes it to the engine
    calls = {}
    fake = types.ModuleType("simstudy.engine")
    fake.run_study = lambda spec, **kw: calls.setdefault("run", kw)
    fake.load_results = lambda spec, store_dir=None: calls.setdefault("load", store_dir) and \
        pd.DataFrame()
    monkeypatch.setitem(sys.modules, "simstudy.engine", fake)
    check = importlib.import_module("simstudy.reports.check")
    try:
        check.main([str(ROOT / "studies" / "ci.toml"), "--store-dir", str(tmp_path),
                    "--no-progress", "--reference", str(tmp_path / "ref.json")])
    except Exception:  # an empty table cannot be checked; only the plumbing matters here
        pass
    assert calls["run"]["store_dir"] == str(tmp_path) and calls["load"] == str(tmp_path)


def test_report_shows_the_provenance(tmp_path):
    """The report's README says who computed the fits, from the tidy table's columns."""
    from simstudy.reports.build import _provenance, _provenance_text

    df = pd.DataFrame({"prov_task": ["t:a"] * 3 + ["t:b"], "prov_code": ["c1"] * 3 + ["c2"],
                       "prov_git": [None] * 4, "prov_host": ["h1", "h2", "h1", "h3"],
                       "prov_cpu": ["x"] * 4, "prov_numpy": ["2.0"] * 4})
    records = _provenance(df)
    assert [(r["task"], r["fits"], r["hosts"]) for r in records] == [
        ("t:a", 3, ["h1", "h2"]), ("t:b", 1, ["h3"])]
    text = _provenance_text(records)
    assert "3 fits computed by `t:a`" in text and "code c1" in text and "on h1, h2." in text
    assert "**Mixed provenance**" in text
    assert _provenance_text(_provenance(df.drop(columns=[c for c in df if "prov" in c]))) == ""
    # runs from two commits with the same code hash and libraries are not mixed
    same = df.assign(prov_task="t:a", prov_code="c1", prov_git=["g1"] * 3 + ["g2"])
    text = _provenance_text(_provenance(same))
    assert len(_provenance(same)) == 2 and "**Mixed provenance**" not in text
    assert text == ("4 fits computed by `t:a`, simstudy None, code c1 (git g1: 3, g2: 1 fits), "
                    "python None, numpy 2.0, scipy None, numba None, BLAS None; on h1, h2, h3.")
