"""From fitted CPT laws to a CPT recipe (docs/plan.md): ``plan(fit_docs, goal, ...)``.

| module | owns |
|---|---|
| ``space`` | ``Recipe`` (one point), ``Context`` (the PT run, domain, tokens/step), ``Space`` (grids, coverage, extrapolation) |
| ``goals`` | ``Goal``: balance (Eq. 5), tolerance (ε on the general loss), token budget; the infeasibility message |
| ``predict`` | recipes -> predicted losses at the transfer point and the end of CPT (point fit and bootstrap draws) |
| ``search`` | grid search, refinement, runners-up, intervals, slices: the plan document |
| ``recipe`` | a recipe as ``pt`` / ``cpt`` fragments of a study config |
| ``inputs`` | fit JSONs: role (general / domain), the dimensions the law sees, coverage |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cptlaws.plan.goals import GOALS, Goal
from cptlaws.plan.space import DIMS, Context, Recipe, Space, build_space


def plan(
    fit_docs: Sequence[Mapping],
    goal: Goal,
    ctx: Context,
    given: Mapping[str, list] | None = None,
    entries: Mapping | None = None,
    level: float = 0.9,
    top: int = 5,
    names: Sequence[str] | None = None,
) -> dict:
    """Recommend a CPT recipe. ``fit_docs``: fit JSON documents (``FitResult.to_dict()``, one per validation
    set); ``given``: grid values per dimension (``space.DIMS``) overriding the coverage; ``entries``: the
    schedules YAML runs the fits were made on (coverage when the docs record none)."""
    from cptlaws.errors import InputError
    from cptlaws.plan.inputs import coverage, fits_by_role, law_dims
    from cptlaws.plan.search import search

    fits = fits_by_role(fit_docs, names)
    if ctx.n_params is None and any(f.law == "size" for f in fits.values()):
        raise InputError("the size law (Eq. 7) needs the model size: give n_params (--n-params, millions)")
    missing = [r for r in goal.roles() if r not in fits]
    if missing:
        raise InputError(
            f"goal '{goal.kind}' needs a fit of the {' and '.join(missing)} loss (have: {', '.join(fits)})"
        )
    space = build_space(coverage(fit_docs, entries), given or {}, law_dims(fits))
    doc = search(fits, goal, space, ctx, level=level, top=top)
    return doc


__all__ = ["DIMS", "GOALS", "Context", "Goal", "Recipe", "Space", "build_space", "plan"]
