"""Training stage: source-only, MinEnt, AdvEnt and ESL self-training in one loop (docs/training.md).

`train_domain_adaptation` reads top to bottom: hold the run's folder and decide fresh or resume
(checkpoint.py), build the data (train_data.py), the networks and optimisers, restore or
initialise them, then `train_loop`: min(EARLY_STOP, MAX_ITERS) iterations in total, a snapshot
and a train state every SAVE_PRED_EVERY iterations and at the end.

One iteration (`train_step`): set the poly learning rates from the 0-based iteration, zero the
gradients, then
  (1) source forward, both levels upsampled to the source input size, cross-entropy, backward;
  (2) target forward, upsampled to the target input size: the pseudo-label cross-entropy when
      PSEUDO_LABEL_DIRECTORY_TARGET is set (ESL), plus the adaptation loss (MinEnt: the
      entropy; AdvEnt: fool the frozen discriminators, i.e. target maps against the SOURCE
      label), one backward;
  (3) AdvEnt: each discriminator learns source (0) from target (1) on detached maps, halved;
  (4) step every optimiser.
Every loss is weighted per level (aux, main) by its LAMBDA_*; aux exists only with MULTI_LEVEL.
With TRAIN.CUDA_GRAPH, steps (1) to (3) of every iteration after the first are replayed from a
CUDA graph (`GraphedStep`: the same kernels, without the host launching each one).
SIGINT / SIGTERM stop the loop after the current iteration with a saved train state
(TrainingInterrupted); a non-finite loss stops it before the optimisers step (UserError).

Under torchrun each process trains on its own share of the data order, DistributedDataParallel
averages the gradients of the segmenter and of each discriminator, and the processes learn every
iteration of a stop signal and of non-finite losses on any of them (so all stop at the same
iteration); any other failure ends its process, and torchrun the others.
"""
import logging
import math
import random
import signal
import threading
import time
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from advent.domain_adaptation.checkpoint import Checkpointer, total_iterations
from advent.domain_adaptation.train_data import batches, make_loader, training_datasets
from advent.domain_adaptation.train_viz import Monitor
from advent.model import build_segmenter, discriminator_optimizer, get_fc_discriminator, segmenter_optimizer
from advent.model.inference import autocast, upsample
from advent.utils.distributed import (
    barrier, broadcast_from_main, data_parallel, get_world_size, is_distributed, is_main_process,
    join_process_group, max_over_processes, no_sync, sum_over_processes,
)
from advent.utils.errors import UserError
from advent.utils.func import adjust_learning_rate, adjust_learning_rate_discriminator, bce_loss, prob_2_entropy
from advent.utils.loss import cross_entropy_2d, entropy_loss
from advent.utils.runtime import memory_format, seed_everything

log = logging.getLogger(__name__)

LEVELS = ("aux", "main")  # the order of the model's outputs
SOURCE_LABEL, TARGET_LABEL = 0, 1  # the discriminators' domain labels
REPEAT_WINDOW_S = 1.0  # a repeated signal this soon after the first is the same request


class TrainingInterrupted(Exception):
    """Training stopped on a signal after `n_iter` iterations; the train state is at `path`.
    (Under torchrun every process stops after the same iteration.)"""

    def __init__(self, signum, n_iter, path):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {n_iter} iterations; saved {path}")
        self.signum, self.n_iter, self.path = signum, n_iter, path


class NonFiniteLoss(UserError):
    """A loss of the iteration is NaN or infinite (raised before any optimiser steps)."""


# --- the configuration's view of a run ---

def level_weights(cfg, kind):
    """{level: TRAIN.LAMBDA_{kind}_{LEVEL}} for kind 'SEG', 'ADV' or 'ENT'; 'aux' only if multi-level."""
    levels = LEVELS if cfg.TRAIN.MULTI_LEVEL else ("main",)
    return {level: cfg.TRAIN[f"LAMBDA_{kind}_{level.upper()}"] for level in levels}


# --- what is trained ---

@dataclass
class TrainingSetup:
    """The networks and optimisers one iteration updates (discriminators: AdvEnt only)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    discriminators: dict = field(default_factory=dict)  # level ('aux' / 'main') -> network
    optimizers_d: dict = field(default_factory=dict)  # level -> its Adam
    scaler: object = None  # torch.amp.GradScaler with TRAIN.AMP 'fp16', else None
    # Under torchrun: the DistributedDataParallel wrappers that average the gradients over the
    # processes (`parallel`); the plain modules above stay what the optimisers hold and what is saved.
    ddp_model: object = None
    ddp_discriminators: dict = field(default_factory=dict)

    def optimizers(self):
        return [self.optimizer, *self.optimizers_d.values()]


def build_setup(cfg, device):
    """Segmenter, discriminators (AdvEnt, one per level) and their optimisers on `device`
    (the segmenter in the NHWC memory format with CHANNELS_LAST)."""
    train = cfg.TRAIN
    model = build_segmenter(train.MODEL, cfg.NUM_CLASSES, train.MULTI_LEVEL)
    model = model.to(device, memory_format=memory_format(cfg.CHANNELS_LAST))
    optimizer = segmenter_optimizer(model, train.LEARNING_RATE, train.MOMENTUM, train.WEIGHT_DECAY,
                                    train.REPEAT_BACKBONE_UPDATES)
    levels = level_weights(cfg, "ADV") if train.DA_METHOD == "AdvEnt" else {}
    discriminators = {level: get_fc_discriminator(cfg.NUM_CLASSES, train.DISCRIMINATOR_WIDTH).to(device)
                      for level in levels}
    optimizers_d = {level: discriminator_optimizer(d, train.LEARNING_RATE_D)
                    for level, d in discriminators.items()}
    scaler = torch.amp.GradScaler(device.type) if train.AMP == "fp16" else None
    return TrainingSetup(model, optimizer, discriminators, optimizers_d, scaler)


def parallel(setup, device):
    """Under torchrun: wrap the segmenter and each discriminator in DistributedDataParallel
    (which makes every process start from the main process's weights)."""
    if is_distributed():
        setup.ddp_model = data_parallel(setup.model, device)
        setup.ddp_discriminators = {level: data_parallel(discriminator, device)
                                    for level, discriminator in setup.discriminators.items()}
    return setup


# --- one iteration ---

def predict(model, images, size, amp):
    """{level: logits upsampled to `size` (width, height), in float32 (inference.upsample)}."""
    with autocast(images.device, amp):
        outputs = model(images)
    return {level: upsample(out, size) for level, out in zip(LEVELS, outputs) if out is not None}


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
    # the modules to train through: the DDP wrappers under torchrun
    discriminators = {level: setup.ddp_discriminators.get(level, d) for level, d in setup.discriminators.items()}
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


def main_outputs(pred_src, pred_trg):
    """{'source' / 'target': the main logits, detached} (no 'target' without a target pass)."""
    return {domain: preds["main"].detach() for domain, preds in (("source", pred_src), ("target", pred_trg))
            if preds}


def forward_backward(setup, batch_src, batch_trg, cfg):
    """Steps (1) to (3) of an iteration: the losses and every network's gradients, with nothing
    read back to the host (so that it can be captured in a CUDA graph). Returns ({metric: 0-dim
    tensor}, source predictions, target predictions ({} without a target))."""
    train, amp = cfg.TRAIN, cfg.TRAIN.AMP
    seg_w, adv_w, ent_w = (level_weights(cfg, kind) for kind in ("SEG", "ADV", "ENT"))
    metrics = {}
    segmenter = setup.ddp_model if setup.ddp_model is not None else setup.model  # DDP under torchrun
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
    return metrics, pred_src, pred_trg


def train_step(setup, batch_src, batch_trg, cfg, i_iter):
    """One iteration (module docstring) on (images, labels) batches; `batch_trg` None when the
    run uses no target. Returns ({metric: float}, {'source' / 'target': main logits, detached})."""
    rates = set_learning_rates(setup, cfg, i_iter)
    for optimizer in setup.optimizers():
        optimizer.zero_grad()
    metrics, pred_src, pred_trg = forward_backward(setup, batch_src, batch_trg, cfg)
    values = fetch(metrics, i_iter)
    # (4)
    step_optimizers(setup)
    return {**values, **rates}, main_outputs(pred_src, pred_trg)


class GraphedStep:
    """train_step with TRAIN.CUDA_GRAPH: the first call is an eager iteration (on a side stream, as
    torch's recipe for graph capture has it), after which steps (1) to (3) are captured once in a
    CUDA graph on static copies of that call's batches; each later call copies its batches into
    them and replays the graph. The graph runs the kernels an eager iteration runs, so it
    computes the same numbers; the learning rates, the loss read-back and the optimiser steps
    stay eager. The gradients live in the graph's memory and are rewritten by each replay, so
    nothing may set them to None (zero_grad) between replays."""

    def __init__(self, setup, cfg):
        self.setup, self.cfg, self.graph = setup, cfg, None

    def __call__(self, batch_src, batch_trg, i_iter):
        # the streams and the capture belong to the current device: make it the batches' (a
        # benchmark on cuda:1 would otherwise capture an empty graph on cuda:0)
        with torch.cuda.device(batch_src[0].device):
            return self._step(batch_src, batch_trg, i_iter)

    def _step(self, batch_src, batch_trg, i_iter):
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                result = train_step(self.setup, batch_src, batch_trg, self.cfg, i_iter)
            torch.cuda.current_stream().wait_stream(side)
            self._capture(batch_src, batch_trg)
            return result
        for static, batch in ((self.static_src, batch_src), (self.static_trg, batch_trg)):
            for static_tensor, tensor in zip(static or (), batch or ()):
                if static_tensor.shape != tensor.shape:
                    raise ValueError(f"TRAIN.CUDA_GRAPH needs batches of one shape: {tuple(tensor.shape)} "
                                     f"after {tuple(static_tensor.shape)}")
                static_tensor.copy_(tensor, non_blocking=True)
        rates = set_learning_rates(self.setup, self.cfg, i_iter)
        self.graph.replay()
        values = fetch(self.metrics, i_iter)
        step_optimizers(self.setup)
        return {**values, **rates}, self.outputs

    def _capture(self, batch_src, batch_trg):
        self.static_src = tuple(t.clone() for t in batch_src)
        self.static_trg = tuple(t.clone() for t in batch_trg) if batch_trg is not None else None
        for optimizer in self.setup.optimizers():
            optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them in its memory
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the loaders' pin-memory thread allocates pinned host memory meanwhile,
        # which the default ("global") would take for an unsafe call and fail the capture with
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.metrics, pred_src, pred_trg = forward_backward(self.setup, self.static_src, self.static_trg, self.cfg)
        self.outputs = main_outputs(pred_src, pred_trg)


def make_step(setup, cfg):
    """The function one iteration calls: (batch_src, batch_trg, i_iter) -> train_step's result."""
    if cfg.TRAIN.CUDA_GRAPH:
        return GraphedStep(setup, cfg)
    return lambda batch_src, batch_trg, i_iter: train_step(setup, batch_src, batch_trg, cfg, i_iter)


# --- the loop ---

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


def next_batch(streams, stop):
    """{name: (images, labels)} of the next iteration; None when a loader failed after a stop
    signal (a loader worker ended by the same Ctrl-C)."""
    try:
        return {name: next(stream) for name, stream in streams.items()}
    except Exception:
        if stop["signum"] is None:
            raise
        return None


@contextmanager
def log_above_progress_bar():
    """tqdm's logging_redirect_tqdm (log lines printed above the bar, not through it), keeping the
    console's level: tqdm's stand-in copies the console handler's format but not its level, so a
    console that shows warnings only (the demo's) would show every INFO line."""
    root = logging.getLogger()
    before = list(root.handlers)
    with logging_redirect_tqdm():
        replaced = [handler for handler in before if handler not in root.handlers]
        for handler in root.handlers:
            if handler not in before and replaced:
                handler.setLevel(max(h.level for h in replaced))
        yield


def train_loop(cfg, device, setup, loaders, checkpointer, monitor, start):
    """Iterations start..total-1; returns the number completed. Raises TrainingInterrupted on a
    signal: before each iteration the processes agree on whether any of them got one, so that all
    stop after the same iteration (one small collective under torchrun, none otherwise)."""
    total, n_iter, signum = total_iterations(cfg), start, 0
    step = make_step(setup, cfg)
    with ExitStack() as stack:
        # closed last, however the loop ends: the loader workers end with them (forked, they
        # share the snapshot folder's lock)
        streams = {name: stack.enter_context(closing(batches(loader, device, cfg.CHANNELS_LAST)))
                   for name, loader in loaders.items()}
        stop = stack.enter_context(stop_signals())
        stack.enter_context(log_above_progress_bar())
        bar = stack.enter_context(tqdm(range(start, total), initial=start, total=total, desc=cfg.EXP_NAME,
                                       dynamic_ncols=True, disable=not is_main_process()))
        for i_iter in bar:
            batch = next_batch(streams, stop)
            signum = max_over_processes(stop["signum"] or 0)
            if signum:
                break
            try:
                metrics, outputs = step(batch["source"], batch.get("target"), i_iter)
            except NonFiniteLoss as error:
                failure = UserError(f"training diverged at {error}; nothing of this iteration was saved, "
                                    f"last good train state: {checkpointer.last_saved or 'none'}")
                failure.all_processes = True  # the losses are averaged over the processes: all see it
                raise failure from None
            n_iter = i_iter + 1
            monitor.report(bar, n_iter, metrics, batch, outputs)
            if n_iter % cfg.TRAIN.SAVE_PRED_EVERY == 0 or n_iter == total:
                checkpointer.save(n_iter)
    if signum and n_iter < total:
        path = checkpointer.state_at(n_iter)
        barrier()  # the others end once the main process has written the train state
        raise TrainingInterrupted(signum, n_iter, path)
    barrier()
    return n_iter


# --- the entry point ---

def train_domain_adaptation(cfg, device, resume=False, tensorboard=False, seeded=True):
    """Train as `cfg` says, fresh or (`resume`) from the newest train state in TRAIN.SNAPSHOT_DIR;
    return the number of completed iterations. `seeded`: seed every generator from
    TRAIN.RANDOM_SEED (False: --random-train; the data order is still recorded, so a resume stays
    exact). Under torchrun every process calls it and runs the checks (folder, train state, data
    lists, weights) before it joins the process group."""
    total = total_iterations(cfg)
    checkpointer = Checkpointer(cfg)
    datasets = training_datasets(cfg)  # missing data fails before any model, and before the folder is made
    checkpointer.check_folders(tensorboard)  # creating nothing yet
    if seeded:
        seed_everything(cfg.TRAIN.RANDOM_SEED)
    setup = build_setup(cfg, device)
    checkpointer.load_init(setup, resume)  # a bad TRAIN.RESTORE_FROM makes no folder either
    with checkpointer.holding(tensorboard):
        done = checkpointer.find(resume)  # None: a fresh run
        if done is not None and done >= total:
            log.info("%s: training already finished (%d iterations done, %d asked for by TRAIN.EARLY_STOP / "
                     "MAX_ITERS)", cfg.EXP_NAME, done, total)
            return done
        checkpointer.restore(setup)
        join_process_group(device)
        # one data order for all processes (drawn at random with --random-train)
        data_seed = broadcast_from_main(cfg.TRAIN.RANDOM_SEED if seeded else random.SystemRandom().randrange(2 ** 31))
        start = checkpointer.start(datasets, data_seed, device)
        parallel(setup, device)
        for module in (setup.model, *setup.discriminators.values()):
            module.train()
        loaders = {name: make_loader(datasets[name], stream, cfg.NUM_WORKERS, device)
                   for name, stream in checkpointer.streams.items()}
        with closing(Monitor(cfg, tensorboard and is_main_process(), start)) as monitor:
            return train_loop(cfg, device, setup, loaders, checkpointer, monitor, start)
