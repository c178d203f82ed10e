"""Figure 4: held-out predictions — curves with bootstrap bands, parity plot, residuals against step."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import STEP_LABEL, need, split_label
from .inputs import StudyOutputs
from .style import COL2, GREY, palette, panel_label

MAX_CURVES = 4  # per panel: more bands on one axis become unreadable
# Validation sets get colours and markers of their own, distinct from the per-run colours of (a), (b).
SPLIT_COLORS = ["#000000", "#CC79A7", "#56B4E9", "#999933", "#D55E00"]
SPLIT_MARKERS = ["o", "s", "^", "D", "v"]


def _split_style(splits):
    return {s: (SPLIT_COLORS[i % 5], SPLIT_MARKERS[i % 5]) for i, s in enumerate(splits)}


def _splits(pred: pd.DataFrame) -> list[str]:
    splits = list(dict.fromkeys(pred["split"]))
    return sorted(splits, key=lambda s: (s != "general", s))


def first_check(pred: pd.DataFrame) -> pd.DataFrame:
    """Predictions of one check (the first with the most runs predicted): curves of different checks of
    the same run would overlap."""
    if "check" not in pred.columns:
        return pred
    n = pred.groupby("check", sort=False)["run_id"].nunique()
    return pred[pred["check"] == n.idxmax()]


def study_law_predictions(study: StudyOutputs) -> pd.DataFrame:
    """Held-out predictions of the checks that use a law the study fits: a check kept only to compare with
    another law (e.g. Eq. 8 against the study's replay law) would otherwise fill the pooled parity and
    residual panels with a law the study does not use."""
    pred = study.predictions
    if "check" not in pred.columns or study.heldout is None or not study.fits:
        return pred
    laws = {f["law"] for f in study.fits}
    by_check = study.heldout.drop_duplicates("check").set_index("check")["law"]
    keep = [c for c in pred["check"].unique() if by_check.get(c) in laws]
    return pred[pred["check"].isin(keep)] if keep else pred


def draw_heldout_curves(ax, pred: pd.DataFrame, split: str, legend: bool = True) -> None:
    p = pred[pred["split"] == split]
    runs = list(dict.fromkeys(p.sort_values(["source", "run_id"])["run_id"]))[:MAX_CURVES]
    for rid, c in zip(runs, palette(len(runs))):
        g = p[p["run_id"] == rid].sort_values("step")
        g = g.drop_duplicates("step")
        ok = np.isfinite(g["pred_lo"].to_numpy(float)) & np.isfinite(g["pred_hi"].to_numpy(float))
        if ok.any():  # checks fitted without bootstrap carry no band
            ax.fill_between(g["step"][ok], g["pred_lo"][ok], g["pred_hi"][ok], color=c, alpha=0.25, lw=0)
        ax.plot(g["step"], g["pred"], color=c, lw=0.9)
        ax.plot(g["step"], g["loss"], ".", color=c, ms=2.6, mew=0)
        ax.plot([], [], color=c, marker=".", ms=5, lw=0.9, label=_short(rid))  # legend: point + line
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"{split_label(split)} loss\n(nats/token)")
    if legend:
        ax.legend(loc="best", title="held-out run (points: observed;\nline, band: prediction, 95 %)")


def _short(rid: str, n: int = 34) -> str:
    return rid if len(rid) <= n else rid[: n - 1] + "…"


def draw_parity(ax, pred: pd.DataFrame, legend: bool = True) -> None:
    style = _split_style(_splits(pred))
    for s, (c, m) in style.items():
        g = pred[pred["split"] == s]
        ax.plot(g["loss"], g["pred"], m, ms=2.2, mew=0, color=c, alpha=0.7, label=split_label(s))
    lo = float(min(pred["loss"].min(), pred["pred"].min()))
    hi = float(max(pred["loss"].max(), pred["pred"].max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=GREY, lw=0.7, ls="--", label="$y=x$ (c), zero (d)")
    err = (pred["pred"] - pred["loss"]).to_numpy()
    obs = pred["loss"].to_numpy()
    r2 = 1 - np.sum(err**2) / np.sum((obs - obs.mean()) ** 2)
    ax.text(
        0.97,
        0.03,
        f"MAE {np.mean(np.abs(err)):.4f}\n$R^2$ {r2:.4f}\n{len(err)} points",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=6.5,
    )
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("observed loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    if legend:
        ax.legend(loc="upper left")


def draw_residuals(ax, pred: pd.DataFrame, legend: bool = False) -> None:
    style = _split_style(_splits(pred))
    for s, (c, m) in style.items():
        g = pred[pred["split"] == s]
        ax.plot(g["step"], g["pred"] - g["loss"], m, ms=2.2, mew=0, color=c, alpha=0.7, label=split_label(s))
    ax.axhline(0, color=GREY, lw=0.6, ls="--")
    r = (pred["pred"] - pred["loss"]).to_numpy()
    m = float(np.max(np.abs(r))) * 1.1 or 1e-3
    ax.set_ylim(-m, m)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("residual: predicted $-$ observed\n(nats/token)")
    if legend:
        ax.legend(loc="best")


def fig_heldout(study: StudyOutputs):
    need(study, "predictions")
    pred = study.predictions
    shown = first_check(pred)
    curve_splits = _splits(shown)[:2]
    has_band = bool(np.isfinite(shown["pred_lo"].to_numpy(float)).any())
    fig = plt.figure(figsize=(COL2, 5.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    axes_top = top.subplots(1, len(curve_splits), squeeze=False)[0]
    for ax, s in zip(axes_top, curve_splits):
        draw_heldout_curves(ax, shown, s, legend=False)
    runs = {}
    for ax in axes_top:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            runs.setdefault(lab, h)
    top.legend(
        list(runs.values()),
        list(runs.keys()),
        loc="outside lower center",
        ncols=2,
        title=("check " + str(shown["check"].iloc[0]) + ": " if "check" in shown.columns else "")
        + "held-out runs (points: observed; line: prediction"
        + ("; band: 95 % bootstrap)" if has_band else "; no bootstrap band in the input)"),
        title_fontproperties={"size": 7},
    )
    axes_bot = bottom.subplots(1, 2)
    pooled = study_law_predictions(study)
    draw_parity(axes_bot[0], pooled, legend=False)
    draw_residuals(axes_bot[1], pooled)
    h, lab = axes_bot[0].get_legend_handles_labels()
    bottom.legend(h, lab, loc="outside right center", title="validation set")
    for ax, letter in zip([*axes_top, *axes_bot], "abcd"):
        panel_label(ax, letter)
    return fig
