"""Figure 8: a one-page summary of the study — schedules, curves with the law, the CPT decomposition,
held-out parity and the CMR — from the same panel functions as the single figures."""

from __future__ import annotations

from .common import FigureSkipped, need
from .fig_cmr import cmr_view, draw_cmr_ratio, draw_cmr_tokens
from .fig_curves import draw_decomposition, draw_loss_panel, legend_handles, representative_run
from .fig_heldout import draw_parity, draw_residuals
from .fig_schedules import draw_lr
from .inputs import Study
from .style import COL2, figure, panel_label


def fig_summary(study: Study):
    need(study, "runs", "curves", "lrs")
    domains = study.domains()
    if not domains:
        raise FigureSkipped("no CPT runs with a domain in runs.parquet")
    d = domains[0]
    fig, axes = figure(COL2, height=8.4, nrows=4, ncols=2)
    letters = iter("abcdefgh")
    draw_lr(axes[0, 0], study, "cpt", legend=True)
    axes[0, 0].legend(loc="lower left", fontsize=5.5)
    draw_loss_panel(axes[1, 0], study, d, "general", law=bool(study.fits))
    draw_loss_panel(axes[1, 1], study, d, d, law=bool(study.fits))
    axes[1, 0].set_ylabel(f"general loss (CPT on {d})")
    axes[1, 1].set_ylabel(f"{d} loss (nats/token)")
    axes[1, 1].legend(handles=legend_handles(study, law=bool(study.fits))[:-3], loc="upper right", ncols=2,
                      fontsize=5.5)
    row = representative_run(study, d) if study.fits else None
    if row is not None:
        # The decomposition shares one cell: loss on top, shift term as an inset band below.
        sub = axes[0, 1].get_subplotspec().subgridspec(2, 1, height_ratios=[1.5, 1], hspace=0.0)
        axes[0, 1].remove()
        top, bot = fig.add_subplot(sub[0]), fig.add_subplot(sub[1])
        draw_decomposition(top, bot, study, row, d, legend=True)
        top.tick_params(labelbottom=False)
        top.set_xlabel("")
        top.legend(loc="upper right", fontsize=5.5)
        bot.legend(loc="lower right", fontsize=5.5)
        cell_b = top
    else:
        axes[0, 1].text(0.5, 0.5, "no fit: decomposition not available", ha="center", transform=axes[0, 1].transAxes)
        cell_b = axes[0, 1]
    if study.predictions is not None and not study.predictions.empty:
        draw_parity(axes[2, 0], study.predictions)
        draw_residuals(axes[2, 1], study.predictions, legend=False)
    else:
        for ax in axes[2]:
            ax.text(0.5, 0.5, "no held-out predictions", ha="center", transform=ax.transAxes)
    if study.cmr:
        v = cmr_view(study.cmr[0])
        draw_cmr_ratio(axes[3, 0], study, v, "general", legend=True)
        axes[3, 0].legend(loc="best", fontsize=5.5)
        draw_cmr_tokens(axes[3, 1], v)
    else:
        for ax in axes[3]:
            ax.text(0.5, 0.5, "no CMR result", ha="center", transform=ax.transAxes)
    for ax in (axes[0, 0], cell_b, axes[1, 0], axes[1, 1], axes[2, 0], axes[2, 1], axes[3, 0], axes[3, 1]):
        panel_label(ax, next(letters))
    return fig
