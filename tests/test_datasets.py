"""Loaders, class info and factory against the official tables and the published preprocessing (tiny real-format files)."""
import json
import pickle
import random
import re

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image
from torch.utils.data import DataLoader

import advent.dataset.base_dataset as base_dataset
from advent.config import get_default_cfg
from advent.dataset import get_class_info, get_source_dataset, get_target_dataset, png_name
from advent.dataset.cityscapes import CityscapesDataSet
from advent.dataset.class_info import INFO16_PATH, INFO7_PATH, INFO_PATH, load_class_info
from advent.dataset.gta5 import GTA5DataSet
from advent.dataset.mapillary import MapillaryDataSet
from advent.dataset.synthia import SYNDataSet
from advent.utils.errors import UserError
from fake_data import (MAPILLARY_V12_NAMES, make_fake_cfg, save_ids, save_synthia_label, write_cityscapes,
                       write_gta5, write_mapillary, write_pseudo_labels, write_synthia)

MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
ID_TO_TRAIN_19 = {label.id: (255 if label.trainId in (255, -1) else label.trainId)
                  for label in CITYSCAPES_LABELS if 0 <= label.id <= 33}
ID_TO_CATEGORY = {label.id: label.category for label in CITYSCAPES_LABELS if 0 <= label.id <= 33}
GROUPS_7 = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
# The published mapping: SYNTHIA class id -> the 19 Cityscapes train ids.
SYNTHIA_TO_TRAIN_19 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                       8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def apply(table, ids):
    """Map an id array with a dict, 255 for ids not in it (the expected result, computed plainly)."""
    return np.vectorize(lambda i: table.get(int(i), 255), otypes=[np.int64])(ids)


def spec_preprocess(path, size, mean=MEAN):
    """The published preprocessing stated directly: RGB, PIL bicubic resize, float32, BGR, minus mean, CHW."""
    image = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
    image = np.asarray(image, np.float32)[:, :, ::-1] - mean
    return image.transpose(2, 0, 1)


def cityscapes_16_table():
    kept = [t for t in range(19) if t not in (9, 14, 16)]  # drop terrain, truck, train
    return {i: kept.index(t) for i, t in ID_TO_TRAIN_19.items() if t in kept}


def cityscapes_7_table():
    # The Cityscapes category of each of the 19 classes and of caravan (29) and trailer (30), as the
    # original 7-class table, except terrain -> flat (one grouping: docs/data.md).
    table = {}
    for label_id, train_id in ID_TO_TRAIN_19.items():
        if train_id != 255 or label_id in (29, 30):
            category = "flat" if train_id == 9 else ID_TO_CATEGORY[label_id]
            table[label_id] = GROUPS_7.index(category)
    return table


def gta5(split, **kwargs):
    kwargs.setdefault("crop_size", (64, 32))
    return GTA5DataSet(split.root, split.list_template, mean=MEAN, **kwargs)


def cityscapes(split, **kwargs):
    kwargs.setdefault("crop_size", (64, 32))
    return CityscapesDataSet(split.root, split.list_template, set=split.split, mean=MEAN, **kwargs)


def one_line(*fragments):
    """A `match` pattern: a one-line message holding every fragment (paths, counts), in any order."""
    return r"\A" + "".join(f"(?=.*{re.escape(str(fragment))})" for fragment in fragments) + r"[^\n]*\Z"


# --- preprocessing (as published) ---

def test_image_preprocessing_equals_spec_statement(fake_gta5):
    dataset = gta5(fake_gta5, crop_size=(48, 20))
    image, label, shape, name = dataset[1]
    expected = spec_preprocess(fake_gta5.image_paths[1], (48, 20))
    assert image.dtype == np.float32 and image.shape == (3, 20, 48)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(shape, [3, 20, 48])
    assert name == fake_gta5.names[1] and label.shape == (20, 48) and label.dtype == np.uint8


def test_image_at_file_size_is_bgr_minus_mean(fake_cityscapes):
    split = fake_cityscapes["val"]
    image = cityscapes(split)[0][0]
    rgb = np.asarray(Image.open(split.image_paths[0]), np.float32)
    for channel, source in enumerate((2, 1, 0)):  # B, G, R
        np.testing.assert_allclose(image[channel], rgb[:, :, source] - MEAN[channel], rtol=0, atol=1e-4)


def test_label_nearest_resize(tmp_path):
    split = write_cityscapes(tmp_path, "val", ("lindau",), 1, size=(8, 4))
    blocks = np.array([[7, 8, 11, 12], [26, 0, 23, 33]])  # 2x2 pixel blocks of 8 ids
    save_ids(np.kron(blocks, np.ones((2, 2), int)), split.label_paths[0])
    small = cityscapes(split, crop_size=(8, 4), labels_size=(4, 2))[0][1]
    np.testing.assert_array_equal(small, apply(ID_TO_TRAIN_19, blocks))
    large = cityscapes(split, crop_size=(8, 4), labels_size=(16, 8))[0][1]
    np.testing.assert_array_equal(large, apply(ID_TO_TRAIN_19, np.kron(blocks, np.ones((4, 4), int))))
    reference = np.asarray(Image.open(split.label_paths[0]).resize((5, 3), Image.NEAREST))
    odd = cityscapes(split, crop_size=(8, 4), labels_size=(5, 3))[0][1]
    np.testing.assert_array_equal(odd, apply(ID_TO_TRAIN_19, reference))


def test_max_iters_repeats_the_list(fake_gta5):
    assert [f[2] for f in gta5(fake_gta5).files] == fake_gta5.names
    repeated = gta5(fake_gta5, max_iters=10)
    assert len(repeated) == 12 and repeated.img_ids == fake_gta5.names * 3
    assert len(gta5(fake_gta5, max_iters=4)) == 4


# --- id mappings against the official tables ---

def test_gta5_maps_every_cityscapes_id(fake_gta5):
    dataset = gta5(fake_gta5)
    for index, raw in enumerate(fake_gta5.labels):
        assert set(np.unique(raw)) == set(range(34))
        assert Image.open(fake_gta5.label_paths[index]).mode == "P"
        np.testing.assert_array_equal(dataset[index][1], apply(ID_TO_TRAIN_19, raw))


def test_cityscapes_maps_every_id_19_16_7(fake_cityscapes):
    split = fake_cityscapes["val"]
    raw = split.labels[0]
    assert set(np.unique(raw)) == set(range(34))
    for info, table in ((INFO_PATH, ID_TO_TRAIN_19), (INFO16_PATH, cityscapes_16_table()),
                        (INFO7_PATH, cityscapes_7_table())):
        label = cityscapes(split, info_path=info)[0][1]
        np.testing.assert_array_equal(label, apply(table, raw), err_msg=str(info))


def test_class_info_tables():
    info19, info16, info7 = (load_class_info(p) for p in (INFO_PATH, INFO16_PATH, INFO7_PATH))
    assert info19.names[9] == "terrain" and len(info19.palette) == 19
    assert info19.palette[0] == (128, 64, 128)  # Cityscapes road colour
    assert "terrain" not in info16.names and "truck" not in info16.names and "train" not in info16.names
    assert list(info7.names) == GROUPS_7 and "terrain" in json.loads(INFO7_PATH.read_text())["note"]
    assert info19.label2train.shape == (256,) and info19.label2train.dtype == np.int64
    assert (info19.label2train[34:] == 255).all()
    np.testing.assert_array_equal(info19.train2label, [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                                       27, 28, 31, 32, 33])
    assert info7.train2label is None
    vehicle, flat = GROUPS_7.index("vehicle"), GROUPS_7.index("flat")
    assert info7.label2train[29] == info7.label2train[30] == vehicle  # caravan, trailer
    assert info7.label2train[22] == flat and (info7.label2train[[9, 10, 14, 15, 16, 18]] == 255).all()
    assert (info19.label2train[[29, 30]] == 255).all() and (info16.label2train[[29, 30]] == 255).all()


def test_synthia_maps_spec_table_19_16_7(tmp_path):
    for channels in (3, 4):
        split = write_synthia(tmp_path / f"S{channels}", 2, channels=channels)
        raw = split.labels[1]
        assert set(np.unique(raw)) == set(range(23))
        dataset = SYNDataSet(split.root, split.list_template, crop_size=(64, 32), mean=MEAN)
        np.testing.assert_array_equal(dataset[1][1], apply(SYNTHIA_TO_TRAIN_19, raw))
        assert dataset[1][1].dtype == np.uint8
    kept = [s for s, _ in sorted(SYNTHIA_TO_TRAIN_19.items(), key=lambda p: p[1]) if s not in (16, 18, 20)]
    table16 = {s: kept.index(s) for s in kept}  # published: drop 16, 18, 20 and renumber in order
    names19 = load_class_info(INFO_PATH).names
    category = {label.name: label.category for label in CITYSCAPES_LABELS}
    table7 = {s: GROUPS_7.index("flat" if t == 9 else category[names19[t]])
              for s, t in SYNTHIA_TO_TRAIN_19.items()}
    for info, table in ((INFO16_PATH, table16), (INFO7_PATH, table7)):
        dataset = SYNDataSet(split.root, split.list_template, crop_size=(64, 32), mean=MEAN, info_path=info)
        np.testing.assert_array_equal(dataset[0][1], apply(table, split.labels[0]), err_msg=str(info))


def test_mapillary_grouping_covers_v12_names():
    info = load_class_info(INFO7_PATH)
    grouped, ignored = set(info.mapillary_groups), set(json.loads(INFO7_PATH.read_text())["mapillary_ignored"])
    assert len(MAPILLARY_V12_NAMES) == 66
    assert grouped | ignored == set(MAPILLARY_V12_NAMES) and not grouped & ignored
    spot = {"construction--flat--road": "flat", "construction--flat--sidewalk": "flat",
            "nature--terrain": "flat", "marking--general": "flat",
            "construction--structure--building": "construction",
            "construction--barrier--wall": "construction",
            "object--support--pole": "object", "object--traffic-light": "object",
            "object--traffic-sign--front": "object", "nature--vegetation": "nature",
            "nature--sky": "sky", "human--person": "human", "human--rider--bicyclist": "human",
            "object--vehicle--car": "vehicle", "object--vehicle--on-rails": "vehicle"}
    for name, group in spot.items():
        assert info.mapillary_groups[name] == GROUPS_7.index(group), name
    assert {"animal--bird", "nature--water", "void--ego-vehicle", "void--unlabeled"} <= ignored


def test_mapillary_maps_by_name_whatever_the_class_order(tmp_path):
    order = list(MAPILLARY_V12_NAMES)
    random.Random(3).shuffle(order)
    split = write_mapillary(tmp_path, "validation", sizes=((64, 32),), class_names=order)
    groups = load_class_info(INFO7_PATH).mapillary_groups
    expected = np.array([groups.get(order[i], 255) for i in range(len(order))])[split.labels[0]]
    label = MapillaryDataSet(tmp_path, set="validation", crop_size=(64, 32), mean=MEAN)[0][1]
    np.testing.assert_array_equal(label, expected)
    assert (label == 255).any() and (label == 0).any()


def test_mapillary_keeps_aspect_ratio_and_pads(fake_mapillary):
    dataset = MapillaryDataSet(fake_mapillary.root, crop_size=(64, 32), mean=MEAN, labels_size=(32, 16))
    assert [f[2] for f in dataset.files] == sorted(fake_mapillary.names)
    image, label, shape, name = dataset[0]  # 64x48: the height fits, 42 x 32 at the left
    np.testing.assert_array_equal(shape, [3, 32, 42])  # the part the image fills (ESL labels only that)
    expected = spec_preprocess(fake_mapillary.image_paths[0], (42, 32))
    np.testing.assert_allclose(image[:, :, :42], expected, atol=1e-4)
    assert (image[:, :, 42:] == -MEAN[:, None, None]).all()  # padded black before the mean
    raw = np.asarray(Image.open(fake_mapillary.label_paths[0]).resize((21, 16), Image.NEAREST))
    np.testing.assert_array_equal(label[:, :21], dataset.label_lookup[raw])
    assert (label[:, 21:] == 255).all()
    image, label, _, _ = dataset[2]  # 80x40 has the box's aspect ratio: no padding
    np.testing.assert_allclose(image, spec_preprocess(fake_mapillary.image_paths[2], (64, 32)), atol=1e-4)
    raw = np.asarray(Image.open(fake_mapillary.label_paths[2]).resize((32, 16), Image.NEAREST))
    np.testing.assert_array_equal(label, dataset.label_lookup[raw])


# --- labels: unlabelled, auto, pseudo-labels ---

def test_unlabelled_mode_never_touches_labels(tmp_path, monkeypatch):
    split = write_cityscapes(tmp_path, "train", ("aachen",), 2, with_labels=False)
    assert not (tmp_path / "gtFine").exists()

    def forbidden(*args, **kwargs):
        raise AssertionError("a label file was opened")
    monkeypatch.setattr(base_dataset, "open_label", forbidden)
    dataset = cityscapes(split, load_labels=False, labels_size=(16, 8))
    image, label, _, _ = dataset[1]
    assert not dataset.has_labels and image.shape == (3, 32, 64)
    assert label.shape == (8, 16) and label.dtype == np.uint8 and (label == 255).all()
    assert not cityscapes(split, load_labels="auto").has_labels
    with pytest.raises(UserError, match=one_line("2 of 2 label files", tmp_path / "gtFine" / "train" / "aachen")):
        cityscapes(split, load_labels=True)


def test_auto_labels_when_all_present(fake_cityscapes):
    assert cityscapes(fake_cityscapes["val"], load_labels="auto").has_labels
    fake_cityscapes["val"].label_paths[3].unlink()
    assert not cityscapes(fake_cityscapes["val"], load_labels="auto").has_labels


def test_pseudo_labels_read_as_train_ids(tmp_path):
    split = write_cityscapes(tmp_path / "cs", "train", ("aachen",), 2, with_labels=False)
    written = write_pseudo_labels(tmp_path / "pl", split.names, size=(32, 16))
    assert (tmp_path / "pl" / "aachen_000001_000019_leftImg8bit.png").is_file()
    assert png_name(split.names[1]) == "aachen_000001_000019_leftImg8bit.png"
    dataset = cityscapes(split, pseudo_label_dir=tmp_path / "pl", labels_size=(32, 16))
    label = dataset[1][1]
    assert dataset.has_labels and (label == 255).any()
    np.testing.assert_array_equal(label, written[split.names[1]])  # no id mapping
    upsized = cityscapes(split, pseudo_label_dir=tmp_path / "pl", labels_size=(64, 32))[0][1]
    np.testing.assert_array_equal(upsized, np.kron(written[split.names[0]], np.ones((2, 2), int)))


def test_pseudo_label_errors(tmp_path):
    split = write_cityscapes(tmp_path / "cs", "train", ("aachen",), 2, with_labels=False)
    with pytest.raises(UserError, match=one_line(tmp_path / "none")):
        cityscapes(split, pseudo_label_dir=tmp_path / "none")
    write_pseudo_labels(tmp_path / "pl", split.names[:1])
    second = tmp_path / "pl" / png_name(split.names[1])
    with pytest.raises(UserError, match=one_line("1 of 2 pseudo-labels", second)):
        cityscapes(split, pseudo_label_dir=tmp_path / "pl")
    save_ids(np.full((32, 64), 40), second)
    dataset = cityscapes(split, pseudo_label_dir=tmp_path / "pl")
    with pytest.raises(UserError, match=one_line(second, "[40]")):
        dataset[1]


# --- user errors ---

def test_missing_root_and_list(tmp_path, fake_gta5):
    with pytest.raises(UserError, match=one_line(tmp_path / "nowhere", "leftImg8bit/{split}/{city}/*_leftImg8bit.png",
                                                 "gtFine/{split}/{city}/*_gtFine_labelIds.png")):
        CityscapesDataSet(tmp_path / "nowhere", fake_gta5.list_template)
    with pytest.raises(UserError, match=one_line("GTA5 root", "images/")):
        GTA5DataSet(tmp_path / "nowhere", fake_gta5.list_template)
    with pytest.raises(UserError, match=one_line(tmp_path / "lists" / "all.txt")):
        GTA5DataSet(fake_gta5.root, str(tmp_path / "lists" / "{}.txt"))
    with pytest.raises(UserError, match=one_line(tmp_path / "lists" / "{split}.txt")):
        GTA5DataSet(fake_gta5.root, str(tmp_path / "lists" / "{split}.txt"))  # only '{}' is the split
    with pytest.raises(UserError, match=one_line(fake_gta5.image_paths[0], "not a text file")):
        GTA5DataSet(fake_gta5.root, str(fake_gta5.image_paths[0]))  # an image given as the list
    braced = tmp_path / "runs {2}" / "all.txt"  # braces of the path's own are kept
    braced.parent.mkdir()
    braced.write_text(fake_gta5.list_path.read_text())
    assert len(GTA5DataSet(fake_gta5.root, str(tmp_path / "runs {2}" / "{}.txt"), crop_size=(64, 32))) == 4


def test_a_list_naming_an_image_twice_or_a_folder_as_the_list_is_one_line(tmp_path, fake_gta5):
    names = fake_gta5.list_path.read_text().splitlines()
    repeated = tmp_path / "lists" / "all.txt"
    repeated.parent.mkdir()
    repeated.write_text("\n".join(names + ["", names[1]]) + "\n")  # would weigh that image twice
    with pytest.raises(UserError, match=one_line(repeated, f"names {names[1]} twice (lines 2 and {len(names) + 2})")):
        GTA5DataSet(fake_gta5.root, str(tmp_path / "lists" / "{}.txt"))
    (tmp_path / "folder" / "all.txt").mkdir(parents=True)
    with pytest.raises(UserError, match=one_line(tmp_path / "folder" / "all.txt", "is a folder, not a list of names")):
        GTA5DataSet(fake_gta5.root, str(tmp_path / "folder" / "{}.txt"))


def test_missing_listed_files_are_counted_and_the_first_named(fake_gta5):
    fake_gta5.image_paths[1].unlink()
    fake_gta5.image_paths[3].unlink()
    with pytest.raises(UserError, match=one_line("2 of 4 images", fake_gta5.image_paths[1], fake_gta5.list_path)):
        gta5(fake_gta5)
    write_gta5(fake_gta5.root, 4)
    fake_gta5.label_paths[2].unlink()
    with pytest.raises(UserError, match=one_line("1 of 4 label files", fake_gta5.label_paths[2])):
        gta5(fake_gta5)


def test_undecodable_files_fail_when_read(fake_gta5, fake_synthia):
    fake_gta5.image_paths[2].write_bytes(b"not a png")
    fake_gta5.label_paths[3].write_bytes(b"\x89PNG broken")
    dataset = gta5(fake_gta5)  # built: presence only
    for index, path in ((2, fake_gta5.image_paths[2]), (3, fake_gta5.label_paths[3])):
        with pytest.raises(UserError, match=one_line("cannot decode", path)):
            dataset[index]
    fake_synthia.label_paths[0].write_bytes(b"garbage")
    dataset = SYNDataSet(fake_synthia.root, fake_synthia.list_template, crop_size=(64, 32))
    with pytest.raises(UserError, match=one_line(fake_synthia.label_paths[0])):
        dataset[0]


def with_value(ids, value):
    """A copy of the id map `ids` with `value` in one pixel."""
    ids = np.array(ids, dtype=np.uint8)
    ids[1, 2] = value
    return ids


def test_ground_truth_with_an_id_outside_the_dataset_is_an_error_naming_the_file(
        fake_cityscapes, fake_gta5, fake_synthia, fake_mapillary):
    val = fake_cityscapes["val"]
    save_ids(with_value(val.labels[1], 200), val.label_paths[1])
    save_ids(with_value(fake_gta5.labels[0], 34), fake_gta5.label_paths[0], palette=True)
    save_synthia_label(with_value(fake_synthia.labels[2], 23), fake_synthia.label_paths[2])
    save_ids(with_value(fake_mapillary.labels[0], 66), fake_mapillary.label_paths[0], palette=True)
    cases = ((cityscapes(val), 1, val.label_paths[1], "[200] outside Cityscapes label ids 0..33"),
             (gta5(fake_gta5), 0, fake_gta5.label_paths[0], "[34] outside Cityscapes label ids 0..33"),
             (SYNDataSet(fake_synthia.root, fake_synthia.list_template, crop_size=(64, 32)), 2,
              fake_synthia.label_paths[2], "[23] outside SYNTHIA class ids 0..22"),
             (MapillaryDataSet(fake_mapillary.root, crop_size=(64, 32)), 0, fake_mapillary.label_paths[0],
              "[66] outside the 66 class indices of config.json"))
    for dataset, index, path, message in cases:
        with pytest.raises(UserError, match=one_line(f"label {path} holds values {message}")):
            dataset[index]
        dataset[index - 1]  # the others load


def test_ground_truth_of_another_size_than_its_image_is_an_error_except_for_gta5(tmp_path, fake_cityscapes):
    val = fake_cityscapes["val"]
    save_ids(np.zeros((32, 32)), val.label_paths[0])
    with pytest.raises(UserError, match=one_line(f"label {val.label_paths[0]} is 32x32 pixels, its image 64x32")):
        cityscapes(val, labels_size=(32, 32))[0]  # even when it is the size the labels are resized to
    split = write_gta5(tmp_path / "GTA5", 2, size=(64, 32), label_size=(32, 16))
    dataset = gta5(split)  # as a few real GTA5 labels: both are resized
    resized = np.asarray(Image.open(split.label_paths[0]).resize((64, 32), Image.NEAREST))
    np.testing.assert_array_equal(dataset[0][1], dataset.label_lookup[resized])


def test_rgb_label_is_refused(fake_gta5):
    Image.new("RGB", (64, 32)).save(fake_gta5.label_paths[0])
    with pytest.raises(UserError, match=one_line(fake_gta5.label_paths[0], "RGB")):
        gta5(fake_gta5)[0]


def test_dataset_survives_pickling_and_batching(fake_gta5):
    # DataLoader workers receive a pickled copy (test_utils covers errors raised in workers).
    dataset = gta5(fake_gta5)
    copy = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copy[2][0], dataset[2][0])
    images, labels, shapes, names = next(iter(DataLoader(dataset, batch_size=2)))
    assert images.shape == (2, 3, 32, 64) and labels.dtype == torch.uint8
    assert list(names) == fake_gta5.names[:2]


def test_class_info_errors(tmp_path, fake_cityscapes):
    with pytest.raises(UserError, match=one_line(INFO16_PATH, "16", "19")):
        cityscapes(fake_cityscapes["val"], info_path=INFO16_PATH, num_classes=19)
    bad = tmp_path / "bad.json"
    two = '"label": ["a", "b"]'
    cases = (('{"label": [', "not valid JSON"),
             ('{%s, "palette": [[0, 0, 0]], "label2train": []}' % two, "1 colours for 2"),
             ('{%s}' % two, "palette"),
             ('{%s, "palette": [[0, 0, 0], [1, 1, 1]], "label2train": [[7, 2]]}' % two, "out of range"),
             ('{%s, "palette": [[0, 0, 0], [1, 1, 1]], "label2train": [[7, "road"]]}' % two, "integers"),
             ('{%s, "palette": [[0, 0, 0], [1, 1, 1]], "label2train": [[7, 0], [7, 1]]}' % two,
              "label id 7 twice"),
             ('{%s, "palette": [[0, 0, 0], [1, 1]], "label2train": []}' % two, "[r, g, b] lists of 0..255"),
             ('{%s, "palette": [[0, 0, 0], [1, 1, 256]], "label2train": []}' % two, "[r, g, b] lists of 0..255"),
             ('{%s, "palette": [[0, 0, 0], [1, 1, 1]], "label2train": [], "mapillary_groups": ["a"]}' % two,
              "mapillary_groups"))
    for text, fragment in cases:
        bad.write_text(text)
        with pytest.raises(UserError, match=one_line(bad, fragment)):
            load_class_info(bad)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff")  # an image given as the class info
    with pytest.raises(UserError, match=one_line(bad, "not a JSON text file")):
        load_class_info(bad)
    with pytest.raises(UserError, match=one_line(INFO_PATH, "mapillary_groups")):
        MapillaryDataSet(tmp_path, info_path=INFO_PATH)


def test_mapillary_errors(tmp_path, fake_mapillary):
    with pytest.raises(UserError, match=one_line(fake_mapillary.root / "training" / "images")):
        MapillaryDataSet(fake_mapillary.root, set="training")
    (fake_mapillary.root / "config.json").unlink()
    with pytest.raises(UserError, match=one_line(fake_mapillary.root / "config.json")):
        MapillaryDataSet(fake_mapillary.root)
    assert not MapillaryDataSet(fake_mapillary.root, load_labels=False).has_labels


# --- factory ---

def test_factory_source_and_target_stages(tmp_path):
    cfg, written = make_fake_cfg(tmp_path, output_size=(128, 64))
    source = get_source_dataset(cfg, max_iters=6)
    assert isinstance(source, GTA5DataSet) and len(source) == 8
    image, label, _, name = source[0]
    assert image.shape == (3, 32, 64) and name == written["source"].names[0]
    np.testing.assert_array_equal(label, apply(ID_TO_TRAIN_19, written["source"].labels[0]))
    train = get_target_dataset(cfg, "train")
    assert not train.has_labels and train.set == "train" and (train[0][1] == 255).all()
    test = get_target_dataset(cfg, "test")
    assert test.has_labels and test.set == "val" and test[0][0].shape == (3, 32, 64)
    assert test[0][1].shape == (64, 128)
    assert get_target_dataset(cfg, "esl").has_labels
    for path in written["train"].label_paths[:1]:
        path.unlink()
    assert not get_target_dataset(cfg, "esl").has_labels
    for path in written["val"].label_paths[:1]:
        path.unlink()
    with pytest.raises(UserError, match=one_line("1 of 4 label files", written["val"].label_paths[0])):
        get_target_dataset(cfg, "test")


def test_factory_pseudo_labels_at_input_size(tmp_path):
    cfg, written = make_fake_cfg(tmp_path, train_labels=False)
    pseudo = write_pseudo_labels(tmp_path / "labels", written["train"].names, size=(32, 16))
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "labels")
    train = get_target_dataset(cfg, "train", max_iters=5)
    assert train.has_labels and len(train) == 8
    label = train[2][1]
    assert label.shape == (32, 64)
    np.testing.assert_array_equal(label, np.kron(pseudo[written["train"].names[2]], np.ones((2, 2), int)))


def test_factory_synthia_16_and_class_info(tmp_path):
    cfg, written = make_fake_cfg(tmp_path, source="SYNTHIA", num_classes=16)
    source = get_source_dataset(cfg)
    assert isinstance(source, SYNDataSet) and source.info.path == str(INFO16_PATH)
    assert get_class_info(cfg, "test").num_classes == 16
    assert get_class_info(cfg, "source").path == str(INFO16_PATH)
    cfg.TRAIN.INFO_SOURCE = str(INFO_PATH)
    with pytest.raises(UserError, match=one_line(INFO_PATH, "19", "16")):
        get_source_dataset(cfg)


def test_factory_mapillary_7(tmp_path):
    cfg, written = make_fake_cfg(tmp_path, target="Mapillary", num_classes=7)
    test = get_target_dataset(cfg, "test")
    assert isinstance(test, MapillaryDataSet) and test.has_labels and test.set == "validation"
    label = test[0][1]  # a 128x64 label has the input's aspect ratio: native size, no padding
    groups = load_class_info(INFO7_PATH).mapillary_groups
    lookup = np.array([groups.get(n, 255) for n in MAPILLARY_V12_NAMES])
    np.testing.assert_array_equal(label, lookup[written["val"].labels[0]])
    esl = get_target_dataset(cfg, "esl")  # the ESL report's labels: resized to ESL.OUTPUT_SIZE_TARGET
    raw = np.asarray(Image.open(written["train"].label_paths[0]).resize((64, 32), Image.NEAREST))
    np.testing.assert_array_equal(esl[0][1], lookup[raw])
    assert not get_target_dataset(cfg, "train").has_labels
    assert get_class_info(cfg, "esl").names[0] == "flat"


def test_factory_default_lists(tmp_path):
    cfg, _ = make_fake_cfg(tmp_path, source="SYNTHIA")
    cfg.DATA_LIST_SOURCE = get_default_cfg().DATA_LIST_SOURCE  # the GTA5 default
    source = get_source_dataset(cfg, check_files=False)
    assert source.list_path.endswith("synthia_list/all.txt") and len(source) == 9400
    assert source.files[0][0] == tmp_path / "data" / "SYNTHIA" / "RGB" / "0000000.png"


def test_shipped_lists_are_the_canonical_splits():
    from advent.dataset.class_info import LIST_DIR
    lists = LIST_DIR.parent
    for path, count, first in (
            ("gta5_list/all.txt", 24966, "00001.png"),
            ("cityscapes_list/train.txt", 2975, "aachen/aachen_000000_000019_leftImg8bit.png"),
            ("cityscapes_list/val.txt", 500, "frankfurt/frankfurt_000001_007973_leftImg8bit.png"),
            ("synthia_list/all.txt", 9400, "0000000.png")):
        names = (lists / path).read_text().split()
        assert len(names) == len(set(names)) == count and names[0] == first, path
