"""Figure 6: the critical mixture ratio (Gu et al.) — final losses against ratio with the L(R) fits, the
tolerance band and the feasible region, and the CMR against tokens with the CMR-law extrapolation."""

from __future__ import annotations

import numpy as np

from .common import FigureSkipped, final_losses, need, split_label
from .inputs import PlotInputError, Study
from .style import COL2, GREY, LAW_COLOR, figure, palette, panel_label

FEASIBLE_COLOR = "#009E73"
EXTRAPOLATE = 3.0  # draw the CMR law out to this multiple of the largest token budget


def _power(fit: dict, x):
    return fit["a"] * np.asarray(x, dtype=float) ** fit["s"] + fit["b"]


def cmr_view(obj: dict) -> dict:
    """Normalise a CMR result JSON to what the figure draws; raises naming the file and key."""
    where = obj.get("_path", "CMR JSON")
    try:
        lvr = obj["loss_vs_ratio"]
        out = {
            "domain": obj.get("domain") or obj.get("domain_split"),
            "eps": float(obj["eps"]),
            "L_gen0": float(obj["L_gen0"]),
            "L_dom0": float(obj["L_dom0"]) if obj.get("L_dom0") is not None else None,
            "general": lvr["general"],
            "dom": lvr.get("domain") or lvr.get(obj.get("domain_split", "")),
            "cmr": obj.get("cmr"),
            "feasible": obj.get("feasible"),
            "vs_tokens": obj.get("cmr_vs_tokens"),
            "T_max": obj.get("T_max"),
        }
        for k in ("a", "s", "b"):
            float(out["general"][k])
    except (KeyError, TypeError, ValueError) as exc:
        raise PlotInputError(f"{where}: CMR result lacks or mangles key {exc}") from None
    return out


def draw_cmr_ratio(ax, study: Study, v: dict, which: str, legend: bool = True) -> None:
    """Final loss against ratio: points, L(R) fit, tolerance band (general), feasible region, CMR."""
    fit = v["general"] if which == "general" else v["dom"]
    color = palette(2)[0 if which == "general" else 1]
    if fit is None:
        raise FigureSkipped(f"CMR result of {v['domain']} has no {which} L(R) fit")
    R, L = np.asarray(fit.get("R", []), float), np.asarray(fit.get("L", []), float)
    grid = np.linspace(max(1e-3, 0.0), 1.0, 200)
    if v["feasible"]:
        lo, hi = v["feasible"]
        ax.axvspan(lo, hi, color=FEASIBLE_COLOR, alpha=0.12, lw=0, label="feasible ratios")
    if which == "general":
        ax.axhspan(v["L_gen0"], v["L_gen0"] + v["eps"], color=GREY, alpha=0.22, lw=0,
                   label=f"tolerance $L_0^{{\\rm gen}}+\\epsilon$, $\\epsilon={v['eps']:g}$")
        ax.axhline(v["L_gen0"], color=GREY, lw=0.6, ls="--", label="before CPT")
    elif v["L_dom0"] is not None:
        ax.axhline(v["L_dom0"], color=GREY, lw=0.6, ls="--", label="before CPT")
    ax.plot(grid, _power(fit, grid), color=LAW_COLOR, lw=0.9, label="$L(R)=aR^s+b$")
    if R.size:
        ax.plot(R, L, "o", color=color, ms=4, label="observed (final)", zorder=3)
    if v["cmr"] is not None:
        ax.axvline(v["cmr"], color=FEASIBLE_COLOR, lw=1.0, label=f"CMR $={v['cmr']:.2f}$")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("domain ratio $R$")
    name = "general" if which == "general" else f"{v['domain']} (domain)"
    ax.set_ylabel(f"final {name} loss\n(nats/token)")
    if legend:
        ax.legend(loc="best")


def draw_cmr_tokens(ax, v: dict, legend: bool = True) -> None:
    vt = v["vs_tokens"]
    if not vt or not vt.get("T"):
        raise FigureSkipped(f"CMR result of {v['domain']} has no cmr_vs_tokens")
    T, C = np.asarray(vt["T"], float), np.asarray(vt["cmr"], float)
    ax.plot(T, C, "o", color=palette(3)[2], ms=3.5, label="CMR at budget $T$", zorder=3)
    law = vt.get("law")
    if law:
        unit = float(vt.get("T_unit") or 1.0)
        t_fit = np.linspace(T.min(), T.max(), 100)
        t_ext = np.linspace(T.max(), EXTRAPOLATE * T.max(), 100)
        ax.plot(t_fit, _power(law, t_fit / unit), color=LAW_COLOR, lw=0.9, label="CMR law $aT^s+b$")
        ax.plot(t_ext, _power(law, t_ext / unit), color=LAW_COLOR, lw=0.9, ls="--", label="extrapolation")
    ax.set_xlabel("CPT tokens $T$")
    ax.set_ylabel("critical mixture ratio")
    ax.set_ylim(0, 1.05)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    if legend:
        ax.legend(loc="best")


def fig_cmr(study: Study):
    need(study, "cmr")
    views = [cmr_view(o) for o in study.cmr]
    fig, axes = figure(COL2, height=2.2 * len(views) + 0.2, nrows=len(views), ncols=3)
    letters = iter("abcdefghijkl")
    for i, v in enumerate(views):
        draw_cmr_ratio(axes[i, 0], study, v, "general", legend=True)
        draw_cmr_ratio(axes[i, 1], study, v, "domain", legend=True)
        draw_cmr_tokens(axes[i, 2], v)
        for ax in axes[i]:
            panel_label(ax, next(letters))
    return fig
