"""Training stage: the data, and the randomness a resumed run must continue exactly. Datasets long
enough for TRAIN.MAX_ITERS iterations, loaders that take them in an order fixed by a seed
(`ResumableSampler`), and the random generators' states; the train state records each order's
seed and position and the generator states (checkpoint.py).
"""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from advent.dataset import get_source_dataset, get_target_dataset
from advent.model.inference import to_model
from advent.utils.distributed import get_rank, get_world_size


def training_datasets(cfg):
    """{'source': ..., 'target': ...} (target only when used), each long enough for TRAIN.MAX_ITERS
    iterations of every process: the data order does not depend on EARLY_STOP, so a run extended
    by a larger EARLY_STOP (--resume) sees the order a run started with it sees (as the original,
    whose lists covered MAX_ITERS). At the defaults, a list of 250,000 x batch names per process."""
    samples = cfg.TRAIN.MAX_ITERS * get_world_size()
    datasets = {"source": get_source_dataset(cfg, max_iters=samples * cfg.TRAIN.BATCH_SIZE_SOURCE)}
    if cfg.TRAIN.DA_METHOD != "SourceOnly" or cfg.PSEUDO_LABEL_DIRECTORY_TARGET:
        datasets["target"] = get_target_dataset(cfg, "train", max_iters=samples * cfg.TRAIN.BATCH_SIZE_TARGET)
    return datasets


class ResumableSampler(Sampler):
    """The indices 0..num_samples-1 in one permutation drawn from `seed`, from position `start` on.
    Process `rank` of `world_size` (torchrun) takes every world_size-th element from start + rank
    on: together they consume the permutation in order, and `start` counts all their samples."""

    def __init__(self, num_samples, seed, start=0, rank=0, world_size=1):
        assert 0 <= start <= num_samples and 0 <= rank < world_size, (start, num_samples, rank, world_size)
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed))
        return iter(order[self.start + self.rank::self.world_size].tolist())

    def __len__(self):
        return len(range(self.start + self.rank, self.num_samples, self.world_size))


def seed_worker(worker_id):
    """Loader workers: NumPy and Python generators from the worker's torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, stream, num_workers, device):
    """A loader in the stream's order (seed, num_samples, position, batch_size) from
    its position on, this process's share of it under torchrun; its own generator leaves the
    global RNG alone. Pinned memory on CUDA, so the copies to the GPU overlap the computation."""
    sampler = ResumableSampler(stream["num_samples"], stream["seed"], stream["position"], get_rank(),
                               get_world_size())
    return DataLoader(dataset, batch_size=stream["batch_size"], sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(stream["seed"]))


def batches(loader, device, channels_last=False):
    """(images, labels) on `device`; the images in the NHWC memory format with `channels_last`."""
    for images, labels, _, _ in loader:
        yield to_model(images, device, channels_last), labels.to(device, non_blocking=True)


def rng_state():
    """Python, NumPy, torch (and CUDA) generator states, as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants tuples where a round trip may have left lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
