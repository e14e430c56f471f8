"""Cityscapes loader (the target of GTA5/SYNTHIA -> Cityscapes; train split unlabelled, val for test).

Layout: leftImg8bit/{split}/{city}/{name}_leftImg8bit.png and
gtFine/{split}/{city}/{name}_gtFine_labelIds.png (8-bit Cityscapes label ids, mapped to train
ids by the class info's label2train). List entries are '{city}/{name}_leftImg8bit.png'.
With `pseudo_label_dir`, labels are ESL's pseudo-labels instead (train ids, not mapped).
"""
from advent.dataset.base_dataset import BaseDataset
from advent.dataset.class_info import INFO_PATH, load_class_info


class CityscapesDataSet(BaseDataset):
    DATASET = "Cityscapes"
    LAYOUT = ("leftImg8bit/{split}/{city}/*_leftImg8bit.png and "
              "gtFine/{split}/{city}/*_gtFine_labelIds.png")

    def __init__(self, root, list_path, set="val", max_iters=None, crop_size=(321, 321),
                 mean=(128, 128, 128), load_labels=True, info_path=INFO_PATH, labels_size=None,
                 pseudo_label_dir="", num_classes=None, check_files=True):
        self.info = load_class_info(info_path, num_classes)
        super().__init__(root, list_path, set, max_iters, crop_size, labels_size, mean,
                         load_labels=load_labels, pseudo_label_dir=pseudo_label_dir,
                         check_files=check_files)

    def get_metadata(self, name):
        image = self.root / "leftImg8bit" / self.set / name
        label = self.root / "gtFine" / self.set / name.replace("_leftImg8bit", "_gtFine_labelIds")
        return image, label

    @property
    def label_lookup(self):
        return self.info.label2train
