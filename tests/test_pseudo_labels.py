"""ESL / MPSL thresholds against a direct statement of the published rule (sort, index round(n/2))."""
import math

import numpy as np
import pytest
import torch

from advent.domain_adaptation.pseudo_labels import (
    PerClassSelector, apply_thresholds, finish_thresholds, ignore_padding, median_rank, normalized_entropy,
    predict_with_confidence,
)


def reference_thresholds(labels, scores, num_classes, method, floor=0.1, cap=0.9):
    """The published rule, literally: sort each class's scores, take index round(n/2), floor or cap."""
    thresholds = []
    for c in range(num_classes):
        values = np.sort(scores[labels == c])
        value = float(values[round(len(values) / 2)]) if len(values) else 0.0
        thresholds.append(max(value, floor) if method == "entropy" else min(value, cap))
    return np.array(thresholds, dtype=np.float32)


def reference_pseudo_labels(labels, scores, thresholds, method):
    drop = scores > thresholds[labels] if method == "entropy" else scores < thresholds[labels]
    return np.where(drop, 255, labels)


def select(labels, scores, num_classes, batches=1):
    """Run the two-pass selector, feeding the maps in `batches` chunks as a stream would."""
    selector = PerClassSelector(num_classes)
    chunks = list(zip(np.array_split(labels, batches), np.array_split(scores, batches)))
    for lab, sco in chunks:
        selector.count_high(torch.from_numpy(lab), torch.from_numpy(sco))
    selector.choose_bins()
    for lab, sco in chunks:
        selector.count_low(torch.from_numpy(lab), torch.from_numpy(sco))
    return selector.kth_values(), selector.counts()


def random_softmax(seed, n=3, c=5, h=17, w=23, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, c, h, w, generator=generator), dim=1)


def test_median_rank_rounds_half_to_even():
    counts = torch.arange(0, 40)
    assert median_rank(counts).tolist() == [round(n / 2) for n in range(40)]
    big = torch.tensor([6_000_000_001, 6_000_000_003])
    assert median_rank(big).tolist() == [round(6_000_000_001 / 2), round(6_000_000_003 / 2)]


def test_entropy_uniform_one_hot_and_two_class():
    assert torch.allclose(normalized_entropy(torch.full((1, 4, 2, 2), 0.25)), torch.ones(1, 2, 2))
    one_hot = torch.zeros(1, 4, 1, 2)
    one_hot[0, 1, 0, 0] = one_hot[0, 3, 0, 1] = 1
    entropy = normalized_entropy(one_hot)
    assert torch.equal(entropy, torch.zeros(1, 1, 2))
    assert not torch.signbit(entropy).any()  # +0.0, never -0.0
    prob = torch.tensor([0.2, 0.8, 0.0]).view(1, 3, 1, 1)
    expected = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)) / math.log(3)
    assert normalized_entropy(prob).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["entropy", "maxprob"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_and_labels_equal_reference_on_random_softmax(method, seed):
    prob = random_softmax(seed)
    logits = torch.log(prob)
    label, score = predict_with_confidence(logits, (23, 17), method)
    labels, scores = label.numpy(), score.numpy()
    kth, counts = select(labels, scores, 5, batches=3)
    thresholds = finish_thresholds(kth, counts, method)
    expected = reference_thresholds(labels, scores, 5, method)
    np.testing.assert_array_equal(thresholds.numpy(), expected)
    pseudo = apply_thresholds(label, score, thresholds, method).numpy()
    np.testing.assert_array_equal(pseudo, reference_pseudo_labels(labels, scores, expected, method))
    assert 0 < (pseudo == 255).mean() < 1


@pytest.mark.parametrize("method", ["entropy", "maxprob"])
def test_ties_empty_classes_and_one_hot_pixels(method):
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 2, 3], size=4001)  # classes 1 and 4 empty
    scores = rng.choice(np.float32([0.0, 0.25, 0.5, 0.75]), size=4001).astype(np.float32)  # many ties
    scores[labels == 3] = 0.0  # a class made only of one-hot (zero-entropy) pixels
    kth, counts = select(labels, scores, 5, batches=4)
    thresholds = finish_thresholds(kth, counts, method)
    np.testing.assert_array_equal(thresholds.numpy(), reference_thresholds(labels, scores, 5, method))
    assert counts[1] == counts[4] == 0
    expected_empty = 0.1 if method == "entropy" else 0.0
    assert thresholds[1].item() == pytest.approx(expected_empty)


def test_odd_counts_pick_the_half_to_even_index():
    # 5 pixels of class 0: round(2.5) = 2 -> third smallest; 7 of class 1: round(3.5) = 4 -> fifth.
    labels = np.array([0] * 5 + [1] * 7)
    scores = np.float32([0.9, 0.5, 0.7, 0.6, 0.8] + [0.2, 0.7, 0.3, 0.4, 0.9, 0.5, 0.6])
    kth, counts = select(labels, scores, 2)
    assert kth.tolist() == pytest.approx([0.7, 0.6])
    assert counts.tolist() == [5, 7]


def test_scores_adjacent_in_bits_are_told_apart():
    base = np.float32(0.3)
    neighbours = np.nextafter(np.nextafter(base, np.float32(1)), np.float32(1))
    scores = np.array([base, np.nextafter(base, np.float32(1)), neighbours], dtype=np.float32)
    kth, _ = select(np.zeros(3, dtype=np.int64), scores, 1)
    assert kth.item() == scores[2]  # round(1.5) = 2: the largest of three neighbours


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_labels_outside_classes_are_not_counted(dtype):
    labels = np.array([0, 255, 0, 7, 1, 2], dtype=dtype)
    if dtype == np.int64:
        labels[3] = -1
    scores = np.float32([0.2, 0.0, 0.4, 0.9, 0.6, 0.1])
    kth, counts = select(labels, scores, 2)
    assert counts.tolist() == [2, 1] and kth.tolist() == [pytest.approx(0.4), pytest.approx(0.6)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-30, -0.0])
def test_selector_rejects_scores_that_do_not_sort_by_their_bits(bad):
    selector = PerClassSelector(2)
    with pytest.raises(ValueError, match="finite and non-negative"):
        selector.count_high(torch.tensor([0, 1]), torch.tensor([0.1, bad]))


def test_floor_and_cap_and_strict_comparisons():
    label = torch.tensor([0, 0, 1, 1])
    thresholds = finish_thresholds(torch.tensor([0.05, 0.3]), torch.tensor([2, 2]), "entropy")
    assert thresholds.tolist() == pytest.approx([0.1, 0.3])
    entropy = torch.tensor([0.1, 0.1000001, 0.3, 0.31])
    assert apply_thresholds(label, entropy, thresholds, "entropy").tolist() == [0, 255, 1, 255]
    caps = finish_thresholds(torch.tensor([0.95, 0.5]), torch.tensor([2, 2]), "maxprob")
    assert caps.tolist() == pytest.approx([0.9, 0.5])
    max_prob = torch.tensor([0.9, 0.89, 0.5, 0.49])
    assert apply_thresholds(label, max_prob, caps, "maxprob").tolist() == [0, 255, 1, 255]
    padded = torch.tensor([0, 255, 255], dtype=torch.uint8)  # a loader's padding stays ignored
    for method, threshold, score in (("entropy", thresholds, [0.0, 0.0, 1.0]), ("maxprob", caps, [1.0, 1.0, 0.0])):
        assert apply_thresholds(padded, torch.tensor(score), threshold, method).tolist() == [0, 255, 255]


def test_ignore_padding_keeps_every_row_and_column_the_image_reaches():
    label = np.zeros((8, 16), np.uint8)  # output 16x8 of a 6x3 canvas whose image fills 4x1
    ignore_padding(label, (1, 4), (3, 6))
    assert (label[:3, :11] == 0).all()  # ceil(1 * 8 / 3) = 3 rows, ceil(4 * 16 / 6) = 11 columns
    assert (label[3:] == 255).all() and (label[:, 11:] == 255).all()


@pytest.mark.parametrize("method", ["entropy", "maxprob"])
def test_prediction_upsamples_probabilities_after_softmax(method):
    """The published order: softmax at the network's resolution, then the probabilities
    upsampled; a confident input, where upsampling the logits first gives other labels."""
    logits = 20 * torch.randn(2, 4, 4, 5, generator=torch.Generator().manual_seed(0))
    label, score = predict_with_confidence(logits, (17, 13), method)

    def up(x):
        return torch.nn.functional.interpolate(x, size=(13, 17), mode="bilinear", align_corners=True)

    prob = up(torch.softmax(logits, 1))
    p_log_p = torch.where(prob > 0, prob * torch.log(prob), torch.zeros_like(prob))
    expected = -p_log_p.sum(1) / math.log(4) if method == "entropy" else prob.max(1).values
    assert label.shape == score.shape == (2, 13, 17)
    assert torch.equal(label, prob.argmax(1))
    assert torch.allclose(score, expected.clamp(min=0), atol=1e-6)
    logits_first = torch.softmax(up(logits), 1)
    assert (logits_first.argmax(1) != label).float().mean() > 0.05
