"""Training stage: checkpoints. A run's folder (TRAIN.SNAPSHOT_DIR): how a run starts or resumes
in it and what it saves there (`Checkpointer`), and the file names the tester and ESL read.

After n completed iterations (ADVENT named snapshots by 0-based iteration, the ESL fork by
i % 2000 == 1999, which its own tester never found) the folder holds:
  model_{n}.pth            the segmenter, a plain state dict (loads like the released models)
  model_{n}_D_{level}.pth  each discriminator (AdvEnt; level 'aux' only when multi-level)
  train_state_{n}.pth      everything an exact resume needs; only the newest is kept
  config.yml, run_train_*.json   the resolved config and a record of each start
Every file is written atomically, the snapshots of an iteration before its train state: a kill
never leaves a truncated file, every train state has its snapshots, and a snapshot newer than the
newest train state is written again, the same, by the resumed run. A file-system fault (a full
disk) stops the run with one line; the files written before stay intact. Under torchrun only the
main process writes, and every process resumes from the same train state.

A train state (torch.save, loadable with weights_only=True; `load_checkpoint` reads its model):
format FORMAT; iteration (completed); model; optimizer (the segmenter's SGD, momentum buffers
included); d_{level} and optimizer_d_{level} (AdvEnt: each discriminator and its Adam); scaler
(the GradScaler's state with TRAIN.AMP 'fp16', else {}); rng (python, numpy, torch, CUDA); data
(each loader's order, train_data.ResumableSampler: {'source' / 'target': seed, num_samples,
position}, the samples all processes consumed); config (the resolved config, which a resume must
match, RESUME_MAY_CHANGE aside); world_size (which a resume must match; absent means 1).
"""
import logging
import os
import re
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
import yaml

from advent.config import cfg_to_dict, flat_items
from advent.domain_adaptation.esl_UDA import REPORT_NAME as ESL_REPORT
from advent.domain_adaptation.train_data import rng_state, set_rng_state
from advent.model import load_checkpoint
from advent.model.weights import CheckpointInfo, read_checkpoint
from advent.utils.distributed import get_world_size, is_main_process
from advent.utils.errors import UserError, file_system_fault
from advent.utils.func import file_sha256
from advent.utils.output_dir import (
    atomic_path, check_creatable, check_folder, check_owner, exclusive_lock, prepare_folder, record_new_entries,
    remove_own, tree_entries,
)
from advent.utils.run_record import build_run_record, write_run_record
from advent.utils.serialization import yaml_dump, yaml_load

log = logging.getLogger(__name__)

WRITER = "train.py"
SNAPSHOT_KEY = "TRAIN.SNAPSHOT_DIR"
SNAPSHOTS = f"the snapshots ({SNAPSHOT_KEY})"  # what the folder messages say is written
EVENTS = "the TensorBoard events (TRAIN.TENSORBOARD_LOGDIR)"
POLL_SECONDS = 10.0  # how often a waiting tester or ESL run looks for a snapshot
FORMAT = "advent-train-state-1"
COMMON_KEYS = ("format", "iteration", "model", "optimizer", "scaler", "rng", "data", "config")
_TRAIN_STATE = re.compile(r"^train_state_(\d+)\.pth$")
_RUN_FILE = re.compile(r"^(model_\d+(_D_(aux|main))?|train_state_\d+)\.pth$")
_SNAPSHOT = re.compile(r"^model_(\d+)(_D_(aux|main))?\.pth$")
# Keys a resumed run may change: where things are (moved files are fine: the class count is
# compared and each dataset's length checked), how they are shown, the memory layout of the same
# computation (CHANNELS_LAST), what only the start of a run reads, and where it stops (EARLY_STOP:
# the data order and the learning rates depend on MAX_ITERS only, so a run extended by a larger
# EARLY_STOP continues exactly as one started with it). Any other TRAIN or top-level value must not.
RESUME_MAY_CHANGE = {
    "NUM_WORKERS", "GPU_ID", "CHANNELS_LAST", "EXP_NAME", "EXP_ROOT", "EXP_ROOT_SNAPSHOT", "EXP_ROOT_LOGS",
    "DATA_DIRECTORY_SOURCE", "DATA_DIRECTORY_TARGET", "DATA_LIST_SOURCE", "DATA_LIST_TARGET",
    "PSEUDO_LABEL_DIRECTORY_TARGET", "TRAIN.INFO_SOURCE", "TRAIN.INFO_TARGET",
    "TRAIN.RESTORE_FROM", "TRAIN.SNAPSHOT_DIR", "TRAIN.TENSORBOARD_LOGDIR",
    "TRAIN.TENSORBOARD_VIZRATE", "TRAIN.SAVE_PRED_EVERY", "TRAIN.EARLY_STOP",
    "CUDNN_BENCHMARK",  # only chooses among kernels of the same computation, as CHANNELS_LAST does
    "TRAIN.CUDA_GRAPH",  # launches the same kernels another way
}


def total_iterations(cfg):
    return min(cfg.TRAIN.EARLY_STOP, cfg.TRAIN.MAX_ITERS)


def last_iteration(train):
    """total_iterations of a TRAIN mapping (a config.yml's, or a config's section)."""
    return min(int(train["EARLY_STOP"]), int(train["MAX_ITERS"]))


# --- file names ---

def model_snapshot_path(snapshot_dir, n_iter):
    return Path(snapshot_dir) / f"model_{n_iter}.pth"


def discriminator_snapshot_path(snapshot_dir, n_iter, level):
    return Path(snapshot_dir) / f"model_{n_iter}_D_{level}.pth"


def train_state_path(snapshot_dir, n_iter):
    return Path(snapshot_dir) / f"train_state_{n_iter}.pth"


def train_state_iterations(snapshot_dir):
    """Iteration counts of the train states in `snapshot_dir`, ascending."""
    folder = Path(snapshot_dir)
    found = (_TRAIN_STATE.match(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def run_files(snapshot_dir):
    """The snapshots and train states in `snapshot_dir`, sorted by name."""
    folder = Path(snapshot_dir)
    return sorted(p.name for p in folder.iterdir() if _RUN_FILE.match(p.name)) if folder.is_dir() else []


def expected_snapshots(step, max_iter):
    """Iteration counts the 'best' tester evaluates: step, 2*step, ... up to and including max_iter."""
    return list(range(step, max_iter + 1, step))


def wait_for_file(path, timeout, section, never=lambda: None):
    """Return once `path` (a file or a folder) exists, saying once that we wait; a UserError after
    `timeout` seconds, or as soon as `never()` says why it will not come (a message; None while it
    may). `section` ('TEST' or 'ESL') names the WAIT_MODEL / WAIT_TIMEOUT keys in the messages.
    An existing snapshot is complete: the trainer renames a finished temporary file into place."""
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
        reason = never()
        if reason is not None and not path.exists():
            raise UserError(reason)
        time.sleep(min(POLL_SECONDS, remaining))


def saved_train(snapshot_dir):
    """The TRAIN section of the run's config.yml in `snapshot_dir`, or None where there is none
    readable with integer SAVE_PRED_EVERY, EARLY_STOP and MAX_ITERS."""
    try:
        train = yaml_load(Path(snapshot_dir) / "config.yml")["TRAIN"]
        for key in ("SAVE_PRED_EVERY", "EARLY_STOP", "MAX_ITERS"):
            int(train[key])
        return train
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def finished_without(snapshot_dir, n_iter):
    """Why model_<n_iter>.pth will never appear in `snapshot_dir`, or None: the training run there
    has finished (its last snapshot, by its config.yml, exists; snapshots are written in order)
    without it, so the run's snapshot step or length does not give that iteration."""
    folder, train = Path(snapshot_dir), saved_train(snapshot_dir)
    if train is None:
        return None  # no run there yet, or not one of ours: it may still come
    step, last = int(train["SAVE_PRED_EVERY"]), last_iteration(train)
    if not model_snapshot_path(folder, last).exists() or model_snapshot_path(folder, n_iter).exists():
        return None
    return (f"model_{n_iter}.pth will not come: the training run in {folder} finished at iteration {last}, "
            f"with a snapshot every {step} (TRAIN.SAVE_PRED_EVERY) and at its end; set TEST.SNAPSHOT_STEP and "
            f"TEST.SNAPSHOT_MAXITER to the snapshots it wrote")


# --- writing ---

def torch_save_atomic(obj, path):
    """torch.save through a temporary file + fsync + rename (atomic_path, recorded as train.py's
    in the folder's manifest); a failed write raises the OSError behind it, naming `path`."""
    with atomic_path(path, WRITER) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def cpu_state_dict(module):
    """The state dict on the CPU, in the default memory format (also with CHANNELS_LAST)."""
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}


def save_train_state(snapshot_dir, n_iter, state):
    """Write train_state_{n}.pth, then delete the older train states (train.py's own); return its path."""
    path = train_state_path(snapshot_dir, n_iter)
    torch_save_atomic(state, path)
    for older in train_state_iterations(snapshot_dir):
        if older < n_iter:
            remove_own(train_state_path(snapshot_dir, older), WRITER)
    return path


# --- the data orders ---

def data_stream(seed, num_samples, position=0):
    """What the train state records of one loader: its order's seed, length and position."""
    return {"seed": int(seed), "num_samples": int(num_samples), "position": int(position)}


# --- the pseudo-labels trained on ---

def reading_pseudo_labels(cfg):
    """While the run trains on pseudo-labels (main process): a reader's lock of their folder, so
    that esl.py does not replace them meanwhile (it stops with one line naming this run, and this
    run does not start while esl.py writes them); none where the folder's parent cannot be written,
    where no esl.py can replace them either (released labels on a read-only disk)."""
    folder = cfg.PSEUDO_LABEL_DIRECTORY_TARGET
    if not folder or not os.access(Path(folder).resolve().parent, os.W_OK | os.X_OK):
        return nullcontext()
    return exclusive_lock(folder, WRITER, shared=True)


def pseudo_label_version(cfg):
    """The SHA-256 of the pseudo-labels' esl_report.json (esl.py writes a new one with every set:
    its thresholds and counts), or None: no pseudo-labels, or a set not written by esl.py."""
    folder = cfg.PSEUDO_LABEL_DIRECTORY_TARGET
    report = Path(folder) / ESL_REPORT if folder else None
    return file_sha256(report) if report is not None and report.is_file() else None


# --- checks before a run starts or resumes ---

def snapshot_iterations(names):
    """The iterations of the segmenter snapshots (model_<k>.pth) among the file `names`, ascending."""
    return sorted({int(m.group(1)) for m in map(_SNAPSHOT.match, names) if m})


def train_state_gone(folder, iterations):
    """The start of the refusal for snapshots of several `iterations` without a train state (one
    was written with the first of them, so it has been removed since)."""
    return (f"{folder} holds snapshots of {len(iterations)} iterations (model_{iterations[0]}.pth to "
            f"model_{iterations[-1]}.pth) but no train state")


def lone_snapshot_kept(folder, iteration, train):
    """(why, way out) the snapshots of one `iteration` in `folder`, without a train state, must
    not be replaced by a restart from iteration 0, or None. Only a run killed while writing its
    first train state (which follows its first snapshot) may restart: a later snapshot had a train
    state before it, removed since, and the run's final one is complete (the run finished and its
    train state was removed, or it was killed while writing it). `train`: the TRAIN section of the
    run that wrote them (its config.yml, else this config)."""
    last = last_iteration(train)
    first = min(int(train["SAVE_PRED_EVERY"]), last)
    if iteration == first < last:
        return None
    if iteration >= last:
        return (f"{folder} holds model_{iteration}.pth, the final snapshot of its run, but no train state (the "
                f"run finished and it was removed since, or the run was killed while writing it)",
                f"the snapshot is complete: use it as it is, delete the model_{iteration}*.pth files there to "
                f"train the run again, or change EXP_NAME / --exp-suffix for a new run")
    return (f"{folder} holds model_{iteration}.pth, a snapshot written after the run's first train state "
            f"(with model_{first}.pth), but no train state", None)


def snapshots_kept(folder, iterations, cfg):
    """(why, way out or None for 'put the train state back') the snapshots of `iterations` in
    `folder`, without a train state, must not be replaced by a restart from iteration 0, or None."""
    if len(iterations) > 1:
        return train_state_gone(folder, iterations), None
    return iterations and lone_snapshot_kept(folder, iterations[0], saved_train(folder) or cfg.TRAIN)


def check_fresh_snapshot_dir(snapshot_dir, cfg):
    """Refuse to start a new run in a folder that holds snapshots or a train state of another."""
    found = run_files(snapshot_dir)
    if not found:
        return
    folder, files = Path(snapshot_dir), f"{found[0]}, {len(found)} files"
    if train_state_iterations(folder):
        raise UserError(f"{folder} already holds a training run ({files}); pass --resume to continue it, "
                        f"or change EXP_NAME / --exp-suffix for a new run")
    iterations = snapshot_iterations(found)
    kept = snapshots_kept(folder, iterations, cfg)
    if kept:
        why, way_out = kept
        raise UserError(f"{why}; " + (way_out or f"put train_state_{iterations[-1]}.pth back and pass --resume to "
                                      f"continue the run, or change EXP_NAME / --exp-suffix for a new run"))
    raise UserError(f"{folder} already holds a training run stopped before its first train state was "
                    f"complete ({files}); pass --resume to restart it from iteration 0 (its snapshots are "
                    f"replaced as it goes), or delete the model_*.pth files there, or change EXP_NAME / "
                    f"--exp-suffix for a new run")


def check_restart(snapshot_dir, cfg):
    """--resume in a folder without a train state: the run starts from iteration 0. Either it was
    killed before it wrote anything (before its folder existed, even), or it was stopped before its
    first train state was complete: then it starts again with the config it was started with (its
    config.yml, when there), replacing its snapshots as it goes. So the same command line serves
    the first start of a job and every restart after it."""
    found, config = run_files(snapshot_dir), Path(snapshot_dir) / "config.yml"
    if not found and not config.is_file():
        log.info("--resume: %s holds no run yet; starting it from iteration 0", snapshot_dir)
        return
    iterations = snapshot_iterations(found)
    kept = snapshots_kept(snapshot_dir, iterations, cfg)
    if kept:  # starting again would replace trained snapshots
        why, way_out = kept
        them = "them" if len(iterations) > 1 else "it"
        raise UserError(f"{why}, so this run cannot be resumed, and restarting it would replace {them}; " + (
            way_out or f"put train_state_{iterations[-1]}.pth back, or change EXP_NAME / --exp-suffix for a new run"))
    if config.is_file():
        try:
            saved = yaml_load(config)
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"cannot read {config}: {str(error).splitlines()[0]}") from None
        if not isinstance(saved, dict):
            raise UserError(f"{config} is not a config (a YAML mapping)")
        check_resume_config(saved, cfg, config)
    replacing = f", replacing its {len(found)} snapshot file(s) ({found[0]}, ...) as it goes" if found else ""
    log.info("--resume: no complete train state in %s (the run was stopped before its first one was "
             "written); starting again from iteration 0%s", snapshot_dir, replacing)


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


def load_train_state(path, cfg):
    """(state, CheckpointInfo) of the train state at `path`, checked for the keys it must hold,
    against `cfg` and against the number of processes (the data order, the position in it and
    the effective batch depend on it)."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a train state of this project (format {FORMAT})")
    missing = [key for key in COMMON_KEYS if key not in state]
    if missing:
        raise UserError(f"{path}: train state lacks {', '.join(missing)}")
    check_resume_config(state["config"], cfg, path)
    started = state.get("world_size", 1)  # train states from before torchrun support: one process
    if started != get_world_size():
        how = f"torchrun --nproc_per_node={started}" if started > 1 else "one process (without torchrun)"
        raise UserError(f"--resume: the run was trained by {started} process(es) and this is "
                        f"{get_world_size()} ({path}); resume it with {how}")
    return state, CheckpointInfo(str(path), file_sha256(path), "training_state")


# --- the checkpointer ---

class Checkpointer:
    """The run's folder: held for the run (`holding`), the decision fresh / resume / restart
    (`find`), restoring or initialising what `setup` trains (`restore`, `start`), and `save`.
    Only the main process writes files (elsewhere `save` just names them)."""

    def __init__(self, cfg):
        self.cfg, self.folder = cfg, Path(cfg.TRAIN.SNAPSHOT_DIR)
        self.saved = self.info = self.last_saved = None  # the train state resumed from; the newest one
        self.setup = self.streams = self.weights = None  # what is saved (restore, start); the weights loaded
        self.pseudo_labels = None  # the version of the pseudo-labels trained on (pseudo_label_version)

    def check_folders(self, tensorboard=False):
        """Before any model work, creating nothing (main process): the snapshot folder is new,
        empty, or holds only what the project wrote, and was not created by another script
        (check_folder); TensorBoard's folder is not another script's (check_owner); both can be made
        (no file in the way, writable)."""
        if not is_main_process():
            return
        folder = self.cfg.TRAIN.SNAPSHOT_DIR  # as given: the messages name it so
        check_folder(folder, WRITER, SNAPSHOT_KEY, "change EXP_NAME / --exp-suffix or TRAIN.SNAPSHOT_DIR to a "
                     "new or empty folder", guests=("test.py",))  # test.py's 'best' results may stand beside the run
        check_creatable(folder, SNAPSHOTS)
        if tensorboard:  # the user's files may stand beside the events, another script's not
            logdir = self.cfg.TRAIN.TENSORBOARD_LOGDIR
            check_creatable(logdir, EVENTS)
            check_owner(logdir, WRITER, "TRAIN.TENSORBOARD_LOGDIR", "point it at a folder of its own",
                        guests=("test.py",))  # it may be the snapshot folder

    @contextmanager
    def holding(self, tensorboard=False):
        """For the block, in the main process: the folders checked (check_folders); the reader's
        lock of the pseudo-labels held (reading_pseudo_labels); the folders made, the snapshot
        folder's exclusive lock held (a second run into it stops with one line naming the holder),
        what killed runs left in it removed; TensorBoard's folder (which may hold other files: its
        event files get new names) made. TensorBoard's new files are recorded at the end."""
        folder = self.cfg.TRAIN.SNAPSHOT_DIR
        logdir = self.cfg.TRAIN.TENSORBOARD_LOGDIR if tensorboard else None
        with ExitStack() as held:
            if is_main_process():
                self.check_folders(tensorboard)
                held.enter_context(reading_pseudo_labels(self.cfg))  # before any folder is made
                prepare_folder(folder, WRITER, SNAPSHOTS)
                if logdir:
                    prepare_folder(logdir, WRITER, EVENTS)
                    held.callback(record_new_entries, logdir, WRITER, set(tree_entries(logdir)))
                held.enter_context(exclusive_lock(folder, WRITER))
                self.check_folders(tensorboard)  # again: no other run can change it now
            yield

    def find(self, resume):
        """The iterations done by the train state this run resumes from (the newest, checked), or
        None: a fresh run (its folder must hold no other run), or a resumed one that left no train
        state (`check_restart`: it starts again from iteration 0)."""
        folder = self.cfg.TRAIN.SNAPSHOT_DIR
        self.pseudo_labels = pseudo_label_version(self.cfg)  # read under their reader's lock (holding)
        if not resume:
            check_fresh_snapshot_dir(folder, self.cfg)
            return None
        iterations = train_state_iterations(folder)
        if not iterations:
            check_restart(folder, self.cfg)
            return None
        path = train_state_path(folder, iterations[-1])
        self.saved, self.info = load_train_state(path, self.cfg)
        if self.saved.get("pseudo_labels", self.pseudo_labels) != self.pseudo_labels:  # older states: unchecked
            raise UserError(f"--resume: the pseudo-labels in {self.cfg.PSEUDO_LABEL_DIRECTORY_TARGET} are not those "
                            f"the run trained on ({ESL_REPORT} changed since {path} was saved); put those back, or "
                            f"train on these in a new run (EXP_NAME / --exp-suffix)")
        self.last_saved = path
        log.info("resuming from %s (%d of %d iterations done)", path, self.saved["iteration"],
                 total_iterations(self.cfg))
        return self.saved["iteration"]

    def load_init(self, setup, resume):
        """Before the folder is made: the segmenter's weights from TRAIN.RESTORE_FROM (ImageNet
        init, torchvision, a released or own model), so that a bad file makes no folder; not when
        resuming from a train state, which holds them (and the file may have moved since)."""
        if resume and train_state_iterations(self.cfg.TRAIN.SNAPSHOT_DIR):
            return
        restore_from = self.cfg.TRAIN.RESTORE_FROM
        if not restore_from:
            log.warning("TRAIN.RESTORE_FROM is empty: the segmenter starts from random weights "
                        "(the papers start from the ImageNet init)")
        self.weights = [load_checkpoint(setup.model, restore_from)] if restore_from else []

    def restore(self, setup):
        """What `setup` trains: resumed, networks and optimisers from the train state; fresh, the
        segmenter's init (load_init)."""
        self.setup = setup
        if self.saved is not None:
            self.restore_train_state()
            self.weights = [self.info]
        elif self.weights is None:  # the train state load_init saw is gone since
            self.load_init(setup, resume=False)

    def start(self, datasets, data_seed, device):
        """Each loader's order (seed, length, position: new from `data_seed`, or the train state's,
        its lengths checked) and batch size, and, resumed, the RNG states; then config.yml and a
        run record with those orders (main process: the seed a --random-train run drew is there).
        Returns the iteration to start from."""
        saved = None if self.saved is None else self.saved["data"]
        self.streams = {}
        for offset, (name, dataset) in enumerate(datasets.items()):
            stream = data_stream(data_seed + offset, len(dataset)) if saved is None else saved[name]
            if stream["num_samples"] != len(dataset):
                raise UserError(f"--resume: the {name} dataset, repeated for TRAIN.MAX_ITERS iterations, has "
                                f"{len(dataset)} samples but had {stream['num_samples']} when the run started "
                                f"({self.info.path}); the data list changed")
            self.streams[name] = {**stream, "batch_size": self.cfg.TRAIN[f"BATCH_SIZE_{name.upper()}"]}
        if self.saved is not None:
            set_rng_state(self.saved["rng"])
        if is_main_process():
            yaml_dump(cfg_to_dict(self.cfg), self.folder / "config.yml", WRITER)
            record = {**build_run_record("train", cfg_to_dict(self.cfg), device, self.weights),
                      "processes": get_world_size(), "data_orders": self.streams}
            write_run_record(self.folder, record, WRITER)
        return 0 if self.saved is None else self.saved["iteration"]

    def save(self, n_iter, snapshot=True):
        """The snapshots (when `snapshot`), then the train state after `n_iter` iterations; a
        file-system fault (a full disk) is a UserError, and the files written before stay."""
        if is_main_process():
            try:
                if snapshot:  # model_{n}.pth and model_{n}_D_{level}.pth: plain state dicts
                    torch_save_atomic(cpu_state_dict(self.setup.model), model_snapshot_path(self.folder, n_iter))
                    for level, discriminator in self.setup.discriminators.items():
                        torch_save_atomic(cpu_state_dict(discriminator),
                                          discriminator_snapshot_path(self.folder, n_iter, level))
                    log.info("saved snapshot %s", model_snapshot_path(self.folder, n_iter))
                save_train_state(self.folder, n_iter, self.train_state(n_iter))
            except OSError as error:
                fault = file_system_fault(error)
                if fault is None:
                    raise
                raise UserError(f"{fault}; the files written before are intact (newest train state: "
                                f"{self.last_saved or 'none'}); fix it and continue with --resume") from None
        self.last_saved = train_state_path(self.folder, n_iter)
        return self.last_saved

    def state_at(self, n_iter):
        """The train state after `n_iter` iterations: the one just saved, or a new one."""
        path = train_state_path(self.folder, n_iter)
        return path if self.last_saved == path else self.save(n_iter, snapshot=False)

    def restore_train_state(self):
        """Networks, optimisers and scaler from the train state resumed from (strictly)."""
        setup, state = self.setup, self.saved
        missing = [key for level in setup.discriminators for key in (f"d_{level}", f"optimizer_d_{level}")
                   if key not in state]
        if missing:
            raise UserError(f"{self.info.path}: train state lacks {', '.join(missing)}")
        setup.model.load_state_dict(state["model"])
        setup.optimizer.load_state_dict(state["optimizer"])
        for level, discriminator in setup.discriminators.items():
            discriminator.load_state_dict(state[f"d_{level}"])
            setup.optimizers_d[level].load_state_dict(state[f"optimizer_d_{level}"])
        if setup.scaler is not None and state["scaler"]:
            setup.scaler.load_state_dict(state["scaler"])

    def train_state(self, n_iter):
        """The resumable state after `n_iter` completed iterations (the module docstring)."""
        setup, streams = self.setup, self.streams
        state = {
            "format": FORMAT,
            "iteration": n_iter,
            "model": cpu_state_dict(setup.model),
            "optimizer": setup.optimizer.state_dict(),
            "scaler": setup.scaler.state_dict() if setup.scaler is not None else {},
            "rng": rng_state(),
            # every process takes batch_size samples per iteration (ResumableSampler)
            "data": {name: data_stream(s["seed"], s["num_samples"], n_iter * s["batch_size"] * get_world_size())
                     for name, s in streams.items()},
            "config": cfg_to_dict(self.cfg),
            "world_size": get_world_size(),
            "pseudo_labels": self.pseudo_labels,
        }
        for level, discriminator in setup.discriminators.items():
            state[f"d_{level}"] = cpu_state_dict(discriminator)
            state[f"optimizer_d_{level}"] = setup.optimizers_d[level].state_dict()
        return state
