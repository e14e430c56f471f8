"""Training stage: progress on TensorBoard (tensorboardX).

Scalars every iteration (losses, learning rates, discriminator accuracies) and, every
TENSORBOARD_VIZRATE iterations, one image grid per domain: the input image (mean added back,
BGR -> RGB), the colourised prediction and the normalised entropy map (black 0, white 1).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from advent.utils.func import prob_2_entropy
from advent.utils.viz_segmask import colorize_mask


def tensorboard_writer(logdir, purge_step=None):
    """A SummaryWriter in `logdir`; `purge_step` (a resumed run's first step) drops later events
    left by the interrupted run, so the curves continue without a fold."""
    from tensorboardX import SummaryWriter  # imported here: only --tensorboard runs need it

    return SummaryWriter(logdir=str(logdir), purge_step=purge_step)


def log_scalars(writer, n_iter, metrics):
    for name, value in metrics.items():
        writer.add_scalar(f"train/{name}", value, n_iter)


def input_image(image, mean):
    """A preprocessed C x H x W image (BGR minus mean) as RGB in [0, 1]."""
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)[:, None, None]
    return ((image.detach().float().cpu() + mean).flip(0) / 255).clamp(0, 1)


def prediction_image(logits, palette):
    """C x H x W logits -> the argmax coloured with `palette`, 3 x H x W in [0, 1]."""
    mask = logits.detach().argmax(0).cpu().numpy().astype(np.uint8)
    rgb = np.asarray(colorize_mask(mask, palette).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)


def entropy_image(logits):
    """C x H x W logits -> the normalised entropy of their softmax, 3 x H x W grey in [0, 1]."""
    prob = F.softmax(logits.detach().float()[None], dim=1)
    entropy = prob_2_entropy(prob).sum(1).clamp(0, 1).cpu()
    return entropy.expand(3, -1, -1)


def log_images(writer, n_iter, domain, image, logits, palette, mean):
    """One grid for `domain` ('source' / 'target') of the first image of a batch."""
    panels = [input_image(image[0], mean), prediction_image(logits[0], palette), entropy_image(logits[0])]
    writer.add_image(f"{domain}/image_prediction_entropy", make_grid(panels, nrow=3, padding=2), n_iter)
