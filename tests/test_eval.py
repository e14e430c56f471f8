"""Test stage: the on-device confusion matrix, mIoU reports, test.py 'single' / 'best' / ensemble,
the snapshot cache, waiting for snapshots, saved predictions (checked with cityscapesscripts)
and the one-line user errors. Tiny images and the Tiny model throughout."""
import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from advent import PROJECT_ROOT
from advent.config import get_default_cfg
from advent.dataset import get_class_info, get_target_dataset
from advent.dataset.cityscapes import CityscapesDataSet
from advent.dataset.class_info import INFO16_PATH
from advent.domain_adaptation import checkpoint as snapshots, eval_UDA
from advent.domain_adaptation.eval_UDA import (
    BEST_LABEL, CACHE_NAME, RESULTS_BEST, RESULTS_SINGLE, Buffers, build_test_loader, evaluate,
    pick_best, upsampled_prediction,
)
from advent.domain_adaptation.metrics import ConfusionMatrix, summarize, warn_if_suspicious
from advent.domain_adaptation.checkpoint import model_snapshot_path, torch_save_atomic
from advent.model import build_segmenter
from advent.model.weights import file_sha256
from advent.scripts.test import main
from advent.utils.runtime import run_main
from advent.utils.func import fast_hist
from advent.utils.output_dir import exclusive_lock
from advent.utils.serialization import json_dump, yaml_dump
from fake_data import make_fake_cfg, write_cfg_yaml, write_list

TINY = "DeepLabv2-Tiny"
SCRIPT = PROJECT_ROOT / "advent" / "scripts" / "test.py"


# --- helpers ---

def tiny_model(seed, num_classes=19, multi_level=True):
    """A Tiny segmenter whose predictions vary over the image (the default init predicts one class)."""
    torch.manual_seed(seed)
    model = build_segmenter(TINY, num_classes, multi_level)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    return model.eval()


def save_tiny(path, seed, num_classes=19):
    torch.save(tiny_model(seed, num_classes).state_dict(), path)
    return Path(path)


def cfg16():
    """The defaults, with the 16-class list of the SYNTHIA benchmark."""
    cfg = get_default_cfg()
    cfg.NUM_CLASSES = 16
    cfg.TEST.INFO_TARGET = str(INFO16_PATH)
    return cfg


def base_cfg(tmp_path, num_classes=19, target="Cityscapes", **kwargs):
    cfg, written = make_fake_cfg(tmp_path, num_classes=num_classes, target=target, **kwargs)
    cfg.NUM_WORKERS = 0
    cfg.TEST.MODEL = (TINY,)
    return cfg, written


def single_cfg(tmp_path, checkpoints, weights=None, num_classes=19, **kwargs):
    cfg, written = base_cfg(tmp_path, num_classes, **kwargs)
    count = len(checkpoints)
    cfg.TEST.MODE = "single"
    cfg.TEST.RESTORE_FROM = tuple(str(path) for path in checkpoints)
    cfg.TEST.MODEL = (TINY,) * count
    cfg.TEST.MULTI_LEVEL = (True,) * count
    cfg.TEST.MODEL_WEIGHT = tuple(weights or [1.0] * count)
    return cfg, written


def best_cfg(tmp_path, iterations=(2000, 4000, 6000), maxiter=6000, wait=False, seeds=None):
    """A 'best' config over snapshots model_{k}.pth (k in `iterations`; the model of seed
    seeds[k], k by default) in tmp_path/snapshots."""
    cfg, written = base_cfg(tmp_path)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for n_iter in iterations:
        save_tiny(model_snapshot_path(folder, n_iter), seed=(seeds or {}).get(n_iter, n_iter))
    cfg.TEST.MODE = "best"
    cfg.TEST.SNAPSHOT_DIR = (str(folder),)
    cfg.TEST.SNAPSHOT_STEP = 2000
    cfg.TEST.SNAPSHOT_MAXITER = maxiter
    cfg.TEST.WAIT_MODEL = wait
    return cfg, folder


def run_test(cfg, tmp_path, name="test.yml"):
    path = write_cfg_yaml(cfg, tmp_path / name)
    assert main(["--cfg", str(path)]) == 0
    return path


def single_results(cfg, cfg_path):
    """results_single.json, where the README says it is: EXP_ROOT/logs/test/<config name>/."""
    folder = Path(cfg.EXP_ROOT) / "logs" / "test" / Path(cfg_path).stem
    return json.loads((folder / RESULTS_SINGLE).read_text()), folder


def user_error(argv, capsys):
    """Run test.py's main as the script does; return the stderr lines of its exit-code-2 failure
    (without tqdm's progress bars, which also go to stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines()
            if line.strip() and "it/s]" not in line and "s/it]" not in line]


def spy_loads(monkeypatch):
    """Record the paths eval_UDA loads checkpoints from."""
    loaded = []
    original = eval_UDA.load_checkpoint

    def spy(model, path, *args, **kwargs):
        loaded.append(Path(path).name)
        return original(model, path, *args, **kwargs)

    monkeypatch.setattr(eval_UDA, "load_checkpoint", spy)
    return loaded


def direct_iou(labels, preds, num_classes):
    """IoU by the definition, class by class, over pixels whose label is a train id."""
    ious = []
    for c in range(num_classes):
        tp = fp = fn = 0
        for label, pred in zip(labels, preds):
            valid = label < num_classes
            tp += np.sum((label == c) & (pred == c))
            fp += np.sum(valid & (label != c) & (pred == c))
            fn += np.sum((label == c) & (pred != c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(ious)


def reference_hist(models, weights, cfg, amp_dtype=None):
    """The original evaluation, written out: per image the weighted sum of the models' upsampled
    main logits, numpy argmax, fast_hist. Upsampled to OUTPUT_SIZE, or to the label's own size
    where the dataset keeps native label sizes (Mapillary)."""
    dataset = get_target_dataset(cfg, "test")
    native = getattr(dataset, "native_labels", False)
    hist = np.zeros((cfg.NUM_CLASSES, cfg.NUM_CLASSES), dtype=np.int64)
    for image, label, _, _ in dataset:
        height, width = label.shape if native else cfg.TEST.OUTPUT_SIZE_TARGET[::-1]
        output = None
        for model, weight in zip(models, weights):
            with torch.no_grad(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
                main_out = model(torch.from_numpy(image)[None])[1]
            up = F.interpolate(main_out.float(), size=(height, width), mode="bilinear", align_corners=True)
            up = weight * up[0].numpy()
            output = up if output is None else output + up
        hist += fast_hist(label.ravel(), np.argmax(output, axis=0).ravel(), cfg.NUM_CLASSES)
    return hist


# --- the confusion matrix and the reports ---

def test_confusion_matrix_counts_batches_with_ignored_and_absent_classes():
    matrix = ConfusionMatrix(5)
    # class 2: absent from the counted labels and predictions; class 4: predicted only; 255: ignored
    matrix.update(torch.tensor([[0, 0, 1, 255], [3, 3, 1, 0]]), torch.tensor([[0, 1, 1, 2], [3, 4, 1, 0]]))
    matrix.update(torch.tensor([1, 255, 3, 0], dtype=torch.uint8), torch.tensor([1, 4, 3, 3]))
    assert matrix.hist().tolist() == [[2, 1, 0, 1, 0],  # rows: ground truth, columns: prediction
                                      [0, 3, 0, 0, 0],
                                      [0, 0, 0, 0, 0],
                                      [0, 0, 0, 2, 1],
                                      [0, 0, 0, 0, 0]]
    assert matrix.unexpected_labels() == 0
    iou = matrix.compute()
    # TP / (TP + FP + FN): 2 / (2 + 0 + 2), 3 / (3 + 1 + 0), absent, 2 / (2 + 1 + 1), 0 / (0 + 1 + 0)
    np.testing.assert_array_equal(iou, [0.5, 0.75, np.nan, 0.5, 0.0])


def test_confusion_matrix_counts_unexpected_label_values_apart():
    label = torch.tensor([[0, 1, 255, 19, 33, -1, 300, 2]])
    pred = torch.tensor([[0, 1, 1, 2, 0, 1, 2, 2]])
    matrix = ConfusionMatrix(19)
    matrix.update(label, pred)
    assert matrix.unexpected_labels() == 4  # 19, 33, -1, 300; 255 is ignored
    expected = np.zeros((19, 19), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1  # the three pixels with a train id
    assert np.array_equal(matrix.hist(), expected)


def test_hand_computed_3x3_with_an_absent_class():
    label = torch.tensor([0, 0, 0, 1, 1, 255])
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    matrix = ConfusionMatrix(3)
    matrix.update(label, pred)
    assert matrix.hist().tolist() == [[2, 1, 0], [0, 2, 0], [0, 0, 0]]
    summary = summarize(matrix.hist(), ("a", "b", "c"))
    assert summary["per_class"][0]["IoU"] == pytest.approx(100 * 2 / 3)  # TP 2, FN 1
    assert summary["per_class"][1]["IoU"] == pytest.approx(100 * 2 / 3)  # TP 2, FP 1
    assert summary["per_class"][2]["IoU"] is None  # absent: left out of the mean
    assert summary["mIoU"] == pytest.approx(100 * 2 / 3)
    assert "mIoU13" not in summary


def test_miou13_drops_wall_fence_pole_of_16_classes():
    names = get_class_info(cfg16(), "test").names
    assert [names[i] for i in (3, 4, 5)] == ["wall", "fence", "pole"]
    hist = 4 * np.eye(16, dtype=np.int64)
    hist[0, 1] = 1  # IoU 4 / 5 for classes 0 and 1
    hist[3, 4] = hist[4, 5] = hist[5, 3] = 4  # IoU 4 / 12 for wall, fence and pole
    hist[15, 15] = 0  # class 15 absent: left out of both means
    summary = summarize(hist, names)
    assert [e["IoU"] for e in summary["per_class"]] == pytest.approx(
        [80, 80, 100] + [100 / 3] * 3 + [100] * 9 + [None])
    assert summary["mIoU"] == pytest.approx(100 * (0.8 + 0.8 + 10 + 1) / 15)
    assert summary["mIoU13"] == pytest.approx(100 * (0.8 + 0.8 + 10) / 12)


def test_suspicious_numbers_warn_and_good_ones_do_not(caplog):
    good = {"mIoU": 43.2, "labelled_pixels": 100}
    assert warn_if_suspicious(good, 0, 19) == []
    low = {"mIoU": 3.0, "labelled_pixels": 100}
    with caplog.at_level(logging.WARNING):
        warnings = warn_if_suspicious(low, 12, 19)
    assert len(warnings) == 2 and "below 5 %" in caplog.text and "12 ground-truth pixels" in caplog.text


def test_no_labelled_pixel_warns(caplog):
    matrix = ConfusionMatrix(3)
    matrix.update(torch.full((2, 4), 255), torch.zeros(2, 4, dtype=torch.long))  # every pixel ignored
    summary = summarize(matrix.hist(), ("a", "b", "c"))
    assert summary["labelled_pixels"] == 0 and summary["mIoU"] is None
    with caplog.at_level(logging.WARNING):
        warnings = warn_if_suspicious(summary, matrix.unexpected_labels(), 3)
    expected = ("evaluation: no ground-truth pixel holds a train id 0..2: the label mapping looks wrong "
                "(check TEST.INFO_TARGET and NUM_CLASSES)")
    assert warnings == [expected]
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [(logging.WARNING, expected)]


def test_pick_best_takes_the_first_of_equal_and_skips_undefined():
    results = [{"snapshot": "a", "mIoU": None}, {"snapshot": "b", "mIoU": 40.0},
               {"snapshot": "c", "mIoU": 41.0}, {"snapshot": "d", "mIoU": 41.0}]
    assert pick_best(results)["snapshot"] == "c"


# --- prediction: upsampling, argmax, ensemble ---

def test_prediction_is_argmax_of_upsampled_logits_with_reused_buffers():
    torch.manual_seed(0)
    buffers = Buffers()
    for batch in (2, 1, 2):  # the buffers follow a change of batch size
        logits = torch.randn(batch, 19, 5, 9)
        expected = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=True).argmax(1)
        assert torch.equal(upsampled_prediction([logits], [1.0], (64, 32), buffers), expected)


def test_ensemble_is_argmax_of_the_weighted_sum_of_upsampled_logits():
    torch.manual_seed(1)
    a, b = torch.randn(1, 19, 5, 9), torch.randn(1, 19, 5, 9)

    def up(x):
        return F.interpolate(x, size=(32, 64), mode="bilinear", align_corners=True)

    expected = (0.3 * up(a) + 0.7 * up(b)).argmax(1)
    got = upsampled_prediction([a, b], [0.3, 0.7], (64, 32), Buffers())
    assert torch.equal(got, expected)
    assert not torch.equal(got, up(a).argmax(1)) and not torch.equal(got, up(b).argmax(1))
    assert not torch.equal(got, (up(a) + up(b)).argmax(1))  # the weights matter


def test_batches_and_amp_autocast_only_the_forward(tmp_path):
    cfg, _ = base_cfg(tmp_path)
    model = tiny_model(3)
    seen = []
    model.register_forward_hook(lambda *_: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    device = torch.device("cpu")
    _, loader = build_test_loader(cfg, device)
    plain = evaluate([model], loader, 19, device, cfg.TEST.OUTPUT_SIZE_TARGET).hist()
    assert np.array_equal(plain, reference_hist([model], [1.0], cfg))
    assert seen and not any(enabled for enabled, _ in seen)
    cfg.TEST.BATCH_SIZE_TARGET = 3  # batches of 3 and 1
    _, loader3 = build_test_loader(cfg, device)
    assert np.array_equal(evaluate([model], loader3, 19, device, cfg.TEST.OUTPUT_SIZE_TARGET).hist(), plain)
    seen.clear()
    amp = evaluate([model], loader, 19, device, cfg.TEST.OUTPUT_SIZE_TARGET, amp="bf16").hist()
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert np.array_equal(amp, reference_hist([model], [1.0], cfg, amp_dtype=torch.bfloat16))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_on_the_device_as_fast_hist_on_the_cpu():
    torch.manual_seed(2)
    logits = torch.randn(2, 19, 9, 17)
    label = torch.randint(0, 19, (2, 64, 128))
    label[torch.rand(label.shape) < 0.1] = 255
    matrix = ConfusionMatrix(19, "cuda")
    pred = upsampled_prediction([logits.cuda()], [1.0], (128, 64), Buffers())
    matrix.update(label.cuda(), pred)
    assert matrix.mat.device.type == "cuda"
    assert np.array_equal(matrix.hist(), fast_hist(label.numpy(), pred.cpu().numpy(), 19))
    cpu_pred = upsampled_prediction([logits], [1.0], (128, 64))
    assert (cpu_pred == pred.cpu()).float().mean() > 0.999  # CPU and CUDA kernels may differ in the last bit


# --- 'single' mode end to end ---

def test_single_mode_miou_and_saved_predictions_match_a_direct_computation(tmp_path, caplog):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    cfg, written = single_cfg(tmp_path, [checkpoint])
    cfg.TEST.SAVE_PREDICTIONS = True
    with caplog.at_level(logging.INFO):
        cfg_path = run_test(cfg, tmp_path, "single.yml")
    results, folder = single_results(cfg, cfg_path)
    info = get_class_info(cfg, "test")
    label_to_train = {int(label_id): train_id for train_id, label_id in enumerate(info.train2label)}
    labels, preds = [], []
    for name, raw in zip(written["val"].names, written["val"].labels):
        file_name = Path(name).name  # e.g. frankfurt_000000_000019_leftImg8bit.png, flat folder
        ids = np.asarray(Image.open(folder / "predictions" / "labelIds" / file_name))
        color = Image.open(folder / "predictions" / "color" / file_name)
        assert color.mode == "P" and color.getpalette()[:6] == [128, 64, 128, 244, 35, 232]
        assert np.array_equal(np.asarray(color), np.vectorize(label_to_train.get)(ids))
        preds.append(np.vectorize(label_to_train.get)(ids))
        labels.append(info.label2train[raw])
    iou = direct_iou(labels, preds, 19)
    assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) > 3  # a non-trivial prediction
    assert results["mIoU"] == pytest.approx(100 * np.nanmean(iou))
    assert [e["IoU"] for e in results["per_class"]] == pytest.approx(
        [None if np.isnan(v) else 100 * v for v in iou])
    assert np.array_equal(results["confusion_matrix"], reference_hist([tiny_model(5)], [1.0], cfg))
    assert results["images"] == 4 and results["mode"] == "single"
    assert results["checkpoints"][0]["sha256"] == file_sha256(checkpoint)
    assert results["config"] == str(cfg_path.resolve())
    assert f"mIoU = {results['mIoU']:.2f}" in caplog.text and "traffic light" in caplog.text
    record = json.loads(next(folder.glob("run_test_*.json")).read_text())
    assert record["kind"] == "test" and record["weights"][0]["sha256"] == file_sha256(checkpoint)


def test_single_mode_does_not_replace_the_results_another_config_of_that_name_wrote(tmp_path, monkeypatch, capsys):
    cfg, _ = single_cfg(tmp_path, [save_tiny(tmp_path / "model.pth", seed=5)])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_test(cfg, tmp_path / "a", "eval.yml")
    results, folder = single_results(cfg, first)
    before = (folder / RESULTS_SINGLE).read_bytes()
    other = write_cfg_yaml(cfg, tmp_path / "b" / "eval.yml")  # another experiment, a config of the same name
    monkeypatch.setattr(eval_UDA, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    lines = user_error(["--cfg", str(other)], capsys)
    assert lines == [f"error: {folder / RESULTS_SINGLE} holds the results of another config file, {first.resolve()}; "
                     f"test.py does not replace them with those of {other.resolve()}: give this config file another "
                     f"name, or move that folder"]
    assert (folder / RESULTS_SINGLE).read_bytes() == before
    monkeypatch.undo()
    assert main(["--cfg", str(first)]) == 0  # the same config again: its own results, replaced


def test_single_mode_names_a_users_file_of_the_results_name_as_the_users(tmp_path, capsys):
    cfg, _ = single_cfg(tmp_path, [save_tiny(tmp_path / "model.pth", seed=5)])
    path = write_cfg_yaml(cfg, tmp_path / "mine.yml")
    folder = Path(cfg.EXP_ROOT) / "logs" / "test" / "mine"  # where single_results finds them
    folder.mkdir(parents=True)
    (folder / RESULTS_SINGLE).write_text('{"mine": 1}')
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1 and "exists and test.py may not replace it (this project did not write it)" in lines[0]
    assert (folder / RESULTS_SINGLE).read_text() == '{"mine": 1}'


def test_ensemble_end_to_end_equals_weighted_sum_of_upsampled_logits(tmp_path):
    checkpoints = [save_tiny(tmp_path / "a.pth", seed=11), save_tiny(tmp_path / "b.pth", seed=12)]
    weights = [0.25, 1.5]
    cfg, _ = single_cfg(tmp_path, checkpoints, weights)
    results, _ = single_results(cfg, run_test(cfg, tmp_path, "ensemble.yml"))
    models = [tiny_model(11), tiny_model(12)]
    assert np.array_equal(results["confusion_matrix"], reference_hist(models, weights, cfg))
    assert not np.array_equal(results["confusion_matrix"], reference_hist(models, [1.0, 1.0], cfg))
    assert [c["weight"] for c in results["checkpoints"]] == weights


def test_16_classes_report_the_13_class_miou(tmp_path, caplog):
    checkpoint = save_tiny(tmp_path / "m16.pth", seed=7, num_classes=16)
    cfg, _ = single_cfg(tmp_path, [checkpoint], num_classes=16)
    with caplog.at_level(logging.INFO):
        results, _ = single_results(cfg, run_test(cfg, tmp_path, "synthia.yml"))
    hist = np.array(results["confusion_matrix"])
    iou = []
    for c in range(16):  # TP / (TP + FP + FN), class by class
        tp, fp, fn = hist[c, c], hist[:, c].sum() - hist[c, c], hist[c].sum() - hist[c, c]
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    assert results["mIoU13"] == pytest.approx(100 * np.nanmean(np.delete(iou, [3, 4, 5])))
    assert f"mIoU13 = {results['mIoU13']:.2f}" in caplog.text


def test_mapillary_7_classes_write_train_ids(tmp_path):
    checkpoint = save_tiny(tmp_path / "m7.pth", seed=8, num_classes=7)
    cfg, written = single_cfg(tmp_path, [checkpoint], num_classes=7, target="Mapillary")
    cfg.TEST.SAVE_PREDICTIONS = True
    results, folder = single_results(cfg, run_test(cfg, tmp_path, "mapillary.yml"))
    assert len(results["per_class"]) == 7 and "mIoU13" not in results
    saved = sorted(p.name for p in (folder / "predictions" / "trainIds").iterdir())
    assert saved == sorted(Path(n).with_suffix(".png").name for n in written["val"].names)
    assert not (folder / "predictions" / "labelIds").exists()
    assert np.array_equal(results["confusion_matrix"], reference_hist([tiny_model(8, 7)], [1.0], cfg))


def test_cityscapesscripts_gives_our_miou_on_saved_predictions(tmp_path, monkeypatch):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=21)
    cfg, _ = single_cfg(tmp_path, [checkpoint])
    cfg.TEST.SAVE_PREDICTIONS = True
    results, folder = single_results(cfg, run_test(cfg, tmp_path, "cs.yml"))
    predictions = folder / "predictions" / "labelIds"
    monkeypatch.setenv("CITYSCAPES_DATASET", cfg.DATA_DIRECTORY_TARGET)
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(predictions))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    args = cs_eval.args
    for name, value in {"cityscapesPath": cfg.DATA_DIRECTORY_TARGET, "predictionPath": None,
                        "predictionWalk": None, "evalInstLevelScore": False, "JSONOutput": False,
                        "quiet": True, "colorized": False,
                        "groundTruthSearch": os.path.join(cfg.DATA_DIRECTORY_TARGET, "gtFine", "val", "*",
                                                          "*_gtFine_labelIds.png")}.items():
        monkeypatch.setattr(args, name, value, raising=False)
    ground_truth = sorted(glob.glob(args.groundTruthSearch))
    assert len(ground_truth) == 4
    found = [cs_eval.getPrediction(args, gt) for gt in ground_truth]
    assert all(Path(p).parent == predictions for p in found)
    official = cs_eval.evaluateImgLists(found, ground_truth, args)
    assert official["averageScoreClasses"] == pytest.approx(results["mIoU"] / 100, abs=1e-12)
    for entry in results["per_class"]:
        assert official["classScores"][entry["name"]] == pytest.approx(entry["IoU"] / 100, abs=1e-12)


# --- 'best' mode ---

def test_best_mode_evaluates_exactly_the_named_snapshots_and_reports_last_and_best(
        tmp_path, monkeypatch, caplog):
    # put the best of three models in the middle, so neither the first nor the last is the best
    cfg, _ = base_cfg(tmp_path / "probe")
    device = torch.device("cpu")
    _, loader = build_test_loader(cfg, device)
    miou = {seed: np.nanmean(evaluate([tiny_model(seed)], loader, 19, device, (64, 32)).compute())
            for seed in (31, 32, 33)}
    ranked = sorted(miou, key=miou.get)
    cfg, folder = best_cfg(tmp_path, seeds={2000: ranked[0], 4000: ranked[2], 6000: ranked[1]})
    save_tiny(folder / "model_3000.pth", seed=3)  # not a multiple of the step
    save_tiny(folder / "model_8000.pth", seed=8)  # beyond SNAPSHOT_MAXITER
    torch.save({}, folder / "model_2000_D_main.pth")  # a discriminator
    (folder / ".model_6000.pth.abc.tmp").write_bytes(b"half-written")  # a trainer's temporary file
    loaded = spy_loads(monkeypatch)
    with caplog.at_level(logging.INFO):
        run_test(cfg, tmp_path)
    assert loaded == ["model_2000.pth", "model_4000.pth", "model_6000.pth"]
    results = json.loads((folder / RESULTS_BEST).read_text())
    assert [s["snapshot"] for s in results["snapshots"]] == ["model_2000", "model_4000", "model_6000"]
    mious = {s["snapshot"]: s["mIoU"] for s in results["snapshots"]}
    assert len(set(mious.values())) == 3  # different models, so the choice means something
    best = max(mious, key=mious.get)
    assert best == "model_4000" and mious[best] == pytest.approx(100 * miou[ranked[2]])
    assert results["best"] == best and results["last"] == "model_6000"
    assert f"last (model_6000): mIoU = {mious['model_6000']:.2f}" in caplog.text
    assert f"{BEST_LABEL} ({best}): mIoU = {mious[best]:.2f}" in caplog.text
    cache = json.loads((folder / CACHE_NAME).read_text())
    entry = next(e for e in cache["entries"] if e["snapshot"] == "model_4000.pth")
    direct = evaluate([tiny_model(ranked[2])], loader, 19, device, cfg.TEST.OUTPUT_SIZE_TARGET).hist()
    assert np.array_equal(entry["confusion_matrix"], direct)
    assert entry["sha256"] == file_sha256(folder / "model_4000.pth")
    assert list(folder.glob("run_test_*.json"))


def test_best_mode_cache_is_reused_and_invalidated_by_file_or_setting_changes(tmp_path, monkeypatch, caplog):
    cfg, folder = best_cfg(tmp_path)
    loaded = spy_loads(monkeypatch)
    run_test(cfg, tmp_path)
    first = json.loads((folder / RESULTS_BEST).read_text())
    assert len(loaded) == 3

    loaded.clear()
    with caplog.at_level(logging.INFO):
        run_test(cfg, tmp_path)
    assert loaded == []  # served from the cache: no model loaded
    second = json.loads((folder / RESULTS_BEST).read_text())
    assert [s["mIoU"] for s in second["snapshots"]] == [s["mIoU"] for s in first["snapshots"]]
    assert all(s["cached"] for s in second["snapshots"]) and "(cached)" in caplog.text

    save_tiny(folder / "model_4000.pth", seed=99)  # the trainer rewrote one snapshot
    loaded.clear()
    run_test(cfg, tmp_path)
    assert loaded == ["model_4000.pth"]
    third = json.loads((folder / RESULTS_BEST).read_text())
    assert third["snapshots"][1]["mIoU"] != first["snapshots"][1]["mIoU"]

    cfg.TEST.OUTPUT_SIZE_TARGET = (32, 16)  # another evaluation setting
    loaded.clear()
    run_test(cfg, tmp_path)
    assert loaded == ["model_2000.pth", "model_4000.pth", "model_6000.pth"]

    names = cfg.DATA_DIRECTORY_TARGET + "/lists/val.txt"  # another image list
    write_list(names, Path(names).read_text().split()[:3])
    loaded.clear()
    run_test(cfg, tmp_path)
    assert loaded == ["model_2000.pth", "model_4000.pth", "model_6000.pth"]
    assert json.loads((folder / RESULTS_BEST).read_text())["images"] == 3


@pytest.mark.parametrize("damage", ["text", "rows", "negative", "unexpected"])
def test_best_mode_evaluates_again_a_snapshot_whose_cached_counts_were_damaged(tmp_path, monkeypatch, caplog, damage):
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 4000), maxiter=4000)
    loaded = spy_loads(monkeypatch)
    run_test(cfg, tmp_path)
    first = json.loads((folder / RESULTS_BEST).read_text())
    cache = json.loads((folder / CACHE_NAME).read_text())
    entry = cache["entries"][0]
    counts = json.loads(json.dumps(entry["confusion_matrix"]))  # as evaluated
    if damage == "text":
        entry["confusion_matrix"] = "abc"
    elif damage == "rows":
        entry["confusion_matrix"] = entry["confusion_matrix"][:3]
    elif damage == "negative":
        entry["confusion_matrix"][0][0] = -100000  # would lift that snapshot's mIoU and make it 'best'
    else:
        entry["unexpected_label_pixels"] = 1.5
    json_dump(cache, folder / CACHE_NAME, "test.py")  # as the project wrote it (one edited by hand is the user's)
    loaded.clear()
    with caplog.at_level(logging.WARNING):
        run_test(cfg, tmp_path)
    assert loaded == [entry["snapshot"]]  # that one again, the other from the cache
    assert f"ignoring the damaged entry of {entry['snapshot']}" in caplog.text
    again = json.loads((folder / RESULTS_BEST).read_text())
    assert [s["mIoU"] for s in again["snapshots"]] == [s["mIoU"] for s in first["snapshots"]]
    assert again["best"] == first["best"]
    stored = {e["snapshot"]: e for e in json.loads((folder / CACHE_NAME).read_text())["entries"]}
    assert stored[entry["snapshot"]]["confusion_matrix"] == counts  # the damaged entry replaced


def test_best_mode_does_not_replace_the_results_another_config_wrote_in_the_snapshot_folder(
        tmp_path, monkeypatch, capsys):
    cfg, folder = best_cfg(tmp_path, iterations=(2000,), maxiter=2000)
    on_val = run_test(cfg, tmp_path, "eval_val.yml")
    before = (folder / RESULTS_BEST).read_bytes()
    cfg.TEST.SET_TARGET = "train"  # another evaluation of the same run
    on_train = write_cfg_yaml(cfg, tmp_path / "eval_train.yml")
    monkeypatch.setattr(eval_UDA, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    assert user_error(["--cfg", str(on_train)], capsys) == [
        f"error: {folder / RESULTS_BEST} holds the results of another config file, {on_val.resolve()}; test.py "
        f"does not replace them with those of {on_train.resolve()}: move that file out of the folder first (its "
        f"evaluations stay in the test cache), or run that config file"]
    assert (folder / RESULTS_BEST).read_bytes() == before
    monkeypatch.undo()
    assert main(["--cfg", str(on_val)]) == 0  # the same config again: its own results, replaced
    (folder / RESULTS_BEST).rename(tmp_path / "results_best_val.json")  # the way out the message names
    assert main(["--cfg", str(on_train)]) == 0
    assert json.loads((folder / RESULTS_BEST).read_text())["set"] == "train"


def test_best_mode_waits_for_a_snapshot_then_evaluates_it(tmp_path, monkeypatch, caplog):
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 4000), wait=True)
    cfg.TEST.WAIT_TIMEOUT = 3600  # on the fake clock below: never reached
    model, polls, clock = tiny_model(6000), [], [0.0]

    def sleep(seconds):  # the tester's poll; the trainer writes model_6000.pth during its third
        polls.append(seconds)
        clock[0] += seconds
        if len(polls) == 3:
            torch_save_atomic(model.state_dict(), model_snapshot_path(folder, 6000))  # as train.py

    monkeypatch.setattr(snapshots, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    with caplog.at_level(logging.INFO):
        run_test(cfg, tmp_path)
    assert len(polls) == 3
    assert sum("waiting for model_6000.pth" in r.getMessage() for r in caplog.records) == 1
    results = json.loads((folder / RESULTS_BEST).read_text())
    assert [s["snapshot"] for s in results["snapshots"]] == ["model_2000", "model_4000", "model_6000"]


@pytest.mark.parametrize("early_stop, step", [(4000, 2000), (6000, 4000)])
def test_best_mode_stops_waiting_for_a_snapshot_a_finished_run_did_not_write(
        tmp_path, monkeypatch, capsys, early_stop, step):
    """The run's config.yml says where it ended and how often it saved: once its last snapshot
    exists, one that is missing will never come (a shorter run, or another step)."""
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 4000) if step == 2000 else (4000, 6000), wait=True)
    yaml_dump({"TRAIN": {"SAVE_PRED_EVERY": step, "EARLY_STOP": early_stop, "MAX_ITERS": 250000}},
              folder / "config.yml")
    polls = []
    fake_clock(monkeypatch, on_sleep=lambda: polls.append(1))
    missing = 6000 if step == 2000 else 2000
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "best.yml"))], capsys)
    assert lines == [f"error: model_{missing}.pth will not come: the training run in {folder} finished at iteration "
                     f"{early_stop}, with a snapshot every {step} (TRAIN.SAVE_PRED_EVERY) and at its end; set "
                     f"TEST.SNAPSHOT_STEP and TEST.SNAPSHOT_MAXITER to the snapshots it wrote"] and polls == []
    model_snapshot_path(folder, early_stop).unlink()  # the run is not finished yet: the tester waits
    cfg.TEST.WAIT_TIMEOUT = 30
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "best.yml"))], capsys)
    assert lines[0].startswith("error: gave up waiting for") and len(polls) > 0


def test_best_mode_gives_up_waiting_after_the_timeout(tmp_path, monkeypatch, caplog, capsys):
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 4000), wait=True)
    cfg.TEST.WAIT_TIMEOUT = 1
    monkeypatch.setattr(snapshots, "POLL_SECONDS", 0.05)
    path = write_cfg_yaml(cfg, tmp_path / "wait.yml")
    polls = []
    now = fake_clock(monkeypatch, on_sleep=lambda: polls.append(now[0]))
    with caplog.at_level(logging.INFO):
        lines = user_error(["--cfg", str(path)], capsys)
    assert now[0] == pytest.approx(1) and len(polls) == 20  # polled every 0.05 s until the timeout
    assert lines == [f"error: gave up waiting for {folder / 'model_6000.pth'} after 1 s (TEST.WAIT_TIMEOUT)"]
    assert sum("waiting for model_6000.pth" in r.getMessage() for r in caplog.records) == 1


def fake_clock(monkeypatch, on_sleep=lambda: None, module=snapshots):
    """The clock of a waiting `module` (by default the tester's): each poll (sleep) calls `on_sleep`
    and moves the clock on. Returns [the clock's time], which the polls advance."""
    now = [0.0]

    def sleep(seconds):
        on_sleep()
        now[0] += seconds

    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    return now


def test_best_mode_waits_for_the_snapshot_folder_the_trainer_has_not_created_yet(tmp_path, monkeypatch, caplog):
    cfg, trained = best_cfg(tmp_path / "trained")
    later = tmp_path / "run"  # where the trainer will put the run
    cfg.TEST.SNAPSHOT_DIR, cfg.TEST.WAIT_MODEL, cfg.TEST.WAIT_TIMEOUT = (str(later),), True, 60
    polls = []

    def trainer_starts():  # at the tester's first poll the folder appears, with its snapshots
        polls.append(later.exists())
        trained.rename(later)

    fake_clock(monkeypatch, trainer_starts)
    with caplog.at_level(logging.INFO):
        run_test(cfg, tmp_path)
    assert polls == [False]  # it waited, and did not create the folder itself meanwhile
    assert sum(f"waiting for run in {tmp_path}" in r.getMessage() for r in caplog.records) == 1
    results = json.loads((later / RESULTS_BEST).read_text())
    assert [s["snapshot"] for s in results["snapshots"]] == ["model_2000", "model_4000", "model_6000"]


def test_best_mode_gives_up_on_a_snapshot_folder_that_never_appears(tmp_path, monkeypatch, capsys):
    cfg, _ = base_cfg(tmp_path)
    folder = tmp_path / "run"
    cfg.TEST.MODE, cfg.TEST.SNAPSHOT_DIR = "best", (str(folder),)
    cfg.TEST.WAIT_MODEL, cfg.TEST.WAIT_TIMEOUT = True, 30
    fake_clock(monkeypatch)
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "wait.yml"))], capsys)
    assert lines == [f"error: gave up waiting for {folder} after 30 s (TEST.WAIT_TIMEOUT)"]
    assert not folder.exists()


def test_a_second_best_mode_run_on_one_snapshot_folder_stops_before_it_reads_the_cache(tmp_path, capsys):
    cfg, folder = best_cfg(tmp_path, iterations=(2000,), maxiter=2000)
    run_test(cfg, tmp_path)
    before = {name: (folder / name).read_bytes() for name in (RESULTS_BEST, CACHE_NAME)}
    with exclusive_lock(folder / CACHE_NAME, "test.py"):  # another test.py evaluating there
        lines = user_error(["--cfg", str(tmp_path / "test.yml")], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder / CACHE_NAME} is in use by another run (test.py, "
                                                   f"pid {os.getpid()}")
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_best_mode_checks_the_data_before_it_waits_for_the_run(tmp_path, monkeypatch, capsys):
    cfg, _ = base_cfg(tmp_path)
    cfg.TEST.MODE, cfg.TEST.SNAPSHOT_DIR = "best", (str(tmp_path / "run"),)  # not trained yet
    cfg.TEST.WAIT_MODEL, cfg.DATA_DIRECTORY_TARGET = True, str(tmp_path / "nowhere")
    fake_clock(monkeypatch, lambda: pytest.fail("waited for the run before checking the data"))
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "wait.yml"))], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: Cityscapes root {tmp_path / 'nowhere'} not found")


def test_best_mode_without_waiting_skips_missing_snapshots(tmp_path, caplog, capsys):
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 6000))
    with caplog.at_level(logging.INFO):
        run_test(cfg, tmp_path)
    results = json.loads((folder / RESULTS_BEST).read_text())
    assert [s["snapshot"] for s in results["snapshots"]] == ["model_2000", "model_6000"]
    assert "skipped 1 missing snapshot(s) (TEST.WAIT_MODEL is False): model_4000.pth" in caplog.text
    for name in ("model_2000.pth", "model_6000.pth"):
        (folder / name).unlink()
    path = write_cfg_yaml(cfg, tmp_path / "none.yml")
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1
    assert lines[0] == f"error: no snapshot model_<k>.pth for k = 2000, 4000, ... 6000 in {folder}"


# --- user errors and warnings ---

@pytest.mark.slow
def test_missing_snapshot_folder_is_one_line_exit_2_from_the_script(tmp_path):
    cfg, _ = base_cfg(tmp_path)
    cfg.TEST.MODE = "best"
    cfg.TEST.SNAPSHOT_DIR = (str(tmp_path / "nowhere"),)
    cfg.TEST.WAIT_MODEL = False
    path = write_cfg_yaml(cfg, tmp_path / "missing.yml")
    result = subprocess.run([sys.executable, str(SCRIPT), "--cfg", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: snapshot folder {tmp_path / 'nowhere'} not found (TEST.SNAPSHOT_DIR)"]


def test_a_label_with_a_foreign_id_or_of_the_wrong_size_is_one_line_naming_it(tmp_path, capsys):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    cfg, written = single_cfg(tmp_path, [checkpoint])
    path = write_cfg_yaml(cfg, tmp_path / "single.yml")
    val = written["val"]
    ids = val.labels[1].astype(np.uint8)
    ids[0, 0] = 200  # no Cityscapes label id
    Image.fromarray(ids).save(val.label_paths[1])
    lines = user_error(["--cfg", str(path)], capsys)
    assert lines == [f"error: label {val.label_paths[1]} holds values [200] outside Cityscapes label ids 0..33"]
    Image.fromarray(val.labels[1].astype(np.uint8)[:16]).save(val.label_paths[1])
    lines = user_error(["--cfg", str(path)], capsys)
    assert lines == [f"error: label {val.label_paths[1]} is 64x16 pixels, its image 64x32"]


def test_missing_checkpoint_wrong_class_count_and_empty_list_are_one_line_errors(tmp_path, capsys):
    cfg, _ = single_cfg(tmp_path, [tmp_path / "absent.pth"])
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "a.yml"))], capsys)
    assert lines == [f"error: checkpoint not found: {tmp_path / 'absent.pth'}"]

    checkpoint = save_tiny(tmp_path / "m19.pth", seed=1, num_classes=19)
    cfg, _ = single_cfg(tmp_path / "c16", [checkpoint], num_classes=16)
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "b.yml"))], capsys)
    assert len(lines) == 1 and "classifier has 19 classes, config NUM_CLASSES is 16" in lines[0]

    cfg, _ = single_cfg(tmp_path / "empty", [checkpoint])
    list_path = Path(cfg.DATA_DIRECTORY_TARGET) / "lists" / "val.txt"
    list_path.write_text("")
    lines = user_error(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "c.yml"))], capsys)
    assert lines == [f"error: list file {list_path} is empty"]


def test_a_broken_label_mapping_is_warned_about(tmp_path, monkeypatch, caplog):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    cfg, _ = single_cfg(tmp_path, [checkpoint])
    with caplog.at_level(logging.WARNING):
        run_test(cfg, tmp_path, "good.yml")
    assert "outside the train ids" not in caplog.text
    caplog.clear()
    # the mistake: raw Cityscapes label ids passed through unmapped
    monkeypatch.setattr(CityscapesDataSet, "label_lookup", property(lambda self: np.arange(256)))
    with caplog.at_level(logging.WARNING):
        run_test(cfg, tmp_path, "broken.yml")
    assert "ground-truth pixels hold values outside the train ids 0..18 and 255" in caplog.text
    assert "is below 5 %" in caplog.text
