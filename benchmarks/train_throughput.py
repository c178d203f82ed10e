"""Training throughput: our loop (`cptlaws.train.train`) vs a Hugging Face `Trainer`, same model, data,
batch, optimizer settings and thread count, side by side in one run. Each contender runs in its own
subprocess so peak RSS is its own; runs alternate (ours, trainer, ours, ...) and the best of
``--repeats`` is reported, since other processes on a shared machine add noise.

    .venv/bin/python benchmarks/train_throughput.py [--preset small] [--steps 60] [--threads 2]
        [--compile --skip 30 --steps 150]   # torch.compile in both loops, steady state only
        [--dtype bfloat16]                  # bf16 autocast in both loops (AMX on recent x86 CPUs)

Goal (issue 3): >= 1.3x the Trainer's tokens/s at ~1M non-embedding parameters on a 2-core CPU.
On a CUDA machine ``--device cuda --preset 106M`` also prints model-FLOPs utilisation (bf16).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM)


def make_data(root: Path, vocab: int, seq: int, rows: int) -> None:
    from cptlaws.data.rows import save_rows

    rng = np.random.default_rng(0)
    # Zipf-ish ids: a realistic softmax target distribution
    ids = np.minimum(rng.zipf(1.2, size=(rows, seq + 1)) - 1, vocab - 1)
    save_rows(root / "train", ids, vocab)
    save_rows(root / "valid", ids[:64], vocab)


def steady(stamps: list[float], a) -> float:
    """tokens/s over steps skip+1 .. steps-1 from per-step end times (the last step of ours also evaluates)."""
    n = a.steps - 1 - a.skip
    if n < 1:
        raise SystemExit(f"--skip {a.skip} leaves no timed step of {a.steps}")
    return n * a.batch * a.seq / (stamps[a.steps - 2] - stamps[a.skip - 1])


def child_ours(a) -> dict:
    from cptlaws.train import train

    out = Path(a.work) / f"ours-{time.time_ns()}"
    cfg = {
        "run_id": "bench",
        "phase": "pt",
        "out_dir": str(out),
        "model": {"preset": a.preset},
        "data": {"general": a.data},
        "valid": {"general": a.data},
        "batch_size": a.batch,
        "seq_len": a.seq,
        "steps": a.steps,
        "eval_every": a.steps,
        "eval_batches": 1,
        "schedule": {"kind": "constant", "peak_lr": 2.0e-3},
        "runtime": {
            "threads": a.threads,
            "progress": False,
            "device": a.device,
            "compile": a.compile,
            "dtype": a.dtype,
        },
    }
    stamps = []
    meta = train(cfg, after_step=lambda g: stamps.append(time.perf_counter()))
    st = json.loads((out / "meta.json").read_text())
    tps = steady(stamps, a) if a.skip else st["train_tokens_per_s"]
    return {
        "tokens_per_s": tps,
        "wall_s": st["wall_time_s"],
        "n_nonembed": meta["n_nonembed"],
        "final_train_loss": float(__import__("pandas").read_parquet(out / "trainlog.parquet")["train_loss"].iloc[-1]),
    }


def child_trainer(a) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from cptlaws.data.rows import load_rows
    from cptlaws.train.model import build_model, count_params

    torch.set_num_threads(a.threads)
    rows = load_rows(a.data, "train", a.seq)

    class DS(torch.utils.data.Dataset):  # inputs = row[:-1]; HF shifts labels itself
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            x = rows[i, :-1]
            return {"input_ids": x, "labels": x}

    model = build_model(a.preset, 1024 if a.vocab is None else a.vocab, a.seq, seed=0)
    times = {}

    stamps = []

    class Clock(TrainerCallback):  # time the steps only, like our train_tokens_per_s
        def on_step_begin(self, args, state, control, **kw):
            times.setdefault("start", time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kw):
            times["end"] = time.perf_counter()

    args = TrainingArguments(
        output_dir=str(Path(a.work) / "hf"),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=a.steps,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=a.device == "cpu",
        disable_tqdm=True,
        seed=0,
        bf16=a.dtype == "bfloat16",
        torch_compile=a.compile,
    )
    last = {}

    class LastLoss(Trainer):  # the last step's loss, like ours (train_loss in metrics is the run's mean)
        def compute_loss(self, model, inputs, *args, **kw):
            out = super().compute_loss(model, inputs, *args, **kw)
            last["loss"] = (out[0] if isinstance(out, tuple) else out).detach()
            return out

    tr = LastLoss(model=model, args=args, train_dataset=DS(), callbacks=[Clock()])
    res = tr.train()
    dt = times["end"] - times["start"]
    tps = steady(stamps, a) if a.skip else a.steps * a.batch * a.seq / dt
    return {
        "tokens_per_s": tps,
        "wall_s": res.metrics["train_runtime"],
        "n_nonembed": count_params(model)[1],
        "final_train_loss": float(last["loss"]),
    }


def run_child(which: str, a) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--data",
        a.data,
        "--work",
        a.work,
        "--preset",
        a.preset,
        "--steps",
        str(a.steps),
        "--batch",
        str(a.batch),
        "--seq",
        str(a.seq),
        "--vocab",
        str(a.vocab),
        "--threads",
        str(a.threads),
        "--device",
        a.device,
        "--skip",
        str(a.skip),
        "--dtype",
        a.dtype,
    ] + (["--compile"] if a.compile else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{which} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="compute dtype of both loops (bf16 autocast, fp32 weights); default fp32 on CPU, bf16 on CUDA",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", choices=["ours", "trainer"], default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile in both loops (Trainer: torch_compile=True)")
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave the first SKIP steps (compilation, warm-up) out of tokens/s, in both loops",
    )
    p.add_argument("--child", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    if a.child:
        res = (child_ours if a.child == "ours" else child_trainer)(a)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as work:
        a.work = work
        a.data = str(Path(work) / "tokens")
        make_data(Path(a.data), a.vocab, a.seq, max(64, a.steps * a.batch))
        names = [a.only] if a.only else ["ours", "trainer"]
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            for n in names:
                r = run_child(n, a)
                if n not in best or r["tokens_per_s"] > best[n]["tokens_per_s"]:
                    best[n] = r
    print(
        f"model preset {a.preset} ({best[names[0]]['n_nonembed'] / 1e6:.2f}M non-embedding params), "
        f"batch {a.batch}x{a.seq}, vocab {a.vocab}, {a.steps} steps, {a.threads} threads, {a.device}, "
        f"best of {a.repeats}, {a.dtype}, compile {'on' if a.compile else 'off'} (both), "
        + (f"steps {a.skip + 1}..{a.steps - 1} timed" if a.skip else "every step timed")
    )
    print(f"{'':10s} {'tokens/s':>10s} {'peak RSS MB':>12s} {'final loss':>11s}")
    for n in names:
        r = best[n]
        print(f"{n:10s} {r['tokens_per_s']:10.0f} {r['peak_rss_mb']:12.0f} {r['final_train_loss']:11.3f}")
    if len(names) == 2:
        print(f"speed-up ours / Trainer: {best['ours']['tokens_per_s'] / best['trainer']['tokens_per_s']:.2f}x")
    if a.device == "cuda":
        import torch

        from cptlaws.train.model import flops_per_token, llama_config

        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        fpt = flops_per_token(llama_config(a.preset, a.vocab, a.seq), a.seq)
        for n in names:
            achieved = fpt * best[n]["tokens_per_s"]
            mfu = f"{achieved / peak:.1%}" if peak else "unknown peak"
            print(f"{n}: {achieved / 1e12:.1f} TFLOP/s, MFU {mfu} on {name}")


if __name__ == "__main__":
    main()
