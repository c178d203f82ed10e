"""Critical Mixture Ratio (CMR) law of Gu et al., "CMR Scaling Law" (arXiv 2407.17467).

Notation (docs/cmr.md, laws.md section 5): R = domain share of the CPT mixture, T = CPT tokens (in a unit
the caller chooses; the paper uses 0.2 B tokens), increments dL = L(R, T) - L(before CPT).

Pieces:
- ``fit_loss_vs_ratio``      L(R) = a*R^s + b at a fixed token budget.
- ``fit_increment_domain``   dL_dom(T) = a1*T^s1 + b1, one fit per ratio.
- ``fit_increment_general``  dL_gen(T) = a2*T^s2 + a3*T^s3 + b2 (rises, then falls), one fit per ratio.
- ``switch_point``           T0: first T where d dL_dom/dT + lam * d dL_gen/dT <= 0.
- ``critical_mixture_ratio`` largest R with dL_gen(R, T_max) <= eps and T0(R) <= T_max, found by
                             root-finding on R between the trained ratios.
- ``fit_cmr_scaling_law`` / ``cmr_scaling_law``   R_CMR(T) = a4*T^s4 + b3.
- ``cmr_from_curves``        the whole analysis from a long table of eval losses.

Fitting method (all the power laws here): every model is linear in its amplitudes once the exponents are
fixed, so we use variable projection. A grid over the exponents (1-D, or all pairs s2 < s3 for the
two-term law) is solved in closed form for the amplitudes and offset; the best distinct grid points are
then refined by bounded ``scipy.optimize.least_squares`` over the exponents alone (amplitudes re-solved
exactly at every step). This searches the exponents exhaustively instead of relying on random starts,
which matters for the two-term general law (the terms can swap or cancel), and it does not crawl along
the flat a -> inf, s -> 0 direction the way a joint fit of all parameters does. Residuals are plain
(not log) because the increments cross zero, where log residuals are undefined; the eval losses are
averages over many tokens, so their noise is close to Gaussian and least squares is the right default. A robust loss (``loss="huber"`` / ``"soft_l1"``) is
available for curves with outliers (e.g. a spiking eval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq, least_squares

from cptlaws.errors import FitError, InputError

__all__ = [
    "PAPER_T_UNIT_TOKENS",
    "PAPER_CMR_LAWS",
    "PowerFit",
    "fit_power_law",
    "fit_loss_vs_ratio",
    "fit_increment_domain",
    "fit_increment_general",
    "switch_point",
    "CMRResult",
    "critical_mixture_ratio",
    "critical_mixture_ratio_from_fits",
    "fit_cmr_scaling_law",
    "cmr_scaling_law",
    "cmr_from_curves",
]

# The paper measures T in units of 0.2 B tokens (T = 100 <-> 20 B tokens).
PAPER_T_UNIT_TOKENS = 2.0e8

# Published CMR-law fits, Finance domain, T_max = 20 B tokens (laws.md section 5): (a4, s4, b3).
PAPER_CMR_LAWS: dict[str, tuple[float, float, float]] = {
    "460M": (0.22524761, 0.26944345, -0.48139982),
    "940M": (0.7520627, 0.13720245, -1.06581937),
    "1.6B": (-2.36384831, -0.15125569, 1.59223649),
    "3.1B": (-2.5368197, -0.42071423, 0.84375368),
}

DEFAULT_EXP_BOUNDS = (-3.0, 3.0)


# --------------------------------------------------------------------------------------------------
# Power-law sums y = sum_k a_k x^s_k + b
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerFit:
    """y(x) = sum_k amps[k] * x**exps[k] + offset, with named parameters.

    ``terms`` names each (amplitude, exponent) pair, ``offset_name`` the constant, e.g.
    ``terms=(("a2", "s2"), ("a3", "s3")), offset_name="b2"``. ``diagnostics`` holds fit quality
    (empty for laws built from given parameters).
    """

    terms: tuple[tuple[str, str], ...]
    offset_name: str
    amps: tuple[float, ...]
    exps: tuple[float, ...]
    offset: float
    x_name: str = "x"
    diagnostics: dict = field(default_factory=dict, compare=False)

    @property
    def params(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (an, sn), a, s in zip(self.terms, self.amps, self.exps):
            out[an] = float(a)
            out[sn] = float(s)
        out[self.offset_name] = float(self.offset)
        return out

    def predict(self, x) -> np.ndarray | float:
        xa = np.asarray(x, dtype=float)
        y = np.full(xa.shape, float(self.offset))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for a, s in zip(self.amps, self.exps):
                y = y + a * np.power(xa, s)
        return float(y) if np.ndim(x) == 0 else y

    __call__ = predict

    def derivative(self, x) -> np.ndarray | float:
        """dy/dx."""
        xa = np.asarray(x, dtype=float)
        d = np.zeros(xa.shape)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for a, s in zip(self.amps, self.exps):
                d = d + a * s * np.power(xa, s - 1.0)
        return float(d) if np.ndim(x) == 0 else d

    def to_dict(self) -> dict:
        return {"params": self.params, "x": self.x_name, "diagnostics": _jsonable(self.diagnostics)}

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, float] | Sequence[float],
        terms: Sequence[Sequence[str]],
        offset_name: str,
        x_name: str = "x",
    ) -> PowerFit:
        """Build from a mapping with the named keys, or a sequence in order (a, s, ..., b)."""
        terms_t = tuple((str(a), str(s)) for a, s in terms)
        names = [n for pair in terms_t for n in pair] + [offset_name]
        if isinstance(params, Mapping):
            missing = [n for n in names if n not in params]
            if missing:
                raise FitError(f"parameters {missing} missing (need {names}, got {sorted(params)})")
            values = [params[n] for n in names]
        else:
            values = list(params)
            if len(values) != len(names):
                raise FitError(f"need {len(names)} parameters {names}, got {len(values)}: {values}")
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            raise FitError(f"parameters {names} must be numbers, got {values}") from None
        bad = [n for n, v in zip(names, vals) if not math.isfinite(v)]
        if bad:
            raise FitError(f"parameters {bad} are not finite: {dict(zip(names, vals))}")
        k = len(terms_t)
        amps = tuple(vals[0 : 2 * k : 2])
        exps = tuple(vals[1 : 2 * k : 2])
        return cls(terms_t, offset_name, amps, exps, vals[-1], x_name)


_DOM_TERMS = (("a1", "s1"),)
_GEN_TERMS = (("a2", "s2"), ("a3", "s3"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def _check_xy(x, y, label: str, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        xa = np.asarray(x, dtype=float).ravel()
        ya = np.asarray(y, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise FitError(f"{label}: x and y must be numeric ({exc})") from None
    if xa.shape != ya.shape:
        raise FitError(f"{label}: x has {xa.size} values but y has {ya.size}")
    for name, arr in (("x", xa), ("y", ya)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise FitError(f"{label}: {name}[{bad[0]}] = {arr[bad[0]]} is not finite ({bad.size} such values)")
    bad = np.flatnonzero(xa <= 0)
    if bad.size:
        raise FitError(f"{label}: x[{bad[0]}] = {xa[bad[0]]} must be > 0 (power laws need positive x)")
    if np.unique(xa).size < min_points:
        raise FitError(
            f"{label}: {np.unique(xa).size} distinct x values, need at least {min_points} for {min_points} parameters"
        )
    return xa, ya


def fit_power_law(
    x,
    y,
    n_terms: int = 1,
    *,
    terms: Sequence[Sequence[str]] | None = None,
    offset_name: str = "b",
    x_name: str = "x",
    exp_bounds: tuple[float, float] = DEFAULT_EXP_BOUNDS,
    n_grid: int | None = None,
    n_polish: int = 8,
    min_exp_gap: float = 0.05,
    loss: str = "linear",
    f_scale: float = 1.0,
    label: str = "power-law fit",
) -> PowerFit:
    """Fit y = sum_{k<n_terms} a_k x^s_k + b (n_terms 1 or 2) by variable projection + bounded polish.

    Exponents are searched on a grid within ``exp_bounds`` (two-term: all pairs with s_1 + min_exp_gap
    <= s_2); amplitudes and offset are solved in closed form at every grid point; the ``n_polish``
    best distinct grid points are refined over the exponents with ``least_squares`` (amplitudes
    re-solved inside). A robust ``loss`` ("huber", "soft_l1", "cauchy"; residual scale ``f_scale`` as in
    scipy) adds a joint refinement of all parameters from each least-squares solution.
    Raises FitError on too few points, non-finite data, x <= 0, or when no refinement is finite.
    ``diagnostics``: rss, rmse, r2, n_near_best (refinements within 1 % of the best cost), at_bound
    (exponents stuck at ``exp_bounds``), exactly_determined (as many distinct x as parameters).
    """
    if n_terms not in (1, 2):
        raise FitError(f"{label}: n_terms must be 1 or 2, got {n_terms}")
    if terms is None:
        terms = (("a", "s"),) if n_terms == 1 else (("a1", "s1"), ("a2", "s2"))
    terms = tuple((str(a), str(s)) for a, s in terms)
    if len(terms) != n_terms:
        raise FitError(f"{label}: {len(terms)} term names for {n_terms} terms")
    lo, hi = (float(v) for v in exp_bounds)
    if not (lo < hi) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise FitError(f"{label}: exp_bounds must be finite with lo < hi, got {exp_bounds}")
    n_par = 2 * n_terms + 1
    xa, ya = _check_xy(x, y, label, n_par)
    n = xa.size

    # Work in x / x_ref (geometric mean) so the grid's design matrices are well conditioned.
    x_ref = float(np.exp(np.mean(np.log(xa))))
    lx = np.log(xa / x_ref)

    if n_grid is None:
        n_grid = 241 if n_terms == 1 else 61
    grid = np.linspace(lo, hi, int(n_grid))
    if n_terms == 1:
        combos = grid[np.abs(grid) > 1e-9][:, None]
    else:
        i, j = np.triu_indices(grid.size, k=1)
        keep = (grid[j] - grid[i] >= min_exp_gap) & (np.abs(grid[i]) > 1e-9) & (np.abs(grid[j]) > 1e-9)
        combos = np.stack([grid[i][keep], grid[j][keep]], axis=1)
    if combos.shape[0] == 0:
        raise FitError(f"{label}: exponent grid is empty (exp_bounds={exp_bounds}, min_exp_gap={min_exp_gap})")

    # Batched closed-form amplitudes: X (G, n, K+1) with unit-norm columns for a stable pseudo-inverse.
    cols = np.exp(combos[:, None, :] * lx[None, :, None])  # (G, n, K)
    X = np.concatenate([cols, np.ones((combos.shape[0], n, 1))], axis=2)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    Xn = X / norms
    coef = np.einsum("gkn,n->gk", np.linalg.pinv(Xn), ya) / norms[:, 0, :]
    resid = np.einsum("gnk,gk->gn", X, coef) - ya
    rss = np.einsum("gn,gn->g", resid, resid)
    rss[~np.isfinite(rss)] = np.inf
    order = np.argsort(rss)

    def model(theta):
        a = theta[:n_terms]
        s = theta[n_terms : 2 * n_terms]
        p = np.exp(s[None, :] * lx[:, None])  # (n, K)
        return p @ a + theta[-1], p

    def fun(theta):
        return model(theta)[0] - ya

    def jac(theta):
        a = theta[:n_terms]
        _, p = model(theta)
        return np.concatenate([p, p * a[None, :] * lx[:, None], np.ones((n, 1))], axis=1)

    lb = np.r_[np.full(n_terms, -np.inf), np.full(n_terms, lo), -np.inf]
    ub = np.r_[np.full(n_terms, np.inf), np.full(n_terms, hi), np.inf]
    # Polish starts: the best grid points, skipping near-duplicates (within two grid steps of a chosen one).
    step = (hi - lo) / max(int(n_grid) - 1, 1)
    starts: list[int] = []
    for g in order:
        if len(starts) >= max(1, int(n_polish)) or not np.isfinite(rss[g]):
            break
        if all(np.max(np.abs(combos[g] - combos[c])) > 2.5 * step for c in starts):
            starts.append(int(g))
    ones = np.ones((n, 1))

    def amplitudes(s_vec):
        X = np.concatenate([np.exp(s_vec[None, :] * lx[:, None]), ones], axis=1)
        nrm = np.linalg.norm(X, axis=0)
        nrm[nrm == 0] = 1.0
        c = np.linalg.lstsq(X / nrm, ya, rcond=None)[0] / nrm
        return X, c

    def projected(s_vec):
        X, c = amplitudes(s_vec)
        return X @ c - ya

    results = []
    for g in starts:
        try:
            # Variable projection: optimise the exponents only, amplitudes solved exactly inside. This avoids
            # the slow crawl of a joint fit along the flat a->inf, s->0 (log-law) direction.
            pr = least_squares(
                projected,
                combos[g],
                bounds=(np.full(n_terms, lo), np.full(n_terms, hi)),
                method="trf",
                max_nfev=200,
                ftol=1e-12,
                xtol=1e-12,
                gtol=1e-12,
            )
            _, c = amplitudes(pr.x)
            theta0 = np.r_[c[:n_terms], pr.x, c[-1]]
            if loss == "linear":
                res = pr
                res.x = theta0
            else:  # robust loss: joint refinement from the least-squares solution
                res = least_squares(
                    fun,
                    theta0,
                    jac=jac,
                    bounds=(lb, ub),
                    loss=loss,
                    f_scale=f_scale,
                    x_scale="jac",
                    method="trf",
                    max_nfev=200,
                    ftol=1e-10,
                    xtol=1e-10,
                    gtol=1e-10,
                )
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(res.x)) and np.isfinite(res.cost):
            results.append(res)
    if not results:
        raise FitError(f"{label}: no start converged to finite parameters ({n} points)")
    costs = np.array([r.cost for r in results])
    best = results[int(np.argmin(costs))]
    theta = best.x
    amps_s = theta[:n_terms]
    exps = theta[n_terms : 2 * n_terms]
    # Canonical order: increasing exponent (the two-term law is symmetric under swapping terms).
    idx = np.argsort(exps)
    exps = exps[idx]
    amps = amps_s[idx] * np.power(x_ref, -exps)
    fit_res = fun(theta)
    rss_best = float(fit_res @ fit_res)
    tss = float(np.sum((ya - ya.mean()) ** 2))
    best_cost = float(best.cost)
    diagnostics = {
        "n_points": int(n),
        "n_params": n_par,
        "rss": rss_best,
        "rmse": math.sqrt(rss_best / n),
        "r2": (1.0 - rss_best / tss) if tss > 0 else float("nan"),
        "exactly_determined": bool(np.unique(xa).size == n_par),
        "loss": loss,
        "n_grid": int(combos.shape[0]),
        "n_polished": len(results),
        "n_near_best": int(np.sum(costs <= best_cost * 1.01 + 1e-15)),
        "at_bound": [terms[k][1] for k in range(n_terms) if min(exps[k] - lo, hi - exps[k]) < 1e-6],
        "x_range": [float(xa.min()), float(xa.max())],
        "converged": bool(best.status > 0),
    }
    if not np.all(np.isfinite(amps)):
        raise FitError(f"{label}: fitted amplitudes are not finite ({amps})")
    return PowerFit(
        terms, offset_name, tuple(map(float, amps)), tuple(map(float, exps)), float(theta[-1]), x_name, diagnostics
    )


def fit_loss_vs_ratio(
    R,
    L,
    *,
    include_one: bool = False,
    exp_bounds: tuple[float, float] = DEFAULT_EXP_BOUNDS,
    loss: str = "linear",
    f_scale: float = 1.0,
    label: str = "L(R) fit",
) -> PowerFit:
    """Fit L(R) = a*R^s + b to losses at one token budget.

    Only interior ratios 0 < R < 1 are used by default (laws.md section 5); ``include_one=True`` also
    uses R = 1 (the paper's 100/75/50/33 -> 25 % check). R = 0 is never used (R^s is undefined for
    s < 0). Which ratios were used/dropped is in ``diagnostics``.
    """
    Ra = np.asarray(R, dtype=float).ravel()
    La = np.asarray(L, dtype=float).ravel()
    if Ra.shape != La.shape:
        raise FitError(f"{label}: {Ra.size} ratios but {La.size} losses")
    bad = np.flatnonzero(~np.isfinite(Ra) | (Ra < 0) | (Ra > 1))
    if bad.size:
        raise FitError(f"{label}: ratio[{bad[0]}] = {Ra[bad[0]]} is not a domain share in [0, 1]")
    bad = np.flatnonzero(~np.isfinite(La) | (La <= 0))
    if bad.size:
        raise FitError(f"{label}: loss[{bad[0]}] = {La[bad[0]]} must be a finite positive loss")
    use = (Ra > 0) & ((Ra < 1) | include_one)
    fit = fit_power_law(
        Ra[use],
        La[use],
        1,
        terms=(("a", "s"),),
        offset_name="b",
        x_name="ratio",
        exp_bounds=exp_bounds,
        loss=loss,
        f_scale=f_scale,
        label=label,
    )
    fit.diagnostics["ratios_used"] = sorted(set(map(float, Ra[use])))
    fit.diagnostics["ratios_dropped"] = sorted(set(map(float, Ra[~use])))
    return fit


def fit_increment_domain(
    T, dL, *, exp_bounds=DEFAULT_EXP_BOUNDS, loss: str = "linear", f_scale: float = 1.0, label: str = "dL_dom(T) fit"
) -> PowerFit:
    """Fit dL_dom(T) = a1*T^s1 + b1 (T > 0: CPT tokens in the caller's unit)."""
    return fit_power_law(
        T,
        dL,
        1,
        terms=_DOM_TERMS,
        offset_name="b1",
        x_name="T",
        exp_bounds=exp_bounds,
        loss=loss,
        f_scale=f_scale,
        label=label,
    )


def fit_increment_general(
    T,
    dL,
    *,
    exp_bounds=DEFAULT_EXP_BOUNDS,
    loss: str = "linear",
    f_scale: float = 1.0,
    min_exp_gap: float = 0.05,
    label: str = "dL_gen(T) fit",
) -> PowerFit:
    """Fit dL_gen(T) = a2*T^s2 + a3*T^s3 + b2 with s2 < s3 (needs >= 5 distinct T > 0)."""
    return fit_power_law(
        T,
        dL,
        2,
        terms=_GEN_TERMS,
        offset_name="b2",
        x_name="T",
        exp_bounds=exp_bounds,
        loss=loss,
        f_scale=f_scale,
        min_exp_gap=min_exp_gap,
        label=label,
    )


def _as_power(obj, terms, offset_name, what: str) -> PowerFit:
    if isinstance(obj, PowerFit):
        return obj
    try:
        return PowerFit.from_params(obj, terms, offset_name, "T")
    except ValueError as exc:
        raise FitError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Switch point
# --------------------------------------------------------------------------------------------------


def _slope(dom_d: np.ndarray, gen_d: np.ndarray, lam: float) -> np.ndarray:
    """(d dL_dom/dT + lam * d dL_gen/dT) / lam; lam = inf -> d dL_gen/dT. Same sign as the objective."""
    if math.isinf(lam):
        return gen_d
    return dom_d / lam + gen_d


def switch_point(
    dom_params, gen_params, lam: float, T_range: tuple[float, float], *, n_grid: int = 2048
) -> float | None:
    """Switch point T0 = first T in ``T_range`` where d dL_dom/dT + lam * d dL_gen/dT <= 0.

    ``dom_params`` / ``gen_params``: PowerFit, or mappings {a1,s1,b1} / {a2,s2,a3,s3,b2}, or sequences
    in that order. Before T0 the weighted loss L_dom + lam*L_gen still rises (forgetting dominates);
    after it both fall. If the slope is already <= 0 at ``T_range[0]`` the switch happened at or before
    the start of the range and ``T_range[0]`` is returned; None if the slope stays > 0 on the whole
    range. ``lam = inf`` gives the turning point of dL_gen. The crossing is refined with brentq.
    """
    dom = _as_power(dom_params, _DOM_TERMS, "b1", "switch_point dom_params")
    gen = _as_power(gen_params, _GEN_TERMS, "b2", "switch_point gen_params")
    lam = float(lam)
    if not lam > 0:
        raise FitError(f"switch_point: lam must be > 0 (or inf), got {lam}")
    t_lo, t_hi = (float(v) for v in T_range)
    if not (0 < t_lo < t_hi) or not math.isfinite(t_hi):
        raise FitError(f"switch_point: T_range must satisfy 0 < lo < hi < inf, got {T_range}")
    Tg = np.geomspace(t_lo, t_hi, int(n_grid))

    def g(t):
        return _slope(np.asarray(dom.derivative(t)), np.asarray(gen.derivative(t)), lam)

    vals = g(Tg)
    hit = np.flatnonzero(vals <= 0)
    if hit.size == 0:
        return None
    j = int(hit[0])
    if j == 0:
        return t_lo
    return float(brentq(lambda t: float(g(t)), Tg[j - 1], Tg[j], xtol=1e-12 * Tg[j], rtol=1e-12))


# --------------------------------------------------------------------------------------------------
# Critical mixture ratio
# --------------------------------------------------------------------------------------------------


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
        return _jsonable(out)


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
        return (PowerFit.from_params(pd, _DOM_TERMS, "b1", "T"), PowerFit.from_params(pg, _GEN_TERMS, "b2", "T"))

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
    eps, lam, T_max, T_lo = float(eps), float(lam), float(T_max), float(T_lo)
    if not (eps >= 0 and math.isfinite(eps)):
        raise FitError(f"CMR: eps must be a finite tolerance >= 0, got {eps}")
    if not lam > 0:
        raise FitError(f"CMR: lam must be > 0 (or inf), got {lam}")
    if not (0 < T_lo < T_max and math.isfinite(T_max)):
        raise FitError(f"CMR: need 0 < T_lo < T_max < inf, got T_lo={T_lo}, T_max={T_max}")
    order = np.argsort(R)
    R = R[order]
    dom = [_as_power(dom_fits[i], _DOM_TERMS, "b1", f"CMR domain fit for ratio {R[k]:g}") for k, i in enumerate(order)]
    gen = [_as_power(gen_fits[i], _GEN_TERMS, "b2", f"CMR general fit for ratio {R[k]:g}") for k, i in enumerate(order)]
    gvr = None
    if gen_vs_ratio is not None:
        gvr = _as_power(gen_vs_ratio, (("a", "s"),), "b", "CMR gen_vs_ratio")
        if L_gen0 is None or not math.isfinite(float(L_gen0)):
            raise FitError("CMR: gen_vs_ratio needs L_gen0 (the general loss before CPT)")
    Tg = np.geomspace(T_lo, T_max, int(n_T))
    curves = _RatioCurves(R, dom, gen, Tg, T_max, interp)

    def tol_violation(r: float) -> float:  # <= 0 inside A
        if gvr is not None:
            return float(gvr.predict(r)) - float(L_gen0) - eps
        return curves.at_tmax(r)[0] - eps

    def switch_violation(r: float) -> float:  # <= 0 iff T0(r) <= T_max
        dd, gd = curves.slopes(r)
        return float(np.min(_slope(dd, gd, lam)))

    Rg = np.unique(np.concatenate([np.linspace(R[0], R[-1], int(n_R)), R]))
    slopes_g = (
        [_slope(*curves.slopes(r), lam) for r in Rg]
        if interp == "params"
        else list(_slope(curves._dd(Rg), curves._gd(Rg), lam))
    )
    at_t = [curves.at_tmax(r) for r in Rg] if interp == "params" else [tuple(v) for v in curves._v(Rg)]
    if gvr is not None:
        h1 = np.asarray(gvr.predict(Rg)) - float(L_gen0) - eps
    else:
        h1 = np.array([v[0] for v in at_t]) - eps
    h2 = np.array([float(np.min(sg)) for sg in slopes_g])
    if not (np.all(np.isfinite(h1)) and np.all(np.isfinite(h2))):
        raise FitError("CMR: the interpolated increment curves are not finite on the ratio grid")
    feas = (h1 <= 0) & (h2 <= 0)

    def boundary(r_in: float, r_out: float) -> float:
        """Root of max(h1, h2) between a feasible and an infeasible grid point (continuous, sign change)."""

        def f(r):
            return max(tol_violation(r), switch_violation(r))

        if r_in == r_out:
            return r_in
        return float(brentq(f, min(r_in, r_out), max(r_in, r_out), xtol=1e-10, rtol=1e-10))

    intervals: list[tuple[float, float]] = []
    k = 0
    while k < Rg.size:
        if not feas[k]:
            k += 1
            continue
        start = k
        while k + 1 < Rg.size and feas[k + 1]:
            k += 1
        lo_edge = Rg[start] if start == 0 else boundary(Rg[start], Rg[start - 1])
        hi_edge = Rg[k] if k == Rg.size - 1 else boundary(Rg[k], Rg[k + 1])
        intervals.append((float(lo_edge), float(hi_edge)))
        k += 1

    # Per-ratio records from the ratios' own fits (exact, not interpolated).
    per_ratio = []
    for r, d, g in zip(R, dom, gen):
        t0 = switch_point(d, g, lam, (T_lo, T_max))
        dg, ddm = float(g.predict(T_max)), float(d.predict(T_max))
        in_a = tol_violation(float(r)) <= 0
        per_ratio.append(
            {
                "ratio": float(r),
                "T0": t0,
                "dL_gen_at_Tmax": dg,
                "dL_dom_at_Tmax": ddm,
                "in_A": bool(in_a),
                "feasible": bool(in_a and t0 is not None),
                "dom_params": d.params,
                "gen_params": g.params,
            }
        )

    t0_grid = [_first_nonpositive(Tg, sg)[0] for sg in slopes_g]
    grid = {
        "ratio": Rg.tolist(),
        "dL_gen_at_Tmax": [float(v[0]) for v in at_t],
        "dL_dom_at_Tmax": [float(v[1]) for v in at_t],
        "T0": t0_grid,
        "in_A": (h1 <= 0).tolist(),
        "feasible": feas.tolist(),
    }
    if gvr is not None:
        grid["L_gen_at_Tmax"] = [float(gvr.predict(r)) for r in Rg]
    common = dict(
        eps=eps,
        lam=lam,
        T_max=T_max,
        T_lo=T_lo,
        interp=interp,
        feasibility_from="L_gen(R) fit" if gvr is not None else "dL_gen(R, T_max) interpolated",
        per_ratio=per_ratio,
        grid=grid,
        diagnostics={"ratios": R.tolist(), "n_R_grid": int(Rg.size), "n_T_grid": int(n_T)},
    )
    if not intervals:
        why = []
        if np.all(h1 > 0):
            why.append(
                f"general-loss increase at T_max exceeds eps={eps:g} for every ratio (smallest {np.min(h1) + eps:.4g})"
            )
        if np.all(h2 > 0):
            why.append(f"no ratio reaches its switch point T0 <= T_max={T_max:g}")
        if not why:
            why.append("no ratio satisfies both conditions at once")
        msg = f"no feasible ratio in [{R[0]:g}, {R[-1]:g}]: " + "; ".join(why)
        return CMRResult(None, "no_feasible_ratio", msg, [], None, **common)

    cmr = intervals[-1][1]
    if cmr >= R[-1]:
        status, binding = "at_upper_bound", None
        msg = (
            f"the largest trained ratio {R[-1]:g} is feasible: CMR >= {R[-1]:g} "
            "(train larger ratios to locate it; no extrapolation)"
        )
    else:
        status = "ok"
        probe = min(cmr + 1e-7, float(R[-1]))  # just past the boundary, inside the interpolation range
        v1, v2 = tol_violation(probe), switch_violation(probe)
        binding = "both" if (v1 > 0 and v2 > 0) else ("tolerance" if v1 > 0 else "switch_point")
        msg = f"CMR = {cmr:.4f} (limited by the {binding.replace('_', ' ')})"
    return CMRResult(float(cmr), status, msg, intervals, binding, **common)


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
    dom_fits, gen_fits, t_los = [], [], []
    for i in range(n_r):
        t = Ts[i]
        keep_d = np.isfinite(t) & np.isfinite(ds[i]) & (t > 0) & (t <= T_max * (1 + 1e-9))
        keep_g = np.isfinite(t) & np.isfinite(gs[i]) & (t > 0) & (t <= T_max * (1 + 1e-9))
        dom_fits.append(
            fit_increment_domain(
                t[keep_d], ds[i][keep_d], loss=loss, f_scale=f_scale, label=f"dL_dom(T) fit for ratio {R[i]:g}"
            )
        )
        gen_fits.append(
            fit_increment_general(
                t[keep_g], gs[i][keep_g], loss=loss, f_scale=f_scale, label=f"dL_gen(T) fit for ratio {R[i]:g}"
            )
        )
        t_los.append(float(min(t[keep_d].min(), t[keep_g].min())))
    return critical_mixture_ratio_from_fits(
        R,
        dom_fits,
        gen_fits,
        T_max=T_max,
        T_lo=max(t_los),
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


# --------------------------------------------------------------------------------------------------
# CMR scaling law
# --------------------------------------------------------------------------------------------------


def cmr_scaling_law(
    params: Mapping[str, float] | Sequence[float] | PowerFit,
    T=None,
    *,
    tokens=None,
    t_unit_tokens: float = PAPER_T_UNIT_TOKENS,
):
    """R_CMR(T) = a4*T^s4 + b3. Give ``T`` in law units, or ``tokens`` (converted with ``t_unit_tokens``
    tokens per unit; the paper's unit is 0.2 B tokens). ``params``: {a4, s4, b3}, (a4, s4, b3) or a fit."""
    law = params if isinstance(params, PowerFit) else PowerFit.from_params(params, (("a4", "s4"),), "b3", "T")
    if (T is None) == (tokens is None):
        raise FitError("cmr_scaling_law: give exactly one of T (law units) or tokens")
    if T is None:
        if not t_unit_tokens > 0:
            raise FitError(f"cmr_scaling_law: t_unit_tokens must be > 0, got {t_unit_tokens}")
        T = np.asarray(tokens, dtype=float) / float(t_unit_tokens)
    Ta = np.asarray(T, dtype=float)
    if np.any(~np.isfinite(Ta)) or np.any(Ta <= 0):
        raise FitError(f"cmr_scaling_law: T must be finite and > 0, got {T}")
    return law.predict(T)


def fit_cmr_scaling_law(
    T,
    R_cmr,
    *,
    t_unit_tokens: float | None = None,
    exp_bounds=DEFAULT_EXP_BOUNDS,
    loss: str = "linear",
    f_scale: float = 1.0,
) -> PowerFit:
    """Fit R_CMR(T) = a4*T^s4 + b3 to (token budget, CMR) pairs. ``t_unit_tokens`` (tokens per T unit)
    is recorded in the diagnostics so the parameters are never read in the wrong unit."""
    fit = fit_power_law(
        T,
        R_cmr,
        1,
        terms=(("a4", "s4"),),
        offset_name="b3",
        x_name="T",
        exp_bounds=exp_bounds,
        loss=loss,
        f_scale=f_scale,
        label="CMR scaling-law fit",
    )
    fit.diagnostics["t_unit_tokens"] = t_unit_tokens
    return fit


# --------------------------------------------------------------------------------------------------
# Whole analysis from a long curves table
# --------------------------------------------------------------------------------------------------


def cmr_from_curves(
    df,
    *,
    domain_split: str,
    general_split: str = "general",
    x: str = "tokens",
    t_unit: float = 1.0,
    t_origin: str = "branch",
    ratios: Mapping[str, float] | None = None,
    baseline: str | Mapping[str, float] = "branch",
    eps: float = 0.05,
    lam: float = 1000.0,
    T_max: float | None = None,
    n_prefix: int = 8,
    interp: str = "curves",
    tolerance_from: str = "increments",
    loss: str = "linear",
    f_scale: float = 1.0,
    source: str = "curves table",
) -> dict:
    """Full CMR analysis from a long table with columns ``run_id, ratio, <x>, split, loss``.

    - ``x``: the token (or step) column. ``t_origin="branch"`` (default): the first row of each run
      (smallest x) is its branch point and T = (x - x_branch) / ``t_unit`` (the project's curves table
      logs global tokens and starts every CPT run with its branch point). ``t_origin="zero"``: x already
      counts CPT tokens, T = x / ``t_unit``.
    - ``baseline="branch"``: the pre-CPT losses L_gen0 / L_dom0 of a run are its branch-point row (the
      row at T = 0, required for both splits). Or give them: ``{general_split: L_gen0, domain_split:
      L_dom0}`` (then no branch row is needed).
    - ``ratios``: run_id -> domain share, when the table has no ``ratio`` column (e.g. from runs.parquet).
    - If a ``phase`` column exists only ``cpt`` rows are used.
    - Runs with the same ratio (seeds) are pooled in that ratio's fits.
    - ``tolerance_from``: "increments" (default) tests dL_gen(R, T_max) <= eps on the per-ratio fits
      interpolated in R; "loss_vs_ratio" (the paper's route) tests L_gen(R, T_max) <= L_gen0 + eps on
      the L(R) = a*R^s + b fit of the general loss at T_max (interior ratios; L_gen0 = mean baseline).

    Returns a JSON-ready dict: settings, baselines, loss_vs_ratio (L(R) fit at T_max per split),
    increments (per-ratio fits), cmr (``CMRResult.to_dict``), cmr_vs_tokens (CMR at several budgets),
    cmr_law (the fitted scaling law), and ``tables`` with long records for parquet/plots
    (``increments``: ratio, run_id, split, T, dL, fit).
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    if tolerance_from not in ("increments", "loss_vs_ratio"):
        raise InputError(f"{source}: tolerance_from must be 'increments' or 'loss_vs_ratio', got {tolerance_from!r}")
    if t_origin not in ("branch", "zero"):
        raise InputError(f"{source}: t_origin must be 'branch' or 'zero', got {t_origin!r}")
    if not (isinstance(t_unit, (int, float)) and t_unit > 0 and math.isfinite(t_unit)):
        raise InputError(f"{source}: t_unit must be a positive number, got {t_unit!r}")
    need = ["run_id", x, "split", "loss"] + ([] if ratios is not None else ["ratio"])
    missing = [c for c in need if c not in df.columns]
    if missing:
        hint = (
            " (give the run -> ratio mapping: ratios= / cptlaws cmr --ratios runs.parquet)"
            if "ratio" in missing
            else ""
        )
        raise InputError(f"{source}: missing column(s) {missing} (have {list(df.columns)}){hint}")
    d = df.copy()
    if "phase" in d.columns:
        d = d[d["phase"].astype(str) == "cpt"]
        if d.empty:
            raise InputError(f"{source}: no rows with phase == 'cpt'")
    if ratios is not None:
        missing_runs = sorted(set(d["run_id"].astype(str)) - set(map(str, ratios)))
        if missing_runs:
            raise InputError(f"{source}: no ratio given for run(s) {missing_runs[:5]}")
        d["ratio"] = d["run_id"].astype(str).map({str(k): v for k, v in ratios.items()})
    d["run_id"] = d["run_id"].astype(str)
    d["split"] = d["split"].astype(str)
    present = sorted(d["split"].unique())
    for sp in (general_split, domain_split):
        if sp not in present:
            raise InputError(f"{source}: no rows with split == {sp!r} (splits present: {present[:20]})")
    d = d[d["split"].isin([general_split, domain_split])]
    for col in (x, "loss", "ratio"):
        num = pd.to_numeric(d[col], errors="coerce")
        bad = d.index[num.isna() | ~np.isfinite(num.astype(float))]
        if len(bad):
            row = bad[0]
            raise InputError(
                f"{source}: row {row} (run {d.at[row, 'run_id']!r}): column '{col}' = "
                f"{d.at[row, col]!r} is not a finite number"
            )
        d[col] = num.astype(float)
    bad = d.index[d["loss"] <= 0]
    if len(bad):
        row = bad[0]
        raise InputError(f"{source}: row {row} (run {d.at[row, 'run_id']!r}): loss = {d.at[row, 'loss']} must be > 0")
    bad = d.index[(d["ratio"] < 0) | (d["ratio"] > 1)]
    if len(bad):
        row = bad[0]
        raise InputError(
            f"{source}: row {row} (run {d.at[row, 'run_id']!r}): ratio = {d.at[row, 'ratio']} "
            "is not a domain share in [0, 1]"
        )
    dup = d.duplicated(["run_id", "split", x], keep=False)
    if dup.any():
        row = d.index[dup][0]
        raise InputError(
            f"{source}: row {row} (run {d.at[row, 'run_id']!r}): duplicate ({x}, split) = "
            f"({d.at[row, x]}, {d.at[row, 'split']!r})"
        )

    runs = {}
    for run_id, g in d.groupby("run_id", sort=True):
        r = g["ratio"].unique()
        if r.size != 1:
            raise InputError(f"{source}: run {run_id!r} has several ratios {sorted(r.tolist())}")
        splits = set(g["split"])
        for sp in (general_split, domain_split):
            if sp not in splits:
                raise InputError(f"{source}: run {run_id!r} has no rows for split {sp!r}")
        # T origin: the branch point (first row of the run), or x itself is already CPT-relative.
        x0 = float(g[x].min()) if t_origin == "branch" else 0.0
        per = {}
        for sp in (general_split, domain_split):
            s = g[g["split"] == sp].sort_values(x)
            first = float(s[x].iloc[0])
            if t_origin == "zero" and first < 0:
                raise InputError(
                    f"{source}: run {run_id!r}: {x} = {first:g} < 0 with t_origin='zero' "
                    "(x must count CPT tokens from the branch point)"
                )
            if baseline == "branch" and first != x0:
                raise InputError(
                    f"{source}: run {run_id!r}: split {sp!r} has no row at the branch point "
                    f"{x} = {x0:g} (give the pre-CPT losses with baseline=...)"
                )
            if isinstance(baseline, Mapping):
                if sp not in baseline:
                    raise InputError(f"{source}: baseline has no loss for split {sp!r} (keys {sorted(baseline)})")
                l0 = float(baseline[sp])
            elif baseline == "branch":
                l0 = float(s["loss"].iloc[0])
            else:
                raise InputError(f"{source}: baseline must be 'branch' or a mapping split -> loss, got {baseline!r}")
            T = (s[x].to_numpy(float) - x0) / t_unit
            per[sp] = (T, s["loss"].to_numpy(float), l0)
        runs[run_id] = (float(r[0]), per)

    ratio_values = sorted({v[0] for v in runs.values()})
    if len(ratio_values) < 2:
        raise InputError(f"{source}: need runs at >= 2 distinct ratios for the CMR, got {ratio_values}")
    t_ends = [per[sp][0].max() for _, per in runs.values() for sp in per]
    if T_max is None:
        T_max = float(min(t_ends))
    T_max = float(T_max)
    if not (T_max > 0 and math.isfinite(T_max)):
        raise InputError(f"{source}: T_max must be > 0, got {T_max}")

    def pooled(rv: float, sp: str, t_cap: float):
        Ts, dLs = [], []
        for _, (r, per) in runs.items():
            if r == rv:
                T, L, l0 = per[sp]
                m = (T > 0) & (T <= t_cap * (1 + 1e-9))
                Ts.append(T[m])
                dLs.append(L[m] - l0)
        return np.concatenate(Ts), np.concatenate(dLs)

    def losses_at(t_cap: float) -> list[dict]:
        """Per ratio: the loss at the last eval with T <= t_cap, averaged over the ratio's runs."""
        recs = []
        for rv in ratio_values:
            rec = {"ratio": rv}
            for sp in (general_split, domain_split):
                vals, ts = [], []
                for run_id, (r, per) in runs.items():
                    if r == rv:
                        T, L, _ = per[sp]
                        m = T <= t_cap * (1 + 1e-9)
                        if not m.any():
                            raise InputError(f"{source}: run {run_id!r} has no {sp!r} point at T <= {t_cap:g}")
                        vals.append(L[m][-1])
                        ts.append(T[m][-1])
                rec[sp] = float(np.mean(vals))
                rec[f"T_{sp}"] = float(min(ts))
            recs.append(rec)
        return recs

    L_gen0_mean = float(np.mean([per[general_split][2] for _, per in runs.values()]))

    def analyse(t_cap: float):
        dom_fits, gen_fits, t_los = [], [], []
        for rv in ratio_values:
            Td, yd = pooled(rv, domain_split, t_cap)
            Tg, yg = pooled(rv, general_split, t_cap)
            dom_fits.append(
                fit_increment_domain(
                    Td,
                    yd,
                    loss=loss,
                    f_scale=f_scale,
                    label=f"{source}: dL_dom(T) fit, ratio {rv:g}, split {domain_split!r}, T <= {t_cap:g}",
                )
            )
            gen_fits.append(
                fit_increment_general(
                    Tg,
                    yg,
                    loss=loss,
                    f_scale=f_scale,
                    label=f"{source}: dL_gen(T) fit, ratio {rv:g}, split {general_split!r}, T <= {t_cap:g}",
                )
            )
            t_los.append(float(min(Td.min(), Tg.min())))
        gvr = None
        if tolerance_from == "loss_vs_ratio":  # the paper's route: A from the L(R) fit of the general loss
            recs = losses_at(t_cap)
            gvr = fit_loss_vs_ratio(
                [a["ratio"] for a in recs],
                [a[general_split] for a in recs],
                loss=loss,
                f_scale=f_scale,
                label=f"{source}: L(R) fit, split {general_split!r}, T <= {t_cap:g}",
            )
        res = critical_mixture_ratio_from_fits(
            ratio_values,
            dom_fits,
            gen_fits,
            T_max=t_cap,
            T_lo=max(t_los),
            eps=eps,
            lam=lam,
            interp=interp,
            gen_vs_ratio=gvr,
            L_gen0=L_gen0_mean if gvr is not None else None,
        )
        return dom_fits, gen_fits, res

    dom_fits, gen_fits, result = analyse(T_max)

    at_tmax = losses_at(T_max)
    loss_vs_ratio = {}
    for sp in (general_split, domain_split):
        try:
            f = fit_loss_vs_ratio(
                [a["ratio"] for a in at_tmax],
                [a[sp] for a in at_tmax],
                loss=loss,
                f_scale=f_scale,
                label=f"{source}: L(R) fit, split {sp!r}",
            )
            loss_vs_ratio[sp] = f.to_dict()
        except FitError as exc:
            loss_vs_ratio[sp] = {"error": str(exc)}

    # CMR at several budgets: the per-ratio fits are redone on each prefix T <= budget.
    t_all = np.unique(np.concatenate([per[sp][0] for _, per in runs.values() for sp in per]))
    t_all = t_all[(t_all > 0) & (t_all <= T_max * (1 + 1e-9))]
    vs_tokens = []
    if t_all.size >= 7 and n_prefix > 0:
        cands = t_all[6:]  # >= 7 points for the 5-parameter general fit
        picks = np.unique(np.geomspace(cands[0], cands[-1], int(n_prefix)))
        budgets = sorted({float(cands[np.argmin(np.abs(np.log(cands) - np.log(p)))]) for p in picks})
        for b in budgets:
            try:
                _, _, rb = analyse(b)
                vs_tokens.append(
                    {"T_max": b, "tokens": b * t_unit, "cmr": rb.cmr, "status": rb.status, "binding": rb.binding}
                )
            except (FitError, ValueError) as exc:
                vs_tokens.append(
                    {
                        "T_max": b,
                        "tokens": b * t_unit,
                        "cmr": None,
                        "status": "error",
                        "binding": None,
                        "error": str(exc),
                    }
                )
    ok = [v for v in vs_tokens if v["status"] == "ok"]
    if len(ok) >= 3:
        try:
            law = fit_cmr_scaling_law([v["T_max"] for v in ok], [v["cmr"] for v in ok], t_unit_tokens=t_unit, loss=loss)
            cmr_law = law.to_dict()
        except FitError as exc:
            cmr_law = {"error": str(exc)}
    else:
        cmr_law = {"error": f"{len(ok)} token budgets with an interior CMR (status 'ok'); the scaling law needs >= 3"}

    records = []
    for run_id, (rv, per) in runs.items():
        k = ratio_values.index(rv)
        for sp, fit in ((general_split, gen_fits[k]), (domain_split, dom_fits[k])):
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

    out = {
        "settings": {
            "domain_split": domain_split,
            "general_split": general_split,
            "x": x,
            "t_unit": t_unit,
            "t_origin": t_origin,
            "eps": eps,
            "lam": lam,
            "T_max": T_max,
            "interp": interp,
            "tolerance_from": tolerance_from,
            "loss": loss,
            "f_scale": f_scale,
            "baseline": baseline if isinstance(baseline, str) else dict(baseline),
            "source": source,
        },
        "baselines": {run_id: {sp: per[sp][2] for sp in per} for run_id, (_, per) in runs.items()},
        "ratios": ratio_values,
        "loss_at_T_max": at_tmax,
        "loss_vs_ratio": loss_vs_ratio,
        "increments": [
            {"ratio": rv, "domain": df_.to_dict(), "general": gf.to_dict()}
            for rv, df_, gf in zip(ratio_values, dom_fits, gen_fits)
        ],
        "cmr": result.to_dict(),
        "cmr_vs_tokens": vs_tokens,
        "cmr_law": cmr_law,
        "tables": {"increments": records},
    }
    return _jsonable(out)
