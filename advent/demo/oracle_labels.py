"""The demo's oracle pseudo-labels (--study): target-train ground truth in the pseudo-label
format, all of it or on exactly the pixels ESL kept."""
from pathlib import Path

import numpy as np
from PIL import Image

from advent.dataset import png_name
from advent.dataset.class_info import IGNORE_LABEL
from advent.utils.errors import UserError
from advent.utils.viz_segmask import save_png


def oracle_labels(gt, kept):
    """(all, at coverage): the ground truth `gt` (train ids, 255 ignored), and the same where the
    pseudo-label map `kept` is not 255 (255 elsewhere); both uint8."""
    gt = np.asarray(gt).astype(np.uint8)
    return gt, np.where(np.asarray(kept) != IGNORE_LABEL, gt, IGNORE_LABEL).astype(np.uint8)


def write_oracle_labels(dataset, kept_dir, all_dir, coverage_dir):
    """For every image of `dataset` (the target split with its ground truth at the pseudo-labels'
    size): its ground truth as a pseudo-label in `all_dir`, and the ground truth on the pixels the
    pseudo-labels in `kept_dir` keep in `coverage_dir`, in the pseudo-label format (8-bit PNG of
    train ids, 255 ignored, png_name). Returns {folder: share of all pixels labelled}."""
    if not dataset.has_labels:
        raise UserError("the oracle pseudo-labels need the target train ground truth, and it is missing")
    folders = (Path(all_dir), Path(coverage_dir))
    labelled, pixels = np.zeros(2, np.int64), 0
    for index in range(len(dataset)):
        _, gt, _, name = dataset[index]
        with Image.open(Path(kept_dir) / png_name(name)) as image:
            kept = np.asarray(image)
        if kept.shape != gt.shape:
            raise UserError(f"pseudo-label {png_name(name)} in {kept_dir} is {kept.shape[::-1]}, "
                            f"the ground truth {gt.shape[::-1]}")
        for i, (folder, label) in enumerate(zip(folders, oracle_labels(gt, kept))):
            save_png(Image.fromarray(label), folder / png_name(name))
            labelled[i] += np.count_nonzero(label != IGNORE_LABEL)
        pixels += gt.size
    return {folder: float(count / pixels) for folder, count in zip(folders, labelled)}
