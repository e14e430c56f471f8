"""Test stage: evaluate segmenters on the target validation set (TEST.MODE 'single' or 'best').

single  the models of TEST.RESTORE_FROM; several make an ensemble whose output is the sum of
        TEST.MODEL_WEIGHT[i] times model i's upsampled main logits (as the original).
best    every snapshot model_{k}.pth in TEST.SNAPSHOT_DIR[0], k = SNAPSHOT_STEP, 2 * SNAPSHOT_STEP,
        ... up to and including SNAPSHOT_MAXITER (snapshots.expected_snapshots). TEST.WAIT_MODEL
        waits for snapshots the trainer has not written yet (at most TEST.WAIT_TIMEOUT seconds
        each); otherwise missing ones are skipped. Each snapshot's confusion matrix is cached in
        <snapshot dir>/test_cache.json under its SHA-256 and every evaluation setting, so a
        re-run evaluates only what changed. Both the last snapshot and the best one are
        reported: picking the best on the validation set is an oracle selection (as the papers).

Per image, on the model's device: main logits of the INPUT_SIZE image (under TEST.AMP autocast),
upsampled in float32 to OUTPUT_SIZE (bilinear, align_corners=True), argmax, counted in a C x C
confusion matrix; only that matrix comes back to the CPU.

Outputs: results_single.json (in EXP_ROOT_LOGS/test/<config name>/) or results_best.json (in the
snapshot folder), a run record beside it, and with TEST.SAVE_PREDICTIONS the predictions in
predictions/ there ('best' mode: predictions/<best snapshot>/): labelIds/ (Cityscapes label ids,
the names cityscapesscripts' evaluation looks for; trainIds/ when the classes have no one-to-one
label id) and color/ (class palette).

File-system faults are user errors, found before any model work where possible: every folder
the run writes is created and probed first (`check_writable`), and a predictions folder holding
files the project did not write is refused. The predictions folder is replaced as a whole, all
or nothing (PredictionWriter, advent.utils.output_dir). A full disk later on stops no evaluation:
the results are shown first, then the failed write is reported in one line; the cache keeps
every snapshot evaluated so far.

Under torchrun each process evaluates its own block of whole batches (distributed.shard_batches:
no padding, no image twice), the confusion matrices are summed over the processes, so the
numbers equal a single process's, and each process writes the predictions of its own images;
the main process alone reads and writes the cache, the results and the run record.
"""
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from advent.dataset import get_class_info, get_target_dataset
from advent.domain_adaptation.metrics import (
    ConfusionMatrix, format_miou, format_summary, summarize, warn_if_suspicious,
)
from advent.domain_adaptation.snapshots import expected_snapshots, model_snapshot_path, wait_for_file
from advent.model import build_segmenter, load_checkpoint
from advent.model.weights import CheckpointInfo, file_sha256
from advent.utils.distributed import (
    broadcast_from_main, get_world_size, is_main_process, same_outcome, shard_batches, shared_error,
    sum_over_processes, true_everywhere,
)
from advent.utils.errors import UserError, file_system_fault
from advent.utils.output_dir import (
    check_replaceable, check_writable, exclusive_lock, remove_leftovers, replace_dir, staging_prefix,
    write_manifest,
)
from advent.utils.run_record import build_run_record, write_run_record
from advent.utils.runtime import memory_format
from advent.utils.serialization import DIR_MODE, atomic_path, json_dump, json_load
from advent.utils.viz_segmask import colorize_mask

log = logging.getLogger(__name__)

CACHE_NAME = "test_cache.json"
CACHE_FORMAT = 1
RESULTS_SINGLE = "results_single.json"
RESULTS_BEST = "results_best.json"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BEST_LABEL = "best on val — oracle selection, as in the papers"


# --- prediction and counting (on the model's device) ---

class Buffers:
    """Output tensors reused from batch to batch. On the CPU a fresh 19 x 1024 x 2048 float
    tensor per image costs about as much as the upsampling itself (page faults on first touch);
    on CUDA the caching allocator would reuse the memory anyway."""

    def __init__(self):
        self._tensors = {}

    def get(self, key, shape, dtype, device):
        tensor = self._tensors.get(key)
        if tensor is None or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype \
                or tensor.device != torch.device(device):
            tensor = torch.empty(shape, dtype=dtype, device=device)
            self._tensors[key] = tensor
        return tensor


def main_logits(model, image, amp="none"):
    """The model's main output for `image`, the forward under autocast when `amp` is 'bf16' or
    'fp16', returned in float32 and the default memory format (also with CHANNELS_LAST)."""
    dtype = AMP_DTYPES[amp]
    with torch.autocast(image.device.type, dtype=dtype, enabled=dtype is not None):
        _, main = model(image)
    return main.float().contiguous()


def upsample_logits(logits, output_size, out=None):
    """Bilinear upsampling (align_corners=True, as the original) of N x C x h x w float32 logits
    to `output_size` (width, height); written into `out` when given (the same kernel as
    F.interpolate, so the same numbers)."""
    size = [int(output_size[1]), int(output_size[0])]
    if out is None:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return torch.ops.aten.upsample_bilinear2d.out(logits, size, True, None, None, out=out)


def upsampled_prediction(mains, weights, output_size, buffers=None):
    """argmax over classes of sum_i weights[i] * upsample(mains[i]): N x H x W int64 class ids.

    With `buffers`, the result is one of its tensors, valid until the next call with them.
    """
    buffers = Buffers() if buffers is None else buffers
    batch, classes = mains[0].shape[:2]
    shape = (batch, classes, int(output_size[1]), int(output_size[0]))
    device = mains[0].device
    total = None
    for i, (main, weight) in enumerate(zip(mains, weights)):
        out = buffers.get(f"logits{min(i, 1)}", shape, torch.float32, device)  # the sum, then model i's
        logits = upsample_logits(main, output_size, out)
        if weight != 1.0:  # as the original: weight * upsampled logits, then the sum
            logits.mul_(weight)
        total = logits if total is None else total.add_(logits)
    values = buffers.get("max", (batch,) + shape[2:], torch.float32, device)
    indices = buffers.get("argmax", (batch,) + shape[2:], torch.int64, device)
    torch.max(total, dim=1, out=(values, indices))  # the first maximal class on ties, as np.argmax
    return indices


@torch.inference_mode()
def evaluate(models, loader, num_classes, device, output_size, weights=None, amp="none",
             on_prediction=None, desc="test", channels_last=False):
    """Confusion matrix of the (weighted ensemble of) `models` over `loader` (items as the dataset
    factory's: image, label, shape, name), counted on `device` and summed over all processes.

    `on_prediction(preds, names)`, when given, receives each batch's predictions as an
    N x H x W uint8 numpy array (the only per-image copy to the CPU, for saving them).
    `channels_last`: the images go to the models in the NHWC memory format (CHANNELS_LAST).
    A dataset with `native_labels` (Mapillary: each label at its own padded native size) gets
    its logits upsampled to each batch's label size instead of `output_size`.
    """
    native = getattr(loader.dataset, "native_labels", False)
    weights = [1.0] * len(models) if weights is None else list(weights)
    confmat = ConfusionMatrix(num_classes, device)
    buffers = Buffers()
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    for image, label, _, names in tqdm(loader, desc=desc, disable=not is_main_process()):
        image = image.to(device, non_blocking=True, memory_format=memory_format(channels_last))
        mains = [main_logits(model, image, amp) for model in models]
        for main in mains:
            nonfinite += (~torch.isfinite(main)).flatten(1).any(1).sum()
        size = (label.shape[-1], label.shape[-2]) if native else output_size
        pred = upsampled_prediction(mains, weights, size, buffers)
        confmat.update(label.to(device, non_blocking=True), pred)
        if on_prediction is not None:
            on_prediction(pred.to(torch.uint8).cpu().numpy(), list(names))
    confmat.reduce_from_all_processes()
    nonfinite = sum_over_processes(nonfinite)
    if int(nonfinite.item()):
        log.warning("%d model outputs held NaN or inf logits%s", int(nonfinite.item()),
                    "; try TEST.AMP 'bf16' or 'none'" if amp == "fp16" else "")
    return confmat


# --- inputs ---

def build_test_loader(cfg, device):
    """(dataset, loader) of the target test split: images at TEST.INPUT_SIZE_TARGET, ground-truth
    train ids at TEST.OUTPUT_SIZE_TARGET, in list order (under torchrun: this process's block of
    the batches). Pinned memory on CUDA; the workers stay up between the snapshots of 'best' mode.
    Mapillary labels keep their native sizes, which differ per image: batches of one image."""
    dataset = get_target_dataset(cfg, "test")
    if len(dataset) == 0:
        raise UserError(f"the test set '{cfg.TEST.SET_TARGET}' of {cfg.DATA_DIRECTORY_TARGET} holds no image")
    if getattr(dataset, "native_labels", False) and cfg.TEST.BATCH_SIZE_TARGET != 1:
        raise UserError(f"TEST.BATCH_SIZE_TARGET is {cfg.TEST.BATCH_SIZE_TARGET}, but {cfg.TARGET} test "
                        f"labels keep their native sizes, which differ per image; set it to 1")
    loader = DataLoader(dataset, batch_sampler=shard_batches(range(len(dataset)), cfg.TEST.BATCH_SIZE_TARGET),
                        num_workers=cfg.NUM_WORKERS, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.NUM_WORKERS > 0)
    return dataset, loader


def load_models(cfg, device):
    """The models of TEST.RESTORE_FROM ('single' mode), in eval mode on `device`, and their
    CheckpointInfo."""
    models, infos = [], []
    test = cfg.TEST
    for i, (name, multi_level, path) in enumerate(zip(test.MODEL, test.MULTI_LEVEL, test.RESTORE_FROM)):
        if not path:
            raise UserError(f"TEST.RESTORE_FROM[{i}] is empty: 'single' mode needs a checkpoint per model")
        model = build_segmenter(name, cfg.NUM_CLASSES, multi_level)
        infos.append(load_checkpoint(model, path))
        models.append(model.eval().to(device, memory_format=memory_format(cfg.CHANNELS_LAST)))
    return models, infos


def run_header(cfg, cfg_path, dataset, mode):
    """What every results file starts with: the mode, the config and the evaluation setting."""
    return {
        "mode": mode,
        "config": str(Path(cfg_path).resolve()) if cfg_path else None,
        "target": cfg.TARGET,
        "set": cfg.TEST.SET_TARGET,
        "images": len(dataset),
        "num_classes": cfg.NUM_CLASSES,
        "input_size": list(cfg.TEST.INPUT_SIZE_TARGET),
        "output_size": list(cfg.TEST.OUTPUT_SIZE_TARGET),
        "amp": cfg.TEST.AMP,
        "channels_last": cfg.CHANNELS_LAST,
        "processes": get_world_size(),
        "iou_unit": "percent",
    }


# --- saved predictions ---

def prediction_file_name(name):
    """Flat file name of a list entry's prediction: 'frankfurt/frankfurt_000000_000294_leftImg8bit.png'
    -> 'frankfurt_000000_000294_leftImg8bit.png' (what cityscapesscripts' evaluation matches)."""
    return Path(name).with_suffix(".png").name


def save_png(image, path):
    """Write a PIL image as PNG through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def check_prediction_names(names):
    """The flat prediction folder needs one file name per image (checked before any model work)."""
    seen = {}
    for name in names:
        file_name = prediction_file_name(name)
        if file_name in seen:
            raise UserError(f"two test images share the prediction file name {file_name} "
                            f"(list entries {seen[file_name]} and {name}); the flat prediction folder "
                            f"cannot hold both")
        seen[file_name] = name


PREDICTIONS_KEY = "TEST.SAVE_PREDICTIONS folder"


class PredictionWriter:
    """Writes each prediction as a colour PNG (the class palette) in color/ and an id PNG:
    Cityscapes label ids in labelIds/ (via the class info's train2label), or train ids in
    trainIds/ when the classes have no one-to-one label id (the 7-class setting); 'best' mode
    puts both under a subfolder named after the snapshot.

    The folder `final` is replaced as a whole, all or nothing (advent.utils.output_dir): before
    any model work the main process takes its lock (`prepare`, held until `stack` closes),
    removes what killed runs left beside it, refuses it when it holds files the project did not
    write, and creates a staging folder beside it, which every process then writes its own
    images into (`share`). `finish` lists them in a manifest and swaps the staging folder in: a
    crash or a kill before leaves the complete earlier predictions.

    `names`: every list entry of the test set, checked for clashing file names. A file-system
    fault (a full disk) while writing an image stops the writing, not the evaluation: `finish`
    reports it, after the results have been shown."""

    def __init__(self, final, info, names):
        check_prediction_names(names)
        self.final, self.staging, self.subfolder, self.fault = Path(final), None, "", None
        self.palette = info.palette
        if info.train2label is not None:
            self.ids_name, self.lut = "labelIds", info.train2label.astype(np.uint8)
        else:
            self.ids_name, self.lut = "trainIds", np.arange(info.num_classes, dtype=np.uint8)

    def prepare(self, stack):
        """The main process's setup of the folder (see the class)."""
        check_writable(self.final.parent, "the predictions")
        stack.enter_context(exclusive_lock(self.final, "test.py"))
        remove_leftovers(self.final)
        check_replaceable(self.final, PREDICTIONS_KEY,
                          advice="move it away (an earlier version's predictions/ has no manifest)")
        self.staging = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=staging_prefix(self.final)))
        os.chmod(self.staging, DIR_MODE)
        stack.callback(shutil.rmtree, self.staging, ignore_errors=True)  # after a failure (else gone)

    def share(self):
        """Every process learns the main process's staging folder (after the setup)."""
        self.staging = Path(broadcast_from_main(self.staging))

    def __call__(self, preds, names):
        if self.fault is not None:
            return
        folder = self.staging / self.subfolder
        try:
            for pred, name in zip(preds, names):
                file_name = prediction_file_name(name)
                save_png(Image.fromarray(self.lut[pred]), folder / self.ids_name / file_name)
                save_png(colorize_mask(pred, self.palette), folder / "color" / file_name)
        except OSError as error:
            if file_system_fault(error) is None:
                raise
            self.fault = UserError(f"cannot write the predictions: {file_system_fault(error)}")
            log.warning("%s; the evaluation goes on without them", self.fault)

    def finish(self):
        """After the evaluation (every process has written its images): a fault of any process
        stops all, else the main process puts the new folder in place. Returns where they are."""
        with same_outcome("writing the predictions"):
            if self.fault is not None:
                raise self.fault
        if is_main_process():
            write_manifest(self.staging, "test.py", [p.name for p in self.staging.iterdir()])
            replace_dir(self.staging, self.final)
        log.info("predictions written to %s", self.final / self.subfolder)
        return self.final / self.subfolder


def prediction_writer(cfg, final, info, dataset, stack):
    """With TEST.SAVE_PREDICTIONS, the PredictionWriter of the folder `final`, prepared by the
    main process (call it in the setup, then `share`); else None."""
    if not cfg.TEST.SAVE_PREDICTIONS:
        return None
    writer = PredictionWriter(final, info, dataset.img_ids)
    if is_main_process():
        writer.prepare(stack)
    return writer


# --- 'single' mode ---

def single_results_dir(cfg, cfg_path):
    """EXP_ROOT_LOGS/test/<config file name without .yml> (EXP_NAME without a config file)."""
    name = Path(cfg_path).stem if cfg_path else cfg.EXP_NAME
    return Path(cfg.EXP_ROOT_LOGS) / "test" / name


def eval_single(cfg, device, cfg_path="", argv=None):
    """Evaluate the model (or the ensemble) of TEST.RESTORE_FROM; return the results dict."""
    folder = single_results_dir(cfg, cfg_path)
    with contextlib.ExitStack() as stack:  # the predictions folder's lock, while it is written
        with same_outcome("setup"):
            if is_main_process():
                check_writable(folder, "the results")
            dataset, loader = build_test_loader(cfg, device)
            info = get_class_info(cfg, "test")
            writer = prediction_writer(cfg, folder / "predictions", info, dataset, stack)
            models, infos = load_models(cfg, device)
        if writer:
            writer.share()
        if len(models) > 1:
            log.info("ensemble of %d models, weights %s", len(models), list(cfg.TEST.MODEL_WEIGHT))
        confmat = evaluate(models, loader, cfg.NUM_CLASSES, device, cfg.TEST.OUTPUT_SIZE_TARGET,
                           cfg.TEST.MODEL_WEIGHT, cfg.TEST.AMP, on_prediction=writer,
                           channels_last=cfg.CHANNELS_LAST)
        hist = confmat.hist()
        summary = summarize(hist, info.names)
        log.info("%s", format_summary(summary))  # shown before any file is written
        unexpected = confmat.unexpected_labels()
        warn_if_suspicious(summary, unexpected, cfg.NUM_CLASSES)
        predictions = writer.finish() if writer else None
        results = run_header(cfg, cfg_path, dataset, "single")
        results["checkpoints"] = [
            {"path": i.path, "sha256": i.sha256, "layout": i.layout, "model": name, "multi_level": bool(ml),
             "weight": float(w)}
            for i, name, ml, w in zip(infos, cfg.TEST.MODEL, cfg.TEST.MULTI_LEVEL, cfg.TEST.MODEL_WEIGHT)]
        results.update(summary)
        results.update(confusion_matrix=hist.tolist(), unexpected_label_pixels=unexpected,
                       predictions=str(predictions) if writer else None)
        write_outputs(folder, RESULTS_SINGLE, results, test_record(cfg, device, infos, argv))
    return results


def test_record(cfg, device, weights, argv):
    """The run record of a test run (the main process's; None elsewhere)."""
    if not is_main_process():
        return None
    record = build_run_record("test", cfg, device, weights, argv)
    record["processes"] = get_world_size()
    return record


def write_outputs(folder, file_name, results, record):
    """The results JSON and the run record in `folder` (both atomic; by the main process)."""
    if not is_main_process():
        return
    path = Path(folder) / file_name
    json_dump(results, path)
    record["results_file"] = str(path)
    write_run_record(folder, record)
    log.info("results written to %s", path)


# --- 'best' mode ---

def _sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_array(array):
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.int64).tobytes()).hexdigest()


def eval_setting(cfg, dataset, info):
    """Everything besides the snapshot file that decides its confusion matrix (the cache key)."""
    setting = {
        "target": cfg.TARGET,
        "data_directory": str(Path(cfg.DATA_DIRECTORY_TARGET).resolve()),
        "set": cfg.TEST.SET_TARGET,
        "images": len(dataset),
        "image_list_sha256": _sha256_text("\n".join(dataset.img_ids)),
        "input_size": list(cfg.TEST.INPUT_SIZE_TARGET),
        "output_size": list(cfg.TEST.OUTPUT_SIZE_TARGET),
        # Mapillary: each label at its native size, padded (not OUTPUT_SIZE)
        "native_labels": bool(getattr(dataset, "native_labels", False)),
        "img_mean": [float(v) for v in cfg.TEST.IMG_MEAN],
        "num_classes": cfg.NUM_CLASSES,
        "class_names": list(info.names),
        "label_lookup_sha256": _sha256_array(dataset.label_lookup),
        "model": cfg.TEST.MODEL[0],
        "multi_level": bool(cfg.TEST.MULTI_LEVEL[0]),
        "amp": cfg.TEST.AMP,
        "channels_last": bool(cfg.CHANNELS_LAST),
    }
    return json.loads(json.dumps(setting))  # the form it has after a round trip through the file


class EvalCache:
    """Confusion matrices of evaluated snapshots in a JSON file, found by (file name, SHA-256 of
    the file, evaluation setting): a changed file or setting is never served a stale entry.

    The file is saved after each snapshot. When that fails for a file-system fault (a full
    disk), the evaluation goes on and `fault` says why, until a later save succeeds."""

    def __init__(self, path, setting):
        self.path = Path(path)
        self.setting = setting
        self.entries = self._read()
        self.fault = None

    def _read(self):
        if not self.path.exists():
            return []
        try:
            data = json_load(self.path)
        except (OSError, ValueError) as error:
            log.warning("ignoring the unreadable test cache %s (%s)", self.path, error)
            return []
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
                not isinstance(data.get("entries"), list):
            log.warning("ignoring the test cache %s: not in format %d", self.path, CACHE_FORMAT)
            return []
        return [e for e in data["entries"] if isinstance(e, dict)]

    def lookup(self, snapshot, sha256):
        for entry in self.entries:
            if (entry.get("snapshot"), entry.get("sha256"), entry.get("setting")) == \
                    (snapshot, sha256, self.setting):
                return entry
        return None

    def store(self, snapshot, info, hist, unexpected):
        """Record a result (replacing the entry of this file under this setting) and save the file."""
        entry = {"snapshot": snapshot, "sha256": info.sha256, "layout": info.layout, "setting": self.setting,
                 "confusion_matrix": np.asarray(hist).tolist(), "unexpected_label_pixels": int(unexpected)}
        self.entries = [e for e in self.entries
                        if (e.get("snapshot"), e.get("setting")) != (snapshot, self.setting)] + [entry]
        try:
            json_dump({"format": CACHE_FORMAT, "entries": self.entries}, self.path)
            self.fault = None
        except OSError as error:
            if file_system_fault(error) is None:
                raise
            self.fault = UserError(f"cannot save the test cache: {file_system_fault(error)}")
            log.warning("%s; the evaluation goes on, the results are shown at the end", self.fault)
        return entry


def snapshot_dir_of(cfg):
    folder = Path(cfg.TEST.SNAPSHOT_DIR[0])
    if not folder.is_dir():
        raise UserError(f"snapshot folder {folder} not found (TEST.SNAPSHOT_DIR)")
    if len(cfg.TEST.MODEL) != 1:
        raise UserError(f"'best' mode evaluates one model per snapshot, but TEST.MODEL lists "
                        f"{len(cfg.TEST.MODEL)}; use 'single' mode for an ensemble")
    return folder


def available_snapshots(cfg, folder):
    """Yield (iteration, path) of the snapshots to evaluate, in order: waiting for each (WAIT_MODEL)
    or skipping the missing ones with a note; a UserError when none exists. Under torchrun every
    process waits (no collective meanwhile), then they agree; a snapshot is taken when every
    process sees it."""
    found, skipped = 0, []
    for n_iter in expected_snapshots(cfg.TEST.SNAPSHOT_STEP, cfg.TEST.SNAPSHOT_MAXITER):
        path = model_snapshot_path(folder, n_iter)
        if cfg.TEST.WAIT_MODEL:
            with same_outcome(f"the wait for {path.name}"):
                wait_for_file(path, cfg.TEST.WAIT_TIMEOUT, "TEST")
        elif not true_everywhere(path.exists()):
            skipped.append(path.name)
            continue
        found += 1
        yield n_iter, path
    if skipped:
        log.info("skipped %d missing snapshot(s) (TEST.WAIT_MODEL is False): %s",
                 len(skipped), ", ".join(skipped))
    if not found:
        step = cfg.TEST.SNAPSHOT_STEP
        raise shared_error(UserError(f"no snapshot model_<k>.pth for k = {step}, {2 * step}, ... "
                                     f"{cfg.TEST.SNAPSHOT_MAXITER} in {folder}"))


def evaluate_snapshot(model, path, cache, loader, cfg, device):
    """The cache entry of snapshot `path`: looked up by its SHA-256, else evaluated and stored.
    Returns (entry, cached). Under torchrun the main process alone holds the cache (`cache` is
    None elsewhere) and sends the entry to the others."""
    entry = broadcast_from_main(cache.lookup(path.name, file_sha256(path)) if is_main_process() else None)
    if entry is not None:
        return entry, True
    with same_outcome(f"loading {path.name}"):
        info = load_checkpoint(model, path)
    confmat = evaluate([model], loader, cfg.NUM_CLASSES, device, cfg.TEST.OUTPUT_SIZE_TARGET,
                       amp=cfg.TEST.AMP, desc=path.stem, channels_last=cfg.CHANNELS_LAST)
    hist, unexpected = confmat.hist(), confmat.unexpected_labels()  # summed over the processes
    if is_main_process():
        entry = cache.store(path.name, info, hist, unexpected)
    return broadcast_from_main(entry), False


def _miou_key(result):
    return -math.inf if result["mIoU"] is None else result["mIoU"]


def pick_best(results):
    """The result of highest mIoU (the earliest on ties)."""
    return max(results, key=_miou_key)


def eval_best(cfg, device, cfg_path="", argv=None):
    """Evaluate every expected snapshot of TEST.SNAPSHOT_DIR[0]; report the last and the best."""
    with contextlib.ExitStack() as stack:  # the predictions folder's lock, for the whole run
        with same_outcome("setup"):
            folder = snapshot_dir_of(cfg)
            if is_main_process():
                check_writable(folder, "the test cache and results")
            dataset, loader = build_test_loader(cfg, device)
            info = get_class_info(cfg, "test")
            writer = prediction_writer(cfg, folder / "predictions", info, dataset, stack)
            model = build_segmenter(cfg.TEST.MODEL[0], cfg.NUM_CLASSES, cfg.TEST.MULTI_LEVEL[0]).eval()
            model.to(device, memory_format=memory_format(cfg.CHANNELS_LAST))
            cache = None
            if is_main_process():
                cache = EvalCache(folder / CACHE_NAME, eval_setting(cfg, dataset, info))
        if writer:
            writer.share()
        results, weights = [], []
        for n_iter, path in available_snapshots(cfg, folder):
            entry, cached = evaluate_snapshot(model, path, cache, loader, cfg, device)
            weights.append(CheckpointInfo(str(path), entry["sha256"], entry.get("layout", "state_dict")))
            results.append({"snapshot": path.stem, "iteration": n_iter, "path": str(path),
                            "sha256": entry["sha256"], "cached": cached,
                            **summarize(entry["confusion_matrix"], info.names),
                            "unexpected_label_pixels": entry["unexpected_label_pixels"]})
            best = pick_best(results)
            log.info("%s: %s%s; best so far: %s (%s)", path.stem, format_miou(results[-1]),
                     " (cached)" if cached else "", best["snapshot"], format_miou(best))
        last, best = results[-1], pick_best(results)
        report_best(last, best, cfg)  # shown before any failed write is reported
        with same_outcome("saving the test cache"):
            if cache is not None and cache.fault is not None:
                raise cache.fault
        output = run_header(cfg, cfg_path, dataset, "best")
        output.update(snapshot_dir=str(folder), snapshots=results, last=last["snapshot"],
                      best=best["snapshot"], predictions=None,
                      selection=f"'best' is the {BEST_LABEL}; 'last' is the final snapshot evaluated")
        if writer:
            output["predictions"] = save_best_predictions(model, best, loader, writer, cfg, device)
        write_outputs(folder, RESULTS_BEST, output, test_record(cfg, device, weights, argv))
    return output


def report_best(last, best, cfg):
    """Per-class table of the best snapshot, then the 'last' and 'best on val' lines; warnings."""
    log.info("per class, %s:\n%s", best["snapshot"], format_summary(best))
    expected_last = expected_snapshots(cfg.TEST.SNAPSHOT_STEP, cfg.TEST.SNAPSHOT_MAXITER)[-1]
    if last["iteration"] != expected_last:
        log.info("model_%d.pth was not evaluated: 'last' is the last snapshot found", expected_last)
    log.info("last (%s): %s", last["snapshot"], format_miou(last))
    log.info("%s (%s): %s", BEST_LABEL, best["snapshot"], format_miou(best))
    warn_if_suspicious(best, last["unexpected_label_pixels"], cfg.NUM_CLASSES, what=best["snapshot"])


def save_best_predictions(model, best, loader, writer, cfg, device):
    """One more pass of the best snapshot over `loader`, writing its predictions to
    predictions/<snapshot>/ (`writer`'s folder is predictions/); returns where they are."""
    with same_outcome("loading the best snapshot"):
        load_checkpoint(model, best["path"])
    writer.subfolder = best["snapshot"]
    evaluate([model], loader, cfg.NUM_CLASSES, device, cfg.TEST.OUTPUT_SIZE_TARGET, amp=cfg.TEST.AMP,
             on_prediction=writer, desc=f"{best['snapshot']} (saving predictions)",
             channels_last=cfg.CHANNELS_LAST)
    return str(writer.finish())


def evaluate_domain_adaptation(cfg, device, cfg_path="", argv=None):
    """The test stage as cfg.TEST.MODE says; returns the results dict (also written as JSON).

    `cfg_path` is the config file (recorded, and naming the 'single' results folder); `argv`
    the command line for the run record."""
    log.info("test: mode %s, %s '%s', device %s, AMP %s", cfg.TEST.MODE, cfg.TARGET, cfg.TEST.SET_TARGET,
             device, cfg.TEST.AMP)
    if cfg.TEST.MODE == "best":
        return eval_best(cfg, device, cfg_path, argv)
    return eval_single(cfg, device, cfg_path, argv)
