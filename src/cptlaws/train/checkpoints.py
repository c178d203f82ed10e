"""A run directory's checkpoints and the copy of its finished outputs.

Layout of ``out_dir``: ``curve.parquet``, ``trainlog.parquet``, ``meta.json`` (the outputs; meta.json is
written last, so ``status: ok`` in it marks a finished run) and ``ckpt/``: ``step_<global step>/`` with
``state.pt`` (everything the next step depends on: weights, optimizer moments, RNG states, sampler cursor,
the logs so far, the wall time) and ``meta.json`` (the run's config and hash), plus ``final/``, a copy of the
finished outputs outside Snakemake's declared outputs: a job that finishes training and then fails (its
epilogue crossing the SLURM time limit) has its outputs deleted, and the retry restores them from there.
Every checkpoint and the final copy are written as whole directories (``cptlaws.io.atomic_dir``).
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from cptlaws.errors import InputError
from cptlaws.io import atomic_dir, atomic_path, write_json

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
