"""The one dataset factory of train.py, esl.py and test.py (data stage).

get_source_dataset(cfg)          labelled source (GTA5 or SYNTHIA) at TRAIN.INPUT_SIZE_SOURCE.
get_target_dataset(cfg, stage)   target (Cityscapes or Mapillary) for stage
    'train': no labels (unsupervised), or ESL pseudo-labels from PSEUDO_LABEL_DIRECTORY_TARGET
             at TRAIN.INPUT_SIZE_TARGET when that is set;
    'test':  ground truth required, at TEST.OUTPUT_SIZE_TARGET (Mapillary: each label at its
             native resolution, padded to the aspect ratio of TEST.INPUT_SIZE_TARGET);
    'esl':   ground truth at ESL.OUTPUT_SIZE_TARGET when every label file of the split exists
             (for the pseudo-label quality report), else none (has_labels False).
    Mapillary, 'test' and 'esl': INPUT_SIZE_TARGET and OUTPUT_SIZE_TARGET of different aspect
             ratios are refused (check_mapillary_aspect).
get_class_info(cfg, stage)       the class names / palette / id tables used by that stage.
List files: DATA_LIST_* with '{}' replaced by the split. Left at their (GTA5 / Cityscapes)
defaults, a SYNTHIA source reads the shipped synthia_list and a Mapillary target lists the
images of its split folder.
"""
import math
from pathlib import Path

from PIL import Image

from advent.config import get_default_cfg
from advent.dataset.cityscapes import CityscapesDataSet
from advent.dataset.class_info import load_class_info
from advent.dataset.gta5 import GTA5DataSet
from advent.dataset.mapillary import MapillaryDataSet
from advent.dataset.synthia import SYNDataSet
from advent.utils.errors import UserError

SOURCES = {"GTA": GTA5DataSet, "SYNTHIA": SYNDataSet}
TARGETS = {"Cityscapes": CityscapesDataSet, "Mapillary": MapillaryDataSet}
STAGES = ("train", "test", "esl")
SYNTHIA_LIST = Path(__file__).resolve().parent / "synthia_list" / "{}.txt"


def stage_section(cfg, stage):
    """cfg.TRAIN, cfg.TEST or cfg.ESL for stage 'train', 'test' or 'esl'."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return {"train": cfg.TRAIN, "test": cfg.TEST, "esl": cfg.ESL}[stage]


def source_info_path(cfg):
    return cfg.TRAIN.INFO_SOURCE or cfg.TRAIN.INFO_TARGET


def get_class_info(cfg, stage):
    """Class info of `stage` ('source', 'train', 'test' or 'esl'), checked against cfg.NUM_CLASSES."""
    path = source_info_path(cfg) if stage == "source" else stage_section(cfg, stage).INFO_TARGET
    return load_class_info(path, cfg.NUM_CLASSES)


def source_list_template(cfg):
    """DATA_LIST_SOURCE; for SYNTHIA the GTA5 default means the shipped SYNTHIA list."""
    if cfg.SOURCE == "SYNTHIA" and cfg.DATA_LIST_SOURCE == get_default_cfg().DATA_LIST_SOURCE:
        return str(SYNTHIA_LIST)
    return cfg.DATA_LIST_SOURCE


def target_list_template(cfg):
    """DATA_LIST_TARGET; for Mapillary the Cityscapes default means 'every image of the split'."""
    if cfg.TARGET == "Mapillary" and cfg.DATA_LIST_TARGET == get_default_cfg().DATA_LIST_TARGET:
        return ""
    return cfg.DATA_LIST_TARGET


def get_source_dataset(cfg, max_iters=None, check_files=True):
    """The labelled source training set."""
    return SOURCES[cfg.SOURCE](
        cfg.DATA_DIRECTORY_SOURCE, source_list_template(cfg), set=cfg.TRAIN.SET_SOURCE, max_iters=max_iters,
        crop_size=cfg.TRAIN.INPUT_SIZE_SOURCE, mean=cfg.TRAIN.IMG_MEAN, info_path=source_info_path(cfg),
        num_classes=cfg.NUM_CLASSES, check_files=check_files)


def get_target_dataset(cfg, stage, max_iters=None, check_files=True):
    """The target set of `stage` ('train', 'test' or 'esl'); see the module docstring for labels.

    `check_files=False` skips the presence checks (for check_data, which counts files itself).
    """
    section = stage_section(cfg, stage)
    if stage == "train":  # no labels, or ESL's pseudo-labels at the input size
        pseudo_dir = cfg.PSEUDO_LABEL_DIRECTORY_TARGET
        load_labels, labels_size = bool(pseudo_dir), section.INPUT_SIZE_TARGET
    else:  # ground truth at the output size: test requires it, esl uses it when complete
        pseudo_dir, labels_size = "", section.OUTPUT_SIZE_TARGET
        load_labels = True if stage == "test" else "auto"
    options = {}
    if cfg.TARGET == "Mapillary":
        options["native_labels"] = stage == "test"
        check_mapillary_aspect(cfg, stage, pseudo_dir)
    return TARGETS[cfg.TARGET](
        cfg.DATA_DIRECTORY_TARGET, target_list_template(cfg), set=section.SET_TARGET, max_iters=max_iters,
        crop_size=section.INPUT_SIZE_TARGET, mean=section.IMG_MEAN, load_labels=load_labels,
        info_path=section.INFO_TARGET, labels_size=labels_size, pseudo_label_dir=pseudo_dir,
        num_classes=cfg.NUM_CLASSES, check_files=check_files, **options)


def check_pseudo_label_aspect(input_size, pseudo_dir):
    """TRAIN.INPUT_SIZE_TARGET and the canvas of the pseudo-labels in `pseudo_dir` (one PNG's
    size: esl.py writes them all at ESL.OUTPUT_SIZE_TARGET) have one aspect ratio; no PNG, no check
    (the dataset names what is missing)."""
    first = next(Path(pseudo_dir).glob("*.png"), None) if pseudo_dir and Path(pseudo_dir).is_dir() else None
    if first is None:
        return
    with Image.open(first) as png:
        size = png.size
    if ratio(size) != ratio(input_size):
        raise UserError(f"TRAIN.INPUT_SIZE_TARGET {list(input_size)} ({ratio(input_size)}) and the pseudo-labels "
                        f"in {pseudo_dir} ({size[0]}x{size[1]}, {ratio(size)}: ESL.OUTPUT_SIZE_TARGET) differ in "
                        f"aspect ratio; on a Mapillary target image and pseudo-label would not line up")


def ratio(size):
    """'2:1' for [1024, 512]."""
    width, height = size
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def check_mapillary_aspect(cfg, stage, pseudo_dir=""):
    """Refuse input and output sizes of different aspect ratios: for 'test' and 'esl' the config's,
    for 'train' TRAIN.INPUT_SIZE_TARGET and the pseudo-labels' (esl.py's output-size canvases,
    resized to the input size).

    The image is fitted into an input-size canvas, the label padded (test, as published: to the
    output size's ratio) or fitted (ESL) into an output-size one, and the logits of the first
    stretched onto the second (or the pseudo-label onto the image's canvas): with two ratios image
    and label no longer line up."""
    if stage == "train":
        check_pseudo_label_aspect(cfg.TRAIN.INPUT_SIZE_TARGET, pseudo_dir)
        return
    section, prefix = stage_section(cfg, stage), stage.upper()
    given = ratio(section.INPUT_SIZE_TARGET), ratio(section.OUTPUT_SIZE_TARGET)
    if given[0] != given[1]:
        raise UserError(f"{prefix}.INPUT_SIZE_TARGET {list(section.INPUT_SIZE_TARGET)} ({given[0]}) and "
                        f"{prefix}.OUTPUT_SIZE_TARGET {list(section.OUTPUT_SIZE_TARGET)} ({given[1]}) differ "
                        f"in aspect ratio; a Mapillary target needs one ratio, or prediction and label do not "
                        f"line up")
