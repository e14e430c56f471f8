"""Tiny datasets in the exact on-disk formats of GTA5, Cityscapes, SYNTHIA and Mapillary Vistas.

Import from a test (pytest puts tests/ on sys.path): `from fake_data import write_gta5`.
Every writer returns a `FakeSplit` (paths, list entries and the exact arrays written);
`make_fake_cfg` builds a whole configuration over fake data for end-to-end tests.

Formats written:
  GTA5        images/NNNNN.png RGB; labels/NNNNN.png 8-bit PALETTE ('P') images whose indices
              are Cityscapes label ids (their colours are not the ids).
  Cityscapes  leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png RGB;
              gtFine/{split}/{city}/..._gtFine_labelIds.png 8-bit grayscale label ids.
  SYNTHIA     RGB/NNNNNNN.png RGB; GT/LABELS/NNNNNNN.png 16-bit PNG with 3 (or 4) channels,
              the class id in R (OpenCV order B, G, R(, A)), an instance id in G.
  Mapillary   config.json ({"labels": [{"name", "readable", "color", ...}]}),
              {split}/images/*.jpg, {split}/labels/*.png palette indices into config.json.
List files are written to <root>/lists/{split}.txt (entries as the real lists).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CITYSCAPES_IDS = tuple(range(34))  # every Cityscapes label id an 8-bit label file can hold
SYNTHIA_IDS = tuple(range(23))

# The 66 classes of Mapillary Vistas v1.2, in the order of its config.json.
MAPILLARY_V12_NAMES = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb",
    "construction--barrier--fence", "construction--barrier--guard-rail",
    "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain",
    "construction--flat--curb-cut", "construction--flat--parking",
    "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building",
    "construction--structure--tunnel", "human--person", "human--rider--bicyclist",
    "human--rider--motorcyclist", "human--rider--other-rider", "marking--crosswalk-zebra",
    "marking--general", "nature--mountain", "nature--sand", "nature--sky", "nature--snow",
    "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera",
    "object--fire-hydrant", "object--junction-box", "object--mailbox", "object--manhole",
    "object--phone-booth", "object--pothole", "object--street-light", "object--support--pole",
    "object--support--traffic-sign-frame", "object--support--utility-pole", "object--traffic-light",
    "object--traffic-sign--back", "object--traffic-sign--front", "object--trash-can",
    "object--vehicle--bicycle", "object--vehicle--boat", "object--vehicle--bus",
    "object--vehicle--car", "object--vehicle--caravan", "object--vehicle--motorcycle",
    "object--vehicle--on-rails", "object--vehicle--other-vehicle", "object--vehicle--trailer",
    "object--vehicle--truck", "object--vehicle--wheeled-slow", "void--car-mount",
    "void--ego-vehicle", "void--unlabeled",
)


@dataclass
class FakeSplit:
    """What a writer put on disk. `labels[i]` holds the raw ids written for `names[i]`
    (Cityscapes label ids, SYNTHIA ids or Mapillary palette indices), full size, H x W."""
    root: Path
    split: str
    names: list
    image_paths: list
    label_paths: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    list_path: Path = None  # <root>/lists/{split}.txt, or None
    list_template: str = ""  # <root>/lists/{}.txt, the form DATA_LIST_* takes
    class_names: tuple = ()  # Mapillary: config.json names in file order


def write_list(path, names):
    """Write one entry per line; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))
    return path


def random_rgb(rng, size):
    """Random uint8 RGB pixels of `size` (width, height)."""
    width, height = size
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def random_ids(rng, size, ids):
    """A uint8 H x W map drawn from `ids` that holds every id at least once when it has room."""
    width, height = size
    ids = np.asarray(ids, dtype=np.int64)
    flat = rng.choice(ids, size=width * height)
    if len(ids) <= flat.size:
        flat[rng.permutation(flat.size)[:len(ids)]] = ids
    return flat.reshape(height, width)


def id_palette():
    """A 256-colour palette whose colours are not their indices (768 values)."""
    index = np.arange(256)
    colours = np.stack([(index * 37) % 256, 255 - index, (index * 11 + 50) % 256], 1)
    return colours.astype(np.uint8).ravel().tolist()


def save_rgb(array, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path)
    return path


def save_ids(ids, path, palette=False):
    """An 8-bit id map as a grayscale ('L') or palette ('P') PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette(id_palette())
    image.save(path)
    return path


def _names_from(names_or_count, digits):
    if isinstance(names_or_count, int):
        return [f"{i + 1:0{digits}d}.png" for i in range(names_or_count)]
    return list(names_or_count)


def write_gta5(root, names_or_count=4, size=(64, 32), seed=0, label_size=None, ids=CITYSCAPES_IDS):
    """GTA5 images/ and labels/ (palette PNGs of Cityscapes label ids) plus lists/all.txt.

    names_or_count: file names ('00001.png', ...) or how many to write.
    label_size: (width, height) of the labels when they differ from the images (as a few real ones).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    names = _names_from(names_or_count, 5)
    split = FakeSplit(root, "all", names, [])
    for name in names:
        split.image_paths.append(save_rgb(random_rgb(rng, size), root / "images" / name))
        ids_map = random_ids(rng, label_size or size, ids)
        split.label_paths.append(save_ids(ids_map, root / "labels" / name, palette=True))
        split.labels.append(ids_map)
    _add_list(split, names)
    return split


def cityscapes_names(cities=("frankfurt", "lindau"), per_city=2):
    """List entries '{city}/{city}_{seq:06d}_000019_leftImg8bit.png'."""
    return [f"{city}/{city}_{seq:06d}_000019_leftImg8bit.png" for city in cities for seq in range(per_city)]


def write_cityscapes(root, split="val", cities=("frankfurt", "lindau"), per_city=2, size=(64, 32),
                     with_labels=True, seed=0, ids=CITYSCAPES_IDS):
    """Cityscapes leftImg8bit/{split} (and gtFine/{split} labelIds when with_labels) + lists/{split}.txt."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = cityscapes_names(cities, per_city)
    result = FakeSplit(root, split, names, [])
    for name in names:
        result.image_paths.append(save_rgb(random_rgb(rng, size), root / "leftImg8bit" / split / name))
        ids_map = random_ids(rng, size, ids)
        result.labels.append(ids_map)
        if with_labels:
            label_name = name.replace("_leftImg8bit", "_gtFine_labelIds")
            result.label_paths.append(save_ids(ids_map, root / "gtFine" / split / label_name))
    _add_list(result, names)
    return result


def save_synthia_label(ids, path, channels=3, seed=0):
    """A SYNTHIA label: uint16 PNG, class id in R, a random instance id in G (OpenCV writes BGR(A))."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = ids.shape
    planes = [np.zeros((height, width), np.uint16),  # B
              rng.integers(0, 2000, size=(height, width)).astype(np.uint16),  # G: instance ids
              ids.astype(np.uint16)]  # R: class ids
    if channels == 4:
        planes.append(np.full((height, width), 65535, np.uint16))  # A
    if not cv2.imwrite(str(path), np.stack(planes, axis=2)):
        raise OSError(f"could not write {path}")
    return path


def write_synthia(root, count=3, size=(64, 32), seed=0, channels=3, ids=SYNTHIA_IDS):
    """SYNTHIA-RAND-CITYSCAPES RGB/ and GT/LABELS/ (16-bit, `channels` 3 or 4) plus lists/all.txt."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"{i:07d}.png" for i in range(count)]
    split = FakeSplit(root, "all", names, [])
    for i, name in enumerate(names):
        split.image_paths.append(save_rgb(random_rgb(rng, size), root / "RGB" / name))
        ids_map = random_ids(rng, size, ids)
        label_path = root / "GT" / "LABELS" / name
        split.label_paths.append(save_synthia_label(ids_map, label_path, channels, seed + i))
        split.labels.append(ids_map)
    _add_list(split, names)
    return split


def write_mapillary_config(root, class_names=MAPILLARY_V12_NAMES):
    """config.json listing `class_names` in that order (index = palette index of the labels)."""
    labels = [{"name": name, "readable": name.split("--")[-1].replace("-", " ").title(),
               "color": [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256], "instances": False,
               "evaluate": True} for i, name in enumerate(class_names)]
    path = Path(root) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"labels": labels}, indent=1))
    return path


def write_mapillary(root, split="validation", sizes=((64, 48), (48, 64), (80, 40)), seed=0,
                    class_names=MAPILLARY_V12_NAMES, with_labels=True):
    """Mapillary config.json, {split}/images/*.jpg and {split}/labels/*.png (palette indices).

    sizes: one (width, height) per image (mixed aspect ratios exercise the padding).
    class_names: config.json order; pass a shuffled MAPILLARY_V12_NAMES to test the by-name lookup.
    Returns a FakeSplit whose list_path is None (the loader lists {split}/images).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    write_mapillary_config(root, class_names)
    names = [f"img{i:03d}_{seed}.jpg" for i in range(len(sizes))]
    result = FakeSplit(root, split, names, [], class_names=tuple(class_names))
    for name, size in zip(names, sizes):
        image_path = root / split / "images" / name
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_rgb(rng, size), mode="RGB").save(image_path, quality=95)
        result.image_paths.append(image_path)
        ids_map = random_ids(rng, size, range(len(class_names)))
        result.labels.append(ids_map)
        if with_labels:
            label_path = root / split / "labels" / Path(name).with_suffix(".png")
            result.label_paths.append(save_ids(ids_map, label_path, palette=True))
    return result


def write_pseudo_labels(folder, names, size=(64, 32), num_classes=19, seed=0, ignore_fraction=0.2):
    """ESL pseudo-labels: one 8-bit PNG of train ids (255 = ignored) per list entry, named after
    the image's file name as a .png. Returns {entry: array written}."""
    folder, rng = Path(folder), np.random.default_rng(seed)
    written = {}
    for name in names:
        width, height = size
        label = rng.integers(0, num_classes, size=(height, width))
        label[rng.random((height, width)) < ignore_fraction] = 255
        save_ids(label, folder / Path(name).with_suffix(".png").name)
        written[name] = label
    return written


def _add_list(split, names):
    split.list_path = write_list(split.root / "lists" / f"{split.split}.txt", names)
    split.list_template = str(split.root / "lists" / "{}.txt")


def make_fake_cfg(tmp_path, source="GTA", target="Cityscapes", num_classes=19, size=(64, 32),
                  output_size=(64, 32), train_labels=True, count=4):
    """A full configuration over fake data written under tmp_path/data (experiments in tmp_path).

    Source: `count` GTA5 or SYNTHIA images. Target: Cityscapes train (labelled unless
    train_labels=False) and val, or Mapillary training/validation. All input sizes are `size`;
    TEST.OUTPUT_SIZE_TARGET is `output_size`; GPU_ID -1 (the CPU). Returns (cfg, {'source':
    FakeSplit, 'train': ..., 'val': ...}) so a test can compare with the arrays written.
    """
    from advent.config import get_default_cfg  # only the cfg helper needs advent
    from advent.dataset.class_info import INFO16_PATH, INFO7_PATH, INFO_PATH

    tmp_path = Path(tmp_path)
    cfg = get_default_cfg()
    cfg.SOURCE, cfg.TARGET, cfg.NUM_CLASSES = source, target, num_classes
    cfg.EXP_ROOT = str(tmp_path / "experiments")
    cfg.GPU_ID = -1  # the CPU, also where CUDA is visible: the tests compare runs exactly (test_cuda.py: the GPU)
    written = {"source": _write_source(cfg, tmp_path / "data", source, size, count)}
    written.update(_write_target(cfg, tmp_path / "data", target, size, train_labels, count))
    info = {19: INFO_PATH, 16: INFO16_PATH, 7: INFO7_PATH}[num_classes]
    for section in (cfg.TRAIN, cfg.TEST, cfg.ESL):
        section.INFO_TARGET = str(info)
        section.INPUT_SIZE_TARGET = tuple(size)
    cfg.TRAIN.INPUT_SIZE_SOURCE = tuple(size)
    cfg.TEST.OUTPUT_SIZE_TARGET = tuple(output_size)
    cfg.ESL.OUTPUT_SIZE_TARGET = tuple(size)
    return cfg, written


def _write_source(cfg, data_dir, source, size, count):
    if source == "GTA":
        split = write_gta5(data_dir / "GTA5", count, size=size, seed=1)
    else:
        split = write_synthia(data_dir / "SYNTHIA", count, size=size, seed=1)
    cfg.DATA_DIRECTORY_SOURCE, cfg.DATA_LIST_SOURCE = str(split.root), split.list_template
    return split


def _write_target(cfg, data_dir, target, size, train_labels, count):
    if target == "Cityscapes":
        root = data_dir / "Cityscapes"
        per_city = max(1, count // 2)
        train = write_cityscapes(root, "train", ("aachen", "bochum"), per_city, size, train_labels, seed=2)
        val = write_cityscapes(root, "val", ("frankfurt", "lindau"), per_city, size, True, seed=3)
        cfg.DATA_LIST_TARGET = train.list_template
    else:
        root = data_dir / "Mapillary"
        width, height = size
        sizes = [(width * 2, height * 2), (width, height * 2), (width * 3, height)][:max(1, count)]
        train = write_mapillary(root, "training", sizes, seed=2, with_labels=train_labels)
        val = write_mapillary(root, "validation", sizes, seed=3)
        cfg.TRAIN.SET_TARGET = cfg.ESL.SET_TARGET = "training"
        cfg.TEST.SET_TARGET = "validation"
    cfg.DATA_DIRECTORY_TARGET = str(root)
    return {"train": train, "val": val}


def write_cfg_yaml(cfg, path):
    """Save a whole configuration (e.g. from make_fake_cfg) as a YAML file a script's --cfg accepts."""
    from advent.config import cfg_to_dict
    from advent.utils.serialization import yaml_dump

    yaml_dump(cfg_to_dict(cfg), path)
    return Path(path)
