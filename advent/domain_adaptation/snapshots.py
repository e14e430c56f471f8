"""Snapshot file names, shared by the trainer (which writes them) and the tester (which reads them).

A snapshot is named by the number of completed iterations: model_2000.pth is the
model after 2,000 iterations. (ADVENT named them by 0-based iteration and the ESL
fork by i % 2000 == 1999, which its own tester never found.)
"""
import re
from pathlib import Path

import torch

from advent.utils.serialization import atomic_path

_TRAIN_STATE = re.compile(r"^train_state_(\d+)\.pth$")


def model_snapshot_path(snapshot_dir, n_iter):
    return Path(snapshot_dir) / f"model_{n_iter}.pth"


def discriminator_snapshot_path(snapshot_dir, n_iter, level):
    """`level` is 'aux' or 'main'."""
    return Path(snapshot_dir) / f"model_{n_iter}_D_{level}.pth"


def train_state_path(snapshot_dir, n_iter):
    """The resumable training state (optimisers, RNG, data position) after `n_iter` iterations."""
    return Path(snapshot_dir) / f"train_state_{n_iter}.pth"


def train_state_iterations(snapshot_dir):
    """Iteration counts of the training states in `snapshot_dir`, ascending."""
    folder = Path(snapshot_dir)
    if not folder.is_dir():
        return []
    found = (_TRAIN_STATE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def expected_snapshots(step, max_iter):
    """Iteration counts the 'best' tester evaluates: step, 2*step, ... up to and including max_iter."""
    return list(range(step, max_iter + 1, step))


def torch_save_atomic(obj, path):
    """torch.save through a temporary file + fsync + rename: a kill never leaves a truncated file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
