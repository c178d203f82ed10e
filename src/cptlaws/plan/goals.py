"""Planning goals (docs/plan.md).

Sign convention (Eq. 5 of Wang et al. 2505.07796): ΔL = L(after CPT) - L(at the transfer point), per
validation set; ΔL_general > 0 is forgetting, ΔL_domain < 0 is adaptation.

* ``balance``: minimise λ_general·ΔL_general + λ_domain·ΔL_domain (Eq. 5).
* ``tolerance``: minimise the final domain loss subject to ΔL_general <= ε (the CMR view of Gu et al.).
* ``budget``: minimise the final domain loss subject to steps · tokens_per_step <= tokens.

Any goal also takes the other constraints (``eps``, ``tokens``) when given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cptlaws.errors import InputError, UsageError

GOALS = ("balance", "tolerance", "budget")


@dataclass
class Goal:
    kind: str
    lam_general: float = 1.0
    lam_domain: float = 1.0
    eps: float | None = None
    tokens: float | None = None
    tokens_per_step: int | None = None

    def __post_init__(self):
        if self.kind not in GOALS:
            raise UsageError(f"goal {self.kind!r}: one of {', '.join(GOALS)}")
        if self.kind == "tolerance" and self.eps is None:
            raise UsageError("goal 'tolerance' needs --eps (nats the general loss may rise above its PT value)")
        if self.kind == "budget" and self.tokens is None:
            raise UsageError("goal 'budget' needs --tokens (CPT tokens)")
        if self.tokens is not None and not self.tokens_per_step:
            raise UsageError("a token budget needs --tokens-per-step (batch size x sequence length)")
        if self.eps is not None and self.eps < 0:
            raise UsageError(f"--eps {self.eps:g} must be >= 0")

    def roles(self) -> tuple:
        """Validation sets the goal reads."""
        if self.kind == "balance":
            need = {r for r, lam in (("general", self.lam_general), ("domain", self.lam_domain)) if lam != 0}
        else:
            need = {"domain"}
        if self.eps is not None:
            need.add("general")
        return tuple(r for r in ("general", "domain") if r in need)

    def value(self, pred: dict) -> np.ndarray:
        """Goal value of every recipe (lower is better) from ``Predictor.point`` output."""
        if self.kind == "balance":
            v = 0.0
            if self.lam_general:
                v = v + self.lam_general * pred["general"]["dL"]
            if self.lam_domain:
                v = v + self.lam_domain * pred["domain"]["dL"]
            return np.asarray(v, float)
        return np.asarray(pred["domain"]["L_end"], float)

    def feasible(self, pred: dict, steps: np.ndarray) -> np.ndarray:
        ok = np.isfinite(self.value(pred))
        if self.eps is not None:
            ok &= pred["general"]["dL"] <= self.eps
        if self.tokens is not None:
            ok &= np.asarray(steps) * self.tokens_per_step <= self.tokens
        return ok

    def infeasible(self, pred: dict, recipes) -> InputError:
        """The error that says why no recipe meets the goal."""
        steps = np.array([r.steps for r in recipes])
        if self.tokens is not None and not np.any(steps * self.tokens_per_step <= self.tokens):
            return InputError(
                f"no recipe meets the goal: a budget of {self.tokens:g} tokens allows "
                f"{int(self.tokens // self.tokens_per_step)} CPT steps at {self.tokens_per_step} tokens/step, "
                f"but the fewest steps searched is {steps.min()}; search fewer --steps or raise --tokens"
            )
        if self.eps is not None:
            dg = np.where(np.isfinite(pred["general"]["dL"]), pred["general"]["dL"], np.inf)
            i = int(np.argmin(dg))
            r = recipes[i]
            return InputError(
                f"no recipe meets the goal: the general loss must rise by at most eps = {self.eps:g} nats, but "
                f"the smallest predicted rise over the search space is {dg[i]:.4g} (ratio {r.ratio:g}, peak LR "
                f"{r.peak_lr:g}, {r.kind}, {r.steps} steps, transfer {r.transfer}); raise --eps or search "
                "more replay (lower --ratio), a lower --peak-lr or fewer --steps"
            )
        return InputError("no recipe meets the goal: the law gives no finite prediction over the search space")

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "sign": "dL = L(after CPT) - L(at the transfer point)"}
        if self.kind == "balance":
            d.update(lam_general=self.lam_general, lam_domain=self.lam_domain)
            d["value"] = "lam_general * dL_general + lam_domain * dL_domain (Eq. 5; lower is better)"
        else:
            d["value"] = "final domain loss (lower is better)"
        if self.eps is not None:
            d["eps"] = self.eps
        if self.tokens is not None:
            d.update(tokens=self.tokens, tokens_per_step=self.tokens_per_step)
        return d
