"""GTA5 loader (source of the GTA5 -> Cityscapes / Mapillary benchmarks).

Layout: images/NNNNN.png (RGB) and labels/NNNNN.png, 8-bit palette PNGs whose indices are
Cityscapes label ids; the indices are read (never the colours) and mapped to train ids by
the class info's label2train (19, 16 or 7 classes). A few GTA5 images and labels differ in
size; both are resized (image to the input size, label to the label size), so this is harmless.
"""
from advent.dataset.base_dataset import BaseDataset


class GTA5DataSet(BaseDataset):
    DATASET = "GTA5"
    LAYOUT = "images/NNNNN.png and labels/NNNNN.png"
    LABEL_SIZE_MAY_DIFFER = True  # both are resized

    def get_metadata(self, name):
        return self.root / "images" / name, self.root / "labels" / name
