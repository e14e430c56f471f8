"""Class lists (data stage): names, colours and id -> train-id tables read from an info json.

An info json (cityscapes_list/info.json, info16.json, info7.json; the original ADVENT
info.json reads too) holds:
  "classes": C, "label": [C names], "palette": [C [r, g, b]],
  "label2train": [[label id, train id], ...]  (Cityscapes label ids; unlisted ids -> 255),
and optionally "mapillary_groups": {class name: [Mapillary v1.2 class names]} (the 7-class
setting; "mapillary_ignored" lists the names deliberately left out, and "note" says why).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advent.utils.errors import UserError

IGNORE_LABEL = 255
LIST_DIR = Path(__file__).resolve().parent / "cityscapes_list"
INFO_PATH = LIST_DIR / "info.json"
INFO16_PATH = LIST_DIR / "info16.json"
INFO7_PATH = LIST_DIR / "info7.json"


@dataclass(frozen=True, eq=False)
class ClassInfo:
    """The classes a model predicts and how dataset ids map onto them.

    label2train: 256-entry int64 lookup, Cityscapes label id -> train id (255 = ignored).
    train2label: int64 array, train id -> its Cityscapes label id, or None when the
        mapping is not one-to-one (7 classes): for writing Cityscapes *_labelIds.png.
    mapillary_groups: Mapillary class name -> train id ({} when the json has none).
    """
    path: str
    names: tuple
    palette: tuple
    label2train: np.ndarray
    train2label: object = None
    mapillary_groups: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.names)


def load_class_info(path, num_classes=None):
    """Read and validate an info json; `num_classes` (e.g. cfg.NUM_CLASSES) must match when given."""
    data = _read_json(path)
    names = _names(data, path)
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"class info {path} describes {len(names)} classes, "
                        f"but {num_classes} are expected (NUM_CLASSES)")
    label2train = _label2train(data, path, len(names))
    groups = data.get("mapillary_groups", {})
    return ClassInfo(
        path=str(path),
        names=names,
        palette=_palette(data, path, len(names)),
        label2train=label2train,
        train2label=_train2label(label2train, len(names)),
        mapillary_groups=_mapillary_groups(groups, names, path),
    )


def _read_json(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"class info file {path} not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"class info {path} is not a JSON text file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"class info {path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"class info {path}: expected a JSON object at the top level")
    for key in ("label", "palette", "label2train"):
        if key not in data:
            raise UserError(f"class info {path} has no '{key}' entry")
        if not isinstance(data[key], list):
            raise UserError(f"class info {path}: '{key}' must be a list")
    return data


def _names(data, path):
    names = tuple(str(name) for name in data["label"])
    declared = data.get("classes", len(names))
    if declared != len(names):
        raise UserError(f"class info {path}: 'classes' is {declared} but 'label' lists {len(names)} names")
    if len(names) < 2:
        raise UserError(f"class info {path}: needs at least 2 classes, got {len(names)}")
    return names


def _palette(data, path, num_classes):
    palette = data["palette"]
    if len(palette) != num_classes:
        raise UserError(f"class info {path}: 'palette' has {len(palette)} colours for {num_classes} classes")
    for colour in palette:
        if (not isinstance(colour, list) or len(colour) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
            raise UserError(f"class info {path}: 'palette' entries must be [r, g, b] lists of 0..255, "
                            f"got {colour!r}")
    return tuple(tuple(colour) for colour in palette)


def _label2train(data, path, num_classes):
    lookup = np.full(256, IGNORE_LABEL, dtype=np.int64)
    seen = set()
    for pair in data["label2train"]:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise UserError(f"class info {path}: 'label2train' entries must be [label id, train id] "
                            f"integers, got {pair!r}")
        label_id, train_id = pair
        if label_id in seen:
            raise UserError(f"class info {path}: 'label2train' maps label id {label_id} twice")
        seen.add(label_id)
        if label_id < 0:
            continue  # Cityscapes' license plate (-1) never occurs in an 8-bit label file
        if label_id > 255 or not (0 <= train_id < num_classes or train_id == IGNORE_LABEL):
            raise UserError(f"class info {path}: 'label2train' entry {pair!r} is out of range "
                            f"(label ids 0..255, train ids 0..{num_classes - 1} or 255)")
        lookup[label_id] = train_id
    return lookup


def _train2label(label2train, num_classes):
    """train id -> label id, when every train id comes from exactly one label id."""
    result = np.zeros(num_classes, dtype=np.int64)
    for train_id in range(num_classes):
        sources = np.flatnonzero(label2train == train_id)
        if len(sources) != 1:
            return None
        result[train_id] = sources[0]
    return result


def _mapillary_groups(groups, names, path):
    """{group name: [Mapillary names]} -> {Mapillary name: train id}."""
    result = {}
    if not isinstance(groups, dict) or not all(isinstance(m, list) for m in groups.values()):
        raise UserError(f"class info {path}: 'mapillary_groups' must map each class name to a list of "
                        f"Mapillary class names")
    for group, members in groups.items():
        if group not in names:
            raise UserError(f"class info {path}: mapillary_groups names '{group}', "
                            f"which is not one of its classes ({', '.join(names)})")
        for member in members:
            if member in result:
                raise UserError(f"class info {path}: Mapillary class '{member}' is in two groups")
            result[member] = names.index(group)
    return result
