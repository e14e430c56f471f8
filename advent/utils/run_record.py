"""Run records: what a train / esl / test run was, written next to its outputs.

A record holds the resolved config, the command line, the package's git revision (when the
package runs from a checkout), the torch / CUDA / cuDNN versions, the device, and the SHA-256
of every weight file the run loaded, so a number can be traced to exactly what produced it.
"""
import datetime
import itertools
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from advent import PROJECT_ROOT
from advent.utils.cuda_flags import cuda_flags
from advent.utils.serialization import json_dump


def git_revision(folder=PROJECT_ROOT):
    """(commit, dirty) of the checkout holding the package, or (None, None) outside one."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(device):
    """Versions, the device and the CUDA numerics in force (TF32, the cuDNN autotuner: they apply
    to CUDA kernels only), as plain values."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": name,
        "host": platform.node(),
        **cuda_flags(),
    }


def build_run_record(kind, config, device, weights=(), argv=None):
    """The record of a run of `kind` ('train', 'esl' or 'test'); `config` is the resolved config
    as plain data (advent.config.cfg_to_dict), `weights` are CheckpointInfo-like objects (path,
    sha256, layout) of every weight file loaded."""
    commit, dirty = git_revision()
    return {
        "kind": kind,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": [sys.executable] + list(sys.argv if argv is None else argv),
        "cwd": str(Path.cwd()),
        "git_revision": commit,
        "git_dirty": dirty,
        "environment": environment(device),
        "weights": [{"path": str(w.path), "sha256": w.sha256, "layout": w.layout} for w in weights],
        "config": config,
    }


def write_run_record(folder, record, writer=None):
    """Write `record` as run_{kind}_{time}.json in `folder`, or run_{kind}_{time}_{n}.json where
    that name is taken, also by a run writing at the same moment (atomic and exclusive: earlier
    records are kept; with `writer`, recorded in the folder's manifest as that script's)."""
    stamp = record["started"].replace(":", "").replace("-", "")[:15]
    for counter in itertools.count():
        path = Path(folder) / (f"run_{record['kind']}_{stamp}" + (f"_{counter}" if counter else "") + ".json")
        if path.exists():
            continue
        try:
            json_dump(record, path, writer, new=True)
            return path
        except FileExistsError:
            continue
