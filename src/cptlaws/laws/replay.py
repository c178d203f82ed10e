"""Replay / mixture extension of the CPT law (laws.md section 3, Eq. 8).

With r_cpt the domain share of the CPT batches and r_pt = 1 - r_cpt, dL = B*(1 - (1+E*S1_cpt)^-beta):

  general (PT-data) loss: ... - C2*S2_cpt*exp(a1*r_pt)  + dL*(1 - exp(-a2*r_cpt))
  domain (CPT-data) loss: ... - C2*S2_cpt*exp(a1*r_cpt) + dL*(exp(a2*r_cpt) - 1)

One law object covers one validation set; ``split_role`` ('general' | 'domain') picks the form.
The variant ``replay_rpt`` uses exp(a1*r_pt) in the domain form too (the paper's figure caption).
"""

from __future__ import annotations

import numpy as np

from cptlaws.laws.base import Features, Law, safe_pow
from cptlaws.laws.cpt import shift_jac, shift_term

ROLES = ("general", "domain")


class ReplayLaw(Law):
    name = "replay"
    params = ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta", "a1", "a2")
    log_params = frozenset({"A", "alpha", "C1", "C2", "E", "beta", "a2"})
    description = "CPT law with replay ratio, Eq. 8 as written (domain annealing factor uses r_cpt)"
    domain_factor = "r_cpt"

    def __init__(self, split_role: str = "general"):
        if split_role not in ROLES:
            raise ValueError(f"law '{self.name}': split_role = {split_role!r} must be one of {', '.join(ROLES)}")
        self.split_role = split_role

    def options(self):
        return {"split_role": self.split_role}

    def check_curves(self, curves):
        for c in curves:
            if c.ratio is None or not 0.0 <= float(c.ratio) <= 1.0:
                raise ValueError(f"law '{self.name}': run '{c.run_id}' needs a replay ratio r_cpt in [0, 1], got {c.ratio!r}")

    def bounds(self, y):
        return {
            "L0": (0.0, float(np.max(y))), "A": (1e-6, 1e4), "alpha": (1e-4, 5.0), "C1": (1e-8, 1e4),
            "C2": (1e-8, 1e4), "B": (-20.0, 20.0), "E": (1e-4, 1e7), "beta": (1e-4, 10.0),
            "a1": (-20.0, 20.0), "a2": (1e-4, 50.0),
        }

    def start_box(self, y):
        lo = float(np.min(y))
        return {
            "L0": (0.5 * lo, lo), "A": (0.05, 5.0), "alpha": (0.05, 1.5), "C1": (0.01, 5.0),
            "C2": (0.01, 5.0), "B": (-1.5, 1.5), "E": (0.1, 1e4), "beta": (0.02, 2.0),
            "a1": (-3.0, 3.0), "a2": (0.05, 10.0),
        }

    def _factors(self, r):
        """(annealing exponent input, shift factor function) for this role."""
        r_pt = 1.0 - r
        if self.split_role == "general":
            return r_pt
        return r if self.domain_factor == "r_cpt" else r_pt

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
                P["L0"] + P["A"] * safe_pow(F["S1"], -P["alpha"]) - P["C1"] * F["S2_pt"]
                - P["C2"] * F["S2_cpt"] * np.exp(P["a1"] * self._factors(r)) + sh * mix
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
