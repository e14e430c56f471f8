"""Networks, weight loading and optimisers of the segmenter (DeepLab-v2) and the discriminators."""
from advent.model.deeplabv2 import build_segmenter, get_deeplab_v2
from advent.model.discriminator import get_fc_discriminator
from advent.model.optim import discriminator_optimizer, segmenter_optimizer
from advent.model.weights import load_checkpoint

__all__ = ["build_segmenter", "get_deeplab_v2", "get_fc_discriminator", "discriminator_optimizer",
           "segmenter_optimizer", "load_checkpoint"]
