"""A run directory's checkpoints and the copy of its finished outputs.

Layout of ``out_dir``: ``curve.parquet``, ``trainlog.parquet``, ``meta.json`` (the outputs; meta.json is
written last, so ``status: ok`` in it marks a finished run) and ``ckpt/``: ``step_<global step>/`` with
``state.pt`` (everything the next step depends on: weights, optimizer moments, RNG states, sampler cursor,
the logs so far, the wall time) and ``meta.json`` (the run's config and hash), plus ``final/``, a copy of the
finished outputs outside Snakemake's declared outputs: a job that finishes training and then fails (its
epilogue crossing the SLURM time limit) has its outputs deleted, and the retry restores them from there.
Every checkpoint and the final copy are written as whole directories (``cptlaws.io.atomic_dir``); a write
the disk refuses (no space, read-only, no permission) is a one-line ``StorageError`` naming the path.

Resume takes the newest intact checkpoint (``load_latest``): one whose ``meta.json`` or ``state.pt`` cannot
be read (truncated by a full disk, emptied, bit rot) is reported naming the file and the reason, moved
aside to ``step_<T>.corrupt`` (kept for a post-mortem, never a resume point again) and the next older one
is tried.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from cptlaws.errors import InputError, StorageError, TrainingError
from cptlaws.io import atomic_dir, atomic_path, free_space, read_json, write_json

CKPT_STATE = "state.pt"
CKPT_META = "meta.json"
RUN_OUTPUTS = ("curve.parquet", "trainlog.parquet", "meta.json")  # meta.json last: it marks the run done
FINAL_DIR = "final"


def ckpt_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints (both files present) of a run directory, oldest first."""
    root = Path(out_dir) / "ckpt"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and (p / CKPT_STATE).is_file() and (p / CKPT_META).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(path: Path, state: dict, meta: dict) -> None:
    """Write a checkpoint directory atomically; a refused write raises ``StorageError`` naming the file."""
    import torch

    path = Path(path)
    with atomic_dir(path) as tmp:
        try:
            torch.save(state, tmp / CKPT_STATE)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as 'unexpected pos ...'
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(
                f"cannot write {path / CKPT_STATE}: the write failed ({first}); no space left on the device? "
                f"({free_space(path)})"
            ) from None
        (tmp / CKPT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_checkpoint(path: str | Path) -> dict:
    """The state of a checkpoint; an unreadable ``state.pt`` raises ``InputError`` naming it and the reason."""
    import torch

    p = Path(path)
    if not (p / CKPT_STATE).is_file():
        raise InputError(f"checkpoint {p}: no {CKPT_STATE}")
    try:
        st = torch.load(p / CKPT_STATE, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and EOF errors of a truncated or damaged file
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"checkpoint file {p / CKPT_STATE}: unreadable ({why}; truncated or damaged?)") from None
    if not isinstance(st, dict) or "model" not in st:
        raise InputError(f"checkpoint file {p / CKPT_STATE}: not a cptlaws checkpoint (no model state)")
    return st


def _read_ckpt_meta(p: Path) -> dict:
    meta = read_json(p / CKPT_META, "checkpoint meta")
    if not isinstance(meta, dict) or "config_hash" not in meta:
        raise InputError(f"{p / CKPT_META}: not a checkpoint meta (no config_hash)")
    return meta


def move_aside(p: Path) -> Path:
    """Rename a damaged checkpoint dir to ``<name>.corrupt`` (``.corrupt-2``... if taken)."""
    dest, n = p.with_name(f"{p.name}.corrupt"), 1
    while dest.exists():
        n += 1
        dest = p.with_name(f"{p.name}.corrupt-{n}")
    os.replace(p, dest)
    return dest


def load_latest(
    out_dir: Path, check: Callable[[Path, dict], None] = lambda p, m: None, main: bool = True
) -> tuple[Path, dict, dict] | None:
    """The newest intact checkpoint of a run directory: (its dir, its meta, its state), or None if there
    is none at all. A damaged one is reported on stderr naming the file and the reason and (``main``: the
    process that owns the directory) moved aside; ``check(dir, meta)`` raises for a checkpoint that is
    intact but unusable (another config's). None intact: ``TrainingError`` naming the directory."""
    found, bad = ckpt_dirs(out_dir), []
    for _, p in reversed(found):
        try:
            meta = _read_ckpt_meta(p)
            check(p, meta)
            state = load_checkpoint(p)
            return p, meta, state
        except InputError as exc:
            if not main:
                bad.append(p.name)
                continue
            dest = move_aside(p)
            bad.append(dest.name)
            print(f"warning: {exc}; checkpoint moved aside to {dest}, trying an older one", file=sys.stderr)
    if bad:
        raise TrainingError(
            f"no intact checkpoint in {Path(out_dir) / 'ckpt'} (damaged, moved aside: {', '.join(bad)}); training "
            f"again starts the run over from its first step",
            0,
        )
    return None


def prune(out_dir: Path, keep_last: int, keep: Iterable[int] = ()) -> None:
    """Delete all but the newest ``keep_last`` resume checkpoints; the steps in ``keep`` (transfer
    checkpoints, CPT branch points) are never counted or deleted."""
    keep = set(keep)
    periodic = [p for s, p in ckpt_dirs(out_dir) if s not in keep]
    for p in periodic[: max(len(periodic) - keep_last, 0)]:
        shutil.rmtree(p, ignore_errors=True)


def clear_run_dir(out_dir: Path) -> None:
    """Remove a run's checkpoints and outputs (``--no-resume``)."""
    for name in ("ckpt", *RUN_OUTPUTS):
        p = Path(out_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def rng_state() -> dict:
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping) -> None:
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def versions() -> dict:
    """The software a run's numbers depend on (meta.json; a change stops the restore of final outputs)."""
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


# ---------------------------------------------------------------- the copy of a finished run's outputs
def save_final_outputs(out_dir: Path) -> None:
    with atomic_dir(Path(out_dir) / "ckpt" / FINAL_DIR) as tmp:
        for name in RUN_OUTPUTS:
            shutil.copy2(Path(out_dir) / name, tmp / name)  # copy2 keeps the mtimes the restore compares


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


def _final_copy_is_stale(final: Path, done: Mapping, cfg: Mapping) -> str | None:
    """Why a rerun Snakemake asked for on purpose (new input data, new software) must train again."""
    if done.get("versions") != versions():
        return "the software versions changed"
    newer = [k for k, p in _input_paths(cfg).items() if _newest_mtime(p) > (final / "meta.json").stat().st_mtime]
    return f"input '{newer[0]}' is newer" if newer else None


def restore_final_outputs(out_dir: Path, chash: str, run: str, cfg: Mapping) -> None:
    """Put back the outputs of this config's finished run when any of them is missing (deleted after the job
    that wrote them failed late)."""
    out_dir = Path(out_dir)
    final = out_dir / "ckpt" / FINAL_DIR
    if all((out_dir / n).is_file() for n in RUN_OUTPUTS) or not all((final / n).is_file() for n in RUN_OUTPUTS):
        return
    try:
        done = json.loads((final / "meta.json").read_text())
    except (OSError, ValueError):
        return
    if done.get("config_hash") != chash or done.get("status") != "ok":
        return  # another config's result: train as usual (its checkpoints decide)
    stale = _final_copy_is_stale(final, done, cfg)
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
