"""A recipe as a run spec in the study config's grammar (config/README.md, ``pt:`` / ``cpt:`` sections)."""

from __future__ import annotations

from cptlaws.plan.space import Context, Recipe


def flat(r: Recipe, ctx: Context) -> dict:
    """The recipe's values, plus the loss potential and CPT tokens they imply."""
    d = {k: _round(v) for k, v in r._asdict().items() if v is not None}
    d["loss_potential"] = ctx.loss_potential(r.transfer)
    if ctx.tokens_per_step:
        d["tokens"] = int(r.steps * ctx.tokens_per_step)
    return d


def run_spec(r: Recipe, ctx: Context, name: str = "plan") -> dict:
    """``pt`` and ``cpt`` fragments of a study config that train exactly this recipe (one CPT run)."""
    return {
        "pt": {"steps": ctx.pt_steps, "schedules": {ctx.pt_name: _clean(ctx.pt_schedule)}},
        "cpt": {
            "steps": int(r.steps),
            "schedules": {name: r.cpt_schedule()},
            "grids": [
                {
                    "domain": [ctx.domain],
                    "ratio": [_round(float(r.ratio))],
                    "cpt_schedule": [name],
                    "pt_schedule": [ctx.pt_name],
                    "transfer_step": [int(r.transfer)],
                }
            ],
        },
    }


def _round(v):
    """12 significant digits for floats (0.503515625, not 0.5035156250000001)."""
    return float(f"{v:.12g}") if isinstance(v, float) else v


def _clean(spec: dict) -> dict:
    """A validated schedule without the defaults ``validate`` filled in (and without its name)."""
    out = {k: v for k, v in spec.items() if k != "name"}
    if out.get("warmup_init") == 0.0:
        out.pop("warmup_init")
    if out.get("kind") == "wsd" and out.get("decay_shape") == "exponential":
        out.pop("decay_shape")
    return out
