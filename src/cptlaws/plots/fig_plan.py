"""Plan figure (docs/plan.md): (a) final general vs domain loss of every searched recipe, the front (lowest
domain loss for each general loss) and the recommendation; (b) loss vs replay ratio and (c) loss vs CPT peak
LR through the recommendation. Drawn from the plan JSON only (``cptlaws plan --out``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .style import COL2, figure, palette, panel_label, save, styled


def _front(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto front (both lower is better): points no other point beats on both losses."""
    order = np.lexsort((y, x))
    fx, fy, best = [], [], np.inf
    for i in order:
        if y[i] < best:
            fx.append(x[i])
            fy.append(y[i])
            best = y[i]
    return np.array(fx), np.array(fy)


def _arr(v) -> np.ndarray:
    return np.array([np.nan if a is None else a for a in v], float)


def _panel_front(ax, doc: dict, colors) -> None:
    grid, rec = doc["grid"], doc["recommendation"]["predicted"]
    if "L_general" not in grid or "L_domain" not in grid:
        ax.text(0.5, 0.5, "front needs general and domain fits", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    x, y, ok = _arr(grid["L_general"]), _arr(grid["L_domain"]), np.array(grid["feasible"], bool)
    ax.scatter(x[~ok], y[~ok], s=4, color="0.8", lw=0, label="infeasible", rasterized=True)
    ax.scatter(x[ok], y[ok], s=4, color=colors[0], alpha=0.5, lw=0, label="feasible", rasterized=True)
    fin = np.isfinite(x) & np.isfinite(y)
    fx, fy = _front(x[fin], y[fin])
    ax.plot(fx, fy, color="k", lw=1.0, label="front")
    for r in doc["runners_up"]:
        ax.plot(
            r["predicted"]["general"]["L_end"],
            r["predicted"]["domain"]["L_end"],
            "o",
            ms=4,
            mfc="none",
            color=colors[1],
        )
    g, d = rec["general"], rec["domain"]
    # the bootstrap interval need not contain the point fit (a poorly identified fit): drawn as lines
    for p, horizontal in ((g, True), (d, False)):
        iv = (p.get("interval") or {}).get("L_end")
        if iv:
            xs, ys = (iv, [d["L_end"]] * 2) if horizontal else ([g["L_end"]] * 2, iv)
            ax.plot(xs, ys, color=colors[2], lw=1.0)
    ax.plot(g["L_end"], d["L_end"], "*", ms=10, color=colors[2], label="recommended")
    if doc["goal"].get("eps") is not None:
        ax.axvline(g["L_T"] + doc["goal"]["eps"], color="0.4", ls=":", lw=0.8, label="PT loss + eps (its T)")
    ax.set_xlabel("final general loss")
    ax.set_ylabel("final domain loss")
    ax.legend(fontsize="x-small", loc="best", framealpha=0.8)


def _panel_slice(ax, doc: dict, dim: str, colors) -> None:
    s = doc["slices"].get(dim)
    label = {"ratio": "domain ratio r (replay = 1 - r)", "peak_lr": "CPT peak LR"}[dim]
    if not s:
        ax.text(0.5, 0.5, f"{label}: not searched", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    x = np.array(s["x"], float)
    for j, role in enumerate(("general", "domain")):
        if f"L_{role}" in s:
            ax.plot(x, _arr(s[f"L_{role}"]), color=colors[j], label=role)
    ax.axvline(doc["recommendation"]["recipe"][dim], color=colors[2], ls="--", lw=0.8, label="recommended")
    ok = np.array(s["feasible"], bool)
    if not ok.all():
        ax.fill_between(x, 0, 1, where=~ok, color="0.9", transform=ax.get_xaxis_transform(), label="infeasible")
    if dim == "peak_lr":
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)
    ax.set_ylabel("final loss")
    ax.legend(fontsize="x-small")


def fig_plan(doc: dict):
    """The figure of a plan document."""
    colors = palette(3)
    fig, axes = figure(COL2, 2.4, ncols=3)
    _panel_front(axes[0, 0], doc, colors)
    _panel_slice(axes[0, 1], doc, "ratio", colors)
    _panel_slice(axes[0, 2], doc, "peak_lr", colors)
    for ax, letter in zip(axes[0], "abc"):
        panel_label(ax, letter)
    goal = doc["goal"]
    fig.suptitle(f"CPT plan: goal {goal['kind']}", fontsize="small")
    return fig


def write_plan_figure(doc: dict, path: str | Path) -> Path:
    """Write the plan figure to ``path`` (its suffix picks the format; atomic)."""
    path = Path(path)
    with styled():
        (out,) = save(fig_plan(doc), path.parent, path.stem, formats=(path.suffix.lstrip(".").lower(),))
    return out
