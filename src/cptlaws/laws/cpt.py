"""CPT law (laws.md section 3, Eq. 4, Wang et al. 2505.07796):

L = L0 + A*(S1_pt+S1_cpt)^-alpha - C1*S2_pt - C2*S2_cpt + B*(1 - (1 + E*S1_cpt)^-beta)

B is signed: > 0 for the PT-data (general) validation loss, < 0 for the CPT-data (domain) loss.
"""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError
from cptlaws.laws.base import Features, Law, safe_pow


def shift_term(B, E, beta, x):
    """B*(1 - (1+E*x)^-beta) and the pieces the Jacobian needs."""
    u = 1.0 + E * x
    ub = np.power(u, -beta)
    return B * (1.0 - ub), u, ub


def shift_jac(B, E, beta, x, u, ub):
    """d/dB, d/dE, d/dbeta of B*(1 - (1+E*x)^-beta)."""
    return 1.0 - ub, B * beta * x * ub / u, B * ub * np.log(u)


def require_cpt_run(name: str, curves) -> None:
    """The CPT laws need at least one run with a transfer step: without one the shift term and C2 are
    unidentified and the fit would silently be an LR-annealing fit with extra free parameters."""
    if curves and all(c.transfer is None for c in curves):
        raise InputError(
            f"law '{name}': no CPT run among the {len(curves)} curve(s) (none has a transfer step); a dense --lr "
            "table carries no transfer step: give the runs in a schedules YAML with 'transfer' (docs/fitting.md)"
        )


class CPTLaw(Law):
    name = "cpt"
    params = ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta")
    log_params = frozenset({"A", "alpha", "C1", "C2", "E", "beta"})
    description = "CPT law Eq. 4 (Wang et al. 2505.07796), one parameter set per validation set"

    def check_curves(self, curves):
        require_cpt_run(self.name, curves)

    def _base(self, P, F):
        return P["L0"] + P["A"] * safe_pow(F["S1"], -P["alpha"]) - P["C1"] * F["S2_pt"] - P["C2"] * F["S2_cpt"]

    def predict(self, P, F: Features):
        with np.errstate(over="ignore", invalid="ignore"):
            return self._base(P, F) + shift_term(P["B"], P["E"], P["beta"], F["S1_cpt"])[0]

    def value_jac(self, p, F: Features):
        L0, A, alpha, C1, C2, B, E, beta = p
        s = np.power(F["S1"], -alpha)
        sh, u, ub = shift_term(B, E, beta, F["S1_cpt"])
        pred = L0 + A * s - C1 * F["S2_pt"] - C2 * F["S2_cpt"] + sh
        J = np.empty((F.n, 8))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(F["S1"])
        J[:, 3] = -F["S2_pt"]
        J[:, 4] = -F["S2_cpt"]
        J[:, 5], J[:, 6], J[:, 7] = shift_jac(B, E, beta, F["S1_cpt"], u, ub)
        return pred, J
