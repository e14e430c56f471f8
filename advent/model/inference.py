"""The one inference path of every stage: training's `predict`, the test stage, ESL and viz.py
build and load a segmenter, run it under AMP autocast and upsample its output with these
functions, so that they compute the same numbers. ESL upsamples the softmax PROBABILITIES
(pseudo_labels.predict_with_confidence), every other stage the logits.
"""
import torch
import torch.nn.functional as F

from advent.model import build_segmenter, load_checkpoint
from advent.model.weights import BACKBONE_ONLY_LAYOUTS, LAYOUT_NAMES
from advent.utils.errors import UserError
from advent.utils.runtime import memory_format

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, amp):
    """torch.autocast on `device`'s type for AMP setting `amp` ('none', 'bf16' or 'fp16')."""
    dtype = AMP_DTYPES[amp]
    # its cache of weights cast to half precision must not outlive a CUDA graph capture
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=not capturing)


def load_segmenter(name, num_classes, multi_level, checkpoint, device, channels_last=False):
    """(model, CheckpointInfo): segmenter `name` with the weights of `checkpoint` (none loaded
    when it is None), in eval mode on `device`, in the NHWC memory format with `channels_last`."""
    model = build_segmenter(name, num_classes, multi_level)
    info = load_checkpoint(model, checkpoint) if checkpoint is not None else None
    if info is not None and info.layout in BACKBONE_ONLY_LAYOUTS:
        # its classifiers would keep their random init: pseudo-labels and scores of noise
        raise UserError(f"{checkpoint}: {LAYOUT_NAMES[info.layout]} file, a backbone without a trained "
                        f"classifier, not a segmentation model; give a snapshot of train.py (model_N.pth)")
    model.eval().to(device, memory_format=memory_format(channels_last))
    return model, info


def to_model(images, device, channels_last=False):
    """A batch of images on `device`, in the memory format of a model loaded with `channels_last`."""
    return images.to(device, non_blocking=True, memory_format=memory_format(channels_last))


@torch.no_grad()
def main_logits(model, images, amp="none"):
    """The model's main output for `images` without gradients, the forward under autocast with
    `amp` 'bf16' or 'fp16': N x C x h x w float32 in the default memory format."""
    with autocast(images.device, amp):
        _, main = model(images)
    return main.float().contiguous()


def nonfinite_images(logits):
    """How many images of the batch hold a NaN or inf logit (a tensor on their device: no wait)."""
    return (~torch.isfinite(logits)).flatten(1).any(1).sum()


def upsample(maps, size, out=None):
    """N x C x h x w `maps` upsampled to `size` (width, height): bilinear, align_corners=True (as
    the original), in float32 and the default memory format; written into `out` when given (the
    same kernel as F.interpolate, so the same numbers)."""
    maps = maps.float().contiguous()
    height, width = int(size[1]), int(size[0])
    if out is None:
        return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=True)
    return torch.ops.aten.upsample_bilinear2d.out(maps, [height, width], True, None, None, out=out)
