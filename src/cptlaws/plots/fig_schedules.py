"""Figure 1: the LR schedules of the study and their areas S1 (forward) and S2 (annealing), PT and CPT."""

from __future__ import annotations

import hashlib

import matplotlib.pyplot as plt
import numpy as np

from .common import STEP_LABEL, history_label, need, schedules, thin
from .inputs import StudyOutputs
from .style import COL2, palette, panel_label, sci_scale

AREA_LAMBDA = 0.999


def unique_histories(study: StudyOutputs, phase: str, limit: int = 8):
    """One representative run per distinct LR history (ratios and domains share histories)."""
    scheds = schedules(study)
    seen, out = set(), []
    for row in study.runs[study.runs["phase"] == phase].itertuples(index=False):
        s = scheds.get(row.run_id)
        if s is None:
            continue
        h = hashlib.sha1(np.round(s.lrs, 14).tobytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append((row, s))
    return out[:limit]


def draw_lr(ax, study: StudyOutputs, phase: str, legend: bool = True, lam: float = AREA_LAMBDA):
    """LR against step of every distinct history of a phase; transfer points marked."""
    items = unique_histories(study, phase)
    colors = palette(len(items))
    div, unit = sci_scale(np.concatenate([s.lrs for _, s in items]) if items else [])
    for (row, s), c in zip(items, colors):
        x = np.arange(1, s.lrs.size + 1)
        x, y = thin(x, s.lrs / div)
        ax.plot(x, y, color=c, label=history_label(row))
        if s.transfer:
            ax.plot(
                [s.transfer], [s.lrs[s.transfer - 1] / div], marker="o", ms=3, color=c, mec="white", mew=0.4, zorder=3
            )
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(r"LR $\eta$" + unit)
    ax.set_ylim(bottom=0)
    if legend:
        ax.legend(loc="lower left", ncols=1)
    return items, colors


def fig_schedules(study: StudyOutputs, lam: float = AREA_LAMBDA):
    need(study, "runs", "lrs")
    phases = [p for p in ("pt", "cpt") if unique_histories(study, p)]
    n_items = {p: len(unique_histories(study, p)) for p in phases}
    # One row per phase, each with its own legend underneath: no curve is hidden behind a legend.
    heights = [1.9 + 0.16 * np.ceil(n_items[p] / 2) for p in phases]
    fig = plt.figure(figsize=(COL2, sum(heights) + 0.1), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(phases), 1, height_ratios=heights))
    letters = iter("abcdef")
    for sf, phase in zip(subfigs, phases):
        axes = sf.subplots(1, 3)
        items, colors = draw_lr(axes[0], study, phase, legend=False)
        for (_, s), c in zip(items, colors):
            areas = s.areas(lam)
            x = np.arange(0, s.lrs.size + 1)
            xs, s1, s2 = thin(x, areas.S1, areas.S2)
            axes[1].plot(xs, s1, color=c)
            axes[2].plot(xs, s2, color=c)
            if s.transfer:
                for ax, arr in ((axes[1], areas.S1), (axes[2], areas.S2)):
                    ax.plot([s.transfer], [arr[s.transfer]], marker="o", ms=3, color=c, mec="white", mew=0.4)
        axes[1].set_ylabel(r"forward area $S_1$")
        axes[2].set_ylabel(r"annealing area $S_2$")
        for ax in axes:
            ax.set_xlabel(STEP_LABEL)
            panel_label(ax, next(letters))
        title = "PT runs:" if phase == "pt" else "CPT runs (whole history; dot = transfer):"
        if phase == "pt":
            title = rf"PT runs ($S_1=\sum\eta_i$, $S_2$ with momentum $\lambda={lam:g}$):"
        handles, labels = axes[0].get_legend_handles_labels()
        sf.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=2 if len(labels) > 2 else len(labels),
            title=title,
            title_fontproperties={"size": 7},
        )
    return fig
