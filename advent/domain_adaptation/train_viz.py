"""Training stage: progress on TensorBoard (tensorboardX).

Scalars every iteration (losses, learning rates, discriminator accuracies) and, every
TENSORBOARD_VIZRATE iterations, one image grid per domain: the input image (mean added back,
BGR -> RGB), the colourised prediction and the normalised entropy map (black 0, white 1).
"""
from torchvision.utils import make_grid

from advent.utils.viz_segmask import entropy_image, input_image, prediction_image


def tensorboard_writer(logdir, purge_step=None):
    """A SummaryWriter in `logdir`; `purge_step` (a resumed run's first step) drops later events
    left by the interrupted run, so the curves continue without a fold."""
    from tensorboardX import SummaryWriter  # imported here: only --tensorboard runs need it

    return SummaryWriter(logdir=str(logdir), purge_step=purge_step)


def log_scalars(writer, n_iter, metrics):
    for name, value in metrics.items():
        writer.add_scalar(f"train/{name}", value, n_iter)


def log_images(writer, n_iter, domain, image, logits, palette, mean):
    """One grid for `domain` ('source' / 'target') of the first image of a batch."""
    panels = [input_image(image[0], mean), prediction_image(logits[0], palette), entropy_image(logits[0])]
    writer.add_image(f"{domain}/image_prediction_entropy", make_grid(panels, nrow=3, padding=2), n_iter)
