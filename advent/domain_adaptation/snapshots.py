"""Snapshot file names, shared by the trainer (which writes them) and the tester (which reads them).

A snapshot is named by the number of completed iterations: model_2000.pth is the
model after 2,000 iterations. (ADVENT named them by 0-based iteration and the ESL
fork by i % 2000 == 1999, which its own tester never found.)
"""
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
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
    """torch.save through a temporary file + fsync + rename: a kill never leaves a truncated file.
    A write that fails raises the OSError behind it, naming `path` (`writing`)."""
    with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextmanager
def writing(path):
    """For a block that writes `path`: a failure of the file system (a full disk, a quota) raises
    the OSError behind it, naming `path`. (torch.save reports a failed write as a RuntimeError,
    'unexpected pos' or 'PytorchStreamWriter failed writing file', with the OSError only as its
    context; a failed write or flush of an open file names no file.)"""
    try:
        yield
    except (OSError, RuntimeError) as error:
        cause = os_error_behind(error)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from error


def os_error_behind(error):
    """The OSError (with an errno) `error` is or was raised while handling; None when there is none."""
    while error is not None and not (isinstance(error, OSError) and error.errno):
        error = error.__cause__ or error.__context__
    return error


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
