"""How training crops reach the model: a seeded loader on the CPU, batches by index when the
crops fit on the GPU, and the batch size (with its learning rate) for the device."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from pipeline.config import TrainConfig


def loader(data: torch.Tensor, batch_size: int, generator: torch.Generator | None, device: torch.device,
            workers: int) -> DataLoader:
    """Whole batches by fancy indexing (no per-image collate); shuffled when a generator is given."""
    # The loader's own generator only seeds workers (which draw nothing): keeping its draws off the
    # global stream makes results independent of the worker count. Workers come from a forkserver:
    # forking the trainer itself (Prefect and MLflow threads, maybe CUDA) left workers dying on exit.
    return DataLoader(TensorDataset(data), sampler=batch_order(len(data), batch_size, generator), batch_size=None,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      multiprocessing_context="forkserver" if workers else None,
                      generator=torch.Generator())


def device_batch(tc: TrainConfig, n_train: int, device: torch.device) -> tuple[int, float]:
    """(batch size, learning rate) for the device. CPU: the configured pair. GPU: a batch as large
    as the set allows while an epoch keeps at least min_steps steps (so a small set trains exactly
    as on CPU), at most gpu_batch_size, with the LR scaled by sqrt(batch / batch_size) (Adam)."""
    if device.type != "cuda":
        return tc.batch_size, tc.lr
    batch = int(min(tc.gpu_batch_size, max(tc.batch_size, n_train // tc.min_steps)))
    return batch, tc.lr * math.sqrt(batch / tc.batch_size)


def batch_order(n: int, batch_size: int, generator: torch.Generator | None) -> BatchSampler:
    """Index batches over n crops: shuffled when a generator is given, in order otherwise."""
    order = RandomSampler(range(n), generator=generator) if generator is not None else SequentialSampler(range(n))
    return BatchSampler(order, batch_size, drop_last=False)


def resident_batches(data: torch.Tensor, batch_size: int, generator: torch.Generator | None) -> Iterator:
    """Batches of crops already on the GPU, by index (no loader, no host copies), in the order
    the loader would give."""
    for idx in batch_order(len(data), batch_size, generator):
        yield (data[torch.as_tensor(idx, device=data.device)],)


def fits_on(device: torch.device, *tensors: torch.Tensor) -> bool:
    """Crops stay on the GPU when they take under a quarter of its free memory."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    return device.type == "cuda" and size < torch.cuda.mem_get_info(device)[0] / 4
