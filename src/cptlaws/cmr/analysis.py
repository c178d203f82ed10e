"""The whole CMR analysis from a long table of eval losses: ``cmr_from_curves``.

Steps, each a function below: check the table (``_validated_table``), group its rows into runs
(``_group_runs``: T, loss and pre-CPT loss per run and split), analyse one token budget
(``_analyse_budget``: per-ratio increment fits, pooled over seeds -> ``critical_mixture_ratio_from_fits``),
then the losses vs ratio at T_max, the CMR at several budgets and its scaling law, and the per-point
records. The options are one ``CMRSettings``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cptlaws.cmr.laws import fit_cmr_scaling_law, fit_loss_vs_ratio
from cptlaws.cmr.ratio import CMRResult, critical_mixture_ratio_from_fits, fit_increments
from cptlaws.errors import FitError, InputError
from cptlaws.fitting.powerlaw import PowerFit, jsonable

__all__ = ["CMRSettings", "cmr_from_curves"]


@dataclass(frozen=True, kw_only=True)
class CMRSettings:
    """The options of ``cmr_from_curves`` (documented there); ``check`` tests the choices and ``t_unit``."""

    domain_split: str
    general_split: str = "general"
    x: str = "tokens"
    t_unit: float = 1.0
    t_origin: str = "branch"
    ratios: Mapping[str, float] | None = None
    baseline: str | Mapping[str, float] = "branch"
    eps: float = 0.05
    lam: float = 1000.0
    T_max: float | None = None
    n_prefix: int = 8
    interp: str = "curves"
    tolerance_from: str = "increments"
    loss: str = "linear"
    f_scale: float = 1.0
    source: str = "curves table"

    @property
    def splits(self) -> tuple[str, str]:
        return self.general_split, self.domain_split

    def check(self) -> None:
        src = self.source
        if self.tolerance_from not in ("increments", "loss_vs_ratio"):
            raise InputError(
                f"{src}: tolerance_from must be 'increments' or 'loss_vs_ratio', got {self.tolerance_from!r}"
            )
        if self.t_origin not in ("branch", "zero"):
            raise InputError(f"{src}: t_origin must be 'branch' or 'zero', got {self.t_origin!r}")
        t_unit = self.t_unit
        if not (isinstance(t_unit, (int, float)) and t_unit > 0 and math.isfinite(t_unit)):
            raise InputError(f"{src}: t_unit must be a positive number, got {t_unit!r}")

    def record(self, T_max: float) -> dict:
        """The settings as written in the result (with the T_max used)."""
        return {
            "domain_split": self.domain_split,
            "general_split": self.general_split,
            "x": self.x,
            "t_unit": self.t_unit,
            "t_origin": self.t_origin,
            "eps": self.eps,
            "lam": self.lam,
            "T_max": T_max,
            "interp": self.interp,
            "tolerance_from": self.tolerance_from,
            "loss": self.loss,
            "f_scale": self.f_scale,
            "baseline": self.baseline if isinstance(self.baseline, str) else dict(self.baseline),
            "source": self.source,
        }


# ------------------------------------------------------------------------------------ the table
def _selected_rows(df, s: CMRSettings):
    """The rows of the analysis (phase cpt, the two splits) with ``ratio`` and string ids; columns checked."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{s.source}: expected a pandas DataFrame, got {type(df).__name__}")
    s.check()
    need = ["run_id", s.x, "split", "loss"] + ([] if s.ratios is not None else ["ratio"])
    missing = [c for c in need if c not in df.columns]
    if missing:
        hint = (
            " (give the run -> ratio mapping: ratios= / cptlaws cmr --ratios runs.parquet)"
            if "ratio" in missing
            else ""
        )
        raise InputError(f"{s.source}: missing column(s) {missing} (have {list(df.columns)}){hint}")
    d = df.copy()
    if "phase" in d.columns:
        d = d[d["phase"].astype(str) == "cpt"]
        if d.empty:
            raise InputError(f"{s.source}: no rows with phase == 'cpt'")
    if s.ratios is not None:
        missing_runs = sorted(set(d["run_id"].astype(str)) - set(map(str, s.ratios)))
        if missing_runs:
            raise InputError(f"{s.source}: no ratio given for run(s) {missing_runs[:5]}")
        d["ratio"] = d["run_id"].astype(str).map({str(k): v for k, v in s.ratios.items()})
    d["run_id"] = d["run_id"].astype(str)
    d["split"] = d["split"].astype(str)
    present = sorted(d["split"].unique())
    for sp in s.splits:
        if sp not in present:
            raise InputError(f"{s.source}: no rows with split == {sp!r} (splits present: {present[:20]})")
    return d[d["split"].isin([s.general_split, s.domain_split])]


def _validated_table(df, s: CMRSettings):
    """``_selected_rows`` with x, loss and ratio as finite floats, loss > 0, ratio in [0, 1], no duplicates."""
    import pandas as pd

    d = _selected_rows(df, s)
    src, x = s.source, s.x
    for col in (x, "loss", "ratio"):
        num = pd.to_numeric(d[col], errors="coerce")
        bad = d.index[num.isna() | ~np.isfinite(num.astype(float))]
        if len(bad):
            row = bad[0]
            raise InputError(
                f"{src}: row {row} (run {d.at[row, 'run_id']!r}): column '{col}' = "
                f"{d.at[row, col]!r} is not a finite number"
            )
        d[col] = num.astype(float)
    bad = d.index[d["loss"] <= 0]
    if len(bad):
        row = bad[0]
        raise InputError(f"{src}: row {row} (run {d.at[row, 'run_id']!r}): loss = {d.at[row, 'loss']} must be > 0")
    bad = d.index[(d["ratio"] < 0) | (d["ratio"] > 1)]
    if len(bad):
        row = bad[0]
        raise InputError(
            f"{src}: row {row} (run {d.at[row, 'run_id']!r}): ratio = {d.at[row, 'ratio']} "
            "is not a domain share in [0, 1]"
        )
    dup = d.duplicated(["run_id", "split", x], keep=False)
    if dup.any():
        row = d.index[dup][0]
        raise InputError(
            f"{src}: row {row} (run {d.at[row, 'run_id']!r}): duplicate ({x}, split) = "
            f"({d.at[row, x]}, {d.at[row, 'split']!r})"
        )
    return d


# ------------------------------------------------------------------------------------- the runs
def _baseline_loss(s: CMRSettings, run_id: str, sp: str, series) -> float:
    """Pre-CPT loss of one run and split: its branch row, or the given mapping."""
    if isinstance(s.baseline, Mapping):
        if sp not in s.baseline:
            raise InputError(f"{s.source}: baseline has no loss for split {sp!r} (keys {sorted(s.baseline)})")
        return float(s.baseline[sp])
    if s.baseline == "branch":
        return float(series["loss"].iloc[0])
    raise InputError(f"{s.source}: baseline must be 'branch' or a mapping split -> loss, got {s.baseline!r}")


def _run_series(s: CMRSettings, run_id: str, g) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """split -> (T, loss, L0) of one run, T from the run's branch point (or x itself with t_origin='zero')."""
    x = s.x
    x0 = float(g[x].min()) if s.t_origin == "branch" else 0.0
    per = {}
    for sp in s.splits:
        series = g[g["split"] == sp].sort_values(x)
        first = float(series[x].iloc[0])
        if s.t_origin == "zero" and first < 0:
            raise InputError(
                f"{s.source}: run {run_id!r}: {x} = {first:g} < 0 with t_origin='zero' "
                "(x must count CPT tokens from the branch point)"
            )
        if s.baseline == "branch" and first != x0:
            raise InputError(
                f"{s.source}: run {run_id!r}: split {sp!r} has no row at the branch point "
                f"{x} = {x0:g} (give the pre-CPT losses with baseline=...)"
            )
        l0 = _baseline_loss(s, run_id, sp, series)
        T = (series[x].to_numpy(float) - x0) / s.t_unit
        per[sp] = (T, series["loss"].to_numpy(float), l0)
    return per


class _Runs:
    """The runs of the table, by run_id: (ratio, {split: (T, loss, L0)}); seeds of one ratio are pooled."""

    def __init__(self, runs: dict, s: CMRSettings):
        self.runs = runs
        self.s = s
        self.ratio_values = sorted({v[0] for v in runs.values()})

    def items(self):
        return self.runs.items()

    def series(self):
        """Every (T, loss, L0) of every run and split."""
        return [per[sp] for _, per in self.runs.values() for sp in per]

    def pooled(self, rv: float, sp: str, t_cap: float) -> tuple[np.ndarray, np.ndarray]:
        """(T, dL) of the runs at ratio ``rv``, split ``sp``, 0 < T <= t_cap."""
        Ts, dLs = [], []
        for _, (r, per) in self.runs.items():
            if r == rv:
                T, L, l0 = per[sp]
                m = (T > 0) & (T <= t_cap * (1 + 1e-9))
                Ts.append(T[m])
                dLs.append(L[m] - l0)
        return np.concatenate(Ts), np.concatenate(dLs)

    def increments(self, rv: float, t_cap: float):
        """(T, dL) of the domain and the general split at ratio ``rv``, T <= t_cap, with the fits' labels."""
        s = self.s
        dom_label = f"{s.source}: dL_dom(T) fit, ratio {rv:g}, split {s.domain_split!r}, T <= {t_cap:g}"
        gen_label = f"{s.source}: dL_gen(T) fit, ratio {rv:g}, split {s.general_split!r}, T <= {t_cap:g}"
        dom, gen = self.pooled(rv, s.domain_split, t_cap), self.pooled(rv, s.general_split, t_cap)
        return dom, gen, (dom_label, gen_label)

    def losses_at(self, t_cap: float) -> list[dict]:
        """Per ratio: the loss at the last eval with T <= t_cap, averaged over the ratio's runs."""
        recs = []
        for rv in self.ratio_values:
            rec = {"ratio": rv}
            for sp in self.s.splits:
                vals, ts = [], []
                for run_id, (r, per) in self.runs.items():
                    if r == rv:
                        T, L, _ = per[sp]
                        m = T <= t_cap * (1 + 1e-9)
                        if not m.any():
                            raise InputError(f"{self.s.source}: run {run_id!r} has no {sp!r} point at T <= {t_cap:g}")
                        vals.append(L[m][-1])
                        ts.append(T[m][-1])
                rec[sp] = float(np.mean(vals))
                rec[f"T_{sp}"] = float(min(ts))
            recs.append(rec)
        return recs


def _group_runs(d, s: CMRSettings) -> _Runs:
    runs = {}
    for run_id, g in d.groupby("run_id", sort=True):
        r = g["ratio"].unique()
        if r.size != 1:
            raise InputError(f"{s.source}: run {run_id!r} has several ratios {sorted(r.tolist())}")
        splits = set(g["split"])
        for sp in s.splits:
            if sp not in splits:
                raise InputError(f"{s.source}: run {run_id!r} has no rows for split {sp!r}")
        runs[run_id] = (float(r[0]), _run_series(s, run_id, g))
    out = _Runs(runs, s)
    if len(out.ratio_values) < 2:
        raise InputError(f"{s.source}: need runs at >= 2 distinct ratios for the CMR, got {out.ratio_values}")
    return out


def _t_max(runs: _Runs, s: CMRSettings) -> float:
    """The analysis budget: ``s.T_max``, else the shortest run's last T."""
    T_max = float(min(T.max() for T, _, _ in runs.series())) if s.T_max is None else s.T_max
    T_max = float(T_max)
    if not (T_max > 0 and math.isfinite(T_max)):
        raise InputError(f"{s.source}: T_max must be > 0, got {T_max}")
    return T_max


# ----------------------------------------------------------------------------------- the analysis
def _analyse_budget(runs: _Runs, s: CMRSettings, t_cap: float) -> tuple[list, list, CMRResult]:
    """Per-ratio increment fits on T <= t_cap and the CMR from them."""
    per_ratio = (runs.increments(rv, t_cap) for rv in runs.ratio_values)
    dom_fits, gen_fits, T_lo = fit_increments(per_ratio, loss=s.loss, f_scale=s.f_scale)
    gvr = None
    if s.tolerance_from == "loss_vs_ratio":  # the paper's route: A from the L(R) fit of the general loss
        recs = runs.losses_at(t_cap)
        gvr = fit_loss_vs_ratio(
            [a["ratio"] for a in recs],
            [a[s.general_split] for a in recs],
            loss=s.loss,
            f_scale=s.f_scale,
            label=f"{s.source}: L(R) fit, split {s.general_split!r}, T <= {t_cap:g}",
        )
    L_gen0_mean = float(np.mean([per[s.general_split][2] for _, per in runs.runs.values()]))
    res = critical_mixture_ratio_from_fits(
        runs.ratio_values,
        dom_fits,
        gen_fits,
        T_max=t_cap,
        T_lo=T_lo,
        eps=s.eps,
        lam=s.lam,
        interp=s.interp,
        gen_vs_ratio=gvr,
        L_gen0=L_gen0_mean if gvr is not None else None,
    )
    return dom_fits, gen_fits, res


def _loss_vs_ratio(at_tmax: list[dict], s: CMRSettings) -> dict:
    """L(R) = a*R^s + b at T_max per split (or the fit's error)."""
    out = {}
    for sp in s.splits:
        try:
            f = fit_loss_vs_ratio(
                [a["ratio"] for a in at_tmax],
                [a[sp] for a in at_tmax],
                loss=s.loss,
                f_scale=s.f_scale,
                label=f"{s.source}: L(R) fit, split {sp!r}",
            )
            out[sp] = f.to_dict()
        except FitError as exc:
            out[sp] = {"error": str(exc)}
    return out


def _budgets(runs: _Runs, s: CMRSettings, T_max: float) -> list[float]:
    """Up to ``n_prefix`` eval points, log-spaced from the 7th (>= 7 points for the general fit) to T_max."""
    t_all = np.unique(np.concatenate([T for T, _, _ in runs.series()]))
    t_all = t_all[(t_all > 0) & (t_all <= T_max * (1 + 1e-9))]
    if t_all.size < 7 or s.n_prefix <= 0:
        return []
    cands = t_all[6:]
    picks = np.unique(np.geomspace(cands[0], cands[-1], int(s.n_prefix)))
    return sorted({float(cands[np.argmin(np.abs(np.log(cands) - np.log(p)))]) for p in picks})


def _cmr_vs_tokens(runs: _Runs, s: CMRSettings, T_max: float) -> list[dict]:
    """The CMR at several budgets: the per-ratio fits are redone on each prefix T <= budget."""
    vs_tokens = []
    for b in _budgets(runs, s, T_max):
        rec = {"T_max": b, "tokens": b * s.t_unit}
        try:
            _, _, rb = _analyse_budget(runs, s, b)
            vs_tokens.append({**rec, "cmr": rb.cmr, "status": rb.status, "binding": rb.binding})
        except (FitError, ValueError) as exc:
            vs_tokens.append({**rec, "cmr": None, "status": "error", "binding": None, "error": str(exc)})
    return vs_tokens


def _cmr_law(vs_tokens: list[dict], s: CMRSettings) -> dict:
    """R_CMR(T) = a4*T^s4 + b3 fitted to the budgets with an interior CMR (or why not)."""
    ok = [v for v in vs_tokens if v["status"] == "ok"]
    if len(ok) < 3:
        return {"error": f"{len(ok)} token budgets with an interior CMR (status 'ok'); the scaling law needs >= 3"}
    try:
        law = fit_cmr_scaling_law([v["T_max"] for v in ok], [v["cmr"] for v in ok], t_unit_tokens=s.t_unit, loss=s.loss)
    except FitError as exc:
        return {"error": str(exc)}
    return law.to_dict()


def _increment_records(runs: _Runs, dom_fits: list[PowerFit], gen_fits: list[PowerFit]) -> list[dict]:
    """One record per eval point: run_id, ratio, split, T, loss, L0, dL and the fitted dL (None at T <= 0)."""
    s = runs.s
    records = []
    for run_id, (rv, per) in runs.items():
        k = runs.ratio_values.index(rv)
        for sp, fit in ((s.general_split, gen_fits[k]), (s.domain_split, dom_fits[k])):
            T, L, l0 = per[sp]
            fitted = np.where(T > 0, fit.predict(np.where(T > 0, T, 1.0)), np.nan)
            for t, l, fv in zip(T, L, fitted):
                records.append(
                    {
                        "run_id": run_id,
                        "ratio": rv,
                        "split": sp,
                        "T": float(t),
                        "loss": float(l),
                        "L0": l0,
                        "dL": float(l - l0),
                        "fit": None if not np.isfinite(fv) else float(fv),
                    }
                )
    return records


def cmr_from_curves(df, settings: CMRSettings | None = None, **options) -> dict:
    """Full CMR analysis from a long table with columns ``run_id, ratio, <x>, split, loss``.

    Options as keywords (those of ``CMRSettings``; ``domain_split`` required) or one ``CMRSettings``:

    - ``domain_split`` / ``general_split`` (default "general"): the two validation splits.
    - ``x`` (default "tokens"): the token (or step) column. ``t_origin="branch"`` (default): the first row
      of each run (smallest x) is its branch point and T = (x - x_branch) / ``t_unit`` (default 1; the
      project's curves table logs global tokens and starts every CPT run with its branch point).
      ``t_origin="zero"``: x already counts CPT tokens, T = x / ``t_unit``.
    - ``baseline="branch"``: the pre-CPT losses L_gen0 / L_dom0 of a run are its branch-point row (the
      row at T = 0, required for both splits). Or give them: ``{general_split: L_gen0, domain_split:
      L_dom0}`` (then no branch row is needed).
    - ``ratios``: run_id -> domain share, when the table has no ``ratio`` column (e.g. from runs.parquet).
    - If a ``phase`` column exists only ``cpt`` rows are used.
    - Runs with the same ratio (seeds) are pooled in that ratio's fits.
    - ``eps`` (0.05), ``lam`` (1000), ``interp`` ("curves"): as in ``critical_mixture_ratio``; ``T_max``:
      the budget (default: the shortest run's last T); ``n_prefix`` (8): how many smaller budgets for the
      CMR scaling law; ``loss`` / ``f_scale``: the fits' loss; ``source``: names the table in errors.
    - ``tolerance_from``: "increments" (default) tests dL_gen(R, T_max) <= eps on the per-ratio fits
      interpolated in R; "loss_vs_ratio" (the paper's route) tests L_gen(R, T_max) <= L_gen0 + eps on
      the L(R) = a*R^s + b fit of the general loss at T_max (interior ratios; L_gen0 = mean baseline).

    Returns a JSON-ready dict: settings, baselines, loss_vs_ratio (L(R) fit at T_max per split),
    increments (per-ratio fits), cmr (``CMRResult.to_dict``), cmr_vs_tokens (CMR at several budgets),
    cmr_law (the fitted scaling law), and ``tables`` with long records for parquet/plots
    (``increments``: ratio, run_id, split, T, dL, fit).
    """
    if settings is not None and options:
        raise TypeError("cmr_from_curves: give a CMRSettings or keyword options, not both")
    s = settings if settings is not None else CMRSettings(**options)
    runs = _group_runs(_validated_table(df, s), s)
    T_max = _t_max(runs, s)
    dom_fits, gen_fits, result = _analyse_budget(runs, s, T_max)
    at_tmax = runs.losses_at(T_max)
    loss_vs_ratio = _loss_vs_ratio(at_tmax, s)
    vs_tokens = _cmr_vs_tokens(runs, s, T_max)
    out = {
        "settings": s.record(T_max),
        "baselines": {run_id: {sp: per[sp][2] for sp in per} for run_id, (_, per) in runs.items()},
        "ratios": runs.ratio_values,
        "loss_at_T_max": at_tmax,
        "loss_vs_ratio": loss_vs_ratio,
        "increments": [
            {"ratio": rv, "domain": df_.to_dict(), "general": gf.to_dict()}
            for rv, df_, gf in zip(runs.ratio_values, dom_fits, gen_fits)
        ],
        "cmr": result.to_dict(),
        "cmr_vs_tokens": vs_tokens,
        "cmr_law": _cmr_law(vs_tokens, s),
        "tables": {"increments": _increment_records(runs, dom_fits, gen_fits)},
    }
    return jsonable(out)
