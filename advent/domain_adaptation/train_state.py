"""Training stage: snapshots, the resumable training state, and a data order that can be resumed.

A run's SNAPSHOT_DIR holds, after n completed iterations (names from snapshots.py):
  model_{n}.pth            the segmenter, a plain state dict (loads like the released models)
  model_{n}_D_{level}.pth  each discriminator (AdvEnt; level 'aux' only when multi-level)
  train_state_{n}.pth      everything an exact resume needs; only the newest is kept, older
                           ones are deleted once the new one is complete
  config.yml, run_train_*.json   the resolved configuration and a record of each start
Every file is written atomically, so a kill never leaves a truncated one, and the snapshots of
an iteration are written before its train state: every train state has its snapshots, and a
snapshot newer than the newest train state (a kill between the two) is written again, the same,
by the resumed run. A run killed while writing its FIRST train state leaves snapshots and no
train state: --resume then starts it again from iteration 0 (`check_restart`).

A train state is a dict (torch.save, loadable with weights_only=True):
  format 'advent-train-state-1'; iteration (completed); model (state dict); optimizer (the
  segmenter's SGD, momentum buffers included); d_{level} and optimizer_d_{level} (AdvEnt:
  each discriminator and its Adam); scaler (GradScaler state with TRAIN.AMP 'fp16', else {});
  rng (python, numpy, torch and CUDA generator states); data ({'source' / 'target': seed,
  num_samples, position} of each loader's order); config (the resolved config, which a
  resume must match, RESUME_MAY_CHANGE aside); world_size (the number of processes, which a
  resume must match; absent means 1). `load_checkpoint(model, path)` reads its model.

Exact resume: each loader draws its order from `ResumableSampler`, one permutation of the
dataset fixed by a seed (the dataset's list repeated to cover TRAIN.MAX_ITERS iterations,
whatever TRAIN.EARLY_STOP says); the state records that seed and the number of samples consumed
(by all processes together under torchrun), and a resumed sampler recomputes the permutation
and starts after them (the skipped images are never loaded). Under torchrun only the main
process writes these files, and every process resumes from the same train state.
"""
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Sampler

from advent.domain_adaptation.config import cfg_to_dict, flat_items
from advent.domain_adaptation.snapshots import (
    discriminator_snapshot_path, model_snapshot_path, torch_save_atomic, train_state_iterations,
    train_state_path,
)
from advent.model.weights import CheckpointInfo, file_sha256, read_checkpoint
from advent.utils.errors import UserError
from advent.utils.serialization import yaml_load

log = logging.getLogger(__name__)

FORMAT = "advent-train-state-1"
COMMON_KEYS = ("format", "iteration", "model", "optimizer", "scaler", "rng", "data", "config")
_RUN_FILE = re.compile(r"^(model_\d+(_D_(aux|main))?|train_state_\d+)\.pth$")
# Keys a resumed run may change: where things are, how they are shown, how the same computation
# is laid out in memory (CHANNELS_LAST), what only the start of a run reads, and where it stops
# (EARLY_STOP: the data order and the learning rates depend on MAX_ITERS only, so a run extended
# by a larger EARLY_STOP continues exactly as one started with it). Any other TRAIN or top-level
# value must be the one the run started with.
# (Moved files are fine: the class count is compared, and each dataset's length is checked.)
RESUME_MAY_CHANGE = {
    "NUM_WORKERS", "GPU_ID", "CHANNELS_LAST", "EXP_NAME", "EXP_ROOT", "EXP_ROOT_SNAPSHOT", "EXP_ROOT_LOGS",
    "DATA_DIRECTORY_SOURCE", "DATA_DIRECTORY_TARGET", "DATA_LIST_SOURCE", "DATA_LIST_TARGET",
    "PSEUDO_LABEL_DIRECTORY_TARGET", "TRAIN.INFO_SOURCE", "TRAIN.INFO_TARGET",
    "TRAIN.RESTORE_FROM", "TRAIN.SNAPSHOT_DIR", "TRAIN.TENSORBOARD_LOGDIR",
    "TRAIN.TENSORBOARD_VIZRATE", "TRAIN.SAVE_PRED_EVERY", "TRAIN.EARLY_STOP",
}


class ResumableSampler(Sampler):
    """The indices 0..num_samples-1 in one permutation drawn from `seed`, from position `start` on.

    With several processes (torchrun), process `rank` of `world_size` takes every world_size-th
    element from start + rank on: together they consume the permutation in order, world_size
    samples per step, and `start` counts the samples consumed by all of them."""

    def __init__(self, num_samples, seed, start=0, rank=0, world_size=1):
        assert 0 <= start <= num_samples and 0 <= rank < world_size, (start, num_samples, rank, world_size)
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size = rank, world_size

    def permutation(self):
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self):
        return iter(self.permutation()[self.start + self.rank::self.world_size].tolist())

    def __len__(self):
        return len(range(self.start + self.rank, self.num_samples, self.world_size))


def data_stream(seed, num_samples, position=0):
    """What the train state records of one loader: its order's seed, length and position."""
    return {"seed": int(seed), "num_samples": int(num_samples), "position": int(position)}


# --- fresh runs and resumes ---

def run_files(snapshot_dir):
    """The snapshots and train states in `snapshot_dir`, sorted by name."""
    folder = Path(snapshot_dir)
    return sorted(p.name for p in folder.iterdir() if _RUN_FILE.match(p.name)) if folder.is_dir() else []


def check_fresh_snapshot_dir(snapshot_dir):
    """Refuse to start a new run in a folder that holds snapshots or a train state of another."""
    found = run_files(snapshot_dir)
    if not found:
        return
    folder, files = Path(snapshot_dir), f"{found[0]}, {len(found)} files"
    if train_state_iterations(folder):
        raise UserError(f"{folder} already holds a training run ({files}); pass --resume to continue it, "
                        f"or change EXP_NAME / --exp-suffix for a new run")
    raise UserError(f"{folder} already holds a training run stopped before its first train state was "
                    f"complete ({files}); pass --resume to restart it from iteration 0 (its snapshots are "
                    f"replaced as it goes), or delete the model_*.pth files there, or change EXP_NAME / "
                    f"--exp-suffix for a new run")


def check_restart(snapshot_dir, cfg):
    """--resume in a folder without a train state. When it holds this project's files of a run
    (snapshots, config.yml) that was stopped before its first train state was complete, the run
    starts again from iteration 0 with the config it was started with (its config.yml, when
    there), replacing the snapshots as it goes; otherwise a UserError (nothing to resume)."""
    found = run_files(snapshot_dir)
    config = Path(snapshot_dir) / "config.yml"
    if not found and not config.is_file():
        raise UserError(f"--resume: no train_state_*.pth in {snapshot_dir}; nothing to resume "
                        f"(run without --resume to start a new run)")
    if config.is_file():
        check_resume_config(read_config(config), cfg, config)
    replacing = f", replacing its {len(found)} snapshot file(s) ({found[0]}, ...) as it goes" if found else ""
    log.info("--resume: no complete train state in %s (the run was stopped before its first one was "
             "written); starting again from iteration 0%s", snapshot_dir, replacing)


def read_config(path):
    """A run's saved config.yml as a plain dict; a UserError when it cannot be read."""
    try:
        config = yaml_load(path)
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a config (a YAML mapping)")
    return config


def latest_train_state(snapshot_dir):
    """The newest train_state_{n}.pth in `snapshot_dir`; None when there is none."""
    iterations = train_state_iterations(snapshot_dir)
    return train_state_path(snapshot_dir, iterations[-1]) if iterations else None


def load_train_state(path):
    """(state dict, CheckpointInfo) of a train state file, checked for the keys it must hold."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a train state of this project (format {FORMAT})")
    missing = [key for key in COMMON_KEYS if key not in state]
    if missing:
        raise UserError(f"{path}: train state lacks {', '.join(missing)}")
    return state, CheckpointInfo(str(path), file_sha256(path), "training_state")


def check_resume_config(saved, cfg, path):
    """The config of a resumed run must train as the saved one did (RESUME_MAY_CHANGE aside)."""
    current = dict(flat_items(cfg_to_dict(cfg)))
    for key, value in flat_items(saved):
        if key.split(".")[0] in ("TEST", "ESL") or key in RESUME_MAY_CHANGE or key not in current:
            continue
        if current[key] != value:
            raise UserError(f"--resume: {key} was {value!r} when the run started ({path}) and is "
                            f"{current[key]!r} now; resume with the run's config "
                            f"({Path(path).parent / 'config.yml'})")
    if bool(saved.get("PSEUDO_LABEL_DIRECTORY_TARGET")) != bool(cfg.PSEUDO_LABEL_DIRECTORY_TARGET):
        raise UserError(f"--resume: PSEUDO_LABEL_DIRECTORY_TARGET was "
                        f"{saved.get('PSEUDO_LABEL_DIRECTORY_TARGET')!r} when the run started ({path}) "
                        f"and is {cfg.PSEUDO_LABEL_DIRECTORY_TARGET!r} now")


def check_world_size(state, world_size, path):
    """A resumed run must use as many processes as it started with: the data order, the
    position in it and the effective batch depend on it."""
    started = state.get("world_size", 1)  # train states from before torchrun support: one process
    if started == world_size:
        return
    how = f"torchrun --nproc_per_node={started}" if started > 1 else "one process (without torchrun)"
    raise UserError(f"--resume: the run was trained by {started} process(es) and this is {world_size} "
                    f"({path}); resume it with {how}")


def check_stream(name, stream, num_samples, path):
    """A resumed loader must see a dataset of the length the run started with (its list repeated
    to cover TRAIN.MAX_ITERS iterations)."""
    if stream["num_samples"] != num_samples:
        raise UserError(f"--resume: the {name} dataset, repeated for TRAIN.MAX_ITERS iterations, has "
                        f"{num_samples} samples but had {stream['num_samples']} when the run started "
                        f"({path}); the data list changed")


# --- random number generators ---

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
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# --- what is trained, as one saveable state ---

@dataclass
class TrainingSetup:
    """The networks and optimisers one iteration updates (discriminators: AdvEnt only)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    discriminators: dict = field(default_factory=dict)  # level ('aux' / 'main') -> network
    optimizers_d: dict = field(default_factory=dict)  # level -> its Adam
    scaler: object = None  # torch.amp.GradScaler with TRAIN.AMP 'fp16', else None
    # Under torchrun: the DistributedDataParallel wrappers that average the gradients over the
    # processes (of the model, and of each discriminator by level); the plain modules above stay
    # what the optimisers hold and what is saved.
    ddp_model: object = None
    ddp_discriminators: dict = field(default_factory=dict)

    def optimizers(self):
        return [self.optimizer, *self.optimizers_d.values()]

    def segmenter(self):
        """The module to train the segmenter through: its DDP wrapper under torchrun."""
        return self.ddp_model if self.ddp_model is not None else self.model

    def trained_discriminators(self):
        """{level: the module to train each discriminator through} (DDP wrappers under torchrun)."""
        return {level: self.ddp_discriminators.get(level, d) for level, d in self.discriminators.items()}


def train_state(setup, n_iter, streams, cfg):
    """The resumable state after `n_iter` completed iterations (see the module docstring)."""
    state = {
        "format": FORMAT,
        "iteration": n_iter,
        "model": cpu_state_dict(setup.model),
        "optimizer": setup.optimizer.state_dict(),
        "scaler": setup.scaler.state_dict() if setup.scaler is not None else {},
        "rng": rng_state(),
        # every process takes batch_size samples per iteration (ResumableSampler)
        "data": {name: data_stream(s["seed"], s["num_samples"], n_iter * s["batch_size"] * s["world_size"])
                 for name, s in streams.items()},
        "config": cfg_to_dict(cfg),
        "world_size": next(iter(streams.values()))["world_size"],
    }
    for level, discriminator in setup.discriminators.items():
        state[f"d_{level}"] = cpu_state_dict(discriminator)
        state[f"optimizer_d_{level}"] = setup.optimizers_d[level].state_dict()
    return state


def restore_train_state(setup, state, path):
    """Load networks, optimisers and scaler from a train state (strictly)."""
    missing = [key for level in setup.discriminators for key in (f"d_{level}", f"optimizer_d_{level}")
               if key not in state]
    if missing:
        raise UserError(f"{path}: train state lacks {', '.join(missing)}")
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    for level, discriminator in setup.discriminators.items():
        discriminator.load_state_dict(state[f"d_{level}"])
        setup.optimizers_d[level].load_state_dict(state[f"optimizer_d_{level}"])
    if setup.scaler is not None and state["scaler"]:
        setup.scaler.load_state_dict(state["scaler"])


# --- writing ---

def cpu_state_dict(module):
    """The state dict on the CPU, in the default memory format (also with CHANNELS_LAST)."""
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}


def save_snapshot(snapshot_dir, n_iter, model, discriminators):
    """model_{n}.pth and model_{n}_D_{level}.pth: plain state dicts, on the CPU."""
    torch_save_atomic(cpu_state_dict(model), model_snapshot_path(snapshot_dir, n_iter))
    for level, discriminator in discriminators.items():
        torch_save_atomic(cpu_state_dict(discriminator),
                          discriminator_snapshot_path(snapshot_dir, n_iter, level))
    log.info("saved snapshot %s", model_snapshot_path(snapshot_dir, n_iter))


def save_train_state(snapshot_dir, n_iter, state):
    """Write train_state_{n}.pth, then delete the older train states; return its path."""
    assert all(key in state for key in COMMON_KEYS), sorted(set(COMMON_KEYS) - set(state))
    path = train_state_path(snapshot_dir, n_iter)
    torch_save_atomic(state, path)
    for older in train_state_iterations(snapshot_dir):
        if older < n_iter:
            train_state_path(snapshot_dir, older).unlink(missing_ok=True)
    return path
