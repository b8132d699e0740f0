"""Training under `torchrun`: the process group, each rank's share of a batch, and who writes.

`torchrun --nproc_per_node N -m tagger train ...` starts N copies of the trainer with RANK,
WORLD_SIZE and LOCAL_RANK set. Stage 1 then runs data-parallel: every rank draws the same batch
order and augmentation (train.stages.epoch_rng), takes its contiguous slice of each global batch,
and DistributedDataParallel averages the gradients, so the run follows the one-process schedule
(same global batch, same number of steps). Rank 0 alone builds the pixel cache, writes checkpoints,
logs and shows progress. Stage 2 (prompt tuning on cached features, seconds to minutes) and the
calibration run on rank 0 alone while the others wait; then every rank takes its share of the refit's
stage 1 (the picked recipe trained again on every labelled photo, train.trainer.refit) as it did of the
first, and rank 0 finishes alone.

Without WORLD_SIZE (a plain `tagger train`) nothing here starts a process group or wraps a module:
`Single` answers every question the way one process would.
"""
from __future__ import annotations

import datetime as _dt
import inspect
import os
from typing import Callable

import numpy as np
import torch

from train.config import Log, TrainError

# Ranks wait on rank 0 while it decodes the whole photo collection into the cache (and, in stage 1,
# while it writes checkpoints): the backends' default timeouts (10 min NCCL) are too short for that.
BARRIER_TIMEOUT = _dt.timedelta(hours=6)


class Single:
    """One process: rank 0 of 1; no collectives."""

    rank, world_size, is_main = 0, 1, True

    def device(self, device: torch.device) -> torch.device:
        return device

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, int]:
        """(this rank's indices of a global batch, their offset in it)."""
        return batch, 0

    def wrap(self, model: torch.nn.Module, loss: Callable) -> Callable:
        """`loss` (the stage's loss terms of a batch) as the callable a training step runs."""
        return loss

    def sum(self, value: float) -> float:
        """`value` summed over the ranks."""
        return value

    def loss_weight(self, local: int, total: int) -> float:
        return local * self.world_size / total

    def barrier(self) -> None:
        pass

    def share(self, value):
        """Rank 0's `value` on every rank."""
        return value

    def check_batches(self, batch_size: int, n_train: int) -> None:
        pass

    def close(self) -> None:
        pass


class Ranks(Single):
    """One of WORLD_SIZE processes started by torchrun (NCCL on CUDA, gloo on the CPU)."""

    def __init__(self, rank: int, world_size: int, local_rank: int):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.is_main = rank == 0
        self.backend: str | None = None
        self.on = torch.device("cpu")  # where collectives' tensors live (NCCL: the rank's GPU)

    def device(self, device: torch.device) -> torch.device:
        """Start the process group on the backend that fits `device`; each rank takes its own GPU."""
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise TrainError(None, f"torchrun started local rank {self.local_rank} but PyTorch sees "
                                       f"{torch.cuda.device_count()} GPUs: use --nproc_per_node <= the GPUs")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.on = device
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(self.backend, timeout=BARRIER_TIMEOUT,
                                                 **({"device_id": device} if device.type == "cuda" else {}))
        return device

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, int]:
        # Contiguous, near-equal slices (sizes differ by at most one): the rows every rank's
        # augmentation draws line up with are the global batch's.
        bounds = np.linspace(0, len(batch), self.world_size + 1).round().astype(int)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        return batch[lo:hi], int(lo)

    def wrap(self, model: torch.nn.Module, loss: Callable) -> Callable:
        """The model in DistributedDataParallel, its forward being `loss`: DDP syncs every parameter
        the stage trains (the student, and γ, the tag bias and a q2l head beside it), not only the
        tower's."""
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (class bias, text features) are the same on every rank and never change in stage 1:
        # no need to send them before every step (newer PyTorch names the switch forward_sync_buffers).
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(_LossModule(model, loss), **no_sync)

    def sum(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.on)
        torch.distributed.all_reduce(tensor)
        return float(tensor[0])

    def loss_weight(self, local: int, total: int) -> float:
        """DDP averages gradients over ranks; weighting each rank's batch-mean loss by
        local·world/total makes that average the gradient of the mean over the whole global batch,
        also when its slices differ by a photo."""
        return local * self.world_size / total

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def share(self, value):
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def check_batches(self, batch_size: int, n_train: int) -> None:
        if min(batch_size, n_train) < self.world_size:
            raise TrainError(None, f"batch of {min(batch_size, n_train)} photos cannot be shared by "
                                   f"{self.world_size} processes: raise --batch-size or use fewer processes")

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _LossModule(torch.nn.Module):
    """A model whose forward is a loss function over it: what DDP wraps and hooks."""

    def __init__(self, model: torch.nn.Module, loss: Callable):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *args, **kwargs):
        return self.loss(*args, **kwargs)


def from_environment() -> Single:
    """Ranks when torchrun (or another launcher) set WORLD_SIZE > 1, else Single."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Single()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def alone(dist: Single) -> bool:
    """End the data-parallel part: every rank meets, the group closes, and True on rank 0 (which
    goes on alone), False on the others (they are done)."""
    dist.barrier()
    dist.close()
    return dist.is_main


def quiet(dist: Single, log: Log, progress: bool) -> tuple[Log, bool]:
    """Rank 0 keeps the log and progress bars; the others print nothing."""
    if dist.is_main:
        return log, progress
    return (lambda _line: None), False


def prepare_once(dist: Single, prepare: Callable[[dict | None], object], saved: dict | None):
    """Rank 0 collects the labels and decodes the pixel cache; the others wait, then open the same
    memmap through the saved-dataset path (`prepare(dataset)` decodes nothing when the cache is
    there), so every rank holds the same rows and split."""
    if dist.world_size == 1:
        return prepare(saved)
    data, error = None, None
    if dist.is_main:
        try:
            data = prepare(saved)
        except Exception as exc:  # noqa: BLE001 - the others must not wait for a cache that never comes
            error = exc
    failure, dataset = dist.share((None if error is None else str(error), None if data is None else data.dataset))
    if error is not None:
        raise error
    if failure is not None:
        raise TrainError(None, f"rank 0 could not prepare the data: {failure}")
    return data if dist.is_main else prepare(dataset)
