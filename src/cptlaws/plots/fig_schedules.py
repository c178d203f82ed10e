"""Figure 1: the LR schedules of the study and their areas S1 (forward) and S2 (annealing), PT and CPT."""

from __future__ import annotations

import hashlib

import numpy as np

from .common import STEP_LABEL, history_label, need, schedules, thin
from .inputs import Study
from .style import COL2, figure, palette, panel_label

AREA_LAMBDA = 0.999


def unique_histories(study: Study, phase: str, limit: int = 8):
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


def draw_lr(ax, study: Study, phase: str, legend: bool = True, lam: float = AREA_LAMBDA):
    """LR against step of every distinct history of a phase; transfer points marked."""
    items = unique_histories(study, phase)
    colors = palette(len(items))
    for (row, s), c in zip(items, colors):
        x = np.arange(1, s.lrs.size + 1)
        x, y = thin(x, s.lrs)
        ax.plot(x, y, color=c, label=history_label(row))
        if s.transfer:
            ax.plot([s.transfer], [s.lrs[s.transfer - 1]], marker="o", ms=3, color=c, mec="white", mew=0.4, zorder=3)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(r"learning rate $\eta$")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.set_ylim(bottom=0)
    if legend:
        ax.legend(loc="lower left", ncols=1)
    return items, colors


def fig_schedules(study: Study):
    need(study, "runs", "lrs")
    phases = [p for p in ("pt", "cpt") if unique_histories(study, p)]
    fig, axes = figure(COL2, height=2.05 * len(phases) + 0.5, nrows=len(phases), ncols=3)
    letters = iter("abcdef")
    for i, phase in enumerate(phases):
        items, colors = draw_lr(axes[i, 0], study, phase, legend=False)
        for (row, s), c in zip(items, colors):
            areas = s.areas(AREA_LAMBDA)
            x = np.arange(0, s.lrs.size + 1)
            xs, s1, s2 = thin(x, areas.S1, areas.S2)
            axes[i, 1].plot(xs, s1, color=c)
            axes[i, 2].plot(xs, s2, color=c)
            if s.transfer:
                for ax, arr in ((axes[i, 1], areas.S1), (axes[i, 2], areas.S2)):
                    ax.plot([s.transfer], [arr[s.transfer]], marker="o", ms=3, color=c, mec="white", mew=0.4)
        axes[i, 1].set_ylabel(r"forward area $S_1$ (LR$\cdot$steps)")
        axes[i, 2].set_ylabel(rf"annealing area $S_2$ ($\lambda={AREA_LAMBDA:g}$)")
        for ax in axes[i]:
            ax.set_xlabel(STEP_LABEL)
            panel_label(ax, next(letters))
        title = "PT runs" if phase == "pt" else "CPT runs (whole history; dot = transfer)"
        # One legend per row, outside the panels, so no curve is hidden behind it.
        handles, labels = axes[i, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right " + ("upper" if i == 0 else "lower"), title=title,
                   alignment="left")
    return fig
