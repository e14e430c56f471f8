"""Mapillary Vistas v1.2 loader (the target of the 7-class GTA5/SYNTHIA -> Mapillary setting).

Layout: config.json (`{"labels": [{"name": ..., "readable": ..., "color": [r, g, b]}, ...]}`;
the position in that list is the palette index used in the label files),
{split}/images/*.jpg and {split}/labels/*.png (8-bit palette indices). Without a list file the
split is every image of {split}/images, sorted. Class names are grouped into the model's
classes by the class info's `mapillary_groups` (info7.json), looked up BY NAME, so any class
order in config.json maps correctly; unlisted names are ignored (255).

Images differ in size and aspect ratio, so, as the original, an image is resized keeping its
aspect ratio to fit inside the input size (bicubic; the size computed in floating point as
published, see fit_size), placed at the top-left of the input-size canvas and padded with black
BEFORE the mean is subtracted (padded pixels are -mean, as published). Labels (255 = ignored
padding), as the original:
  native_labels=True (the test stage): each label keeps its native resolution and is only padded
      at the right or bottom to the aspect ratio of the input size, so labels differ in size per
      image and the evaluation upsamples the logits to each label's size;
  otherwise: resized keeping the aspect ratio inside the label size (nearest) and padded to it.
Pseudo-labels, written on the padded canvas by esl.py (255 on the padding: an item's `shape` is
the fitted image's, which esl.py reads), are only resized. The padded canvases
line up only for input and label sizes of one aspect ratio: the factory refuses others for the
test and ESL stages.
"""
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from advent.dataset.base_dataset import BaseDataset, preprocess, read_list, resize_ids, rgb_pixels
from advent.dataset.class_info import IGNORE_LABEL, INFO7_PATH
from advent.utils.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def fit_size(size, box):
    """The (width, height) of `size` scaled to fit inside `box`, as the published code computes it:
    one floating-point scale (the smaller of box / size per side), each side floor(side * scale).

    Deliberately not exact arithmetic (fidelity): where the float product lands just below an
    integer the side comes out one pixel short, e.g. 98x49 into 128x64 is 127x63
    (98 * (128 / 98) = 127.99999999999999), not 128x64."""
    (width, height), (box_width, box_height) = size, box
    scale = min(box_width / width, box_height / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def padded_size(size, shape):
    """The smallest (width, height) of `shape`'s aspect ratio that holds `size` at its top-left:
    one side is kept, the other lengthened (floor, as the original)."""
    (width, height), (shape_width, shape_height) = size, shape
    if width * shape_height < shape_width * height:  # narrower than `shape`: widen
        return shape_width * height // shape_height, height
    return width, width * shape_height // shape_width


def pad_to(array, size, fill):
    """Place `array` (h x w [x ..]) at the top-left of an H x W [x ..] canvas filled with `fill`."""
    width, height = size
    canvas = np.full((height, width) + array.shape[2:], fill, dtype=array.dtype)
    canvas[:array.shape[0], :array.shape[1]] = array
    return canvas


def read_mapillary_labels(root):
    """The 'labels' list of the dataset's config.json."""
    path = Path(root) / "config.json"
    try:
        labels = json.loads(path.read_text())["labels"]
    except FileNotFoundError:
        raise UserError(f"Mapillary class list {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError, KeyError, TypeError):
        raise UserError(f"{path}: expected a JSON object with a 'labels' list") from None
    if not isinstance(labels, list) or not all(isinstance(e, dict) and "name" in e for e in labels):
        raise UserError(f"{path}: every entry of 'labels' must be an object with a 'name'")
    if len(labels) > 256:
        raise UserError(f"{path}: {len(labels)} classes do not fit 8-bit label files")
    return labels


def mapillary_lookup(labels, info, root):
    """256-entry table: palette index -> train id, by class name; unknown names -> 255."""
    lookup = np.full(256, IGNORE_LABEL, dtype=np.int64)
    for index, entry in enumerate(labels):
        lookup[index] = info.mapillary_groups.get(entry["name"], IGNORE_LABEL)
    if (lookup == IGNORE_LABEL).all():
        raise UserError(f"{Path(root) / 'config.json'}: none of its class names is grouped by {info.path}")
    return lookup


class MapillaryDataSet(BaseDataset):
    DATASET = "Mapillary"
    LAYOUT = "config.json, {split}/images/*.jpg and {split}/labels/*.png"
    SET = "validation"
    INFO_PATH = INFO7_PATH

    def __init__(self, *args, native_labels=False, **kwargs):
        self.native_labels = bool(native_labels)
        super().__init__(*args, **kwargs)
        if self.has_labels and not self.pseudo_label_dir:
            self.label_lookup  # reads config.json now: a missing or bad one stops before any batch

    def check_root(self):
        """Before any file: the class info must group Mapillary's classes; then the root."""
        if not self.info.mapillary_groups:
            raise UserError(f"class info {self.info.path} has no 'mapillary_groups'; the Mapillary target "
                            f"needs one, e.g. {INFO7_PATH}")
        super().check_root()

    def read_names(self):
        if self.list_path:
            return read_list(self.list_path)
        folder = self.root / self.set / "images"
        try:
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
        except (FileNotFoundError, NotADirectoryError):
            raise UserError(f"Mapillary split folder {folder} not found; expected {self.LAYOUT}") from None
        if not names:
            raise UserError(f"Mapillary split folder {folder} holds no image")
        return names

    def list_source(self):
        return self.list_path or str(self.root / self.set / "images")

    def get_metadata(self, name):
        split = self.root / self.set
        return split / "images" / name, split / "labels" / Path(name).with_suffix(".png")

    @cached_property
    def label_lookup(self):
        return mapillary_lookup(read_mapillary_labels(self.root), self.info, self.root)

    def expected_label_ids(self):
        if self.pseudo_label_dir:
            return super().expected_label_ids()
        count = len(read_mapillary_labels(self.root))
        return tuple(range(count)), f"the {count} class indices of config.json"

    def content_shape(self, picture, image):
        width, height = fit_size(picture.size, self.image_size)
        return np.array((image.shape[0], height, width))

    def get_image(self, picture):
        pixels = rgb_pixels(picture, fit_size(picture.size, self.image_size))
        return preprocess(pad_to(pixels, self.image_size, 0.0), self.mean)  # black, then minus mean

    def get_label(self, path, image_size):
        image = self.checked_label(path, image_size)
        if self.native_labels:
            ids, size = np.asarray(image, dtype=np.uint8), padded_size(image.size, self.image_size)
        else:
            ids, size = resize_ids(image, fit_size(image.size, self.labels_size)), self.labels_size
        return pad_to(self.train_ids[ids], size, IGNORE_LABEL)
