"""The loss-based divergence rule: a run whose loss blows up without becoming NaN stops as 'diverged'.

Two limits, checked at every evaluation after the first (the PT init / the CPT branch point):

* ``above_uniform``: the train loss, and the validation loss of each data set the run trains on, must stay
  below ``max(its value at the first evaluation, ln(vocab_size)) + above_uniform``. ``ln(vocab_size)`` is the
  loss of a uniform guess: a model far worse than that on the data it is fitting has blown up. Validation
  sets of data the run does not train on (the general set of an r = 1 CPT run, the domain set of a PT run)
  are not watched: their loss rises on purpose -- forgetting is what the study measures -- and a model
  confident in another language can pass the uniform loss there (a PT model on one synthetic language reads
  the other at 6.5 nats, ln 64 = 4.2).
* ``train_rise``: the train loss (the mean of the steps since the previous evaluation, so one noisy batch
  does not count) must stay below its running minimum + ``train_rise``. It is the loss the optimizer
  minimises; a healthy run does not climb a whole nat above its best.

A limit crossed at ``patience`` consecutive evaluations stops the run; at the last evaluation once is
enough (there is no later one to recover in). The rule is a pure function of the curve and the train log,
so a resumed run replays it from the checkpoint's logs and stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class _Series:
    start: float
    best: float
    over: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, limit) in a row


class DivergenceRule:
    """Feed it each evaluation (``observe``); it returns the evidence when the run diverged, else None."""

    def __init__(self, settings: Mapping, vocab_size: int, watched: Iterable[str] | None = None):
        """``watched``: the validation sets of the data being trained on (None: all); 'train' always is."""
        self.watched = None if watched is None else {*watched, "train"}
        self.on = bool(settings["enabled"])
        self.train_rise = float(settings["train_rise"])
        self.above_uniform = float(settings["above_uniform"])
        self.patience = int(settings["patience"])
        self.uniform = math.log(vocab_size)
        self.series: dict[str, _Series] = {}

    def observe(self, step: int, losses: Mapping[str, float], final: bool = False) -> dict | None:
        """``losses``: validation set -> loss, and 'train' -> the mean train loss since the last evaluation."""
        fired = None
        for name, loss in losses.items():
            if self.watched is not None and name not in self.watched:
                continue
            s = self.series.get(name)
            if s is None:  # the first evaluation of this series sets its start
                self.series[name] = _Series(start=loss, best=loss)
                continue
            limit = self._limit(name, s)
            s.over = s.over + [(step, loss, limit)] if loss > limit else []
            s.best = min(s.best, loss)
            if fired is None and s.over and (len(s.over) >= self.patience or final):
                fired = self._evidence(name, s)
        return fired if self.on else None

    def _limit(self, name: str, s: _Series) -> float:
        ceiling = max(s.start, self.uniform) + self.above_uniform
        return min(ceiling, s.best + self.train_rise) if name == "train" else ceiling

    def _evidence(self, name: str, s: _Series) -> dict:
        steps, values, limits = zip(*s.over)
        what = "train loss (mean since the previous evaluation)" if name == "train" else f"validation loss on '{name}'"
        rise = name == "train" and limits[-1] < max(s.start, self.uniform) + self.above_uniform
        why = (
            f"its running minimum {s.best:.4g} + train_rise {self.train_rise:g}"
            if rise
            else f"max(its start {s.start:.4g}, ln(vocab) {self.uniform:.4g}) + above_uniform {self.above_uniform:g}"
        )
        shown = ", ".join(f"{v:.4g} at step {t}" for t, v in zip(steps, values))
        return {
            "series": name,
            "rule": "train_rise" if rise else "above_uniform",
            "steps": list(steps),
            "losses": list(values),
            "limit": limits[-1],
            "start": s.start,
            "best": s.best,
            "message": f"{what} {shown}: above {limits[-1]:.4g} = {why}, at {len(steps)} evaluation(s) in a row",
        }


def train_means(tlog: Mapping[str, Sequence], eval_steps: Sequence[int]) -> dict[int, float]:
    """The mean train loss of the steps after the previous evaluation up to each evaluation step."""
    out, prev, i = {}, None, 0
    steps, losses = tlog["step"], tlog["train_loss"]
    for g in eval_steps:
        chunk = []
        while i < len(steps) and steps[i] <= g:
            if prev is None or steps[i] > prev:
                chunk.append(losses[i])
            i += 1
        if chunk:
            out[g] = sum(chunk) / len(chunk)
        prev = g
    return out
