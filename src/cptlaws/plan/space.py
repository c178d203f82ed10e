"""The planner's search space: the CPT hyper-parameters a recipe sets, their grids and what the fit covered.

A recipe (``Recipe``) is one point: domain share ``ratio``, CPT ``peak_lr``, schedule ``kind`` and shape
(``warmup_steps``, ``decay_fraction`` for wsd, ``final_lr_frac`` = final LR / peak LR for cosine / linear /
wsd), CPT ``steps`` and the PT ``transfer`` step (which fixes the loss potential). Coverage is what the
fit's runs spanned, per dimension ``{"min", "max", "values"}`` (``kind``: ``{"values"}``); grids default to
it, and a recommendation outside it is an extrapolation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from cptlaws.errors import InputError, UsageError
from cptlaws.schedules import KINDS, decay_start_step, lr_array, validate

DIMS = ("ratio", "peak_lr", "kind", "warmup_steps", "decay_fraction", "final_lr_frac", "steps", "transfer")
NUMERIC = tuple(d for d in DIMS if d != "kind")
INTEGER = ("warmup_steps", "steps", "transfer")
REFINED = ("ratio", "peak_lr", "steps", "transfer")  # refined between grid points around the best
SHAPE_DEFAULTS = {"warmup_steps": 0, "decay_fraction": 0.2, "final_lr_frac": 0.1}
DEFAULT_POINTS = {"ratio": 11, "peak_lr": 7, "steps": 7, "transfer": 5}


class Recipe(NamedTuple):
    ratio: float
    peak_lr: float
    kind: str
    warmup_steps: int
    decay_fraction: float | None
    final_lr_frac: float | None
    steps: int
    transfer: int

    def cpt_schedule(self) -> dict:
        """The CPT schedule spec (schedules.py grammar) of this recipe."""
        spec = {"kind": self.kind, "peak_lr": float(f"{self.peak_lr:.12g}"), "warmup_steps": int(self.warmup_steps)}
        if self.final_lr_frac is not None:
            spec["final_lr"] = float(f"{self.peak_lr * self.final_lr_frac:.12g}")
        if self.decay_fraction is not None:
            spec["decay_fraction"] = float(self.decay_fraction)
        return spec


def uses(kind: str, dim: str) -> bool:
    """Whether a schedule kind has this shape parameter."""
    if dim == "decay_fraction":
        return kind == "wsd"
    if dim == "final_lr_frac":
        return kind in ("cosine", "linear", "wsd")
    return True


@dataclass
class Context:
    """What every recipe shares: the PT run it branches from, the domain, and run constants."""

    pt_schedule: dict
    pt_steps: int
    pt_name: str = "pt"
    domain: str = "domain"
    tokens_per_step: int | None = None
    n_params: float | None = None
    warmup_as_peak: bool = True

    def __post_init__(self):
        self.pt_schedule = validate(self.pt_schedule, int(self.pt_steps), "of the PT run")
        self.pt_steps = int(self.pt_steps)
        self.pt_lrs = lr_array(self.pt_schedule, self.pt_steps)
        self.pt_warmup = int(self.pt_schedule.get("warmup_steps", 0))

    def loss_potential(self, transfer: int) -> float:
        """LR at the transfer step / PT peak LR (laws.md section 3)."""
        return float(self.pt_lrs[int(transfer) - 1] / self.pt_lrs.max())

    def to_dict(self) -> dict:
        return {
            "pt_name": self.pt_name, "pt_schedule": self.pt_schedule, "pt_steps": self.pt_steps,
            "domain": self.domain, "tokens_per_step": self.tokens_per_step, "n_params": self.n_params,
        }  # fmt: skip


@dataclass
class Space:
    """Grid values per dimension, the coverage they are judged against, and the dimensions the law sees."""

    values: dict
    coverage: dict | None
    law_dims: tuple
    defaults_used: list = field(default_factory=list)

    def candidates(self) -> list[Recipe]:
        """Every grid recipe (shape dimensions only where the kind has them)."""
        out = []
        for kind in self.values["kind"]:
            axes = [self.values[d] if uses(kind, d) else [None] for d in DIMS]
            axes[DIMS.index("kind")] = [kind]
            out += [Recipe(*p) for p in itertools.product(*axes)]
        return out

    def extrapolation(self, r: Recipe) -> list[dict]:
        """Dimensions where ``r`` lies outside what the fit's runs covered (the law sees them)."""
        if not self.coverage:
            return []
        out = []
        for d in DIMS:
            v, cov = getattr(r, d), self.coverage.get(d)
            if v is None or cov is None or d not in self.law_dims:
                continue
            if d == "kind":
                if v not in cov["values"]:
                    out.append({"dim": d, "value": v, "covered": cov["values"]})
                continue
            lo, hi = cov["min"], cov["max"]
            tol = 1e-9 * max(abs(lo), abs(hi), 1e-12)
            if v < lo - tol or v > hi + tol:
                out.append({"dim": d, "value": v, "covered": [lo, hi]})
        return out

    def at_edge(self, r: Recipe) -> list[str]:
        """Searched dimensions where ``r`` sits on the end of the searched range (the optimum may lie beyond)."""
        out = []
        for d in NUMERIC:
            grid = [x for x in self.values[d] if x is not None]
            v = getattr(r, d)
            if v is None or len(grid) < 2 or d not in self.law_dims:
                continue
            if math.isclose(v, min(grid), rel_tol=1e-9) or math.isclose(v, max(grid), rel_tol=1e-9):
                out.append(d)
        return out

    def to_dict(self) -> dict:
        return {
            "values": {d: list(v) for d, v in self.values.items()},
            "coverage": self.coverage,
            "law_dims": list(self.law_dims),
            "defaults_used": self.defaults_used,
        }


# ------------------------------------------------------------------------------------------- coverage
def coverage_from_entries(entries: Mapping[str, Mapping], runs=None) -> dict:
    """Coverage of the CPT runs of a schedules YAML (``fitting.curves.load_schedules``), optionally only
    the named ``runs`` (a fit's ``fit_runs``)."""
    vals: dict[str, list] = {d: [] for d in DIMS}
    picked = [e for n, e in entries.items() if "transfer" in e and (not runs or n in set(runs))]
    if not picked:
        raise InputError("schedules: no CPT run (an entry with 'transfer') among the fit's runs")
    for e in picked:
        spec = validate(e["schedule"], int(e["steps"]))
        peak = spec["peak_lr"]
        vals["kind"].append(spec["kind"])
        vals["steps"].append(int(e["steps"]))
        vals["transfer"].append(int(e["transfer"]))
        vals["warmup_steps"].append(int(spec["warmup_steps"]))
        if e.get("ratio") is not None:
            vals["ratio"].append(float(e["ratio"]))
        if isinstance(peak, float):
            vals["peak_lr"].append(peak)
            if "final_lr" in spec:
                vals["final_lr_frac"].append(spec["final_lr"] / peak)
        if spec["kind"] == "wsd":
            n = int(e["steps"])
            vals["decay_fraction"].append(round((n - decay_start_step(spec, n)) / n, 6))
    return coverage_from_values(vals)


def coverage_from_values(vals: Mapping[str, list]) -> dict:
    out = {}
    for d, v in vals.items():
        if not len(v):
            continue
        if d == "kind":
            out[d] = {"values": sorted(set(v))}
        else:
            u = _cast(d, v)
            out[d] = {"min": u[0], "max": u[-1], "values": u}
    return out


# ---------------------------------------------------------------------------------------------- grids
def parse_values(dim: str, text: str) -> list:
    """A CLI grid: ``a,b,c`` (values), ``lo:hi`` or ``lo:hi:n`` (n points; geometric for peak_lr)."""
    text = str(text).strip()
    try:
        if dim == "kind":
            out = [k.strip() for k in text.split(",") if k.strip()]
            bad = [k for k in out if k not in KINDS or k == "multistep"]
            if bad or not out:
                raise UsageError(f"--kind {text!r}: kinds are {', '.join(k for k in KINDS if k != 'multistep')}")
            return out
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            n = int(parts[2]) if len(parts) == 3 else DEFAULT_POINTS.get(dim, 5)
            return _grid(dim, parts[0], parts[1], n)
        return _cast(dim, [float(x) for x in text.split(",") if x.strip()])
    except ValueError:
        raise UsageError(f"--{dim.replace('_', '-')} {text!r}: give a,b,c or lo:hi[:n]") from None


def _cast(dim: str, vals) -> list:
    if dim in INTEGER:
        return sorted({int(round(v)) for v in vals})
    return sorted({float(f"{float(v):.12g}") for v in vals})  # 0.925, not 0.9249999999999999


def _grid(dim: str, lo: float, hi: float, n: int) -> list:
    if hi < lo:
        lo, hi = hi, lo
    if lo == hi or n <= 1:
        return _cast(dim, [lo])
    if dim == "peak_lr":
        if lo <= 0:
            raise UsageError(f"--peak-lr: bounds must be > 0, got {lo:g}")
        return _cast(dim, np.geomspace(lo, hi, n))
    return _cast(dim, np.linspace(lo, hi, n))


def build_space(coverage: dict | None, given: Mapping[str, list], law_dims, fixed_ratio: float | None = None) -> Space:
    """Grids: the ``given`` values, else the coverage (its range on ``DEFAULT_POINTS`` points for ratio,
    LR, steps and transfer; its values for the kind and shape), else a shape default; a dimension the law
    depends on with neither given values nor coverage is an error."""
    values, defaults = {}, []
    if "ratio" not in law_dims and len(given.get("ratio") or []) > 1:
        raise UsageError(
            "--ratio: the fitted law has no ratio term (only the replay laws do): give one value (the recipe's "
            "ratio) or plan from replay-law fits"
        )
    for d in DIMS:
        cov = (coverage or {}).get(d)
        if d in given and given[d]:
            values[d] = list(given[d])
        elif d == "ratio" and d not in law_dims:
            r = fixed_ratio if fixed_ratio is not None else (cov["values"][-1] if cov else 1.0)
            values[d] = [float(r)]
        elif cov is not None:
            if d == "kind" or d not in DEFAULT_POINTS:
                values[d] = list(cov["values"])
            else:
                values[d] = sorted(
                    set(_grid(d, cov["min"], cov["max"], DEFAULT_POINTS[d])) | set(_cast(d, cov["values"]))
                )
        elif d in SHAPE_DEFAULTS:
            values[d] = [SHAPE_DEFAULTS[d]]
            defaults.append(d)
        else:
            flag = "--" + d.replace("_", "-")
            raise UsageError(
                f"search space: no bounds for '{d}' and the fit records no coverage: give {flag} "
                "(or --schedules with the fit's runs)"
            )
    return Space(values, coverage, tuple(law_dims), defaults)
