"""Robust fitting of any law in ``cptlaws.laws`` (laws.md section 4).

Objective: sum over points of Huber_delta(log L_obs - log L_pred) (delta = 1e-3). Positive parameters
are fitted in log space. The first ``n_starts`` points of a seeded, scrambled Sobol sequence over the
law's start box are screened in one vectorised evaluation; L-BFGS-B with bounds and exact gradients
then runs from every start that ranks among the ``n_refine`` best of the starts drawn up to it (the
``n_refine`` best overall included; about n_refine * (1 + ln(n_starts / n_refine)) starts: 27 of 500
and 37 of 8,000 at the default n_refine = 4) and the lowest objective wins. Fewer starts are a prefix
of more and each start's pick depends only on the starts before it, so at a fixed lambda and seed (and
no law warm starts, which come from a nested fit with n_starts // 2) the best objective never rises
with ``n_starts``. lambda is fixed (0.999) or fitted by an outer 1-D search (grid over 0.99..0.9997,
then golden-section refinement). Bootstrap over curves gives parameter intervals and prediction bands.
Internally the objective is divided by delta^2 so L-BFGS-B's stopping tolerances act on O(1) numbers
(a tiny summed objective would stop it early).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import qmc

from cptlaws.areas import DEFAULT_LAMBDA
from cptlaws.errors import FitError, InputError
from cptlaws.laws import get_law
from cptlaws.laws.base import Law

LAMBDA_RANGE = (0.99, 0.9997)
_BIG = 1e30


# ------------------------------------------------------------------------------------ point selection
def select_points(curves, drop_warmup: bool = True, drop_first_frac: float = 0.0):
    """Curves restricted to the points a fit uses, and how many warm-up points were dropped.

    Step-0 points (init, S1 = 0) are always dropped; warm-up points (step <= the PT warm-up) when
    ``drop_warmup``; points before ``drop_first_frac`` of each curve's last step when > 0.
    """
    out, dropped_w, dropped_other = [], 0, 0
    for c in curves:
        keep = c.steps > 0
        dropped_other += int((~keep).sum())
        if drop_warmup and c.warmup_steps > 0:
            w = keep & (c.steps <= c.warmup_steps)
            dropped_w += int(w.sum())
            keep &= ~w
        if drop_first_frac > 0 and c.steps.size:
            f = keep & (c.steps < drop_first_frac * c.steps.max())
            dropped_other += int(f.sum())
            keep &= ~f
        if keep.any():
            out.append(dataclasses.replace(c, steps=c.steps[keep], loss=c.loss[keep]))
    return out, dropped_w, dropped_other


# ------------------------------------------------------------------------------------------ problem
class _Problem:
    """Objective over the free parameters in transformed space (log for positive params)."""

    def __init__(self, law: Law, F, y: np.ndarray, bounds: dict, fixed: dict, delta: float):
        self.law, self.F, self.delta = law, F, delta
        self.ly = np.log(y)
        self.names = list(law.params)
        self.fixed = dict(fixed or {})
        unknown = sorted(set(self.fixed) - set(self.names))
        if unknown:
            raise FitError(f"law '{law.name}': fixed parameter(s) {unknown} unknown (params: {self.names})")
        self.free = [i for i, n in enumerate(self.names) if n not in self.fixed]
        self.is_log = np.array([self.names[i] in law.log_params for i in self.free])
        lo = np.array([bounds[self.names[i]][0] for i in self.free], float)
        hi = np.array([bounds[self.names[i]][1] for i in self.free], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.lo = np.where(self.is_log, np.log(np.maximum(lo, 1e-300)), lo)
            self.hi = np.where(self.is_log, np.log(np.abs(hi)), hi)
        self.scale = 1.0 / delta**2

    def to_params(self, u: np.ndarray) -> np.ndarray:
        p = np.empty(len(self.names))
        for n, v in self.fixed.items():
            p[self.names.index(n)] = v
        p[self.free] = np.where(self.is_log, np.exp(u), u)
        return p

    def to_u(self, p: np.ndarray) -> np.ndarray:
        v = np.asarray(p, float)[self.free]
        return np.where(self.is_log, np.log(np.maximum(v, 1e-300)), v)

    def huber(self, r):
        a = np.abs(r)
        d = self.delta
        return np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d))

    def batch(self, U: np.ndarray, chunk: int) -> np.ndarray:
        """Objective (unscaled) of many starts U (S, n_free) at once; inf where the law is invalid."""
        out = np.empty(U.shape[0])
        for a in range(0, U.shape[0], chunk):
            Ub = U[a : a + chunk]
            P = {}
            for n in self.names:
                if n in self.fixed:
                    P[n] = np.full((Ub.shape[0], 1), self.fixed[n])
            for k, i in enumerate(self.free):
                col = Ub[:, k : k + 1]
                P[self.names[i]] = np.exp(col) if self.is_log[k] else col
            with np.errstate(all="ignore"):
                pred = np.asarray(self.law.predict(P, self.F), float)
                r = self.ly - np.log(pred)
                h = self.huber(r).sum(axis=1)
            h[~np.isfinite(h)] = np.inf
            out[a : a + chunk] = h
        return out

    def value_grad(self, u: np.ndarray):
        p = self.to_params(u)
        with np.errstate(all="ignore"):
            pred, J = self.law.value_jac(p, self.F)
        if not (np.all(np.isfinite(pred)) and np.all(pred > 0) and np.all(np.isfinite(J))):
            return _BIG, np.zeros_like(u)
        r = self.ly - np.log(pred)
        f = self.huber(r).sum()
        g_pred = -np.clip(r, -self.delta, self.delta) / pred
        gp = g_pred @ J[:, self.free]
        gu = np.where(self.is_log, gp * p[self.free], gp)
        return f * self.scale, gu * self.scale

    def objective(self, p) -> float:
        f, _ = self.value_grad(self.to_u(p))
        return f / self.scale


@dataclasses.dataclass
class _Run:
    obj: float
    p: np.ndarray
    success: bool
    n_near: int
    n_refined: int
    at_bound: list


def _multistart(
    prob: _Problem, law: Law, y, n_starts: int, n_refine: int, rng, extra_starts=(), nested: bool = True
) -> _Run:
    """Best L-BFGS-B run from screened starts. ``nested``: polish every start that ranks among the ``n_refine``
    best of the starts drawn up to it (``_record_starts``), so the polished set for ``n_starts`` contains that
    for fewer and more starts never give a worse optimum; else only the ``n_refine`` best (``_lowest``)."""
    U = _start_points(prob, law, y, n_starts, rng, extra_starts)
    pairs = int(getattr(prob.F, "extra", {}).get("D", np.zeros(0)).size)
    chunk = max(1, int(4e6 // max(prob.F.n, pairs, 1)))
    vals = prob.batch(U, chunk)
    pick = _record_starts if nested else _lowest
    picked = pick(vals, max(n_refine, 1))
    if not picked:
        raise FitError(f"law '{law.name}': no start gives a finite objective (all {U.shape[0]} starts invalid)")
    results = _polish(prob, law, [U[i] for i in picked], pick)
    if not results:
        raise FitError(f"law '{law.name}': no start converged (L-BFGS-B failed from the {len(picked)} best starts)")
    return _best_run(prob, results)


def _start_points(prob: _Problem, law: Law, y, n_starts: int, rng, extra_starts=()) -> np.ndarray:
    """Starts in transformed space: the law's own (``extra_starts``) first, then the first ``n_starts`` points of
    a scrambled Sobol sequence over the law's start box, snapped by the law. The Sobol sequence (seeded from
    ``rng``, which it advances by the same amount whatever ``n_starts``) makes fewer starts a prefix of more."""
    box = law.start_box(y)
    lo = np.array([box[prob.names[i]][0] for i in prob.free], float)
    hi = np.array([box[prob.names[i]][1] for i in prob.free], float)
    with np.errstate(invalid="ignore", divide="ignore"):  # log only used where is_log (positive)
        lo = np.where(prob.is_log, np.log(np.abs(lo)), lo)
        hi = np.where(prob.is_log, np.log(np.abs(hi)), hi)
    lo, hi = np.maximum(lo, prob.lo), np.minimum(hi, prob.hi)
    k = len(prob.free)
    if k:
        with warnings.catch_warnings():  # Sobol's balance wants n = 2^m; only the prefix property matters here
            warnings.filterwarnings("ignore", "The balance properties of Sobol", UserWarning)
            U = lo + (hi - lo) * qmc.Sobol(d=k, scramble=True, seed=rng).random(max(n_starts, 1))
    else:
        U = np.zeros((1, 0))
    for j, i in enumerate(prob.free):
        U[:, j] = np.clip(law.snap_start(prob.names[i], U[:, j]), prob.lo[j], prob.hi[j])
    if len(extra_starts):
        U = np.vstack([np.clip(np.asarray(extra_starts, float).reshape(-1, k), prob.lo, prob.hi), U])
    return U


def _record_starts(vals, k: int) -> list[int]:
    """Indices, in start order, of the finite values that rank among the ``k`` lowest of the values up to
    and including them (ties go to the earlier start).

    Whether start i is picked depends only on starts 0..i, so the picks for a prefix of the starts are a
    subset of the picks for all of them: more starts never drop a polished start and the best objective can
    only fall. The k lowest values overall are always picked; about k * (1 + ln(n / k)) starts are in all."""
    picked, worst = [], []  # worst: max-heap (negated) of the k lowest values so far
    for i, v in enumerate(vals):
        if not np.isfinite(v):
            continue
        if len(worst) < k:
            heapq.heappush(worst, -v)
        elif v < -worst[0]:
            heapq.heapreplace(worst, -v)
        else:
            continue
        picked.append(i)
    return picked


def _lowest(vals, k: int) -> list[int]:
    """Indices of the ``k`` lowest finite values, lowest first (ties go to the earlier start)."""
    return [i for i in np.argsort(vals, kind="stable") if np.isfinite(vals[i])][:k]


def _polish(prob: _Problem, law: Law, x0s: list, pick=_record_starts) -> list[tuple]:
    """L-BFGS-B from each start: (objective, u, success) of every finite run, in start order."""
    results = []
    bnds = list(zip(prob.lo, prob.hi))
    opts = {"maxiter": 3000, "ftol": 1e-13, "gtol": 1e-9, "maxcor": 20}
    screen = getattr(law, "refine_screen", None)
    if screen and len(x0s) > screen[1]:
        # two-stage refinement (law opt-in): a short L-BFGS-B run from every start, then only the screen[1]
        # best short runs continue to convergence (one slow start cannot eat the budget); with
        # _record_starts "best" is "among the screen[1] best so far", so again more starts only add runs
        part = []
        for x0 in x0s:
            res = minimize(
                prob.value_grad,
                x0,
                jac=True,
                method="L-BFGS-B",
                bounds=bnds,
                options={**opts, "maxiter": int(screen[0])},
            )
            part.append((float(res.fun), res.x, bool(res.success)))
        go = set(pick([f if f < _BIG else np.inf for f, _, _ in part], int(screen[1])))
        for j, (f0, x, ok) in enumerate(part):
            if j not in go and np.isfinite(f0) and f0 < _BIG:
                results.append((f0 / prob.scale, x, ok))  # kept for the n_near / n_refined diagnostics
        x0s = [part[j][1] for j in sorted(go)]
    for x0 in x0s:
        res = minimize(prob.value_grad, x0, jac=True, method="L-BFGS-B", bounds=bnds, options=opts)
        f = float(res.fun) / prob.scale
        if np.isfinite(f) and res.fun < _BIG:
            results.append((f, res.x, bool(res.success)))
    return results


def _best_run(prob: _Problem, results: list[tuple]) -> _Run:
    """The lowest-objective run, with how many runs came near it and which parameters sit at a bound."""
    results = sorted(results, key=lambda t: t[0])
    best = results[0]
    tol = 0.01 * abs(best[0]) + 1e-15
    n_near = sum(1 for f, _, _ in results if f - best[0] <= tol)
    # L-BFGS-B often ends its best run with an ABNORMAL line search at machine precision; the optimum is
    # converged when that run or another start that reached the same objective (within tol) converged
    converged = any(ok and f - best[0] <= tol for f, _, ok in results)
    span = prob.hi - prob.lo
    at_b = [
        prob.names[prob.free[j]]
        for j in range(len(prob.free))
        if min(best[1][j] - prob.lo[j], prob.hi[j] - best[1][j]) <= 1e-6 * span[j]
    ]
    return _Run(best[0], prob.to_params(best[1]), converged, n_near, len(results), at_b)


# ------------------------------------------------------------------------------------------- result
@dataclasses.dataclass
class FitResult:
    law: str
    params: dict
    lam: float
    split: str | None = None
    law_options: dict = dataclasses.field(default_factory=dict)
    intervals: dict = dataclasses.field(default_factory=dict)
    diagnostics: dict = dataclasses.field(default_factory=dict)
    fit_runs: list = dataclasses.field(default_factory=list)
    heldout: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    bootstrap_params: list = dataclasses.field(default_factory=list)

    def get_law(self) -> Law:
        return get_law(self.law, **self.law_options)

    def predict_arrays(self, curves, params: dict | None = None) -> list[np.ndarray]:
        """Predicted loss at every eval step of every curve (NaN where undefined, e.g. step 0)."""
        law = self.get_law()
        F = law.features(curves, self.lam, self.options.get("warmup_as_peak", True))
        p = params or self.params
        with np.errstate(all="ignore"):
            pred = np.asarray(law.predict({k: np.float64(v) for k, v in p.items()}, F), float)
        pred = np.where(np.isfinite(pred), pred, np.nan)
        cuts = np.cumsum([len(c.steps) for c in curves])[:-1]
        return np.split(pred, cuts)

    def predict(self, curves, band: bool = False, level: float = 0.95) -> pd.DataFrame:
        """Predictions as a DataFrame: run_id, step, split, loss, pred (+ pred_lo, pred_hi with band)."""
        preds = self.predict_arrays(curves)
        df = pd.DataFrame(
            {
                "run_id": np.concatenate([[c.run_id] * len(c.steps) for c in curves]) if curves else [],
                "step": np.concatenate([c.steps for c in curves]) if curves else [],
                "split": np.concatenate([[c.split] * len(c.steps) for c in curves]) if curves else [],
                "loss": np.concatenate([c.loss for c in curves]) if curves else [],
                "pred": np.concatenate(preds) if curves else [],
            }
        )
        if band:
            if not self.bootstrap_params:
                df["pred_lo"] = np.nan
                df["pred_hi"] = np.nan
            else:
                sims = np.array([np.concatenate(self.predict_arrays(curves, bp)) for bp in self.bootstrap_params])
                q = (1 - level) / 2
                lo = np.full(sims.shape[1], np.nan)
                hi = lo.copy()
                ok = np.isfinite(sims).any(axis=0)  # undefined points (step 0) stay NaN
                lo[ok] = np.nanquantile(sims[:, ok], q, axis=0)
                hi[ok] = np.nanquantile(sims[:, ok], 1 - q, axis=0)
                df["pred_lo"], df["pred_hi"] = lo, hi
        return df

    def to_dict(self) -> dict:
        return {
            "law": self.law,
            "law_options": self.law_options,
            "split": self.split,
            "params": self.params,
            "lam": self.lam,
            "intervals": self.intervals,
            "diagnostics": self.diagnostics,
            "fit_runs": self.fit_runs,
            "heldout": self.heldout,
            "options": self.options,
            "bootstrap_params": self.bootstrap_params,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FitResult:
        for k in ("law", "params", "lam"):
            if k not in d:
                raise InputError(f"fit JSON: missing key '{k}'")
        law = get_law(d["law"], **d.get("law_options", {}))
        missing = sorted(set(law.params) - set(d["params"]))
        if missing:
            raise InputError(f"fit JSON: law '{d['law']}' needs params {missing}")
        return cls(
            law=d["law"],
            params={k: float(v) for k, v in d["params"].items()},
            lam=float(d["lam"]),
            split=d.get("split"),
            law_options=d.get("law_options", {}),
            intervals=d.get("intervals", {}),
            diagnostics=d.get("diagnostics", {}),
            fit_runs=list(d.get("fit_runs", [])),
            heldout=d.get("heldout", {}),
            options=d.get("options", {}),
            bootstrap_params=list(d.get("bootstrap_params", [])),
        )


# ------------------------------------------------------------------------------------------ fitting
def _fit_at_lambda(
    law, curves, lam, y_all, n_starts, n_refine, delta, fixed, rng, warmup_as_peak, extra=(), nested=True
):
    F = law.features(curves, lam, warmup_as_peak)
    prob = _Problem(law, F, y_all, law.bounds(y_all), fixed, delta)
    ex = [prob.to_u(e) for e in extra]
    return _multistart(prob, law, y_all, n_starts, n_refine, rng, ex, nested), prob


def fit_law(law, curves, **kwargs) -> FitResult:
    """Fit ``law`` (name or Law) to ``curves`` (list of Curve); see ``_fit_law`` for the options.

    BLAS is limited to one thread during the fit: L-BFGS-B does many tiny BLAS calls, and on a
    shared machine thread hand-offs cost more than the work (measured 4x slower with default threads).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional at run time; the fit is only slower without it
        return _fit_law(law, curves, **kwargs)
    with threadpool_limits(limits=1):
        return _fit_law(law, curves, **kwargs)


def _fit_law(
    law: str | Law,
    curves,
    *,
    n_starts: int = 500,
    lam: float | str = DEFAULT_LAMBDA,
    huber_delta: float = 1e-3,
    drop_warmup: bool = True,
    drop_first_frac: float = 0.0,
    bootstrap: int = 0,
    seed: int = 0,
    fixed: dict | None = None,
    warmup_as_peak: bool = True,
    n_refine: int = 4,
    lam_range: tuple[float, float] = LAMBDA_RANGE,
    law_options: dict | None = None,
    warm_start: bool = True,
) -> FitResult:
    """Fit ``law`` to ``curves`` (list of Curve). ``lam`` is a number or "fit". See the module doc.

    ``warm_start``: add the law's own starts (``Law.warm_starts``, e.g. the replay law from a CPT-law fit)."""
    t0 = time.perf_counter()
    law = get_law(law, **(law_options or {}))
    curves = list(curves)
    _check_inputs(law, curves, n_starts, huber_delta)
    sel, dropped_w, _ = select_points(curves, drop_warmup, drop_first_frac)
    n_pts = _check_enough_points(law, sel, fixed, dropped_w)
    y = np.concatenate([c.loss for c in sel])
    fitter = _Fitter(law, sel, y, huber_delta, fixed, np.random.default_rng(seed), warmup_as_peak)
    fit_lam, lam = _resolve_lambda(law, lam)

    def nested(name, cs):
        return _fit_law(
            name,
            cs,
            n_starts=max(n_starts // 2, 50),
            lam=lam if not fit_lam else DEFAULT_LAMBDA,
            huber_delta=huber_delta,
            drop_warmup=False,
            seed=seed,
            warmup_as_peak=warmup_as_peak,
            n_refine=n_refine,
            warm_start=False,
        )

    starts = law.warm_starts(sel, nested) if warm_start else []
    extra = [np.array([float(s[n]) for n in law.params]) for s in starts]
    lam_trace = []
    if not fit_lam:
        run = fitter.at(lam, n_starts, n_refine, extra)
    else:
        lam, run, lam_trace = _search_lambda(fitter, n_starts, n_refine, lam_range, extra)
    options = {
        "warmup_as_peak": warmup_as_peak,
        "huber_delta": huber_delta,
        "drop_warmup": drop_warmup,
        "drop_first_frac": drop_first_frac,
        "lam_fitted": fit_lam,
        "n_refine": n_refine,
        "seed": seed,
        "fixed": dict(fixed or {}),
        "n_init_starts": len(starts),
    }
    result = _make_result(law, curves, lam, run, options)
    diag = _diagnostics(run, n_starts, n_pts, dropped_w, lam_trace)
    if bootstrap:
        diag["bootstrap"] = _add_bootstrap(fitter, result, bootstrap, n_starts)
    diag["wall_s"] = round(time.perf_counter() - t0, 4)
    result.diagnostics = diag
    return result


def _check_inputs(law: Law, curves: list, n_starts, huber_delta) -> None:
    """FitError unless there are curves the law accepts, a positive start count and delta, finite positive losses."""
    if not curves:
        raise FitError("no curves to fit")
    law.check_curves(curves)
    if not (isinstance(n_starts, (int, np.integer)) and n_starts >= 1):
        raise FitError(f"n_starts = {n_starts!r} must be a positive integer")
    if not huber_delta > 0:
        raise FitError(f"huber_delta = {huber_delta!r} must be > 0")
    for c in curves:
        if not (np.all(np.isfinite(c.loss)) and np.all(c.loss > 0)):
            raise FitError(f"run '{c.run_id}': loss contains NaN/inf or values <= 0")


def _check_enough_points(law: Law, sel: list, fixed: dict | None, dropped_w: int) -> int:
    """Number of usable points; FitError when there are not more than free parameters."""
    n_pts = sum(len(c.steps) for c in sel)
    n_free = len(law.params) - len(fixed or {})
    if n_pts < n_free + 1:
        raise FitError(
            f"law '{law.name}': {n_pts} usable points for {n_free} free parameters "
            f"(need at least {n_free + 1}; {dropped_w} warm-up points dropped)"
        )
    return n_pts


def _resolve_lambda(law: Law, lam: float | str) -> tuple[bool, float | str]:
    """(whether lambda is fitted, the fixed lambda as a float or "fit"); FitError on a bad value."""
    fit_lam = isinstance(lam, str)
    if fit_lam and lam != "fit":
        raise FitError(f"lam = {lam!r}: give a number in [0, 1) or 'fit'")
    if not law.uses_lambda:
        fit_lam, lam = False, DEFAULT_LAMBDA if fit_lam else float(lam)
    if not fit_lam:
        lam = float(lam)
        if not 0.0 <= lam < 1.0:
            raise FitError(f"lam = {lam!r} must be in [0, 1)")
    return fit_lam, lam


@dataclasses.dataclass
class _Fitter:
    """What every multi-start of one fit shares: the law, its points, the objective settings and the RNG."""

    law: Law
    sel: list
    y: np.ndarray
    delta: float
    fixed: dict | None
    rng: np.random.Generator
    warmup_as_peak: bool

    def at(self, lam: float, n_starts: int, n_refine: int, extra=()) -> _Run:
        """Best multi-start run at a fixed lambda."""
        run, _ = _fit_at_lambda(
            self.law,
            self.sel,
            lam,
            self.y,
            n_starts,
            n_refine,
            self.delta,
            self.fixed,
            self.rng,
            self.warmup_as_peak,
            extra,
        )
        return run


def _search_lambda(fitter: _Fitter, n_starts: int, n_refine: int, lam_range, extra) -> tuple[float, _Run, list]:
    """Outer 1-D search in x = log(1 - lambda): grid, then golden-section between the best's neighbours.

    Returns (lambda, its run, the (lambda, objective) trace of every evaluation)."""
    trace = []
    xs = np.linspace(math.log(1 - lam_range[1]), math.log(1 - lam_range[0]), 8)
    runs = []
    for x in xs:
        r = fitter.at(1 - math.exp(x), n_starts, n_refine, ([runs[-1][1].p] if runs else []) + extra)
        runs.append((x, r))
        trace.append((1 - math.exp(x), r.obj))
    j = int(np.argmin([r.obj for _, r in runs]))
    a, b = xs[max(j - 1, 0)], xs[min(j + 1, len(xs) - 1)]
    best_x, best = _golden_lambda(fitter, max(n_starts // 10, 20), max(n_refine // 3, 2), a, b, runs[j], trace)
    return 1 - math.exp(best_x), best, trace


def _golden_lambda(fitter: _Fitter, n_starts: int, n_refine: int, a: float, b: float, best: tuple, trace: list):
    """Golden-section search (8 steps) over x in [a, b], each point started from the best run so far.

    ``best`` is (x, run) of the grid's best; returns the best (x, run) seen, appending to ``trace``."""
    cache = {}

    def f(x):
        nonlocal best
        if x not in cache:
            r = fitter.at(1 - math.exp(x), n_starts, n_refine, [best[1].p])
            cache[x] = r
            trace.append((1 - math.exp(x), r.obj))
            if r.obj < best[1].obj:
                best = (x, r)
        return cache[x].obj

    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(8):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return best


def _make_result(law: Law, curves: list, lam: float, run: _Run, options: dict) -> FitResult:
    return FitResult(
        law=law.name,
        params={n: float(v) for n, v in zip(law.params, run.p)},
        lam=float(lam),
        split=curves[0].split if len({c.split for c in curves}) == 1 else None,
        law_options=law.options(),
        fit_runs=sorted({c.run_id for c in curves}),
        options=options,
    )


def _diagnostics(run: _Run, n_starts: int, n_pts: int, dropped_w: int, lam_trace: list) -> dict:
    diag = {
        "objective": run.obj,
        "n_starts": int(n_starts),
        "n_refined": run.n_refined,
        "n_near_best": run.n_near,
        "at_bound": run.at_bound,
        "n_points": int(n_pts),
        "dropped_warmup_points": int(dropped_w),
        "converged": bool(run.success),
    }
    if lam_trace:
        diag["lambda_trace"] = [[float(a), float(b)] for a, b in sorted(lam_trace)]
    return diag


def _add_bootstrap(fitter: _Fitter, result: FitResult, bootstrap: int, n_starts: int) -> dict:
    """Fill ``result``'s bootstrap parameters and 95 % intervals; returns the diagnostics entry."""
    law, sel = fitter.law, fitter.sel
    result.bootstrap_params = _bootstrap(
        law, sel, result, bootstrap, n_starts, fitter.delta, fitter.fixed, fitter.rng, fitter.warmup_as_peak
    )
    arr = np.array([[bp[n] for n in law.params] for bp in result.bootstrap_params])
    result.intervals = {
        n: [float(np.quantile(arr[:, i], 0.025)), float(np.quantile(arr[:, i], 0.975))]
        for i, n in enumerate(law.params)
    }
    return {"n": int(bootstrap), "unit": "curve" if len(sel) > 1 else "point", "lam": "fixed at fit"}


def _bootstrap(law, sel, result, B, n_starts, delta, fixed, rng, warmup_as_peak) -> list[dict]:
    """Refit on resampled curves (or points when there is one curve) at the fitted lambda."""
    out = []
    p0 = np.array([result.params[n] for n in law.params])
    for _ in range(int(B)):
        if len(sel) > 1:
            pick = rng.integers(0, len(sel), len(sel))
            cs = [sel[i] for i in pick]
        else:
            c = sel[0]
            idx = np.sort(rng.integers(0, len(c.steps), len(c.steps)))
            idx = np.unique(idx)
            cs = [dataclasses.replace(c, steps=c.steps[idx], loss=c.loss[idx])]
        y = np.concatenate([c.loss for c in cs])
        try:
            # a refit starts at the fit's optimum: the 3 best screened starts suffice (nested polishing would
            # make the bootstrap about 4x slower and it is not needed for monotonicity of the fit itself)
            r, _ = _fit_at_lambda(
                law, cs, result.lam, y, max(n_starts // 5, 20), 3, delta, fixed, rng, warmup_as_peak, [p0], nested=False
            )
        except FitError:
            continue
        out.append({n: float(v) for n, v in zip(law.params, r.p)})
    if not out:
        raise FitError(f"law '{law.name}': every bootstrap refit failed")
    return out
