"""Sums of power laws y = sum_k a_k x^s_k + b (one or two terms) fitted by variable projection.

Every such model is linear in its amplitudes once the exponents are fixed. A grid over the exponents
(1-D, or all pairs s_1 < s_2 for the two-term law) is solved in closed form for the amplitudes and
offset; the best distinct grid points are then refined by bounded ``scipy.optimize.least_squares`` over
the exponents alone (amplitudes re-solved exactly at every step). This searches the exponents
exhaustively instead of relying on random starts, which matters for the two-term law (the terms can swap
or cancel), and it does not crawl along the flat a -> inf, s -> 0 direction the way a joint fit of all
parameters does. Residuals are plain (not log) because the CMR increments cross zero, where log
residuals are undefined; a robust loss (``loss="huber"`` / ``"soft_l1"`` / ``"cauchy"``) adds a joint
refinement of all parameters for curves with outliers (e.g. a spiking eval).

Used by the CMR analysis (``cptlaws.cmr``); the schedule-aware laws have their own engine
(``cptlaws.fitting.engine``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from cptlaws.errors import FitError

__all__ = ["DEFAULT_EXP_BOUNDS", "PowerFit", "fit_power_law", "jsonable"]

DEFAULT_EXP_BOUNDS = (-3.0, 3.0)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python numbers/lists, NaN as None and +-inf as "inf"/"-inf"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
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
        return jsonable(obj.tolist())
    return obj


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
        return {"params": self.params, "x": self.x_name, "diagnostics": jsonable(self.diagnostics)}

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


# --------------------------------------------------------------------------------------------- inputs
def _check_options(n_terms: int, terms, exp_bounds, label: str) -> tuple[tuple[tuple[str, str], ...], float, float]:
    """Term names and exponent bounds (lo, hi), checked."""
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
    return terms, lo, hi


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


# ------------------------------------------------------------------------------------ the exponent grid
def _exponent_grid(lo: float, hi: float, n_terms: int, n_grid: int, min_exp_gap: float) -> np.ndarray:
    """Exponent combinations (G, n_terms): the grid points, or all pairs s_1 + min_exp_gap <= s_2; 0 excluded."""
    grid = np.linspace(lo, hi, n_grid)
    if n_terms == 1:
        return grid[np.abs(grid) > 1e-9][:, None]
    i, j = np.triu_indices(grid.size, k=1)
    keep = (grid[j] - grid[i] >= min_exp_gap) & (np.abs(grid[i]) > 1e-9) & (np.abs(grid[j]) > 1e-9)
    return np.stack([grid[i][keep], grid[j][keep]], axis=1)


def _grid_rss(combos: np.ndarray, lx: np.ndarray, ya: np.ndarray) -> np.ndarray:
    """RSS at every grid point with the amplitudes and offset in closed form (inf where not finite).

    Batched: X (G, n, K+1) with unit-norm columns for a stable pseudo-inverse."""
    n = lx.size
    cols = np.exp(combos[:, None, :] * lx[None, :, None])  # (G, n, K)
    X = np.concatenate([cols, np.ones((combos.shape[0], n, 1))], axis=2)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    Xn = X / norms
    coef = np.einsum("gkn,n->gk", np.linalg.pinv(Xn), ya) / norms[:, 0, :]
    resid = np.einsum("gnk,gk->gn", X, coef) - ya
    rss = np.einsum("gn,gn->g", resid, resid)
    rss[~np.isfinite(rss)] = np.inf
    return rss


def _polish_starts(combos: np.ndarray, rss: np.ndarray, step: float, n_polish: int) -> list[int]:
    """The best grid points, skipping near-duplicates (within 2.5 grid steps of a chosen one)."""
    starts: list[int] = []
    for g in np.argsort(rss):
        if len(starts) >= max(1, int(n_polish)) or not np.isfinite(rss[g]):
            break
        if all(np.max(np.abs(combos[g] - combos[c])) > 2.5 * step for c in starts):
            starts.append(int(g))
    return starts


# ------------------------------------------------------------------------------------------ refinement
class _Model:
    """The model on x / x_ref (geometric mean, so the design matrices are well conditioned).

    theta = (amplitudes on the scaled x, exponents, offset)."""

    def __init__(self, xa: np.ndarray, ya: np.ndarray, n_terms: int):
        self.ya = ya
        self.n = xa.size
        self.k = n_terms
        self.x_ref = float(np.exp(np.mean(np.log(xa))))
        self.lx = np.log(xa / self.x_ref)
        self.ones = np.ones((self.n, 1))

    def powers(self, s: np.ndarray) -> np.ndarray:  # (n, K)
        return np.exp(s[None, :] * self.lx[:, None])

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        p = self.powers(theta[self.k : 2 * self.k])
        return p @ theta[: self.k] + theta[-1] - self.ya

    def jac(self, theta: np.ndarray) -> np.ndarray:
        a = theta[: self.k]
        p = self.powers(theta[self.k : 2 * self.k])
        return np.concatenate([p, p * a[None, :] * self.lx[:, None], np.ones((self.n, 1))], axis=1)

    def amplitudes(self, s_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Design matrix and least-squares (amplitudes, offset) at exponents ``s_vec`` (unit-norm columns)."""
        X = np.concatenate([self.powers(s_vec), self.ones], axis=1)
        nrm = np.linalg.norm(X, axis=0)
        nrm[nrm == 0] = 1.0
        return X, np.linalg.lstsq(X / nrm, self.ya, rcond=None)[0] / nrm

    def projected(self, s_vec: np.ndarray) -> np.ndarray:
        """Residuals with the amplitudes solved exactly at ``s_vec`` (variable projection)."""
        X, c = self.amplitudes(s_vec)
        return X @ c - self.ya


def _refine(model: _Model, s0: np.ndarray, lo: float, hi: float, loss: str, f_scale: float):
    """One polish from exponents ``s0``; the least_squares result (x = theta) or None if it failed."""
    k = model.k
    try:
        # Variable projection: optimise the exponents only, amplitudes solved exactly inside. This avoids
        # the slow crawl of a joint fit along the flat a->inf, s->0 (log-law) direction.
        pr = least_squares(
            model.projected,
            s0,
            bounds=(np.full(k, lo), np.full(k, hi)),
            method="trf",
            max_nfev=200,
            ftol=1e-12,
            xtol=1e-12,
            gtol=1e-12,
        )
        _, c = model.amplitudes(pr.x)
        theta0 = np.r_[c[:k], pr.x, c[-1]]
        if loss == "linear":
            res = pr
            res.x = theta0
        else:  # robust loss: joint refinement from the least-squares solution
            lb = np.r_[np.full(k, -np.inf), np.full(k, lo), -np.inf]
            ub = np.r_[np.full(k, np.inf), np.full(k, hi), np.inf]
            res = least_squares(
                model.residuals,
                theta0,
                jac=model.jac,
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
        return None
    if np.all(np.isfinite(res.x)) and np.isfinite(res.cost):
        return res
    return None


def _best_fit(model, xa, results, terms, offset_name, x_name, lo, hi, loss, n_grid_points, label) -> PowerFit:
    """The lowest-cost refinement as a PowerFit in canonical order (increasing exponent), with diagnostics."""
    k, n = model.k, model.n
    costs = np.array([r.cost for r in results])
    best = results[int(np.argmin(costs))]
    theta = best.x
    exps = theta[k : 2 * k]
    # Canonical order: increasing exponent (the two-term law is symmetric under swapping terms).
    idx = np.argsort(exps)
    exps = exps[idx]
    amps = theta[:k][idx] * np.power(model.x_ref, -exps)
    fit_res = model.residuals(theta)
    rss_best = float(fit_res @ fit_res)
    tss = float(np.sum((model.ya - model.ya.mean()) ** 2))
    best_cost = float(best.cost)
    n_par = 2 * k + 1
    diagnostics = {
        "n_points": int(n),
        "n_params": n_par,
        "rss": rss_best,
        "rmse": math.sqrt(rss_best / n),
        "r2": (1.0 - rss_best / tss) if tss > 0 else float("nan"),
        "exactly_determined": bool(np.unique(xa).size == n_par),
        "loss": loss,
        "n_grid": int(n_grid_points),
        "n_polished": len(results),
        "n_near_best": int(np.sum(costs <= best_cost * 1.01 + 1e-15)),
        "at_bound": [terms[j][1] for j in range(k) if min(exps[j] - lo, hi - exps[j]) < 1e-6],
        "x_range": [float(xa.min()), float(xa.max())],
        "converged": bool(best.status > 0),
    }
    if not np.all(np.isfinite(amps)):
        raise FitError(f"{label}: fitted amplitudes are not finite ({amps})")
    return PowerFit(
        terms, offset_name, tuple(map(float, amps)), tuple(map(float, exps)), float(theta[-1]), x_name, diagnostics
    )


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
    terms, lo, hi = _check_options(n_terms, terms, exp_bounds, label)
    xa, ya = _check_xy(x, y, label, 2 * n_terms + 1)
    model = _Model(xa, ya, n_terms)
    n_grid = int(n_grid if n_grid is not None else (241 if n_terms == 1 else 61))
    combos = _exponent_grid(lo, hi, n_terms, n_grid, min_exp_gap)
    if combos.shape[0] == 0:
        raise FitError(f"{label}: exponent grid is empty (exp_bounds={exp_bounds}, min_exp_gap={min_exp_gap})")
    rss = _grid_rss(combos, model.lx, ya)
    step = (hi - lo) / max(n_grid - 1, 1)
    results = []
    for g in _polish_starts(combos, rss, step, n_polish):
        res = _refine(model, combos[g], lo, hi, loss, f_scale)
        if res is not None:
            results.append(res)
    if not results:
        raise FitError(f"{label}: no start converged to finite parameters ({model.n} points)")
    return _best_fit(model, xa, results, terms, offset_name, x_name, lo, hi, loss, combos.shape[0], label)
