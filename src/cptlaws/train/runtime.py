"""How a run is computed: device, precision, compilation, the AdamW kernel, DDP and micro-batches, and the
stop signals of a batch scheduler. None of it changes what a run computes beyond float rounding; the
choices are recorded in meta.json.

DDP (torchrun): each process takes ``batch_size / world`` rows of every batch, in ``n_micro``
micro-batches; the gradients are all-reduced once per step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cptlaws.errors import ConfigError

# SLURM sends SIGTERM at a time limit or preemption and SIGKILL KillWait seconds later; SIGUSR1 is the
# usual early warning (sbatch --signal=USR1@120). One step plus one checkpoint fits in that window.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class Runtime:
    """The resolved runtime choices of one process of a run."""

    device: Any  # torch.device
    dtype: str  # float32 | bfloat16
    compile: bool
    fused_adamw: bool
    sync_every: int  # steps between host syncs of the losses
    threads: int
    rank: int
    world: int
    local_rank: int
    per_rank: int  # rows of each batch on this process
    micro: int  # rows per forward/backward
    autocast: Any = None  # the torch.autocast context of the forward passes

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def n_micro(self) -> int:
        return self.per_rank // self.micro

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean_over_processes(self, t):
        """The mean of a scalar tensor over the DDP processes (gloo has no AVG)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def sum_over_processes(self, t) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)

    def teardown(self) -> None:
        """End the process group (after the last collective)."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup(rt: Mapping, batch_size: int, source: str = "") -> Runtime:
    """Resolve the ``runtime`` block (after torchrun's environment) and start the process group."""
    import torch
    import torch.distributed as dist

    where = f"config{(' ' + source) if source else ''}"
    rank, world, local_rank = dist_env()
    device = _device(rt["device"], local_rank, where)
    on_cuda = device.type == "cuda"
    torch.set_num_threads(rt["threads"])
    dtype = rt["dtype"] if rt["dtype"] != "auto" else ("bfloat16" if on_cuda else "float32")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    if batch_size % world:
        raise ConfigError(f"{where}: key 'batch_size' = {batch_size}: must be divisible by the {world} DDP processes")
    per_rank = batch_size // world
    micro = rt["micro_batch"] or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"{where}: key 'runtime.micro_batch' = {micro}: must divide the per-process "
            f"batch ({per_rank} rows = batch_size / {world} processes)"
        )
    # the fused AdamW kernel (one pass over all parameters; CPU support from torch 2.4) is ~2x faster than
    # torch's CPU default, a per-tensor loop, and is what the HF Trainer uses by default
    fused = rt["fused_adamw"] if rt["fused_adamw"] != "auto" else fused_adamw_supported(device)
    return Runtime(
        device=device,
        dtype=dtype,
        compile=rt["compile"] if rt["compile"] != "auto" else on_cuda,
        fused_adamw=bool(fused),
        sync_every=rt["sync_every"] or (50 if on_cuda else 1),
        threads=rt["threads"],
        rank=rank,
        world=world,
        local_rank=local_rank,
        per_rank=per_rank,
        micro=micro,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"),
    )


def _device(name: str, local_rank: int, where: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: key 'runtime.device' = 'cuda': no CUDA device available")
    if name != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device


def fused_adamw_supported(device) -> bool:
    import torch

    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def make_optimizer(model, optim: Mapping, fused: bool):
    """AdamW over the model's parameters; norms (and biases) are 1-D and get no weight decay."""
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(optim["betas"]), eps=optim["eps"], **kw)


def wrap_ddp(model, rt: Runtime):
    """The model the training step calls: the DDP wrapper under torchrun, else the model itself."""
    if rt.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[rt.local_rank] if rt.on_cuda else None)


class StopSignals:
    """Records SIGTERM / SIGUSR1 in ``signum`` instead of dying, while in a ``with`` block (main thread
    only). Repeats are ignored: under SLURM the job's other processes (Snakemake, srun) often forward the
    same SIGTERM, and SIGKILL follows anyway."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, _frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handler) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}

    def agreed(self, rt: Runtime, flag) -> bool:
        """Whether any process got a stop signal; under DDP all processes agree (they checkpoint together).
        ``flag`` is a one-element int32 tensor on the run's device."""
        if rt.world == 1:
            return self.signum is not None
        import torch.distributed as dist

        # decide from the reduced value only: a signal landing between reading signum and the all-reduce must
        # not make this process stop while the others go on (they would deadlock in the next collective)
        flag.fill_(int(self.signum or 0))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = int(flag.item())
        if agreed:
            self.signum = agreed
        return bool(agreed)
