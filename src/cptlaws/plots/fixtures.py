"""A small synthetic study in the contract formats (docs/design.md), so figures render without training.

Curves come from the replay form of the CPT law (laws.md section 3, Eq. 8; at ratio 1 it is Eq. 4) on
the exact LR histories of the grid below, plus Gaussian noise. The "fits" written here are the true
parameters with a small deterministic perturbation and synthetic intervals: they exercise the plotting
code, they are NOT the output of the fitting engine, and nothing downstream should treat them as such.

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

PT_STEPS, CPT_STEPS, EVAL_EVERY = 2000, 1000, 50
BATCH, SEQ = 16, 128
PEAK = 2.0e-3
DOMAINS = ("code", "math")
RATIOS = (0.25, 0.5, 0.75, 1.0)
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
    ("code", "general"): dict(B=0.50, E=30.0, beta=0.25, a1=0.15, a2=2.5),
    ("code", "code"): dict(B=-0.75, E=800.0, beta=0.18, a1=0.05, a2=0.69),
    ("math", "general"): dict(B=0.40, E=40.0, beta=0.3, a1=0.1, a2=3.0),
    ("math", "math"): dict(B=-0.6, E=500.0, beta=0.2, a1=0.05, a2=0.69),
}


def true_fit(domain: str, split: str) -> dict:
    return {"law": "replay", "split": split, "lam": LAM, "params": {**_HIDDEN[split], **_SHIFT[(domain, split)]}}


def _grid() -> list[dict]:
    runs = []
    for name, spec in PT_SCHEDULES.items():
        runs.append(dict(run_id=f"pt-{name}", phase="pt", parent="", domain="", ratio=0.0, pt_schedule=name,
                         cpt_schedule="", spec=spec, cpt_spec=None, transfer=None, cpt_peak=np.nan))

    def cpt(domain, ratio, sched, parent="const", transfer=1000, peak=PEAK, tag=""):
        rid = f"cpt-{domain}-r{ratio:g}-{sched}-from-{parent}{transfer}{tag}"
        runs.append(dict(run_id=rid, phase="cpt", parent=f"pt-{parent}", domain=domain, ratio=ratio,
                         pt_schedule=parent, cpt_schedule=sched, spec=PT_SCHEDULES[parent],
                         cpt_spec=cpt_schedule(sched, peak), transfer=transfer, cpt_peak=peak))

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
        scheds[r["run_id"]] = sched
        peak_pt = r["spec"]["peak_lr"]
        run_rows.append(dict(
            run_id=r["run_id"], phase=r["phase"], parent=r["parent"], model="tiny", n_params=420_000,
            n_nonembed=100_000, domain=r["domain"], ratio=r["ratio"], pt_schedule=r["pt_schedule"],
            cpt_schedule=r["cpt_schedule"], peak_lr=peak_pt, cpt_peak_lr=r["cpt_peak"],
            transfer_step=r["transfer"] if r["transfer"] is not None else np.nan,
            loss_potential=(lrs[r["transfer"] - 1] / peak_pt) if r["transfer"] else np.nan,
            steps=steps, total_steps=total, seed=seed, batch_size=BATCH, seq_len=SEQ, status="ok",
            wall_time_s=0.0, tokens_per_s=0.0, schedule_json=json.dumps(r["spec"]),
            cpt_schedule_json=json.dumps(r["cpt_spec"]) if r["cpt_spec"] else "",
        ))
        lr_rows.append(pd.DataFrame({"run_id": r["run_id"], "step": np.arange(1, total + 1), "lr": lrs}))
        eval_steps = np.arange(first, total + 1, EVAL_EVERY)
        areas = compute_areas(lrs, LAM, r["transfer"], r["spec"]["warmup_steps"]).at(eval_steps)
        for split in splits:
            domain = r["domain"] or (split if split != "general" else DOMAINS[0])
            _, clean = law_curve(true_fit(domain, split), sched, eval_steps)
            loss = clean + rng.normal(0.0, NOISE, clean.size)
            if first == 0:  # step 0: the initial model, well above the law (which diverges at S1 = 0)
                loss[0] = 7.0 + rng.normal(0.0, 0.01)
            curve_rows.append(pd.DataFrame({
                "run_id": r["run_id"], "phase": r["phase"], "step": eval_steps,
                "cpt_step": eval_steps - (r["transfer"] or 0), "tokens": eval_steps * BATCH * SEQ,
                "lr": np.where(eval_steps > 0, lrs[np.maximum(eval_steps - 1, 0)], 0.0), "split": split,
                "loss": loss, "S1": areas.S1, "S2": areas.S2, "S1_pt": areas.S1_pt, "S1_cpt": areas.S1_cpt,
                "S2_pt": areas.S2_pt, "S2_cpt": areas.S2_cpt,
            }))
    runs = pd.DataFrame(run_rows)
    curves = pd.concat(curve_rows, ignore_index=True)
    write_parquet(tables / "runs.parquet", runs)
    write_parquet(tables / "curves.parquet", curves)
    write_parquet(tables / "lrs.parquet", pd.concat(lr_rows, ignore_index=True))
    heldout_rows = []
    for domain in DOMAINS:
        for split in ("general", domain):
            heldout_rows += _write_fit(fits_dir, runs, curves, scheds, domain, split, rng)
    write_parquet(checks / "heldout.parquet", pd.DataFrame(heldout_rows))
    for domain in DOMAINS:
        write_json(fits_dir / f"cmr_{domain}.json", _cmr(runs, curves, domain))
    return {"tables": tables, "fits": fits_dir, "checks": checks}


def _metrics(obs: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - obs
    rel = np.abs(err) / obs
    ss = np.sum((obs - obs.mean()) ** 2)
    d = np.log(pred) - np.log(obs)
    hub = np.where(np.abs(d) <= 1e-3, 0.5 * d**2, 1e-3 * (np.abs(d) - 0.5e-3))
    return dict(mae=float(np.mean(np.abs(err))), rmse=float(np.sqrt(np.mean(err**2))),
                r2=float(1 - np.sum(err**2) / ss) if ss > 0 else float("nan"),
                mean_rel=float(rel.mean()), worst_rel=float(rel.max()), huber=float(hub.sum()))


def _write_fit(fits_dir, runs, curves, scheds, domain, split, rng) -> list[dict]:
    """A perturbed-truth fit of one (domain, validation set), its held-out predictions and metrics."""
    truth = true_fit(domain, split)
    params = {k: v * (1 + 0.002 * rng.standard_normal()) for k, v in truth["params"].items()}
    rel_sd = {k: (0.02 if k in ("L0", "alpha") else 0.08) for k in params}
    intervals = {k: sorted([v * (1 - 1.96 * rel_sd[k]), v * (1 + 1.96 * rel_sd[k])]) for k, v in params.items()}
    mine = runs[(runs["phase"] == "pt") | (runs["domain"] == domain)]
    held = mine[(mine["phase"] == "cpt") & (mine["cpt_schedule"] == "cos") & (mine["transfer_step"] == 1000)
                & mine["cpt_peak_lr"].eq(PEAK)]
    fit_runs = sorted(set(mine["run_id"]) - set(held["run_id"]))
    fit = {**truth, "params": params, "intervals": intervals}
    # Bands: the law under parameter draws from the synthetic intervals (a stand-in for the bootstrap).
    draws = [{**fit, "params": {k: v * (1 + rel_sd[k] * rng.standard_normal()) for k, v in params.items()}}
             for _ in range(60)]
    pred_rows, per_run, rows = [], {}, []
    for rid in held["run_id"]:
        obs = curves[(curves["run_id"] == rid) & (curves["split"] == split)].sort_values("step")
        steps = obs["step"].to_numpy()
        _, pred = law_curve(fit, scheds[rid], steps)
        band = np.array([law_curve(d, scheds[rid], steps)[1] for d in draws])
        lo, hi = np.percentile(band, [2.5, 97.5], axis=0)
        pred_rows.append(pd.DataFrame({"run_id": rid, "step": steps, "split": split, "loss": obs["loss"].to_numpy(),
                                       "pred": pred, "pred_lo": np.minimum(lo, pred), "pred_hi": np.maximum(hi, pred)}))
        m = _metrics(obs["loss"].to_numpy()[1:], pred[1:])  # held-out points: after the branch point
        per_run[rid] = m
        rows.append({"check": "cos-from-wsd", "law": "replay", "domain": domain, "split": split, "run_id": rid,
                     **m, "threshold": 0.01, "passed": m["mae"] <= 0.01})
    mean = {k: float(np.mean([m[k] for m in per_run.values()])) for k in next(iter(per_run.values()))}
    n_points = int(curves[curves["run_id"].isin(fit_runs) & (curves["split"] == split)].shape[0])
    fit.update(
        diagnostics={"objective": 1.0e-3, "n_starts": 500, "n_near_best": 40, "at_bound": [], "n_points": n_points,
                     "dropped_warmup_points": 2, "converged": True, "wall_s": 0.0, "synthetic_fixture": True},
        fit_runs=fit_runs, heldout={"per_run": per_run, "mean": mean},
    )
    stem = f"replay_{domain}_{split}"
    write_json(fits_dir / f"{stem}.json", fit)
    write_parquet(fits_dir / f"{stem}.predictions.parquet", pd.concat(pred_rows, ignore_index=True))
    return rows


def _power_fit(x: np.ndarray, y: np.ndarray) -> dict:
    """y = a * x**s + b by least squares over a grid of s (enough for a fixture)."""
    best = None
    for s in np.linspace(-2.0, 3.0, 501):
        if abs(s) < 1e-6:
            continue
        X = np.column_stack([x**s, np.ones_like(x)])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(np.sum((X @ coef - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, {"a": float(coef[0]), "s": float(s), "b": float(coef[1])})
    return best[1]


def _cmr(runs, curves, domain) -> dict:
    """A CMR analysis in the shape docs/figures.md documents, from the fixture's own final losses."""
    sel = runs[(runs["domain"] == domain) & (runs["cpt_schedule"] == "wsd") & (runs["transfer_step"] == 1000)]
    parent = sel["parent"].iloc[0]
    base = curves[(curves["run_id"] == parent) & (curves["step"] == 1000)].set_index("split")["loss"]
    l_gen0, l_dom0 = float(base["general"]), float(base[domain])
    eps = 0.05
    out = {"domain": domain, "general_split": "general", "domain_split": domain, "eps": eps, "lam": 1000.0,
           "L_gen0": l_gen0, "L_dom0": l_dom0, "token_unit": "tokens"}
    R, Lg, Ld, per_ratio = [], [], [], []
    for row in sel.sort_values("ratio").itertuples():
        c = curves[(curves["run_id"] == row.run_id)].sort_values("step")
        g = c[c["split"] == "general"]
        d = c[c["split"] == domain]
        R.append(row.ratio)
        Lg.append(float(g["loss"].iloc[-1]))
        Ld.append(float(d["loss"].iloc[-1]))
        T = (g["tokens"] - g["tokens"].iloc[0]).to_numpy(np.float64)[1:]
        per_ratio.append({"ratio": float(row.ratio), "T": T.tolist(),
                          "dL_gen": (g["loss"].to_numpy()[1:] - l_gen0).tolist(),
                          "dL_dom": (d["loss"].to_numpy()[1:] - l_dom0).tolist()})
    R, Lg, Ld = map(np.asarray, (R, Lg, Ld))
    t_max = per_ratio[0]["T"][-1]
    fg, fd = _power_fit(R, Lg), _power_fit(R, Ld)
    grid = np.linspace(1e-3, 1.0, 2000)

    def feasible(fit):
        return grid[fit["a"] * grid ** fit["s"] + fit["b"] <= l_gen0 + eps]

    ok = feasible(fg)
    cmr = float(ok.max()) if ok.size else None
    # CMR at shorter token budgets: the same analysis on the general losses after T tokens.
    Ts, cmr_T = [], []
    for j in range(3, len(per_ratio[0]["T"])):
        okj = feasible(_power_fit(R, np.array([l_gen0 + pr["dL_gen"][j] for pr in per_ratio])))
        if okj.size:
            Ts.append(per_ratio[0]["T"][j])
            cmr_T.append(float(okj.max()))
    Ts = np.asarray(Ts)
    law = _power_fit(Ts / t_max, np.asarray(cmr_T))
    out.update({
        "T_max": float(t_max),
        "loss_vs_ratio": {"general": {**fg, "R": R.tolist(), "L": Lg.tolist()},
                          "domain": {**fd, "R": R.tolist(), "L": Ld.tolist()}},
        "per_ratio": per_ratio,
        "feasible": [float(ok.min()), float(ok.max())] if ok.size else None,
        "cmr": cmr,
        "cmr_vs_tokens": {"T": Ts.tolist(), "cmr": cmr_T, "law": law, "T_unit": float(t_max)},
    })
    return out
