"""Figure 5: effect of loss potential, CPT peak LR and replay ratio on the final general and domain loss.

For each factor, the largest group of CPT runs that differ only in that factor is drawn: observed final
losses (filled markers), the fitted law's prediction for the same runs (open markers) and a law line.
The line sweeps the factor continuously where the law can say what happens in between: the ratio for
the replay law (an input of the law), the CPT peak LR and the loss potential by rebuilding the reference
run's LR history (phase_lrs) with the CPT peak scaled / the branch moved along the parent's schedule.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd

from cptlaws.errors import InputError, ScheduleError
from cptlaws.schedules import lr_array, phase_lrs

from .common import FigureSkipped, choose_fit, final_losses, fmt_lr, law_for_run, need, schedules, split_label
from .inputs import StudyOutputs
from .lawcurves import RunSchedule, law_curve
from .style import COL2, LAW_COLOR, figure, palette, panel_label

FACTORS = {
    "loss_potential": "loss potential $\\eta_T/\\eta_{\\max}^{\\rm PT}$",
    "cpt_peak_lr": "CPT peak LR",
    "ratio": "domain ratio $r$ (replay $=1-r$)",
}
CONTEXT = ("domain", "cpt_schedule", "steps", "ratio", "cpt_peak_lr", "loss_potential")


def factor_group(study: StudyOutputs, factor: str) -> pd.DataFrame:
    """The largest set of finished CPT runs that share every other factor and differ in ``factor``."""
    cpt = study.cpt_runs()
    cpt = cpt[cpt["status"] == "ok"] if "status" in cpt.columns else cpt
    ctx = [c for c in CONTEXT if c != factor]
    key = cpt[ctx].round(6).astype(str).agg("|".join, axis=1) if len(cpt) else pd.Series(dtype=str)
    best = None
    for _, g in cpt.groupby(key, sort=True):
        n = g[factor].round(6).nunique()
        if n >= 2 and (best is None or n > best[factor].round(6).nunique()):
            best = g
    return best if best is not None else cpt.iloc[:0]


def _spec(text) -> dict:
    return json.loads(text) if isinstance(text, str) and text else {}


def _rebuild(study: StudyOutputs, ref, *, peak_scale: float = 1.0, transfer: int | None = None) -> RunSchedule | None:
    """The reference run's LR history with the CPT peak scaled or the branch moved; None if not rebuildable."""
    parent = study.runs[study.runs["run_id"] == ref.parent]
    pt_spec, cpt_spec = _spec(ref.schedule_json), _spec(getattr(ref, "cpt_schedule_json", ""))
    if parent.empty or not pt_spec or not cpt_spec:
        return None
    cpt_spec = dict(cpt_spec)
    for k in ("peak_lr", "final_lr"):
        if isinstance(cpt_spec.get(k), (int, float)):
            cpt_spec[k] = cpt_spec[k] * peak_scale
    t = int(transfer if transfer is not None else ref.transfer_step)
    try:
        lrs = phase_lrs(pt_spec, int(parent["steps"].iloc[0]), t, cpt_spec, int(ref.steps))
    except ScheduleError:
        return None
    base = schedules(study)[ref.run_id]
    return replace(base, lrs=lrs, transfer=t)


def _law_line(study: StudyOutputs, factor: str, group: pd.DataFrame, split: str, fit: dict):
    """(x, y) of the law along the factor, or None when the law cannot interpolate it."""
    ref = group.sort_values(factor).iloc[len(group) // 2]
    base = schedules(study).get(ref.run_id)
    if base is None:
        return None
    xs, ys = [], []
    if factor == "ratio" and fit["law"] in ("replay", "replay_rpt", "replay_flex"):
        for r in np.linspace(0.0, 1.0, 41):
            xs.append(r)
            ys.append(law_curve(fit, replace(base, ratio=float(r)), [base.lrs.size])[1][0])
    elif factor == "cpt_peak_lr":
        lo, hi = group[factor].min(), group[factor].max()
        for p in np.geomspace(lo, hi, 25):
            s = _rebuild(study, ref, peak_scale=p / ref.cpt_peak_lr)
            if s is not None:
                xs.append(p)
                ys.append(law_curve(fit, s, [s.lrs.size])[1][0])
    elif factor == "loss_potential":
        # Move the branch along the parent with the most runs in the group (e.g. inside a WSD decay).
        parent = group["parent"].value_counts().index[0]
        sub = group[group["parent"] == parent]
        if sub["transfer_step"].nunique() < 2:
            return None
        ref = sub.iloc[0]
        prow = study.runs[study.runs["run_id"] == parent].iloc[0]
        pt_lrs = lr_array(_spec(prow.schedule_json), int(prow.steps))
        for t in np.unique(np.linspace(sub["transfer_step"].min(), sub["transfer_step"].max(), 25).round()):
            s = _rebuild(study, ref, transfer=int(t))
            if s is not None:
                xs.append(pt_lrs[int(t) - 1] / float(prow.peak_lr))
                ys.append(law_curve(fit, s, [s.lrs.size])[1][0])
    if len(xs) < 2:
        return None
    order = np.argsort(xs)
    return np.asarray(xs)[order], np.asarray(ys)[order]


def draw_effect(
    ax,
    study: StudyOutputs,
    factor: str,
    split_kind: str,
    group: pd.DataFrame,
    finals: pd.DataFrame,
    color: str,
    legend: bool = False,
) -> bool:
    """One panel; returns False when the group has no data for this split."""
    domain = group["domain"].iloc[0]
    split = "general" if split_kind == "general" else domain
    f = finals[finals["split"] == split].set_index("run_id")
    rows = [r for r in group.itertuples(index=False) if r.run_id in f.index]
    if not rows:
        return False
    x = np.array([getattr(r, factor) for r in rows], dtype=float)
    y = np.array([f.loc[r.run_id, "loss"] for r in rows])
    ax.plot(x, y, "o", color=color, ms=4, label="observed", zorder=3)
    px, py = [], []
    for r in rows:
        res = law_for_run(study, r.run_id, split, [int(f.loc[r.run_id, "step"])])
        if res is not None:
            px.append(getattr(r, factor))
            py.append(res[1][0])
    if px:
        ax.plot(px, py, "o", mfc="none", mec=LAW_COLOR, ms=5.5, mew=0.8, label="law at the runs", zorder=4)
        fit = choose_fit(study, rows[0].run_id, split)
        try:
            line = _law_line(study, factor, group, split, fit) if fit else None
        except (InputError, ScheduleError):
            line = None
        if line is None:  # connect the law's values at the runs
            o = np.argsort(px)
            line = (np.asarray(px)[o], np.asarray(py)[o])
        ax.plot(*line, color=LAW_COLOR, lw=0.9, label=f"law ({fit['law']})" if fit else "law", zorder=2)
    if factor == "cpt_peak_lr":
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(x)), [fmt_lr(v) for v in sorted(set(x))])
        ax.minorticks_off()
    ax.set_xlabel(FACTORS[factor])
    ax.set_ylabel(f"final {split_label(split)} loss\n(nats/token)")
    if legend:
        ax.legend(loc="best")
    return True


def _context(group: pd.DataFrame, factor: str) -> str:
    r = group.iloc[0]
    parts = [f"{r.domain}", f"CPT {r.cpt_schedule}"]
    if factor != "ratio":
        parts.append(f"$r={r.ratio:g}$")
    if factor != "cpt_peak_lr":
        parts.append(f"peak {fmt_lr(r.cpt_peak_lr)}")
    if factor != "loss_potential":
        parts.append(f"LP {r.loss_potential:.2g}")
    return ", ".join(parts)


def fig_effects(study: StudyOutputs):
    need(study, "runs", "curves")
    groups = {f: factor_group(study, f) for f in FACTORS}
    groups = {f: g for f, g in groups.items() if len(g)}
    if not groups:
        raise FigureSkipped("no group of CPT runs varies loss potential, CPT peak LR or ratio alone")
    finals = final_losses(study)
    fig, axes = figure(COL2, height=3.9, nrows=2, ncols=len(groups))
    colors = palette(2)
    letters = iter("abcdefgh")
    for j, (factor, g) in enumerate(groups.items()):
        for i, kind in enumerate(("general", "domain")):
            ax = axes[i, j]
            if not draw_effect(ax, study, factor, kind, g, finals, colors[i], legend=(i == 0 and j == 0)):
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
            panel_label(ax, next(letters))
        axes[0, j].set_title(_context(g, factor), fontsize=6.5)
    return fig
