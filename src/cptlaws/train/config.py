"""The run config of one training run: reading it, checking it, its resume hash and its LR history.

The keys, their types and defaults are in ``cptlaws/schemas/run.schema.yaml`` (checked by the shared
``cptlaws.schema`` machinery, like the study config). What one field alone cannot say is checked here:
a CPT run's checkpoint and PT schedule, the domain data a mixture ratio needs, transfer steps inside the
run, the schedule against the run length. Every error names the file and the key:
``config run.yaml: key 'optim.betas[1]' = 1.0: must be < 1``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cptlaws import schema
from cptlaws.data import rows as D
from cptlaws.errors import ConfigError, InputError, ScheduleError
from cptlaws.schedules import lr_array, phase_lrs
from cptlaws.schedules import validate as validate_schedule
from cptlaws.train.checkpoints import CKPT_META, CKPT_STATE
from cptlaws.train.model import resolve_model_spec

# keys that do not change the numbers a run produces: excluded from the resume hash (``divergence`` only
# decides whether a run stops: a run trained under other limits resumes, and a finished one stays finished)
_HASH_EXCLUDE = {
    ("out_dir",),
    ("divergence",),
    ("checkpoint", "every"),
    ("checkpoint", "keep_last"),
    ("checkpoint", "keep_periodic"),
    ("runtime", "threads"),
    ("runtime", "progress"),
    ("runtime", "sync_every"),
}
_MISSING_HINT = {
    "schedule": "missing (e.g. {kind: cosine, peak_lr: 2.0e-3, warmup_steps: 50, final_lr: 2.0e-4})",
    "phase": "missing (one of pt, cpt)",
    "run_id": "missing (a string of [A-Za-z0-9._-])",
}


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON run config (unvalidated; a YAML key written twice is an error)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {p}: file not found")
    try:
        text = p.read_text()
        raw = json.loads(text) if p.suffix == ".json" else schema.load_yaml(text)
    except Exception as exc:  # noqa: BLE001 - JSON, YAML and decoding errors: name the file
        raise ConfigError(f"config {p}: cannot parse ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p}: top level must be a mapping, got {type(raw).__name__}")
    return raw


class _Where:
    """Formats failures as ``config <source>: key 'a.b' = value: why``."""

    def __init__(self, source: str):
        self.prefix = f"config{(' ' + source) if source else ''}"

    def fail(self, key: str, why: str, value: Any = ...) -> None:
        v = "" if value is ... else f" = {value!r}"
        exc = ConfigError(f"{self.prefix}: key '{key}'{v}: {why}")
        exc.key = key  # the study expansion names the study key it came from
        raise exc

    def wrap(self, exc: Exception, key: str | None = None, about: str | None = None) -> ConfigError:
        out = ConfigError(f"{self.prefix}: " + (f"key '{key}': " if key else "") + str(exc))
        out.key = key or about
        return out

    def path(self, value: str | None, key: str, check: bool) -> None:
        if check and value is not None and not Path(value).exists():
            self.fail(key, f"path does not exist: {value}")


def validate_config(raw: Mapping, source: str = "", check_paths: bool = True) -> dict:
    """Check a run config and fill defaults; returns the resolved config. Raises ConfigError naming the key.

    ``check_paths=False`` (the study expansion at Snakemake parse time) skips what needs the files: the
    data and checkpoint paths and the PT checkpoint's own config."""
    where = _Where(source)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where.prefix}: top level must be a mapping, got {type(raw).__name__}")
    cfg, bad = schema.validate(raw, schema.schema("run"), floats=True)
    if bad is not None:
        if bad.why == "missing":
            where.fail(bad.key, _MISSING_HINT.get(bad.key, "missing"))
        where.fail(bad.key, bad.why, ... if bad.why.startswith("unknown key") else bad.value)
    cfg.setdefault("out_dir", f"results/runs/{cfg['run_id']}")
    try:
        cfg["model"] = resolve_model_spec(cfg["model"])
    except ConfigError as exc:
        raise where.wrap(exc, about="model") from None
    where.path(cfg["tokenizer"], "tokenizer", check_paths)
    _check_data(cfg, where, check_paths)
    _check_valid(cfg, where, check_paths)
    cfg["schedule"] = _schedule(cfg["schedule"], cfg["steps"], "schedule", where)
    if cfg["phase"] == "cpt":
        if "init" not in cfg:
            where.fail("init", "missing (a CPT run branches from a PT checkpoint: init.checkpoint)")
        cfg["init"] = _check_init(cfg, where, check_paths)
    elif "init" in cfg:
        where.fail("init", "only a CPT run (phase: cpt) branches from a checkpoint")
    _check_lr_history(cfg, where)
    _check_transfer_steps(cfg, where)
    _check_micro_batch(cfg, where)
    return schema.reorder(cfg, schema.schema("run"))


def _check_micro_batch(cfg: dict, where: _Where) -> None:
    """Gradient accumulation splits every batch into equal micro-batches: ``micro_batch`` must divide it (and,
    under DDP, each process's share: checked when the run starts and knows its process count)."""
    mb, B = cfg["runtime"]["micro_batch"], cfg["batch_size"]
    if mb and B % mb:
        where.fail("runtime.micro_batch", f"must divide batch_size {B} (equal micro-batches)", mb)


def _check_data(cfg: dict, where: _Where, check_paths: bool) -> None:
    dat, cpt, B = cfg["data"], cfg["phase"] == "cpt", cfg["batch_size"]
    if dat["general"] is None and dat["domain"] is None:
        where.fail("data.general", "missing (tokenized general data dir)")
    if "ratio" not in dat:
        if cpt:
            where.fail("data.ratio", "missing (domain share r of every CPT batch, in [0, 1])")
        dat["ratio"] = 0.0
    for k in ("general", "domain"):
        where.path(dat[k], f"data.{k}", check_paths)
    nd = D.n_domain_rows(dat["ratio"], B)
    if nd > 0 and dat["domain"] is None:
        where.fail("data.domain", f"missing (data.ratio = {dat['ratio']} puts {nd} domain rows in every batch)")
    if nd < B and dat["general"] is None:
        where.fail("data.general", f"missing (data.ratio = {dat['ratio']} leaves {B - nd} general rows per batch)")


def _check_valid(cfg: dict, where: _Where, check_paths: bool) -> None:
    if "valid" in cfg:
        for k, p in cfg["valid"].items():
            where.path(p, f"valid.{k}", check_paths)
        return
    cfg["valid"] = {k: cfg["data"][k] for k in ("general", "domain") if cfg["data"][k]}


def _schedule(spec: Mapping, steps: int, key: str, where: _Where) -> dict:
    try:
        return validate_schedule(spec, steps, where=f"(key '{key}')")
    except ScheduleError as exc:
        raise where.wrap(exc, key) from None


def _checkpoint_meta(ck: str, where: _Where) -> dict:
    """The meta.json of the PT checkpoint a CPT run branches from."""
    from cptlaws.io import read_json

    if not (Path(ck) / CKPT_STATE).is_file() or not (Path(ck) / CKPT_META).is_file():
        where.fail("init.checkpoint", f"{ck} is not a complete checkpoint (no {CKPT_STATE} / {CKPT_META})")
    try:
        meta = read_json(Path(ck) / CKPT_META, "checkpoint meta")
    except InputError as exc:
        raise where.wrap(exc, "init.checkpoint") from None
    if not isinstance(meta, dict):
        where.fail("init.checkpoint", f"{Path(ck) / CKPT_META}: not a JSON object")
    return meta


def _check_init(cfg: dict, where: _Where, check_paths: bool) -> dict:
    ini = cfg["init"]
    ck = ini["checkpoint"]
    where.path(ck, "init.checkpoint", check_paths)
    ck_meta = _checkpoint_meta(ck, where) if check_paths else {}
    pt_cfg = ck_meta.get("config", {})
    o: dict[str, Any] = {"checkpoint": ck}
    for key, default in (("pt_schedule", pt_cfg.get("schedule")), ("pt_steps", pt_cfg.get("steps"))):
        o[key] = ini.get(key, default)
        if o[key] is None:
            where.fail(f"init.{key}", "missing (the PT run's schedule spec)" if key == "pt_schedule" else "missing")
    o["transfer_step"] = ini.get("transfer_step", ck_meta.get("step"))
    if o["transfer_step"] is None:
        where.fail("init.transfer_step", "missing")
    if "step" in ck_meta and ck_meta["step"] != o["transfer_step"]:
        where.fail("init.transfer_step", f"the checkpoint {ck} is at step {ck_meta['step']}", o["transfer_step"])
    if o["transfer_step"] > o["pt_steps"]:
        where.fail("init.transfer_step", f"must be <= init.pt_steps = {o['pt_steps']}", o["transfer_step"])
    o["pt_schedule"] = _schedule(o["pt_schedule"], o["pt_steps"], "init.pt_schedule", where)
    for key in ("schedule", "steps"):
        mine = o[f"pt_{key}"]
        if key in pt_cfg and pt_cfg[key] != mine:
            where.fail(f"init.pt_{key}", f"differs from the checkpoint's PT run ({pt_cfg[key]!r})", mine)
    if "model" in pt_cfg and pt_cfg["model"] != cfg["model"]:
        where.fail("model", f"differs from the checkpoint's model {pt_cfg['model']!r}", cfg["model"])
    o["optimizer"], o["data_cursor"] = ini["optimizer"], ini["data_cursor"]
    return o


def _check_lr_history(cfg: dict, where: _Where) -> None:
    """The whole LR history must resolve (a CPT ``pt_end`` takes the PT LR at the transfer step)."""
    try:
        lr_history(cfg)
    except ScheduleError as exc:
        raise where.wrap(exc, "schedule") from None


def _check_transfer_steps(cfg: dict, where: _Where) -> None:
    offset = cfg["init"]["transfer_step"] if cfg["phase"] == "cpt" else 0
    ts = cfg["checkpoint"]["transfer_steps"]
    for i, t in enumerate(ts):
        if not offset < t <= offset + cfg["steps"]:
            where.fail(
                f"checkpoint.transfer_steps[{i}]",
                f"must be a global step in [{offset + 1}, {offset + cfg['steps']}]",
                t,
            )
    cfg["checkpoint"]["transfer_steps"] = sorted(set(ts))


def config_hash(cfg: Mapping) -> str:
    """Hash of the keys that determine the numbers (not out_dir, threads, checkpoint frequency...)."""
    c = copy.deepcopy(dict(cfg))
    for path in _HASH_EXCLUDE:
        d = c
        for k in path[:-1]:
            d = d.get(k, {})
        d.pop(path[-1], None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()


def first_diff(a: Any, b: Any, prefix: str = "") -> str:
    """The first key where two configs differ, with both values (for 'holds checkpoints of another config')."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    return f"{prefix} ({a!r} vs {b!r})"


def lr_history(cfg: Mapping) -> np.ndarray:
    """The run's whole LR history (global steps, PT part included for CPT)."""
    if cfg["phase"] == "cpt":
        i = cfg["init"]
        return phase_lrs(i["pt_schedule"], i["pt_steps"], i["transfer_step"], cfg["schedule"], cfg["steps"])
    return lr_array(cfg["schedule"], cfg["steps"])
