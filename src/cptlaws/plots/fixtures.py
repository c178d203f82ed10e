"""A small synthetic study in the contract formats (docs/design.md), so figures render without training.

Curves come from the replay form of the CPT law (laws.md section 3, Eq. 8; at ratio 1 it is Eq. 4) on
the exact LR histories of the grid below, plus Gaussian noise. The "fits" written here are the true
parameters with a small deterministic perturbation and synthetic intervals: they exercise the plotting
code, they are NOT the output of the fitting engine, and nothing downstream should treat them as such.
The CMR analysis is real: ``cptlaws.cmr.cmr_from_curves`` on the fixture's curves. File names and
columns follow what the workflow writes (cptlaws.study): results/fits/<law>_<model>_<domain>_<split>.json,
<law>_predictions.parquet, cmr_*.json; results/checks/heldout.parquet and predictions.parquet.

Grid: PT constant and WSD runs; CPT from the constant run at its midpoint over 2 domains x 4 ratios x 2
CPT schedules; plus a loss-potential sweep (branches inside the WSD decay) and a CPT peak-LR sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cptlaws.areas import compute_areas
from cptlaws.io import write_json, write_parquet
from cptlaws.schedules import lr_array, phase_lrs

from .lawcurves import RunSchedule, law_curve

# The held-out table's columns, as the workflow's check step writes them (cptlaws.study.CHECK_COLUMNS).
CHECK_COLUMNS = [
    "check",
    "kind",
    "law",
    "model",
    "domain",
    "cpt_peak_lr",
    "split",
    "run_id",
    "n_fit_runs",
    "n_points",
    "mae",
    "rmse",
    "r2",
    "mean_rel",
    "worst_rel",
    "huber",
    "metric",
    "value",
    "threshold",
    "passed",
    "note",
]

PT_STEPS, CPT_STEPS, EVAL_EVERY = 2000, 1000, 50
BATCH, SEQ = 16, 128
PEAK = 2.0e-3
DOMAINS = ("code", "math")
RATIOS = (0.1, 0.3, 0.6, 1.0)
NOISE = 0.004
LAM = 0.999

PT_SCHEDULES = {
    "const": {"kind": "constant", "peak_lr": PEAK, "warmup_steps": 50},
    "wsd": {"kind": "wsd", "peak_lr": PEAK, "warmup_steps": 50, "final_lr": 2.0e-4, "decay_fraction": 0.2},
}


def cpt_schedule(name: str, peak: float = PEAK) -> dict:
    base = {"peak_lr": peak, "warmup_steps": 50, "warmup_init": "pt_end", "final_lr": peak / 10}
    if name == "cos":
        return {"kind": "cosine", **base}
    return {"kind": "wsd", **base, "decay_fraction": 0.2}


# True parameters of the replay law per (CPT domain, validation set). The hidden-PT part of a validation
# set is the same whichever domain the CPT phase trains on, so PT points are shared by both domains' fits.
_HIDDEN = {
    "general": dict(L0=3.0, A=0.55, alpha=0.5, C1=0.30, C2=0.28),
    "code": dict(L0=3.55, A=0.6, alpha=0.45, C1=0.28, C2=0.30),
    "math": dict(L0=3.45, A=0.6, alpha=0.5, C1=0.25, C2=0.27),
}
_SHIFT = {
    ("code", "general"): dict(B=0.80, E=30.0, beta=0.25, a1=0.15, a2=2.5),
    ("code", "code"): dict(B=-0.75, E=800.0, beta=0.18, a1=0.05, a2=0.69),
    ("math", "general"): dict(B=0.65, E=40.0, beta=0.3, a1=0.1, a2=3.0),
    ("math", "math"): dict(B=-0.6, E=500.0, beta=0.2, a1=0.05, a2=0.69),
}


def true_fit(domain: str, split: str) -> dict:
    role = "general" if split == "general" else "domain"
    return {
        "law": "replay",
        "law_options": {"split_role": role},
        "split": split,
        "lam": LAM,
        "params": {**_HIDDEN[split], **_SHIFT[(domain, split)]},
    }


def _grid() -> list[dict]:
    runs = []
    for name, spec in PT_SCHEDULES.items():
        runs.append(
            dict(
                run_id=f"pt-{name}",
                phase="pt",
                parent="",
                domain="",
                ratio=0.0,
                pt_schedule=name,
                cpt_schedule="",
                spec=spec,
                cpt_spec=None,
                transfer=None,
                cpt_peak=np.nan,
            )
        )

    def cpt(domain, ratio, sched, parent="const", transfer=1000, peak=PEAK, tag=""):
        rid = f"cpt-{domain}-r{ratio:g}-{sched}-from-{parent}{transfer}{tag}"
        runs.append(
            dict(
                run_id=rid,
                phase="cpt",
                parent=f"pt-{parent}",
                domain=domain,
                ratio=ratio,
                pt_schedule=parent,
                cpt_schedule=sched,
                spec=PT_SCHEDULES[parent],
                cpt_spec=cpt_schedule(sched, peak),
                transfer=transfer,
                cpt_peak=peak,
            )
        )

    for domain in DOMAINS:
        for ratio in RATIOS:
            for sched in ("cos", "wsd"):
                cpt(domain, ratio, sched)
    for t in (1700, 1850, 2000):  # loss potential: branch inside the PT anneal
        cpt("code", 0.5, "cos", parent="wsd", transfer=t)
    for peak in (1.0e-3, 4.0e-3):  # CPT peak LR
        cpt("code", 0.5, "cos", peak=peak, tag=f"-lr{peak:g}")
    return runs


def make_fixture_study(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write tables/, fits/ and checks/ of a synthetic study under ``root``; return their paths."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    tables, fits_dir, checks = root / "tables", root / "fits", root / "checks"
    run_rows, curve_rows, lr_rows, scheds = [], [], [], {}
    for r in _grid():
        run_row, frames, lr_frame, scheds[r["run_id"]] = _simulate_run(r, rng, seed)
        run_rows.append(run_row)
        curve_rows += frames
        lr_rows.append(lr_frame)
    runs = pd.DataFrame(run_rows)
    curves = pd.concat(curve_rows, ignore_index=True)
    write_parquet(tables / "runs.parquet", runs)
    write_parquet(tables / "curves.parquet", curves)
    write_parquet(tables / "lrs.parquet", pd.concat(lr_rows, ignore_index=True))
    heldout_rows, held_preds, fit_preds = [], [], []
    for domain in DOMAINS:
        for split in ("general", domain):
            heldout_rows += _write_fit(fits_dir, runs, curves, scheds, domain, split, rng, held_preds, fit_preds)
    write_parquet(fits_dir / "replay_predictions.parquet", pd.concat(fit_preds, ignore_index=True))
    write_parquet(checks / "heldout.parquet", pd.DataFrame(heldout_rows, columns=CHECK_COLUMNS))
    write_parquet(checks / "predictions.parquet", pd.concat(held_preds, ignore_index=True))
    for domain in DOMAINS:
        _write_cmr(fits_dir, runs, curves, domain)
    return {"tables": tables, "fits": fits_dir, "checks": checks}


def _simulate_run(r: dict, rng, seed: int):
    """One grid run: its runs-table row, its curve frames (one per validation set), its LR frame, its schedule."""
    if r["phase"] == "pt":
        lrs = lr_array(r["spec"], PT_STEPS)
        steps, first = PT_STEPS, 0
        splits = ["general", *DOMAINS]
    else:
        lrs = phase_lrs(r["spec"], PT_STEPS, r["transfer"], r["cpt_spec"], CPT_STEPS)
        steps, first = CPT_STEPS, r["transfer"]
        splits = ["general", r["domain"]]
    total = lrs.size
    sched = RunSchedule(r["run_id"], lrs, r["transfer"], r["spec"]["warmup_steps"], r["ratio"])
    lr_frame = pd.DataFrame({"run_id": r["run_id"], "step": np.arange(1, total + 1), "lr": lrs})
    eval_steps = np.arange(first, total + 1, EVAL_EVERY)
    areas = compute_areas(lrs, LAM, r["transfer"], r["spec"]["warmup_steps"]).at(eval_steps)
    frames = []
    for split in splits:
        domain = r["domain"] or (split if split != "general" else DOMAINS[0])
        _, clean = law_curve(true_fit(domain, split), sched, eval_steps)
        loss = clean + rng.normal(0.0, NOISE, clean.size)
        if first == 0:  # step 0: the initial model, well above the law (which diverges at S1 = 0)
            loss[0] = 7.0 + rng.normal(0.0, 0.01)
        frames.append(_curve_frame(r, split, eval_steps, lrs, areas, loss))
    return _run_row(r, lrs, steps, seed), frames, lr_frame, sched


def _run_row(r: dict, lrs: np.ndarray, steps: int, seed: int) -> dict:
    peak_pt = r["spec"]["peak_lr"]
    return dict(
        run_id=r["run_id"],
        phase=r["phase"],
        parent=r["parent"],
        model="tiny",
        n_params=420_000,
        n_nonembed=100_000,
        domain=r["domain"],
        ratio=r["ratio"],
        pt_schedule=r["pt_schedule"],
        cpt_schedule=r["cpt_schedule"],
        peak_lr=peak_pt,
        cpt_peak_lr=r["cpt_peak"],
        transfer_step=r["transfer"] if r["transfer"] is not None else np.nan,
        loss_potential=(lrs[r["transfer"] - 1] / peak_pt) if r["transfer"] else np.nan,
        steps=steps,
        total_steps=lrs.size,
        seed=seed,
        batch_size=BATCH,
        seq_len=SEQ,
        status="ok",
        wall_time_s=0.0,
        tokens_per_s=0.0,
        schedule_json=json.dumps(r["spec"]),
        cpt_schedule_json=json.dumps(r["cpt_spec"]) if r["cpt_spec"] else "",
    )


def _curve_frame(r: dict, split: str, eval_steps: np.ndarray, lrs: np.ndarray, areas, loss: np.ndarray):
    return pd.DataFrame(
        {
            "run_id": r["run_id"],
            "phase": r["phase"],
            "step": eval_steps,
            "cpt_step": eval_steps - (r["transfer"] or 0),
            "tokens": eval_steps * BATCH * SEQ,
            "lr": np.where(eval_steps > 0, lrs[np.maximum(eval_steps - 1, 0)], 0.0),
            "split": split,
            "loss": loss,
            "S1": areas.S1,
            "S2": areas.S2,
            "S1_pt": areas.S1_pt,
            "S1_cpt": areas.S1_cpt,
            "S2_pt": areas.S2_pt,
            "S2_cpt": areas.S2_cpt,
        }
    )


def _metrics(obs: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - obs
    rel = np.abs(err) / obs
    ss = np.sum((obs - obs.mean()) ** 2)
    d = np.log(pred) - np.log(obs)
    hub = np.where(np.abs(d) <= 1e-3, 0.5 * d**2, 1e-3 * (np.abs(d) - 0.5e-3))
    return dict(
        mae=float(np.mean(np.abs(err))),
        rmse=float(np.sqrt(np.mean(err**2))),
        r2=float(1 - np.sum(err**2) / ss) if ss > 0 else float("nan"),
        mean_rel=float(rel.mean()),
        worst_rel=float(rel.max()),
        huber=float(hub.sum()),
    )


def _band(fit, draws, sched, steps):
    _, pred = law_curve(fit, sched, steps)
    band = np.array([law_curve(d, sched, steps)[1] for d in draws])
    lo, hi = np.percentile(band, [2.5, 97.5], axis=0)
    return pred, np.minimum(lo, pred), np.maximum(hi, pred)


def _write_fit(fits_dir, runs, curves, scheds, domain, split, rng, held_preds, fit_preds) -> list[dict]:
    """A perturbed-truth fit of one (domain, validation set) in the study's file layout, plus the held-out
    check "cos-from-wsd" (fit without the cosine CPT runs of the main branch, predict them)."""
    fit, draws = _perturbed_fit(domain, split, rng)
    mine = runs[(runs["phase"] == "pt") | (runs["domain"] == domain)]
    held = mine[
        (mine["phase"] == "cpt")
        & (mine["cpt_schedule"] == "cos")
        & (mine["transfer_step"] == 1000)
        & mine["cpt_peak_lr"].eq(PEAK)
    ]
    held_ids = set(held["run_id"])
    draw_fits = [{**fit, "params": d} for d in draws]
    rows = []
    for rid in mine["run_id"]:
        frame = _prediction_frame(fit, draw_fits, curves, scheds[rid], rid, split)
        fit_preds.append(frame.assign(model="tiny", domain=domain, cpt_peak_lr=PEAK))
        if rid in held_ids:
            frame = frame.iloc[1:]  # held-out points: after the branch point
            held_preds.append(frame.assign(check="cos-from-wsd")[["check", *frame.columns]])
            rows.append(_check_row(frame, domain, split, rid, len(mine) - len(held)))
    fit_runs = sorted(mine["run_id"])
    n_points = int(curves[curves["run_id"].isin(fit_runs) & (curves["split"] == split)].shape[0])
    fit.update(
        diagnostics={
            "objective": 1.0e-3,
            "n_starts": 500,
            "n_near_best": 40,
            "at_bound": [],
            "n_points": n_points,
            "dropped_warmup_points": 2,
            "converged": True,
            "wall_s": 0.0,
            "synthetic_fixture": True,
        },
        fit_runs=fit_runs,
        heldout={},
        model="tiny",
        domain=domain,
        cpt_peak_lr=PEAK,
        role=fit["law_options"]["split_role"],
        analysis="replay",
    )
    write_json(fits_dir / f"replay_tiny_{domain}_{split}.json", fit)
    return rows


def _perturbed_fit(domain: str, split: str, rng) -> tuple[dict, list[dict]]:
    """The true parameters, slightly perturbed, with synthetic intervals, and 60 parameter draws from those
    intervals (a stand-in for the bootstrap, used for the bands)."""
    truth = true_fit(domain, split)
    params = {k: v * (1 + 0.002 * rng.standard_normal()) for k, v in truth["params"].items()}
    rel_sd = {k: (0.002 if k in ("L0", "alpha") else 0.02) for k in params}
    intervals = {k: sorted([v * (1 - 1.96 * rel_sd[k]), v * (1 + 1.96 * rel_sd[k])]) for k, v in params.items()}
    role = "general" if split == "general" else "domain"
    draws = [{k: v * (1 + rel_sd[k] * rng.standard_normal()) for k, v in params.items()} for _ in range(60)]
    fit = {
        **truth,
        "law_options": {"split_role": role},
        "params": params,
        "intervals": intervals,
        "bootstrap_params": draws,
        "options": {"warmup_as_peak": True},
    }
    return fit, draws


def _prediction_frame(fit, draw_fits, curves, sched, rid, split) -> pd.DataFrame:
    """Observed loss of one run on one validation set (step > 0) with the fit's prediction and band."""
    obs = curves[(curves["run_id"] == rid) & (curves["split"] == split)].sort_values("step")
    obs = obs[obs["step"] > 0]
    steps = obs["step"].to_numpy()
    pred, lo, hi = _band(fit, draw_fits, sched, steps)
    return pd.DataFrame(
        {
            "run_id": rid,
            "step": steps,
            "split": split,
            "loss": obs["loss"].to_numpy(),
            "pred": pred,
            "pred_lo": lo,
            "pred_hi": hi,
        }
    )


def _check_row(frame: pd.DataFrame, domain: str, split: str, rid: str, n_fit_runs: int) -> dict:
    """One row of the held-out check table for one predicted run."""
    m = _metrics(frame["loss"].to_numpy(), frame["pred"].to_numpy())
    return {
        "check": "cos-from-wsd",
        "kind": "runs",
        "law": "replay",
        "model": "tiny",
        "domain": domain,
        "cpt_peak_lr": PEAK,
        "split": split,
        "run_id": rid,
        "n_fit_runs": n_fit_runs,
        "n_points": len(frame),
        **m,
        "metric": "mean_rel",
        "value": m["mean_rel"],
        "threshold": 0.01,
        "passed": m["mean_rel"] <= 0.01,
        "note": "",
    }


def _write_cmr(fits_dir, runs, curves, domain) -> None:
    """The CMR analysis of the main-branch cosine runs, by the project's own ``cmr_from_curves``."""
    from cptlaws.cmr import cmr_from_curves

    sel = runs[(runs["domain"] == domain) & (runs["cpt_schedule"] == "cos") & (runs["transfer_step"] == 1000)]
    cdf = curves[curves["run_id"].isin(set(sel["run_id"]))].merge(sel[["run_id", "ratio"]], on="run_id")
    res = cmr_from_curves(
        cdf, domain_split=domain, eps=0.05, lam=1000.0, t_unit=1.0e5, source=f"fixture CMR ({domain})"
    )
    res.pop("tables", None)
    key = {
        "model": "tiny",
        "domain": domain,
        "cpt_peak_lr": PEAK,
        "cpt_schedule": "cos",
        "pt_schedule": "const",
        "transfer_step": 1000,
    }
    write_json(
        fits_dir / f"cmr_tiny_{domain}_cos_const_T1000.json",
        {**res, **key, "analysis": "cmr", "runs": sorted(sel["run_id"])},
    )
