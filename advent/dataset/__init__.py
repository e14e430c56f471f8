"""Dataset loaders (GTA5, SYNTHIA, Cityscapes, Mapillary), class info and the shared factory."""
from advent.dataset.base_dataset import pseudo_label_name
from advent.dataset.cityscapes import CityscapesDataSet
from advent.dataset.class_info import ClassInfo, load_class_info
from advent.dataset.factory import get_class_info, get_source_dataset, get_target_dataset
from advent.dataset.gta5 import GTA5DataSet
from advent.dataset.mapillary import MapillaryDataSet
from advent.dataset.synthia import SYNDataSet

__all__ = [
    "CityscapesDataSet", "ClassInfo", "GTA5DataSet", "MapillaryDataSet", "SYNDataSet",
    "get_class_info", "get_source_dataset", "get_target_dataset", "load_class_info",
    "pseudo_label_name",
]
