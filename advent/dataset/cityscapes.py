"""Cityscapes loader (the target of GTA5/SYNTHIA -> Cityscapes; train split unlabelled, val for test).

Layout: leftImg8bit/{split}/{city}/{name}_leftImg8bit.png and
gtFine/{split}/{city}/{name}_gtFine_labelIds.png (8-bit Cityscapes label ids, mapped to train
ids by the class info's label2train). List entries are '{city}/{name}_leftImg8bit.png'.
With `pseudo_label_dir`, labels are ESL's pseudo-labels instead (train ids, not mapped).
"""
from advent.dataset.base_dataset import BaseDataset


class CityscapesDataSet(BaseDataset):
    DATASET = "Cityscapes"
    LAYOUT = ("leftImg8bit/{split}/{city}/*_leftImg8bit.png and "
              "gtFine/{split}/{city}/*_gtFine_labelIds.png")
    SET = "val"

    def get_metadata(self, name):
        image = self.root / "leftImg8bit" / self.set / name
        label = self.root / "gtFine" / self.set / name.replace("_leftImg8bit", "_gtFine_labelIds")
        return image, label
