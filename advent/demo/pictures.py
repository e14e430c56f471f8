"""The demo's pictures: image | ground truth | each model's prediction (as test.py saved it) for a
few target val images, and image | ground truth | the ESL and MPSL pseudo-labels for a few target
train images, in <out>/pictures/."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advent.dataset import get_class_info, get_target_dataset, png_name
from advent.demo.configs import ORACLES
from advent.utils.viz_segmask import input_image, mask_image, panel_row

NUM_PICTURES = 4
PICTURE_SCALE = 2


def colour_file(path):
    """A colour PNG written by test.py as a 3 x H x W float tensor in [0, 1]."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)


def enlarge(panel):
    return F.interpolate(panel[None], scale_factor=PICTURE_SCALE, mode="nearest")[0]


def save_row(panels, titles, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel_row([enlarge(p) for p in panels], titles)).save(path)
    return path


def picked(count, total):
    """`count` indices spread over range(total)."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


def picture_rows(demo, split, mean, prefix, extra_panels):
    """For a few target images of `split` ('test': val, 'esl': train): image | ground truth |
    the (panel, title) pairs of extra_panels(name, palette); one PNG each, named prefix_<image>."""
    cfg = demo.cfgs["esl"]
    dataset = get_target_dataset(cfg, split)  # with the ground truth, which only the pictures use
    palette = get_class_info(cfg, split).palette
    paths = []
    for index in picked(NUM_PICTURES, len(dataset)):
        image, label, _, name = dataset[index]
        panels, titles = [input_image(image, mean), mask_image(label, palette)], ["image", "ground truth"]
        for panel, title in extra_panels(name, palette):
            panels.append(panel)
            titles.append(title)
        paths.append(save_row(panels, titles, demo.work / "pictures" / f"{prefix}_{png_name(name)}"))
    return paths


def write_pictures(demo):
    """Target val: each model's prediction (as test.py saved it); target train: the ESL and MPSL
    pseudo-labels (black: dropped); the oracles' are the ground truth shown."""
    def predictions(name, palette):
        for key, entry in demo.results["models"].items():
            folder = Path(demo.cfgs[key].TEST.SNAPSHOT_DIR[0]) / "predictions" / Path(entry["snapshot"]).stem
            yield colour_file(folder / "color" / png_name(name)), entry["name"]

    def pseudo_labels(name, palette):
        for key, entry in demo.results["pseudo_labels"].items():
            if key in ORACLES:
                continue
            pseudo = Image.open(Path(demo.cfgs[key].PSEUDO_LABEL_DIRECTORY_TARGET) / png_name(name))
            yield mask_image(np.asarray(pseudo), palette), f"{entry['name']} label"

    cfg = demo.cfgs["esl"]
    return (picture_rows(demo, "test", cfg.TEST.IMG_MEAN, "val", predictions)
            + picture_rows(demo, "esl", cfg.ESL.IMG_MEAN, "train", pseudo_labels))
