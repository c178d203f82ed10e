"""The critical mixture ratio (Gu et al., arXiv 2407.17467; docs/cmr.md, laws.md section 5).

A = {R : L_gen(R, T_max) <= L_gen0 + eps}; R is feasible if R is in A and its switch point
T0(R) <= T_max; the CMR is the largest feasible R. Each trained ratio gets its own dL_dom / dL_gen fit;
the fits are interpolated in R and the CMR is located by brentq on R between the grid point where
feasibility ends and the next, so it is not limited to the trained ratios.

- ``critical_mixture_ratio``            from per-ratio increment curves (fits them first).
- ``critical_mixture_ratio_from_fits``  from per-ratio fitted increment laws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

from cptlaws.cmr.laws import (
    DOM_TERMS,
    GEN_TERMS,
    as_power,
    fit_increment_domain,
    fit_increment_general,
    switch_point,
    weighted_slope,
)
from cptlaws.errors import FitError
from cptlaws.fitting.powerlaw import PowerFit, jsonable

__all__ = ["CMRResult", "critical_mixture_ratio", "critical_mixture_ratio_from_fits", "fit_increments"]


@dataclass
class CMRResult:
    """Outcome of ``critical_mixture_ratio``.

    ``status``: "ok" (the CMR is an interior boundary of the feasible set), "at_upper_bound" (the largest
    trained ratio is feasible: the true CMR may be higher, we do not extrapolate), or "no_feasible_ratio".
    ``binding``: which condition ends the feasible set at the CMR ("tolerance", "switch_point", "both").
    ``per_ratio``: one record per trained ratio (fits, T0, increments at T_max, feasibility).
    ``grid``: the interpolated ratio grid (R, dL_gen/dL_dom at T_max, T0, feasible) for plots.
    """

    cmr: float | None
    status: str
    message: str
    feasible_intervals: list[tuple[float, float]]
    binding: str | None
    eps: float
    lam: float
    T_max: float
    T_lo: float
    interp: str
    feasibility_from: str
    per_ratio: list[dict]
    grid: dict[str, list]
    diagnostics: dict = field(default_factory=dict)

    def to_dict(self, include_grid: bool = True) -> dict:
        out = {
            "cmr": self.cmr,
            "status": self.status,
            "message": self.message,
            "feasible_intervals": [list(iv) for iv in self.feasible_intervals],
            "binding": self.binding,
            "eps": self.eps,
            "lam": self.lam,
            "T_max": self.T_max,
            "T_lo": self.T_lo,
            "interp": self.interp,
            "feasibility_from": self.feasibility_from,
            "per_ratio": self.per_ratio,
            "diagnostics": self.diagnostics,
        }
        if include_grid:
            out["grid"] = self.grid
        return jsonable(out)


class _RatioCurves:
    """Per-ratio fitted increment curves, interpolated in R ("curves": PCHIP of the fitted values and
    slopes on a fixed log-T grid; "params": linear interpolation of the fitted parameters)."""

    def __init__(self, ratios, dom_fits, gen_fits, Tg, T_max, interp):
        self.ratios = np.asarray(ratios, dtype=float)
        self.dom = list(dom_fits)
        self.gen = list(gen_fits)
        self.Tg = Tg
        self.T_max = T_max
        self.interp = interp
        if interp == "curves":
            dd = np.stack([f.derivative(Tg) for f in self.dom])  # (n_r, n_T)
            gd = np.stack([f.derivative(Tg) for f in self.gen])
            vals = np.stack([[f.predict(T_max) for f in self.gen], [f.predict(T_max) for f in self.dom]], axis=1)
            self._dd = PchipInterpolator(self.ratios, dd, axis=0, extrapolate=False)
            self._gd = PchipInterpolator(self.ratios, gd, axis=0, extrapolate=False)
            self._v = PchipInterpolator(self.ratios, vals, axis=0, extrapolate=False)
        elif interp == "params":
            self._pd = np.array([[f.amps[0], f.exps[0], f.offset] for f in self.dom])
            self._pg = np.array([[f.amps[0], f.exps[0], f.amps[1], f.exps[1], f.offset] for f in self.gen])
        else:
            raise FitError(f"interp must be 'curves' or 'params', got {interp!r}")

    def _param_fits(self, R: float) -> tuple[PowerFit, PowerFit]:
        pd = [np.interp(R, self.ratios, self._pd[:, k]) for k in range(3)]
        pg = [np.interp(R, self.ratios, self._pg[:, k]) for k in range(5)]
        return (PowerFit.from_params(pd, DOM_TERMS, "b1", "T"), PowerFit.from_params(pg, GEN_TERMS, "b2", "T"))

    def slopes(self, R: float) -> tuple[np.ndarray, np.ndarray]:
        """(d dL_dom/dT, d dL_gen/dT) on Tg at ratio R."""
        if self.interp == "curves":
            return self._dd(R), self._gd(R)
        d, g = self._param_fits(R)
        return d.derivative(self.Tg), g.derivative(self.Tg)

    def at_tmax(self, R: float) -> tuple[float, float]:
        """(dL_gen, dL_dom) at T_max at ratio R."""
        if self.interp == "curves":
            v = self._v(R)
            return float(v[0]), float(v[1])
        d, g = self._param_fits(R)
        return float(g.predict(self.T_max)), float(d.predict(self.T_max))

    def slopes_on(self, Rg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``slopes`` at every ratio of ``Rg``: two arrays (len(Rg), n_T)."""
        if self.interp == "curves":
            return self._dd(Rg), self._gd(Rg)
        pairs = [self.slopes(r) for r in Rg]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def at_tmax_on(self, Rg: np.ndarray) -> np.ndarray:
        """``at_tmax`` at every ratio of ``Rg``: array (len(Rg), 2) of (dL_gen, dL_dom)."""
        if self.interp == "curves":
            return self._v(Rg)
        return np.array([self.at_tmax(r) for r in Rg])


class _Conditions:
    """The two conditions of a feasible ratio as violations (<= 0 where met): the tolerance (R in A, from
    the interpolated dL_gen(R, T_max) or from the L_gen(R) fit ``gvr``) and the switch point T0(R) <= T_max."""

    def __init__(self, curves: _RatioCurves, eps: float, lam: float, gvr: PowerFit | None, L_gen0):
        self.curves, self.eps, self.lam, self.gvr = curves, eps, lam, gvr
        self.L_gen0 = None if gvr is None else float(L_gen0)

    def tolerance(self, r) -> float:
        if self.gvr is not None:
            return float(self.gvr.predict(r)) - self.L_gen0 - self.eps
        return self.curves.at_tmax(r)[0] - self.eps

    def switch(self, r) -> float:
        dd, gd = self.curves.slopes(r)
        return float(np.min(weighted_slope(dd, gd, self.lam)))

    def boundary(self, r_in: float, r_out: float) -> float:
        """Root of max(tolerance, switch) between a feasible and an infeasible grid point (continuous, sign change)."""
        if r_in == r_out:
            return r_in
        return float(
            brentq(
                lambda r: max(self.tolerance(r), self.switch(r)),
                min(r_in, r_out),
                max(r_in, r_out),
                xtol=1e-10,
                rtol=1e-10,
            )
        )


@dataclass
class _RatioGrid:
    """Both conditions on a fine ratio grid: R, weighted slopes on the T grid, (dL_gen, dL_dom) at T_max,
    the violations h1 (tolerance) and h2 (switch point), and feasibility."""

    R: np.ndarray
    slopes: np.ndarray
    at_tmax: np.ndarray
    h1: np.ndarray
    h2: np.ndarray
    feasible: np.ndarray


def _ratio_grid(R: np.ndarray, cond: _Conditions, n_R: int) -> _RatioGrid:
    Rg = np.unique(np.concatenate([np.linspace(R[0], R[-1], int(n_R)), R]))
    slopes = weighted_slope(*cond.curves.slopes_on(Rg), cond.lam)
    at_t = cond.curves.at_tmax_on(Rg)
    if cond.gvr is not None:
        h1 = np.asarray(cond.gvr.predict(Rg)) - cond.L_gen0 - cond.eps
    else:
        h1 = at_t[:, 0] - cond.eps
    h2 = np.array([float(np.min(sg)) for sg in slopes])
    if not (np.all(np.isfinite(h1)) and np.all(np.isfinite(h2))):
        raise FitError("CMR: the interpolated increment curves are not finite on the ratio grid")
    return _RatioGrid(Rg, slopes, at_t, h1, h2, (h1 <= 0) & (h2 <= 0))


def _feasible_intervals(grid: _RatioGrid, cond: _Conditions) -> list[tuple[float, float]]:
    """Maximal runs of feasible grid points, their inner edges refined to the boundary by brentq."""
    Rg, feas = grid.R, grid.feasible
    intervals: list[tuple[float, float]] = []
    k = 0
    while k < Rg.size:
        if not feas[k]:
            k += 1
            continue
        start = k
        while k + 1 < Rg.size and feas[k + 1]:
            k += 1
        lo_edge = Rg[start] if start == 0 else cond.boundary(Rg[start], Rg[start - 1])
        hi_edge = Rg[k] if k == Rg.size - 1 else cond.boundary(Rg[k], Rg[k + 1])
        intervals.append((float(lo_edge), float(hi_edge)))
        k += 1
    return intervals


def _check_ratios(ratios, dom_fits, gen_fits) -> np.ndarray:
    R = np.asarray(ratios, dtype=float).ravel()
    if R.size != len(dom_fits) or R.size != len(gen_fits):
        raise FitError(f"CMR: {R.size} ratios but {len(dom_fits)} domain fits and {len(gen_fits)} general fits")
    if R.size < 2:
        raise FitError(f"CMR: need at least 2 distinct ratios to interpolate in R, got {R.size}")
    bad = np.flatnonzero(~np.isfinite(R) | (R < 0) | (R > 1))
    if bad.size:
        raise FitError(f"CMR: ratio[{bad[0]}] = {R[bad[0]]} is not a domain share in [0, 1]")
    if np.unique(R).size != R.size:
        raise FitError(f"CMR: ratios must be distinct, got {sorted(R.tolist())}")
    return R


def _check_limits(eps, lam, T_max, T_lo) -> tuple[float, float, float, float]:
    eps, lam, T_max, T_lo = float(eps), float(lam), float(T_max), float(T_lo)
    if not (eps >= 0 and math.isfinite(eps)):
        raise FitError(f"CMR: eps must be a finite tolerance >= 0, got {eps}")
    if not lam > 0:
        raise FitError(f"CMR: lam must be > 0 (or inf), got {lam}")
    if not (0 < T_lo < T_max and math.isfinite(T_max)):
        raise FitError(f"CMR: need 0 < T_lo < T_max < inf, got T_lo={T_lo}, T_max={T_max}")
    return eps, lam, T_max, T_lo


def _sorted_fits(R: np.ndarray, dom_fits, gen_fits) -> tuple[np.ndarray, list[PowerFit], list[PowerFit]]:
    """Ratios in increasing order with their fits as PowerFit."""
    order = np.argsort(R)
    R = R[order]
    dom = [as_power(dom_fits[i], DOM_TERMS, "b1", f"CMR domain fit for ratio {R[k]:g}") for k, i in enumerate(order)]
    gen = [as_power(gen_fits[i], GEN_TERMS, "b2", f"CMR general fit for ratio {R[k]:g}") for k, i in enumerate(order)]
    return R, dom, gen


def _gen_vs_ratio(gen_vs_ratio, L_gen0) -> PowerFit | None:
    if gen_vs_ratio is None:
        return None
    gvr = as_power(gen_vs_ratio, (("a", "s"),), "b", "CMR gen_vs_ratio")
    if L_gen0 is None or not math.isfinite(float(L_gen0)):
        raise FitError("CMR: gen_vs_ratio needs L_gen0 (the general loss before CPT)")
    return gvr


def _per_ratio_records(R, dom, gen, cond: _Conditions, T_lo: float, T_max: float) -> list[dict]:
    """One record per trained ratio from the ratio's own fits (exact, not interpolated)."""
    per_ratio = []
    for r, d, g in zip(R, dom, gen):
        t0 = switch_point(d, g, cond.lam, (T_lo, T_max))
        in_a = cond.tolerance(float(r)) <= 0
        per_ratio.append(
            {
                "ratio": float(r),
                "T0": t0,
                "dL_gen_at_Tmax": float(g.predict(T_max)),
                "dL_dom_at_Tmax": float(d.predict(T_max)),
                "in_A": bool(in_a),
                "feasible": bool(in_a and t0 is not None),
                "dom_params": d.params,
                "gen_params": g.params,
            }
        )
    return per_ratio


def _grid_record(grid: _RatioGrid, Tg: np.ndarray, gvr: PowerFit | None) -> dict[str, list]:
    """The ratio grid for plots (CMRResult.grid)."""
    out = {
        "ratio": grid.R.tolist(),
        "dL_gen_at_Tmax": [float(v[0]) for v in grid.at_tmax],
        "dL_dom_at_Tmax": [float(v[1]) for v in grid.at_tmax],
        "T0": [_first_nonpositive(Tg, sg)[0] for sg in grid.slopes],
        "in_A": (grid.h1 <= 0).tolist(),
        "feasible": grid.feasible.tolist(),
    }
    if gvr is not None:
        out["L_gen_at_Tmax"] = [float(gvr.predict(r)) for r in grid.R]
    return out


def _no_feasible_message(R: np.ndarray, grid: _RatioGrid, eps: float, T_max: float) -> str:
    why = []
    if np.all(grid.h1 > 0):
        why.append(
            f"general-loss increase at T_max exceeds eps={eps:g} for every ratio (smallest {np.min(grid.h1) + eps:.4g})"
        )
    if np.all(grid.h2 > 0):
        why.append(f"no ratio reaches its switch point T0 <= T_max={T_max:g}")
    if not why:
        why.append("no ratio satisfies both conditions at once")
    return f"no feasible ratio in [{R[0]:g}, {R[-1]:g}]: " + "; ".join(why)


def _cmr_outcome(cmr: float, R: np.ndarray, cond: _Conditions) -> tuple[str, str | None, str]:
    """(status, binding, message) of the CMR at the upper edge of the last feasible interval."""
    if cmr >= R[-1]:
        msg = (
            f"the largest trained ratio {R[-1]:g} is feasible: CMR >= {R[-1]:g} "
            "(train larger ratios to locate it; no extrapolation)"
        )
        return "at_upper_bound", None, msg
    probe = min(cmr + 1e-7, float(R[-1]))  # just past the boundary, inside the interpolation range
    v1, v2 = cond.tolerance(probe), cond.switch(probe)
    binding = "both" if (v1 > 0 and v2 > 0) else ("tolerance" if v1 > 0 else "switch_point")
    return "ok", binding, f"CMR = {cmr:.4f} (limited by the {binding.replace('_', ' ')})"


def critical_mixture_ratio_from_fits(
    ratios,
    dom_fits: Sequence[PowerFit | Mapping | Sequence],
    gen_fits: Sequence[PowerFit | Mapping | Sequence],
    *,
    T_max: float,
    T_lo: float,
    eps: float = 0.05,
    lam: float = 1000.0,
    gen_vs_ratio: PowerFit | Mapping | Sequence | None = None,
    L_gen0: float | None = None,
    interp: str = "curves",
    n_R: int = 401,
    n_T: int = 512,
) -> CMRResult:
    """CMR from per-ratio increment laws (see ``critical_mixture_ratio`` for the definition).

    ``T_lo``: start of the switch-point search (the first CPT eval point). Feasibility set A uses
    ``gen_vs_ratio`` (L_gen(R) = a*R^s + b at T_max, with ``L_gen0``) when given, else the interpolated
    dL_gen(R, T_max) <= eps.
    """
    R = _check_ratios(ratios, dom_fits, gen_fits)
    eps, lam, T_max, T_lo = _check_limits(eps, lam, T_max, T_lo)
    R, dom, gen = _sorted_fits(R, dom_fits, gen_fits)
    gvr = _gen_vs_ratio(gen_vs_ratio, L_gen0)
    Tg = np.geomspace(T_lo, T_max, int(n_T))
    cond = _Conditions(_RatioCurves(R, dom, gen, Tg, T_max, interp), eps, lam, gvr, L_gen0)
    grid = _ratio_grid(R, cond, n_R)
    intervals = _feasible_intervals(grid, cond)
    common = dict(
        eps=eps,
        lam=lam,
        T_max=T_max,
        T_lo=T_lo,
        interp=interp,
        feasibility_from="L_gen(R) fit" if gvr is not None else "dL_gen(R, T_max) interpolated",
        per_ratio=_per_ratio_records(R, dom, gen, cond, T_lo, T_max),
        grid=_grid_record(grid, Tg, gvr),
        diagnostics={"ratios": R.tolist(), "n_R_grid": int(grid.R.size), "n_T_grid": int(n_T)},
    )
    if not intervals:
        msg = _no_feasible_message(R, grid, eps, T_max)
        return CMRResult(None, "no_feasible_ratio", msg, [], None, **common)
    cmr = intervals[-1][1]
    status, binding, msg = _cmr_outcome(cmr, R, cond)
    return CMRResult(float(cmr), status, msg, intervals, binding, **common)


def _first_nonpositive(Tg: np.ndarray, vals: np.ndarray) -> tuple[float | None, float]:
    """T where vals first reaches <= 0 (log-linear interpolation between grid points), and min(vals)."""
    hit = np.flatnonzero(vals <= 0)
    vmin = float(np.min(vals))
    if hit.size == 0:
        return None, vmin
    j = int(hit[0])
    if j == 0:
        return float(Tg[0]), vmin
    v0, v1 = vals[j - 1], vals[j]
    w = v0 / (v0 - v1)
    return float(np.exp(np.log(Tg[j - 1]) + w * (np.log(Tg[j]) - np.log(Tg[j - 1])))), vmin


def fit_increments(per_ratio, *, loss: str = "linear", f_scale: float = 1.0) -> tuple[list, list, float]:
    """The per-ratio increment laws. ``per_ratio``: one ((T, dL_dom), (T, dL_gen), (dom label, gen label))
    per ratio. Returns (dL_dom fits, dL_gen fits, T_lo), T_lo the largest first T (every fit has data there)."""
    dom_fits, gen_fits, t_los = [], [], []
    for (Td, yd), (Tg, yg), (dom_label, gen_label) in per_ratio:
        dom_fits.append(fit_increment_domain(Td, yd, loss=loss, f_scale=f_scale, label=dom_label))
        gen_fits.append(fit_increment_general(Tg, yg, loss=loss, f_scale=f_scale, label=gen_label))
        t_los.append(float(min(Td.min(), Tg.min())))
    return dom_fits, gen_fits, max(t_los)


def _fit_points(r: float, t: np.ndarray, dom: np.ndarray, gen: np.ndarray, T_max: float):
    """One ratio's finite (T, dL) points with 0 < T <= T_max, per split, and the fits' labels."""
    keep_d = np.isfinite(t) & np.isfinite(dom) & (t > 0) & (t <= T_max * (1 + 1e-9))
    keep_g = np.isfinite(t) & np.isfinite(gen) & (t > 0) & (t <= T_max * (1 + 1e-9))
    labels = (f"dL_dom(T) fit for ratio {r:g}", f"dL_gen(T) fit for ratio {r:g}")
    return (t[keep_d], dom[keep_d]), (t[keep_g], gen[keep_g]), labels


def critical_mixture_ratio(
    ratios,
    T,
    dL_gen,
    dL_dom,
    *,
    eps: float = 0.05,
    T_max: float | None = None,
    lam: float = 1000.0,
    L_gen0: float | None = None,
    gen_vs_ratio: PowerFit | Mapping | Sequence | None = None,
    interp: str = "curves",
    loss: str = "linear",
    f_scale: float = 1.0,
    n_R: int = 401,
    n_T: int = 512,
) -> CMRResult:
    """Critical mixture ratio from per-ratio increment curves.

    ``ratios``: trained domain shares R_i. ``T``: one shared 1-D token grid, or one array per ratio.
    ``dL_gen`` / ``dL_dom``: per ratio, the increments L - L0 at those T (2-D array or list of arrays;
    NaN entries are skipped). Points with T <= 0 or T > T_max are not fitted (T_max defaults to the
    largest T common to all ratios).

    Definition (laws.md section 5): A = {R : L_gen(R, T_max) <= L_gen0 + eps}; R is feasible if R in A
    and its switch point T0(R) <= T_max; the CMR is the largest feasible R. Each ratio gets its own
    dL_dom / dL_gen fit; the fits are interpolated in R (``interp``) and the CMR is located by brentq
    on R between the grid point where feasibility ends and the next, so it is not limited to trained
    ratios. With ``gen_vs_ratio`` (an L(R) fit of the general loss at T_max) and ``L_gen0``, A is taken
    from that fit instead of the increments.
    """
    R = np.asarray(ratios, dtype=float).ravel()
    n_r = R.size
    Ts = _per_ratio(T, n_r, "T", allow_shared=True)
    gs = _per_ratio(dL_gen, n_r, "dL_gen")
    ds = _per_ratio(dL_dom, n_r, "dL_dom")
    for i in range(n_r):
        if not (Ts[i].size == gs[i].size == ds[i].size):
            raise FitError(f"CMR ratio {R[i]:g}: T has {Ts[i].size} values, dL_gen {gs[i].size}, dL_dom {ds[i].size}")
    if T_max is None:
        T_max = float(min(np.nanmax(t) for t in Ts))
    T_max = float(T_max)
    if not (T_max > 0 and math.isfinite(T_max)):
        raise FitError(f"CMR: T_max must be a finite positive token count, got {T_max}")
    per_ratio = (_fit_points(R[i], Ts[i], ds[i], gs[i], T_max) for i in range(n_r))
    dom_fits, gen_fits, T_lo = fit_increments(per_ratio, loss=loss, f_scale=f_scale)
    return critical_mixture_ratio_from_fits(
        R,
        dom_fits,
        gen_fits,
        T_max=T_max,
        T_lo=T_lo,
        eps=eps,
        lam=lam,
        gen_vs_ratio=gen_vs_ratio,
        L_gen0=L_gen0,
        interp=interp,
        n_R=n_R,
        n_T=n_T,
    )


def _per_ratio(values, n_r: int, name: str, allow_shared: bool = False) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if values.shape[0] != n_r:
            raise FitError(f"CMR: {name} has {values.shape[0]} rows for {n_r} ratios")
        return [np.asarray(v, dtype=float) for v in values]
    if allow_shared:
        arr = np.asarray(values, dtype=object)
        if arr.ndim == 1 and all(np.ndim(v) == 0 for v in arr):
            shared = np.asarray(values, dtype=float)
            return [shared] * n_r
    seq = list(values)
    if len(seq) != n_r:
        raise FitError(f"CMR: {name} has {len(seq)} entries for {n_r} ratios")
    return [np.asarray(v, dtype=float).ravel() for v in seq]
