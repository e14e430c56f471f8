"""Small pure helpers shared by training, ESL and evaluation (names as in the original ADVENT)."""
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F


def file_sha256(path, chunk_size=1 << 20):
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lr_poly(base_lr, i_iter, max_iter, power):
    """Poly schedule: base_lr * (1 - i_iter / max_iter) ** power."""
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def adjust_learning_rate(optimizer, i_iter, base_lr, max_iter, power):
    """Set group 0 to the poly LR and every further group (the classifiers) to 10x it."""
    lr = lr_poly(base_lr, i_iter, max_iter, power)
    optimizer.param_groups[0]["lr"] = lr
    for group in optimizer.param_groups[1:]:
        group["lr"] = 10 * lr
    return lr


def adjust_learning_rate_discriminator(optimizer, i_iter, base_lr, max_iter, power):
    """Discriminators follow the same poly schedule at their own base LR, without the 10x."""
    lr = lr_poly(base_lr, i_iter, max_iter, power)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def bce_loss(y_pred, y_label):
    """BCE-with-logits of every element of `y_pred` against the constant domain label `y_label`."""
    target = torch.full_like(y_pred, float(y_label))
    return F.binary_cross_entropy_with_logits(y_pred, target)


def prob_2_entropy(prob):
    """Weighted self-information map -p*log2(p)/log2(C), per channel (the discriminators' input)."""
    num_classes = prob.size(1)
    return -torch.mul(prob, torch.log2(prob + 1e-30)) / math.log2(num_classes)


def fast_hist(label, pred, num_classes):
    """Confusion matrix (rows: ground truth, columns: prediction) over labels in [0, num_classes),
    in numpy as the original: the reference the tests and benchmarks check metrics.ConfusionMatrix
    (which every stage counts with) against."""
    label = np.asarray(label).ravel()
    pred = np.asarray(pred).ravel()
    valid = (label >= 0) & (label < num_classes)
    index = num_classes * label[valid].astype(np.int64) + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_iu(hist):
    """IoU per class, TP / (TP + FP + FN); NaN for a class absent from both labels and predictions."""
    hist = np.asarray(hist, dtype=np.float64)
    tp = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (hist.sum(1) + hist.sum(0) - tp)
