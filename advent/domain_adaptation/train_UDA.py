"""Training stage: source-only, MinEnt, AdvEnt and ESL self-training in one loop (SPEC section 5).

`train_domain_adaptation(cfg, device)` builds the segmenter, the discriminators (AdvEnt) and
their optimisers, or restores them from the newest train state (`resume=True`), then runs
`train_step` for min(EARLY_STOP, MAX_ITERS) iterations in total, writing snapshots and a train
state (train_state.py) every SAVE_PRED_EVERY completed iterations and at the end.

One iteration (`train_step`): zero the gradients, set the poly learning rates from the 0-based
iteration, then
  (1) source forward, both levels upsampled to the source input size, cross-entropy, backward;
  (2) target forward, upsampled to the target input size: the pseudo-label cross-entropy when
      PSEUDO_LABEL_DIRECTORY_TARGET is set (ESL), plus the adaptation loss (MinEnt: the
      entropy; AdvEnt: fool the frozen discriminators, i.e. target maps against the SOURCE
      label), one backward;
  (3) AdvEnt: each discriminator learns source (0) from target (1) on detached maps, halved;
  (4) step every optimiser.
Every loss is weighted per level (aux, main) by its LAMBDA_*; aux exists only with MULTI_LEVEL.
SIGINT / SIGTERM stop the loop after the current iteration with a saved train state
(TrainingInterrupted); a non-finite loss stops it before the optimisers step (UserError).

Under torchrun (advent/utils/distributed.py) each process trains on its own share of the data
order, DistributedDataParallel averages the gradients of the segmenter and of each discriminator,
the processes agree every iteration on a stop signal and on non-finite losses (so all stop at
the same iteration), and only the main process writes snapshots, train states, the resolved
config, the run record and TensorBoard events.

The run's folder: the main process first checks that it can write TRAIN.SNAPSHOT_DIR (one line
naming it and the cause otherwise, before any model is built), then holds the folder's exclusive
lock until the run ends (a second run into it stops with one line naming the holder) and removes
the temporary files of killed runs there. A write that fails for a reason of the file system (a
full disk) stops the run with one line; what was written before stays intact.
"""
import logging
import math
import random
import signal
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from advent.dataset import get_class_info, get_source_dataset, get_target_dataset
from advent.domain_adaptation import train_viz
from advent.domain_adaptation.config import cfg_to_dict
from advent.domain_adaptation.snapshots import train_state_path, writing
from advent.domain_adaptation.train_state import (
    ResumableSampler, TrainingSetup, check_fresh_snapshot_dir, check_restart, check_resume_config,
    check_stream, check_world_size, data_stream, latest_train_state, load_train_state,
    restore_train_state, save_snapshot, save_train_state, set_rng_state, train_state,
)
from advent.model import (
    build_segmenter, discriminator_optimizer, get_fc_discriminator, load_checkpoint, segmenter_optimizer,
)
from advent.utils.distributed import (
    barrier, broadcast_from_main, data_parallel, get_rank, get_world_size, is_distributed, is_main_process,
    max_over_processes, no_sync, same_outcome, sum_over_processes,
)
from advent.utils.errors import UserError, file_system_fault
from advent.utils.func import (
    adjust_learning_rate, adjust_learning_rate_discriminator, bce_loss, prob_2_entropy,
)
from advent.utils.loss import cross_entropy_2d, entropy_loss
from advent.utils.output_dir import check_writable, exclusive_lock, remove_temporary_files
from advent.utils.run_record import build_run_record, write_run_record
from advent.utils.runtime import memory_format, seed_everything
from advent.utils.serialization import yaml_dump

log = logging.getLogger(__name__)

LEVELS = ("aux", "main")  # the order of the model's outputs
SOURCE_LABEL, TARGET_LABEL = 0, 1  # the discriminators' domain labels
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH_SIZE_KEYS = {"source": "BATCH_SIZE_SOURCE", "target": "BATCH_SIZE_TARGET"}


class TrainingInterrupted(Exception):
    """Training stopped on a signal after `n_iter` iterations; the train state is at `path`.
    (Under torchrun every process stops after the same iteration.)"""

    def __init__(self, signum, n_iter, path):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {n_iter} iterations; saved {path}")
        self.signum, self.n_iter, self.path = signum, n_iter, path


class NonFiniteLoss(UserError):
    """A loss of the iteration is NaN or infinite (raised before any optimiser steps)."""


# --- the configuration's view of a run ---

def total_iterations(cfg):
    return min(cfg.TRAIN.EARLY_STOP, cfg.TRAIN.MAX_ITERS)


def uses_target(cfg):
    """The target images are needed unless the run is source-only without pseudo-labels."""
    return cfg.TRAIN.DA_METHOD != "SourceOnly" or bool(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)


def level_weights(cfg, kind):
    """{level: TRAIN.LAMBDA_{kind}_{LEVEL}} for kind 'SEG', 'ADV' or 'ENT'; 'aux' only if multi-level."""
    levels = LEVELS if cfg.TRAIN.MULTI_LEVEL else ("main",)
    return {level: cfg.TRAIN[f"LAMBDA_{kind}_{level.upper()}"] for level in levels}


def describe(cfg):
    """One line saying what this config trains."""
    train = cfg.TRAIN
    method = train.DA_METHOD + (" + pseudo-labels" if cfg.PSEUDO_LABEL_DIRECTORY_TARGET else "")
    return (f"{cfg.EXP_NAME}: {method}, {cfg.SOURCE} -> {cfg.TARGET} ({cfg.NUM_CLASSES} classes), "
            f"{train.MODEL} {'multi' if train.MULTI_LEVEL else 'single'}-level, "
            f"{total_iterations(cfg)} iterations, snapshots every {train.SAVE_PRED_EVERY} "
            f"in {train.SNAPSHOT_DIR}")


# --- one iteration ---

def autocast(device, amp):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def predict(model, images, size, amp):
    """{level: logits upsampled to `size` (width, height)}, bilinear with align_corners=True.
    (Contiguous logits: with CHANNELS_LAST only the model runs in the NHWC memory format.)"""
    with autocast(images.device, amp):
        outputs = model(images)
    return {level: F.interpolate(out.float().contiguous(), size=(size[1], size[0]), mode="bilinear",
                                 align_corners=True)
            for level, out in zip(LEVELS, outputs) if out is not None}


def discriminate(discriminator, logits, amp):
    """The discriminator's output on the weighted self-information map of the softmax of `logits`."""
    with autocast(logits.device, amp):
        return discriminator(prob_2_entropy(F.softmax(logits, dim=1))).float()


def seg_losses(preds, labels):
    return {level: cross_entropy_2d(pred, labels) for level, pred in preds.items()}


def entropy_losses(preds):
    return {level: entropy_loss(F.softmax(pred, dim=1)) for level, pred in preds.items()}


def adversarial_losses(discriminators, preds, amp):
    """Target maps against the SOURCE label: the segmenter learns to fool the discriminators."""
    return {level: bce_loss(discriminate(discriminators[level], pred, amp), SOURCE_LABEL)
            for level, pred in preds.items()}


def weighted(metrics, name, losses, weights):
    """Record each level's loss as metrics['loss_{name}_{level}']; return their weighted sum."""
    for level, loss in losses.items():
        metrics[f"loss_{name}_{level}"] = loss.detach()
    return sum(weights[level] * loss for level, loss in losses.items())


def set_requires_grad(modules, flag):
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(flag)


def backward(setup, loss):
    (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()


def train_discriminators(setup, pred_src, pred_trg, metrics, amp):
    """Step (3): each discriminator learns source (label 0) from target (label 1), each loss halved."""
    discriminators = setup.trained_discriminators()
    for domain, preds, label in (("src", pred_src, SOURCE_LABEL), ("trg", pred_trg, TARGET_LABEL)):
        loss_sum = 0.0
        # under torchrun: the source gradients are averaged together with the target ones
        with no_sync(discriminators.values() if domain == "src" else ()):
            for level, pred in preds.items():
                d_out = discriminate(discriminators[level], pred.detach(), amp)
                loss = bce_loss(d_out, label) / 2
                metrics[f"loss_d_{domain}_{level}"] = loss.detach()
                # accuracy before this update: the fraction of outputs on the domain's side of 0
                metrics[f"acc_d_{domain}_{level}"] = ((d_out > 0) == bool(label)).float().mean().detach()
                loss_sum = loss_sum + loss
            backward(setup, loss_sum)


def set_learning_rates(setup, cfg, i_iter):
    """Poly schedule from the 0-based iteration: segmenter (classifiers at 10x) and discriminators."""
    train = cfg.TRAIN
    rates = {"lr": adjust_learning_rate(setup.optimizer, i_iter, train.LEARNING_RATE, train.MAX_ITERS,
                                        train.POWER)}
    for optimizer in setup.optimizers_d.values():
        rates["lr_d"] = adjust_learning_rate_discriminator(optimizer, i_iter, train.LEARNING_RATE_D,
                                                           train.MAX_ITERS, train.POWER)
    return rates


def fetch(metrics, i_iter):
    """The metrics as floats (one device sync); NonFiniteLoss if a loss is NaN or infinite.

    Under torchrun: the means over the processes, so a non-finite loss on any process stops
    every process at this iteration (and TensorBoard shows the means)."""
    names = list(metrics)
    stacked = torch.stack([metrics[n].float() for n in names])
    if is_distributed():
        stacked = sum_over_processes(stacked) / get_world_size()
    values = dict(zip(names, stacked.tolist()))
    where = f" (mean over {get_world_size()} processes)" if is_distributed() else ""
    for name in names:
        if name.startswith("loss_") and not math.isfinite(values[name]):
            raise NonFiniteLoss(f"iteration {i_iter + 1}: {name} is {values[name]}{where}")
    return values


def step_optimizers(setup):
    for optimizer in setup.optimizers():
        if setup.scaler is not None:
            setup.scaler.step(optimizer)
        else:
            optimizer.step()
    if setup.scaler is not None:
        setup.scaler.update()


def train_step(setup, batch_src, batch_trg, cfg, i_iter):
    """One iteration (module docstring) on (images, labels) batches; `batch_trg` None when the
    run uses no target. Returns ({metric: float}, {'source' / 'target': main logits, detached})."""
    train, amp = cfg.TRAIN, cfg.TRAIN.AMP
    seg_w, adv_w, ent_w = (level_weights(cfg, kind) for kind in ("SEG", "ADV", "ENT"))
    rates = set_learning_rates(setup, cfg, i_iter)
    for optimizer in setup.optimizers():
        optimizer.zero_grad()
    metrics = {}
    segmenter = setup.segmenter()
    # (1) supervised loss on the source; under torchrun its gradients are averaged over the
    # processes together with the target ones when a target pass follows (one exchange)
    images_src, labels_src = batch_src
    with no_sync([segmenter] if batch_trg is not None else []):
        pred_src = predict(segmenter, images_src, train.INPUT_SIZE_SOURCE, amp)
        backward(setup, weighted(metrics, "seg_src", seg_losses(pred_src, labels_src), seg_w))
    pred_trg = {}
    if batch_trg is not None:
        # (2) target: ESL's pseudo-label loss and the adaptation loss, one backward
        images_trg, labels_trg = batch_trg
        pred_trg = predict(segmenter, images_trg, train.INPUT_SIZE_TARGET, amp)
        loss = 0.0
        if cfg.PSEUDO_LABEL_DIRECTORY_TARGET:
            loss += weighted(metrics, "seg_trg", seg_losses(pred_trg, labels_trg), seg_w)
        if train.DA_METHOD == "MinEnt":
            loss += weighted(metrics, "ent", entropy_losses(pred_trg), ent_w)
        elif train.DA_METHOD == "AdvEnt":
            set_requires_grad(setup.discriminators.values(), False)
            # the plain modules, not their DDP wrappers: frozen, they get no gradient to average
            adversarial = adversarial_losses(setup.discriminators, pred_trg, amp)
            loss += weighted(metrics, "adv_trg", adversarial, adv_w)
        backward(setup, loss)
    if train.DA_METHOD == "AdvEnt":
        # (3) the discriminators, on detached maps
        set_requires_grad(setup.discriminators.values(), True)
        train_discriminators(setup, pred_src, pred_trg, metrics, amp)
    values = fetch(metrics, i_iter)
    # (4)
    step_optimizers(setup)
    outputs = {"source": pred_src["main"].detach()}
    if pred_trg:
        outputs["target"] = pred_trg["main"].detach()
    return {**values, **rates}, outputs


# --- building a run ---

def build_setup(cfg, device):
    """Segmenter, discriminators (AdvEnt, one per level) and their optimisers on `device`
    (the segmenter in the NHWC memory format with CHANNELS_LAST)."""
    train = cfg.TRAIN
    model = build_segmenter(train.MODEL, cfg.NUM_CLASSES, train.MULTI_LEVEL)
    model = model.to(device, memory_format=memory_format(cfg.CHANNELS_LAST))
    optimizer = segmenter_optimizer(model, train.LEARNING_RATE, train.MOMENTUM, train.WEIGHT_DECAY,
                                    train.REPEAT_BACKBONE_UPDATES)
    discriminators = {}
    if train.DA_METHOD == "AdvEnt":
        discriminators = {level: get_fc_discriminator(cfg.NUM_CLASSES).to(device)
                          for level in level_weights(cfg, "ADV")}
    optimizers_d = {level: discriminator_optimizer(d, train.LEARNING_RATE_D)
                    for level, d in discriminators.items()}
    scaler = torch.amp.GradScaler(device.type) if train.AMP == "fp16" else None
    return TrainingSetup(model, optimizer, discriminators, optimizers_d, scaler)


def initial_weights(model, restore_from):
    """Load TRAIN.RESTORE_FROM (ImageNet init, torchvision, a released or own model); [CheckpointInfo]."""
    if not restore_from:
        log.warning("TRAIN.RESTORE_FROM is empty: the segmenter starts from random weights "
                    "(the papers start from the ImageNet init)")
        return []
    return [load_checkpoint(model, restore_from)]


def parallel(setup, device):
    """Under torchrun: wrap the segmenter and each discriminator in DistributedDataParallel
    (which makes every process start from the main process's weights)."""
    if is_distributed():
        setup.ddp_model = data_parallel(setup.model, device)
        setup.ddp_discriminators = {level: data_parallel(discriminator, device)
                                    for level, discriminator in setup.discriminators.items()}
    return setup


def training_datasets(cfg):
    """{'source': ..., 'target': ...} (target only when used), each long enough for TRAIN.MAX_ITERS
    iterations of every process: the data order does not depend on EARLY_STOP, so a run extended
    by a larger EARLY_STOP (--resume) sees the order a run started with it sees (as the original,
    whose lists covered MAX_ITERS). At the defaults, a list of 250,000 x batch names per process."""
    samples = cfg.TRAIN.MAX_ITERS * get_world_size()
    datasets = {"source": get_source_dataset(cfg, max_iters=samples * cfg.TRAIN.BATCH_SIZE_SOURCE)}
    if uses_target(cfg):
        datasets["target"] = get_target_dataset(cfg, "train", max_iters=samples * cfg.TRAIN.BATCH_SIZE_TARGET)
    return datasets


def data_streams(cfg, datasets, seed=None, saved=None, path=None):
    """Each loader's order (seed, length, position), batch size (per process) and number of
    processes: new from `seed`, or `saved`."""
    streams = {}
    for offset, (name, dataset) in enumerate(datasets.items()):
        if saved is None:
            stream = data_stream(seed + offset, len(dataset))
        else:
            stream = saved[name]
            check_stream(name, stream, len(dataset), path)
        streams[name] = {**stream, "batch_size": cfg.TRAIN[BATCH_SIZE_KEYS[name]],
                         "world_size": get_world_size()}
    return streams


def seed_worker(worker_id):
    """Loader workers: NumPy and Python generators from the worker's torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, stream, num_workers, device):
    """A loader in the stream's order from its position on (this process's share of it under
    torchrun); its own generator leaves the global RNG alone. Pinned memory on CUDA, so the
    copies to the GPU overlap the computation."""
    sampler = ResumableSampler(stream["num_samples"], stream["seed"], stream["position"], get_rank(),
                               stream["world_size"])
    return DataLoader(dataset, batch_size=stream["batch_size"], sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(stream["seed"]))


def batches(loader, device, channels_last=False):
    for images, labels, _, _ in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format(channels_last))
        yield images, labels.to(device, non_blocking=True)


# --- signals ---

REPEAT_WINDOW_S = 1.0  # a repeated signal this soon after the first is the same request


@contextmanager
def stop_signals():
    """While training: the first SIGINT / SIGTERM asks to stop after the current iteration
    (the yielded dict's 'signum' is set); a second aborts at once with KeyboardInterrupt.

    A repeat within REPEAT_WINDOW_S counts as the first: torchrun passes on the signal it gets
    to its workers, which may have had it already (a terminal's Ctrl-C reaches every process)."""
    stop = {"signum": None, "time": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handle(signum, frame):
        now = time.monotonic()
        if stop["signum"] is None:
            stop["signum"], stop["time"] = signum, now
        elif now - stop["time"] > REPEAT_WINDOW_S:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the loop ---

class Run:
    """What the loop needs besides the networks: config, device, data streams, monitoring.
    Only the main process writes files (`save` elsewhere just names them)."""

    def __init__(self, cfg, device, setup, streams, writer=None, last_saved=None):
        self.cfg, self.device, self.setup, self.streams = cfg, device, setup, streams
        self.writer, self.last_saved = writer, last_saved
        self.snapshot_dir = Path(cfg.TRAIN.SNAPSHOT_DIR)
        self.palette = get_class_info(cfg, "train").palette if writer is not None else None

    def save(self, n_iter, snapshot=True):
        """The snapshots (when `snapshot`), then the train state after `n_iter` iterations; a
        file-system fault (a full disk) is a UserError, and the files written before stay."""
        if is_main_process():
            try:
                if snapshot:
                    save_snapshot(self.snapshot_dir, n_iter, self.setup.model, self.setup.discriminators)
                save_train_state(self.snapshot_dir, n_iter, train_state(self.setup, n_iter, self.streams,
                                                                        self.cfg))
            except OSError as error:
                fault = file_system_fault(error)
                if fault is None:
                    raise
                raise UserError(f"{fault}; the files written before are intact (newest train state: "
                                f"{self.last_saved or 'none'}); fix it and continue with --resume") from None
        self.last_saved = train_state_path(self.snapshot_dir, n_iter)
        return self.last_saved

    def state_at(self, n_iter):
        """The train state after `n_iter` iterations: the one just saved, or a new one."""
        if self.last_saved is not None and self.last_saved.name == train_state_path("", n_iter).name:
            return self.last_saved
        return self.save(n_iter, snapshot=False)

    def report(self, bar, n_iter, metrics, batch, outputs):
        bar.set_postfix({name[5:-5]: f"{value:.3g}" for name, value in metrics.items()
                         if name.startswith("loss_") and name.endswith("_main")}, refresh=False)
        if self.writer is None:
            return
        train_viz.log_scalars(self.writer, n_iter, metrics)
        if n_iter % self.cfg.TRAIN.TENSORBOARD_VIZRATE == 0:
            for domain, logits in outputs.items():
                train_viz.log_images(self.writer, n_iter, domain, batch[domain][0], logits, self.palette,
                                     self.cfg.TRAIN.IMG_MEAN)


def next_batch(streams, stop):
    """{name: (images, labels)} of the next iteration; None when a loader failed after a stop
    signal (a loader worker ended by the same Ctrl-C)."""
    try:
        return {name: next(stream) for name, stream in streams.items()}
    except Exception:
        if stop["signum"] is None:
            raise
        return None


def diverged(error, run):
    failure = UserError(f"training diverged at {error}; nothing of this iteration was saved, "
                        f"last good train state: {run.last_saved or 'none'}")
    failure.all_processes = True  # the losses are averaged over the processes: all see it
    return failure


def train_loop(run, loaders, start, total):
    """Iterations start..total-1; returns the number completed. Raises TrainingInterrupted on a signal.

    Before each iteration the processes agree on whether any of them got a signal, so that all
    stop after the same iteration (one small collective under torchrun, none otherwise)."""
    channels_last = run.cfg.CHANNELS_LAST
    streams = {name: batches(loader, run.device, channels_last) for name, loader in loaders.items()}
    try:
        n_iter, signum = iterate(run, streams, start, total)
    finally:
        for stream in streams.values():
            stream.close()  # the loader workers end now, however the loop ended (forked, they share
            # the snapshot folder's lock)
    if signum and n_iter < total:
        path = run.state_at(n_iter)
        barrier()  # the others end once the main process has written the train state
        raise TrainingInterrupted(signum, n_iter, path)
    barrier()
    return n_iter


def iterate(run, streams, start, total):
    """The iterations of train_loop: (iterations completed, the stop signal or 0)."""
    n_iter, signum = start, 0
    progress = tqdm(range(start, total), initial=start, total=total, desc=run.cfg.EXP_NAME,
                    dynamic_ncols=True, disable=not is_main_process())
    with stop_signals() as stop, logging_redirect_tqdm(), progress as bar:
        for i_iter in bar:
            batch = next_batch(streams, stop)
            signum = max_over_processes(stop["signum"] or 0)
            if signum:
                break
            try:
                metrics, outputs = train_step(run.setup, batch["source"], batch.get("target"), run.cfg,
                                              i_iter)
            except NonFiniteLoss as error:
                raise diverged(error, run) from None
            n_iter = i_iter + 1
            run.report(bar, n_iter, metrics, batch, outputs)
            if n_iter % run.cfg.TRAIN.SAVE_PRED_EVERY == 0 or n_iter == total:
                run.save(n_iter)
    return n_iter, signum


# --- the entry point ---

@contextmanager
def held_snapshot_dir(cfg, tensorboard):
    """For the block, in the main process: TRAIN.SNAPSHOT_DIR (and the TensorBoard folder) checked
    writable, its exclusive lock held, and the temporary files of killed runs in it removed."""
    if not is_main_process():
        yield
        return
    folder = cfg.TRAIN.SNAPSHOT_DIR
    check_writable(folder, "the snapshots (TRAIN.SNAPSHOT_DIR)")
    if tensorboard:
        check_writable(cfg.TRAIN.TENSORBOARD_LOGDIR, "the TensorBoard events (TRAIN.TENSORBOARD_LOGDIR)")
    with exclusive_lock(folder, "train.py"):
        removed = remove_temporary_files(folder)
        if removed:
            log.info("removed %d temporary file(s) a killed run left in %s (%s)", len(removed), folder,
                     ", ".join(removed))
        yield


def begin(cfg, resume):
    """(train state, CheckpointInfo) to resume from, checked against `cfg` and the number of
    processes; (None, None) for a fresh run, after checking that its folder holds no other run,
    and for a resumed run that left no train state (`check_restart`)."""
    snapshot_dir = cfg.TRAIN.SNAPSHOT_DIR
    if not resume:
        check_fresh_snapshot_dir(snapshot_dir)
        return None, None
    path = latest_train_state(snapshot_dir)
    if path is None:
        check_restart(snapshot_dir, cfg)
        return None, None
    state, info = load_train_state(path)
    check_resume_config(state["config"], cfg, path)
    check_world_size(state, get_world_size(), path)
    log.info("resuming from %s (%d of %d iterations done)", path, state["iteration"], total_iterations(cfg))
    return state, info


def write_run_files(cfg, device, weights):
    """SNAPSHOT_DIR/config.yml (the resolved config) and a run record of the weights loaded
    (by the main process)."""
    if not is_main_process():
        return
    snapshot_dir = Path(cfg.TRAIN.SNAPSHOT_DIR)
    with writing(snapshot_dir / "config.yml"):
        yaml_dump(cfg_to_dict(cfg), snapshot_dir / "config.yml")
    record = build_run_record("train", cfg, device, weights)
    record["processes"] = get_world_size()
    with writing(snapshot_dir):
        write_run_record(snapshot_dir, record)


def prepare(cfg, device, saved, info, datasets, seeded, data_seed):
    """(setup, streams, start iteration, weights loaded): a fresh run from TRAIN.RESTORE_FROM with
    the data order of `data_seed`, or the networks, optimisers, data positions and RNG states of
    the train state `saved`."""
    if seeded:
        seed_everything(cfg.TRAIN.RANDOM_SEED)
    setup = build_setup(cfg, device)
    if saved is None:
        weights = initial_weights(setup.model, cfg.TRAIN.RESTORE_FROM)
        return setup, data_streams(cfg, datasets, seed=data_seed), 0, weights
    restore_train_state(setup, saved, info.path)
    streams = data_streams(cfg, datasets, saved=saved["data"], path=info.path)
    set_rng_state(saved["rng"])
    return setup, streams, saved["iteration"], [info]


def train_domain_adaptation(cfg, device, resume=False, tensorboard=False, seeded=True):
    """Train as `cfg` says, fresh or (`resume`) from the newest train state in TRAIN.SNAPSHOT_DIR.

    `seeded`: seed every generator from TRAIN.RANDOM_SEED (False: --random-train; the data order
    is still recorded, so a resume stays exact). Returns the number of completed iterations;
    raises TrainingInterrupted after SIGINT / SIGTERM and UserError for user mistakes (a folder in
    use or not writable, a full disk) or a non-finite loss. A fresh run refuses a SNAPSHOT_DIR that
    holds another run's files. The main process holds the folder's lock throughout (held_snapshot_dir).
    Under torchrun every process calls it; checks that can fail run on every process before
    any collective, and a failure on one stops all (same_outcome).
    """
    with ExitStack() as held:
        with same_outcome("setup"):
            held.enter_context(held_snapshot_dir(cfg, tensorboard))
        return train_in_held_dir(cfg, device, resume, tensorboard, seeded)


def train_in_held_dir(cfg, device, resume, tensorboard, seeded):
    """train_domain_adaptation, its folder held."""
    total = total_iterations(cfg)
    with same_outcome("setup"):
        saved, info = begin(cfg, resume)
        finished = saved is not None and saved["iteration"] >= total
        # first: missing data fails before any model is built
        datasets = None if finished else training_datasets(cfg)
    if finished:
        log.info("%s: training already finished (%d iterations done, %d asked for by TRAIN.EARLY_STOP / "
                 "MAX_ITERS)", cfg.EXP_NAME, saved["iteration"], total)
        return saved["iteration"]
    # one data order for all processes (drawn at random with --random-train)
    data_seed = cfg.TRAIN.RANDOM_SEED if seeded else random.SystemRandom().randrange(2 ** 31)
    data_seed = broadcast_from_main(data_seed)
    with same_outcome("setup"):  # no collective inside: a failure on one process must not hang the others
        setup, streams, start, weights = prepare(cfg, device, saved, info, datasets, seeded, data_seed)
        write_run_files(cfg, device, weights)
    parallel(setup, device)
    setup.model.train()
    for discriminator in setup.discriminators.values():
        discriminator.train()
    loaders = {name: make_loader(datasets[name], stream, cfg.NUM_WORKERS, device)
               for name, stream in streams.items()}
    writer = None
    if tensorboard and is_main_process():
        writer = train_viz.tensorboard_writer(cfg.TRAIN.TENSORBOARD_LOGDIR, purge_step=start or None)
    with writer if writer is not None else nullcontext():
        run = Run(cfg, device, setup, streams, writer, last_saved=Path(info.path) if info else None)
        return train_loop(run, loaders, start, total)
