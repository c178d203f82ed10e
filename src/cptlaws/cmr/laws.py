"""The laws of the CMR analysis (Gu et al., "CMR Scaling Law", arXiv 2407.17467; docs/cmr.md, laws.md section 5).

Notation: R = domain share of the CPT mixture, T = CPT tokens (in a unit the caller chooses; the paper uses
0.2 B tokens), increments dL = L(R, T) - L(before CPT).

- ``fit_loss_vs_ratio``      L(R) = a*R^s + b at a fixed token budget.
- ``fit_increment_domain``   dL_dom(T) = a1*T^s1 + b1, one fit per ratio.
- ``fit_increment_general``  dL_gen(T) = a2*T^s2 + a3*T^s3 + b2 (rises, then falls), one fit per ratio.
- ``switch_point``           T0: first T where d dL_dom/dT + lam * d dL_gen/dT <= 0.
- ``fit_cmr_scaling_law`` / ``cmr_scaling_law``   R_CMR(T) = a4*T^s4 + b3.

Every law is a sum of power laws fitted by ``cptlaws.fitting.powerlaw.fit_power_law`` (variable
projection; plain residuals, because the increments cross zero; the eval losses are averages over many
tokens, so their noise is close to Gaussian and least squares is the right default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import brentq

from cptlaws.errors import FitError
from cptlaws.fitting.powerlaw import DEFAULT_EXP_BOUNDS, PowerFit, fit_power_law

__all__ = [
    "PAPER_T_UNIT_TOKENS",
    "PAPER_CMR_LAWS",
    "fit_loss_vs_ratio",
    "fit_increment_domain",
    "fit_increment_general",
    "switch_point",
    "fit_cmr_scaling_law",
    "cmr_scaling_law",
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


DOM_TERMS = (("a1", "s1"),)
GEN_TERMS = (("a2", "s2"), ("a3", "s3"))


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
        terms=DOM_TERMS,
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
        terms=GEN_TERMS,
        offset_name="b2",
        x_name="T",
        exp_bounds=exp_bounds,
        loss=loss,
        f_scale=f_scale,
        min_exp_gap=min_exp_gap,
        label=label,
    )


def as_power(obj, terms, offset_name, what: str) -> PowerFit:
    """``obj`` as a PowerFit of T: a PowerFit, or its parameters (mapping or sequence); errors name ``what``."""
    if isinstance(obj, PowerFit):
        return obj
    try:
        return PowerFit.from_params(obj, terms, offset_name, "T")
    except ValueError as exc:
        raise FitError(f"{what}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Switch point
# --------------------------------------------------------------------------------------------------


def weighted_slope(dom_d: np.ndarray, gen_d: np.ndarray, lam: float) -> np.ndarray:
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
    dom = as_power(dom_params, DOM_TERMS, "b1", "switch_point dom_params")
    gen = as_power(gen_params, GEN_TERMS, "b2", "switch_point gen_params")
    lam = float(lam)
    if not lam > 0:
        raise FitError(f"switch_point: lam must be > 0 (or inf), got {lam}")
    t_lo, t_hi = (float(v) for v in T_range)
    if not (0 < t_lo < t_hi) or not math.isfinite(t_hi):
        raise FitError(f"switch_point: T_range must satisfy 0 < lo < hi < inf, got {T_range}")
    Tg = np.geomspace(t_lo, t_hi, int(n_grid))

    def g(t):
        return weighted_slope(np.asarray(dom.derivative(t)), np.asarray(gen.derivative(t)), lam)

    vals = g(Tg)
    hit = np.flatnonzero(vals <= 0)
    if hit.size == 0:
        return None
    j = int(hit[0])
    if j == 0:
        return t_lo
    return float(brentq(lambda t: float(g(t)), Tg[j - 1], Tg[j], xtol=1e-12 * Tg[j], rtol=1e-12))


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
