"""SYNTHIA-RAND-CITYSCAPES loader (source of the SYNTHIA -> Cityscapes benchmark, 16 classes).

Layout: RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png. A label file is a 16-bit multi-channel PNG
whose R channel holds the SYNTHIA class id; OpenCV (IMREAD_UNCHANGED) returns B, G, R(, A), so
the id is channel 2: the last channel of a 3-channel file (of a 4-channel one the last is alpha).
SYNTHIA ids are first translated to Cityscapes label ids by a fixed table, then mapped by the
same class info as GTA5 and Cityscapes, so 19, 16 and 7 classes all follow from the info json
(e.g. 16 classes: SYNTHIA terrain 16, truck 18 and train 20 are dropped, the rest renumbered).
"""
import os
from functools import cached_property

import cv2
import numpy as np
from PIL import Image

from advent.dataset.base_dataset import BaseDataset
from advent.dataset.class_info import IGNORE_LABEL
from advent.utils.errors import UserError

# SYNTHIA class id -> Cityscapes label id (SYNTHIA id -> 19 train ids, composed with
# Cityscapes' label id -> train id). Ids 0 void, 13 parking-slot, 14 road-work and
# 22 lanemarking have no train class and stay unmapped (-> 255).
SYNTHIA_TO_CITYSCAPES_ID = {
    3: 7, 4: 8, 2: 11, 21: 12, 5: 13, 7: 17, 15: 19, 9: 20, 6: 21, 16: 22,
    1: 23, 10: 24, 17: 25, 8: 26, 18: 27, 19: 28, 20: 31, 12: 32, 11: 33,
}


def synthia_lookup(label2train):
    """256-entry table: SYNTHIA class id -> train id under the given Cityscapes label2train."""
    lookup = np.full(256, IGNORE_LABEL, dtype=np.int64)
    for synthia_id, cityscapes_id in SYNTHIA_TO_CITYSCAPES_ID.items():
        lookup[synthia_id] = label2train[cityscapes_id]
    return lookup


def read_synthia_ids(path):
    """The class-id channel of a SYNTHIA label file, as uint16 H x W."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        if not os.path.exists(path):
            raise UserError(f"label {path} not found")
        raise UserError(f"cannot decode label {path} with OpenCV")
    if array.ndim == 3:
        return array[:, :, 2] if array.shape[2] >= 3 else array[:, :, 0]
    return array


class SYNDataSet(BaseDataset):
    DATASET = "SYNTHIA"
    LAYOUT = "RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png"
    RAW_LABEL_IDS = tuple(range(23))
    RAW_LABEL_DESCRIPTION = "SYNTHIA class ids 0..22"

    def get_metadata(self, name):
        return self.root / "RGB" / name, self.root / "GT" / "LABELS" / name

    @cached_property
    def label_lookup(self):
        return synthia_lookup(self.info.label2train)

    def open_label(self, path):
        """The id channel as an 8-bit PIL image, so all loaders share PIL's nearest resize.

        Ids above 255 (none exist: SYNTHIA has 23 classes) become 255, i.e. ignored.
        """
        ids = np.minimum(read_synthia_ids(path), IGNORE_LABEL).astype(np.uint8)
        return Image.fromarray(ids, mode="L")
