"""LR-annealing law (laws.md section 2, Eq. 1): L = L0 + A*S1^-alpha - C*S2."""

from __future__ import annotations

import numpy as np

from cptlaws.laws.base import Features, Law, safe_pow


class LRALaw(Law):
    name = "lra"
    params = ("L0", "A", "alpha", "C")
    log_params = frozenset({"A", "alpha", "C"})
    description = "LR-annealing law L0 + A*S1^-alpha - C*S2 (Tissue et al. 2408.11029)"

    own_bounds = {"C": (1e-8, 1e4)}
    own_starts = {"A": (0.05, 20.0), "C": (0.01, 20.0)}

    def predict(self, P, F: Features):
        return P["L0"] + P["A"] * safe_pow(F["S1"], -P["alpha"]) - P["C"] * F["S2"]

    def value_jac(self, p, F: Features):
        L0, A, alpha, C = p
        s = np.power(F["S1"], -alpha)
        pred = L0 + A * s - C * F["S2"]
        J = np.empty((F.n, 4))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(F["S1"])
        J[:, 3] = -F["S2"]
        return pred, J
