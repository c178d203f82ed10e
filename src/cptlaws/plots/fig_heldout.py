"""Figure 4: held-out predictions — curves with bootstrap bands, parity plot, residuals against step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import LOSS_LABEL, STEP_LABEL, need, split_label
from .inputs import Study
from .style import COL2, GREY, figure, palette, panel_label

MAX_CURVES = 4  # per panel: more bands on one axis become unreadable


def _splits(pred: pd.DataFrame) -> list[str]:
    splits = list(dict.fromkeys(pred["split"]))
    return sorted(splits, key=lambda s: (s != "general", s))


def draw_heldout_curves(ax, pred: pd.DataFrame, split: str, legend: bool = True) -> None:
    p = pred[pred["split"] == split]
    runs = list(dict.fromkeys(p.sort_values(["source", "run_id"])["run_id"]))[:MAX_CURVES]
    for rid, c in zip(runs, palette(len(runs))):
        g = p[p["run_id"] == rid].sort_values("step")
        g = g.drop_duplicates("step")
        ax.fill_between(g["step"], g["pred_lo"], g["pred_hi"], color=c, alpha=0.25, lw=0)
        ax.plot(g["step"], g["pred"], color=c, lw=0.9)
        ax.plot(g["step"], g["loss"], ".", color=c, ms=2.6, mew=0, label=_short(rid))
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"{split_label(split)} loss")
    if legend:
        ax.legend(loc="best", title="held-out run (points: observed;\nline, band: prediction, 95 %)")


def _short(rid: str, n: int = 34) -> str:
    return rid if len(rid) <= n else rid[: n - 1] + "…"


def draw_parity(ax, pred: pd.DataFrame, legend: bool = True) -> None:
    splits = _splits(pred)
    for s, c in zip(splits, palette(len(splits))):
        g = pred[pred["split"] == s]
        ax.errorbar(g["loss"], g["pred"], yerr=[g["pred"] - g["pred_lo"], g["pred_hi"] - g["pred"]], fmt=".",
                    ms=2.4, mew=0, color=c, ecolor=c, elinewidth=0.4, alpha=0.8, label=split_label(s))
    lo = float(min(pred["loss"].min(), pred["pred"].min()))
    hi = float(max(pred["loss"].max(), pred["pred"].max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=GREY, lw=0.7, ls="--", label="$y=x$")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("observed loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    if legend:
        ax.legend(loc="upper left")


def draw_residuals(ax, pred: pd.DataFrame, legend: bool = False) -> None:
    splits = _splits(pred)
    for s, c in zip(splits, palette(len(splits))):
        g = pred[pred["split"] == s]
        ax.plot(g["step"], g["pred"] - g["loss"], ".", ms=2.4, mew=0, color=c, alpha=0.8, label=split_label(s))
    ax.axhline(0, color=GREY, lw=0.6, ls="--")
    r = (pred["pred"] - pred["loss"]).to_numpy()
    m = float(np.max(np.abs(r))) * 1.1 or 1e-3
    ax.set_ylim(-m, m)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("residual: predicted $-$ observed\n(nats/token)")
    if legend:
        ax.legend(loc="best")


def fig_heldout(study: Study):
    need(study, "predictions")
    pred = study.predictions
    splits = _splits(pred)
    curve_splits = splits[:2]
    fig, axes = figure(COL2, height=4.4, nrows=2, ncols=2)
    for j, s in enumerate(curve_splits):
        draw_heldout_curves(axes[0, j], pred, s, legend=True)
    if len(curve_splits) == 1:
        axes[0, 1].remove()
    draw_parity(axes[1, 0], pred)
    draw_residuals(axes[1, 1], pred)
    for ax, letter in zip([a for a in axes.flat if a.figure is fig and a in fig.axes], "abcd"):
        panel_label(ax, letter)
    return fig
