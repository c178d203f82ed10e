"""Grid search over the recipe space, refined around the best, with runners-up, intervals and slices.

1. Every grid recipe (``Space.candidates``) is evaluated with the point fits; infeasible ones (the goal's
   constraints) are dropped; none left -> the goal's InputError.
2. Refinement: ``rounds`` (4) times, a grid between the best's neighbours on every refined dimension (9
   points of ratio; 5 of peak LR on a log scale, steps and transfer step, which each need their own LR
   history), the other dimensions held at the best: each round shrinks the bracket 4x (ratio) or 2x.
3. The recommendation and the ``top`` best distinct grid recipes get intervals from the fits' bootstrap
   parameters, when the fits have them (``level``, default 90 %).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from cptlaws.plan.goals import Goal
from cptlaws.plan.predict import Predictor, interval
from cptlaws.plan.recipe import flat, run_spec
from cptlaws.plan.space import REFINED, Context, Recipe, Space

REFINE_POINTS = 9  # per refinement round, ratio (shares the LR history: cheap)
HISTORY_POINTS = 5  # per round, LR / steps / transfer (each point a new LR history)
SLICE_POINTS = 41


def _evaluate(pred: Predictor, goal: Goal, recipes: list[Recipe]):
    p = pred.point(recipes)
    return p, goal.value(p), goal.feasible(p, np.array([r.steps for r in recipes]))


def _best(values, ok) -> int:
    v = np.where(ok, values, np.inf)
    return int(np.argmin(v))


def _local(dim: str, v: float, lo: float, hi: float) -> list:
    n = REFINE_POINTS if dim == "ratio" else HISTORY_POINTS
    pts = np.geomspace(lo, hi, n) if dim == "peak_lr" else np.linspace(lo, hi, n)
    if dim in ("steps", "transfer"):
        return sorted({int(round(x)) for x in pts} | {int(v)})
    return sorted(set(pts.tolist()) | {float(v)})


def _neighbours(grid: list, v: float) -> tuple[float, float]:
    g = sorted(grid)
    j = int(np.argmin([abs(x - v) for x in g]))
    return g[max(j - 1, 0)], g[min(j + 1, len(g) - 1)]


def refine(pred: Predictor, goal: Goal, space: Space, best: Recipe, rounds: int = 4) -> Recipe:
    """Zoom on the continuous dimensions around ``best`` (within the searched range)."""
    dims = [d for d in REFINED if d in space.law_dims and len(space.values[d]) > 1]
    grids = {d: list(space.values[d]) for d in dims}
    for _ in range(rounds if dims else 0):
        axes = {}
        for d in dims:
            lo, hi = _neighbours(grids[d], getattr(best, d))
            axes[d] = _local(d, getattr(best, d), lo, hi)
        recipes = [best._replace(**dict(zip(dims, p))) for p in itertools.product(*(axes[d] for d in dims))]
        _, val, ok = _evaluate(pred, goal, recipes)
        if ok.any():
            best = recipes[_best(val, ok)]
        grids = axes
    return best


def _key(r: Recipe) -> tuple:
    return tuple(round(x, 9) if isinstance(x, float) else x for x in r)


def _runners_up(grid: list[Recipe], val, ok, best: Recipe, top: int) -> list[Recipe]:
    order = np.argsort(np.where(ok, val, np.inf), kind="stable")
    out, seen = [], {_key(best)}
    for i in order:
        if not ok[i] or len(out) >= top:
            break
        if _key(grid[i]) not in seen:
            seen.add(_key(grid[i]))
            out.append(grid[i])
    return out


def _records(pred: Predictor, goal: Goal, space: Space, ctx: Context, recipes: list[Recipe], level: float) -> list:
    p, val, ok = _evaluate(pred, goal, recipes)
    draws = pred.draws(recipes)
    goal_draws = _goal_draws(goal, draws)
    out = []
    for i, r in enumerate(recipes):
        predicted = {}
        for role, d in p.items():
            entry = {k: float(d[k][i]) for k in ("L_T", "L_end", "dL")}
            if role in draws:
                s = draws[role][:, i, :]
                entry["interval"] = {"L_end": interval(s[:, 1], level), "dL": interval(s[:, 1] - s[:, 0], level)}
            else:
                entry["interval"] = None
            predicted[role] = entry
        out.append(
            {
                "recipe": flat(r, ctx),
                "run_spec": run_spec(r, ctx),
                "predicted": predicted,
                "goal_value": float(val[i]),
                "goal_interval": None if goal_draws is None else interval(goal_draws[:, i], level),
                "feasible": bool(ok[i]),
                "extrapolation": space.extrapolation(r),
                "at_search_edge": space.at_edge(r),
            }
        )
    return out


def _goal_draws(goal: Goal, draws: dict):
    """Goal value under paired bootstrap draws (draw b of every role); None when a role it reads has none."""
    roles = goal.roles()
    if not roles or any(r not in draws for r in roles):
        return None
    n = min(draws[r].shape[0] for r in roles)
    sims = {r: {"L_T": draws[r][:n, :, 0], "L_end": draws[r][:n, :, 1]} for r in roles}
    for s in sims.values():
        s["dL"] = s["L_end"] - s["L_T"]
    return goal.value(sims)


def _slices(pred: Predictor, goal: Goal, space: Space, best: Recipe) -> dict:
    """Loss vs ratio and loss vs peak LR through the recommendation (the other dimensions held)."""
    out = {}
    for dim in ("ratio", "peak_lr"):
        grid = space.values[dim]
        if dim not in space.law_dims or len(grid) < 2:
            continue
        lo, hi = min(grid), max(grid)
        xs = np.geomspace(lo, hi, SLICE_POINTS) if dim == "peak_lr" else np.linspace(lo, hi, SLICE_POINTS)
        recipes = [best._replace(**{dim: float(x)}) for x in xs]
        p, val, ok = _evaluate(pred, goal, recipes)
        out[dim] = {
            "x": xs.tolist(),
            **{f"L_{role}": _finite(d["L_end"]) for role, d in p.items()},
            "goal_value": _finite(val),
            "feasible": ok.tolist(),
        }
    return out


def _finite(a) -> list:
    return [float(x) if math.isfinite(x) else None for x in np.asarray(a, float)]


def _fit_summary(f) -> dict:
    """Law, split, lambda and the bootstrap behind the intervals (identical draws give a zero-width interval
    that is no uncertainty estimate: ``n_distinct_bootstrap`` says so)."""
    distinct = {tuple(sorted(bp.items())) for bp in f.bootstrap_params}
    return {
        "law": f.law, "split": f.split, "lam": f.lam,
        "n_bootstrap": len(f.bootstrap_params), "n_distinct_bootstrap": len(distinct),
    }  # fmt: skip


def search(fits: dict, goal: Goal, space: Space, ctx: Context, level: float = 0.9, top: int = 5, rounds: int = 4):
    """The plan document (docs/plan.md, "Output") for ``goal`` over ``space``."""
    pred = Predictor(fits, ctx)
    grid = space.candidates()
    p, val, ok = _evaluate(pred, goal, grid)
    if not ok.any():
        raise goal.infeasible(p, grid)
    best = refine(pred, goal, space, grid[_best(val, ok)], rounds)
    recs = _records(pred, goal, space, ctx, [best, *_runners_up(grid, val, ok, best, top)], level)
    return {
        "goal": goal.to_dict(),
        "recommendation": recs[0],
        "runners_up": recs[1:],
        "interval_level": level,
        "intervals": "bootstrap" if any(f.bootstrap_params for f in fits.values()) else "none (fit has no bootstrap)",
        "context": ctx.to_dict(),
        "space": space.to_dict(),
        "n_candidates": len(grid),
        "n_feasible": int(ok.sum()),
        "grid": {
            **{f"L_{role}": _finite(d["L_end"]) for role, d in p.items()},
            **{f"dL_{role}": _finite(d["dL"]) for role, d in p.items()},
            "goal_value": _finite(val),
            "feasible": ok.tolist(),
        },
        "slices": _slices(pred, goal, space, best),
        "fits": {role: _fit_summary(f) for role, f in fits.items()},
    }
