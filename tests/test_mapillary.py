"""Mapillary as published: test labels at their native resolution padded to the input's aspect
ratio, images fitted with the published floating-point size and padded with black before the
mean, logits upsampled to each label's size; input and output sizes of different aspect ratios
refused (tiny files in the real formats: config.json, .jpg images, palette .png labels)."""
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from advent.config import get_default_cfg
from advent.dataset import get_target_dataset
from advent.dataset.class_info import INFO7_PATH, load_class_info
from advent.dataset.factory import check_mapillary_aspect, stage_section
from advent.dataset.mapillary import MapillaryDataSet, fit_size
from advent.domain_adaptation.eval_output import eval_setting
from advent.domain_adaptation.eval_UDA import build_test_loader, evaluate
from advent.model import build_segmenter
from advent.scripts.esl import main as esl_main
from advent.scripts.test import main
from advent.utils.errors import UserError
from advent.utils.runtime import run_main
from fake_data import make_fake_cfg, write_cfg_yaml, write_mapillary

MEAN = np.array((10.0, 60.0, 200.0), dtype=np.float32)  # B, G, R: distinct, so the order shows
CPU = torch.device("cpu")


def train_ids(split, raw):
    """Palette indices -> the 7 groups, by config.json class name (255: not grouped)."""
    groups = load_class_info(INFO7_PATH).mapillary_groups
    return np.array([groups.get(name, 255) for name in split.class_names])[raw]


def padded_by_hand(label, width, height):
    """`label` at the top-left of a width x height canvas of 255."""
    canvas = np.full((height, width), 255, dtype=np.int64)
    canvas[:label.shape[0], :label.shape[1]] = label
    return canvas


def test_test_labels_keep_their_native_size_padded_to_the_input_aspect(tmp_path):
    # Input 64x32 (2:1): 64x48 -> 96x48, 48x64 -> 128x64, 80x40 as is, 91x30 -> 91x45 (45.5 floored).
    split = write_mapillary(tmp_path, "validation", ((64, 48), (48, 64), (80, 40), (91, 30)))
    dataset = MapillaryDataSet(tmp_path, crop_size=(64, 32), mean=MEAN, labels_size=(32, 16),
                               native_labels=True)
    for index, (width, height) in enumerate(((96, 48), (128, 64), (80, 40), (91, 45))):
        label, raw = dataset[index][1], split.labels[index]
        assert label.shape == (height, width) and label.dtype == np.uint8
        original = label[:raw.shape[0], :raw.shape[1]]
        np.testing.assert_array_equal(original, train_ids(split, raw))  # pixel for pixel, unresized
        assert (original != 255).any()
        assert (label[raw.shape[0]:] == 255).all() and (label[:, raw.shape[1]:] == 255).all()
    resized = MapillaryDataSet(tmp_path, crop_size=(64, 32), mean=MEAN, labels_size=(32, 16))
    assert all(resized[i][1].shape == (16, 32) and resized[i][1].dtype == np.uint8 for i in range(4))  # ESL and training: resized and padded


def test_images_are_padded_black_before_the_mean(tmp_path):
    split = write_mapillary(tmp_path, "validation", ((64, 48), (91, 30)))
    dataset = MapillaryDataSet(tmp_path, crop_size=(64, 32), mean=MEAN, native_labels=True)
    for index, (width, height) in enumerate(((42, 32), (64, 21))):  # the part the image fills
        image = dataset[index][0]
        assert image.shape == (3, 32, 64)
        rgb = Image.open(split.image_paths[index]).convert("RGB").resize((width, height), Image.BICUBIC)
        expected = (np.asarray(rgb, np.float32)[:, :, ::-1] - MEAN).transpose(2, 0, 1)
        np.testing.assert_allclose(image[:, :height, :width], expected, atol=1e-4)
        padding = np.ones((32, 64), bool)
        padding[:height, :width] = False
        for channel in range(3):
            assert (image[channel][padding] == -MEAN[channel]).all()


def tiny_model(seed):
    torch.manual_seed(seed)
    model = build_segmenter("DeepLabv2-Tiny", 7, True)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)  # predictions that vary over the image
    return model.eval()


def mapillary_cfg(tmp_path):
    # Validation images 128x64, 64x64 and 192x32 into a 64x32 input: labels 128x64, 128x64, 192x96.
    cfg, written = make_fake_cfg(tmp_path, target="Mapillary", num_classes=7)
    cfg.NUM_WORKERS = 0
    cfg.TEST.MODEL = ("DeepLabv2-Tiny",)
    return cfg, written["val"]


def test_evaluation_upsamples_the_logits_to_each_native_label(tmp_path):
    cfg, split = mapillary_cfg(tmp_path)
    model = tiny_model(5)
    _, loader = build_test_loader(cfg, CPU)
    hist = evaluate([model], loader, 7, CPU, cfg.TEST.OUTPUT_SIZE_TARGET).hist()
    expected = np.zeros((7, 7), dtype=np.int64)
    sizes = ((128, 64), (128, 64), (192, 96))
    for (image, _, _, _), raw, (width, height) in zip(get_target_dataset(cfg, "test"), split.labels, sizes):
        label = padded_by_hand(train_ids(split, raw), width, height)
        with torch.no_grad():
            logits = model(torch.from_numpy(image)[None])[1]
        up = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
        pred = up[0].argmax(0).numpy()
        kept = label < 7
        expected += np.bincount(7 * label[kept] + pred[kept], minlength=49).reshape(7, 7)
    assert np.array_equal(hist, expected)
    assert expected.sum() > 0 and (expected.sum(0) > 0).sum() >= 2  # several classes predicted


def test_batches_of_several_images_are_refused_in_one_line(tmp_path, capsys):
    cfg, _ = mapillary_cfg(tmp_path)
    cfg.TEST.BATCH_SIZE_TARGET = 2
    with pytest.raises(UserError) as excinfo:
        build_test_loader(cfg, CPU)
    message = str(excinfo.value)
    assert "\n" not in message and "TEST.BATCH_SIZE_TARGET is 2" in message and "Mapillary" in message
    cfg.TEST.MODE, cfg.TEST.RESTORE_FROM = "single", (str(tmp_path / "m.pth"),)
    torch.save(tiny_model(1).state_dict(), tmp_path / "m.pth")
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--cfg", str(write_cfg_yaml(cfg, tmp_path / "test.yml"))])
    assert exit_info.value.code == 2
    assert "TEST.BATCH_SIZE_TARGET is 2" in capsys.readouterr().err


# --- the fitted size as published (floating point), where it differs from the exact rule ---

def published_fit(size, box):
    """The published rule: one float scale (the smaller of box / size), each side floored."""
    scale = min(box[0] / size[0], box[1] / size[1])
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))


def exact_fit(size, box):
    """The same fit in exact arithmetic (what this project computed before)."""
    scale = min(Fraction(box[0], size[0]), Fraction(box[1], size[1]))
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))


def disagreeing_sizes(shape, box, count):
    """The first `count` sizes k * shape (k = 1, 2, ...) where the two rules differ."""
    sizes = (tuple(k * side for side in shape) for k in range(1, 10000))
    return list(itertools.islice((s for s in sizes if published_fit(s, box) != exact_fit(s, box)), count))


def test_fit_size_is_the_published_float_rule_where_the_exact_rule_differs():
    assert fit_size((98, 49), (128, 64)) == (127, 63)  # the example: exact would be 128x64
    every = [(w, h) for w in range(1, 200) for h in range(1, 200)]
    assert all(fit_size(size, (128, 64)) == published_fit(size, (128, 64)) for size in every)
    for shape in ((1, 1), (2, 1), (3, 2)):  # at the paper's input size
        found = disagreeing_sizes(shape, (1024, 512), 5)
        assert len(found) == 5, shape
        for size in found:
            fitted, exact = fit_size(size, (1024, 512)), exact_fit(size, (1024, 512))
            assert fitted == published_fit(size, (1024, 512)) and fitted != exact, size
            assert all(e - 1 <= f <= e for f, e in zip(fitted, exact))  # one pixel short at most


def check_image(image, path, fitted, canvas):
    """`image` (CHW): `path` resized to `fitted` at the top-left, -MEAN (black) elsewhere."""
    (width, height), (canvas_width, canvas_height) = fitted, canvas
    assert image.shape == (3, canvas_height, canvas_width)
    rgb = Image.open(path).convert("RGB").resize(fitted, Image.BICUBIC)
    expected = (np.asarray(rgb, np.float32)[:, :, ::-1] - MEAN).transpose(2, 0, 1)
    np.testing.assert_allclose(image[:, :height, :width], expected, atol=1e-4)
    for channel in range(3):
        assert (image[channel, height:] == -MEAN[channel]).all()
        assert (image[channel, :, width:] == -MEAN[channel]).all()


def test_images_fill_the_published_extent_and_labels_stay_native(tmp_path):
    box = (1024, 512)
    sizes = [disagreeing_sizes(shape, box, 1)[0] for shape in ((1, 1), (2, 1), (3, 2))]
    split = write_mapillary(tmp_path, "validation", sizes)
    dataset = MapillaryDataSet(tmp_path, crop_size=box, mean=MEAN, native_labels=True)
    for index, size in enumerate(sizes):
        image, label = dataset[index][:2]
        fitted = published_fit(size, box)
        assert fitted != exact_fit(size, box)
        check_image(image, split.image_paths[index], fitted, box)
        # the label: native, padded right to the canvas's 2:1 (its own size unchanged by the float rule)
        width, height = size
        padded = (max(width, 2 * height), height)
        np.testing.assert_array_equal(label, padded_by_hand(train_ids(split, split.labels[index]), *padded))
        # image and label cover the same part of their canvases, up to the published pixel
        assert abs(fitted[0] / box[0] - width / padded[0]) * box[0] <= 1


def test_evaluation_of_published_fits_against_images_built_by_hand(tmp_path):
    cfg, _ = mapillary_cfg(tmp_path)
    box = cfg.TEST.INPUT_SIZE_TARGET = cfg.TEST.OUTPUT_SIZE_TARGET = (128, 64)
    cfg.TEST.IMG_MEAN = MEAN
    sizes = [disagreeing_sizes(shape, box, 1)[0] for shape in ((2, 1), (1, 1), (3, 2))]
    cfg.TEST.SET_TARGET = "odd"
    split = write_mapillary(cfg.DATA_DIRECTORY_TARGET, "odd", sizes, seed=7)
    model = tiny_model(3)
    hist = evaluate([model], build_test_loader(cfg, CPU)[1], 7, CPU, box).hist()
    expected = np.zeros((7, 7), dtype=np.int64)
    for path, raw, (width, height) in zip(split.image_paths, split.labels, sizes):
        fitted = published_fit((width, height), box)
        rgb = Image.open(path).convert("RGB").resize(fitted, Image.BICUBIC)
        image = np.zeros((box[1], box[0], 3), np.float32)  # black, then minus the mean
        image[:fitted[1], :fitted[0]] = np.asarray(rgb, np.float32)
        image = (image[:, :, ::-1] - MEAN).transpose(2, 0, 1).copy()
        label = padded_by_hand(train_ids(split, raw), max(width, 2 * height), height)
        with torch.no_grad():
            logits = model(torch.from_numpy(image)[None])[1]
        up = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=True)
        kept = label < 7
        expected += np.bincount(7 * label[kept] + up[0].argmax(0).numpy()[kept], minlength=49).reshape(7, 7)
    assert np.array_equal(hist, expected) and expected.sum() > 0


# --- input and output sizes of different aspect ratios ---

def test_default_sizes_share_one_aspect_ratio_and_are_accepted(tmp_path):
    defaults = get_default_cfg()
    defaults.TARGET = "Mapillary"
    assert [list(defaults.TEST.INPUT_SIZE_TARGET), list(defaults.TEST.OUTPUT_SIZE_TARGET)] == [[1024, 512],
                                                                                             [2048, 1024]]
    for stage in ("test", "esl"):
        check_mapillary_aspect(defaults, stage)  # no error
    cfg, _ = mapillary_cfg(tmp_path)  # the same at a tiny scale, with data: input 64x32, output 128x64
    cfg.TEST.OUTPUT_SIZE_TARGET = cfg.ESL.OUTPUT_SIZE_TARGET = (128, 64)
    assert get_target_dataset(cfg, "test").has_labels and get_target_dataset(cfg, "esl").has_labels


@pytest.mark.parametrize("script", ["test", "esl"])
def test_sizes_of_different_aspect_ratios_are_refused_in_one_line(tmp_path, capsys, script):
    cfg, _ = mapillary_cfg(tmp_path)
    stage_section(cfg, script).OUTPUT_SIZE_TARGET = (64, 48)
    missing = str(tmp_path / "missing.pth")  # model work first would fail on this instead
    cfg.TEST.MODE, cfg.TEST.RESTORE_FROM, cfg.ESL.RESTORE_FROM = "single", (missing,), missing
    cfg.ESL.WAIT_MODEL = False  # refused at once, not after a wait for it
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "pseudo")
    main_of = {"test": main, "esl": esl_main}[script]
    with pytest.raises(SystemExit) as exit_info:
        run_main(main_of, ["--cfg", str(write_cfg_yaml(cfg, tmp_path / f"{script}.yml"))])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    key = script.upper()
    assert len(lines) == 1 and f"{key}.INPUT_SIZE_TARGET [64, 32] (2:1)" in lines[0]
    assert f"{key}.OUTPUT_SIZE_TARGET [64, 48] (4:3)" in lines[0] and "aspect ratio" in lines[0]
    cityscapes, _ = make_fake_cfg(tmp_path / "c")  # Cityscapes labels are resized, not padded: accepted
    stage_section(cityscapes, script).OUTPUT_SIZE_TARGET = (64, 48)
    assert get_target_dataset(cityscapes, script).has_labels


def test_training_refuses_pseudo_labels_of_another_aspect_ratio_than_its_input(tmp_path):
    """esl.py writes Mapillary pseudo-labels on the ESL output-size canvas; train.py resizes them to
    TRAIN.INPUT_SIZE_TARGET: with another ratio the label would be stretched off the image."""
    cfg, _ = mapillary_cfg(tmp_path)
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(pseudo / "img000.png")  # 128x64, 2:1
    cfg.TRAIN.INPUT_SIZE_TARGET = (64, 48)
    with pytest.raises(UserError, match=r"^TRAIN.INPUT_SIZE_TARGET \[64, 48\] \(4:3\) and the pseudo-labels in "
                                        r".*pseudo \(128x64, 2:1: ESL.OUTPUT_SIZE_TARGET\) differ in aspect ratio"):
        check_mapillary_aspect(cfg, "train", str(pseudo))
    cfg.TRAIN.INPUT_SIZE_TARGET = (64, 32)
    check_mapillary_aspect(cfg, "train", str(pseudo))  # one ratio: accepted
    check_mapillary_aspect(cfg, "train", "")  # no pseudo-labels: nothing to compare


def test_the_cache_key_of_a_mapillary_evaluation_names_the_published_fit(tmp_path):
    """'best' mode's cache must not serve a Mapillary result computed with the earlier exact fit."""
    cfg, _ = mapillary_cfg(tmp_path)
    dataset = get_target_dataset(cfg, "test")
    setting = eval_setting(cfg, dataset, load_class_info(INFO7_PATH))
    assert setting["native_labels"] and setting["image_fit"] == "floor(side * float scale), as published"
    cityscapes, _ = make_fake_cfg(tmp_path / "cityscapes")
    assert "image_fit" not in eval_setting(cityscapes, get_target_dataset(cityscapes, "test"),
                                           load_class_info(cityscapes.TEST.INFO_TARGET))


# --- ESL on the padded canvas ---

def test_esl_labels_only_the_image_and_counts_only_its_pixels(tmp_path):
    from advent.domain_adaptation.pseudo_labels import median_rank, predict_with_confidence
    from advent.scripts import esl

    # training images 128x64, 64x64 and 192x32 into a 64x32 input: the second fills its left half
    # (32x32), the third its top 10 rows; pseudo-labels at 128x64
    cfg, _ = make_fake_cfg(tmp_path, target="Mapillary", num_classes=7)
    model = tiny_model(3)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    cfg.NUM_WORKERS, cfg.ESL.MODEL, cfg.ESL.RESTORE_FROM = 0, "DeepLabv2-Tiny", str(tmp_path / "model.pth")
    cfg.ESL.WAIT_MODEL, cfg.ESL.OUTPUT_SIZE_TARGET = False, (128, 64)
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "labels")
    assert esl.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "esl.yml"))]) == 0
    dataset = get_target_dataset(cfg, "esl")
    image_rows, image_cols = (64, 64, 20), (128, 64, 128)  # ceil(10 * 64 / 32) = 20 rows
    labels, scores = [], []
    for index, (rows, cols) in enumerate(zip(image_rows, image_cols)):
        written = np.asarray(Image.open(tmp_path / "labels" / dataset.img_ids[index].replace(".jpg", ".png")))
        assert (written[rows:] == 255).all() and (written[:, cols:] == 255).all()
        assert (written[:rows, :cols] != 255).any()
        with torch.no_grad():
            _, logits = model(torch.from_numpy(dataset[index][0])[None])
        label, score = predict_with_confidence(logits, (128, 64), "entropy")
        labels.append(label[0, :rows, :cols].flatten())
        scores.append(score[0, :rows, :cols].flatten())
    report = json.loads((tmp_path / "labels" / "esl_report.json").read_text())
    assert sum(c["predicted_pixels"] for c in report["classes"]) == 128 * 64 + 64 * 64 + 128 * 20
    label, score = torch.cat(labels), torch.cat(scores)  # the image pixels only
    for c, threshold in enumerate(report["groups"][0]["thresholds"]):
        own = score[label == c].sort().values
        expected = 0.0 if own.numel() == 0 else own[int(median_rank(torch.tensor(own.numel())))].item()
        assert threshold == pytest.approx(max(expected, cfg.ESL.THRESHOLD), abs=1e-6), c
