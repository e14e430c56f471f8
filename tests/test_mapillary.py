"""Mapillary as published: test labels at their native resolution padded to the input's aspect
ratio, images padded with black before the mean, logits upsampled to each label's size
(tiny files in the real formats: config.json, .jpg images, palette .png labels)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from advent.dataset import get_target_dataset
from advent.dataset.class_info import INFO7_PATH, load_class_info
from advent.dataset.mapillary import MapillaryDataSet
from advent.domain_adaptation.eval_UDA import build_test_loader, evaluate
from advent.model import build_segmenter
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
        assert label.shape == (height, width)
        original = label[:raw.shape[0], :raw.shape[1]]
        np.testing.assert_array_equal(original, train_ids(split, raw))  # pixel for pixel, unresized
        assert (original != 255).any()
        assert (label[raw.shape[0]:] == 255).all() and (label[:, raw.shape[1]:] == 255).all()
    resized = MapillaryDataSet(tmp_path, crop_size=(64, 32), mean=MEAN, labels_size=(32, 16))
    assert all(resized[i][1].shape == (16, 32) for i in range(4))  # ESL and training: resized and padded


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
