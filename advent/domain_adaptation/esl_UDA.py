"""ESL stage: stream the target split through a trained model and write entropy-filtered
pseudo-labels (or max-probability-filtered ones, the MPSL baseline).

Images are processed in consecutive groups of ESL.MAX_MEDIAN_BATCH (a short last group is
just shorter). Per group, three passes over the images:
  1. model inference; each image's label and score maps are spilled to a temporary folder
     and the high bits of the scores are counted per class;
  2. the spilled maps are read back to count the low bits inside each class's chosen bin,
     which gives the exact per-class threshold (pseudo_labels.PerClassSelector);
  3. the thresholds are applied and one 8-bit PNG is written per image.
Memory does not grow with the number of images (the original held float64 maps of every
image in memory, about 25 GB for Cityscapes train). Each pass's work per image runs in
ESL.THREADS threads (utils.threads.map_in_threads: in order, a few images in flight), pass 1's
beside the model's forward of the next batch: on a GPU the host is the limit.

The output folder (PSEUDO_LABEL_DIRECTORY_TARGET) is replaced as a whole (output_dir.FolderReplacement):
the labels, the report and the run record are built in a staging folder beside it and swapped in
at once, so a crash or a kill leaves the complete previous set; esl.py holds its lock for the run
and refuses a folder holding anything it did not write (another script's output included).

Under torchrun each process runs the model over its own block of whole batches of each group
(distributed.shard_batches), spills its maps to its own folder, and the per-class count tables
are summed over the processes between the passes, so every process finds the thresholds a
single process finds; each writes its own images' labels into the shared staging folder, the
report's counts are summed too, and the main process alone writes the report and swaps the
staging folder in (after all have finished).
"""
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from advent.dataset import get_class_info, png_name
from advent.dataset.class_info import IGNORE_LABEL
from advent.domain_adaptation.metrics import ConfusionMatrix
from advent.domain_adaptation.pseudo_labels import (
    PerClassSelector, apply_thresholds, finish_thresholds, ignore_padding, predict_with_confidence,
)
from advent.model.inference import main_logits, nonfinite_images, to_model
from advent.utils.distributed import (
    get_rank, is_main_process, shard_batches, sum_over_processes,
)
from advent.utils.errors import UserError
from advent.utils.output_dir import FolderReplacement, check_creatable, writing
from advent.utils.run_record import write_run_record
from advent.utils.serialization import json_dump
from advent.utils.threads import map_in_threads
from advent.utils.viz_segmask import save_png

log = logging.getLogger(__name__)
REPORT_NAME = "esl_report.json"
OUTPUT_KEY = "PSEUDO_LABEL_DIRECTORY_TARGET"
WRITER = "esl.py"


def output_folder(output_dir):
    """The pseudo-label folder as a FolderReplacement (esl.py replaces it as a whole), after the
    checks that need no lock: the key is set, it is not a file, its parent can be made and
    written (the new set is built beside it). Nothing is made yet (the lock's `held` does)."""
    if not str(output_dir):
        raise UserError(f"{OUTPUT_KEY} is empty: set it to the folder for the pseudo-labels")
    replacement = FolderReplacement(output_dir, WRITER, OUTPUT_KEY,
                                    advice="esl.py replaces only a new, empty or own earlier label folder")
    replacement.check()
    if is_main_process():
        check_creatable(replacement.final.parent, f"the pseudo-labels ({OUTPUT_KEY} {output_dir})")
    return replacement


class MapSpill:
    """Per-image label / score / ground-truth maps of one group, kept on disk, not in memory."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir()

    def put(self, index, label, score, gt):
        """Spill one image's maps. They are written as one block of bytes: numpy's own writes to a
        file lose the cause of a failure (a full disk gives 'N requested and M written'), a
        plain write raises the OSError behind it, here naming the file (`writing`)."""
        block = io.BytesIO()
        for array in (label, score, gt):
            np.save(block, array)
        path = self.folder / f"{index}.npy"
        with writing(path), open(path, "wb") as f:
            f.write(block.getbuffer())

    def get(self, index):
        with open(self.folder / f"{index}.npy", "rb") as f:
            return tuple(np.load(f) for _ in range(3))

    def remove(self, index):
        os.remove(self.folder / f"{index}.npy")


class QualityStats:
    """Counts for the report: predicted and kept pixels per class, and with ground truth the
    confusion matrices (the test stage's) of all predictions and of the kept pseudo-labels."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.predicted = np.zeros(num_classes, np.int64)
        self.kept = np.zeros(num_classes, np.int64)
        self.all, self.kept_only = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)

    def update(self, label, pseudo, gt):
        """One image: `label` the argmax (IGNORE_LABEL on padding), `pseudo` its pseudo-label
        (IGNORE_LABEL: dropped), `gt` the ground truth or None (H x W uint8 arrays)."""
        self.predicted += np.bincount(label.ravel(), minlength=256)[:self.num_classes]
        self.kept += np.bincount(pseudo.ravel(), minlength=256)[:self.num_classes]
        if gt is not None:
            kept = pseudo != IGNORE_LABEL
            padding = label == IGNORE_LABEL  # (Mapillary): no prediction to count there
            if padding.any():
                gt = np.where(padding, np.uint8(IGNORE_LABEL), gt)
            self.all.update(torch.from_numpy(gt), torch.from_numpy(label))
            self.kept_only.update(torch.from_numpy(gt[kept]), torch.from_numpy(pseudo[kept]))

    def reduce_from_all_processes(self):
        """Sum the counts of every process (no-op with one process)."""
        self.predicted = sum_over_processes(torch.from_numpy(self.predicted)).numpy()
        self.kept = sum_over_processes(torch.from_numpy(self.kept)).numpy()
        self.all.reduce_from_all_processes()
        self.kept_only.reduce_from_all_processes()


def generate_pseudo_labels(model, dataset, cfg, output, device, record=None):
    """Write the pseudo-labels of every image of `dataset` into the folder `output` replaces (a
    FolderReplacement, held), with the report and (when given, on the main process) the run
    `record`; return the report. Every process writes its own images into one staging folder,
    swapped in once all are done."""
    esl = cfg.ESL
    stats, groups = QualityStats(cfg.NUM_CLASSES), []
    with output.staged() as staging:
        for start in range(0, len(dataset), esl.MAX_MEDIAN_BATCH):  # groups of images
            stop = min(start + esl.MAX_MEDIAN_BATCH, len(dataset))
            spill_folder = staging / f".spill-{get_rank()}"  # each process its own
            names, spill, thresholds = _threshold_group(model, dataset, range(start, stop), spill_folder,
                                                        cfg, device)
            _write_group(names, spill, thresholds, esl.METHOD, staging, stats, dataset.has_labels, esl.THREADS)
            shutil.rmtree(spill.folder)
            groups.append({"images": [start, stop], "thresholds": thresholds.tolist()})
        stats.reduce_from_all_processes()
        report = build_report(cfg, stats, groups, dataset.has_labels, len(dataset))
        if is_main_process():
            json_dump(report, staging / REPORT_NAME)
            if record is not None:
                write_run_record(staging, record)
    return report


def _threshold_group(model, dataset, indices, spill_folder, cfg, device):
    """Passes 1 and 2 over one group (this process's share of its images): spill the maps to
    `spill_folder`, select the exact per-class thresholds from the counts of all processes.
    The host work per image runs in ESL.THREADS threads, pass 1's beside the model's next batch.

    Returns the image names this process handled, their MapSpill and the thresholds."""
    esl = cfg.ESL
    names = []
    selector = PerClassSelector(cfg.NUM_CLASSES)
    spill = MapSpill(spill_folder)

    def model_maps():
        """(spill index, label, score, ground truth) of each image, in order, as numpy arrays."""
        loader = DataLoader(dataset, batch_sampler=shard_batches(indices, esl.BATCH_SIZE_TARGET),
                            num_workers=cfg.NUM_WORKERS, pin_memory=device.type == "cuda")
        desc = f"ESL images {indices.start}-{indices.stop} (model)"
        for image, gt, content, batch_names in tqdm(loader, desc=desc, disable=not is_main_process()):
            logits = main_logits(model, to_model(image, device, cfg.CHANNELS_LAST), esl.AMP)
            if nonfinite_images(logits):
                raise UserError("the model produced non-finite logits (NaN or inf): check ESL.RESTORE_FROM"
                                + ("; or try ESL.AMP 'bf16' or 'none'" if esl.AMP == "fp16" else ""))
            label, score = predict_with_confidence(logits, esl.OUTPUT_SIZE_TARGET, esl.METHOD)
            label, score = label.to(torch.uint8).cpu().numpy(), score.cpu().numpy()
            for i, name in enumerate(batch_names):
                ignore_padding(label[i], content[i, 1:], image.shape[2:])  # a no-op unless padded (Mapillary)
                gt_map = gt[i].numpy().astype(np.uint8, copy=False) if dataset.has_labels else np.zeros(0, np.uint8)
                names.append(name)
                yield len(names) - 1, label[i], score[i], gt_map

    def count_and_spill(maps):
        index, label, score, gt = maps
        selector.count_high(torch.from_numpy(label), torch.from_numpy(score))
        spill.put(index, label, score, gt)

    for _ in map_in_threads(count_and_spill, model_maps(), esl.THREADS):
        pass
    selector.high_counts = sum_over_processes(selector.high_counts)
    selector.choose_bins()

    def count_low(index):
        label, score, _ = spill.get(index)
        selector.count_low(torch.from_numpy(label), torch.from_numpy(score))

    for _ in tqdm(map_in_threads(count_low, range(len(names)), esl.THREADS), total=len(names),
                  desc="ESL thresholds", disable=not is_main_process()):
        pass
    selector.low_counts = sum_over_processes(selector.low_counts)
    return names, spill, finish_thresholds(selector.kth_values(), selector.counts(), esl.METHOD,
                                           floor=esl.THRESHOLD, cap=esl.MAXPROB_THRESHOLD)


def _write_group(names, spill, thresholds, method, folder, stats, has_labels, threads):
    """Pass 3: apply the thresholds and write one PNG per image (in `threads` threads)."""
    def write(index):
        label, score, gt = spill.get(index)
        pseudo = apply_thresholds(torch.from_numpy(label), torch.from_numpy(score), thresholds, method)
        pseudo = pseudo.numpy().astype(np.uint8)
        save_png(Image.fromarray(pseudo), folder / png_name(names[index]))
        spill.remove(index)
        return label, pseudo, gt

    for label, pseudo, gt in tqdm(map_in_threads(write, range(len(names)), threads), total=len(names),
                                  desc="ESL writing", disable=not is_main_process()):
        stats.update(label, pseudo, gt if has_labels else None)


def build_report(cfg, stats, groups, has_labels, num_images):
    """Per-class thresholds and kept fractions; with ground truth, pseudo-label accuracy and mIoU."""
    names = get_class_info(cfg, "esl").names
    thresholds = np.array([g["thresholds"] for g in groups])
    with np.errstate(divide="ignore", invalid="ignore"):
        kept_fraction = stats.kept / stats.predicted
        classes = [{"name": names[c], "threshold": float(thresholds[:, c].mean()),
                    "predicted_pixels": int(stats.predicted[c]), "kept_pixels": int(stats.kept[c]),
                    "kept_fraction": _number(kept_fraction[c])} for c in range(cfg.NUM_CLASSES)]
        report = {"method": cfg.ESL.METHOD, "images": num_images, "output_size": list(cfg.ESL.OUTPUT_SIZE_TARGET),
                  "kept_fraction": _number(stats.kept.sum() / stats.predicted.sum()),
                  "groups": groups, "classes": classes}
        if has_labels:
            hist_kept, hist_all = stats.kept_only.hist(), stats.all.hist()
            accuracy_kept = np.diag(hist_kept) / hist_kept.sum(0)
            accuracy_all = np.diag(hist_all) / hist_all.sum(0)
            iou_kept = stats.kept_only.compute()
            for c, entry in enumerate(classes):
                entry["accuracy_kept"] = _number(accuracy_kept[c])
                entry["accuracy_all"] = _number(accuracy_all[c])
                entry["iou_kept"] = _number(iou_kept[c])
            report["accuracy_kept"] = _number(np.diag(hist_kept).sum() / hist_kept.sum())
            report["accuracy_all"] = _number(np.diag(hist_all).sum() / hist_all.sum())
            report["mIoU_kept"] = _number(np.nanmean(iou_kept))
            report["mIoU_all"] = _number(np.nanmean(stats.all.compute()))
    return report


def _number(value):
    """A float for JSON, None where the quantity is undefined (0/0)."""
    value = float(value)
    return None if np.isnan(value) else value


def format_report(report):
    """The report as a table: one row per class, then the totals."""
    with_gt = "accuracy_kept" in report
    header = f"{'class':<15}{'threshold':>10}{'kept %':>9}"
    if with_gt:
        header += f"{'acc kept %':>12}{'acc all %':>11}"
    lines = [header]
    for entry in report["classes"]:
        row = f"{entry['name']:<15}{entry['threshold']:>10.4f}{_format_percent(entry['kept_fraction']):>9}"
        if with_gt:
            row += f"{_format_percent(entry['accuracy_kept']):>12}{_format_percent(entry['accuracy_all']):>11}"
        lines.append(row)
    total = f"{'all':<15}{'':>10}{_format_percent(report['kept_fraction']):>9}"
    if with_gt:
        total += f"{_format_percent(report['accuracy_kept']):>12}{_format_percent(report['accuracy_all']):>11}"
    lines.append(total)
    if with_gt:
        lines.append(f"mIoU of kept pseudo-labels = {_format_percent(report['mIoU_kept'])} "
                     f"(all predictions: {_format_percent(report['mIoU_all'])})")
    if len(report["groups"]) > 1:
        lines.append(f"thresholds: mean over {len(report['groups'])} groups (per group in {REPORT_NAME})")
    return "\n".join(lines)


def _format_percent(value):
    """A fraction as a percentage for the table, '-' where it is undefined."""
    return "-" if value is None else f"{100 * value:.2f}"
