"""One run across several processes, on PyTorch's own engine (``torch.distributed``).

``torchrun --nproc_per_node=N -m prunelab ...`` starts N copies of the same run; each learns its
place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; under SLURM with ``tasks_per_node`` the ``SLURM_*`` variables). Every rank holds
the same model and data and takes the same decisions; training is ``DistributedDataParallel``
(each rank a part of every global batch), and rank 0 alone talks to MLflow, writes caches and the
hand-over files, and tells the others what it decided (:meth:`Ranks.broadcast`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

# What a collective says when a peer is gone (gloo, NCCL), besides raising torch's DistError.
LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "NCCL error")


class DistributedError(UserError, RuntimeError):
    """The processes of a run cannot be set up together; the message says what to change."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's ``world`` processes."""

    rank: int
    world: int
    local_rank: int = 0
    sync_bn: bool = False  # BatchNorm statistics over the global batch (train.sync_bn; GPUs only)

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, caches and hands over."""
        return self.rank == 0

    def parallel(self, net: nn.Module, device: torch.device) -> nn.Module:
        """``net`` as ``DistributedDataParallel``: gradients averaged across the ranks every step.
        With ``sync_bn`` its BatchNorm layers become ``SyncBatchNorm`` sharing their parameters and
        statistics (:func:`local_batchnorm` turns them back once training ends)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (a copy)."""
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Work that waits on the other ranks: a rank that died (its connection closed, or a
        collective timed out) is a :class:`DistributedError` here, and the SIGTERM torchrun sends
        next no longer interrupts this process while it records the run FAILED."""
        try:
            yield
        except (dist.DistError, RuntimeError) as e:
            # gloo's first line starts with the source file it was raised in: the reason follows it
            first = (
                re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
            )
            if not isinstance(e, dist.DistError) and not any(w in str(e) for w in LOST):
                raise
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise DistributedError(
                f"rank {self.rank} of {self.world}: another process of this run stopped or did not answer "
                f"({first[:200]}); torchrun's report says which rank and why"
            ) from None

    def all_agree(self, value: Any) -> bool:
        """Whether every rank holds the same ``value`` (a digest, say)."""
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return all(v == values[0] for v in values)

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics, which each rank updated from its own
        samples) into ``model`` on every rank: the ranks end a training with one model."""
        for tensor in model.buffers():
            dist.broadcast(tensor, src=0)

    def broadcast_state(self, model: nn.Module) -> None:
        """Rank 0's weights and buffers into ``model`` on every rank."""
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """``model``'s BatchNorm layers by name (before ``sync_bn`` replaces them)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def local_batchnorm(model: nn.Module, originals: dict[str, nn.Module]) -> nn.Module:
    """``model`` with its BatchNorm layers back as they were before ``sync_bn`` converted them
    (``originals``, :func:`batchnorms`): the converted layers shared their parameters and
    statistics, so the originals hold what training made of them."""
    for name, layer in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return model


def from_environment(env: os._Environ | dict[str, str] = os.environ) -> Ranks | None:
    """The ranks torchrun (or SLURM's ``srun`` with several tasks, e.g. Hydra's submitit launcher
    with ``tasks_per_node``) started this process among; None for a process started alone."""
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    # the tasks of this srun step (not the allocation's SLURM_NTASKS: a lone process in an sbatch
    # script of several tasks must not wait for ranks no one starts)
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", "0")))
    return None


def rendezvous(env: os._Environ | dict[str, str] = os.environ) -> tuple[str, str] | None:
    """Where rank 0 listens: torchrun's ``MASTER_ADDR`` / ``MASTER_PORT``; under SLURM, unless set,
    the node ``srun`` was launched from (rank 0's, with the default block distribution; 127.0.0.1
    on one node) and a port from the job's id (each point of a sweep is its own job)."""
    if "MASTER_ADDR" in env:
        return env["MASTER_ADDR"], env.get("MASTER_PORT", "29500")
    if "SLURM_JOB_ID" in env:
        one_node = env.get("SLURM_NNODES", "1") == "1"
        host = "127.0.0.1" if one_node else env.get("SLURM_LAUNCH_NODE_IPADDR")
        if host:
            return host, str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    return None


def start(ranks: Ranks, device: torch.device, timeout_s: float = 3 * 3600.0) -> None:
    """Join the run's process group: NCCL between GPUs, gloo on CPUs. A rank that does not arrive
    (or a collective a dead rank never joins) fails after ``timeout_s`` instead of hanging: long,
    because the other ranks wait while rank 0 waits for a dense model another job is training (a
    rank that dies closes its connections, which the others see at once, and torchrun ends them)."""
    if dist.is_initialized():
        return
    where = rendezvous()
    if where is None:
        raise DistributedError("several ranks but no MASTER_ADDR: start the run with torchrun --nproc_per_node=N")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = where
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    os.environ.setdefault("RANK", str(ranks.rank))
    os.environ.setdefault("WORLD_SIZE", str(ranks.world))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=ranks.rank,
        world_size=ranks.world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
