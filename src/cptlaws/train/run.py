"""The training loop for PT and CPT runs: exact per-step LR, evaluation on every validation set,
transfer/periodic checkpoints, bitwise resume, divergence handling and DDP (torchrun).

Conventions (docs/design.md): ``lrs[i]`` is the LR of update ``i + 1``; steps are global (a CPT run
branched at PT step T numbers its updates T+1 ..); the loss logged at step t is measured after t updates.
The train loss of step t is the loss of update t's batch (computed before that update).

Resume: everything a step depends on -- weights, optimizer moments, RNG states, sampler cursor, the
logs so far and the accumulated wall time -- is in each checkpoint, and the batch stream is a pure
function of (seed, cursor). A restarted run loads its latest complete checkpoint and recomputes the
same floats in the same order, so on CPU (same thread count) the curve is bitwise identical.
curve.parquet / trainlog.parquet / meta.json are written only at the end (or on divergence), each
atomically; meta.json comes last, so its presence with ``status: ok`` marks a finished run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cptlaws.data import rows as D
from cptlaws.errors import ConfigError, InputError, ScheduleError, TrainingDiverged, TrainingInterrupted
from cptlaws.io import atomic_dir, atomic_path, clean_tmp_dirs, write_json, write_parquet
from cptlaws.schedules import lr_array, phase_lrs
from cptlaws.schedules import validate as validate_schedule
from cptlaws.train.model import resolve_model_spec

CKPT_STATE = "state.pt"
CKPT_META = "meta.json"
RUN_OUTPUTS = ("curve.parquet", "trainlog.parquet", "meta.json")  # meta.json last: it marks the run done
# a copy of a finished run's outputs, outside Snakemake's declared outputs: a job that finishes training but
# then fails (its epilogue crossing the SLURM time limit: TIMEOUT) has them deleted; the retry restores them
FINAL_DIR = "final"
KILL_ENV = "CPTLAWS_KILL_AFTER_STEP"  # test hook: hard-exit (like SIGKILL) after this global step


# SLURM sends SIGTERM at a time limit or preemption and SIGKILL KillWait seconds later; SIGUSR1 is the
# usual early warning (sbatch --signal=USR1@120). One step plus one checkpoint fits in that window.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _catch_stop_signals(flag: list) -> Callable[[], None]:
    """Record a stop signal in ``flag`` instead of dying; returns the function that restores the old handlers.
    Main thread only. Repeats are ignored: under SLURM the job's other processes (Snakemake, srun) often
    forward the same SIGTERM, and SIGKILL follows anyway."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        flag[0] = flag[0] or signum

    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


# ----------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------
TOP_KEYS = (
    "run_id",
    "phase",
    "out_dir",
    "seed",
    "model",
    "tokenizer",
    "data",
    "valid",
    "batch_size",
    "seq_len",
    "steps",
    "eval_every",
    "eval_batches",
    "schedule",
    "optim",
    "init",
    "checkpoint",
    "runtime",
)
DATA_KEYS = ("general", "domain", "ratio")
OPTIM_KEYS = ("betas", "weight_decay", "grad_clip", "eps")
INIT_KEYS = ("checkpoint", "pt_schedule", "pt_steps", "transfer_step", "optimizer", "data_cursor")
CKPT_KEYS = ("transfer_steps", "every", "keep_last", "keep_periodic")
RUNTIME_KEYS = ("threads", "device", "dtype", "compile", "fused_adamw", "progress", "sync_every", "micro_batch")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# keys that do not change the numbers a run produces: excluded from the resume hash
_HASH_EXCLUDE = {
    ("out_dir",),
    ("checkpoint", "every"),
    ("checkpoint", "keep_last"),
    ("checkpoint", "keep_periodic"),
    ("runtime", "threads"),
    ("runtime", "progress"),
    ("runtime", "sync_every"),
}


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON run config (unvalidated)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {p}: file not found")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"config {p}: cannot parse ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {p}: top level must be a mapping, got {type(raw).__name__}")
    return raw


class _V:
    """Small validator: every failure names ``source: key 'a.b'``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, why: str, value: Any = ...) -> None:
        v = "" if value is ... else f" = {value!r}"
        raise ConfigError(f"config{(' ' + self.source) if self.source else ''}: key '{key}'{v}: {why}")

    def mapping(self, obj, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(obj, Mapping):
            self.fail(key, "must be a mapping", obj)
        for k in obj:
            if k not in known:
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key (known: {', '.join(known)})")
        return dict(obj)

    def integer(self, obj, key: str, path: str, default=..., minimum: int | None = 0) -> int:
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(path, "missing")
            return default
        v = obj[key]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            self.fail(path, "must be an integer", obj[key])
        if minimum is not None and v < minimum:
            self.fail(path, f"must be >= {minimum}", v)
        return int(v)

    def number(
        self,
        obj,
        key: str,
        path: str,
        default=...,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> float:
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(path, "missing")
            return default
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            hint = " (YAML 1.1 reads 1e-5 as a string: write 1.0e-5)" if isinstance(v, str) else ""
            self.fail(path, f"must be a number{hint}", v)
        if not math.isfinite(v):
            self.fail(path, "must be finite", v)
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
            lb = "(" if lo_open else "["
            rb = ")" if hi_open else "]"
            self.fail(
                path, f"must be in {lb}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{rb}", v
            )
        return float(v)

    def boolean(self, obj, key: str, path: str, default=...) -> bool:
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(path, "missing")
            return default
        if not isinstance(obj[key], bool):
            self.fail(path, "must be true or false", obj[key])
        return obj[key]

    def choice(self, obj, key: str, path: str, choices: tuple, default=...):
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(path, f"missing (one of {', '.join(map(str, choices))})")
            return default
        if obj[key] not in choices:
            self.fail(path, f"must be one of {', '.join(map(str, choices))}", obj[key])
        return obj[key]

    def path(self, obj, key: str, path: str, must_exist: bool = True, default=...) -> str:
        if key not in obj or obj[key] is None:
            if default is ...:
                self.fail(path, "missing")
            return default
        v = obj[key]
        if not isinstance(v, (str, os.PathLike)) or not str(v):
            self.fail(path, "must be a path string", v)
        if must_exist and not Path(v).exists():
            self.fail(path, f"path does not exist: {v}")
        return str(v)


def validate_config(raw: Mapping, source: str = "", check_paths: bool = True) -> dict:
    """Check a run config and fill defaults; returns the resolved config. Raises ConfigError naming the key."""
    v = _V(source)
    cfg = v.mapping(raw, "", TOP_KEYS)
    out: dict[str, Any] = {}
    run_id = cfg.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        v.fail("run_id", "missing or not a string of [A-Za-z0-9._-]", run_id)
    out["run_id"] = run_id
    out["phase"] = v.choice(cfg, "phase", "phase", ("pt", "cpt"))
    cpt = out["phase"] == "cpt"
    out["out_dir"] = v.path(cfg, "out_dir", "out_dir", must_exist=False, default=f"results/runs/{run_id}")
    out["seed"] = v.integer(cfg, "seed", "seed", default=0)
    try:
        out["model"] = resolve_model_spec(cfg.get("model", {"preset": "tiny"}))
    except ConfigError as exc:
        raise ConfigError(f"config{(' ' + source) if source else ''}: {exc}") from None
    out["tokenizer"] = v.path(cfg, "tokenizer", "tokenizer", must_exist=check_paths, default=None)
    for k in ("batch_size", "seq_len", "steps", "eval_every", "eval_batches"):
        out[k] = v.integer(cfg, k, k, default={"eval_batches": 4}.get(k, ...), minimum=1)

    dat = v.mapping(cfg.get("data", {}), "data", DATA_KEYS)
    if "general" not in dat and "domain" not in dat:
        v.fail("data.general", "missing (tokenized general data dir)")
    ratio = v.number(dat, "ratio", "data.ratio", default=None if cpt else 0.0, lo=0.0, hi=1.0)
    if ratio is None:
        v.fail("data.ratio", "missing (domain share r of every CPT batch, in [0, 1])")
    out["data"] = {
        "general": v.path(dat, "general", "data.general", check_paths, default=None),
        "domain": v.path(dat, "domain", "data.domain", check_paths, default=None),
        "ratio": ratio,
    }
    nd = D.n_domain_rows(ratio, out["batch_size"])
    if nd > 0 and out["data"]["domain"] is None:
        v.fail("data.domain", f"missing (data.ratio = {ratio} puts {nd} domain rows in every batch)")
    if nd < out["batch_size"] and out["data"]["general"] is None:
        v.fail("data.general", f"missing (data.ratio = {ratio} leaves {out['batch_size'] - nd} general rows per batch)")

    if "valid" in cfg:
        val = cfg["valid"]
        if not isinstance(val, Mapping) or not val:
            v.fail("valid", "must be a non-empty mapping name -> tokenized data dir", val)
        for name in val:
            if not isinstance(name, str) or not RUN_ID_RE.match(name) or name == "train":
                v.fail(f"valid.{name}", "validation set names must be [A-Za-z0-9._-] and not 'train'")
        out["valid"] = {k: v.path(val, k, f"valid.{k}", check_paths) for k in val}
    else:
        out["valid"] = {}
        if out["data"]["general"]:
            out["valid"]["general"] = out["data"]["general"]
        if out["data"]["domain"]:
            out["valid"]["domain"] = out["data"]["domain"]

    if "schedule" not in cfg:
        v.fail("schedule", "missing (e.g. {kind: cosine, peak_lr: 2.0e-3, warmup_steps: 50, final_lr: 2.0e-4})")
    try:
        out["schedule"] = validate_schedule(cfg["schedule"], out["steps"], where="(key 'schedule')")
    except ScheduleError as exc:
        raise ConfigError(f"config{(' ' + source) if source else ''}: key 'schedule': {exc}") from None

    opt = v.mapping(cfg.get("optim", {}), "optim", OPTIM_KEYS)
    betas = opt.get("betas", [0.9, 0.95])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        v.fail("optim.betas", "must be a list of two numbers in [0, 1)", betas)
    bl = [v.number({"b": b}, "b", f"optim.betas[{i}]", lo=0.0, hi=1.0, hi_open=True) for i, b in enumerate(betas)]
    out["optim"] = {
        "betas": bl,
        "weight_decay": v.number(opt, "weight_decay", "optim.weight_decay", default=0.1, lo=0.0),
        "grad_clip": v.number(opt, "grad_clip", "optim.grad_clip", default=1.0, lo=0.0),
        "eps": v.number(opt, "eps", "optim.eps", default=1e-8, lo=0.0, lo_open=True),
    }

    offset = 0
    if cpt:
        if "init" not in cfg:
            v.fail("init", "missing (a CPT run branches from a PT checkpoint: init.checkpoint)")
        ini = v.mapping(cfg["init"], "init", INIT_KEYS)
        ck = v.path(ini, "checkpoint", "init.checkpoint", check_paths)
        ck_meta = {}
        if check_paths:
            mp = Path(ck) / CKPT_META
            if not (Path(ck) / CKPT_STATE).is_file() or not mp.is_file():
                v.fail("init.checkpoint", f"{ck} is not a complete checkpoint (no {CKPT_STATE} / {CKPT_META})")
            ck_meta = json.loads(mp.read_text())
        pt_cfg = ck_meta.get("config", {})
        o: dict[str, Any] = {"checkpoint": ck}
        if "pt_schedule" in ini:
            o["pt_schedule"] = ini["pt_schedule"]
        elif "schedule" in pt_cfg:
            o["pt_schedule"] = pt_cfg["schedule"]
        else:
            v.fail("init.pt_schedule", "missing (the PT run's schedule spec)")
        o["pt_steps"] = v.integer(ini, "pt_steps", "init.pt_steps", default=pt_cfg.get("steps", ...), minimum=1)
        o["transfer_step"] = v.integer(
            ini, "transfer_step", "init.transfer_step", default=ck_meta.get("step", ...), minimum=1
        )
        if "step" in ck_meta and ck_meta["step"] != o["transfer_step"]:
            v.fail("init.transfer_step", f"the checkpoint {ck} is at step {ck_meta['step']}", o["transfer_step"])
        if o["transfer_step"] > o["pt_steps"]:
            v.fail("init.transfer_step", f"must be <= init.pt_steps = {o['pt_steps']}", o["transfer_step"])
        try:
            o["pt_schedule"] = validate_schedule(o["pt_schedule"], o["pt_steps"], where="(key 'init.pt_schedule')")
        except ScheduleError as exc:
            raise ConfigError(f"config{(' ' + source) if source else ''}: key 'init.pt_schedule': {exc}") from None
        for key in ("schedule", "steps"):
            mine = o["pt_schedule"] if key == "schedule" else o["pt_steps"]
            if key in pt_cfg and pt_cfg[key] != mine:
                v.fail(f"init.pt_{key}", f"differs from the checkpoint's PT run ({pt_cfg[key]!r})", mine)
        if "model" in pt_cfg and pt_cfg["model"] != out["model"]:
            v.fail("model", f"differs from the checkpoint's model {pt_cfg['model']!r}", out["model"])
        o["optimizer"] = v.choice(ini, "optimizer", "init.optimizer", ("keep", "fresh"), default="keep")
        o["data_cursor"] = v.choice(ini, "data_cursor", "init.data_cursor", ("continue", "fresh"), default="continue")
        out["init"] = o
        offset = o["transfer_step"]
        try:  # the whole LR history must resolve (pt_end needs the PT LR)
            phase_lrs(o["pt_schedule"], o["pt_steps"], offset, out["schedule"], out["steps"])
        except ScheduleError as exc:
            raise ConfigError(f"config{(' ' + source) if source else ''}: key 'schedule': {exc}") from None
    elif "init" in cfg:
        v.fail("init", "only a CPT run (phase: cpt) branches from a checkpoint")
    else:
        try:
            lr_array(out["schedule"], out["steps"])
        except ScheduleError as exc:
            raise ConfigError(f"config{(' ' + source) if source else ''}: key 'schedule': {exc}") from None

    ckc = v.mapping(cfg.get("checkpoint", {}), "checkpoint", CKPT_KEYS)
    ts = ckc.get("transfer_steps", [])
    if not isinstance(ts, (list, tuple)):
        v.fail("checkpoint.transfer_steps", "must be a list of global steps", ts)
    tsl = []
    for i, t in enumerate(ts):
        t = v.integer({"t": t}, "t", f"checkpoint.transfer_steps[{i}]", minimum=1)
        if not offset < t <= offset + out["steps"]:
            v.fail(
                f"checkpoint.transfer_steps[{i}]",
                f"must be a global step in [{offset + 1}, {offset + out['steps']}]",
                t,
            )
        tsl.append(t)
    out["checkpoint"] = {
        "transfer_steps": sorted(set(tsl)),
        "every": v.integer(ckc, "every", "checkpoint.every", default=0),
        "keep_last": v.integer(ckc, "keep_last", "checkpoint.keep_last", default=1, minimum=1),
        "keep_periodic": v.boolean(ckc, "keep_periodic", "checkpoint.keep_periodic", default=False),
    }

    rt = v.mapping(cfg.get("runtime", {}), "runtime", RUNTIME_KEYS)
    out["runtime"] = {
        "threads": v.integer(rt, "threads", "runtime.threads", default=1, minimum=1),
        "device": v.choice(rt, "device", "runtime.device", ("auto", "cpu", "cuda"), default="cpu"),
        "dtype": v.choice(rt, "dtype", "runtime.dtype", ("auto", "float32", "bfloat16"), default="auto"),
        "compile": v.choice(rt, "compile", "runtime.compile", (True, False, "auto"), default="auto"),
        "fused_adamw": v.choice(rt, "fused_adamw", "runtime.fused_adamw", (True, False, "auto"), default="auto"),
        "progress": v.boolean(rt, "progress", "runtime.progress", default=True),
        "sync_every": v.integer(rt, "sync_every", "runtime.sync_every", default=0, minimum=0),
        # rows per forward/backward on each process (gradient accumulation); 0: the whole per-process batch
        "micro_batch": v.integer(rt, "micro_batch", "runtime.micro_batch", default=0, minimum=0),
    }
    return out


def config_hash(cfg: Mapping) -> str:
    """Hash of the keys that determine the numbers (not out_dir, threads, checkpoint frequency...)."""
    c = copy.deepcopy(dict(cfg))
    for path in _HASH_EXCLUDE:
        d = c
        for k in path[:-1]:
            d = d.get(k, {})
        d.pop(path[-1], None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()


def _first_diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    return f"{prefix} ({a!r} vs {b!r})"


def lr_history(cfg: Mapping) -> np.ndarray:
    """The run's whole LR history (global steps, PT part included for CPT)."""
    if cfg["phase"] == "cpt":
        i = cfg["init"]
        return phase_lrs(i["pt_schedule"], i["pt_steps"], i["transfer_step"], cfg["schedule"], cfg["steps"])
    return lr_array(cfg["schedule"], cfg["steps"])


# ----------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------
def _ckpt_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    root = out_dir / "ckpt"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and (p / CKPT_STATE).is_file() and (p / CKPT_META).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _save_checkpoint(path: Path, state: dict, meta: dict) -> None:
    import torch

    with atomic_dir(path) as tmp:
        torch.save(state, tmp / CKPT_STATE)
        (tmp / CKPT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_checkpoint(path: str | Path) -> dict:
    import torch

    p = Path(path)
    if not (p / CKPT_STATE).is_file():
        raise InputError(f"checkpoint {p}: no {CKPT_STATE}")
    return torch.load(p / CKPT_STATE, map_location="cpu", weights_only=False)


def _rng_state() -> dict:
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping) -> None:
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import datasets
    import torch
    import transformers

    from cptlaws import __version__

    return {
        "cptlaws": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
    }


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _vocab_size(cfg: Mapping, sources: list[tuple[str, str]]) -> int:
    if "vocab_size" in cfg["model"]:
        return int(cfg["model"]["vocab_size"])
    for key, path in sources:
        meta = D.read_meta(D.split_dir(path, "train" if key.startswith("data") else "valid", key))
        if "vocab_size" in meta:
            return int(meta["vocab_size"])
    if cfg.get("tokenizer"):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(cfg["tokenizer"]).get_vocab_size()
    raise ConfigError("config: key 'model.vocab_size': unknown (no vocab_size in the data meta.json, no tokenizer)")


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # norms (and biases) are 1-D: no decay
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    config: Mapping | str | os.PathLike,
    *,
    resume: bool = True,
    after_step: Callable[[int], None] | None = None,
    source: str = "",
) -> dict:
    """Run (or resume) one training run; returns its meta dict.

    ``config`` is a path or a raw mapping. ``after_step(global_step)`` is called after each step's logging and
    checkpointing (tests use it to simulate a kill). Raises ConfigError, DataError, TrainingDiverged,
    TrainingInterrupted (SIGTERM/SIGUSR1: checkpointed, resumable).
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    if not isinstance(config, Mapping):
        source = str(config)
        config = load_config(config)
    cfg = validate_config(config, source)
    chash = config_hash(cfg)
    rank, world, local_rank = _dist_env()
    out_dir = Path(cfg["out_dir"])
    rt = cfg["runtime"]
    run = cfg["run_id"]

    # ---- device / runtime
    dev_name = rt["device"]
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    if dev_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config {source}: key 'runtime.device' = 'cuda': no CUDA device available")
    on_cuda = dev_name == "cuda"
    device = torch.device("cuda", local_rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(rt["threads"])
    dtype = rt["dtype"] if rt["dtype"] != "auto" else ("bfloat16" if on_cuda else "float32")
    use_compile = rt["compile"] if rt["compile"] != "auto" else on_cuda
    # the fused AdamW kernel (one pass over all parameters; CPU support from torch 2.4) is ~2x faster than
    # torch's CPU default, a per-tensor loop, and is what the HF Trainer uses by default
    fused = rt["fused_adamw"] if rt["fused_adamw"] != "auto" else _fused_adamw_supported(device)
    sync_every = rt["sync_every"] or (50 if on_cuda else 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    if cfg["batch_size"] % world:
        raise ConfigError(
            f"config {source}: key 'batch_size' = {cfg['batch_size']}: must be divisible by the {world} DDP processes"
        )
    per_rank = cfg["batch_size"] // world
    micro = rt["micro_batch"] or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"config {source}: key 'runtime.micro_batch' = {micro}: must divide the per-process "
            f"batch ({per_rank} rows = batch_size / {world} processes)"
        )
    n_micro = per_rank // micro

    def barrier():
        if world > 1:
            dist.barrier()

    # ---- fresh start / finished run
    if rank == 0:
        if not resume:
            for name in ("ckpt", "curve.parquet", "trainlog.parquet", "meta.json"):
                p = out_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_tmp_dirs(out_dir / "ckpt")  # left by a kill during a checkpoint write
        if resume:
            _restore_final_outputs(out_dir, chash, run, cfg)
    barrier()
    meta_path = out_dir / "meta.json"
    if resume and all((out_dir / n).is_file() for n in RUN_OUTPUTS):
        done = json.loads(meta_path.read_text())
        if done.get("config_hash") == chash and done.get("status") == "ok":
            return done

    # ---- data
    seq_len, B = cfg["seq_len"], cfg["batch_size"]
    srcs = [(f"data.{k}", cfg["data"][k]) for k in ("general", "domain") if cfg["data"][k]]
    srcs += [(f"valid.{k}", p) for k, p in cfg["valid"].items()]
    vocab = _vocab_size(cfg, srcs)
    nd = D.n_domain_rows(cfg["data"]["ratio"], B)
    general = D.load_rows(cfg["data"]["general"], "train", seq_len, "data.general") if nd < B else None
    domain = D.load_rows(cfg["data"]["domain"], "train", seq_len, "data.domain") if nd > 0 else None
    valid = {
        k: D.validation_rows(D.load_rows(p, "valid", seq_len, f"valid.{k}"), cfg["eval_batches"], B)
        for k, p in cfg["valid"].items()
    }
    for key, rows in [("data.general", general), ("data.domain", domain)] + [
        (f"valid.{k}", r) for k, r in valid.items()
    ]:
        if rows is not None and int(rows.max()) >= vocab:
            raise D.DataError(f"key '{key}': token id {int(rows.max())} >= vocab_size {vocab} (tokenizer mismatch?)")
    sampler = D.MixtureSampler(general, domain, cfg["data"]["ratio"], B, cfg["seed"])

    # ---- model, optimizer, LR
    from cptlaws.train.model import attention_for, build_model, count_params

    attn = attention_for(device.type, dtype)
    model = build_model(cfg["model"], vocab, seq_len, seed=cfg["seed"], attn_implementation=attn).to(device)
    n_params, n_nonembed = count_params(model)
    o = cfg["optim"]

    def make_opt():
        kw = {"fused": True} if fused else {}
        return torch.optim.AdamW(
            _param_groups(model, o["weight_decay"]), lr=0.0, betas=tuple(o["betas"]), eps=o["eps"], **kw
        )

    opt = make_opt()
    full_lrs = lr_history(cfg)
    offset = cfg["init"]["transfer_step"] if cfg["phase"] == "cpt" else 0
    lrs = full_lrs[offset:]
    lr_sha = hashlib.sha256(np.ascontiguousarray(full_lrs, dtype="<f8").tobytes()).hexdigest()
    tokens_per_step = B * seq_len

    # ---- starting state
    curve_rows: list[dict] = []
    tlog: dict[str, list] = {"step": [], "lr": [], "tokens": [], "train_loss": [], "grad_norm": []}
    start, tokens0, wall_prev, resumed_from = 0, 0, 0.0, []
    step_time = [0.0]  # seconds inside training steps only (no eval / checkpoint): train_tokens_per_s
    ckpts = _ckpt_dirs(out_dir) if resume else []
    if ckpts:
        step_c, path_c = ckpts[-1]
        cmeta = json.loads((path_c / CKPT_META).read_text())
        if cmeta.get("config_hash") != chash:
            raise ConfigError(
                f"run {run}: {out_dir} holds checkpoints of a different config (first difference: "
                f"{_first_diff(cmeta.get('config', {}), cfg)}); rerun with --no-resume to start over"
            )
        st = load_checkpoint(path_c)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sampler.load_state_dict(st["sampler"])
        _set_rng_state(st["rng"])
        curve_rows, tlog = st["curve_rows"], st["trainlog"]
        start = st["step"] - offset
        tokens0 = st["tokens_at_start"]
        wall_prev = st["wall_time_s"]
        step_time[0] = st.get("train_time_s", 0.0)
        resumed_from = st.get("resumed_from", []) + [st["step"]]
    elif cfg["phase"] == "cpt":
        ini = cfg["init"]
        st = load_checkpoint(ini["checkpoint"])
        model.load_state_dict(st["model"])
        if ini["optimizer"] == "keep":
            opt.load_state_dict(st["optimizer"])
        if ini["data_cursor"] == "continue":
            sampler.load_state_dict(st["sampler"], only=("general",))  # replay continues the PT stream
        tokens0 = int(st["tokens"])
    tokens_at_start = tokens0

    raw_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[local_rank] if on_cuda else None)

    def loss_of(m, rows: torch.Tensor, reduction: str = "mean"):
        x = rows[:, :-1].to(device, non_blocking=True)
        y = rows[:, 1:].to(device, non_blocking=True)
        with autocast:
            logits = m(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)

    def batch_loss(rows: torch.Tensor):
        return loss_of(model, rows)

    # one graph for the whole loss (forward, the logits' float cast, cross-entropy), as the Trainer's compiled
    # model computes its loss inside forward; on the CPU presets it is within noise of compiling the model alone
    train_loss = torch.compile(batch_loss) if use_compile else batch_loss

    def evaluate() -> dict[str, float]:
        raw_model.eval()
        res = {}
        with torch.no_grad():
            for name, rows in valid.items():
                mine = rows[rank::world]
                tot = torch.zeros(2, dtype=torch.float64, device=device)
                for i in range(0, len(mine), micro):
                    chunk = mine[i : i + micro]
                    tot[0] += loss_of(raw_model, chunk, "sum").double()
                    tot[1] += chunk.shape[0] * seq_len
                if world > 1:
                    dist.all_reduce(tot)
                res[name] = float(tot[0] / tot[1])
        raw_model.train()
        return res

    def add_eval(step: int, tokens: int, lr: float, train_loss: float | None):
        ev = evaluate()
        for name, loss in ev.items():
            curve_rows.append(
                {
                    "run_id": run,
                    "phase": cfg["phase"],
                    "step": step,
                    "tokens": tokens,
                    "lr": lr,
                    "split": name,
                    "loss": loss,
                }
            )
        if train_loss is not None:
            curve_rows.append(
                {
                    "run_id": run,
                    "phase": cfg["phase"],
                    "step": step,
                    "tokens": tokens,
                    "lr": lr,
                    "split": "train",
                    "loss": train_loss,
                }
            )
        return ev

    t_start = time.perf_counter()

    def wall() -> float:
        return wall_prev + time.perf_counter() - t_start

    def meta(status: str, **extra) -> dict:
        w = wall()
        done_tokens = (len(tlog["step"])) * tokens_per_step
        return {
            "run_id": run,
            "phase": cfg["phase"],
            "status": status,
            "config": cfg,
            "config_hash": chash,
            "n_params": n_params,
            "n_nonembed": n_nonembed,
            "vocab_size": vocab,
            "steps_done": len(tlog["step"]),
            "final_step": offset + len(tlog["step"]),
            "tokens": tokens_at_start + done_tokens,
            "wall_time_s": w,
            "tokens_per_s": done_tokens / w if w > 0 else None,
            "train_time_s": step_time[0],
            "train_tokens_per_s": done_tokens / step_time[0] if step_time[0] > 0 else None,
            "lr_history_sha256": lr_sha,
            "lr_history_len": len(full_lrs),
            "world_size": world,
            "device": str(device),
            "dtype": dtype,
            "attention": attn,
            "compile": bool(use_compile),
            "fused_adamw": bool(fused),
            "threads": rt["threads"],
            "resumed_from": resumed_from,
            "versions": _versions(),
            "hostname": platform.node(),
            **extra,
        }

    def write_outputs(status: str, **extra):
        if rank != 0:
            return
        import pandas as pd

        cdf = pd.DataFrame(curve_rows, columns=["run_id", "phase", "step", "tokens", "lr", "split", "loss"])
        cdf = cdf.astype({"step": "int64", "tokens": "int64", "lr": "float64", "loss": "float64"})
        write_parquet(out_dir / "curve.parquet", cdf)
        tdf = pd.DataFrame(tlog).astype(
            {"step": "int64", "lr": "float64", "tokens": "int64", "train_loss": "float64", "grad_norm": "float64"}
        )
        write_parquet(out_dir / "trainlog.parquet", tdf)
        write_json(out_dir / "meta.json", meta(status, **extra))

    def save_ckpt(step: int):
        if rank == 0:
            state = {
                "model": raw_model.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler": sampler.state_dict(),
                "rng": _rng_state(),
                "step": step,
                "tokens": tokens_at_start + (step - offset) * tokens_per_step,
                "tokens_at_start": tokens_at_start,
                "curve_rows": curve_rows,
                "trainlog": tlog,
                "wall_time_s": wall(),
                "train_time_s": step_time[0],
                "resumed_from": resumed_from,
            }
            cm = {
                "run_id": run,
                "phase": cfg["phase"],
                "step": step,
                "tokens": state["tokens"],
                "config_hash": chash,
                "config": cfg,
                "vocab_size": vocab,
                "n_params": n_params,
                "n_nonembed": n_nonembed,
            }
            _save_checkpoint(out_dir / "ckpt" / f"step_{step}", state, cm)
            _prune(step)
        barrier()

    transfer = set(cfg["checkpoint"]["transfer_steps"])

    def _prune(latest: int):
        periodic = [(s, p) for s, p in _ckpt_dirs(out_dir) if s not in transfer]
        for _, p in (
            periodic[: -cfg["checkpoint"]["keep_last"]] if len(periodic) > cfg["checkpoint"]["keep_last"] else []
        ):
            shutil.rmtree(p, ignore_errors=True)

    # ---- initial evaluation (PT init at step 0 / CPT branch point at step T)
    if start == 0:
        prev_lr = float(full_lrs[offset - 1]) if offset > 0 else float("nan")
        ev = add_eval(offset, tokens_at_start, prev_lr, None)
        _check_finite(ev, offset, run)

    # ---- progress bar
    bar = None
    if rt["progress"] and rank == 0 and start < cfg["steps"]:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg["steps"],
            initial=start,
            desc=run,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )

    pending: list[tuple[int, float, int, Any, Any]] = []

    def flush():
        """Move buffered (device) losses into the log; raise on the first non-finite one."""
        if not pending:
            return
        vals = torch.stack([torch.stack([p[3].float(), p[4].float()]) for p in pending]).cpu().tolist()
        for (step, lr, tok, _, _), (lv, gn) in zip(pending, vals):
            tlog["step"].append(step)
            tlog["lr"].append(lr)
            tlog["tokens"].append(tok)
            tlog["train_loss"].append(lv)
            tlog["grad_norm"].append(gn)
            if not (math.isfinite(lv) and math.isfinite(gn)):  # a NaN gradient poisons the weights at once
                pending.clear()
                _diverged(step, f"train loss {lv}, gradient norm {gn}")
        pending.clear()

    def _diverged(step: int, what: str):
        if bar is not None:
            bar.close()
        write_outputs("diverged", diverged_at_step=step)
        raise TrainingDiverged(
            f"run {run}: diverged at step {step} ({what}); curve so far kept in {out_dir} "
            f"with status 'diverged' (try a lower schedule.peak_lr)",
            step,
        )

    clip = o["grad_clip"] if o["grad_clip"] > 0 else float("inf")
    params = [p for p in raw_model.parameters() if p.requires_grad]
    kill_at = int(os.environ[KILL_ENV]) if os.environ.get(KILL_ENV) else None
    stop = [None]  # the stop signal received, if any
    stop_flag = torch.zeros(1, dtype=torch.int32, device=device)
    model.train()
    restore_signals = _catch_stop_signals(stop)
    try:
        for s in range(start + 1, cfg["steps"] + 1):
            t0 = time.perf_counter()
            g = offset + s
            lr = float(lrs[s - 1])
            for group in opt.param_groups:
                group["lr"] = lr  # set before the update: update g uses exactly lrs[g-1]
            rows, _ = sampler.next_batch()
            mine = rows[rank * per_rank : (rank + 1) * per_rank]
            if n_micro == 1:
                loss = train_loss(mine)
                loss.backward()
            else:  # equal micro-batches of fixed-length rows: the mean of their means is the batch mean
                loss = 0.0
                for j in range(n_micro):
                    sync = world == 1 or j == n_micro - 1  # DDP all-reduces the gradients once, at the last
                    with contextlib.nullcontext() if sync else model.no_sync():
                        part = train_loss(mine[j * micro : (j + 1) * micro]) / n_micro
                        part.backward()
                    loss = loss + part.detach()
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lt = loss.detach()
            if world > 1:
                lt = lt.clone()
                dist.all_reduce(lt)  # gloo has no AVG
                lt = lt / world
            tok = tokens_at_start + s * tokens_per_step
            pending.append((g, lr, tok, lt, gnorm.detach()))
            is_eval = s % cfg["eval_every"] == 0 or s == cfg["steps"]
            is_ckpt = g in transfer or (cfg["checkpoint"]["every"] and s % cfg["checkpoint"]["every"] == 0)
            synced = is_eval or is_ckpt or len(pending) >= sync_every
            if synced:
                flush()
            step_time[0] += time.perf_counter() - t0
            if is_eval:
                ev = add_eval(g, tok, lr, tlog["train_loss"][-1])
                _check_finite(ev, g, run, _diverged)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in ev.items()} | {"lr": f"{lr:.2e}"}, refresh=False)
            saved = is_ckpt and s < cfg["steps"] or g in transfer
            if saved:
                save_ckpt(g)
            if s < cfg["steps"] and (world == 1 or synced) and _stop_requested(stop, stop_flag, world, dist):
                flush()
                if not saved:
                    save_ckpt(g)
                write_outputs("interrupted", interrupted_at_step=g)
                name = signal.Signals(stop[0]).name
                raise TrainingInterrupted(
                    f"run {run}: stopped by {name} after step {g}; checkpoint "
                    f"{out_dir / 'ckpt' / f'step_{g}'} written, train again to resume",
                    g,
                    int(stop[0]),
                )
            if bar is not None:
                bar.update(1)
            if after_step is not None:
                after_step(g)
            if kill_at is not None and g == kill_at:
                os._exit(137)  # test hook: die like SIGKILL, no cleanup
        flush()
    finally:
        restore_signals()
        if bar is not None:
            bar.close()

    write_outputs("ok")
    if rank == 0:
        _save_final_outputs(out_dir)
        if not cfg["checkpoint"]["keep_periodic"]:  # with the final copy saved, resume points are useless
            for s_, p in _ckpt_dirs(out_dir):
                if s_ not in transfer:
                    shutil.rmtree(p, ignore_errors=True)
    barrier()
    result = json.loads(meta_path.read_text()) if rank == 0 else meta("ok")
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return result


def _save_final_outputs(out_dir: Path) -> None:
    with atomic_dir(out_dir / "ckpt" / FINAL_DIR) as tmp:
        for name in RUN_OUTPUTS:
            shutil.copy2(out_dir / name, tmp / name)  # copy2 keeps the mtimes the restore compares inputs with


def _input_paths(cfg: Mapping) -> dict[str, str]:
    paths = {f"data.{k}": v for k, v in cfg["data"].items() if k in ("general", "domain") and v}
    paths.update({f"valid.{k}": v for k, v in cfg["valid"].items()})
    if cfg.get("tokenizer"):
        paths["tokenizer"] = cfg["tokenizer"]
    if cfg["phase"] == "cpt":
        paths["init.checkpoint"] = cfg["init"]["checkpoint"]
    return paths


def _newest_mtime(path: str | os.PathLike) -> float:
    """Newest modification time of a file or of any file under a directory; 0 if it is not local (hub)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_mtime
    if not p.is_dir():
        return 0.0
    return max((f.stat().st_mtime for f in p.rglob("*") if f.is_file()), default=p.stat().st_mtime)


def _restore_final_outputs(out_dir: Path, chash: str, run: str, cfg: Mapping) -> None:
    """Put back the outputs of this config's finished run when any of them is missing (deleted after the job
    that wrote them failed late)."""
    final = out_dir / "ckpt" / FINAL_DIR
    if all((out_dir / n).is_file() for n in RUN_OUTPUTS) or not all((final / n).is_file() for n in RUN_OUTPUTS):
        return
    try:
        done = json.loads((final / "meta.json").read_text())
    except (OSError, ValueError):
        return
    if done.get("config_hash") != chash or done.get("status") != "ok":
        return  # another config's result: train as usual (its checkpoints decide)
    # a rerun Snakemake asked for on purpose (new input data, a new software environment) must train again
    stale = None
    if done.get("versions") != _versions():
        stale = "the software versions changed"
    else:
        newer = [k for k, p in _input_paths(cfg).items() if _newest_mtime(p) > (final / "meta.json").stat().st_mtime]
        if newer:
            stale = f"input '{newer[0]}' is newer"
    if stale:
        print(f"run {run}: not restoring the outputs in {final}: {stale}; training", file=sys.stderr)
        return
    done["outputs_restored"] = int(done.get("outputs_restored", 0)) + 1
    for name in RUN_OUTPUTS[:-1]:
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(final / name, tmp)
    write_json(out_dir / "meta.json", done)
    write_json(final / "meta.json", done)
    print(
        f"run {run}: training had finished; restored its outputs from {final} (they had been deleted, e.g. "
        f"after a job that finished past its time limit)",
        file=sys.stderr,
    )


def _fused_adamw_supported(device) -> bool:
    import torch

    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def _stop_requested(stop: list, flag, world: int, dist) -> bool:
    """Whether any process got a stop signal; under DDP all processes agree (they checkpoint together)."""
    if world == 1:
        return stop[0] is not None
    # decide from the reduced value only: a signal landing between reading stop[0] and the all-reduce must
    # not make this process stop while the others go on (they would deadlock in the next collective)
    flag.fill_(int(stop[0] or 0))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    agreed = int(flag.item())
    if agreed:
        stop[0] = agreed
    return bool(agreed)


def _check_finite(ev: Mapping[str, float], step: int, run: str, on_fail: Callable | None = None) -> None:
    bad = [k for k, v in ev.items() if not math.isfinite(v)]
    if bad:
        what = f"validation loss on '{bad[0]}' = {ev[bad[0]]}"
        if on_fail is not None:
            on_fail(step, what)
        raise TrainingDiverged(f"run {run}: non-finite {what} at step {step}", step)
