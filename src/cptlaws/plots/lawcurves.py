"""Evaluate a saved fit (FitResult.to_dict() JSON) along a run's exact LR history, for law overlays.

``law_curve`` asks the law library (``FitResult.from_dict(...).predict_arrays``) so the drawn line is
exactly the fitted law, for every law it knows. The closed forms here (``lra``, ``cpt``, ``replay``,
``replay_rpt``; laws.md sections 2-3, areas from ``cptlaws.areas`` at the fit's lambda) serve
``decompose`` -- the hidden PT curve and the distribution-shift term, which the library does not
expose -- and a fit JSON the library cannot rebuild. tests/test_plots.py checks the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cptlaws.areas import DEFAULT_LAMBDA, Areas, compute_areas
from cptlaws.errors import InputError

DRAWABLE_LAWS = ("lra", "cpt", "replay", "replay_rpt", "replay_flex")

# Greek spellings (laws.md) and ASCII spellings (fit JSON) both accepted.
_ALIASES = {"α": "alpha", "β": "beta", "γ": "gamma", "ΔL": "dL"}


def norm_params(params: Mapping[str, float]) -> dict[str, float]:
    return {_ALIASES.get(k, k): float(v) for k, v in params.items()}


def split_role(fit: Mapping) -> str:
    """Which form of the replay law applies: the general (D_pt) or the domain (D_cpt) validation set."""
    role = (fit.get("law_options") or {}).get("split_role") or fit.get("role")
    if role:
        return str(role)
    return "general" if fit.get("split") == "general" else "domain"


@dataclass(frozen=True)
class RunSchedule:
    """What a law needs about one run: its whole LR history (update 1..N), transfer step, ratio."""

    run_id: str
    lrs: np.ndarray
    transfer: int | None
    warmup_steps: int
    ratio: float
    n_params: float | None = None  # millions of non-embedding parameters (the size law's N)

    def areas(self, lam: float) -> Areas:
        return compute_areas(self.lrs, lam=lam, transfer=self.transfer, warmup_steps=self.warmup_steps)


def run_schedules(runs: pd.DataFrame, lrs: pd.DataFrame) -> dict[str, RunSchedule]:
    """One RunSchedule per run that has an LR history in ``lrs``."""
    out = {}
    by_run = {rid: g.sort_values("step")["lr"].to_numpy(np.float64) for rid, g in lrs.groupby("run_id", sort=False)}
    for row in runs.itertuples(index=False):
        rid = str(row.run_id)
        if rid not in by_run:
            continue
        cpt = row.phase == "cpt"
        transfer = int(row.transfer_step) if cpt and pd.notna(row.transfer_step) else None
        out[rid] = RunSchedule(
            run_id=rid,
            lrs=by_run[rid],
            transfer=transfer,
            warmup_steps=_pt_warmup(row),
            ratio=float(row.ratio) if cpt and pd.notna(row.ratio) else 0.0,
            n_params=_millions(getattr(row, "n_nonembed", None)),
        )
    return out


def _millions(n) -> float | None:
    try:
        n = float(n)
    except (TypeError, ValueError):
        return None
    return n / 1e6 if np.isfinite(n) and n > 0 else None


def _pt_warmup(row) -> int:
    """PT warm-up steps (counted at peak in the areas, laws.md section 1) from the run's schedule_json."""
    text = getattr(row, "schedule_json", None)
    if not isinstance(text, str) or not text.strip():
        return 0
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"runs table: run {row.run_id!r}: schedule_json is not valid JSON ({exc})") from None
    return int(spec.get("warmup_steps", 0) or 0) if isinstance(spec, Mapping) else 0


def _need(p: Mapping, names, fit: Mapping) -> None:
    missing = [n for n in names if n not in p]
    if missing:
        raise InputError(f"fit {fit.get('_path', fit.get('law'))}: law {fit.get('law')!r} misses parameters {missing}")


def decompose(fit: Mapping, areas: Areas, ratio: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(hidden PT curve, distribution-shift term) of the law at every index of ``areas``; their sum is the law."""
    law = fit.get("law")
    if law not in DRAWABLE_LAWS:
        raise InputError(
            f"fit {fit.get('_path', law)}: law {law!r} cannot be drawn (drawable: {', '.join(DRAWABLE_LAWS)})"
        )
    p = norm_params(fit["params"])
    with np.errstate(divide="ignore", invalid="ignore"):
        S1 = areas.S1
        power = np.where(S1 > 0, S1, np.nan) ** -p.get("alpha", np.nan)
    if law == "lra":
        _need(p, ("L0", "A", "alpha", "C"), fit)
        return p["L0"] + p["A"] * power - p["C"] * areas.S2, np.zeros_like(S1)
    _need(p, ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta"), fit)
    shift = p["B"] * (1.0 - (1.0 + p["E"] * areas.S1_cpt) ** -p["beta"])
    c2 = p["C2"]
    if law in ("replay", "replay_rpt", "replay_flex"):
        _need(p, ("a1", "a2"), fit)
        r_cpt = float(ratio)
        r_pt = 1.0 - r_cpt
        general = split_role(fit) == "general"
        # Eq. 8: the annealing factor uses r_pt for the general set and r_cpt (replay_rpt: r_pt) for the domain set.
        r_anneal = r_pt if general or law == "replay_rpt" else r_cpt
        c2 = c2 * np.exp(p["a1"] * r_anneal)
        if law == "replay_flex":  # one signed, normalised factor for both sets
            a2 = p["a2"]
            mix = r_cpt if abs(a2) < 1e-6 else np.expm1(a2 * r_cpt) / np.expm1(a2)
        else:
            mix = (1.0 - np.exp(-p["a2"] * r_cpt)) if general else (np.exp(p["a2"] * r_cpt) - 1.0)
        shift = shift * mix
    hidden = p["L0"] + p["A"] * power - p["C1"] * areas.S2_pt - c2 * areas.S2_cpt
    return hidden, shift


def law_curve(fit: Mapping, sched: RunSchedule, steps=None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, predicted loss) of ``fit`` along ``sched``; every step 1..N unless ``steps`` is given.
    NaN where the law is undefined (step 0: no LR area yet)."""
    if steps is None:
        steps = np.arange(1, sched.lrs.size + 1)
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size and (steps.min() < 0 or steps.max() > sched.lrs.size):
        raise InputError(f"run {sched.run_id!r}: steps beyond its LR history ({sched.lrs.size} updates)")
    pred = _library_predict(fit, sched, steps)
    if pred is None:
        areas = sched.areas(float(fit.get("lam") or DEFAULT_LAMBDA))
        with np.errstate(all="ignore"):
            hidden, shift = decompose(fit, areas.at(steps), sched.ratio)
        pred = hidden + shift
    return steps, np.where(np.isfinite(pred), pred, np.nan)


def _library_predict(fit: Mapping, sched: RunSchedule, steps: np.ndarray) -> np.ndarray | None:
    """The law library's prediction, or None when it cannot rebuild this fit (then the closed form is used)."""
    try:
        from cptlaws.fitting import FitResult
        from cptlaws.fitting.curves import Curve
    except ImportError:
        return None
    try:
        res = FitResult.from_dict({k: v for k, v in fit.items() if not k.startswith("_")})
        curve = Curve(
            run_id=sched.run_id,
            lrs=sched.lrs,
            steps=steps,
            loss=np.ones(steps.size),
            transfer=sched.transfer,
            ratio=sched.ratio,
            n_params=sched.n_params,
            warmup_steps=sched.warmup_steps,
            split=str(fit.get("split", "")),
        )
        return np.asarray(res.predict_arrays([curve])[0], dtype=float)
    except (ValueError, KeyError, TypeError) as exc:
        if fit.get("law") in DRAWABLE_LAWS:
            return None
        raise InputError(
            f"fit {fit.get('_path', fit.get('law'))}: cannot evaluate law {fit.get('law')!r} on run "
            f"{sched.run_id!r}: {exc}"
        ) from None
