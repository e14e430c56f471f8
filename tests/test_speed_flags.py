"""The throughput switches: CHANNELS_LAST in train / test / esl (the networks and inputs in NHWC,
same results up to rounding, plain snapshots, free to change on resume), ESL.AMP / TEST.AMP
autocast in the inference stages (training's AMP is tested in test_train), and the training speed
benchmark."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advent import PROJECT_ROOT
from advent.domain_adaptation import esl_UDA, eval_UDA, train_UDA
from advent.domain_adaptation.eval_UDA import RESULTS_SINGLE, build_test_loader, evaluate
from advent.domain_adaptation.train_UDA import TrainingInterrupted, train_domain_adaptation
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.utils.serialization import json_load
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S
from test_esl import esl_config
from test_eval import base_cfg, reference_hist, save_tiny, single_cfg, tiny_model
from test_train import interrupt_at, tiny_cfg

CPU = torch.device("cpu")
NHWC = torch.channels_last


def is_nhwc(tensor):
    return tensor.dim() == 4 and tensor.is_contiguous(memory_format=NHWC)


def run_recording(cfg, monkeypatch):
    """Train `cfg`; return the loss metrics of every iteration and whether every segmenter
    forward saw NHWC weights and images."""
    losses, nhwc = [], []
    predict, step = train_UDA.predict, train_UDA.train_step

    def spy_predict(model, images, size, amp):
        nhwc.append(is_nhwc(images) and is_nhwc(model.conv1.weight))
        return predict(model, images, size, amp)

    def spy_step(*args):
        metrics, outputs = step(*args)
        losses.append({k: v for k, v in metrics.items() if k.startswith("loss_")})
        return metrics, outputs

    with monkeypatch.context() as patch:
        patch.setattr(train_UDA, "predict", spy_predict)
        patch.setattr(train_UDA, "train_step", spy_step)
        train_domain_adaptation(cfg, CPU)
    return losses, nhwc


@pytest.mark.slow
def test_channels_last_training_is_nhwc_with_the_same_losses_and_plain_snapshots(tmp_path, monkeypatch):
    runs = {}
    for channels_last in (False, True):
        cfg, _ = tiny_cfg(tmp_path / str(channels_last), "AdvEnt", iters=4, save_every=2)
        cfg.CHANNELS_LAST = channels_last
        runs[channels_last] = run_recording(cfg, monkeypatch)
    (plain, plain_nhwc), (ours, ours_nhwc) = runs[False], runs[True]
    assert all(ours_nhwc) and not any(plain_nhwc) and len(ours) == 4
    for mine, theirs in zip(ours, plain):  # the same computation, other kernels
        assert mine == pytest.approx(theirs, rel=1e-3)
    snapshot = torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_4.pth", weights_only=True)
    assert all(v.is_contiguous() for v in snapshot.values())  # the default layout on disk


@pytest.mark.slow
def test_channels_last_may_change_on_resume(tmp_path, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "MinEnt", iters=4, save_every=2)
    cfg.CHANNELS_LAST = True
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        with pytest.raises(TrainingInterrupted):
            train_domain_adaptation(cfg, CPU)
    resumed, _ = tiny_cfg(tmp_path, "MinEnt", iters=4, save_every=2)  # CHANNELS_LAST off now
    assert train_domain_adaptation(resumed, CPU, resume=True) == 4


def layouts_seen(model):
    """A list that each forward of `model` extends with (image in NHWC, first conv's weight in NHWC)."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append((is_nhwc(args[0]), is_nhwc(model.conv1.weight))))
    return seen


def test_channels_last_evaluation_feeds_nhwc_images_and_counts_as_the_default_layout(tmp_path):
    cfg, _ = base_cfg(tmp_path)
    _, loader = build_test_loader(cfg, CPU)
    model = tiny_model(3)
    seen = layouts_seen(model)
    plain = evaluate([model], loader, 19, CPU, cfg.TEST.OUTPUT_SIZE_TARGET).hist()
    assert seen and set(seen) == {(False, False)}
    seen.clear()
    nhwc = evaluate([model.to(memory_format=NHWC)], loader, 19, CPU, cfg.TEST.OUTPUT_SIZE_TARGET,
                    channels_last=True).hist()
    assert seen and set(seen) == {(True, True)}
    assert np.abs(nhwc - plain).sum() <= 0.002 * plain.sum()  # argmax ties may fall either way


def test_test_script_with_channels_last_and_bf16(tmp_path, monkeypatch):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=7)
    cfg, _ = single_cfg(tmp_path, [checkpoint])
    cfg.CHANNELS_LAST, cfg.TEST.AMP = True, "bf16"
    path = write_cfg_yaml(cfg, tmp_path / "fast.yml")
    original, seen = eval_UDA.load_segmenter, []

    def spy(*args, **kwargs):  # test.py's model, watched
        model, info = original(*args, **kwargs)
        seen.append(layouts_seen(model))
        return model, info

    monkeypatch.setattr(eval_UDA, "load_segmenter", spy)
    assert test_script.main(["--cfg", str(path)]) == 0
    assert len(seen) == 1 and seen[0] and set(seen[0]) == {(True, True)}  # NHWC weights and images
    results = json_load(Path(cfg.EXP_ROOT) / "logs" / "test" / "fast" / RESULTS_SINGLE)
    assert results["channels_last"] is True and results["amp"] == "bf16"
    hist = np.array(results["confusion_matrix"])
    bf16 = reference_hist([tiny_model(7)], [1.0], cfg, amp_dtype=torch.bfloat16)  # the default layout
    assert hist.sum() == bf16.sum() > 0
    # Tolerance: the NHWC kernels sum in another order, so a bf16 conv output (8 significant
    # bits) may round to the neighbouring value and flip a pixel whose two best logits are that
    # close; at most 0.2 % of the pixels (9 of the 4,498 here) may move, each adding 2 to the
    # difference. Measured on an x86 CPU with native bf16: none move; without autocast, 41 do.
    assert np.abs(hist - bf16).sum() <= 2 * 0.002 * hist.sum()


@pytest.mark.slow
def test_esl_under_bf16_autocast_and_channels_last(tmp_path, monkeypatch):
    labels = {}
    original = esl_UDA.main_logits
    for name, amp, channels_last in (("fp32", "none", False), ("bf16", "bf16", True)):
        seen = []

        def spy(model, image, amp_arg):
            seen.append((amp_arg, is_nhwc(image), is_nhwc(model.conv1.weight)))
            return original(model, image, amp_arg)

        cfg, written = esl_config(tmp_path / name, output_size=(64, 32))
        cfg.ESL.AMP, cfg.CHANNELS_LAST = amp, channels_last
        with monkeypatch.context() as patch:
            patch.setattr(esl_UDA, "main_logits", spy)
            assert esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / name / "esl.yml"))]) == 0
        assert seen and set(seen) == {(amp, channels_last, channels_last)}
        folder = Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
        labels[name] = np.stack([np.asarray(Image.open(folder / Path(n).with_suffix(".png").name))
                                 for n in written["train"].names])
    kept = labels["bf16"] != 255
    assert 0 < kept.mean() < 1 and labels["bf16"][kept].max() < 19
    # bf16 logits: a few labels and thresholds move (99.1 % of the pixels agree here)
    assert (labels["bf16"] == labels["fp32"]).mean() > 0.97


@pytest.mark.slow
def test_train_speed_benchmark_runs_and_prints_ratios_to_fp32():
    script = PROJECT_ROOT / "benchmarks" / "train_speed.py"
    result = subprocess.run([sys.executable, str(script), "--device", "cpu", "--models", "DeepLabv2-Tiny",
                             "--modes", "none", "bf16", "--channels-last", "--iters", "1", "--warmup", "1",
                             "--source-size", "64", "32", "--target-size", "64", "32", "--threads", "1"],
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line[16:40].strip(): line.split() for line in result.stdout.splitlines()
            if line.startswith("DeepLabv2-Tiny")}
    assert list(rows) == ["fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"]
    assert rows["fp32"][-2:] == ["1.00", "1.00"]  # the ratios' reference
    assert all(float(row[-1]) > 0 and float(row[-2]) > 0 for row in rows.values())
