"""What every loader shares (data stage): list files, file checks, image and label preprocessing.

An item is `(image, label, shape, name)`, as in the original ADVENT loaders:
  image  float32 C x H x W: opened, converted to RGB, resized to the input size
         (width, height) with PIL bicubic, reversed to BGR, minus the BGR mean
         (no /255, no std, no crop, no flip);
  label  uint8 H x W of train ids (255 = ignored): resized with PIL nearest to the
         label size BEFORE the ids are mapped; all 255 when the dataset has no labels
         (8 bits, not the original's int64: an eighth of the bytes between the loader's
         processes and to the GPU; the losses and the confusion matrix widen them there);
         a ground-truth file must hold only the dataset's ids (`expected_label_ids`) and be
         its image's size (unless LABEL_SIZE_MAY_DIFFER), else a UserError naming it;
  shape  np.array(image.shape): the (C, H, W) of the image content, at the top-left of the
         item's image; smaller than the image only where a loader pads it (Mapillary);
  name   the list entry.
User mistakes (missing root, list or files, undecodable files) raise a one-line UserError.
"""
import logging
import os
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils import data

from advent.dataset.class_info import IGNORE_LABEL, INFO_PATH, load_class_info
from advent.utils.errors import UserError
from advent.utils.output_dir import check_complete

log = logging.getLogger(__name__)


def read_list(list_path):
    """The non-empty, stripped lines of a split list file."""
    try:
        text = Path(list_path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"list file {list_path} not found") from None
    except IsADirectoryError:
        raise UserError(f"list file {list_path} is a folder, not a list of names") from None
    except UnicodeDecodeError:
        raise UserError(f"list file {list_path} is not a text file of names") from None
    first_line = {}  # name: its line number
    for number, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if name and first_line.setdefault(name, number) != number:  # it would count twice in every score
            raise UserError(f"list file {list_path} names {name} twice (lines {first_line[name]} and {number})")
    if not first_line:
        raise UserError(f"list file {list_path} is empty")
    return list(first_line)


def repeat_for_iters(names, max_iters):
    """The list repeated ceil(max_iters / len) times (the original's way of running max_iters items)."""
    if max_iters is None:
        return list(names)
    return list(names) * int(np.ceil(float(max_iters) / len(names)))


def missing_files(paths):
    """Those of `paths` that do not exist, found with one listing per folder rather than a stat per file."""
    listings = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(os.fspath(path))
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder or "."))
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(Path(path))
    return missing


def check_present(paths, what, list_path):
    """Raise a UserError naming the first missing file and how many are missing."""
    unique = list(dict.fromkeys(paths))
    missing = missing_files(unique)
    if missing:
        raise UserError(f"{len(missing)} of {len(unique)} {what} named in {list_path} are missing; "
                        f"first: {missing[0]}")


def png_name(name):
    """File name of every per-image PNG written for list entry `name` (pseudo-label, prediction,
    viz panel): the image's file name as a .png, 'frankfurt/frankfurt_000000_000294_leftImg8bit.png'
    -> 'frankfurt_000000_000294_leftImg8bit.png' (what cityscapesscripts' evaluation matches)."""
    return Path(name).with_suffix(".png").name


def check_png_names(names, folder):
    """A flat folder of per-image PNGs (`folder`: what it is, for the message) needs one file name
    per image: two list entries of one file name (in two cities, or x.jpg and x.png) would write
    one file. Checked before any model work."""
    seen = {}
    for name in names:
        file_name = png_name(name)
        if seen.setdefault(file_name, name) != name:
            raise UserError(f"two images share the file name {file_name} in {folder} (list entries "
                            f"{seen[file_name]} and {name}); the flat folder cannot hold both")


@contextmanager
def reading(path, what):
    """A missing or undecodable image file in the block is a one-line UserError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot decode {what} {path}: {first}") from None


def open_image(path, what="image"):
    """Open and decode an image file with PIL."""
    with reading(path, what):
        image = Image.open(path)
        image.load()
    return image


def image_size(path, what="image"):
    """(width, height) from the file header only (no decoding)."""
    with reading(path, what), Image.open(path) as image:
        return image.size


def rgb_pixels(image, size):
    """A PIL image converted to RGB, resized to `size` (width, height) bicubic, float32 H x W x 3."""
    return np.asarray(image.convert("RGB").resize(tuple(size), Image.BICUBIC), dtype=np.float32)


def preprocess(image, mean):
    """float32 RGB H x W x 3 -> BGR minus `mean` (BGR order) -> contiguous 3 x H x W."""
    image = image[:, :, ::-1] - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def open_label(path):
    """An 8-bit label image whose pixel values are ids: palette indices are read, never colours."""
    image = open_image(path, "label")
    if image.mode not in ("L", "P"):
        raise UserError(f"label {path} is a {image.mode} image; expected 8-bit ids (grayscale or palette)")
    return image


def resize_ids(image, size):
    """Nearest-neighbour resize of an id image to `size` (width, height), as a uint8 array."""
    return np.asarray(image.resize(tuple(size), Image.NEAREST), dtype=np.uint8)


class BaseDataset(data.Dataset):
    """Loader skeleton: subclasses give the layout (`get_metadata`) and, unless the label files hold
    Cityscapes label ids, the id lookup (`label_lookup`).

    The split `set` replaces '{}' in `list_path`; `max_iters` repeats the list to at least that
    many items; `crop_size` is the input size (width, height), as the original named it, and
    `labels_size` the label size (default: the input size); the class info at `info_path` must
    describe `num_classes` classes when that is given. load_labels: True (labels required), False
    (never touch a label file; labels are all 255) or 'auto' (labels when every label file of the
    list exists, else none). A non-empty `pseudo_label_dir` takes the labels from there instead:
    one 8-bit PNG of train ids per image, named `png_name(entry)`, not mapped.
    `check_files=False` skips the presence checks (check_data counts files itself).
    `has_labels` says which case holds.
    """
    SET = "all"  # the default split
    INFO_PATH = INFO_PATH
    RAW_LABEL_IDS = tuple(range(34))  # the Cityscapes label ids
    RAW_LABEL_DESCRIPTION = "Cityscapes label ids 0..33"
    LABEL_SIZE_MAY_DIFFER = False  # whether a label may differ in size from its image (GTA5)

    def __init__(self, root, list_path="", set=None, max_iters=None, crop_size=(321, 321),
                 mean=(128, 128, 128), load_labels=True, info_path=None, labels_size=None,
                 pseudo_label_dir="", num_classes=None, check_files=True):
        self.info = load_class_info(self.INFO_PATH if info_path is None else info_path, num_classes)
        self.root = Path(root)
        self.set = self.SET if set is None else set
        self.image_size = tuple(int(v) for v in crop_size)
        self.labels_size = self.image_size if labels_size is None else tuple(int(v) for v in labels_size)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.pseudo_label_dir = str(pseudo_label_dir or "")
        # '{}' stands for the split name; any other braces are the path's own
        self.list_path = str(list_path).replace("{}", self.set) if list_path else ""
        self.check_root()
        names = self.read_names()
        self.img_ids = repeat_for_iters(names, max_iters)
        unique = list(dict.fromkeys(names))
        images, labels = zip(*(self.get_metadata(n) for n in unique))
        if self.pseudo_label_dir:
            labels = [self.pseudo_label_path(n) for n in unique]
        if check_files:
            check_present(images, "images", self.list_source())
        self.has_labels = self._decide_labels(load_labels, labels, check_files)
        paths = {n: (image, label) for n, image, label in zip(unique, images, labels)}
        self.files = [(*paths[name], name) for name in self.img_ids]

    # --- layout (subclasses define get_metadata(name): (image path, ground-truth label path)) ---
    @property
    def label_lookup(self):
        """256-entry int64 table: raw label id -> train id."""
        return self.info.label2train

    @cached_property
    def train_ids(self):
        """`label_lookup` as a uint8 table (train ids and 255 fit 8 bits): raw id -> train id."""
        return self.label_lookup.astype(np.uint8)

    @property
    def num_classes(self):
        return self.info.num_classes

    def check_root(self):
        if not self.root.is_dir():
            raise UserError(f"{self.DATASET} root {self.root} not found; expected {self.LAYOUT}")

    def read_names(self):
        return read_list(self.list_path)

    def list_source(self):
        return self.list_path

    def image_path(self, name):
        return Path(self.get_metadata(name)[0])

    def gt_label_path(self, name):
        return Path(self.get_metadata(name)[1])

    def pseudo_label_path(self, name):
        return Path(self.pseudo_label_dir) / png_name(name)

    def label_path(self, name):
        """Where this dataset's labels come from: the pseudo-label folder when set, else ground truth."""
        return self.pseudo_label_path(name) if self.pseudo_label_dir else self.gt_label_path(name)

    def _decide_labels(self, load_labels, paths, check_files):
        if load_labels is False:
            return False
        if self.pseudo_label_dir:
            if not Path(self.pseudo_label_dir).is_dir():
                what = "is not a folder" if Path(self.pseudo_label_dir).exists() else "not found"
                raise UserError(f"pseudo-label folder {self.pseudo_label_dir} {what}")
            check_complete(self.pseudo_label_dir, "PSEUDO_LABEL_DIRECTORY_TARGET")
        if load_labels == "auto":
            missing = missing_files(paths)
            if missing:
                log.info("%s %s: %d of %d label files missing (first: %s); running without labels",
                         self.DATASET, self.set, len(missing), len(paths), missing[0])
            return not missing
        if check_files:
            what = "pseudo-labels" if self.pseudo_label_dir else "label files"
            check_present(paths, what, self.list_source())
        return True

    # --- items ---
    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        img_file, label_file, name = self.files[index]
        picture = open_image(img_file)
        image = self.get_image(picture)
        if not self.has_labels:
            label = np.full(self.labels_size[::-1], IGNORE_LABEL, dtype=np.uint8)
        elif self.pseudo_label_dir:
            label = self.get_pseudo_label(label_file)
        else:
            label = self.get_label(label_file, picture.size)
        return image, label, self.content_shape(picture, image), name

    def content_shape(self, picture, image):
        """The item's `shape`: (C, h, w) of the part of `image` the picture fills (all of it here)."""
        return np.array(image.shape)

    def get_image(self, picture):
        """The opened image file `picture` preprocessed at the input size."""
        return preprocess(rgb_pixels(picture, self.image_size), self.mean)

    def open_label(self, path):
        """The raw ids of a label file as an 8-bit PIL image ('L' or 'P')."""
        return open_label(path)

    def expected_label_ids(self):
        """(allowed raw values, description) of this dataset's label files."""
        if self.pseudo_label_dir:
            ids = tuple(range(self.num_classes)) + (IGNORE_LABEL,)
            return ids, f"train ids 0..{self.num_classes - 1} and 255"
        return self.RAW_LABEL_IDS, self.RAW_LABEL_DESCRIPTION

    @cached_property
    def allowed_label_ids(self):
        """256 booleans: which raw values the label files may hold (`expected_label_ids`)."""
        allowed = np.zeros(256, dtype=bool)
        allowed[list(self.expected_label_ids()[0])] = True
        return allowed

    def unexpected_label_ids(self, label):
        """The values of `label` (an opened 8-bit label image) outside `expected_label_ids`,
        ascending (from PIL's histogram: no copy of the pixels)."""
        counts = np.asarray(label.histogram()[:256])
        return np.flatnonzero((counts > 0) & ~self.allowed_label_ids)

    def checked_label(self, path, image_size):
        """The ground-truth label file at `path` opened (open_label), holding only the dataset's ids
        and fitting its image's size `image_size`; else a UserError naming it (check_data.py
        applies the same rules to a sample before a run)."""
        label = self.open_label(path)
        outside = self.unexpected_label_ids(label)
        if outside.size:
            raise UserError(f"label {path} holds values {outside[:8].tolist()} outside "
                            f"{self.expected_label_ids()[1]}")
        if label.size != tuple(image_size) and not self.LABEL_SIZE_MAY_DIFFER:
            raise UserError(f"label {path} is {label.size[0]}x{label.size[1]} pixels, its image "
                            f"{image_size[0]}x{image_size[1]}")
        return label

    def get_label(self, path, image_size):
        """The ground truth (checked against its image's size `image_size`) as train ids."""
        return self.train_ids[resize_ids(self.checked_label(path, image_size), self.labels_size)]

    def get_pseudo_label(self, path):
        """Train ids as written by esl.py: resized, not mapped; other values are a UserError."""
        label = np.array(resize_ids(open_label(path), self.labels_size))  # writable: torch warns otherwise
        bad = (label >= self.num_classes) & (label != IGNORE_LABEL)
        if bad.any():
            values = np.unique(label[bad])[:5].tolist()
            raise UserError(f"pseudo-label {path} holds values {values} outside the train ids "
                            f"0..{self.num_classes - 1} and 255")
        return label
