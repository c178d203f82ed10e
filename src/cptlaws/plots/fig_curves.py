"""Figure 2 (loss curves of every run with the fitted law) and figure 3 (CPT decomposition)."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from .common import (
    LOSS_LABEL,
    STEP_LABEL,
    FigureSkipped,
    choose_fit,
    law_for_run,
    loss_ylim,
    main_branch,
    need,
    schedules,
    split_label,
    thin,
    transfer_steps,
)
from .inputs import Study
from .lawcurves import decompose
from .style import COL2, GREY, LAW_COLOR, LINESTYLES, MARKERS, figure, ordered_colors, panel_label


def _ratio_colors(study: Study) -> dict[float, str]:
    ratios = sorted(study.cpt_runs()["ratio"].astype(float).unique())
    return dict(zip(ratios, ordered_colors(len(ratios))))


def _style_maps(study: Study):
    scheds = sorted(study.cpt_runs()["cpt_schedule"].unique())
    return dict(zip(scheds, LINESTYLES * 4))


def draw_loss_panel(ax, study: Study, domain: str, split: str, law: bool = True) -> list:
    """Every run of ``domain`` (plus the PT runs) on validation set ``split``: points = observed, line = law.

    Returns the legend handles of the panel's encodings (ratio colour, schedule line style, others)."""
    curves = study.curves[study.curves["split"] == split]
    colors, styles = _ratio_colors(study), _style_maps(study)
    main = set(main_branch(study, domain)["run_id"])
    runs = study.runs[(study.runs["phase"] == "pt") | (study.runs["domain"] == domain)]
    ys, xs = [], []
    other_marker = iter(MARKERS[1:] * 8)
    other_handles = []
    pt_shades = iter(["#4d4d4d", "#9a9a9a", "#c0c0c0", "#2b2b2b"] * 4)
    for row in runs.itertuples(index=False):
        c = curves[curves["run_id"] == row.run_id].sort_values("step")
        if c.empty:
            continue
        x, y = c["step"].to_numpy(), c["loss"].to_numpy()
        xs.append(x)
        ys.append(y)
        if row.phase == "pt":
            color, ls, marker = next(pt_shades), "-", "."
        else:
            color, ls = colors[float(row.ratio)], styles[row.cpt_schedule]
            marker = "." if row.run_id in main else next(other_marker)
            if row.run_id not in main:
                other_handles.append(Line2D([], [], color=GREY, ls="none", marker=marker, ms=3,
                                            label=_other_label(row)))
        ax.plot(x, y, ls="none", marker=marker, ms=2.2 if marker == "." else 1.8, color=color, alpha=0.8,
                mew=0, zorder=2)
        pred = law_for_run(study, row.run_id, split) if law else None
        if pred is not None:
            s, p, _ = pred
            lo = x.min() if row.phase == "cpt" else max(1, int(0.02 * x.max()))
            keep = s >= lo
            sx, sp = thin(s[keep], p[keep])
            ax.plot(sx, sp, color=color, ls=ls, lw=0.9, zorder=3)
        elif row.phase == "pt":
            ax.plot(x[1:], y[1:], color=color, lw=0.6, alpha=0.6)
    for t in transfer_steps(study):
        ax.axvline(t, color=GREY, ls=":", lw=0.6, zorder=1)
    if ys:
        ax.set_ylim(*loss_ylim(np.concatenate(ys), np.concatenate(xs)))
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"{split_label(split)} loss")
    return other_handles


def _other_label(row) -> str:
    from .common import fmt_lr

    if row.cpt_peak_lr != row.peak_lr:
        return f"peak LR {fmt_lr(row.cpt_peak_lr)}"
    return f"from {row.pt_schedule}@{int(row.transfer_step)} (LP {row.loss_potential:.2f})"


def legend_handles(study: Study, law: bool = True) -> list:
    colors, styles = _ratio_colors(study), _style_maps(study)
    h = [Line2D([], [], color=c, lw=2, label=f"$r={r:g}$") for r, c in colors.items()]
    h += [Line2D([], [], color="black", ls=ls, lw=0.9, label=f"CPT {name}" + (" (law)" if law else ""))
          for name, ls in styles.items()]
    h += [Line2D([], [], color="#4d4d4d", ls="none", marker=".", ms=4, label="observed"),
          Line2D([], [], color="#4d4d4d", lw=0.9, label="PT runs (grey)"),
          Line2D([], [], color=GREY, ls=":", lw=0.8, label="PT$\\to$CPT transfer")]
    return h


def fig_loss_curves(study: Study):
    need(study, "runs", "curves")
    domains = study.domains()
    if not domains:
        raise FigureSkipped("no CPT runs with a domain in runs.parquet")
    fig, axes = figure(COL2, height=2.1 * len(domains) + 0.6, nrows=len(domains), ncols=2)
    letters = iter("abcdefghijklmnop")
    others = {}
    for i, d in enumerate(domains):
        for j, split in enumerate(("general", d)):
            for h in draw_loss_panel(axes[i, j], study, d, split, law=bool(study.fits)):
                others.setdefault(h.get_label(), h)
            axes[i, j].set_ylabel(f"{split_label(split)} loss\n(CPT on {d}; nats/token)")
            panel_label(axes[i, j], next(letters))
    handles = legend_handles(study, law=bool(study.fits)) + list(others.values())
    fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)))
    return fig


def representative_run(study: Study, domain: str):
    """The decomposition example: the main-branch run with the highest domain ratio that has a fit."""
    main = main_branch(study, domain).sort_values(["ratio", "cpt_schedule"], ascending=[False, True])
    for row in main.itertuples(index=False):
        if choose_fit(study, row.run_id, "general") or choose_fit(study, row.run_id, domain):
            return row
    return None


def draw_decomposition(ax_loss, ax_shift, study: Study, row, split: str, legend: bool = True):
    fit = choose_fit(study, row.run_id, split)
    sched = schedules(study).get(row.run_id)
    if fit is None or sched is None:
        raise FigureSkipped(f"no drawable fit of split {split!r} covers run {row.run_id!r}")
    T = int(row.transfer_step)
    lam = float(fit.get("lam") or 0.999)
    areas = sched.areas(lam)
    steps = np.arange(max(1, int(0.05 * T)), sched.lrs.size + 1)
    hidden, shift = decompose(fit, areas.at(steps), sched.ratio)
    obs = study.curves[(study.curves["run_id"] == row.run_id) & (study.curves["split"] == split)].sort_values("step")
    parent = study.curves[(study.curves["run_id"] == row.parent) & (study.curves["split"] == split)
                          & (study.curves["step"] <= T)].sort_values("step")
    cpt = steps >= T
    c_obs, c_law, c_hid, c_shift = "#0072B2", LAW_COLOR, "#D55E00", "#009E73"
    if not parent.empty:
        ax_loss.plot(parent["step"][1:], parent["loss"][1:], ".", ms=2.2, color=GREY, mew=0, label="observed (PT)")
    ax_loss.plot(obs["step"], obs["loss"], ".", ms=2.6, color=c_obs, mew=0, label="observed (CPT)")
    x, h, sh = thin(steps, hidden, shift)
    ax_loss.plot(x, h + sh, color=c_law, lw=0.9, label="law $L$")
    xc, hc = thin(steps[cpt], hidden[cpt])
    ax_loss.plot(xc, hc, color=c_hid, ls="--", lw=1.0, label="hidden PT curve")
    ax_loss.axvline(T, color=GREY, ls=":", lw=0.6)
    ax_loss.set_ylabel(f"{split_label(split)} loss")
    allv = np.concatenate([obs["loss"].to_numpy(), hc, parent["loss"].to_numpy()[1:]])
    allx = np.concatenate([obs["step"].to_numpy(), xc, parent["step"].to_numpy()[1:]])
    ax_loss.set_ylim(*loss_ylim(allv, allx, crop_frac=0.3))
    # Observed minus the hidden PT curve: the data's view of the shift term.
    o = obs[obs["step"] >= T]
    h_at = np.interp(o["step"], steps, hidden)
    ax_shift.plot(o["step"], o["loss"] - h_at, ".", ms=2.6, color=c_obs, mew=0, label="observed $-$ hidden PT")
    ax_shift.plot(xc, thin(steps[cpt], shift[cpt])[1], color=c_shift, lw=1.1, label="shift term $\\Delta L$")
    ax_shift.axhline(0, color=GREY, lw=0.5)
    ax_shift.axvline(T, color=GREY, ls=":", lw=0.6)
    ax_shift.set_xlabel(STEP_LABEL)
    ax_shift.set_ylabel("shift (nats/token)")
    ax_loss.set_xlim(ax_shift.get_xlim())
    if legend:
        ax_loss.legend(loc="upper right")
        ax_shift.legend(loc="best")
    return fit


def fig_decomposition(study: Study):
    need(study, "runs", "curves", "lrs", "fits")
    domains = [d for d in study.domains() if representative_run(study, d) is not None]
    if not domains:
        raise FigureSkipped("no fit covers a CPT run")
    d = domains[0]
    row = representative_run(study, d)
    fig, axes = figure(COL2, height=3.6, nrows=2, ncols=2, sharex="col", gridspec_kw={"height_ratios": [1.6, 1]})
    for j, split in enumerate(("general", d)):
        draw_decomposition(axes[0, j], axes[1, j], study, row, split, legend=(j == 0))
        axes[0, j].set_title(f"{split_label(split)} validation set", fontsize=8)
        panel_label(axes[0, j], "ab"[j])
        panel_label(axes[1, j], "cd"[j])
    fig.suptitle(f"run {row.run_id} (CPT on {d}, $r={row.ratio:g}$)", fontsize=8)
    return fig
