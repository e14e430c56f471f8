"""Colour a train-id mask with a class palette (Cityscapes colours by default)."""
import numpy as np
from PIL import Image

CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def colorize_mask(mask, palette=None):
    """Return a palette ('P') PIL image of `mask`; classes beyond the palette (255 = ignore) are black."""
    palette = CITYSCAPES_PALETTE if palette is None else palette
    flat = [value for colour in palette for value in colour]
    flat += [0] * (768 - len(flat))
    image = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="P")
    image.putpalette(flat)
    return image
