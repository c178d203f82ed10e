"""Helpers shared by the figure modules: labels, run grouping, law lookup per run."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cptlaws.errors import InputError

from .inputs import StudyOutputs
from .lawcurves import RunSchedule, law_curve, run_schedules

log = logging.getLogger("cptlaws.plots")

STEP_LABEL = "step (optimizer updates)"
LOSS_LABEL = "validation loss (nats/token)"
# Laws preferred for overlays when several fits cover a run: the most specific first.
LAW_PREFERENCE = ("replay", "replay_flex", "replay_rpt", "cpt", "lra")


class FigureSkipped(Exception):
    """A figure cannot be drawn from the available inputs; the message says which input is missing."""


def need(study: StudyOutputs, *what: str) -> None:
    missing = []
    for w in what:
        val = getattr(study, w)
        if val is None or (isinstance(val, list) and not val) or (isinstance(val, pd.DataFrame) and val.empty):
            missing.append(w)
    if missing:
        raise FigureSkipped(f"no {', '.join(missing)} input")


def fmt_lr(x: float) -> str:
    """2e-3 -> '$2{\\times}10^{-3}$' for labels."""
    if not np.isfinite(x) or x <= 0:
        return str(x)
    e = int(np.floor(np.log10(x)))
    m = x / 10**e
    m_txt = f"{m:.2g}"
    return f"${m_txt}{{\\times}}10^{{{e}}}$" if m_txt != "1" else f"$10^{{{e}}}$"


def split_label(split: str) -> str:
    return "general" if split == "general" else f"{split} (domain)"


def history_label(row) -> str:
    """Short label of a run's LR history: 'PT const', 'CPT cos ← const@1000'."""
    if row.phase == "pt":
        return f"PT {row.pt_schedule or row.run_id}"
    txt = f"CPT {row.cpt_schedule} from {row.pt_schedule}@{int(row.transfer_step)}"
    if pd.notna(row.cpt_peak_lr) and row.cpt_peak_lr != row.peak_lr:
        txt += f", peak {fmt_lr(row.cpt_peak_lr)}"
    return txt


def transfer_steps(study: StudyOutputs) -> list[int]:
    t = study.cpt_runs()["transfer_step"].dropna()
    return sorted({int(x) for x in t})


def main_branch(study: StudyOutputs, domain: str | None = None) -> pd.DataFrame:
    """CPT runs of the most common (PT parent, transfer step, CPT peak LR): the ratio x schedule grid."""
    cpt = study.cpt_runs()
    if domain is not None:
        cpt = cpt[cpt["domain"] == domain]
    if cpt.empty:
        return cpt
    key = cpt[["parent", "transfer_step", "cpt_peak_lr"]].astype(str).agg("|".join, axis=1)
    return cpt[key == key.value_counts().index[0]]


def final_losses(study: StudyOutputs) -> pd.DataFrame:
    """Last eval point of every (run, split): run_id, split, step, loss."""
    c = study.curves.sort_values(["run_id", "split", "step"])
    return c.groupby(["run_id", "split"], as_index=False).last()[["run_id", "split", "step", "loss"]]


def choose_fit(study: StudyOutputs, run_id: str, split: str, laws=None) -> dict | None:
    """The fit to overlay on (run, split): a fit whose fitted/held-out runs include the run (the most
    specific law first, LAW_PREFERENCE); ``laws`` restricts the choice."""
    fits = study.fits_for(split, run_id, laws)
    if not fits:
        return None
    rank = {law: i for i, law in enumerate(LAW_PREFERENCE)}
    return min(fits, key=lambda f: (rank.get(f["law"], 99), f.get("_path", "")))


def schedules(study: StudyOutputs) -> dict[str, RunSchedule]:
    """LR histories of every run (cached on the study object: several figures need them)."""
    cache = getattr(study, "_schedules", None)
    if cache is None:
        cache = run_schedules(study.runs, study.lrs) if study.lrs is not None and study.runs is not None else {}
        study._schedules = cache
    return cache


def law_for_run(study: StudyOutputs, run_id: str, split: str, steps=None):
    """(steps, prediction, fit) of the chosen fit along the run, or None when no fit covers it."""
    fit = choose_fit(study, run_id, split)
    sched = schedules(study).get(run_id)
    if fit is None or sched is None:
        return None
    try:
        s, pred = law_curve(fit, sched, steps)
    except InputError as exc:  # e.g. a law that needs an input this run lacks: draw the data without it
        log.warning("%s", exc)
        return None
    return s, pred, fit


def thin(x: np.ndarray, *ys: np.ndarray, n: int = 600):
    """At most ``n`` evenly spaced points of dense lines: keeps the PDFs small without visible change."""
    if x.size <= n:
        return (x, *ys)
    idx = np.unique(np.linspace(0, x.size - 1, n).round().astype(int))
    return (x[idx], *(y[idx] for y in ys))


def loss_ylim(values: np.ndarray, steps: np.ndarray, crop_frac: float = 0.1) -> tuple[float, float]:
    """Y range of loss panels: all points after the first ``crop_frac`` of steps (the init loss would
    flatten every curve); callers say so in the caption."""
    keep = steps >= crop_frac * steps.max()
    v = values[keep] if keep.any() else values
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    pad = 0.06 * (hi - lo or 1.0)
    return lo - pad, hi + pad
