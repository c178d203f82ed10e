"""Replay / mixture extension of the CPT law (laws.md section 3, Eq. 8).

With r_cpt the domain share of the CPT batches and r_pt = 1 - r_cpt, dL = B*(1 - (1+E*S1_cpt)^-beta):

  general (PT-data) loss: ... - C2*S2_cpt*exp(a1*r_pt)  + dL*(1 - exp(-a2*r_cpt))
  domain (CPT-data) loss: ... - C2*S2_cpt*exp(a1*r_cpt) + dL*(exp(a2*r_cpt) - 1)

One law object covers one validation set; ``split_role`` ('general' | 'domain') picks the form.
The variant ``replay_rpt`` uses exp(a1*r_pt) in the domain form too (the paper's figure caption).
"""

from __future__ import annotations

import math

import numpy as np

from cptlaws.errors import ConfigError
from cptlaws.laws.base import Features, Law, safe_pow
from cptlaws.laws.cpt import require_cpt_run, shift_jac, shift_term

ROLES = ("general", "domain")


class ReplayLaw(Law):
    name = "replay"
    params = ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta", "a1", "a2")
    warm_law = "cpt"  # the law at one ratio that warm-starts this one
    log_params = frozenset({"A", "alpha", "C1", "C2", "E", "beta", "a2"})
    description = "CPT law with replay ratio, Eq. 8 as written (domain annealing factor uses r_cpt)"
    domain_factor = "r_cpt"

    def __init__(self, split_role: str = "general"):
        if split_role not in ROLES:
            raise ConfigError(f"law '{self.name}': split_role = {split_role!r} must be one of {', '.join(ROLES)}")
        self.split_role = split_role

    def options(self):
        return {"split_role": self.split_role}

    def check_curves(self, curves):
        for c in curves:
            if c.ratio is None or not 0.0 <= float(c.ratio) <= 1.0:
                raise ConfigError(
                    f"law '{self.name}': run '{c.run_id}' needs a replay ratio r_cpt in [0, 1], got {c.ratio!r}"
                )
        require_cpt_run(self.name, curves)

    def warm_starts(self, curves, fit):
        """Starts from the CPT law (Eq. 4) fitted to the PT runs and the runs at the largest ratio.

        Eq. 8 contains Eq. 4 at a fixed ratio, and the 10-parameter fit across ratios has poor local minima
        (seen on real curves: a hidden PT curve that misses every PT point). Each start keeps the CPT fit's
        curve at that ratio exactly, for a few (a1, a2), so the search begins from a fit at least that good.
        """
        picked = self._warm_subset(curves)
        if picked is None:
            return []
        top, sub = picked
        try:
            base = fit(self.warm_law, sub).params
        except ValueError:  # too few points at that ratio (or not identified): the random starts alone
            return []
        out = []
        for a2 in self.warm_a2:
            mix = float(self._mix(a2, top)[0])
            for a1 in (-1.0, 0.0, 1.0):
                out.append(
                    {
                        **base,
                        "B": float(np.clip(base["B"] / mix, -20.0, 20.0)),
                        "a1": a1,
                        "a2": a2,
                        "C2": base["C2"] * math.exp(-a1 * self._factors(top)),
                    }
                )
        return out

    def _warm_subset(self, curves):
        """(largest CPT ratio, the PT runs + the runs at it), or None when that is all the runs."""
        cpt = [c for c in curves if c.transfer is not None]
        if not cpt:
            return None
        top = max(float(c.ratio) for c in cpt)
        sub = [c for c in curves if c.transfer is None or math.isclose(float(c.ratio), top)]
        return None if len(sub) == len(curves) or top <= 0.0 else (top, sub)

    def _factors(self, r):
        """(annealing exponent input, shift factor function) for this role."""
        r_pt = 1.0 - r
        if self.split_role == "general":
            return r_pt
        return r if self.domain_factor == "r_cpt" else r_pt

    warm_a2 = (0.3, math.log(2.0), 2.0, 6.0)  # mixing curvatures tried by warm_starts

    def _mix(self, a2, r):
        if self.split_role == "general":
            e = np.exp(-a2 * r)
            return 1.0 - e, r * e  # value, d/da2
        e = np.exp(a2 * r)
        return e - 1.0, r * e

    def predict(self, P, F: Features):
        r = F["ratio"]
        with np.errstate(over="ignore", invalid="ignore"):
            sh = shift_term(P["B"], P["E"], P["beta"], F["S1_cpt"])[0]
            mix = self._mix(P["a2"], r)[0]
            return (
                P["L0"]
                + P["A"] * safe_pow(F["S1"], -P["alpha"])
                - P["C1"] * F["S2_pt"]
                - P["C2"] * F["S2_cpt"] * np.exp(P["a1"] * self._factors(r))
                + sh * mix
            )

    def value_jac(self, p, F: Features):
        L0, A, alpha, C1, C2, B, E, beta, a1, a2 = p
        r = F["ratio"]
        s = np.power(F["S1"], -alpha)
        sh, u, ub = shift_term(B, E, beta, F["S1_cpt"])
        mix, dmix = self._mix(a2, r)
        fr = self._factors(r)
        ea = np.exp(a1 * fr)
        pred = L0 + A * s - C1 * F["S2_pt"] - C2 * F["S2_cpt"] * ea + sh * mix
        J = np.empty((F.n, 10))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(F["S1"])
        J[:, 3] = -F["S2_pt"]
        J[:, 4] = -F["S2_cpt"] * ea
        dB, dE, db = shift_jac(B, E, beta, F["S1_cpt"], u, ub)
        J[:, 5], J[:, 6], J[:, 7] = dB * mix, dE * mix, db * mix
        J[:, 8] = -C2 * F["S2_cpt"] * ea * fr
        J[:, 9] = sh * dmix
        return pred, J


class ReplayRptLaw(ReplayLaw):
    name = "replay_rpt"
    description = "CPT law with replay ratio, Eq. 8 variant: domain annealing factor uses r_pt (figure caption)"
    domain_factor = "r_pt"


class ReplayFlexLaw(ReplayLaw):
    """Eq. 8 with one signed, normalised mixing factor for both validation sets:

        f(r) = (exp(a2*r) - 1) / (exp(a2) - 1),   f(0) = 0, f(1) = 1;  a2 > 0 convex, a2 < 0 concave, a2 -> 0: r.

    The shift term is dL*f(r_cpt), so B is the shift of a pure-domain run (the CPT law's B). Eq. 8 fixes the
    curvature by role (general: concave, domain: convex); on the default study's tiny models both are the
    other way round (25 % replay already stops most forgetting; 25 % domain data already gives most of the
    gain), and this form fits either.
    """

    name = "replay_flex"
    description = "CPT law with replay ratio, signed normalised mixing factor (e^(a2 r) - 1)/(e^a2 - 1) for both sets"
    log_params = frozenset({"A", "alpha", "C1", "C2", "E", "beta"})
    warm_a2 = (-6.0, -2.0, 0.5, 2.0, 6.0)
    own_bounds = {"a2": (-30.0, 30.0)}
    own_starts = {"a2": (-10.0, 10.0)}

    def _mix(self, a2, r):
        a2 = np.asarray(a2, dtype=float)
        small = np.abs(a2) < 1e-6
        a = np.where(small, 1.0, a2)  # placeholder where the closed form would divide by ~0
        with np.errstate(over="ignore", invalid="ignore"):
            num, den = np.expm1(a * r), np.expm1(a)
            val = num / den
            dval = (r * np.exp(a * r) * den - num * np.exp(a)) / (den * den)
        return np.where(small, r, val), np.where(small, 0.5 * r * (r - 1.0), dval)
