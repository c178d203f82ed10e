"""The one exception hierarchy of cptlaws.

Every error the library raises on purpose is a ``CptlawsError``; its message names what is wrong (the
file, run, row or config key) and, where there is one, the fix. The CLI prints a ``CptlawsError`` as one
line and exits 2; anything else is a bug and keeps its traceback. The kinds also derive from the
built-in they refine (``ValueError`` for bad input, ``RuntimeError`` for a run that stopped), so code
that catches those keeps working.
"""

from __future__ import annotations


class CptlawsError(Exception):
    """Base of every deliberate cptlaws error."""


class ConfigError(CptlawsError, ValueError):
    """A study config, run config or model spec that cannot be used; the message names the key."""


class ScheduleError(ConfigError):
    """A schedule spec that cannot be turned into an LR array; the message names the field."""


class DataError(CptlawsError, ValueError):
    """A corpus, tokenizer, token directory or hub dataset that cannot be used; the message names it."""


class InputError(CptlawsError, ValueError):
    """A table or file handed to cptlaws (curves, run outputs, fit JSON, figure inputs) that is missing or
    malformed; the message names the file, the run and the row or column."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that does not exist; the message names it."""


class StorageError(CptlawsError, OSError):
    """A file or directory that cannot be written: no space left, a read-only file system, no permission;
    the message names the path and the reason."""


class FitError(CptlawsError, ValueError):
    """A fit that cannot be done: too few points, bad data, no converged start."""


class TrainingError(CptlawsError, RuntimeError):
    """A training run that stopped before its last step."""

    def __init__(self, msg: str, step: int):
        super().__init__(msg)
        self.step = step


class TrainingDiverged(TrainingError):
    """The loss diverged; the run's outputs so far were written with status 'diverged'."""


class TrainingInterrupted(TrainingError):
    """SIGTERM or SIGUSR1 (a SLURM time limit, preemption, scancel): the run checkpointed the step it was on
    and stopped; training it again resumes there."""

    def __init__(self, msg: str, step: int, signum: int):
        super().__init__(msg, step)
        self.signum = signum


class ClusterError(CptlawsError, RuntimeError):
    """SLURM is not usable for this study; the message lists every problem and what to do."""


class UsageError(CptlawsError):
    """A command line that cannot be carried out (conflicting or missing options)."""
