"""Held-out metrics (laws.md section 4): MAE, RMSE, R^2, mean / worst relative error, Huber."""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError

KEYS = ("mae", "rmse", "r2", "mean_rel", "worst_rel", "huber", "n")


def metrics(obs, pred, huber_delta: float = 1e-3) -> dict:
    """Metrics of predictions ``pred`` against observed losses ``obs`` (NaN predictions are an error).

    Relative errors are fractions (0.001 = 0.1 %); Huber is the mean Huber_delta of log residuals.
    """
    obs = np.asarray(obs, float)
    pred = np.asarray(pred, float)
    if obs.shape != pred.shape or obs.ndim != 1 or obs.size == 0:
        raise InputError(
            f"metrics: obs and pred must be non-empty 1-D arrays of equal length ({obs.shape} vs {pred.shape})"
        )
    if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(pred))):
        raise InputError("metrics: obs / pred contain NaN or inf")
    err = pred - obs
    rel = np.abs(err) / np.abs(obs)
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log(obs) - np.log(pred)
    a = np.abs(r)
    hub = np.where(a <= huber_delta, 0.5 * r * r, huber_delta * (a - 0.5 * huber_delta))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "mean_rel": float(np.mean(rel)),
        "worst_rel": float(np.max(rel)),
        "huber": float(np.mean(hub)) if np.all(np.isfinite(hub)) else float("nan"),
        "n": int(obs.size),
    }


def per_curve(groups: dict[str, tuple], huber_delta: float = 1e-3) -> dict:
    """``{"per_run": {name: metrics}, "mean": averaged over curves}`` from ``{name: (obs, pred)}``."""
    per = {k: metrics(o, p, huber_delta) for k, (o, p) in groups.items()}
    if not per:
        return {"per_run": {}, "mean": {}}
    mean = {k: float(np.mean([m[k] for m in per.values()])) for k in KEYS if k != "n"}
    mean["n"] = int(sum(m["n"] for m in per.values()))
    return {"per_run": per, "mean": mean}


def evaluate(fit, curves, huber_delta: float = 1e-3, drop_warmup: bool = True) -> dict:
    """Held-out metrics of a FitResult on curves (points a fit would use: step > 0, past warm-up)."""
    from cptlaws.fitting import select_points

    sel, _, _ = select_points(curves, drop_warmup)
    preds = fit.predict_arrays(sel)
    groups = {}
    for c, p in zip(sel, preds):
        key = c.run_id if c.split in ("general", fit.split) else f"{c.run_id}:{c.split}"
        groups[key] = (c.loss, p)
    return per_curve(groups, huber_delta)
