"""Figure 2 (loss curves of every run with the fitted law) and figure 3 (CPT decomposition)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from .common import (
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
)
from .inputs import StudyOutputs
from .lawcurves import DRAWABLE_LAWS, decompose
from .style import COL2, GREY, LAW_COLOR, LINESTYLES, figure, ordered_colors, palette, panel_label


def _ratio_colors(study: StudyOutputs) -> dict[float, str]:
    ratios = sorted(study.cpt_runs()["ratio"].astype(float).unique())
    return dict(zip(ratios, ordered_colors(len(ratios))))


def _style_maps(study: StudyOutputs):
    scheds = sorted(study.cpt_runs()["cpt_schedule"].unique())
    return dict(zip(scheds, LINESTYLES * 4))


def _pt_colors(study: StudyOutputs) -> dict[str, str]:
    pts = list(study.runs[study.runs["phase"] == "pt"]["run_id"])
    return dict(zip(pts, PT_SHADES * 4))


PT_SHADES = ["#3a3a3a", "#a0a0a0", "#6b6b6b", "#c8c8c8"]


def draw_loss_panel(ax, study: StudyOutputs, domain: str, split: str, law: bool = True, subset: str = "main") -> list:
    """Runs of ``domain`` (plus the PT runs) on validation set ``split``: points = observed, lines = law.

    ``subset``: "main" = the ratio x CPT-schedule grid of the most common branch (colour = ratio, line style =
    schedule); "other" = every other CPT run of the domain (other branch points, peak LRs), one colour each.
    Returns legend handles for the runs that need their own entry (PT runs, "other" runs)."""
    curves = study.curves[study.curves["split"] == split]
    colors, styles = _ratio_colors(study), _style_maps(study)
    main_runs = main_branch(study, domain)
    main = set(main_runs["run_id"])
    cpt = study.cpt_runs()
    cpt = cpt[cpt["domain"] == domain]
    chosen = cpt[cpt["run_id"].isin(main)] if subset == "main" else cpt[~cpt["run_id"].isin(main)]
    others = list(chosen["run_id"]) if subset == "other" else []
    other_colors = dict(zip(others, palette(len(others))))
    pts = study.runs[study.runs["phase"] == "pt"]
    pt_colors = _pt_colors(study)
    handles, ys, xs = [], [], []
    for row in list(pts.itertuples(index=False)) + list(chosen.itertuples(index=False)):
        c = curves[curves["run_id"] == row.run_id].sort_values("step")
        if c.empty:
            continue
        x, y = c["step"].to_numpy(), c["loss"].to_numpy()
        xs.append(x)
        ys.append(y)
        if row.phase == "pt":
            color, ls = pt_colors[row.run_id], "-"
            handles.append(Line2D([], [], color=color, lw=1.2, marker=".", ms=3, label=f"PT {row.pt_schedule}"))
        elif subset == "other":
            color, ls = other_colors[row.run_id], styles[row.cpt_schedule]
            handles.append(Line2D([], [], color=color, ls=ls, lw=1.0, marker=".", ms=3, label=_other_label(row)))
        else:
            color, ls = colors[float(row.ratio)], styles[row.cpt_schedule]
        ax.plot(x, y, ls="none", marker=".", ms=2.4, color=color, alpha=0.85, mew=0, zorder=2)
        pred = law_for_run(study, row.run_id, split) if law else None
        if pred is not None:
            s, p, _ = pred
            lo = x.min() if row.phase == "cpt" else max(1, int(0.02 * x.max()))
            keep = s >= lo
            sx, sp = thin(s[keep], p[keep])
            ax.plot(sx, sp, color=color, ls=ls, lw=0.9, zorder=3)
        else:  # no fit covers this run: join the points so the run is still readable
            ax.plot(x[1:], y[1:], color=color, ls=ls, lw=0.6, alpha=0.7)
    for t in sorted({int(t) for t in chosen["transfer_step"].dropna()}):
        ax.axvline(t, color=GREY, ls=":", lw=0.6, zorder=1)
    if ys:
        ax.set_ylim(*loss_ylim(np.concatenate(ys), np.concatenate(xs)))
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"{split_label(split)} loss")
    return handles


def _other_label(row) -> str:
    from .common import fmt_lr

    txt = f"CPT {row.cpt_schedule} from {row.pt_schedule}@{int(row.transfer_step)} (LP {row.loss_potential:.2f})"
    if row.cpt_peak_lr != row.peak_lr:
        txt += f", peak {fmt_lr(row.cpt_peak_lr)}"
    if row.ratio != 1:
        txt += f", $r={row.ratio:g}$"
    return txt


def legend_handles(study: StudyOutputs, law: bool = True) -> list:
    """Encodings of the main-grid panels: ratio colours, CPT schedule line styles, markers, transfer."""
    colors, styles = _ratio_colors(study), _style_maps(study)
    h = [Line2D([], [], color=c, lw=2, label=f"$r={r:g}$") for r, c in colors.items()]
    h += [
        Line2D([], [], color="black", ls=ls, lw=0.9, label=f"CPT {name}" + (" (law)" if law else ""))
        for name, ls in styles.items()
    ]
    h += [
        Line2D([], [], color="#4d4d4d", ls="none", marker=".", ms=4, label="observed"),
        Line2D([], [], color=GREY, ls=":", lw=0.8, label="PT$\\to$CPT transfer"),
    ]
    return h


def fig_loss_curves(study: StudyOutputs):
    need(study, "runs", "curves")
    domains = study.domains()
    if not domains:
        raise FigureSkipped("no CPT runs with a domain in runs.parquet")
    law = bool(study.fits)
    cpt = study.cpt_runs()
    with_others = [d for d in domains if len(cpt[cpt["domain"] == d]) > len(main_branch(study, d))]
    h_main = 2.0 * len(domains) + 0.45
    h_other = [1.9 + 0.13 * (2 + len(cpt[cpt["domain"] == d]) - len(main_branch(study, d))) for d in with_others]
    fig = plt.figure(figsize=(COL2, h_main + sum(h_other)), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(1 + len(with_others), 1, height_ratios=[h_main, *h_other]))
    letters = iter("abcdefghijklmnop")
    axes = subfigs[0].subplots(len(domains), 2, squeeze=False)
    pt_handles = {}
    for i, d in enumerate(domains):
        for j, split in enumerate(("general", d)):
            for h in draw_loss_panel(axes[i, j], study, d, split, law=law, subset="main"):
                pt_handles.setdefault(h.get_label(), h)
            axes[i, j].set_ylabel(f"{split_label(split)} loss\n(CPT on {d}; nats/token)")
            panel_label(axes[i, j], next(letters))
    handles = legend_handles(study, law=law) + list(pt_handles.values())
    subfigs[0].legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)))
    for sf, d in zip(subfigs[1:], with_others):
        ax2 = sf.subplots(1, 2, squeeze=False)[0]
        own = {}
        for j, split in enumerate(("general", d)):
            for h in draw_loss_panel(ax2[j], study, d, split, law=law, subset="other"):
                own.setdefault(h.get_label(), h)
            ax2[j].set_ylabel(f"{split_label(split)} loss\n(CPT on {d}; nats/token)")
            panel_label(ax2[j], next(letters))
        sf.legend(
            handles=list(own.values()),
            loc="outside lower center",
            ncols=2,
            title=f"other CPT runs on {d} (points: observed; lines: law)",
            title_fontproperties={"size": 7},
        )
    return fig


def representative_run(study: StudyOutputs, domain: str):
    """The decomposition example: the main-branch run with the highest domain ratio that has a fit."""
    main = main_branch(study, domain).sort_values(["ratio", "cpt_schedule"], ascending=[False, True])
    for row in main.itertuples(index=False):
        if choose_fit(study, row.run_id, "general", DRAWABLE_LAWS) or choose_fit(
            study, row.run_id, domain, DRAWABLE_LAWS
        ):
            return row
    return None


def draw_decomposition(ax_loss, ax_shift, study: StudyOutputs, row, split: str, legend: bool = True):
    fit = choose_fit(study, row.run_id, split, DRAWABLE_LAWS)
    sched = schedules(study).get(row.run_id)
    if fit is None or sched is None:
        raise FigureSkipped(f"no drawable fit of split {split!r} covers run {row.run_id!r}")
    T = int(row.transfer_step)
    lam = float(fit.get("lam") or 0.999)
    areas = sched.areas(lam)
    steps = np.arange(max(1, int(0.05 * T)), sched.lrs.size + 1)
    hidden, shift = decompose(fit, areas.at(steps), sched.ratio)
    obs = study.curves[(study.curves["run_id"] == row.run_id) & (study.curves["split"] == split)].sort_values("step")
    parent = study.curves[
        (study.curves["run_id"] == row.parent) & (study.curves["split"] == split) & (study.curves["step"] <= T)
    ].sort_values("step")
    cpt = steps >= T
    c_obs, c_law, c_hid, c_shift = "#0072B2", LAW_COLOR, "#D55E00", "#009E73"
    if not parent.empty:
        ax_loss.plot(
            parent["step"][1:], parent["loss"][1:], ".", ms=3, color="#555555", mew=0, label="observed (PT parent)"
        )
    ax_loss.plot(obs["step"], obs["loss"], ".", ms=2.6, color=c_obs, mew=0, label="observed (CPT)")
    x, h, sh = thin(steps, hidden, shift)
    ax_loss.plot(x, h + sh, color=c_law, lw=0.9, label="law $L$")
    xc, hc = thin(steps[cpt], hidden[cpt])
    ax_loss.plot(xc, hc, color=c_hid, ls="--", lw=1.0, label="hidden PT curve")
    ax_loss.axvline(T, color=GREY, ls=":", lw=0.6)
    ax_loss.set_ylabel(f"{split_label(split)} loss\n(nats/token)")
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
    ax_shift.set_ylabel("shift term\n(nats/token)")
    ax_loss.set_xlim(ax_shift.get_xlim())
    if legend:
        ax_loss.legend(loc="upper right")
        ax_shift.legend(loc="best")
    return fit


def fig_decomposition(study: StudyOutputs):
    need(study, "runs", "curves", "lrs", "fits")
    domains = [d for d in study.domains() if representative_run(study, d) is not None]
    if not domains:
        raise FigureSkipped("no fit covers a CPT run")
    d = domains[0]
    row = representative_run(study, d)
    fig, axes = figure(COL2, height=3.9, nrows=2, ncols=2, sharex="col", gridspec_kw={"height_ratios": [1.6, 1]})
    for j, split in enumerate(("general", d)):
        fit = draw_decomposition(axes[0, j], axes[1, j], study, row, split, legend=False)
        # Which run and law: needed to read the panel, not decoration.
        axes[0, j].set_title(f"{split_label(split)} validation set ({fit['law']} law)", fontsize=7.5)
        panel_label(axes[0, j], "ab"[j])
        panel_label(axes[1, j], "cd"[j])
    h1, l1 = axes[0, 0].get_legend_handles_labels()
    h2, l2 = axes[1, 0].get_legend_handles_labels()
    fig.legend(
        h1 + h2,
        l1 + l2,
        loc="outside lower center",
        ncols=6,
        title=f"run {row.run_id} (CPT on {d}, $r={row.ratio:g}$); dotted line: transfer",
        title_fontproperties={"size": 7},
    )
    return fig
