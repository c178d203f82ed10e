"""Training runs: the run config (config), the model presets (model), the runtime choices (runtime),
checkpoints (checkpoints) and the PT / CPT training loop (run).

``train`` and the rest are imported on first use, so that checking a run config (the study expansion at
Snakemake parse time) imports neither torch nor transformers.
"""

from cptlaws.errors import TrainingDiverged, TrainingInterrupted

_LAZY = {
    "train": "cptlaws.train.run",
    "KILL_ENV": "cptlaws.train.run",
    "RunHook": "cptlaws.train.run",
    "load_config": "cptlaws.train.config",
    "validate_config": "cptlaws.train.config",
}
__all__ = ["KILL_ENV", "RunHook", "TrainingDiverged", "TrainingInterrupted", "load_config", "train", "validate_config"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cptlaws.train' has no attribute {name!r}")
