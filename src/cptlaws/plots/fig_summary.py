"""Figure 8: a one-page summary of the study — schedules, curves with the law, the CPT decomposition,
held-out parity and residuals, and the CMR — drawn with the same panel functions as the single figures.
Panels whose inputs are missing say so in place, so the page layout is always the same."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from .common import STEP_LABEL, FigureSkipped, history_label, main_branch, need, schedules, thin
from .fig_cmr import cmr_view, draw_cmr_ratio, draw_cmr_tokens
from .fig_cmr import legend_handles as cmr_handles
from .fig_curves import draw_decomposition, draw_loss_panel, legend_handles, representative_run
from .fig_heldout import draw_parity, draw_residuals, study_law_predictions
from .inputs import StudyOutputs
from .style import COL2, palette, panel_label, sci_scale


def _draw_lr_main(ax, study: StudyOutputs, domain: str) -> None:
    """LR histories of the main CPT branch of ``domain`` (one per CPT schedule) and their PT parents."""
    main = main_branch(study, domain).drop_duplicates("cpt_schedule")
    parents = study.runs[study.runs["run_id"].isin(set(main["parent"]))]
    rows = list(parents.itertuples(index=False)) + list(main.itertuples(index=False))
    scheds = schedules(study)
    rows = [r for r in rows if r.run_id in scheds]
    div, unit = sci_scale(np.concatenate([scheds[r.run_id].lrs for r in rows]))
    for r, c in zip(rows, palette(len(rows))):
        s = scheds[r.run_id]
        x, y = thin(np.arange(1, s.lrs.size + 1), s.lrs / div)
        ax.plot(
            x,
            y,
            color=c,
            lw=1.0 if r.phase == "pt" else 1.2,
            ls="--" if r.phase == "pt" else "-",
            label=history_label(r),
        )
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(r"LR $\eta$" + unit)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=5.5)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def fig_summary(study: StudyOutputs):
    need(study, "runs", "curves", "lrs")
    domains = study.domains()
    if not domains:
        raise FigureSkipped("no CPT runs with a domain in runs.parquet")
    d = domains[0]
    law = bool(study.fits)
    fig = plt.figure(figsize=(COL2, 9.0), layout="constrained")
    r1, r2, r3, r4 = fig.subfigures(4, 1, height_ratios=[2.0, 2.35, 2.0, 2.65])
    letters = iter("abcdefgh")

    a1 = r1.subplots(1, 2)
    _draw_lr_main(a1[0], study, d)
    panel_label(a1[0], next(letters))
    row = representative_run(study, d) if law else None
    if row is not None:
        # The decomposition shares one cell: loss on top, shift term below.
        sub = a1[1].get_subplotspec().subgridspec(2, 1, height_ratios=[1.4, 1], hspace=0.05)
        a1[1].remove()
        top, bot = r1.add_subplot(sub[0]), r1.add_subplot(sub[1], sharex=None)
        draw_decomposition(top, bot, study, row, d, legend=False)
        top.tick_params(labelbottom=False)
        top.set_ylabel(f"{d} loss")
        bot.set_ylabel("shift")
        handles = [
            Line2D([], [], color="#0072B2", marker=".", ls="none", ms=4, label="observed"),
            Line2D([], [], color="black", lw=0.9, label="law"),
            Line2D([], [], color="#D55E00", ls="--", label="hidden PT"),
            Line2D([], [], color="#009E73", label="shift term"),
        ]
        top.legend(handles=handles, loc="upper right", fontsize=5.5, ncols=2)
        panel_label(top, next(letters))
    else:
        _note(a1[1], "no fit: decomposition not available")
        panel_label(a1[1], next(letters))

    a2 = r2.subplots(1, 2)
    draw_loss_panel(a2[0], study, d, "general", law=law)
    pt_h = draw_loss_panel(a2[1], study, d, d, law=law)
    a2[0].set_ylabel(f"general loss (CPT on {d})")
    a2[1].set_ylabel(f"{d} (domain) loss")
    seen = {}
    for h in legend_handles(study, law=law) + pt_h:
        seen.setdefault(h.get_label(), h)
    r2.legend(handles=list(seen.values()), loc="outside lower center", ncols=6, fontsize=5.5)
    for ax in a2:
        panel_label(ax, next(letters))

    a3 = r3.subplots(1, 2)
    if study.predictions is not None and not study.predictions.empty:
        draw_parity(a3[0], study_law_predictions(study), legend=False)
        draw_residuals(a3[1], study_law_predictions(study))
        h, lab = a3[0].get_legend_handles_labels()
        r3.legend(h, lab, loc="outside right center", fontsize=5.5, title="held-out", title_fontproperties={"size": 6})
    else:
        for ax in a3:
            _note(ax, "no held-out predictions")
    for ax in a3:
        panel_label(ax, next(letters))

    a4 = r4.subplots(1, 2)
    if study.cmr:
        v = cmr_view(study.cmr[0])
        draw_cmr_ratio(a4[0], v, "general")
        draw_cmr_tokens(a4[1], v)
        keep = [0, 2, 3, 5, 6, 8, 11]  # the encodings these two panels use
        hs = [cmr_handles(v["eps"])[i] for i in keep]
        r4.legend(handles=hs, loc="outside lower center", ncols=4, fontsize=5.5)
    else:
        for ax in a4:
            _note(ax, "no CMR result")
    for ax in a4:
        panel_label(ax, next(letters))
    return fig
