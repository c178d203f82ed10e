"""Model-size extension of the CPT law (laws.md section 3, Eq. 7), N in millions of non-embedding params:

L = L0 + A*S1^-alpha - C1*S2_pt*N^g1 - C2*S2_cpt*N^g2 + B*(1 - (1+E*S1_cpt)^-beta) + F*N^-g3
"""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError
from cptlaws.laws.base import Features, Law, safe_pow
from cptlaws.laws.cpt import require_cpt_run, shift_jac, shift_term


class SizeLaw(Law):
    name = "size"
    params = ("L0", "A", "alpha", "C1", "C2", "g1", "g2", "B", "E", "beta", "F", "g3")
    log_params = frozenset({"A", "alpha", "C1", "C2", "E", "beta", "F", "g3"})
    description = "CPT law with model size N (millions of non-embedding parameters), Eq. 7"

    def check_curves(self, curves):
        for c in curves:
            if c.n_params is None or not float(c.n_params) > 0:
                raise InputError(f"law 'size': run '{c.run_id}' needs n_params (N in millions) > 0, got {c.n_params!r}")
        require_cpt_run(self.name, curves)

    own_bounds = {"g1": (-3.0, 3.0), "g2": (-3.0, 3.0), "F": (1e-6, 1e4), "g3": (1e-4, 3.0)}
    own_starts = {"g1": (-0.5, 0.5), "g2": (-0.5, 0.5), "F": (0.1, 20.0), "g3": (0.05, 1.0)}
    l0_start = 0.3

    def predict(self, P, F: Features):
        N = F["N"]
        with np.errstate(over="ignore", invalid="ignore"):
            return (
                P["L0"]
                + P["A"] * safe_pow(F["S1"], -P["alpha"])
                - P["C1"] * F["S2_pt"] * N ** P["g1"]
                - P["C2"] * F["S2_cpt"] * N ** P["g2"]
                + shift_term(P["B"], P["E"], P["beta"], F["S1_cpt"])[0]
                + P["F"] * N ** (-P["g3"])
            )

    def value_jac(self, p, F: Features):
        L0, A, alpha, C1, C2, g1, g2, B, E, beta, Fc, g3 = p
        N = F["N"]
        lnN = np.log(N)
        s = np.power(F["S1"], -alpha)
        n1, n2, n3 = N**g1, N**g2, N ** (-g3)
        sh, u, ub = shift_term(B, E, beta, F["S1_cpt"])
        pred = L0 + A * s - C1 * F["S2_pt"] * n1 - C2 * F["S2_cpt"] * n2 + sh + Fc * n3
        J = np.empty((F.n, 12))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(F["S1"])
        J[:, 3] = -F["S2_pt"] * n1
        J[:, 4] = -F["S2_cpt"] * n2
        J[:, 5] = -C1 * F["S2_pt"] * n1 * lnN
        J[:, 6] = -C2 * F["S2_cpt"] * n2 * lnN
        J[:, 7], J[:, 8], J[:, 9] = shift_jac(B, E, beta, F["S1_cpt"], u, ub)
        J[:, 10] = n3
        J[:, 11] = -Fc * n3 * lnN
        return pred, J
