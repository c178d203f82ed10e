"""Where one float32 training step of the `LlamaForCausalLM` goes on this CPU, and so how fast any loop
over the same model math could be.

Profiles forward + backward + clip + AdamW (the work both our loop and the `Trainer` do) with
`torch.profiler`, records every matmul's shape, then times those same GEMMs alone. The matmul time of a
step is a floor no loop can go under without fewer FLOPs or lower-precision matmuls; the printed bound
"max speed-up" assumes every other op (attention, norms, rotary, SwiGLU, softmax, optimizer) took no time.

    .venv/bin/python benchmarks/step_profile.py [--preset small] [--threads 2] [--steps 5]
    .venv/bin/python benchmarks/step_profile.py --compile-scopes   # eager vs torch.compile of the model
        alone (what the Trainer compiles) vs of the whole loss (what `cptlaws train` compiles), interleaved
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

MM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def make_step(model, loss):
    """One training step as both loops take it: loss, backward, clip 1.0, fused AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step():
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 5 warm-up steps)")
    p.add_argument(
        "--compile-scopes",
        action="store_true",
        help="time eager / compiled model / compiled loss steps instead of profiling",
    )
    p.add_argument("--rounds", type=int, default=3, help="--compile-scopes: interleaved rounds of 15 steps")
    p.add_argument("--scopes", nargs="+", default=["eager", "model", "loss"], choices=["eager", "model", "loss"])
    a = p.parse_args()
    if a.compile_scopes:
        return compile_scopes(a)

    from torch.profiler import ProfilerActivity, profile

    from cptlaws.train.model import build_model, count_params

    torch.set_num_threads(a.threads)
    model = build_model(a.preset, a.vocab, a.seq, seed=0)
    model.train()
    x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    step = make_step(model, lambda: model(input_ids=x[:, :-1], labels=x[:, 1:]).loss)

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    step_s = (time.perf_counter() - t0) / a.steps
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            step()

    shapes: collections.Counter = collections.Counter()
    self_us: collections.Counter = collections.Counter()
    for ev in prof.events():
        self_us[ev.name] += ev.self_cpu_time_total
        if ev.name in MM_OPS and ev.input_shapes:
            shapes[(ev.name, tuple(tuple(s) for s in ev.input_shapes if s))] += 1
    prof_total = sum(self_us.values()) / a.steps / 1e6

    # the same GEMMs, alone, back to back: the speed this CPU's BLAS gives these shapes
    mm_s, flops = 0.0, 0.0
    for (name, shp), n in shapes.items():
        ins = [torch.randn(s) for s in shp[-2:]]
        fn = torch.bmm if name == "aten::bmm" else torch.mm
        for _ in range(3):
            fn(*ins)
        reps = 50
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(*ins)
        per = (time.perf_counter() - t0) / reps
        m, k = shp[-2][-2], shp[-2][-1]
        nn = shp[-1][-1]
        b = shp[-2][0] if name == "aten::bmm" else 1
        mm_s += per * n / a.steps
        flops += 2 * b * m * k * nn * n / a.steps
    mm_in_step = sum(self_us[k] for k in MM_OPS) / a.steps / 1e6
    # scale the profiled self times to the unprofiled step (the profiler adds its own overhead)
    scale = step_s / prof_total

    n_nonembed = count_params(model)[1]
    tok = a.batch * a.seq
    print(
        f"preset {a.preset}: {n_nonembed / 1e6:.2f}M non-embedding params, batch {a.batch}x{a.seq}, "
        f"{a.threads} threads, float32 eager, {a.steps} profiled steps"
    )
    print(f"step: {step_s * 1e3:.1f} ms = {tok / step_s:,.0f} tokens/s")
    print(
        f"matmuls: {sum(shapes.values()) // a.steps} a step, {flops / 1e9:.1f} GFLOP, "
        f"{mm_in_step * scale * 1e3:.1f} ms in the step ({mm_in_step * scale / step_s:.0%}), "
        f"{flops / (mm_in_step * scale) / 1e9:.0f} GFLOP/s"
    )
    print(f"the same GEMMs alone: {mm_s * 1e3:.1f} ms ({flops / mm_s / 1e9:.0f} GFLOP/s)")
    print("largest other ops (ms a step):")
    for name, us in self_us.most_common(12):
        if name not in MM_OPS:
            print(f"  {name[:60]:60s} {us / a.steps / 1e3 * scale:7.1f}")
    floor = min(mm_s, mm_in_step * scale)
    attn_s = sum(v for k, v in self_us.items() if "scaled_dot_product" in k) / a.steps / 1e6 * scale
    print(
        f"max speed-up of any loop over this step with the same math: {step_s / floor:.2f}x "
        f"(everything but the matmuls free); with the attention kept too: {step_s / (floor + attn_s):.2f}x"
    )


def compile_scopes(a) -> None:
    import torch.nn.functional as F

    from cptlaws.train.model import build_model

    torch.set_num_threads(a.threads)
    x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    steps = {}
    for scope in a.scopes:
        model = build_model(a.preset, a.vocab, a.seq, seed=0)
        model.train()
        fwd = torch.compile(model) if scope == "model" else model

        def loss(fwd=fwd):
            logits = fwd(input_ids=x[:, :-1], use_cache=False).logits
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

        step = make_step(model, torch.compile(loss) if scope == "loss" else loss)

        t0 = time.perf_counter()
        for _ in range(3):
            step()
        print(f"{scope}: first 3 steps (compilation) {time.perf_counter() - t0:.1f} s")
        steps[scope] = step
    best = {k: float("inf") for k in steps}
    for _ in range(a.rounds):  # interleaved: machine noise hits every scope alike
        for k, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(15):
                step()
            best[k] = min(best[k], (time.perf_counter() - t0) / 15)
    tok = a.batch * a.seq
    for k, v in best.items():
        print(
            f"compile scope {k:5s}: {v * 1e3:6.1f} ms a step, {tok / v:8,.0f} tokens/s, "
            + "  ".join(f"{best[o] / v:.2f}x {o}" for o in best if o != k)
        )


if __name__ == "__main__":
    main()
