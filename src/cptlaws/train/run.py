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

Reading order: ``train()`` builds a ``TrainingRun`` and calls ``run()``; ``run()`` reads top to bottom
(prepare the directory, load data, build the model, restore, loop over ``step()``, finish). A logger or
an extra evaluation plugs in as a ``RunHook`` (``hooks=``): it sees every evaluation and every step.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cptlaws.data import rows as D
from cptlaws.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from cptlaws.io import clean_tmp_dirs, read_json, write_json, write_parquet
from cptlaws.train import checkpoints as C
from cptlaws.train import runtime as R
from cptlaws.train.config import config_hash, first_diff, load_config, lr_history, validate_config
from cptlaws.train.divergence import DivergenceRule, train_means

KILL_ENV = "CPTLAWS_KILL_AFTER_STEP"  # test hook: hard-exit (like SIGKILL) after this global step
CURVE_COLUMNS = ["run_id", "phase", "step", "tokens", "lr", "split", "loss"]
TRAINLOG_TYPES = {"step": "int64", "lr": "float64", "tokens": "int64", "train_loss": "float64", "grad_norm": "float64"}


class RunHook:
    """Something that watches a run: a logger (TensorBoard, W&B), an extra evaluation, the progress bar.
    Override what you need; ``run`` is the ``TrainingRun`` (its ``cfg``, ``rt.rank``, ``tlog``...)."""

    def on_start(self, run: TrainingRun) -> None: ...

    def on_eval(self, run: TrainingRun, step: int, lr: float, losses: Mapping[str, float]) -> None:
        """After each evaluation (the initial one too); ``losses``: validation set -> loss, and 'train'."""

    def on_step(self, run: TrainingRun, step: int) -> None:
        """After each step's logging and checkpointing."""

    def close(self, run: TrainingRun) -> None:
        """When the loop ends, whatever the reason."""


class ProgressBar(RunHook):
    def __init__(self):
        self.bar = None

    def on_start(self, run):
        if run.cfg["runtime"]["progress"] and run.rt.rank == 0 and run.start < run.cfg["steps"]:
            from tqdm import tqdm

            self.bar = tqdm(total=run.cfg["steps"], initial=run.start, desc=run.run_id, unit="step", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip

    def on_eval(self, run, step, lr, losses):
        if self.bar is not None:
            shown = {k: f"{v:.3f}" for k, v in losses.items() if k != "train"}
            self.bar.set_postfix(shown | {"lr": f"{lr:.2e}"}, refresh=False)

    def on_step(self, run, step):
        if self.bar is not None:
            self.bar.update(1)

    def close(self, run):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _AfterStep(RunHook):
    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def on_step(self, run, step):
        self.fn(step)


def loss_of(model, rows, device, autocast, reduction: str = "mean"):
    """Next-token cross-entropy of token rows (inputs row[:-1], targets row[1:]), computed in float32."""
    import torch.nn.functional as F

    x = rows[:, :-1].to(device, non_blocking=True)
    y = rows[:, 1:].to(device, non_blocking=True)
    with autocast:
        logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)


def train(
    config: Mapping | str | os.PathLike,
    *,
    resume: bool = True,
    after_step: Callable[[int], None] | None = None,
    source: str = "",
    hooks: Sequence[RunHook] = (),
) -> dict:
    """Run (or resume) one training run; returns its meta dict.

    ``config`` is a path or a raw mapping. ``after_step(global_step)`` is called after each step's logging and
    checkpointing (tests use it to simulate a kill). Raises ConfigError, DataError, TrainingDiverged,
    TrainingInterrupted (SIGTERM/SIGUSR1: checkpointed, resumable).
    """
    if not isinstance(config, Mapping):
        source = str(config)
        config = load_config(config)
    cfg = validate_config(config, source)
    hooks = [ProgressBar(), *hooks] + ([_AfterStep(after_step)] if after_step is not None else [])
    return TrainingRun(cfg, source=source, resume=resume, hooks=hooks).run()


class TrainingRun:
    """One PT or CPT run from its resolved config. The attributes are the run's state; a checkpoint holds
    the part a step depends on (``_state``)."""

    def __init__(self, cfg: dict, *, source: str = "", resume: bool = True, hooks: Sequence[RunHook] = ()):
        self.cfg, self.source, self.resume, self.hooks = cfg, source, resume, list(hooks)
        self.chash = config_hash(cfg)
        self.run_id, self.out_dir = cfg["run_id"], Path(cfg["out_dir"])
        self.offset = cfg["init"]["transfer_step"] if cfg["phase"] == "cpt" else 0  # global step of update 0
        self.transfer = set(cfg["checkpoint"]["transfer_steps"])
        self.tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
        self.full_lrs = lr_history(cfg)
        self.lrs = self.full_lrs[self.offset :]
        # what the logs and a checkpoint hold
        self.curve_rows: list[dict] = []
        self.tlog: dict[str, list] = {k: [] for k in TRAINLOG_TYPES}
        self.start = 0  # steps of this phase done before this process started
        self.tokens_at_start = 0
        self.wall_prev = 0.0  # wall time of earlier processes of this run
        self.step_time = 0.0  # seconds inside training steps only (no eval / checkpoint): train_tokens_per_s
        self.resumed_from: list[int] = []
        self.last_eval = None  # global step of the previous evaluation (the train loss is averaged since)
        self.pending: list[tuple] = []  # (step, lr, tokens, loss, grad norm) not yet moved off the device
        self.stop = R.StopSignals()
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------------------------------ the run
    def run(self) -> dict:
        self.rt = R.setup(self.cfg["runtime"], self.cfg["batch_size"], self.source)
        done = self._prepare_out_dir()
        if done is not None:
            self.rt.teardown()
            return done
        self._load_data()
        self._build()
        self.rule = DivergenceRule(self.cfg["divergence"], self.vocab, self._trained_sets())
        self._restore()
        self._wrap()
        self.t_start = time.perf_counter()
        if self.start == 0:  # PT init at step 0 / CPT branch point at step T
            self._evaluate_and_log(self.offset, self.tokens_at_start, self._lr_before(self.offset), None)
        self._loop()
        result = self._finish()
        self.model = self.train_loss = None  # the DDP wrapper and its compiled loss
        self.rt.teardown()
        return result

    def _prepare_out_dir(self) -> dict | None:
        """Fresh start or resume; the meta dict of this config's finished run, if there is one."""
        if self.rt.rank == 0:
            if not self.resume:
                C.clear_run_dir(self.out_dir)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean_tmp_dirs(self.out_dir / "ckpt")  # left by a kill during a checkpoint write
            if self.resume:
                C.restore_final_outputs(self.out_dir, self.chash, self.run_id, self.cfg)
        self.rt.barrier()
        if self.resume and all((self.out_dir / n).is_file() for n in C.RUN_OUTPUTS):
            done = read_json(self.out_dir / "meta.json", "run meta")
            if done.get("config_hash") == self.chash and done.get("status") == "ok":
                return done
        return None

    def _load_data(self) -> None:
        cfg, B, seq_len = self.cfg, self.cfg["batch_size"], self.cfg["seq_len"]
        srcs = [(f"data.{k}", cfg["data"][k]) for k in ("general", "domain") if cfg["data"][k]]
        srcs += [(f"valid.{k}", p) for k, p in cfg["valid"].items()]
        self.vocab = _vocab_size(cfg, srcs)
        nd = D.n_domain_rows(cfg["data"]["ratio"], B)
        general = D.load_rows(cfg["data"]["general"], "train", seq_len, "data.general") if nd < B else None
        domain = D.load_rows(cfg["data"]["domain"], "train", seq_len, "data.domain") if nd > 0 else None
        self.valid = {}
        for k, p in cfg["valid"].items():
            rows = D.load_rows(p, "valid", seq_len, f"valid.{k}")
            want = cfg["eval_batches"] * B
            if len(rows) < want and self.rt.rank == 0:
                print(
                    f"warning: run {self.run_id}: key 'valid.{k}': {p} has {len(rows)} validation rows, fewer than "
                    f"eval_batches {cfg['eval_batches']} x batch_size {B} = {want}: every evaluation uses all "
                    f"{len(rows)} (lower eval_batches, or give the set more data)",
                    file=sys.stderr,
                )
            self.valid[k] = D.validation_rows(rows, cfg["eval_batches"], B)
        named = [("data.general", general), ("data.domain", domain)] + [
            (f"valid.{k}", r) for k, r in self.valid.items()
        ]
        for key, rows in named:
            if rows is not None and int(rows.max()) >= self.vocab:
                raise D.DataError(
                    f"key '{key}': token id {int(rows.max())} >= vocab_size {self.vocab} (tokenizer mismatch?)"
                )
        self.sampler = D.MixtureSampler(general, domain, cfg["data"]["ratio"], B, cfg["seed"])

    def _trained_sets(self) -> list[str]:
        """The validation sets of the data this run trains on (the divergence rule watches those, not the
        ones it forgets)."""
        cfg, nd = self.cfg, D.n_domain_rows(self.cfg["data"]["ratio"], self.cfg["batch_size"])
        used = [cfg["data"][k] for k, on in (("general", nd < cfg["batch_size"]), ("domain", nd > 0)) if on]
        same = {os.path.realpath(p) for p in used if p}
        return [k for k, p in cfg["valid"].items() if os.path.realpath(p) in same]

    def _build(self) -> None:
        from cptlaws.train.model import attention_for, build_model, count_params

        cfg, rt = self.cfg, self.rt
        self.attn = attention_for(rt.device.type, rt.dtype)
        self.raw_model = build_model(cfg["model"], self.vocab, cfg["seq_len"], seed=cfg["seed"],
                                     attn_implementation=self.attn).to(rt.device)  # fmt: skip
        self.n_params, self.n_nonembed = count_params(self.raw_model)
        self.opt = R.make_optimizer(self.raw_model, cfg["optim"], rt.fused_adamw)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        clip = cfg["optim"]["grad_clip"]
        self.clip = clip if clip > 0 else float("inf")

    def _restore(self) -> None:
        """Continue from the latest complete checkpoint; or, for a new CPT run, branch from the PT one."""
        latest = C.load_latest(self.out_dir, self._same_config, main=self.rt.rank == 0) if self.resume else None
        if latest is not None:
            self._resume_from(latest[2])
        elif self.cfg["phase"] == "cpt":
            ini = self.cfg["init"]
            st = C.load_checkpoint(ini["checkpoint"])
            self.raw_model.load_state_dict(st["model"])
            if ini["optimizer"] == "keep":
                self.opt.load_state_dict(st["optimizer"])
            if ini["data_cursor"] == "continue":
                self.sampler.load_state_dict(st["sampler"], only=("general",))  # replay continues the PT stream
            self.tokens_at_start = int(st["tokens"])

    def _same_config(self, path: Path, cmeta: Mapping) -> None:
        if cmeta.get("config_hash") != self.chash:
            raise ConfigError(
                f"run {self.run_id}: {self.out_dir} holds checkpoints of a different config (first difference: "
                f"{first_diff(cmeta.get('config', {}), self.cfg)}); rerun with --no-resume to start over"
            )

    def _resume_from(self, st: Mapping) -> None:
        self.raw_model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sampler.load_state_dict(st["sampler"])
        C.set_rng_state(st["rng"])
        self.curve_rows, self.tlog = st["curve_rows"], st["trainlog"]
        self.start = st["step"] - self.offset
        self.tokens_at_start = st["tokens_at_start"]
        self.wall_prev = st["wall_time_s"]
        self.step_time = st.get("train_time_s", 0.0)
        self.resumed_from = st.get("resumed_from", []) + [st["step"]]
        self._replay_rule()

    def _replay_rule(self) -> None:
        """Feed the divergence rule the evaluations in the restored logs (it is a pure function of them), so a
        resumed run stops where an uninterrupted one would."""
        by_step: dict[int, dict[str, float]] = {}
        for r in self.curve_rows:
            if r["split"] != "train":
                by_step.setdefault(int(r["step"]), {})[r["split"]] = float(r["loss"])
        means = train_means(self.tlog, sorted(by_step))
        for g, losses in by_step.items():
            self.rule.observe(g, {**losses, "train": means[g]} if g in means and g != self.offset else losses)
            self.last_eval = g

    def _wrap(self) -> None:
        """The DDP wrapper and the (compiled) training loss."""
        import torch

        self.model = R.wrap_ddp(self.raw_model, self.rt)
        model, device, autocast = self.model, self.rt.device, self.rt.autocast

        def batch_loss(rows):
            return loss_of(model, rows, device, autocast)

        # one graph for the whole loss (forward, the logits' float cast, cross-entropy), as the Trainer's compiled
        # model computes its loss inside forward; on the CPU presets it is within noise of compiling the model alone
        self.train_loss = torch.compile(batch_loss) if self.rt.compile else batch_loss

    # ------------------------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        import torch

        self.stop_flag = torch.zeros(1, dtype=torch.int32, device=self.rt.device)
        self.kill_at = int(os.environ[KILL_ENV]) if os.environ.get(KILL_ENV) else None
        self.model.train()
        self._emit("on_start")
        try:
            with self.stop:
                for s in range(self.start + 1, self.cfg["steps"] + 1):
                    self.step(s)
                self.flush()
        finally:
            self._emit("close")

    def step(self, s: int) -> None:
        """Update ``s`` of this phase (global step offset + s), then its logging, evaluation, checkpoint and
        stop check."""
        cfg = self.cfg
        t0 = time.perf_counter()
        g = self.offset + s
        lr = float(self.lrs[s - 1])
        loss, gnorm = self._update(lr)
        tok = self.tokens_at_start + s * self.tokens_per_step
        self.pending.append((g, lr, tok, loss, gnorm))
        is_eval = s % cfg["eval_every"] == 0 or s == cfg["steps"]
        is_ckpt = g in self.transfer or (cfg["checkpoint"]["every"] and s % cfg["checkpoint"]["every"] == 0)
        synced = is_eval or is_ckpt or len(self.pending) >= self.rt.sync_every
        if synced:
            self.flush()
        self.step_time += time.perf_counter() - t0
        if is_eval:
            self._evaluate_and_log(g, tok, lr, self.tlog["train_loss"][-1])
        saved = is_ckpt and s < cfg["steps"] or g in self.transfer
        if saved:
            self.checkpoint(g)
        if s < cfg["steps"] and (self.rt.world == 1 or synced) and self.stop.agreed(self.rt, self.stop_flag):
            self._interrupted(g, saved)
        self._emit("on_step", g)
        if self.kill_at is not None and g == self.kill_at:
            os._exit(137)  # test hook: die like SIGKILL, no cleanup

    def _update(self, lr: float):
        """One optimizer update at ``lr``; returns the batch's mean loss (over all processes) and grad norm."""
        import contextlib

        import torch

        rt = self.rt
        for group in self.opt.param_groups:
            group["lr"] = lr  # set before the update: update g uses exactly lrs[g-1]
        rows, _ = self.sampler.next_batch()
        mine = rows[rt.rank * rt.per_rank : (rt.rank + 1) * rt.per_rank]
        if rt.n_micro == 1:
            loss = self.train_loss(mine)
            loss.backward()
        else:  # equal micro-batches of fixed-length rows: the mean of their means is the batch mean
            loss = 0.0
            for j in range(rt.n_micro):
                sync = rt.world == 1 or j == rt.n_micro - 1  # DDP all-reduces the gradients once, at the last
                with contextlib.nullcontext() if sync else self.model.no_sync():
                    part = self.train_loss(mine[j * rt.micro : (j + 1) * rt.micro]) / rt.n_micro
                    part.backward()
                loss = loss + part.detach()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return rt.mean_over_processes(loss.detach()), gnorm.detach()

    def flush(self) -> None:
        """Move buffered (device) losses into the log; stop as diverged at the first non-finite one."""
        import torch

        if not self.pending:
            return
        vals = torch.stack([torch.stack([p[3].float(), p[4].float()]) for p in self.pending]).cpu().tolist()
        pending, self.pending = self.pending, []
        for (step, lr, tok, _, _), (lv, gn) in zip(pending, vals):
            for k, v in zip(TRAINLOG_TYPES, (step, lr, tok, lv, gn)):
                self.tlog[k].append(v)
            if not (math.isfinite(lv) and math.isfinite(gn)):  # a NaN gradient poisons the weights at once
                self.diverged(step, f"train loss {lv}, gradient norm {gn}")

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Mean loss on every validation set (each process takes every world-th row; summed over processes)."""
        import torch

        rt, res = self.rt, {}
        self.raw_model.eval()
        with torch.no_grad():
            for name, rows in self.valid.items():
                mine = rows[rt.rank :: rt.world]
                tot = torch.zeros(2, dtype=torch.float64, device=rt.device)
                for i in range(0, len(mine), rt.micro):
                    chunk = mine[i : i + rt.micro]
                    tot[0] += loss_of(self.raw_model, chunk, rt.device, rt.autocast, "sum").double()
                    tot[1] += chunk.shape[0] * self.cfg["seq_len"]
                rt.sum_over_processes(tot)
                res[name] = float(tot[0] / tot[1])
        self.raw_model.train()
        return res

    def _evaluate_and_log(self, step: int, tokens: int, lr: float, train_loss: float | None) -> None:
        """Evaluate, add the curve rows (validation sets, then the step's train loss), tell the hooks, and
        stop as diverged on a non-finite validation loss."""
        ev = self.evaluate()
        losses = dict(ev) if train_loss is None else {**ev, "train": train_loss}
        base = {"run_id": self.run_id, "phase": self.cfg["phase"], "step": step, "tokens": tokens, "lr": lr}
        self.curve_rows += [{**base, "split": name, "loss": loss} for name, loss in losses.items()]
        bad = [k for k, v in ev.items() if not math.isfinite(v)]
        if bad:
            what = f"validation loss on '{bad[0]}' = {ev[bad[0]]}"
            if train_loss is None:  # the initial evaluation: nothing trained yet, no outputs to keep
                raise TrainingDiverged(f"run {self.run_id}: non-finite {what} at step {step}", step)
            self.diverged(step, what)
        self._check_divergence(step, ev)
        self._emit("on_eval", step, lr, losses)

    def _check_divergence(self, step: int, ev: Mapping[str, float]) -> None:
        """The loss-based rule (train/divergence.py) on the validation losses and the mean train loss since the
        previous evaluation; stops the run as diverged with the evidence."""
        losses = dict(ev)
        if step != self.offset:  # the PT init / CPT branch point has no train loss
            mean = self._train_mean_since(self.last_eval)
            if mean is not None:
                losses["train"] = mean
        self.last_eval = step
        evidence = self.rule.observe(step, losses, final=step == self.offset + self.cfg["steps"])
        if evidence is not None:
            self.diverged(step, evidence["message"], divergence=evidence)

    def _train_mean_since(self, prev: int | None) -> float | None:
        chunk = []
        for t, v in zip(reversed(self.tlog["step"]), reversed(self.tlog["train_loss"])):
            if prev is not None and t <= prev:
                break
            chunk.append(v)
        return sum(reversed(chunk)) / len(chunk) if chunk else None

    def _lr_before(self, g: int) -> float:
        """The LR of the update that led to global step ``g`` (NaN at step 0)."""
        return float(self.full_lrs[g - 1]) if g > 0 else float("nan")

    # ------------------------------------------------------------------------------------ outputs
    def wall(self) -> float:
        return self.wall_prev + time.perf_counter() - self.t_start

    def checkpoint(self, step: int) -> None:
        """Save the state after global step ``step`` (rank 0), prune old resume points, wait for all."""
        if self.rt.rank == 0:
            state = self._state(step)
            cm = {"run_id": self.run_id, "phase": self.cfg["phase"], "step": step, "tokens": state["tokens"],
                  "config_hash": self.chash, "config": self.cfg, "vocab_size": self.vocab,
                  "n_params": self.n_params, "n_nonembed": self.n_nonembed}  # fmt: skip
            C.save_checkpoint(self.out_dir / "ckpt" / f"step_{step}", state, cm)
            C.prune(self.out_dir, self.cfg["checkpoint"]["keep_last"], self.transfer)
        self.rt.barrier()

    def _state(self, step: int) -> dict:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": C.rng_state(),
            "step": step,
            "tokens": self.tokens_at_start + (step - self.offset) * self.tokens_per_step,
            "tokens_at_start": self.tokens_at_start,
            "curve_rows": self.curve_rows,
            "trainlog": self.tlog,
            "wall_time_s": self.wall(),
            "train_time_s": self.step_time,
            "resumed_from": self.resumed_from,
        }

    def meta(self, status: str, **extra) -> dict:
        w, rt, done = self.wall(), self.rt, len(self.tlog["step"])
        done_tokens = done * self.tokens_per_step
        return {
            "run_id": self.run_id, "phase": self.cfg["phase"], "status": status, "config": self.cfg,
            "config_hash": self.chash, "n_params": self.n_params, "n_nonembed": self.n_nonembed,
            "vocab_size": self.vocab, "steps_done": done, "final_step": self.offset + done,
            "tokens": self.tokens_at_start + done_tokens, "wall_time_s": w,
            "tokens_per_s": done_tokens / w if w > 0 else None, "train_time_s": self.step_time,
            "train_tokens_per_s": done_tokens / self.step_time if self.step_time > 0 else None,
            "lr_history_sha256": hashlib.sha256(np.ascontiguousarray(self.full_lrs, dtype="<f8").tobytes()).hexdigest(),
            "lr_history_len": len(self.full_lrs), "world_size": rt.world, "device": str(rt.device),
            "dtype": rt.dtype, "attention": self.attn, "compile": bool(rt.compile),
            "fused_adamw": bool(rt.fused_adamw), "threads": rt.threads, "resumed_from": self.resumed_from,
            "versions": C.versions(), "hostname": platform.node(), **extra,
        }  # fmt: skip

    def write_outputs(self, status: str, **extra) -> None:
        """curve.parquet, trainlog.parquet, then meta.json (rank 0)."""
        if self.rt.rank != 0:
            return
        import pandas as pd

        cdf = pd.DataFrame(self.curve_rows, columns=CURVE_COLUMNS)
        cdf = cdf.astype({"step": "int64", "tokens": "int64", "lr": "float64", "loss": "float64"})
        write_parquet(self.out_dir / "curve.parquet", cdf)
        write_parquet(self.out_dir / "trainlog.parquet", pd.DataFrame(self.tlog).astype(TRAINLOG_TYPES))
        write_json(self.out_dir / "meta.json", self.meta(status, **extra))

    def diverged(self, step: int, what: str, **evidence) -> None:
        self._emit("close")
        self.write_outputs("diverged", diverged_at_step=step, **evidence)
        raise TrainingDiverged(
            f"run {self.run_id}: diverged at step {step} ({what}); curve so far kept in {self.out_dir} "
            f"with status 'diverged' (try a lower schedule.peak_lr)",
            step,
        )

    def _interrupted(self, g: int, saved: bool) -> None:
        self.flush()
        if not saved:
            self.checkpoint(g)
        self.write_outputs("interrupted", interrupted_at_step=g)
        raise TrainingInterrupted(
            f"run {self.run_id}: stopped by {signal.Signals(self.stop.signum).name} after step {g}; checkpoint "
            f"{self.out_dir / 'ckpt' / f'step_{g}'} written, train again to resume",
            g,
            int(self.stop.signum),
        )

    def _finish(self) -> dict:
        self.write_outputs("ok")
        if self.rt.rank == 0:
            C.save_final_outputs(self.out_dir)
            if not self.cfg["checkpoint"]["keep_periodic"]:  # with the final copy saved, resume points are useless
                C.prune(self.out_dir, 0, self.transfer)
        self.rt.barrier()
        return read_json(self.out_dir / "meta.json", "run meta") if self.rt.rank == 0 else self.meta("ok")

    def _emit(self, event: str, *args) -> None:
        for h in self.hooks:
            getattr(h, event)(self, *args)


def _vocab_size(cfg: Mapping, sources: list[tuple[str, str]]) -> int:
    """The model's vocabulary: model.vocab_size, else the token data's (meta.json), else the tokenizer's.
    Every source that states one must agree (a token dir tokenized with another tokenizer would otherwise
    train a model of the wrong size, or on the wrong ids); model.vocab_size may only pad the data's."""
    stated: list[tuple[str, int]] = []  # (where, vocab size)
    for key, path in sources:
        meta = D.read_meta(D.split_dir(path, "train" if key.startswith("data") else "valid", key))
        if "vocab_size" in meta:
            stated.append((f"key '{key}' ({path})", int(meta["vocab_size"])))
    if cfg.get("tokenizer"):
        from tokenizers import Tokenizer

        try:
            n = Tokenizer.from_file(cfg["tokenizer"]).get_vocab_size()
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises its own exception types
            raise D.DataError(f"key 'tokenizer': cannot read {cfg['tokenizer']} ({exc})") from None
        stated.append((f"key 'tokenizer' ({cfg['tokenizer']})", n))
    if len({v for _, v in stated}) > 1:
        raise D.DataError(
            "vocabulary sizes disagree: " + ", ".join(f"{w}: {v}" for w, v in stated)
            + " (data tokenized with another tokenizer? re-tokenize it with this one)"
        )  # fmt: skip
    data_vocab = stated[0][1] if stated else None
    if "vocab_size" in cfg["model"]:
        mine = int(cfg["model"]["vocab_size"])
        if data_vocab is not None and mine < data_vocab:
            raise ConfigError(
                f"config: key 'model.vocab_size' = {mine}: smaller than the vocabulary of {stated[0][0]}: {data_vocab}"
            )
        return mine
    if data_vocab is not None:
        return data_vocab
    raise ConfigError("config: key 'model.vocab_size': unknown (no vocab_size in the data meta.json, no tokenizer)")
