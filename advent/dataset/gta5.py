"""GTA5 loader (source of the GTA5 -> Cityscapes / Mapillary benchmarks).

Layout: images/NNNNN.png (RGB) and labels/NNNNN.png, 8-bit palette PNGs whose indices are
Cityscapes label ids; the indices are read (never the colours) and mapped to train ids by
the class info's label2train (19, 16 or 7 classes). A few GTA5 images and labels differ in
size; both are resized (image to the input size, label to the label size), so this is harmless.
"""
from advent.dataset.base_dataset import BaseDataset
from advent.dataset.class_info import INFO_PATH, load_class_info


class GTA5DataSet(BaseDataset):
    DATASET = "GTA5"
    LAYOUT = "images/NNNNN.png and labels/NNNNN.png"

    def __init__(self, root, list_path, set="all", max_iters=None, crop_size=(321, 321),
                 mean=(128, 128, 128), info_path=INFO_PATH, labels_size=None, num_classes=None,
                 check_files=True):
        self.info = load_class_info(info_path, num_classes)
        super().__init__(root, list_path, set, max_iters, crop_size, labels_size, mean,
                         load_labels=True, check_files=check_files)

    def get_metadata(self, name):
        return self.root / "images" / name, self.root / "labels" / name

    @property
    def label_lookup(self):
        return self.info.label2train
