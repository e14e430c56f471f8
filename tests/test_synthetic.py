"""The synthetic two-domain benchmark: determinism, real on-disk formats, loaders, domain shift."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advent.config import get_default_cfg
from advent.dataset import get_source_dataset, get_target_dataset
from advent.dataset.cityscapes import CityscapesDataSet
from advent.dataset.class_info import INFO_PATH, load_class_info
from advent.dataset.gta5 import GTA5DataSet
from advent.demo.synthetic import (
    MANIFEST, SCENE_CLASSES, SOURCE_STYLE, TARGET_STYLE, scene_rng, target_style, write_demo_data)
from advent.demo.synthetic_scene import (
    BUILDING, CAR, EGO_VEHICLE, ROAD, SCENE_LABEL_IDS, SIDEWALK, SKY, VEGETATION, blend_styles,
    render_scene)
from advent.scripts import make_synthetic_data
from advent.utils.output_dir import MANIFEST_NAME

SIZE = (128, 64)
SMALL = dict(num_source=4, num_source_val=2, num_target_train=4, num_target_val=3, size=SIZE)
INFO = load_class_info(INFO_PATH)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def demo_cfg(data):
    cfg = get_default_cfg()
    for key, value in data.cfg_paths().items():
        cfg[key] = value
    cfg.TRAIN.INPUT_SIZE_SOURCE = cfg.TRAIN.INPUT_SIZE_TARGET = SIZE
    for section in (cfg.TEST, cfg.ESL):
        section.INPUT_SIZE_TARGET = section.OUTPUT_SIZE_TARGET = SIZE
    return cfg


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path, demo):
    again = write_demo_data(tmp_path / "again", seed=3, **SMALL)
    other = write_demo_data(tmp_path / "other", seed=4, **SMALL)
    first, second, third = all_files(demo.root), all_files(again.root), all_files(other.root)
    assert len(first) == 4 * 2 + 2 * 2 + 4 * 2 + 3 * 2 + 4 + 2  # pairs, four lists, its manifest, output_dir's
    content = [path for path in first if path.name != MANIFEST_NAME]  # a manifest records the files' times too
    assert first.keys() == second.keys() and all(first[p] == second[p] for p in content)
    images = [path for path in first if path.suffix == ".png"]
    assert all(first[path] != third[path] for path in images)


def test_image_depends_on_index_not_on_counts(tmp_path, demo):
    more = write_demo_data(tmp_path / "more", seed=3, **{**SMALL, "num_target_train": 6})
    names = (demo.target_root / "train.txt").read_text().split()
    for name in names:
        path = Path("leftImg8bit") / "train" / name
        assert (more.target_root / path).read_bytes() == (demo.target_root / path).read_bytes()
    assert len((more.target_root / "train.txt").read_text().split()) == 6


def test_layout_and_lists(demo):
    assert demo.cfg_paths() == {
        "DATA_DIRECTORY_SOURCE": str(demo.root / "GTA5"),
        "DATA_LIST_SOURCE": str(demo.root / "GTA5" / "{}.txt"),
        "DATA_DIRECTORY_TARGET": str(demo.root / "Cityscapes"),
        "DATA_LIST_TARGET": str(demo.root / "Cityscapes" / "{}.txt")}
    source_all = (demo.source_root / "all.txt").read_text().split()
    source_val = (demo.source_root / "val.txt").read_text().split()
    assert source_all == ["00001.png", "00002.png", "00003.png", "00004.png"]
    assert source_val == ["00005.png", "00006.png"]  # held out: not in 'all'
    pattern = re.compile(r"^([a-z]+)/\1_\d{6}_000019_leftImg8bit\.png$")
    for split, count in (("train", 4), ("val", 3)):
        names = (demo.target_root / f"{split}.txt").read_text().split()
        assert len(names) == len(set(names)) == count
        assert all(pattern.match(name) for name in names), names
    assert (demo.root / MANIFEST).is_file()


def test_gta5_labels_are_palette_pngs_of_cityscapes_label_ids(demo):
    seen = set()
    for name in (demo.source_root / "all.txt").read_text().split():
        label = Image.open(demo.source_root / "labels" / name)
        image = Image.open(demo.source_root / "images" / name)
        assert label.mode == "P" and image.mode == "RGB"
        assert label.size == image.size == SIZE
        ids = np.asarray(label)
        seen |= set(np.unique(ids).tolist())
        palette = np.asarray(label.getpalette()[:768]).reshape(256, 3)
        assert tuple(palette[ROAD]) == (128, 64, 128)  # the colour is the class colour, not the id
        assert tuple(palette[SKY]) == (70, 130, 180)
    assert seen <= set(SCENE_LABEL_IDS)
    assert {ROAD, SIDEWALK, BUILDING, SKY, CAR} <= seen


def test_cityscapes_labels_are_grayscale_label_ids(demo):
    for split in ("train", "val"):
        for name in (demo.target_root / f"{split}.txt").read_text().split():
            label_name = name.replace("_leftImg8bit", "_gtFine_labelIds")
            label = Image.open(demo.target_root / "gtFine" / split / label_name)
            image = Image.open(demo.target_root / "leftImg8bit" / split / name)
            assert label.mode == "L" and image.mode == "RGB"
            assert label.size == image.size == SIZE
            assert set(np.unique(np.asarray(label)).tolist()) <= set(SCENE_LABEL_IDS)


def test_files_load_through_the_factory(demo):
    cfg = demo_cfg(demo)
    expected = {INFO.label2train[i] for i in SCENE_CLASSES}
    source = get_source_dataset(cfg)
    train, test, esl = (get_target_dataset(cfg, stage) for stage in ("train", "test", "esl"))
    assert (len(source), len(train), len(test), len(esl)) == (4, 4, 3, 4)
    assert not train.has_labels and test.has_labels and esl.has_labels
    for dataset in (source, test, esl):
        found = set()
        for image, label, _, _ in (dataset[i] for i in range(len(dataset))):
            assert image.shape == (3, SIZE[1], SIZE[0]) and label.shape == (SIZE[1], SIZE[0])
            found |= set(np.unique(label).tolist())
        assert found - {255} <= expected
        assert {0, 1, 2, 10, 13} <= found  # road, sidewalk, building, sky, car
    image, label, _, _ = train[0]
    assert (label == 255).all()


def test_direct_loaders_and_ignored_ids(demo):
    source = GTA5DataSet(demo.source_root, demo.source_list, set="val", crop_size=SIZE)
    assert len(source) == 2
    target = CityscapesDataSet(demo.target_root, demo.target_list, set="val", crop_size=SIZE)
    raw = np.asarray(target.open_label(target.gt_label_path(target.img_ids[0])))
    _, label, _, _ = target[0]
    assert (raw == EGO_VEHICLE).any()  # the target's ego hood: a label id mapped to 255
    assert (label[raw == EGO_VEHICLE] == 255).all()


def render_many(style, count, domain, size=SIZE):
    return [render_scene(scene_rng(11, domain, "all", i), size, style) for i in range(count)]


def class_stats(scenes):
    """Per label id: (pixel share, mean normalised row, mean RGB)."""
    ids = np.stack([s[0] for s in scenes])
    rgb = np.stack([s[1] for s in scenes]).astype(np.float64)
    rows = np.broadcast_to(np.linspace(0, 1, ids.shape[1])[None, :, None], ids.shape)
    stats = {}
    for label in np.unique(ids):
        mask = ids == label
        stats[int(label)] = (mask.mean(), rows[mask].mean(), rgb[mask].mean(axis=0))
    return stats


@pytest.mark.slow
def test_domains_differ_in_appearance_not_in_layout():
    source = class_stats(render_many(SOURCE_STYLE, 30, "source"))
    target = class_stats(render_many(TARGET_STYLE, 30, "target"))
    common = set(SCENE_CLASSES)
    assert common <= set(source) and common <= set(target)  # every class occurs in both domains
    distances = []
    for label in (ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR):
        share_s, row_s, colour_s = source[label]
        share_t, row_t, colour_t = target[label]
        distances.append(np.linalg.norm(colour_s - colour_t))
        assert distances[-1] > 10, (label, colour_s, colour_t)
        assert abs(row_s - row_t) < 0.12, (label, row_s, row_t)  # same place in the image
        assert 0.5 < share_t / share_s < 2.5, (label, share_s, share_t)  # similar frequency
    assert np.mean(distances) > 40, distances
    assert source[SKY][1] < source[BUILDING][1] < source[ROAD][1]  # sky above, road below
    shares = sorted((source[label][0] for label in common), reverse=True)
    assert shares[0] > 20 * shares[-1]  # imbalanced classes


def test_target_images_are_noisier():
    def roughness(scenes):  # mean absolute difference of horizontally adjacent sky pixels
        diffs = []
        for ids, rgb in scenes:
            both_sky = (ids[:, 1:] == SKY) & (ids[:, :-1] == SKY)
            diffs.append(np.abs(np.diff(rgb.astype(float), axis=1))[both_sky].mean())
        return np.mean(diffs)
    source = roughness(render_many(SOURCE_STYLE, 10, "source"))
    assert roughness(render_many(TARGET_STYLE, 10, "target")) > 1.5 * source


def test_shift_interpolates_the_styles():
    assert blend_styles(SOURCE_STYLE, TARGET_STYLE, 0.0).look == SOURCE_STYLE.look
    assert blend_styles(SOURCE_STYLE, TARGET_STYLE, 1.0).layout == TARGET_STYLE.layout
    half = target_style(0.5)
    assert half.look.gamma == pytest.approx((SOURCE_STYLE.look.gamma + TARGET_STYLE.look.gamma) / 2)
    assert target_style(1.0) is TARGET_STYLE


@pytest.mark.slow
def test_manifest_reuse_and_regeneration(tmp_path):
    data = write_demo_data(tmp_path, seed=0, **SMALL)
    label = data.source_root / "labels" / "00001.png"
    stamp = label.stat().st_mtime_ns
    write_demo_data(tmp_path, seed=0, **SMALL)
    assert label.stat().st_mtime_ns == stamp  # same parameters: reused
    before = label.read_bytes()
    write_demo_data(tmp_path, seed=1, **SMALL)
    assert label.read_bytes() != before  # other parameters: regenerated


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert make_synthetic_data.main(["--out", str(out), "--num-source", "2", "--num-source-val", "1",
                                     "--num-target-train", "2", "--num-target-val", "1",
                                     "--size", "64", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"DATA_LIST_TARGET: {out / 'Cityscapes'}/{{}}.txt" in printed
    assert Image.open(out / "GTA5" / "images" / "00001.png").size == (64, 32)
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic_data.run_main(make_synthetic_data.main, ["--out", str(out), "--shift", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --shift must be in [0, 1], got 2.0\n"


def test_cli_refuses_bad_sizes_seeds_and_an_empty_out_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_synthetic_data, "write_demo_data", lambda *a, **k: pytest.fail("work before the check"))
    out = str(tmp_path / "out")
    for argv, line in ((["--out", out, "--size", "100000", "100000", "--num-source", "1"],
                        "argument --size: must be in [16, 4096], got 100000"),
                       (["--out", out, "--size", "64", "8"], "argument --size: must be in [16, 4096], got 8"),
                       (["--out", out, "--seed", "99999999999"], "argument --seed: must be in [0, 4294967295]"),
                       (["--out", out, "--seed", "-1"], "argument --seed: must be in [0, 4294967295], got -1"),
                       (["--out", out, "--num-target-val", "0"], "argument --num-target-val: must be at least 1"),
                       (["--out", ""], "argument --out: an empty path: ''")):
        with pytest.raises(SystemExit) as stop:
            make_synthetic_data.run_main(make_synthetic_data.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and ": error: " in err[0] and line in err[0], err
    assert not any(tmp_path.iterdir())


def test_running_out_of_memory_is_one_line_naming_what_ran_out(tmp_path, monkeypatch, capsys):
    """run_main: numpy's MemoryError, PyTorch's CPU allocator's RuntimeError and CUDA's
    OutOfMemoryError end as one line and exit code 2, as a full disk does."""
    import torch

    def numpy_out_of_memory():
        np.empty((2 ** 30, 2 ** 30), np.uint8)  # 1 EiB

    def torch_out_of_memory():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 32212254720 bytes. Error code 12 (Cannot allocate memory)")

    def cuda_out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                          "capacity of 79.19 GiB of which 1.06 GiB is free.")

    for fault, line in ((numpy_out_of_memory, "error: out of host memory: Unable to allocate 1.00 EiB for an array "
                                              "with shape (1073741824, 1073741824)"),
                        (torch_out_of_memory, "error: out of host memory: tried to allocate 30.0 GiB"),
                        (cuda_out_of_memory, "error: out of GPU memory: tried to allocate 20.00 GiB"),
                        (lambda: (_ for _ in ()).throw(MemoryError()), "error: out of host memory")):
        monkeypatch.setattr(make_synthetic_data, "write_demo_data", lambda *a, fault=fault, **k: fault())
        with pytest.raises(SystemExit) as stop:
            make_synthetic_data.run_main(make_synthetic_data.main, ["--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(line), err
        assert err[0].endswith("(use smaller sizes or batches)")

    def a_bug(*_args, **_kwargs):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(make_synthetic_data, "write_demo_data", a_bug)
    with pytest.raises(RuntimeError, match="shapes do not match"):  # any other error is a bug: its traceback stays
        make_synthetic_data.run_main(make_synthetic_data.main, ["--out", str(tmp_path / "out")])
