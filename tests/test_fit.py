"""Fitting engine, curve readers and metrics: errors, determinism, bootstrap, JSON round trip."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from cptlaws.errors import FitError, InputError
from cptlaws.fitting import FitResult, fit_law
from cptlaws.fitting.curves import Curve, curves_from_tables, load_curves
from cptlaws.fitting.metrics import evaluate, metrics
from cptlaws.laws import get_law
from cptlaws.schedules import lr_array, phase_lrs

PEAK = 3e-4
COS = {"kind": "cosine", "peak_lr": PEAK, "warmup_steps": 100, "final_lr": 3e-5}
CONST = {"kind": "constant", "peak_lr": PEAK, "warmup_steps": 100}
TRUE = np.array([2.8, 0.55, 0.5, 0.4])


def lra_curves(sigma=0.001, seed=0, every=100, steps=3000):
    rng = np.random.default_rng(seed)
    law = get_law("lra")
    out = []
    for name, spec in (
        ("cos", COS),
        ("const", CONST),
        ("wsd", {"kind": "wsd", "peak_lr": PEAK, "warmup_steps": 100, "final_lr": 3e-5, "decay_fraction": 0.3}),
    ):
        lrs = lr_array(spec, steps)
        st = np.arange(0, steps + 1, every)
        c = Curve(name, lrs, st, np.ones(st.size), warmup_steps=100)
        F = law.features([c], 0.999)
        with np.errstate(all="ignore"):
            y = law.value_jac(TRUE, F)[0]
        y[0] = 10.0  # init loss: dropped by every fit
        out.append(dataclasses.replace(c, loss=y + rng.normal(0, sigma, st.size)))
    return out


def test_fit_diagnostics_and_determinism():
    curves = lra_curves()
    a = fit_law("lra", curves[:2], seed=3)
    b = fit_law("lra", curves[:2], seed=3)
    assert a.params == b.params
    d = a.diagnostics
    assert d["n_points"] == 2 * 29  # 31 points per curve minus step 0 and the step-100 warm-up point
    assert d["dropped_warmup_points"] == 2
    assert d["converged"] and d["n_starts"] == 500 and 1 <= d["n_near_best"] <= d["n_refined"]
    assert d["objective"] > 0 and d["wall_s"] > 0
    # held-out prediction of the third schedule
    ev = evaluate(a, curves[2:])
    assert ev["mean"]["mae"] < 0.002 and set(ev["per_run"]) == {"wsd"}


def test_fixed_parameters_are_held():
    res = fit_law("lra", lra_curves()[:2], fixed={"alpha": 0.45}, n_starts=50)
    assert res.params["alpha"] == 0.45
    with pytest.raises(FitError, match="unknown"):
        fit_law("lra", lra_curves()[:2], fixed={"gamma": 1.0})


def test_too_few_points():
    c = lra_curves(every=1000)[0]  # steps 0, 1000, 2000, 3000 -> 3 usable points for 4 parameters
    with pytest.raises(FitError, match="3 usable points for 4 free parameters"):
        fit_law("lra", [c])


def test_nan_data_rejected():
    c = lra_curves()[0]
    bad = c.loss.copy()
    bad[5] = np.nan
    with pytest.raises(InputError, match="run 'cos'.*loss must be finite"):
        Curve("cos", c.lrs, c.steps, bad)
    c.loss[5] = np.inf  # bypassing the dataclass checks is still caught by the fitter
    with pytest.raises(FitError, match="run 'cos'.*NaN/inf"):
        fit_law("lra", [c])


def test_bad_options():
    curves = lra_curves()[:2]
    with pytest.raises(FitError, match="lam"):
        fit_law("lra", curves, lam="auto")
    with pytest.raises(FitError, match="lam"):
        fit_law("lra", curves, lam=1.0)
    with pytest.raises(FitError, match="n_starts"):
        fit_law("lra", curves, n_starts=0)
    with pytest.raises(ValueError, match="unknown law"):
        fit_law("chinchilla", curves)


def test_bootstrap_intervals_bands_and_json_roundtrip(tmp_path):
    curves = lra_curves()
    res = fit_law("lra", curves, bootstrap=8, n_starts=100)
    assert len(res.bootstrap_params) == 8
    for lo, hi in res.intervals.values():
        assert lo <= hi
    df = res.predict(curves, band=True)
    assert list(df.columns) == ["run_id", "step", "split", "loss", "pred", "pred_lo", "pred_hi"]
    ok = df["step"] > 0
    assert (df.loc[ok, "pred_lo"] <= df.loc[ok, "pred_hi"]).all()
    assert np.isnan(df.loc[~ok, "pred"]).all()  # step 0: S1 = 0, the law is undefined
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(res.to_dict()))
    back = FitResult.from_dict(json.loads(path.read_text()))
    pd.testing.assert_frame_equal(back.predict(curves, band=True), df)
    with pytest.raises(ValueError, match="needs params"):
        FitResult.from_dict({"law": "lra", "params": {"L0": 1.0}, "lam": 0.999})


def test_single_curve_bootstrap_resamples_points():
    res = fit_law("lra", lra_curves()[:1], bootstrap=3, n_starts=50)
    assert res.diagnostics["bootstrap"]["unit"] == "point"


# A small, hard CPT-law fit: 8 parameters on 20 points with noise 0.03 (the domain-set fit of the paper,
# laws.md section 3). Polishing only the 12 best screened starts reached a worse optimum with more starts
# here (same Sobol starts: 5.496e-05 at 500, 6.106e-05 at 2,000; the earlier Latin-hypercube starts:
# 5.496e-05 at 8,000, 6.097e-05 at 32,000).
DOMAIN_CPT = {
    "L0": 3.024,
    "A": 0.412,
    "alpha": 0.677,
    "C1": 0.278,
    "C2": 0.324,
    "B": -0.666,
    "E": 5662.0,
    "beta": 0.146,
}


def hard_cpt_curves():
    peak, every = 2e-4, 2000
    pt_wsd = {"kind": "wsd", "peak_lr": peak, "warmup_steps": 500, "final_lr": 2e-5, "decay_fraction": 0.2}
    pt_cos = {"kind": "cosine", "peak_lr": peak, "warmup_steps": 500, "final_lr": 2e-5}
    cpt_cos = {"kind": "cosine", "peak_lr": peak, "warmup_steps": 300, "warmup_init": "pt_end", "final_lr": 2e-5}
    cpt_const = {"kind": "constant", "peak_lr": peak, "warmup_steps": 300, "warmup_init": "pt_end"}
    curves = [Curve("pt-wsd", lr_array(pt_wsd, 20000), np.arange(every, 20001, every), np.ones(10), warmup_steps=500)]
    for name, pt, transfer, cpt in (
        ("cpt-wsd8k-cos", pt_wsd, 8000, cpt_cos),
        ("cpt-cos10k-const", pt_cos, 10000, cpt_const),
    ):
        steps = np.arange(transfer + every, transfer + 10001, every)
        lrs = phase_lrs(pt, 20000, transfer, cpt, 10000)
        curves.append(Curve(name, lrs, steps, np.ones(steps.size), transfer=transfer, warmup_steps=500))
    law = get_law("cpt")
    truth = law.value_jac(np.array([DOMAIN_CPT[n] for n in law.params]), law.features(curves, 0.999))[0]
    noise = np.random.default_rng(1).normal(0, 0.03, truth.size)
    cuts = np.cumsum([c.steps.size for c in curves])[:-1]
    return [dataclasses.replace(c, loss=y) for c, y in zip(curves, np.split(truth + noise, cuts))]


def test_more_starts_never_give_a_worse_optimum():
    curves = hard_cpt_curves()
    assert sum(c.steps.size for c in curves) == 20
    counts = (500, 2000, 8000, 32000)
    fits = [fit_law("cpt", curves, n_starts=n, seed=0) for n in counts]
    objs = [f.diagnostics["objective"] for f in fits]
    assert all(b <= a for a, b in zip(objs, objs[1:])), dict(zip(counts, objs))
    assert all(f.diagnostics["converged"] for f in fits)
    # more starts polish more starts (those of fewer starts among them), but far fewer than all of them
    refined = [f.diagnostics["n_refined"] for f in fits]
    assert refined == sorted(refined) and refined[-1] < 300, refined


def test_polished_starts_of_fewer_starts_are_kept_with_more():
    from cptlaws.fitting.engine import _record_starts

    vals = np.random.default_rng(0).standard_normal(5000)
    vals[::7] = np.inf  # invalid starts are never polished
    every = _record_starts(vals, 12)
    assert set(np.argsort(vals)[:12]) <= set(every)  # the 12 best overall are polished
    assert not any(np.isinf(vals[i]) for i in every)
    for n in (10, 100, 1000, 4999):
        assert set(_record_starts(vals[:n], 12)) <= set(every)
    assert 12 < len(every) < 12 * (2 + np.log(5000 / 12))


def test_metrics_values():
    m = metrics([1.0, 2.0, 3.0], [1.1, 2.0, 2.7])
    assert m["mae"] == pytest.approx(0.4 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(0.1 / 3))
    assert m["r2"] == pytest.approx(1 - 0.1 / 2)
    assert m["worst_rel"] == pytest.approx(0.1)
    assert m["mean_rel"] == pytest.approx((0.1 + 0 + 0.1) / 3)
    with pytest.raises(ValueError, match="NaN"):
        metrics([1.0], [np.nan])


# ------------------------------------------------------------------------------------------ readers
def write_curves(tmp_path, rows, name="curves.csv"):
    p = tmp_path / name
    pd.DataFrame(rows, columns=["run", "step", "loss"]).to_csv(p, index=False)
    return p


def write_yaml(tmp_path, text):
    p = tmp_path / "schedules.yaml"
    p.write_text(text)
    return p


SCHED = """
defaults: {steps: 1000}
runs:
  a: {schedule: {kind: cosine, peak_lr: 3.0e-4, warmup_steps: 100, final_lr: 3.0e-5}}
  b:
    pt_schedule: {kind: constant, peak_lr: 3.0e-4, warmup_steps: 100}
    pt_steps: 2000
    transfer: 500
    schedule: {kind: cosine, peak_lr: 2.0e-4, warmup_steps: 50, warmup_init: pt_end, final_lr: 2.0e-5}
    ratio: 0.5
"""


def test_load_curves_from_schedules_yaml(tmp_path):
    p = write_curves(tmp_path, [("a", 100, 4.0), ("a", 500, 3.5), ("b", 500, 3.5), ("b", 900, 3.4), ("b", 1500, 3.3)])
    cs = load_curves(p, schedules_yaml=write_yaml(tmp_path, SCHED))
    by = {c.run_id: c for c in cs}
    assert by["a"].lrs.size == 1000 and by["a"].transfer is None and by["a"].warmup_steps == 100
    assert by["b"].lrs.size == 1500 and by["b"].transfer == 500 and by["b"].ratio == 0.5
    np.testing.assert_array_equal(
        by["b"].lrs,
        phase_lrs(
            {"kind": "constant", "peak_lr": 3e-4, "warmup_steps": 100},
            2000,
            500,
            {"kind": "cosine", "peak_lr": 2e-4, "warmup_steps": 50, "warmup_init": "pt_end", "final_lr": 2e-5},
            1000,
        ),
    )


def test_load_curves_dense_lr_table_and_split(tmp_path):
    lrs = lr_array(COS, 300)
    lr_p = tmp_path / "lrs.parquet"
    pd.DataFrame({"run_id": "a", "step": np.arange(1, 301), "lr": lrs}).to_parquet(lr_p)
    cur = pd.DataFrame(
        {
            "run_id": ["a"] * 4,
            "step": [100, 200, 100, 200],
            "split": ["general", "general", "code", "code"],
            "loss": [3.0, 2.9, 4.0, 3.8],
        }
    )
    cp = tmp_path / "c.parquet"
    cur.to_parquet(cp)
    cs = load_curves(cp, lr_path=lr_p)
    assert sorted(c.split for c in cs) == ["code", "general"]
    (g,) = load_curves(cp, lr_path=lr_p, split="general")
    np.testing.assert_array_equal(g.lrs, lrs)
    assert g.warmup_steps == 100  # inferred from the LR rise


@pytest.mark.parametrize(
    "rows, yaml_text, match",
    [
        ([("a", 100, 4.0), ("a", 50, 3.9)], SCHED, r"curves.csv: run 'a' row 2: steps not strictly increasing"),
        (
            [("a", 100, 4.0), ("a", 200, -3.9)],
            SCHED,
            r"curves.csv: row 2 \(run 'a', step 200\): loss must be finite and > 0",
        ),
        ([("a", 100, 4.0), ("zz", 200, 3.9)], SCHED, r"curves.csv: row 2: run 'zz' has no schedule"),
        (
            [("a", 100, 4.0), ("a", 1200, 3.9)],
            SCHED,
            r"curves.csv: run 'a' row 2: eval step 1200 is beyond the LR history \(1000",
        ),
        (
            [("a", 100, 4.0)],
            "runs:\n  a: {schedule: {kind: cosine, peak_lr: 3.0e-4, final_lr: 3.0e-5}, steps: 50, colour: 2}\n",
            r"run 'a': unknown key 'colour'",
        ),
        (
            [("a", 100, 4.0)],
            "runs:\n  a: {schedule: {kind: cosine, peak_lr: 3.0e-4, final_lr: 4.0e-4}, steps: 500}\n",
            r"run 'a': schedule: field 'final_lr'",
        ),
        ([("a", 100, 4.0)], "runs: [1, 2\n", r"invalid YAML"),
    ],
)
def test_malformed_inputs_name_file_run_row(tmp_path, rows, yaml_text, match):
    p = write_curves(tmp_path, rows)
    with pytest.raises(InputError, match=match):
        load_curves(p, schedules_yaml=write_yaml(tmp_path, yaml_text))


def test_missing_columns_and_formats(tmp_path):
    p = tmp_path / "c.csv"
    pd.DataFrame({"run": ["a"], "step": [1]}).to_csv(p, index=False)
    with pytest.raises(InputError, match=r"c.csv: missing column\(s\) \['loss'\]"):
        load_curves(p, schedules_yaml=write_yaml(tmp_path, SCHED))
    q = tmp_path / "c.json"
    q.write_text("{}")
    with pytest.raises(InputError, match="unknown table format"):
        load_curves(q, schedules_yaml=write_yaml(tmp_path, SCHED))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_curves(tmp_path / "nope.csv", schedules_yaml=write_yaml(tmp_path, SCHED))
    ok = write_curves(tmp_path, [("a", 100, 4.0)])
    with pytest.raises(InputError, match="no LR source"):
        load_curves(ok)
    gap = tmp_path / "lr.csv"
    pd.DataFrame({"run": "a", "step": [1, 2, 4], "lr": [1e-4] * 3}).to_csv(gap, index=False)
    with pytest.raises(InputError, match=r"lr.csv: run 'a'.*row 3: step 4.0, expected 3"):
        load_curves(ok, lr_path=gap)


def test_curves_from_workflow_tables():
    pt = {"kind": "constant", "peak_lr": 3e-4, "warmup_steps": 10}
    cpt = {"kind": "cosine", "peak_lr": 2e-4, "warmup_steps": 5, "warmup_init": "pt_end", "final_lr": 2e-5}
    pt_l = lr_array(pt, 200)
    cpt_l = phase_lrs(pt, 200, 100, cpt, 50)
    runs = pd.DataFrame(
        {
            "run_id": ["pt", "cpt"],
            "phase": ["pt", "cpt"],
            "parent": ["", "pt"],
            "ratio": [0.0, 0.25],
            "transfer_step": [0, 100],
            "n_nonembed": [2e6, 2e6],
            "schedule_json": [json.dumps(pt), json.dumps(pt)],
        }
    )
    # the CPT run's LR table holds only its own phase: the parent's first 100 steps are prepended
    lrs = pd.concat(
        [
            pd.DataFrame({"run_id": "pt", "step": np.arange(1, 201), "lr": pt_l}),
            pd.DataFrame({"run_id": "cpt", "step": np.arange(101, 151), "lr": cpt_l[100:]}),
        ]
    )
    curves = pd.DataFrame(
        {
            "run_id": ["pt", "pt", "cpt", "cpt", "cpt"],
            "phase": ["pt", "pt", "cpt", "cpt", "cpt"],
            "step": [0, 100, 100, 120, 150],
            "split": ["general"] * 5,
            "loss": [6.0, 4.0, 4.0, 4.1, 3.9],
        }
    )
    cs = {c.run_id: c for c in curves_from_tables(curves, lrs, runs, "general")}
    np.testing.assert_array_equal(cs["cpt"].lrs, cpt_l)
    assert cs["cpt"].transfer == 100 and cs["cpt"].ratio == 0.25 and cs["cpt"].n_params == 2.0
    assert cs["pt"].transfer is None and cs["pt"].warmup_steps == 10
    with pytest.raises(InputError, match="no rows with split 'code'"):
        curves_from_tables(curves, lrs, runs, "code")
    with pytest.raises(InputError, match="lrs.parquet: run 'pt' has no LR history"):
        curves_from_tables(curves, lrs[lrs.run_id == "cpt"], runs, "general")
