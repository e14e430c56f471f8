"""Test stage: evaluate segmenters on the target validation set (TEST.MODE 'single' or 'best').

single  the models of TEST.RESTORE_FROM; several make an ensemble whose output is the sum of
        TEST.MODEL_WEIGHT[i] times model i's upsampled main logits (as the original).
best    every snapshot model_{k}.pth in TEST.SNAPSHOT_DIR[0], k = SNAPSHOT_STEP, 2 * SNAPSHOT_STEP,
        ... up to and including SNAPSHOT_MAXITER (checkpoint.expected_snapshots). TEST.WAIT_MODEL
        waits for the snapshot folder and the snapshots the trainer has not written yet (at most
        TEST.WAIT_TIMEOUT seconds each); otherwise missing ones are skipped. Each snapshot's
        confusion matrix is cached in <snapshot dir>/test_cache.json under its SHA-256 and every
        evaluation setting, so a re-run evaluates only what changed. Both the last snapshot and the best one are
        reported: picking the best on the validation set is an oracle selection (as the papers).

Per image, on the model's device (advent.model.inference): main logits of the INPUT_SIZE image
(under TEST.AMP autocast), upsampled in float32 to OUTPUT_SIZE, argmax, counted in a C x C
confusion matrix; only that matrix comes back to the CPU.

Outputs (eval_output.py): results_single.json (in EXP_ROOT_LOGS/test/<config name>/) or
results_best.json (in the snapshot folder), a run record and, with TEST.SAVE_PREDICTIONS,
predictions/ beside it. Every folder the run writes is checked before any model work.

Under torchrun each process evaluates its own block of whole batches (distributed.shard_batches:
no padding, no image twice), the confusion matrices are summed over the processes, so the
numbers equal a single process's, and each process writes the predictions of its own images;
the main process alone reads and writes the cache, the results and the run record.
"""
import contextlib
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from advent.dataset import get_class_info, get_target_dataset
from advent.domain_adaptation.checkpoint import (
    expected_snapshots, finished_without, model_snapshot_path, wait_for_file,
)
from advent.domain_adaptation.eval_output import (
    WRITER, EvalCache, PredictionWriter, check_predictions_folder, eval_setting, run_header, write_outputs,
)
from advent.domain_adaptation.metrics import (
    ConfusionMatrix, format_miou, format_summary, summarize, warn_if_suspicious,
)
from advent.model import load_checkpoint
from advent.model.inference import load_segmenter, main_logits, nonfinite_images, to_model, upsample
from advent.model.weights import CheckpointInfo
from advent.utils.distributed import (
    broadcast_from_main, is_main_process, join_process_group, shard_batches, sum_over_processes,
)
from advent.utils.errors import UserError
from advent.utils.func import file_sha256
from advent.utils.output_dir import check_creatable, check_names, exclusive_lock, prepare_folder
from advent.utils.serialization import json_load

log = logging.getLogger(__name__)

CACHE_NAME = "test_cache.json"
RESULTS_SINGLE = "results_single.json"
RESULTS_BEST = "results_best.json"
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
        logits = upsample(main, output_size, out)
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
        image = to_model(image, device, channels_last)
        mains = [main_logits(model, image, amp) for model in models]
        for main in mains:
            nonfinite += nonfinite_images(main)
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


def test_data(cfg, device):
    """(dataset, loader, class info) of the test split, checked (before any wait for a snapshot)."""
    dataset, loader = build_test_loader(cfg, device)
    return dataset, loader, get_class_info(cfg, "test")


def check_outputs(cfg, folder, what, names, dataset):
    """(The main process), creating nothing: `folder` (for `what`) can be made and written, the
    files `names` test.py writes there are absent or its own (the folder may hold other files: a
    training run's, the user's), and the predictions folder in it can be replaced."""
    if is_main_process():
        check_creatable(folder, what)
        check_names(folder, WRITER, names, what)
        if cfg.TEST.SAVE_PREDICTIONS:
            check_predictions_folder(Path(folder) / "predictions", dataset.img_ids)


def open_outputs(cfg, folder, what, info, stack):
    """Once the models are loaded (so that a bad checkpoint makes no folder): `folder` made (main
    process) and, with TEST.SAVE_PREDICTIONS, the PredictionWriter of its predictions folder
    (locked until `stack` closes; call its `share` once every check is done), else None."""
    if is_main_process():
        prepare_folder(folder, WRITER, what)
    return PredictionWriter(Path(folder) / "predictions", info, stack) if cfg.TEST.SAVE_PREDICTIONS else None


# --- 'single' mode ---

def load_models(cfg, device):
    """The models of TEST.RESTORE_FROM, in eval mode on `device`, and their CheckpointInfo."""
    models, infos = [], []
    test = cfg.TEST
    for i, (name, multi_level, path) in enumerate(zip(test.MODEL, test.MULTI_LEVEL, test.RESTORE_FROM)):
        if not path:
            raise UserError(f"TEST.RESTORE_FROM[{i}] is empty: 'single' mode needs a checkpoint per model")
        model, info = load_segmenter(name, cfg.NUM_CLASSES, multi_level, path, device, cfg.CHANNELS_LAST)
        models.append(model)
        infos.append(info)
    return models, infos


def check_same_config(path, cfg_path, way_out):
    """Refuse (before any work) to replace the results file `path` that another config file wrote
    (another experiment's, or another evaluation of the same run: TEST.SET_TARGET train beside
    val). `way_out` ends the message. The same config file again replaces its own results."""
    try:
        results = json_load(path)
    except (OSError, ValueError):
        return  # none, or unreadable (check_names decides whether it may be replaced)
    if not isinstance(results, dict) or results.get("mode") not in ("single", "best"):
        return  # not test.py's results: check_names refuses it, naming why
    earlier = results.get("config")
    current = str(Path(cfg_path).resolve()) if cfg_path else None
    if earlier != current:
        earlier, current = (name or "none (a call from Python)" for name in (earlier, current))
        raise UserError(f"{path} holds the results of another config file, {earlier}; test.py does not replace "
                        f"them with those of {current}: {way_out}")


def eval_single(cfg, device, cfg_path="", argv=None):
    """Evaluate the model (or the ensemble) of TEST.RESTORE_FROM; return the results dict. The
    results go to EXP_ROOT_LOGS/test/<config file name without .yml> (EXP_NAME without one)."""
    folder = Path(cfg.EXP_ROOT_LOGS) / "test" / (Path(cfg_path).stem if cfg_path else cfg.EXP_NAME)
    if is_main_process():
        check_same_config(folder / RESULTS_SINGLE, cfg_path, "give this config file another name, or move that folder")
    with contextlib.ExitStack() as stack:  # the predictions folder's lock, while it is written
        dataset, loader, info = test_data(cfg, device)
        check_outputs(cfg, folder, "the results", [RESULTS_SINGLE], dataset)
        models, infos = load_models(cfg, device)
        writer = open_outputs(cfg, folder, "the results", info, stack)
        join_process_group(device)  # every check done
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
        write_outputs(folder, RESULTS_SINGLE, results, cfg, device, infos, argv)
    return results


# --- 'best' mode ---

def snapshot_dir_of(cfg):
    """TEST.SNAPSHOT_DIR[0], checked to hold a snapshot to evaluate, or with TEST.WAIT_MODEL to
    exist: waited for (TEST.WAIT_TIMEOUT) when the trainer has not created it yet. It is never
    created here: the results and the cache go into the trainer's folder."""
    folder = Path(cfg.TEST.SNAPSHOT_DIR[0])
    if len(cfg.TEST.MODEL) != 1:
        raise UserError(f"'best' mode evaluates one model per snapshot, but TEST.MODEL lists "
                        f"{len(cfg.TEST.MODEL)}; use 'single' mode for an ensemble")
    if cfg.TEST.WAIT_MODEL:
        wait_for_file(folder, cfg.TEST.WAIT_TIMEOUT, "TEST")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"snapshot folder {folder} is a file, not a folder (TEST.SNAPSHOT_DIR)")
    if not folder.is_dir():
        raise UserError(f"snapshot folder {folder} not found (TEST.SNAPSHOT_DIR)")
    if not cfg.TEST.WAIT_MODEL and not any(model_snapshot_path(folder, n).exists() for n in tested_iterations(cfg)):
        raise no_snapshot(cfg, folder)
    return folder


def tested_iterations(cfg):
    """The iterations whose snapshots 'best' mode evaluates: SNAPSHOT_STEP, 2 x STEP, ... MAXITER."""
    return expected_snapshots(cfg.TEST.SNAPSHOT_STEP, cfg.TEST.SNAPSHOT_MAXITER)


def no_snapshot(cfg, folder):
    step = cfg.TEST.SNAPSHOT_STEP
    return UserError(f"no snapshot model_<k>.pth for k = {step}, {2 * step}, ... {cfg.TEST.SNAPSHOT_MAXITER} "
                     f"in {folder}")


def available_snapshots(cfg, folder):
    """Yield (iteration, path) of the snapshots to evaluate, in order: waiting for each (WAIT_MODEL)
    or skipping the missing ones with a note. Under torchrun every process waits (no collective
    meanwhile); without waiting, the main process's view of which exist is taken by all."""
    found, skipped = 0, []
    for n_iter in tested_iterations(cfg):
        path = model_snapshot_path(folder, n_iter)
        if cfg.TEST.WAIT_MODEL:
            wait_for_file(path, cfg.TEST.WAIT_TIMEOUT, "TEST", lambda: finished_without(folder, n_iter))
        elif not broadcast_from_main(path.exists()):
            skipped.append(path.name)
            continue
        found += 1
        yield n_iter, path
    if skipped:
        log.info("skipped %d missing snapshot(s) (TEST.WAIT_MODEL is False): %s",
                 len(skipped), ", ".join(skipped))
    if not found:  # removed since snapshot_dir_of looked
        raise no_snapshot(cfg, folder)


def evaluate_snapshot(model, path, cache, loader, cfg, device):
    """The cache entry of snapshot `path`: looked up by its SHA-256, else evaluated and stored.
    Returns (entry, cached). Under torchrun the main process alone holds the cache (`cache` is
    None elsewhere) and sends the entry to the others."""
    entry = broadcast_from_main(cache.lookup(path.name, file_sha256(path)) if is_main_process() else None)
    if entry is not None:
        return entry, True
    info = load_checkpoint(model, path)
    confmat = evaluate([model], loader, cfg.NUM_CLASSES, device, cfg.TEST.OUTPUT_SIZE_TARGET,
                       amp=cfg.TEST.AMP, desc=path.stem, channels_last=cfg.CHANNELS_LAST)
    hist, unexpected = confmat.hist(), confmat.unexpected_labels()  # summed over the processes
    if is_main_process():
        entry = cache.store(path.name, info, hist, unexpected)
    return broadcast_from_main(entry), False


def pick_best(results):
    """The result of highest mIoU (the earliest on ties)."""
    return max(results, key=lambda result: -math.inf if result["mIoU"] is None else result["mIoU"])


def check_best_config(folder, cfg_path):
    """check_same_config for 'best' mode's results in the snapshot folder."""
    check_same_config(folder / RESULTS_BEST, cfg_path, "move that file out of the folder first (its evaluations "
                      "stay in the test cache), or run that config file")


def eval_best(cfg, device, cfg_path="", argv=None):
    """Evaluate every expected snapshot of TEST.SNAPSHOT_DIR[0]; report the last and the best."""
    with contextlib.ExitStack() as stack:  # the predictions folder's lock, for the whole run
        dataset, loader, info = test_data(cfg, device)  # missing data is not waited for
        folder = snapshot_dir_of(cfg)
        what = "the test cache and results"
        check_outputs(cfg, folder, what, [CACHE_NAME, RESULTS_BEST], dataset)
        if is_main_process():
            check_best_config(folder, cfg_path)
        model, _ = load_segmenter(cfg.TEST.MODEL[0], cfg.NUM_CLASSES, cfg.TEST.MULTI_LEVEL[0], None,
                                  device, cfg.CHANNELS_LAST)  # each snapshot's weights loaded in turn
        writer = open_outputs(cfg, folder, what, info, stack)
        if is_main_process():
            stack.enter_context(exclusive_lock(folder / CACHE_NAME, WRITER))  # one test.py at a time there
            check_best_config(folder, cfg_path)  # again: no other test.py can write there now
        cache = None
        if is_main_process():
            cache = EvalCache(folder / CACHE_NAME, eval_setting(cfg, dataset, info))
        join_process_group(device)  # every check done
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
        last = results[-1]
        report_best(last, best, cfg)  # shown before any failed write is reported
        if cache is not None and cache.fault is not None:
            raise cache.fault
        output = run_header(cfg, cfg_path, dataset, "best")
        output.update(snapshot_dir=str(folder), snapshots=results, last=last["snapshot"],
                      best=best["snapshot"], predictions=None,
                      selection=f"'best' is the {BEST_LABEL}; 'last' is the final snapshot evaluated")
        if writer:
            output["predictions"] = save_best_predictions(model, best, loader, writer, cfg, device)
        write_outputs(folder, RESULTS_BEST, output, cfg, device, weights, argv)
    return output


def report_best(last, best, cfg):
    """Per-class table of the best snapshot, then the 'last' and 'best on val' lines; warnings."""
    log.info("per class, %s:\n%s", best["snapshot"], format_summary(best))
    expected_last = tested_iterations(cfg)[-1]
    if last["iteration"] != expected_last:
        log.info("model_%d.pth was not evaluated: 'last' is the last snapshot found", expected_last)
    log.info("last (%s): %s", last["snapshot"], format_miou(last))
    log.info("%s (%s): %s", BEST_LABEL, best["snapshot"], format_miou(best))
    warn_if_suspicious(best, last["unexpected_label_pixels"], cfg.NUM_CLASSES, what=best["snapshot"])


def save_best_predictions(model, best, loader, writer, cfg, device):
    """One more pass of the best snapshot over `loader`, writing its predictions to
    predictions/<snapshot>/ (`writer`'s folder is predictions/); returns where they are."""
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
