"""Pictures of segmentations: masks in class colours, input images, entropy maps, panel rows,
and `save_png`, the atomic PNG write of every per-image output (predictions, pseudo-labels, panels).

Panels are 3 x H x W float tensors in [0, 1] (what TensorBoard and torchvision's make_grid take);
`panel_row` lays several side by side with a title above each, as an H x W x 3 uint8 array.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advent.utils.func import prob_2_entropy
from advent.utils.output_dir import atomic_path

CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def colorize_mask(mask, palette=CITYSCAPES_PALETTE):
    """Return a palette ('P') PIL image of `mask`; classes beyond the palette (255 = ignore) are black."""
    flat = [value for colour in palette for value in colour]
    flat += [0] * (768 - len(flat))
    image = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="P")
    image.putpalette(flat)
    return image


def save_png(image, path, writer=None):
    """Write a PIL image as PNG through a temporary file and a rename (output_dir.atomic_path)."""
    with atomic_path(path, writer) as tmp:
        image.save(tmp, format="PNG")


def input_image(image, mean):
    """A preprocessed C x H x W image (BGR minus mean) as RGB in [0, 1]."""
    image = torch.as_tensor(image)
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)[:, None, None]
    return ((image.detach().float().cpu() + mean).flip(0) / 255).clamp(0, 1)


def mask_image(mask, palette):
    """An H x W mask of train ids (255 ignored: black) in class colours, 3 x H x W in [0, 1]."""
    mask = (mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)).astype(np.uint8)
    rgb = np.asarray(colorize_mask(mask, palette).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)


def prediction_image(logits, palette):
    """C x H x W logits -> the argmax coloured with `palette`, 3 x H x W in [0, 1]."""
    return mask_image(logits.detach().argmax(0), palette)


def softmax_entropy(logits):
    """C x H x W logits -> the normalised entropy of their softmax, H x W in [0, 1]."""
    prob = F.softmax(logits.detach().float()[None], dim=1)
    return prob_2_entropy(prob).sum(1)[0].clamp(0, 1)


def entropy_image(entropy, colormap=False):
    """An H x W normalised entropy map -> 3 x H x W in [0, 1]: grey (black 0, white 1), or with
    `colormap` OpenCV's viridis."""
    entropy = entropy.detach().float().clamp(0, 1).cpu()[None]
    if not colormap:
        return entropy.expand(3, -1, -1)
    grey = (entropy[0].numpy() * 255).round().astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)


def panel_row(panels, titles, gap=4, title_height=18):
    """Panels of one height side by side, each titled, on white: an H x W x 3 uint8 array."""
    height = panels[0].shape[1]
    assert all(p.shape[1] == height for p in panels), [p.shape for p in panels]
    width = sum(p.shape[2] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((title_height + height, width, 3), 255, np.uint8)
    x = 0
    for panel, title in zip(panels, titles):
        w = panel.shape[2]
        canvas[title_height:, x:x + w] = (panel.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        cv2.putText(canvas, title, (x + 2, title_height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        x += w + gap
    return canvas
