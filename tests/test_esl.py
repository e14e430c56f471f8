"""esl.py end to end on tiny Cityscapes-format data: labels and report against a direct
reference computation in the published order (probabilities upsampled), groups with a short
last group, file names the loader reads back, unlabelled targets, and the failure modes (bad
output folder, crash mid-run). The output folder's ownership, locking and signals: test_esl_output.py."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from advent.dataset import get_target_dataset, png_name
from advent.domain_adaptation import checkpoint as snapshots, esl_UDA
from advent.model import build_segmenter
from advent.scripts import esl as esl_script
from advent.utils.errors import UserError
from advent.utils.output_dir import MANIFEST_NAME, lock_path, read_manifest
from advent.utils.serialization import json_load
from fake_data import make_fake_cfg, write_cfg_yaml

NUM_CLASSES = 19


def tiny_checkpoint(path, seed=0, scale=100.0):
    """A Tiny DeepLab with random classifiers strong enough to give varied predictions (the
    backbone features are tiny at init); `scale` 1e4 gives a confident one (mean max-probability
    about 0.98)."""
    torch.manual_seed(seed)
    model = build_segmenter("DeepLabv2-Tiny", NUM_CLASSES, True)
    for name, param in model.named_parameters():
        if name.startswith(("layer5", "layer6")) and name.endswith("weight"):
            param.data.normal_(0, scale)
    torch.save(model.state_dict(), path)
    return model


def esl_config(tmp_path, method="entropy", group=3, count=6, train_labels=True, output_size=(48, 24),
               scale=100.0):
    cfg, written = make_fake_cfg(tmp_path, count=count, train_labels=train_labels)
    tiny_checkpoint(tmp_path / "model.pth", scale=scale)
    cfg.NUM_WORKERS = 0
    cfg.ESL.MODEL = "DeepLabv2-Tiny"
    cfg.ESL.RESTORE_FROM = str(tmp_path / "model.pth")
    cfg.ESL.METHOD = method
    cfg.ESL.MAX_MEDIAN_BATCH = group
    cfg.ESL.WAIT_MODEL = False
    cfg.ESL.OUTPUT_SIZE_TARGET = output_size
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "labels")
    return cfg, written


def run_esl(cfg, tmp_path):
    path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    assert esl_script.main(["--cfg", str(path)]) == 0
    return json_load(tmp_path / "labels" / esl_UDA.REPORT_NAME)


def hand_maps(logits, output_size, method, order="published"):
    """Label and score maps of one image's main logits (1 x C x h x w), with plain torch ops.

    'published': softmax at the network's resolution, the probabilities upsampled (bilinear,
    align_corners=True); 'logits first': the logits upsampled, then the softmax. Then argmax,
    and the normalised entropy (0 ln 0 = 0) or the max-probability."""
    width, height = output_size

    def up(x):
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)

    prob = up(torch.softmax(logits, 1)) if order == "published" else torch.softmax(up(logits), 1)
    prob = prob[0]
    if method == "maxprob":
        return prob.argmax(0), prob.max(0).values
    p_log_p = torch.where(prob > 0, prob * torch.log(prob), torch.zeros_like(prob))
    return prob.argmax(0), (-p_log_p.sum(0) / math.log(prob.shape[0])).clamp(min=0)


def reference(cfg, order="published"):
    """The published rule (docs/esl.md) stated directly: per group, sort each class's scores, take index round(n/2)."""
    model = build_segmenter("DeepLabv2-Tiny", NUM_CLASSES, True)
    model.load_state_dict(torch.load(cfg.ESL.RESTORE_FROM, weights_only=True))
    model.eval()
    dataset = get_target_dataset(cfg, "esl")
    maps = []
    with torch.no_grad():
        for image, gt, _, name in dataset:
            _, logits = model(torch.from_numpy(image)[None])
            label, score = hand_maps(logits, cfg.ESL.OUTPUT_SIZE_TARGET, cfg.ESL.METHOD, order)
            maps.append((name, label.numpy(), score.numpy(), gt))
    labels, thresholds_per_group = {}, []
    for start in range(0, len(maps), cfg.ESL.MAX_MEDIAN_BATCH):
        group = maps[start:start + cfg.ESL.MAX_MEDIAN_BATCH]
        all_labels = np.concatenate([m[1].ravel() for m in group])
        all_scores = np.concatenate([m[2].ravel() for m in group])
        thresholds = np.zeros(NUM_CLASSES, np.float32)
        for c in range(NUM_CLASSES):
            values = np.sort(all_scores[all_labels == c])
            thresholds[c] = values[round(len(values) / 2)] if len(values) else 0.0
        if cfg.ESL.METHOD == "entropy":
            thresholds = np.maximum(thresholds, np.float32(cfg.ESL.THRESHOLD))
        else:
            thresholds = np.minimum(thresholds, np.float32(cfg.ESL.MAXPROB_THRESHOLD))
        thresholds_per_group.append(thresholds)
        for name, label, score, gt in group:
            drop = score > thresholds[label] if cfg.ESL.METHOD == "entropy" else score < thresholds[label]
            labels[name] = (np.where(drop, 255, label), label, gt)
    return labels, thresholds_per_group


@pytest.mark.parametrize("method, threads", [("entropy", 0), ("entropy", 3), ("maxprob", 3)])
def test_labels_and_report_equal_direct_reference(tmp_path, method, threads):
    cfg, _ = esl_config(tmp_path, method=method, group=4, count=6)  # 6 images: groups of 4 and 2
    cfg.ESL.THREADS = threads
    report = run_esl(cfg, tmp_path)
    expected, thresholds = reference(cfg)
    assert len(expected) == 6 and [g["images"] for g in report["groups"]] == [[0, 4], [4, 6]]
    for group, reference_thresholds in zip(report["groups"], thresholds):
        np.testing.assert_array_equal(np.float32(group["thresholds"]), reference_thresholds)
    kept = predicted = 0
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for name, (pseudo, label, gt) in expected.items():
        written = np.asarray(Image.open(tmp_path / "labels" / png_name(name)))
        assert written.dtype == np.uint8 and written.shape == (24, 48)
        np.testing.assert_array_equal(written, pseudo)
        kept += (pseudo != 255).sum()
        predicted += label.size
        valid = (pseudo != 255) & (gt != 255)
        index = NUM_CLASSES * gt[valid].astype(np.int64) + pseudo[valid]  # the loader's labels are 8-bit
        hist += np.bincount(index, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    assert 0 < kept < predicted
    assert report["kept_fraction"] == pytest.approx(kept / predicted)
    assert report["accuracy_kept"] == pytest.approx(np.trace(hist) / hist.sum())
    assert report["images"] == 6 and report["method"] == method


@pytest.mark.parametrize("method", ["entropy", "maxprob"])
def test_confident_model_labels_follow_the_published_order(tmp_path, method):
    """Probabilities upsampled, not logits: on a confident model the two orders disagree on
    many pixels (about a fifth here), and the labels written are those of the published one."""
    cfg, _ = esl_config(tmp_path, method=method, group=3000, output_size=(64, 32), scale=1e4)
    run_esl(cfg, tmp_path)
    published, _ = reference(cfg)
    logits_first, _ = reference(cfg, order="logits first")
    argmax_differs = pseudo_differs = pixels = 0
    for name, (pseudo, label, _) in published.items():
        written = np.asarray(Image.open(tmp_path / "labels" / png_name(name)))
        np.testing.assert_array_equal(written, pseudo)
        argmax_differs += (logits_first[name][1] != label).sum()
        pseudo_differs += (logits_first[name][0] != written).sum()
        pixels += label.size
    assert argmax_differs > 0.1 * pixels and pseudo_differs > 0.05 * pixels


def test_labels_load_back_through_the_pseudo_label_loader(tmp_path):
    cfg, written = esl_config(tmp_path, output_size=(64, 32))
    run_esl(cfg, tmp_path)
    expected, _ = reference(cfg)
    train = get_target_dataset(cfg, "train")  # pseudo-label mode: PSEUDO_LABEL_DIRECTORY_TARGET is set
    assert train.has_labels
    loaded = []
    for _, label, _, name in train:
        np.testing.assert_array_equal(label, expected[name][0])
        loaded.append(name)
    assert len(loaded) == 6 and loaded == written["train"].names  # every image of the split, in list order


def test_one_group_when_max_median_batch_exceeds_dataset(tmp_path):
    cfg, _ = esl_config(tmp_path, group=3000, count=4)
    report = run_esl(cfg, tmp_path)
    assert [g["images"] for g in report["groups"]] == [[0, 4]]


def test_unlabelled_target_split(tmp_path):
    cfg, _ = esl_config(tmp_path, train_labels=False, count=4)
    assert not (tmp_path / "data" / "Cityscapes" / "gtFine" / "train").exists()
    report = run_esl(cfg, tmp_path)
    assert "accuracy_kept" not in report
    assert len(list((tmp_path / "labels").glob("*.png"))) == 4
    assert "acc kept" not in esl_UDA.format_report(report)


def test_no_temporary_files_are_left(tmp_path):
    cfg, _ = esl_config(tmp_path)
    run_esl(cfg, tmp_path)
    # beside: only the lock file (it stays; the kernel releases the lock) and the manifest recording
    # it and the label folder; inside: only the manifest
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([
        MANIFEST_NAME, lock_path(tmp_path / "labels").name])
    assert read_manifest(tmp_path).temporary == {}
    assert [p.name for p in (tmp_path / "labels").glob(".*")] == [MANIFEST_NAME]


def test_crash_mid_run_keeps_previous_labels(tmp_path, monkeypatch):
    cfg, _ = esl_config(tmp_path)
    run_esl(cfg, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "labels").iterdir()}
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(*args, **kwargs)

    original = esl_UDA.apply_thresholds
    monkeypatch.setattr(esl_UDA, "apply_thresholds", crash_on_third)
    cfg.ESL.METHOD = "maxprob"
    with pytest.raises(RuntimeError, match="killed"):
        run_esl(cfg, tmp_path)
    after = {p.name: p.read_bytes() for p in (tmp_path / "labels").iterdir()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_output_folder_problems_fail_before_model_work(tmp_path):
    cfg, _ = esl_config(tmp_path)
    cfg.ESL.RESTORE_FROM = str(tmp_path / "absent.pth")  # would fail later, if it got there
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = ""
    with pytest.raises(UserError, match="PSEUDO_LABEL_DIRECTORY_TARGET is empty"):
        esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "a.yml"))])
    (tmp_path / "a_file").write_text("x")
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "a_file" / "labels")
    with pytest.raises(UserError, match="a_file is a file, not a folder"):
        esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "b.yml"))])


def test_two_images_of_one_file_name_are_refused_before_model_work(tmp_path):
    cfg, written = esl_config(tmp_path)
    train = written["train"]
    first = train.names[0]  # e.g. aachen/aachen_..._leftImg8bit.png: the same file in another city
    twin = f"elsewhere/{first.split('/')[-1]}"
    copy = train.root / "leftImg8bit" / "train" / twin
    copy.parent.mkdir()
    copy.write_bytes(train.image_paths[0].read_bytes())
    train.list_path.write_text("\n".join([*train.names, twin]) + "\n")
    cfg.ESL.RESTORE_FROM = str(tmp_path / "absent.pth")  # would fail later, if it got there
    with pytest.raises(UserError, match=f"two images share the file name {png_name(first)} in "
                                        f"PSEUDO_LABEL_DIRECTORY_TARGET .*{first} and {twin}"):
        esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "esl.yml"))])
    assert not (tmp_path / "labels").exists() or not list((tmp_path / "labels").glob("*.png"))


@pytest.mark.slow
def test_missing_checkpoint_one_line_exit_2(tmp_path):
    cfg, _ = esl_config(tmp_path)
    cfg.ESL.RESTORE_FROM = str(tmp_path / "absent.pth")
    path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    result = subprocess.run([sys.executable, "-m", "advent.scripts.esl", "--cfg", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: ESL.RESTORE_FROM not found: {tmp_path / 'absent.pth'}"


def test_wait_for_checkpoint_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "POLL_SECONDS", 0.05)
    with pytest.raises(UserError, match=r"gave up waiting for .*later.pth after 0.2 s \(ESL.WAIT_TIMEOUT\)"):
        esl_script.check_checkpoint(str(tmp_path / "later.pth"), True, 0.2)
    (tmp_path / "later.pth").write_bytes(b"")
    esl_script.check_checkpoint(str(tmp_path / "later.pth"), True, 0.2)


def test_outputs_are_readable_by_others_as_umask_allows(tmp_path):
    import os
    cfg, _ = esl_config(tmp_path)
    run_esl(cfg, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "labels").stat().st_mode & 0o777 == 0o777 & ~umask
    for path in (tmp_path / "labels").iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
