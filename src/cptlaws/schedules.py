"""Learning-rate schedule grammar shared by training, fitting and the workflow config.

A schedule is a plain mapping (YAML/JSON friendly)::

    kind: constant | cosine | linear | wsd | multistep
    peak_lr: 2.0e-4          # or "pt_end": continue at the LR the PT phase ended with
    warmup_steps: 100        # linear warm-up; 0 = none (a CPT run without re-warm-up)
    warmup_init: 0.0         # LR the warm-up starts from; "pt_end" = PT end LR (CPT re-warm-up)
    final_lr: 2.0e-5         # cosine / linear / wsd
    decay_start: 800         # wsd: first step of the decay (0-based, within this phase) ...
    decay_fraction: 0.2      # ... or the decayed fraction of the phase
    decay_shape: exponential # wsd: exponential | linear | cosine
    stages: [{start: 8000, lr: 3.0e-5}]   # multistep: piecewise constant after warm-up

Indexing: ``lr_array(spec, steps)[i]`` is the LR of optimizer update ``i + 1``; the loss logged at
"step t" is the loss after ``t`` updates, so its forward area is ``sum(lrs[:t])``.

Warm-up is linear and ends exactly at the peak: ``lr[i] = init + (peak - init) * (i + 1) / W``.
Decays end exactly at ``final_lr`` on the last step of the phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from cptlaws.errors import ScheduleError

KINDS = ("constant", "cosine", "linear", "wsd", "multistep")
DECAY_SHAPES = ("exponential", "linear", "cosine")
PT_END = "pt_end"

_KEYS = {
    "kind",
    "peak_lr",
    "warmup_steps",
    "warmup_init",
    "final_lr",
    "decay_start",
    "decay_fraction",
    "decay_shape",
    "stages",
    "name",
}
_NEEDS_FINAL = {"cosine", "linear", "wsd"}


def _fail(field: str, value: Any, why: str, where: str = "") -> None:
    prefix = f"schedule{(' ' + where) if where else ''}: "
    raise ScheduleError(f"{prefix}field '{field}' = {value!r}: {why}")


def _number(spec: Mapping, field: str, where: str, *, minimum: float = 0.0, allow_pt_end=False):
    value = spec[field]
    if allow_pt_end and value == PT_END:
        return PT_END
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (YAML 1.1 reads 1e-5 as a string: write 1.0e-5)" if isinstance(value, str) else ""
        _fail(field, value, f"must be a number{hint}", where)
    if not math.isfinite(value):
        _fail(field, value, "must be finite", where)
    if value < minimum:
        _fail(field, value, f"must be >= {minimum}", where)
    return float(value)


def _int(spec: Mapping, field: str, where: str, *, minimum: int = 0) -> int:
    value = spec[field]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            _fail(field, value, "must be an integer", where)
    if value < minimum:
        _fail(field, value, f"must be >= {minimum}", where)
    return int(value)


def validate(spec: Mapping, steps: int | None = None, where: str = "") -> dict:
    """Check a spec (and, given ``steps``, its fit to the phase length); return it normalised.

    Raises ScheduleError naming the offending field and value.
    """
    if not isinstance(spec, Mapping):
        raise ScheduleError(f"schedule{(' ' + where) if where else ''}: must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        _fail(unknown[0], spec[unknown[0]], f"unknown field (known: {', '.join(sorted(_KEYS))})", where)
    if "kind" not in spec:
        _fail("kind", None, f"missing (one of {', '.join(KINDS)})", where)
    kind = spec["kind"]
    if kind not in KINDS:
        _fail("kind", kind, f"unknown schedule kind (one of {', '.join(KINDS)})", where)
    if "peak_lr" not in spec:
        _fail("peak_lr", None, "missing", where)
    out: dict[str, Any] = {"kind": kind}
    if "name" in spec:
        out["name"] = str(spec["name"])
    out["peak_lr"] = _number(spec, "peak_lr", where, allow_pt_end=True)
    if out["peak_lr"] != PT_END and out["peak_lr"] <= 0:
        _fail("peak_lr", spec["peak_lr"], "must be > 0", where)
    out["warmup_steps"] = _int(spec, "warmup_steps", where) if "warmup_steps" in spec else 0
    out["warmup_init"] = _number(spec, "warmup_init", where, allow_pt_end=True) if "warmup_init" in spec else 0.0
    if kind in _NEEDS_FINAL:
        if "final_lr" not in spec:
            _fail("final_lr", None, f"missing (required by kind '{kind}')", where)
        out["final_lr"] = _number(spec, "final_lr", where)
        if out["peak_lr"] != PT_END and out["final_lr"] > out["peak_lr"]:
            _fail("final_lr", spec["final_lr"], f"must not exceed peak_lr {out['peak_lr']}", where)
    elif "final_lr" in spec:
        _fail("final_lr", spec["final_lr"], f"not used by kind '{kind}'", where)
    if kind == "wsd":
        has_start, has_frac = "decay_start" in spec, "decay_fraction" in spec
        if has_start == has_frac:
            _fail("decay_start", spec.get("decay_start"), "give exactly one of decay_start, decay_fraction", where)
        if has_start:
            out["decay_start"] = _int(spec, "decay_start", where)
        else:
            frac = _number(spec, "decay_fraction", where)
            if not 0.0 < frac <= 1.0:
                _fail("decay_fraction", frac, "must be in (0, 1]", where)
            out["decay_fraction"] = frac
        shape = spec.get("decay_shape", "exponential")
        if shape not in DECAY_SHAPES:
            _fail("decay_shape", shape, f"unknown decay shape (one of {', '.join(DECAY_SHAPES)})", where)
        out["decay_shape"] = shape
    else:
        for f in ("decay_start", "decay_fraction", "decay_shape"):
            if f in spec:
                _fail(f, spec[f], f"not used by kind '{kind}'", where)
    if kind == "multistep":
        stages = spec.get("stages")
        if not isinstance(stages, list) or not stages:
            _fail("stages", stages, "must be a non-empty list of {start, lr}", where)
        norm, last = [], -1
        for j, st in enumerate(stages):
            if not isinstance(st, Mapping) or set(st) != {"start", "lr"}:
                _fail(f"stages[{j}]", st, "must be a mapping with exactly 'start' and 'lr'", where)
            s = _int(st, "start", f"{where} stages[{j}]".strip())
            lr = _number(st, "lr", f"{where} stages[{j}]".strip())
            if s <= last:
                _fail(f"stages[{j}].start", s, "stage starts must increase", where)
            if s < out["warmup_steps"]:
                _fail(f"stages[{j}].start", s, f"must be >= warmup_steps {out['warmup_steps']}", where)
            last = s
            norm.append({"start": s, "lr": lr})
        out["stages"] = norm
    elif "stages" in spec:
        _fail("stages", spec["stages"], f"not used by kind '{kind}'", where)
    if steps is not None:
        check_steps(out, steps, where)
    return out


def check_steps(spec: Mapping, steps: int, where: str = "") -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ScheduleError(f"schedule{(' ' + where) if where else ''}: steps = {steps!r} must be a positive integer")
    w = spec.get("warmup_steps", 0)
    if w >= steps and spec["kind"] != "constant" or w > steps:
        _fail("warmup_steps", w, f"warm-up must be shorter than the run ({steps} steps)", where)
    if spec["kind"] == "wsd" and "decay_start" in spec:
        d = spec["decay_start"]
        if d > steps:
            _fail("decay_start", d, f"decay starts after the end of the run ({steps} steps)", where)
        if d < w:
            _fail("decay_start", d, f"decay starts inside the warm-up ({w} steps)", where)
    if spec["kind"] == "multistep":
        for j, st in enumerate(spec["stages"]):
            if st["start"] >= steps:
                _fail(
                    f"stages[{j}].start", st["start"], f"stage starts after the end of the run ({steps} steps)", where
                )


def decay_start_step(spec: Mapping, steps: int) -> int:
    """Resolved first decay step of a wsd spec (0-based, within the phase)."""
    if "decay_start" in spec:
        return int(spec["decay_start"])
    return steps - int(round(spec["decay_fraction"] * steps))


def lr_array(spec: Mapping, steps: int, prev_lr: float | None = None) -> np.ndarray:
    """Exact per-step LR (float64, length ``steps``) of a schedule spec.

    ``prev_lr`` is the LR the previous (PT) phase ended with; required when the spec uses ``pt_end``.
    """
    spec = validate(spec, steps)
    peak = spec["peak_lr"]
    init = spec["warmup_init"]
    if PT_END in (peak, init):
        if prev_lr is None:
            field = "peak_lr" if peak == PT_END else "warmup_init"
            _fail(field, PT_END, "needs the PT end LR (prev_lr), i.e. a CPT phase after a PT run")
        if not (np.isfinite(prev_lr) and prev_lr >= 0):
            raise ScheduleError(f"schedule: prev_lr = {prev_lr!r} must be a finite LR >= 0")
        peak = float(prev_lr) if peak == PT_END else peak
        init = float(prev_lr) if init == PT_END else init
    if peak <= 0:
        raise ScheduleError(f"schedule: resolved peak_lr = {peak!r} must be > 0")
    w = spec["warmup_steps"]
    lrs = np.full(steps, peak, dtype=np.float64)
    i = np.arange(steps, dtype=np.float64)
    if w > 0:
        lrs[:w] = init + (peak - init) * (i[:w] + 1.0) / w
    kind = spec["kind"]
    if kind in ("cosine", "linear"):
        final = spec["final_lr"]
        n = steps - w
        q = (i[w:] - w + 1.0) / n  # in (0, 1], 1 on the last step
        if kind == "cosine":
            lrs[w:] = final + (peak - final) * 0.5 * (1.0 + np.cos(np.pi * q))
        else:
            lrs[w:] = peak + (final - peak) * q
    elif kind == "wsd":
        final = spec["final_lr"]
        d = decay_start_step(spec, steps)
        d = max(d, w)
        n = steps - d
        if n > 0:
            q = (i[d:] - d + 1.0) / n
            shape = spec["decay_shape"]
            if shape == "exponential":
                if final <= 0:
                    _fail("final_lr", final, "exponential decay needs final_lr > 0")
                lrs[d:] = peak * (final / peak) ** q
            elif shape == "linear":
                lrs[d:] = peak + (final - peak) * q
            else:
                lrs[d:] = final + (peak - final) * 0.5 * (1.0 + np.cos(np.pi * q))
    elif kind == "multistep":
        for st in spec["stages"]:
            lrs[st["start"] :] = st["lr"]
    return lrs


def phase_lrs(pt_spec: Mapping, pt_steps: int, transfer: int, cpt_spec: Mapping, cpt_steps: int) -> np.ndarray:
    """Whole-history LR of a CPT run: the PT schedule up to the transfer step, then the CPT schedule.

    ``transfer`` is the number of PT updates before the branch; ``pt_steps`` is the full length the PT
    schedule was defined over (a branch from a constant run at step 500 of a 2000-step run).
    """
    if not 0 < transfer <= pt_steps:
        raise ScheduleError(f"transfer step {transfer} must be in [1, {pt_steps}] (the PT run length)")
    pt = lr_array(pt_spec, pt_steps)[:transfer]
    cpt = lr_array(cpt_spec, cpt_steps, prev_lr=float(pt[-1]))
    return np.concatenate([pt, cpt])
