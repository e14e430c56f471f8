"""Dataset loaders (GTA5, SYNTHIA, Cityscapes, Mapillary), class info and the shared factory."""
from advent.dataset.base_dataset import check_png_names, png_name
from advent.dataset.factory import get_class_info, get_source_dataset, get_target_dataset

__all__ = ["get_class_info", "get_source_dataset", "get_target_dataset", "check_png_names", "png_name"]
