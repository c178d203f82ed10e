"""Study steps on synthetic run outputs: collect -> tables, study fits, held-out checks.

The runs are faked from known laws (no training), so the fits must recover them: a wrong area, a
mis-aligned LR history or a mixed-up split shows up as a poor R^2 or a failed check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cptlaws import io
from cptlaws.areas import compute_areas
from cptlaws.errors import InputError
from cptlaws.schedules import lr_array, phase_lrs
from cptlaws.study.checks import observed_cmr, run_checks
from cptlaws.study.config import load_study
from cptlaws.study.fits import fit_study
from cptlaws.study.tables import collect, read_tables

# Replay-law truth (laws.md Eq. 8): one parameter set per validation set.
TRUE = {
    "general": dict(L0=2.0, A=0.6, alpha=0.45, C1=0.30, C2=0.30, B=0.35, E=40.0, beta=0.6, a1=0.5, a2=3.0),
    "domain": dict(L0=2.4, A=0.7, alpha=0.45, C1=0.30, C2=0.30, B=-0.9, E=60.0, beta=0.6, a1=0.5, a2=1.2),
}


def true_loss(lrs, steps, transfer, warmup, ratio, role, lam=0.999):
    p = TRUE[role]
    a = compute_areas(lrs, lam, transfer, warmup, True).at(steps)
    r = float(ratio)
    with np.errstate(divide="ignore"):
        base = p["L0"] + p["A"] * np.where(a.S1 > 0, a.S1, np.nan) ** (-p["alpha"]) - p["C1"] * a.S2_pt
    shift = p["B"] * (1 - (1 + p["E"] * a.S1_cpt) ** (-p["beta"]))
    if role == "general":
        return base - p["C2"] * a.S2_cpt * np.exp(p["a1"] * (1 - r)) + shift * (1 - np.exp(-p["a2"] * r))
    return base - p["C2"] * a.S2_cpt * np.exp(p["a1"] * r) + shift * (np.exp(p["a2"] * r) - 1)


def small_config(**over) -> dict:
    cfg = {
        "corpora": {"general": {}, "code": {}},
        "train": {"eval_every": 20},
        "pt": {
            "steps": 400,
            "schedules": {
                "const": {"kind": "constant", "peak_lr": 2.0e-3, "warmup_steps": 20},
                "wsd": {"kind": "wsd", "peak_lr": 2.0e-3, "warmup_steps": 20, "final_lr": 2.0e-4, "decay_fraction": 0.25},
            },
        },
        "cpt": {
            "steps": 200,
            "schedules": {
                "cos": {"kind": "cosine", "peak_lr": 2.0e-3, "warmup_steps": 10, "final_lr": 2.0e-4},
                "const": {"kind": "constant", "peak_lr": 2.0e-3, "warmup_steps": 10},
                "wsd": {"kind": "wsd", "peak_lr": 2.0e-3, "warmup_steps": 10, "final_lr": 2.0e-4, "decay_fraction": 0.3},
            },
            "grids": [
                {"domain": ["code"], "ratio": [0.25, 0.5, 0.75, 1.0], "cpt_schedule": ["cos"], "pt_schedule": ["const"], "transfer_step": [200]},
                {"domain": ["code"], "ratio": [1.0], "cpt_schedule": ["const", "wsd"], "pt_schedule": ["const"], "transfer_step": [100, 200]},
                {"domain": ["code"], "ratio": [1.0], "cpt_schedule": ["cos"], "pt_schedule": ["wsd"], "transfer_step": [400]},
            ],
        },
        "fits": {"n_starts": 500, "bootstrap": 4},
        "checks": [
            {"name": "cos_from_const_wsd", "kind": "runs", "law": "cpt", "fit": {"cpt_schedule": ["const", "wsd"], "ratio": [1.0]},
             "predict": {"cpt_schedule": ["cos"], "pt_schedule": ["const"], "ratio": [1.0]}, "threshold": 0.01},
            {"name": "first_half", "kind": "time", "law": "cpt", "select": {"ratio": [1.0]}, "fraction": 0.5, "threshold": 0.02},
            {"name": "ratio_holdout", "kind": "runs", "law": "replay", "fit": {"ratio": [0.25, 0.5, 1.0], "cpt_schedule": ["cos"], "pt_schedule": ["const"]},
             "predict": {"ratio": [0.75], "cpt_schedule": ["cos"], "pt_schedule": ["const"]}, "threshold": 0.01},
            {"name": "cmr_vs_runs", "kind": "cmr", "metric": "abs_err", "threshold": 0.3},
        ],
    }  # fmt: skip
    cfg.update(over)
    return cfg


def make_fake_runs(study, root: Path, noise: float = 0.002, seed: int = 0, only=None) -> list[Path]:
    """Write run.json / config.json / meta.json / curve.parquet / trainlog.parquet for every run of a
    study (or ``only`` those ids), with losses from the replay-law truth plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    dirs = []
    for rid, spec in study.runs.items():
        if only is not None and rid not in only:
            continue
        tr, row = spec["train"], spec["row"]
        d = root / tr["out_dir"]
        d.mkdir(parents=True, exist_ok=True)
        io.write_json(d / "config.json", tr)
        io.write_json(d / "run.json", row)
        ev = tr["eval_every"]
        bs, sl = tr["batch_size"], tr["seq_len"]
        if row["phase"] == "pt":
            lrs = lr_array(tr["schedule"], tr["steps"])
            first, transfer, ratio = 1, None, 0.0
            steps = np.unique(np.r_[np.arange(0, tr["steps"] + 1, ev), tr["steps"]])
            warm = tr["schedule"]["warmup_steps"]
        else:
            ini = tr["init"]
            T = ini["transfer_step"]
            lrs = phase_lrs(ini["pt_schedule"], ini["pt_steps"], T, tr["schedule"], tr["steps"])
            first, transfer, ratio = T + 1, T, tr["data"]["ratio"]
            steps = np.unique(np.r_[np.arange(T, T + tr["steps"] + 1, ev), T + tr["steps"]])
            warm = ini["pt_schedule"]["warmup_steps"]
        own = lrs[first - 1 :]
        parts = []
        for split in tr["valid"]:
            role = "general" if split == "general" else "domain"
            loss = true_loss(lrs, steps, transfer, warm, ratio, role)
            loss = np.where(steps == 0, 7.0, loss) + noise * rng.standard_normal(steps.size)
            parts.append(
                pd.DataFrame(
                    {
                        "run_id": rid,
                        "phase": row["phase"],
                        "step": steps,
                        "tokens": steps * bs * sl,
                        "lr": np.where(steps > 0, lrs[np.maximum(steps - 1, 0)], 0.0),
                        "split": split,
                        "loss": loss,
                    }
                )
            )
        parts.append(parts[0].assign(split="train"))
        io.write_parquet(d / "curve.parquet", pd.concat(parts, ignore_index=True))
        n = own.size
        io.write_parquet(
            d / "trainlog.parquet",
            pd.DataFrame(
                {
                    "step": np.arange(first, first + n),
                    "lr": own,
                    "tokens": np.arange(first, first + n) * bs * sl,
                    "train_loss": 3.0,
                }
            ),
        )
        io.write_json(
            d / "meta.json",
            {"n_params": 2.0e5, "n_nonembed": 1.0e5, "status": "ok", "wall_time_s": 1.0, "tokens_per_s": 1.0e5},
        )
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    study = load_study(small_config())
    dirs = make_fake_runs(study, root)
    tables = collect(dirs, root / "results/tables")
    return study, root, tables


def test_collect_tables_follow_the_design_contract(fake_study):
    study, root, t = fake_study
    runs, curves, lrs = t["runs"], t["curves"], t["lrs"]
    assert list(runs["run_id"]) == list(study.runs)
    assert {"n_params", "n_nonembed", "status", "wall_time_s", "tokens_per_s", "loss_potential"} <= set(runs.columns)
    assert set(curves["split"]) == {"general", "code"}  # train rows are not in curves.parquet
    rid = "cpt-tiny-code-r1-cos-const-T200-s0"
    c = curves[(curves["run_id"] == rid) & (curves["split"] == "general")]
    assert c["step"].min() == 200 and c["cpt_step"].min() == 0 and c["cpt_step"].max() == 200
    # areas from the exact history: S1 = PT area (warm-up counted at peak) + CPT area
    full = lrs[lrs["run_id"] == rid]["lr"].to_numpy()
    assert full.size == 400
    eff = full.copy()
    eff[:20] = 2.0e-3
    last = c[c["step"] == 400].iloc[0]
    assert last["S1"] == pytest.approx(eff.sum()) and last["S1_pt"] == pytest.approx(eff[:200].sum())
    assert last["S1_cpt"] == pytest.approx(eff[200:].sum())
    # the re-read tables equal the returned ones
    back = read_tables(root / "results/tables")
    pd.testing.assert_frame_equal(back["curves"], curves)


def test_collect_rejects_an_lr_history_that_contradicts_the_schedule(fake_study, tmp_path):
    study, root, _ = fake_study
    rid = "pt-tiny-const-s0"
    dirs = make_fake_runs(study, tmp_path, only={rid})
    log = pd.read_parquet(dirs[0] / "trainlog.parquet")
    log.loc[57, "lr"] *= 1.5
    log.to_parquet(dirs[0] / "trainlog.parquet")
    with pytest.raises(InputError, match=r"pt-tiny-const-s0.*step 58"):
        collect(dirs, tmp_path / "tables")


def test_collect_names_a_missing_file(fake_study, tmp_path):
    study, _, _ = fake_study
    dirs = make_fake_runs(study, tmp_path, only={"pt-tiny-const-s0"})
    (dirs[0] / "meta.json").unlink()
    with pytest.raises(InputError, match=r"pt-tiny-const-s0/meta.json: no such file"):
        collect(dirs, tmp_path / "tables")


def test_collect_needs_the_parent_of_a_cpt_run(fake_study, tmp_path):
    study, _, _ = fake_study
    dirs = make_fake_runs(study, tmp_path, only={"cpt-tiny-code-r1-cos-const-T200-s0"})
    with pytest.raises(InputError, match="parent PT run 'pt-tiny-const-s0'"):
        collect(dirs, tmp_path / "tables")


@pytest.fixture(scope="module")
def fitted(fake_study):
    study, root, _ = fake_study
    out = root / "results/fits"
    docs = {
        a: fit_study(a, root / "results/tables", json.loads(study.fit_settings_json(a)), out)
        for a in ("cpt", "replay", "cmr")
    }
    return study, root, out, docs


def test_cpt_law_recovers_the_synthetic_truth(fitted):
    study, root, out, docs = fitted
    fits = [f for f in docs["cpt"]["fits"] if "error" not in f and "skipped" not in f]
    assert {f["split"] for f in fits} == {"general", "code"}
    for f in fits:
        assert f["fit_quality"]["r2"] >= 0.99, f
        assert f["r2_ok"]
        assert all(set(f["intervals"]))  # bootstrap intervals present
        one = json.loads((out / f["file"]).read_text())  # per-fit FitResult JSON for the figures
        assert one["law"] == "cpt" and one["split"] == f["split"] and one["params"]
    general = next(f for f in fits if f["split"] == "general")
    domain = next(f for f in fits if f["split"] == "code")
    assert general["params"]["B"] > 0 > domain["params"]["B"]  # forgetting vs adaptation
    params = pd.read_parquet(out / "cpt_params.parquet")
    assert {"value", "lo", "hi"} <= set(params.columns) and len(params) == 16
    pred = pd.read_parquet(out / "cpt_predictions.parquet")
    assert np.isfinite(pred["pred"]).all() and len(pred) > 100


def test_replay_and_cmr_analyses(fitted):
    study, root, out, docs = fitted
    rep = [f for f in docs["replay"]["fits"] if "fit_quality" in f]
    assert len(rep) == 2 and min(f["fit_quality"]["r2"] for f in rep) > 0.99
    cmr = docs["cmr"]["fits"]
    assert len(cmr) == 1 and "error" not in cmr[0], cmr
    assert (out / cmr[0]["file"]).exists()
    assert cmr[0]["status"] in ("ok", "at_upper_bound", "no_feasible_ratio")
    table = pd.read_parquet(out / "cmr.parquet")
    assert len(table) == 1 and table["n_ratios"].iloc[0] == 4


def test_refit_removes_per_fit_files_of_dropped_groups(fitted, tmp_path):
    study, root, out, _ = fitted
    stale = out / "cpt_tiny_gone_general.json"
    stale.write_text("{}")
    fit_study("cpt", root / "results/tables", json.loads(study.fit_settings_json("cpt")) | {}, tmp_path / "fits")
    assert not (tmp_path / "fits" / stale.name).exists()
    settings = json.loads(study.fit_settings_json("cpt"))
    settings["fits"]["cpt"]["enabled"] = False
    doc = fit_study("cpt", root / "results/tables", settings, out)
    assert doc["fits"] == [] and not list(out.glob("cpt_*.json"))


def test_held_out_checks(fitted):
    study, root, out, _ = fitted
    settings = json.loads(study.settings_json("fits", "checks"))
    df = run_checks(root / "results/tables", settings, root / "results/checks", cmr_summary=out / "summary/cmr.json")
    assert set(df["check"]) == {"cos_from_const_wsd", "first_half", "ratio_holdout", "cmr_vs_runs"}
    runs_rows = df[df["check"] == "cos_from_const_wsd"]
    assert set(runs_rows["run_id"]) == {"cpt-tiny-code-r1-cos-const-T200-s0"}
    assert set(runs_rows["split"]) == {"general", "code"}
    # noise 0.002 on a loss ~3: a correct fit predicts unseen schedules within 1 %
    fitted_rows = df[df["kind"] != "cmr"]
    assert (fitted_rows["note"] == "").all(), fitted_rows["note"].tolist()
    assert fitted_rows["passed"].all(), fitted_rows[["check", "run_id", "split", "value"]]
    assert (fitted_rows["mean_rel"] < 0.01).all()
    md = (root / "results/checks/heldout.md").read_text()
    assert "| cos_from_const_wsd |" in md and "PASS" in md
    pred = pd.read_parquet(root / "results/checks/predictions.parquet")
    assert set(pred["check"]) == {"cos_from_const_wsd", "first_half", "ratio_holdout"}
    # the held-out part only: a time check predicts points after the cut
    fh = pred[(pred["check"] == "first_half") & (pred["run_id"] == "cpt-tiny-code-r1-const-const-T100-s0")]
    assert fh["step"].min() > 100 + 100


def test_a_check_that_cannot_fit_fails_with_its_reason(fake_study, tmp_path):
    study, root, tables = fake_study
    t = tmp_path / "tables"
    for name in ("curves", "lrs"):
        io.write_parquet(t / f"{name}.parquet", tables[name])
    io.write_parquet(t / "runs.parquet", tables["runs"].assign(n_nonembed=np.nan))  # the size law needs N
    settings = json.loads(study.settings_json("fits", "checks"))
    settings["checks"] = [{"name": "bad", "kind": "runs", "law": "size", "fit": {"cpt_schedule": ["const"]},
                           "predict": {"cpt_schedule": ["wsd"]}, "metric": "mean_rel", "threshold": 0.1}]  # fmt: skip
    df = run_checks(t, settings, tmp_path / "checks")
    assert len(df) == 2 and not df["passed"].any()
    assert df["note"].str.startswith("error:").all()
    assert "FAIL" in (tmp_path / "checks" / "heldout.md").read_text()


def test_observed_cmr_interpolates_the_tolerance_crossing():
    curves = pd.DataFrame({
        "run_id": ["a", "a", "b", "b", "c", "c"], "split": "general", "step": [0, 10] * 3,
        "loss": [3.0, 3.02, 3.0, 3.06, 3.0, 3.20],
    })  # fmt: skip
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "ratio": [0.25, 0.5, 1.0]})
    # dL = 0.02, 0.06, 0.20 at ratios 0.25, 0.5, 1.0; eps 0.05 is crossed 3/4 of the way to 0.5
    assert observed_cmr({"curves": curves}, runs, 0.05) == pytest.approx(0.4375)
    assert observed_cmr({"curves": curves}, runs, 0.5) == 1.0
    assert observed_cmr({"curves": curves}, runs, 0.01) is None


def test_diverged_runs_are_left_out_of_the_fits(fake_study, tmp_path):
    study, root, tables = fake_study
    runs = tables["runs"].copy()
    runs.loc[runs["run_id"] == "cpt-tiny-code-r1-wsd-const-T100-s0", "status"] = "diverged"
    t = tmp_path / "tables"
    for name in ("curves", "lrs"):
        io.write_parquet(t / f"{name}.parquet", tables[name])
    io.write_parquet(t / "runs.parquet", runs)
    settings = json.loads(study.fit_settings_json("cpt"))
    settings["fits"]["bootstrap"] = 0
    doc = fit_study("cpt", t, settings, tmp_path / "fits")
    assert doc["excluded_runs"] == ["cpt-tiny-code-r1-wsd-const-T100-s0"]
    fit = next(f for f in doc["fits"] if "fit_runs" in f)
    assert "cpt-tiny-code-r1-wsd-const-T100-s0" not in fit["fit_runs"]
    assert math.isfinite(fit["fit_quality"]["r2"])
