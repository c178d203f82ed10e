"""Two-timescale LR-annealing law (this project's refinement of Eq. 1, recommended for schedule prediction):

L = L0 + A*S1^-alpha - (C1*S2(lambda1) + C2*S2(lambda2)) * S1^-zeta,  lambda_j = 1 - k_j

S2(lambda) is the annealing area of laws.md section 1 with momentum lambda. One momentum
time-scale (Eq. 1) forces the loss to follow an LR drop with a single lag of 1/(1-lambda) steps;
two time-scales let a fast part follow the drop at once and a slow part keep paying off long after
it (what the multi-power law models with its saturating G). The decay rates k_j = 1 - lambda_j are
ordinary fitted parameters (log space, exact gradients through the IIR filter), so no outer search
over lambda is needed; the ``lam`` argument of the fitter is ignored.

Options used by the schedule-prediction recommendation (benchmarks/schedule_prediction.py):
``warmup_rise=True`` keeps the real warm-up's LR rise in S2 (negative decrements: a transient that
has died out by the end of the slow time-scale, like the warm-up terms of the public MPL code), and
``s1_power="fit"`` replaces S1 by S1(q) = sum eta_max*(eta_i/eta_max)^q with q fitted (q < 1: a
low-LR step buys relatively more progress than S1 assumes), in both S1^-alpha and S1^-zeta.
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
    ok = pos >= 0
    L = dd.size - 1  # dd ends at its last nonzero decrement; later the momentum only decays
    pin = np.minimum(pos[ok], L)
    gap = (pos[ok] - pin).astype(float)
    mf = lfilter([1.0], [1.0, -lam], dd)
    decay = np.power(lam, gap)
    m = mf[pin] * decay
    S2[ok] = (D - lam * m) / (1.0 - lam)
    if grad:
        qf = lfilter([0.0, 1.0], [1.0, -2.0 * lam, lam * lam], dd)
        q = qf[pin] * decay + mf[pin] * gap * np.power(lam, np.maximum(gap - 1.0, 0.0))
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
    first, last = int(nz[0]), int(nz[-1])
    dd = d[first:end].copy()
    pos = steps.astype(np.int64) - 1 - first
    pos[pos < 0] = -1
    D = np.cumsum(dd)[pos[pos >= 0]]
    return dd[: last - first + 1], D, pos, steps.size  # trailing zeros: closed form in s2_and_grad


def _powered(eff: np.ndarray, power: float) -> np.ndarray:
    """max * (eta / max)^power: the LR profile with its shape bent, its peak kept."""
    return eff if power == 1.0 else eff.max() * (eff / eff.max()) ** power


class LRA2Law(Law):
    name = "lra2"
    params = ("L0", "A", "alpha", "C1", "k1", "C2", "k2")
    log_params = frozenset({"A", "alpha", "C1", "k1", "C2", "k2"})
    uses_lambda = False
    description = "two-timescale LR-annealing law L0 + A*S1^-alpha - C1*S2(1-k1) - C2*S2(1-k2)"

    def __init__(
        self, s1_scaling: bool = True, lr_power: float = 1.0, warmup_rise: bool = False, s1_power: float | str = 1.0
    ):
        self.s1_scaling = bool(s1_scaling)
        self.lr_power = float(lr_power)
        # warmup_rise: the warm-up LR rise enters S2 as negative decrements (it is not zeroed)
        self.warmup_rise = bool(warmup_rise)
        # s1_power q: S1 = sum eta_max * (eta_i / eta_max)^q; "fit" makes q a fitted parameter
        self.fit_q = s1_power == "fit"
        self.s1_power = 1.0 if self.fit_q else float(s1_power)
        self.params = self.params + (("zeta",) if self.s1_scaling else ()) + (("q",) if self.fit_q else ())
        self.log_params = self.log_params | ({"zeta"} if self.s1_scaling else set()) | ({"q"} if self.fit_q else set())
        if self.fit_q:
            self.refine_screen = (100, 3)

    def options(self):
        out = {"s1_scaling": self.s1_scaling, "lr_power": self.lr_power}
        if self.warmup_rise:  # only non-default extras, so older fit JSONs compare equal
            out["warmup_rise"] = True
        if self.fit_q or self.s1_power != 1.0:
            out["s1_power"] = "fit" if self.fit_q else self.s1_power
        return out

    def snap_start(self, name: str, values: np.ndarray) -> np.ndarray:
        """Starts of k1/k2 on a fixed log grid so screening reuses one S2 per grid value."""
        if name in ("k1", "k2"):
            return np.round(values * 4) / 4  # values are log(k): quarter-e grid
        if name == "q":
            return np.round(values * 20) / 20  # log(q) on a 0.05 grid (one S1 per grid value)
        return values

    own_bounds = {"k1": (1e-5, 0.5), "k2": (1e-5, 0.5), "zeta": (1e-4, 3.0), "q": (0.05, 3.0)}
    own_starts = {
        "C1": (0.01, 10.0),
        "k1": (1e-3, 3e-2),
        "C2": (0.001, 10.0),
        "k2": (2e-5, 1e-3),
        "zeta": (0.01, 1.0),
        "q": (0.4, 1.2),
    }

    def features(self, curves, lam, warmup_as_peak=True):
        segs, S1, lnr = [], [], []
        for c in curves:
            eff = effective_lrs(c.lrs, c.warmup_steps, warmup_as_peak)
            d = np.zeros(eff.size)
            f = _powered(eff, self.lr_power)
            d[1:] = f[:-1] - f[1:]
            if warmup_as_peak is False and c.warmup_steps and not self.warmup_rise:
                d[: c.warmup_steps] = 0.0  # the warm-up rise is not an anneal (it only builds S1)
            cs = np.concatenate([[0.0], np.cumsum(_powered(eff, self.s1_power))])
            steps = np.asarray(c.steps, dtype=np.int64)
            segs.append(_segment(d, steps))
            S1.append(cs[steps])
            if self.fit_q:
                # run-length form of ln(eta/eta_max) up to the last eval step, split at the eval steps, so
                # S1(q) = eta_max * cumsum(count * exp(q * value)) read at each eval step (exact)
                end = int(steps.max()) if steps.size else 0
                with np.errstate(divide="ignore"):
                    l = np.log(np.maximum(eff[:end] / eff.max(), 1e-300))
                brk = np.zeros(end, bool)
                if end:
                    brk[0] = True
                    brk[1:] = l[1:] != l[:-1]
                    cut = steps[(steps > 0) & (steps < end)]
                    brk[cut] = True  # a run never straddles an eval step
                starts = np.flatnonzero(brk)
                counts = np.diff(np.append(starts, end)).astype(float)
                # eval step t reads the sum over runs that end at or before t
                run_end = starts + counts.astype(np.int64)
                npos = np.searchsorted(run_end, steps, side="right")
                lnr.append((float(eff.max()), l[starts], counts, npos))
        S1a = np.concatenate(S1) if S1 else np.zeros(0)
        extra = {"segs": segs}
        if self.fit_q:
            extra["q_parts"] = lnr
        return Features(n=S1a.size, cols={"S1": S1a}, extra=extra)

    def _s1q(self, F, q, grad=False):
        """S1(q) = sum eta_max * exp(q * ln(eta_i/eta_max)) at the eval steps (and dS1/dq)."""
        out, dout = [], []
        for peak, l, cnt, npos in F.extra["q_parts"]:
            w = cnt * np.exp(q * l)
            cs = np.concatenate([[0.0], np.cumsum(w)])
            out.append(peak * cs[npos])
            if grad:
                cl = np.concatenate([[0.0], np.cumsum(w * l)])
                dout.append(peak * cl[npos])
        S1 = np.concatenate(out) if out else np.zeros(0)
        if grad:
            return S1, (np.concatenate(dout) if dout else np.zeros(0))
        return S1

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
        S1 = F["S1"]
        if self.fit_q:
            q = np.asarray(P["q"], float)
            if q.ndim == 0:
                S1 = self._s1q(F, float(q))
            else:
                qs = q.reshape(-1)
                uq, inv = np.unique(qs, return_inverse=True)
                S1 = np.stack([self._s1q(F, float(v)) for v in uq])[inv]
        base = P["L0"] + P["A"] * safe_pow(S1, -P["alpha"])
        fac = safe_pow(S1, -P["zeta"]) if self.s1_scaling else 1.0
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
        if self.fit_q:
            S1, dS1 = self._s1q(F, p[len(self.params) - 1], grad=True)
        else:
            S1 = F["S1"]
        lnS1 = np.log(S1)
        s = np.power(S1, -alpha)
        zeta = p[7] if self.s1_scaling else 0.0
        fac = np.power(S1, -zeta) if self.s1_scaling else np.ones(F.n)
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
        if self.fit_q:
            J[:, -1] = dS1 * (-alpha * A * s / S1 + zeta * anneal * fac / S1)
        return pred, J
