"""Snapshot file names, shared by the trainer (which writes them) and the tester (which reads them).

A snapshot is named by the number of completed iterations: model_2000.pth is the
model after 2,000 iterations. (ADVENT named them by 0-based iteration and the ESL
fork by i % 2000 == 1999, which its own tester never found.)
"""
import logging
import re
import time
from pathlib import Path

import torch

from advent.utils.errors import UserError
from advent.utils.serialization import atomic_path

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0  # how often a waiting tester or ESL run looks for the file

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


def wait_for_file(path, timeout, section):
    """Return once `path` exists, saying once that we wait; a UserError after `timeout` seconds.

    `section` ('TEST' or 'ESL') names the WAIT_MODEL / WAIT_TIMEOUT keys in the messages. Only
    the final name is looked at: the trainer writes a temporary file and renames it, so an
    existing snapshot is complete.
    """
    path = Path(path)
    if path.exists():
        return
    log.info("waiting for %s in %s ... (%s.WAIT_MODEL; giving up after %s s, %s.WAIT_TIMEOUT)",
             path.name, path.parent, section, timeout, section)
    deadline = time.monotonic() + timeout
    while not path.exists():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UserError(f"gave up waiting for {path} after {timeout} s ({section}.WAIT_TIMEOUT)")
        time.sleep(min(POLL_SECONDS, remaining))
