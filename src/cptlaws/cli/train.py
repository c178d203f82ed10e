"""`cptlaws train CONFIG.yaml|json [--resume/--no-resume]`: one PT or CPT run (also under torchrun)."""

from __future__ import annotations

import argparse
import sys

from cptlaws.errors import TrainingDiverged, TrainingInterrupted


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one PT or CPT run from a run config",
        description="Train one PT or CPT run (docs/design.md 'Training run config'). Writes curve.parquet, "
        "trainlog.parquet, meta.json and ckpt/ into out_dir. For DDP: torchrun --nproc_per_node N -m cptlaws.cli train CONFIG.",
    )
    p.add_argument("config", help="run config (YAML or JSON)")
    p.add_argument(
        "--resume",
        dest="resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest complete checkpoint in out_dir (default); --no-resume deletes "
        "out_dir's checkpoints and outputs first",
    )
    p.add_argument("--threads", type=int, default=None, help="override runtime.threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from cptlaws.train import load_config, train

    cfg = load_config(args.config)
    if args.threads is not None or args.no_progress:
        rt = dict(cfg.get("runtime") or {})
        if args.threads is not None:
            rt["threads"] = args.threads
        if args.no_progress:
            rt["progress"] = False
        cfg["runtime"] = rt
    try:
        meta = train(cfg, resume=args.resume, source=args.config)
    except TrainingDiverged as exc:
        print(f"cptlaws train: diverged: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(f"cptlaws train: interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's code for death by that signal: schedulers read it as killed
    print(
        f"{meta['run_id']}: {meta['status']}, {meta['final_step']} steps, {meta['tokens']} tokens, "
        f"{meta['tokens_per_s']:.0f} tokens/s, {meta['wall_time_s']:.1f} s",
        file=sys.stderr,
    )
    return 0
