"""Test stage: the confusion matrix, counted on the model's device, and the mIoU reports made from it
(the ESL report counts its pseudo-label accuracy with the same matrix).

`ConfusionMatrix` follows torchvision's segmentation reference: `update` on every batch (on the
device, no synchronisation), `reduce_from_all_processes` once at the end under DDP, then
`hist()` brings the C x C counts to the CPU, the only transfer. IoU_c = TP / (TP + FP + FN)
over the labels in [0, C); mIoU is the mean over the classes with a defined IoU (nanmean), as
the original `per_class_iu` / `np.nanmean`. For the 16-class SYNTHIA setting the 13-class
mIoU (without wall, fence and pole) is reported too.
"""
import logging

import numpy as np
import torch

from advent.dataset.class_info import IGNORE_LABEL
from advent.utils.distributed import sum_over_processes
from advent.utils.func import per_class_iu

log = logging.getLogger(__name__)

MIOU13_EXCLUDED = ("wall", "fence", "pole")  # the 13-class figure of the 16-class benchmark
LOW_MIOU_PERCENT = 5.0  # below this, an evaluation more likely has a label-mapping mistake


class ConfusionMatrix:
    """C x C pixel counts (rows: ground truth, columns: prediction) accumulated on `device`.

    Ground-truth values outside [0, C) are not counted; those that are not IGNORE_LABEL (255)
    either (e.g. raw label ids that were never mapped to train ids) are counted separately,
    in `unexpected_labels()`, so a wrong label mapping can be reported.
    """

    def __init__(self, num_classes, device="cpu"):
        assert 2 <= num_classes <= 256, num_classes
        n = self.num_classes = num_classes
        self.mat = torch.zeros((n, n), dtype=torch.int64, device=device)
        self.unexpected = torch.zeros((), dtype=torch.int64, device=device)
        # label value v in -1..256 (index v + 1) -> first bin of its row: v * n for a train id,
        # n * n for the ignore label, n * n + n for any other value. Adding the prediction then
        # gives one bin per (label, prediction) pair, the two extra rows included.
        table = torch.full((258,), n * n + n, dtype=torch.int32)
        table[1:n + 1] = torch.arange(n, dtype=torch.int32) * n
        table[IGNORE_LABEL + 1] = n * n
        self._bins = table.to(device)

    def update(self, label, pred):
        """Count one batch: `label` (ground truth) and `pred` (class ids) integer tensors of one shape."""
        if label.shape != pred.shape:
            raise ValueError(f"label shape {tuple(label.shape)} != prediction shape {tuple(pred.shape)}")
        n = self.num_classes
        # Table look-up, add, bincount, in int32: no masks and no boolean indexing (which would
        # wait for the GPU); values below 0 or above 255 are clamped to -1 / 256, both "unexpected".
        index = label.reshape(-1).long().clamp(-1, 256).add_(1)
        bins = torch.take(self._bins, index)
        bins.add_(pred.reshape(-1).to(torch.int32))
        counts = torch.bincount(bins, minlength=n * n + 2 * n)
        self.mat += counts[:n * n].view(n, n)
        self.unexpected += counts[n * n + n:].sum()

    def reduce_from_all_processes(self):
        """Sum the counts of every process (a no-op with one process)."""
        self.mat = sum_over_processes(self.mat)
        self.unexpected = sum_over_processes(self.unexpected)

    def hist(self):
        """The counts as an int64 numpy array on the CPU (the one device-to-host copy)."""
        return self.mat.cpu().numpy()

    def unexpected_labels(self):
        """How many ground-truth pixels held a value outside [0, C) other than the ignore label."""
        return int(self.unexpected.item())

    def compute(self):
        """Per-class IoU (float64 numpy array; NaN for a class absent from labels and predictions)."""
        return per_class_iu(self.hist())


def miou13_indices(names):
    """Indices of the 13 classes of the 16-class benchmark, or None when `names` is not that list."""
    if len(names) != 16:
        return None
    keep = [i for i, name in enumerate(names) if name not in MIOU13_EXCLUDED]
    if len(keep) != 13:
        log.warning("16 classes without wall, fence and pole among them (%s): no 13-class mIoU",
                    ", ".join(names))
        return None
    return keep


def _percent(value):
    """100 * value as a float, None for NaN (JSON has no NaN)."""
    return None if np.isnan(value) else float(100 * value)


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    return float("nan") if np.isnan(values).all() else float(np.nanmean(values))


def summarize(hist, names):
    """{'mIoU', 'per_class': [{'name', 'IoU'}], 'labelled_pixels', and 'mIoU13' for 16 classes};
    IoUs in percent, None where undefined (a class absent from labels and predictions)."""
    iou = per_class_iu(hist)
    summary = {"mIoU": _percent(_nanmean(iou)),
               "per_class": [{"name": name, "IoU": _percent(v)} for name, v in zip(names, iou)],
               "labelled_pixels": int(np.asarray(hist).sum())}
    keep = miou13_indices(names)
    if keep is not None:
        summary["mIoU13"] = _percent(_nanmean(iou[keep]))
    return summary


def format_number(value):
    return "nan" if value is None else f"{value:.2f}"


def format_miou(summary):
    """'mIoU = xx.xx', with the 13-class figure where there is one."""
    text = f"mIoU = {format_number(summary['mIoU'])}"
    if "mIoU13" in summary:
        text += f", mIoU13 = {format_number(summary['mIoU13'])} (without {', '.join(MIOU13_EXCLUDED)})"
    return text


def format_summary(summary):
    """The mIoU line and the per-class table (name, IoU in percent), as the original printed them."""
    width = max(len(entry["name"]) for entry in summary["per_class"]) + 2
    rows = [f"{entry['name']:<{width}}{format_number(entry['IoU']):>6}" for entry in summary["per_class"]]
    return "\n".join([format_miou(summary)] + rows)


def warn_if_suspicious(summary, unexpected_labels, num_classes, what="evaluation"):
    """Log a warning when the numbers look like a label-mapping mistake; return the warnings."""
    warnings = []
    if summary["labelled_pixels"] == 0:
        warnings.append(f"{what}: no ground-truth pixel holds a train id 0..{num_classes - 1}: "
                        "the label mapping looks wrong (check TEST.INFO_TARGET and NUM_CLASSES)")
    if unexpected_labels:
        warnings.append(f"{what}: {unexpected_labels} ground-truth pixels hold values outside the train "
                        f"ids 0..{num_classes - 1} and {IGNORE_LABEL}: the label mapping looks wrong "
                        "(check TEST.INFO_TARGET, NUM_CLASSES and the dataset)")
    miou = summary["mIoU"]
    if miou is not None and miou < LOW_MIOU_PERCENT:
        warnings.append(f"{what}: mIoU = {miou:.2f} is below {LOW_MIOU_PERCENT:.0f} %: unless the model "
                        "is untrained, this looks like a label-mapping mistake (check TEST.INFO_TARGET, "
                        "NUM_CLASSES and the checkpoint)")
    for text in warnings:
        log.warning(text)
    return warnings
