"""ESL stage: the per-class confidence thresholds of ESL (entropy) and of the MPSL baseline
(maximum probability), as pure functions, plus an exact streaming selector for them.

The rule: for each class c, over the pixels predicted as c in a group
of images, sort the scores ascending and take the element at index round(n/2)
(round half to even, 0-based); an empty class gets 0. ESL raises each threshold to
at least a floor and drops a pixel whose entropy is strictly greater than its class
threshold; MPSL lowers each threshold to at most a cap and drops a pixel whose
max-probability is strictly below it. Dropped pixels become 255.
"""
import math
import threading

import torch
import torch.nn.functional as F

from advent.dataset.class_info import IGNORE_LABEL
from advent.model.inference import upsample

_BINS = 1 << 16  # one pass of the selector resolves 16 of the 32 bits of a float32
_INF_BITS = 0x7F800000  # float32 +inf: non-negative finite scores have smaller bit patterns


def normalized_entropy(prob):
    """-sum_c p ln p / ln C over dim 1 of an N x C x H x W softmax map, with 0 ln 0 = 0."""
    entropy = -torch.special.xlogy(prob, prob).sum(1) / math.log(prob.size(1))
    # -0.0 -> +0.0: the selector orders scores by their bit patterns.
    return torch.where(entropy > 0, entropy, torch.zeros_like(entropy))


def predict_with_confidence(logits, output_size, method):
    """Label (argmax) and score of each pixel of N x C x h x w logits at `output_size` (W, H).

    In the published order: the softmax at the network's resolution, then the PROBABILITIES
    are upsampled (inference.upsample), and argmax and score are taken there; the score is the
    normalised entropy ('entropy') or the maximum probability ('maxprob').
    (Upsampling the logits first gives other labels wherever a confident model's classes meet.)
    """
    prob = upsample(F.softmax(logits.float(), dim=1), output_size)
    if method == "entropy":
        return prob.argmax(1), normalized_entropy(prob)
    max_prob, label = prob.max(1)
    return label, max_prob


def ignore_padding(label, content, canvas):
    """Mark ignored (255) the pixels of `label` (an H x W array at the output size) that show a
    loader's padding, in place: `content` (h, w) is the part of the model's `canvas` (h, w) input
    that the image fills, at its top-left (Mapillary). Any output row or column the image reaches
    at all is kept."""
    height, width = label.shape
    rows = -(-int(content[0]) * height // int(canvas[0]))  # ceil
    cols = -(-int(content[1]) * width // int(canvas[1]))
    label[rows:] = IGNORE_LABEL
    label[:, cols:] = IGNORE_LABEL


def median_rank(count):
    """round(count / 2) with round half to even, for an integer tensor of counts."""
    half = count // 2
    return half + (count % 2) * (half % 2)


def finish_thresholds(kth_values, counts, method, floor=0.1, cap=0.9):
    """Thresholds from the per-class selected values: 0 for an empty class, then the floor
    (entropy: at least `floor`) or the cap (maxprob: at most `cap`)."""
    values = torch.where(counts > 0, kth_values, torch.zeros_like(kth_values))
    if method == "entropy":
        return values.clamp(min=floor)
    return values.clamp(max=cap)


def apply_thresholds(label, score, thresholds, method):
    """Pseudo-labels: `label` where the pixel is confident enough for its class, else 255 (an
    ignored label, 255, stays 255)."""
    class_threshold = thresholds[label.long().clamp(max=len(thresholds) - 1)]
    if method == "entropy":
        drop = score > class_threshold
    else:
        drop = score < class_threshold
    return torch.where(drop, torch.full_like(label, IGNORE_LABEL), label)


class PerClassSelector:
    """Exact per-class selection of the median-rank score, in memory independent of the data size.

    Scores are non-negative float32, so their bit patterns sort like their values. Pass 1
    (`count_high`) counts, per class, the high 16 bits of every score; `choose_bins` finds
    the bin holding each class's element of rank round(n/2); pass 2 (`count_low`) counts
    the low 16 bits of the scores in that bin; `kth_values` reads off the exact element.
    Memory: two C x 65536 count tables. Counts can be summed across processes between passes.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.high_counts = torch.zeros(num_classes, _BINS, dtype=torch.int64)
        self.low_counts = torch.zeros(num_classes, _BINS, dtype=torch.int64)
        self.bin = None
        self.rank_in_bin = None
        self._lock = threading.Lock()  # counting may run in several threads at once

    def _bits(self, label, score):
        """(row, bits): int32 label (classes outside [0, C) moved to the spare row C) and the
        scores' int32 bit patterns, as flat tensors. The checks are two min/max reductions, not
        masks: boolean indexing of a million-pixel map costs ten times the counting itself."""
        label = label.reshape(-1).to(torch.int32)
        bits = score.reshape(-1).float().contiguous().view(torch.int32)
        low, high = torch.aminmax(bits)
        if int(low) < 0 or int(high) >= _INF_BITS:  # negative (or -0.0), inf or NaN
            raise ValueError("scores must be finite and non-negative (+0.0, not -0.0)")
        low, high = torch.aminmax(label)
        if int(low) < 0 or int(high) >= self.num_classes:
            label = torch.where((label >= 0) & (label < self.num_classes), label, self.num_classes)
        return label, bits

    def _count(self, table, row, index):
        """Add one to table[row, index] for each pixel; the spare row C is dropped."""
        flat = torch.bincount((row << 16) | index, minlength=(self.num_classes + 1) * _BINS)
        with self._lock:
            table += flat[:self.num_classes * _BINS].view(self.num_classes, _BINS)

    def count_high(self, label, score):
        row, bits = self._bits(label, score)
        self._count(self.high_counts, row, bits >> 16)

    def counts(self):
        """Number of pixels predicted as each class (after pass 1)."""
        return self.high_counts.sum(1)

    def choose_bins(self):
        counts = self.counts()
        rank = median_rank(counts)
        cumulative = self.high_counts.cumsum(1)
        self.bin = torch.searchsorted(cumulative, rank.unsqueeze(1), right=True).squeeze(1)
        self.bin = self.bin.clamp(max=_BINS - 1)
        before = torch.gather(cumulative, 1, (self.bin - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        self.rank_in_bin = rank - torch.where(self.bin > 0, before, torch.zeros_like(before))

    def count_low(self, label, score):
        assert self.bin is not None, "choose_bins() must run between the two passes"
        row, bits = self._bits(label, score)
        bins = torch.cat([self.bin.to(torch.int32), self.bin.new_full((1,), -1, dtype=torch.int32)])
        in_bin = (bits >> 16) == bins.index_select(0, row)  # the spare row's bin -1 matches nothing
        self._count(self.low_counts, torch.where(in_bin, row, self.num_classes), bits & (_BINS - 1))

    def kth_values(self):
        """The exact element of rank round(n/2) of each class's scores (0 for an empty class)."""
        cumulative = self.low_counts.cumsum(1)
        low = torch.searchsorted(cumulative, self.rank_in_bin.unsqueeze(1), right=True).squeeze(1)
        bits = (self.bin << 16) | low.clamp(max=_BINS - 1)
        values = bits.to(torch.int32).view(torch.float32)
        return torch.where(self.counts() > 0, values, torch.zeros_like(values))
