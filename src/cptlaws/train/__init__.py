"""Training runs: the run config, the model presets, checkpoints and the PT / CPT training loop."""

from cptlaws.errors import TrainingDiverged, TrainingInterrupted
from cptlaws.train.run import KILL_ENV, load_config, train, validate_config

__all__ = ["KILL_ENV", "TrainingDiverged", "TrainingInterrupted", "load_config", "train", "validate_config"]
