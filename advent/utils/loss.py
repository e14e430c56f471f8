"""Segmentation losses of AdvEnt / MinEnt."""
import math

import torch
import torch.nn.functional as F


def cross_entropy_2d(predict, target):
    """Mean cross-entropy of N x C x H x W logits against N x H x W labels.

    As the original, labels >= 200 or < 0 are ignored (255 is the ignore label); a batch with no
    valid pixel gives a zero loss that still has a graph. Computed as the summed loss over the
    number of valid pixels (at least 1), so that no value is read back to the host: the GPU keeps
    its queue, and a training step can be captured in a CUDA graph.
    """
    assert predict.dim() == 4 and target.dim() == 3, (predict.shape, target.shape)
    assert predict.shape[0] == target.shape[0] and predict.shape[2:] == target.shape[1:]
    target = target.long()
    valid = (target >= 0) & (target < 200)
    target = torch.where(valid, target, torch.full_like(target, -100))
    total = F.cross_entropy(predict, target, ignore_index=-100, reduction="sum")
    return total / valid.sum().clamp(min=1)


def entropy_loss(prob):
    """Mean normalised entropy of an N x C x H x W softmax map: sum(-p log2 p) / (N H W log2 C)."""
    n, c, h, w = prob.size()
    return -torch.sum(torch.mul(prob, torch.log2(prob + 1e-30))) / (n * h * w * math.log2(c))
