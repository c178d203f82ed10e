"""Two-timescale LR-annealing law (this project's refinement of Eq. 1, recommended for schedule prediction):

L = L0 + A*S1^-alpha - (C1*S2(lambda1) + C2*S2(lambda2)) * S1^-zeta,  lambda_j = 1 - k_j

S2(lambda) is the annealing area of laws.md section 1 with momentum lambda. One momentum
time-scale (Eq. 1) forces the loss to follow an LR drop with a single lag of 1/(1-lambda) steps;
two time-scales let a fast part follow the drop at once and a slow part keep paying off long after
it (what the multi-power law models with its saturating G). The decay rates k_j = 1 - lambda_j are
ordinary fitted parameters (log space, exact gradients through the IIR filter), so no outer search
over lambda is needed; the ``lam`` argument of the fitter is ignored.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from cptlaws.areas import effective_lrs
from cptlaws.laws.base import Features, Law, safe_pow


def s2_and_grad(seg, lam: float, grad: bool = False):
    """S2(lambda) at a curve's eval steps (and dS2/dlambda) from a precomputed ``_segment``.

    Uses the closed form sum_{i<=n} m_i = (D_n - lam*m_n)/(1-lam) (D_n = sum of decrements), so only
    the momentum itself is filtered, and dm/dlam is one second-order filter of the decrements.
    """
    dd, D, pos, n = seg
    S2 = np.zeros(n)
    dS2 = np.zeros(n) if grad else None
    if dd.size == 0:
        return S2, dS2
    m = lfilter([1.0], [1.0, -lam], dd)[pos[pos >= 0]]
    ok = pos >= 0
    S2[ok] = (D - lam * m) / (1.0 - lam)
    if grad:
        q = lfilter([0.0, 1.0], [1.0, -2.0 * lam, lam * lam], dd)[pos[ok]]
        dS2[ok] = (-m - lam * q) / (1.0 - lam) + S2[ok] / (1.0 - lam)
    return S2, dS2


def _segment(d: np.ndarray, steps: np.ndarray):
    """Decrements from the first nonzero one up to the last eval step, and each step's position.

    S2 at step t sums momenta m_0..m_{t-1}; ``pos`` is t-1 relative to the first nonzero decrement
    (-1: before any anneal, S2 = 0) and ``D`` the decrement sums at those positions.
    """
    end = int(steps.max()) if steps.size else 0
    nz = np.flatnonzero(d[:end])
    if nz.size == 0:
        return np.zeros(0), np.zeros(0), np.full(steps.size, -1), steps.size
    first = int(nz[0])
    dd = d[first:end].copy()
    pos = steps.astype(np.int64) - 1 - first
    pos[pos < 0] = -1
    D = np.cumsum(dd)[pos[pos >= 0]]
    return dd, D, pos, steps.size


class LRA2Law(Law):
    name = "lra2"
    params = ("L0", "A", "alpha", "C1", "k1", "C2", "k2")
    log_params = frozenset({"A", "alpha", "C1", "k1", "C2", "k2"})
    uses_lambda = False
    description = "two-timescale LR-annealing law L0 + A*S1^-alpha - C1*S2(1-k1) - C2*S2(1-k2)"

    def __init__(self, s1_scaling: bool = True, lr_power: float = 1.0):
        self.s1_scaling = bool(s1_scaling)
        self.lr_power = float(lr_power)
        self.params = self.params + (("zeta",) if self.s1_scaling else ())
        self.log_params = self.log_params | ({"zeta"} if self.s1_scaling else set())

    def options(self):
        return {"s1_scaling": self.s1_scaling, "lr_power": self.lr_power}

    def snap_start(self, name: str, values: np.ndarray) -> np.ndarray:
        """Starts of k1/k2 on a fixed log grid so screening reuses one S2 per grid value."""
        if name in ("k1", "k2"):
            return np.round(values * 4) / 4  # values are log(k): quarter-e grid
        return values

    def bounds(self, y):
        return {"L0": (0.0, float(np.max(y))), "A": (1e-6, 1e4), "alpha": (1e-4, 5.0), "C1": (1e-8, 1e4),
                "k1": (1e-5, 0.5), "C2": (1e-8, 1e4), "k2": (1e-5, 0.5), "zeta": (1e-4, 3.0)}

    def start_box(self, y):
        lo = float(np.min(y))
        return {"L0": (0.5 * lo, lo), "A": (0.05, 5.0), "alpha": (0.05, 1.5), "C1": (0.01, 10.0),
                "k1": (1e-3, 3e-2), "C2": (0.001, 10.0), "k2": (2e-5, 1e-3), "zeta": (0.01, 1.0)}

    def features(self, curves, lam, warmup_as_peak=True):
        segs, S1 = [], []
        for c in curves:
            eff = effective_lrs(c.lrs, c.warmup_steps, warmup_as_peak)
            d = np.zeros(eff.size)
            f = eff if self.lr_power == 1.0 else eff.max() * (eff / eff.max()) ** self.lr_power
            d[1:] = f[:-1] - f[1:]
            if warmup_as_peak is False and c.warmup_steps:
                d[: c.warmup_steps] = 0.0  # the warm-up rise is not an anneal (it only builds S1)
            cs = np.concatenate([[0.0], np.cumsum(eff)])
            steps = np.asarray(c.steps, dtype=np.int64)
            segs.append(_segment(d, steps))
            S1.append(cs[steps])
        S1a = np.concatenate(S1) if S1 else np.zeros(0)
        return Features(n=S1a.size, cols={"S1": S1a}, extra={"segs": segs})

    def _s2(self, F, lam, grad=False):
        parts = [s2_and_grad(seg, lam, grad) for seg in F.extra["segs"]]
        if not parts:
            return (np.zeros(0), np.zeros(0)) if grad else np.zeros(0)
        S2 = np.concatenate([p[0] for p in parts])
        if grad:
            return S2, np.concatenate([p[1] for p in parts])
        return S2

    def predict(self, P, F: Features):
        k1, k2 = np.asarray(P["k1"], float), np.asarray(P["k2"], float)
        base = P["L0"] + P["A"] * safe_pow(F["S1"], -P["alpha"])
        fac = safe_pow(F["S1"], -P["zeta"]) if self.s1_scaling else 1.0
        if k1.ndim == 0 and k2.ndim == 0:
            return base - (P["C1"] * self._s2(F, 1 - float(k1)) + P["C2"] * self._s2(F, 1 - float(k2))) * fac
        k1, k2 = np.broadcast_arrays(k1.reshape(-1, 1), k2.reshape(-1, 1))
        anneal = np.empty((k1.shape[0], F.n))
        C1 = np.broadcast_to(np.asarray(P["C1"], float).reshape(-1, 1), k1.shape)
        C2 = np.broadcast_to(np.asarray(P["C2"], float).reshape(-1, 1), k1.shape)
        cache: dict[float, np.ndarray] = {}

        def s2(lam):
            if lam not in cache:
                cache[lam] = self._s2(F, lam)
            return cache[lam]

        for s in range(k1.shape[0]):
            lam1, lam2 = 1 - float(k1[s, 0]), 1 - float(k2[s, 0])
            if not (0 <= lam1 < 1 and 0 <= lam2 < 1):
                anneal[s] = np.nan
                continue
            anneal[s] = C1[s, 0] * s2(lam1) + C2[s, 0] * s2(lam2)
        return base - anneal * fac

    def value_jac(self, p, F: Features):
        L0, A, alpha, C1, k1, C2, k2 = p[:7]
        lnS1 = np.log(F["S1"])
        s = np.power(F["S1"], -alpha)
        fac = np.power(F["S1"], -p[7]) if self.s1_scaling else np.ones(F.n)
        a1, g1 = self._s2(F, 1 - k1, grad=True)
        a2, g2 = self._s2(F, 1 - k2, grad=True)
        anneal = C1 * a1 + C2 * a2
        pred = L0 + A * s - anneal * fac
        J = np.empty((F.n, len(self.params)))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * lnS1
        J[:, 3] = -a1 * fac
        J[:, 4] = C1 * g1 * fac  # d/dk = -d/dlam
        J[:, 5] = -a2 * fac
        J[:, 6] = C2 * g2 * fac
        if self.s1_scaling:
            J[:, 7] = anneal * fac * lnS1
        return pred, J
