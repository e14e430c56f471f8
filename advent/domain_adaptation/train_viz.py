"""Training stage: progress on the console (the main losses on the progress bar) and, with
--tensorboard, on TensorBoard (tensorboardX): scalars every iteration (losses, learning rates,
discriminator accuracies) and, every TENSORBOARD_VIZRATE iterations, one image grid per domain:
the input image (mean added back, BGR -> RGB), the colourised prediction and the normalised
entropy map (black 0, white 1).
"""
from torchvision.utils import make_grid

from advent.dataset import get_class_info
from advent.utils.viz_segmask import entropy_image, input_image, prediction_image, softmax_entropy


class Monitor:
    """Reports each iteration; writes TensorBoard events when `tensorboard` (main process only)."""

    def __init__(self, cfg, tensorboard, start):
        self.cfg, self.writer, self.palette = cfg, None, None
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported here: only --tensorboard runs need it

            # purge_step (a resumed run's first step) drops the later events the interrupted run
            # left, so the curves continue without a fold
            self.writer = SummaryWriter(logdir=str(cfg.TRAIN.TENSORBOARD_LOGDIR), purge_step=start or None)
            self.palette = get_class_info(cfg, "train").palette

    def close(self):
        if self.writer is not None:
            self.writer.close()

    def report(self, bar, n_iter, metrics, batch, outputs):
        """`metrics` after `n_iter` iterations; `outputs` {domain: main logits} of `batch`."""
        bar.set_postfix({name[5:-5]: f"{value:.3g}" for name, value in metrics.items()
                         if name.startswith("loss_") and name.endswith("_main")}, refresh=False)
        if self.writer is None:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, n_iter)
        if n_iter % self.cfg.TRAIN.TENSORBOARD_VIZRATE == 0:
            for domain, logits in outputs.items():  # the first image of each batch
                panels = [input_image(batch[domain][0][0], self.cfg.TRAIN.IMG_MEAN),
                          prediction_image(logits[0], self.palette),
                          entropy_image(softmax_entropy(logits[0]))]
                self.writer.add_image(f"{domain}/image_prediction_entropy", make_grid(panels, nrow=3, padding=2),
                                      n_iter)
