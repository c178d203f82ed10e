"""Figure 6: the critical mixture ratio (Gu et al.) — final losses against ratio with the L(R) fits, the
tolerance band and the feasible region, and the CMR against tokens with the CMR-law extrapolation.

Input: the ``cmr_from_curves`` result JSON (cptlaws.cmr) as the workflow writes it (results/fits/cmr_*.json).
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cptlaws.errors import InputError

from .common import need
from .inputs import StudyOutputs
from .style import COL2, GREY, LAW_COLOR, OKABE_ITO, panel_label

log = logging.getLogger("cptlaws.plots")

FEASIBLE_COLOR = "#009E73"
GEN_COLOR, DOM_COLOR, CMR_COLOR = OKABE_ITO[0], OKABE_ITO[1], OKABE_ITO[4]
EXTRAPOLATE = 3.0  # draw the CMR law out to this multiple of the largest token budget
MAX_ROWS = 4  # CMR analyses per figure: one row each


def _power(params: dict, x, a="a", s="s", b="b"):
    with np.errstate(all="ignore"):
        return params[a] * np.asarray(x, dtype=float) ** params[s] + params[b]


def cmr_view(obj: dict) -> dict:
    """What the figure draws, from a cmr_from_curves result; raises naming the file and the key."""
    where = obj.get("_path", "CMR JSON")
    try:
        st = obj["settings"]
        gs, ds = st["general_split"], st["domain_split"]
        base = obj["baselines"].values()
        at = obj["loss_at_T_max"]
        lvr = obj["loss_vs_ratio"]
        res = obj["cmr"]
        v = {
            "where": where,
            "domain": obj.get("domain") or ds,
            "label": _label(obj, ds),
            "eps": float(st["eps"]),
            "t_unit": float(st.get("t_unit") or 1.0),
            "T_max": float(st["T_max"]),
            "L_gen0": float(np.mean([b[gs] for b in base])),
            "L_dom0": float(np.mean([b[ds] for b in base])),
            "R": np.array([float(a["ratio"]) for a in at]),
            "L_gen": np.array([float(a[gs]) for a in at]),
            "L_dom": np.array([float(a[ds]) for a in at]),
            "fit_gen": lvr.get(gs) or {},
            "fit_dom": lvr.get(ds) or {},
            "cmr": res.get("cmr"),
            "status": res.get("status"),
            "message": res.get("message") or "",
            "feasible": [tuple(map(float, iv)) for iv in res.get("feasible_intervals") or []],
            "grid": res.get("grid") or {},
            "vs_tokens": obj.get("cmr_vs_tokens") or [],
            "law": obj.get("cmr_law") or {},
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: CMR result lacks or mangles key {exc}") from None
    return v


def _label(obj: dict, ds: str) -> str:
    parts = [f"CPT on {obj.get('domain') or ds}"]
    if obj.get("cpt_schedule"):
        parts.append(f"{obj['cpt_schedule']} from {obj.get('pt_schedule', '?')}@{obj.get('transfer_step', '?')}")
    if obj.get("model"):
        parts.append(f"model {obj['model']}")
    return ", ".join(parts)


def _draw_lr_fit(ax, fit: dict, grid: np.ndarray):
    """L(R) = a R^s + b: solid over the ratios it was fitted on, dashed where extrapolated."""
    p = fit.get("params")
    if not p:
        return
    lo, hi = (fit.get("diagnostics") or {}).get("x_range") or (grid.min(), grid.max())
    inside = (grid >= lo) & (grid <= hi)
    ax.plot(grid[inside], _power(p, grid[inside]), color=LAW_COLOR, lw=0.9)
    for part in (grid <= lo, grid >= hi):
        if part.sum() > 1:
            ax.plot(grid[part], _power(p, grid[part]), color=LAW_COLOR, lw=0.9, ls="--")


def draw_cmr_ratio(ax, v: dict, which: str) -> None:
    """Final loss against ratio: points, L(R) fit, tolerance band (general), feasible region, CMR."""
    gen = which == "general"
    R, L = v["R"], v["L_gen"] if gen else v["L_dom"]
    grid = np.linspace(max(1e-3, 0.5 * R[R > 0].min() if (R > 0).any() else 1e-3), 1.0, 300)
    for lo, hi in v["feasible"]:
        ax.axvspan(lo, hi, color=FEASIBLE_COLOR, alpha=0.13, lw=0)
    l0 = v["L_gen0"] if gen else v["L_dom0"]
    if gen:
        ax.axhspan(l0, l0 + v["eps"], color=GREY, alpha=0.25, lw=0)
    ax.axhline(l0, color=GREY, lw=0.6, ls="--")
    _draw_lr_fit(ax, v["fit_gen"] if gen else v["fit_dom"], grid)
    g = v["grid"]
    key = "dL_gen_at_Tmax" if gen else "dL_dom_at_Tmax"
    if g.get("ratio") and g.get(key):  # what the CMR root-finding used: per-ratio dL(T) fits at T_max
        gr = np.asarray(g["ratio"], float)
        gl = l0 + np.asarray([np.nan if x is None else x for x in g[key]], float)
        ax.plot(gr, gl, color=LAW_COLOR, lw=0.7, ls=":")
    ax.plot(R, L, "o", color=GEN_COLOR if gen else DOM_COLOR, ms=4, zorder=3)
    if v["cmr"] is not None:
        ax.axvline(v["cmr"], color=FEASIBLE_COLOR, lw=1.1)
        ax.text(
            v["cmr"],
            1.0,
            f" CMR {v['cmr']:.2f}",
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize=6.5,
            color=FEASIBLE_COLOR,
        )
    ys = np.concatenate([L, [l0], [l0 + v["eps"]] if gen else []])
    pad = 0.12 * (ys.max() - ys.min() or 0.1)
    ax.set_ylim(ys.min() - pad, ys.max() + pad)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("domain ratio $R$")
    name = "general" if gen else f"{v['domain']} (domain)"
    ax.set_ylabel(f"{name} loss at $T_{{\\max}}$\n(nats/token)")


def draw_cmr_tokens(ax, v: dict) -> None:
    pts = [(float(r["tokens"]), r["cmr"], r.get("status")) for r in v["vs_tokens"]]
    ok = [(t, c) for t, c, s in pts if c is not None and s == "ok"]
    edge = [(t, c) for t, c, s in pts if c is not None and s != "ok"]
    none = [t for t, c, s in pts if c is None]
    if ok:
        ax.plot(*zip(*ok), "o", color=CMR_COLOR, ms=3.5, zorder=3)
    if edge:
        ax.plot(*zip(*edge), "o", mfc="none", mec=CMR_COLOR, ms=3.5, zorder=3)
    if none:
        ax.plot(none, np.zeros(len(none)), "x", color=GREY, ms=3.5, clip_on=False, zorder=3)
    tmax = max([t for t, _, _ in pts] + [v["T_max"] * v["t_unit"]])
    p = v["law"].get("params")
    if p:
        unit = v["t_unit"]
        lo, hi = (v["law"].get("diagnostics") or {}).get("x_range") or (min(t for t, _ in ok) / unit, tmax / unit)
        t_fit = np.linspace(lo, hi, 100) * unit
        t_ext = np.linspace(hi * unit, EXTRAPOLATE * tmax, 100)
        y_fit = np.clip(_power(p, t_fit / unit, "a4", "s4", "b3"), 0, 1)
        y_ext = np.clip(_power(p, t_ext / unit, "a4", "s4", "b3"), 0, 1)  # a ratio: [0, 1]
        ax.plot(t_fit, y_fit, color=LAW_COLOR, lw=0.9)
        ax.plot(t_ext, y_ext, color=LAW_COLOR, lw=0.9, ls="--")
    elif v["law"].get("error"):
        ax.text(
            0.03,
            0.97,
            "CMR law not fitted:\n" + _wrap(v["law"]["error"], 38),
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=5.5,
            color=GREY,
        )
    ax.set_xlim(0, EXTRAPOLATE * tmax * 1.02)
    ax.set_xlabel("CPT tokens $T$")
    ax.set_ylabel("critical mixture ratio")
    ax.set_ylim(0, 1.05)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))


def _wrap(text: str, n: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, n)[:4])


def legend_handles(eps: float) -> list:
    return [
        Line2D([], [], color=GEN_COLOR, marker="o", ls="none", ms=4, label="general loss (observed)"),
        Line2D([], [], color=DOM_COLOR, marker="o", ls="none", ms=4, label="domain loss (observed)"),
        Line2D([], [], color=LAW_COLOR, lw=0.9, label="$L(R)=aR^s+b$ (dashed: extrapolated)"),
        Line2D([], [], color=LAW_COLOR, lw=0.7, ls=":", label=r"from the $\Delta L(T)$ fits at $T_{\max}$"),
        Line2D([], [], color=GREY, lw=0.6, ls="--", label="before CPT"),
        Patch(color=GREY, alpha=0.25, lw=0, label=f"tolerance: general loss $+\\,\\epsilon$, $\\epsilon={eps:g}$"),
        Patch(color=FEASIBLE_COLOR, alpha=0.13, lw=0, label="feasible ratios"),
        Line2D([], [], color=FEASIBLE_COLOR, lw=1.1, label="CMR"),
        Line2D([], [], color=CMR_COLOR, marker="o", ls="none", ms=3.5, label="CMR at token budget $T$"),
        Line2D([], [], color=CMR_COLOR, marker="o", mfc="none", ls="none", ms=3.5, label="CMR at a bound"),
        Line2D([], [], color=GREY, marker="x", ls="none", ms=3.5, label="no feasible ratio"),
        Line2D([], [], color=LAW_COLOR, lw=0.9, label="CMR law $aT^s+b$ (dashed: extrapolation)"),
    ]


def fig_cmr(study: StudyOutputs):
    need(study, "cmr")
    views = [cmr_view(o) for o in study.cmr]
    if len(views) > MAX_ROWS:
        log.warning(
            "fig6_cmr: %d CMR analyses, drawing the first %d (%s)",
            len(views),
            MAX_ROWS,
            ", ".join(v["where"] for v in views[MAX_ROWS:]),
        )
        views = views[:MAX_ROWS]
    fig = plt.figure(figsize=(COL2, 2.05 * len(views) + 0.75), layout="constrained")
    rows = np.atleast_1d(fig.subfigures(len(views) + 1, 1, height_ratios=[2.05] * len(views) + [0.75]))
    letters = iter("abcdefghijkl")
    for sf, v in zip(rows, views):
        axes = sf.subplots(1, 3)
        draw_cmr_ratio(axes[0], v, "general")
        draw_cmr_ratio(axes[1], v, "domain")
        draw_cmr_tokens(axes[2], v)
        sf.suptitle(v["label"], fontsize=7)
        for ax in axes:
            panel_label(ax, next(letters))
    rows[-1].legend(handles=legend_handles(views[0]["eps"]), loc="center", ncols=3)
    return fig
