"""Coverage and global-check tables on hand-built results with known answers."""

import numpy as np
import pandas as pd
import pytest

from simstudy.reports.coverage import check_table, coverage_table, write_fit_checks


def frame():
    rows = []
    for n in (1000, 4000):
        for rep in range(20):
            rows.append({
                "label": "exact", "protocol": "strict", "n": n, "rep": rep,
                "stop_reason": "certified" if rep else "certified_on_tie",
                "cover_b_1": float(rep % 10 != 0),  # 18 of 20 cover
                "cover_v_1": float(rep < 19) if n == 1000 else np.nan,  # 19 of 20, then none
                "loglik_gap": -1.0 if rep == 3 else 0.5,
                "start_reached_best": 0.0 if rep in (1, 2) else 1.0,
                "flag_var_small": 0.0, "n_passes": 100.0 + rep,
            })
        rows.append({"label": "exact", "protocol": "papers", "n": n, "rep": 0,
                     "stop_reason": "tol", "loglik_gap": 2.0})
    return pd.DataFrame(rows)


def test_coverage_per_parameter_with_monte_carlo_se():
    cov = coverage_table(frame())
    b = cov[cov["parameter"] == "b_1"].iloc[0]
    assert b["fits"] == 40 and b["coverage"] == pytest.approx(36 / 40)
    assert b["mcse"] == pytest.approx(np.sqrt(0.9 * 0.1 / 40))
    assert not b["within 2 SE"] or abs(0.9 - 0.95) <= 2 * b["mcse"]
    v = cov[cov["parameter"] == "v_1"].iloc[0]
    assert v["fits"] == 20 and v["coverage"] == pytest.approx(19 / 20)  # NaN rows skipped
    assert set(cov["protocol"]) == {"strict"}  # the papers' fits have no indicators
    by_n = coverage_table(frame(), by_n=True)
    assert set(by_n["n"]) == {1000, 4000}
    assert by_n[(by_n["n"] == 4000) & (by_n["parameter"] == "v_1")].empty


def test_check_table_counts_below_truth_and_missed_starts():
    chk = check_table(frame())
    row = chk[(chk["protocol"] == "strict") & (chk["n"] == 1000)].iloc[0]
    assert row["fits"] == 20 and row["certified"] == 20 and row["on tie"] == 1
    assert row["below truth"] == 1 and row["start below best"] == 2
    assert row["median passes"] == pytest.approx(109.5)
    papers = chk[chk["protocol"] == "papers"].iloc[0]
    assert papers["certified"] == 0 and papers["below truth"] == 0


def test_write_fit_checks_writes_both_tables(tmp_path):
    files = write_fit_checks("demo", frame(), tmp_path)
    names = {p.name for p in files}
    assert {"demo_checks.csv", "demo_checks.md", "demo_coverage.md",
            "demo_coverage_by_n.csv"} <= names
    assert "| b_1 |" in (tmp_path / "tables" / "demo_coverage.md").read_text()
    no_cover = frame().drop(columns=["cover_b_1", "cover_v_1"])
    files = write_fit_checks("plain", no_cover, tmp_path)
    assert {p.name for p in files} == {"plain_checks.csv", "plain_checks.md"}
