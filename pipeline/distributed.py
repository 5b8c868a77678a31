"""Process-group setup from torchrun's environment and the few collectives the stages use.

One code path for one process and for N: without torchrun's RANK/WORLD_SIZE variables
nothing is initialised and every collective below is the identity, so `python -m train`
and `torchrun --nproc_per_node=8 -m train` run the same lines. Backend: nccl on CUDA,
gloo on CPU (multi-node works the same way through torchrun's c10d rendezvous).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", key: str = "train.device") -> torch.device:
    """'auto' takes the best accelerator present: cuda, then mps, then cpu.

    Also accepts 'cuda:N'. Errors name `key` (the config key or CLI flag the name came from)."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise ConfigError(f"{key} = {name!r}: must be one of auto, cuda, cuda:N, mps, cpu")
    if device.type == "cuda" and not cuda:
        raise ConfigError(f"{key} = {name!r}: no CUDA device is visible (use auto or cpu)")
    if device.type == "mps" and not mps:
        raise ConfigError(f"{key} = {name!r}: this machine has no Apple MPS device (use auto or cpu)")
    return device


AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name: str, device: torch.device, key: str = "train.dtype") -> torch.dtype | None:
    """None = plain fp32. auto: bf16 autocast on CUDA (GPT-2 reproductions' setting), fp32 elsewhere."""
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name not in AUTOCAST:
        raise ConfigError(f"{key} = {name!r}: expected auto, {', '.join(AUTOCAST)}")
    return AUTOCAST[name]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def _join_process_group(backend: str, rank: int, world: int, **kwargs) -> None:
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        dist.init_process_group(backend=backend, **kwargs)
        return
    # Under `torchrun --max-restarts`, every attempt shares torchrun's key-value store, and
    # the addresses a failed attempt's ranks published there send the new attempt's ranks
    # to dead peers ("Connection refused"; pytorch/pytorch#135712). One key prefix per
    # attempt keeps them apart.
    from torch.distributed.rendezvous import rendezvous
    store, rank, world = next(rendezvous("env://", rank, world))
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt{attempt}/", store), rank=rank,
                            world_size=world, **kwargs)


def init_distributed(device_name: str = "auto", timeout_s: float | None = None,
                     key: str = "train.device") -> DistEnv:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and join the process group if N > 1.

    timeout_s: how long a collective may wait for the slowest rank (None: torch's default).
    key: the config key or CLI flag the device name came from (named in errors)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(device_name, key)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                              "visible (--nproc_per_node must not exceed the GPUs per node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1:
        if device.type == "mps":
            raise ConfigError(f"{key} = mps: multi-process runs are not supported on mps (use cpu)")
        if not dist.is_initialized():
            extra = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
            if device.type == "cuda":
                _join_process_group("nccl", rank, world, device_id=device, **extra)
            else:
                _join_process_group("gloo", rank, world, **extra)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def close(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks in place (and return it); the identity in one process."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when any rank passed True (e.g. 'a stop signal arrived here')."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    return all_reduce_sum(t, env).item() > 0


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_to_main(obj: Any, env: DistEnv) -> list[Any] | None:
    """Every rank's picklable obj, in rank order, on rank 0 (None elsewhere)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's picklable obj on every rank."""
    if not env.distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
