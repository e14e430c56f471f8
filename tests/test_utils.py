"""The small pure helpers of advent.utils, against hand-computed values."""
import argparse
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from advent.domain_adaptation.checkpoint import (
    discriminator_snapshot_path, expected_snapshots, model_snapshot_path, torch_save_atomic,
    train_state_iterations, train_state_path,
)
from advent.utils.cli import device, non_negative, number, positive
from advent.utils.errors import UserError
from advent.utils.func import (
    adjust_learning_rate, adjust_learning_rate_discriminator, bce_loss, fast_hist, lr_poly,
    per_class_iu, prob_2_entropy,
)
from advent.utils.loss import cross_entropy_2d, entropy_loss
from advent.utils.serialization import atomic_path, json_dump, json_load, yaml_dump, yaml_load
from advent.utils.viz_segmask import CITYSCAPES_PALETTE, colorize_mask
from benchmark_scripts import load_benchmark


def test_entropy_of_uniform_is_one_and_of_one_hot_is_zero():
    uniform = torch.full((2, 19, 3, 4), 1 / 19)
    assert torch.allclose(prob_2_entropy(uniform).sum(1), torch.ones(2, 3, 4))
    assert entropy_loss(uniform).item() == pytest.approx(1.0, abs=1e-6)
    one_hot = F.one_hot(torch.tensor([[[0, 3], [18, 5]]]), 19).permute(0, 3, 1, 2).float()
    assert not torch.isnan(prob_2_entropy(one_hot)).any()
    assert prob_2_entropy(one_hot).sum().item() == 0.0
    assert entropy_loss(one_hot).item() == 0.0


def test_entropy_loss_on_two_classes():
    prob = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    expected = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert entropy_loss(prob).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_ignores_255_high_and_negative_labels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3, requires_grad=True)
    labels = torch.tensor([[[0, 2, 255], [1, 200, -1]]])
    loss = cross_entropy_2d(logits, labels)
    log_p = torch.log_softmax(logits, 1)[0]
    expected = -(log_p[0, 0, 0] + log_p[2, 0, 1] + log_p[1, 1, 0]) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    all_ignored = cross_entropy_2d(logits, torch.full((1, 2, 3), 255))
    assert all_ignored.item() == 0.0
    all_ignored.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_bce_loss_against_constant_label():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    for label in (0, 1):
        p = torch.sigmoid(logits)
        expected = -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()
        assert bce_loss(logits, label).item() == pytest.approx(expected.item(), rel=1e-6)


def test_confusion_matrix_and_iou_with_absent_class():
    label = np.array([0, 0, 1, 1, 255, 1])
    pred = np.array([0, 1, 1, 1, 2, 0])
    hist = fast_hist(label, pred, 3)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    iou = per_class_iu(hist)
    np.testing.assert_allclose(iou[:2], [1 / 3, 2 / 4])
    assert np.isnan(iou[2])
    assert np.nanmean(iou) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_poly_schedule_and_ten_times_classifier_lr():
    assert lr_poly(0.1, 0, 100, 0.9) == 0.1
    assert lr_poly(0.1, 50, 100, 0.9) == pytest.approx(0.1 * 0.5 ** 0.9)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    sgd = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:2]}], lr=1.0)
    lr = adjust_learning_rate(sgd, 25, 2.5e-4, 100, 0.9)
    assert lr == pytest.approx(2.5e-4 * 0.75 ** 0.9)
    assert sgd.param_groups[1]["lr"] == pytest.approx(10 * lr)
    adam = torch.optim.Adam(params[2:], lr=1.0)
    assert adjust_learning_rate_discriminator(adam, 25, 1e-4, 100, 0.9) == adam.param_groups[0]["lr"]
    assert adam.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.75 ** 0.9)


def test_poly_schedule_follows_the_power():
    # worked by hand: (1 - 50/100)^2 = 0.25, (1 - 75/100)^0.5 = 0.5, (1 - 25/100)^2 = 0.5625
    assert lr_poly(0.1, 50, 100, 2.0) == pytest.approx(0.025)
    assert lr_poly(0.04, 75, 100, 0.5) == pytest.approx(0.02)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    sgd = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:2]}], lr=1.0)
    assert adjust_learning_rate(sgd, 25, 2e-4, 100, 2.0) == pytest.approx(1.125e-4)
    assert [g["lr"] for g in sgd.param_groups] == pytest.approx([1.125e-4, 1.125e-3])
    adam = torch.optim.Adam(params[2:], lr=1.0)
    assert adjust_learning_rate_discriminator(adam, 25, 1e-4, 100, 2.0) == pytest.approx(5.625e-5)
    assert adam.param_groups[0]["lr"] == pytest.approx(5.625e-5)


def test_colorize_mask_uses_palette_and_blacks_out_ignored():
    image = colorize_mask(np.array([[0, 13], [18, 255]])).convert("RGB")
    assert image.getpixel((0, 0)) == CITYSCAPES_PALETTE[0]
    assert image.getpixel((1, 0)) == CITYSCAPES_PALETTE[13]
    assert image.getpixel((0, 1)) == CITYSCAPES_PALETTE[18]
    assert image.getpixel((1, 1)) == (0, 0, 0)
    assert colorize_mask(np.array([[1]]), palette=[(1, 2, 3), (4, 5, 6)]).convert("RGB").getpixel((0, 0)) == (4, 5, 6)


def test_json_and_yaml_round_trip(tmp_path):
    data = {"mIoU": 43.5, "classes": ["road", "sky"], "nested": {"a": [1, 2]}}
    json_dump(data, tmp_path / "r.json")
    yaml_dump(data, tmp_path / "r.yml")
    assert json_load(tmp_path / "r.json") == data == yaml_load(tmp_path / "r.yml")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "cache.json"
    json_dump({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2')  # half-written
            raise RuntimeError("killed")
    assert json_load(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_snapshot_names_count_completed_iterations(tmp_path):
    assert model_snapshot_path(tmp_path, 2000).name == "model_2000.pth"
    assert discriminator_snapshot_path(tmp_path, 2000, "aux").name == "model_2000_D_aux.pth"
    assert discriminator_snapshot_path(tmp_path, 2000, "main").name == "model_2000_D_main.pth"
    assert expected_snapshots(2000, 6000) == [2000, 4000, 6000]
    assert expected_snapshots(2000, 5000) == [2000, 4000]
    for n in (10, 2, 30):
        torch_save_atomic({"n": n}, train_state_path(tmp_path, n))
    (tmp_path / ".train_state_40.pth.x.tmp").write_bytes(b"partial")
    assert train_state_iterations(tmp_path) == [2, 10, 30]
    assert torch.load(train_state_path(tmp_path, 30), weights_only=True) == {"n": 30}


class _BrokenDataset(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError("cannot decode image /data/x.png: truncated")


def test_user_error_from_loader_worker_stays_one_line():
    with pytest.raises(UserError) as info:
        next(iter(DataLoader(_BrokenDataset(), num_workers=1)))
    assert str(info.value) == "cannot decode image /data/x.png: truncated"


@pytest.mark.slow
def test_run_main_prints_one_line_and_exits_2():
    code = ("from advent.utils.errors import UserError\nfrom advent.utils.runtime import run_main\n"
            "def main(argv):\n    raise UserError('TRAIN.X is bad')\n"
            "run_main(main)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "error: TRAIN.X is bad\n"


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    json_dump({"v": 1}, tmp_path / "out.json")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_numeric_flags_are_refused_out_of_range_by_argparse_in_one_line(capsys):
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--iters", type=positive)
    parser.add_argument("--shift", type=number(float, 0, 1))
    assert vars(parser.parse_args(["--iters", "3", "--shift", "1"])) == {"iters": 3, "shift": 1.0}
    for argv, message in ((["--iters", "0"], "argument --iters: must be at least 1, got 0"),
                          (["--iters", "2.5"], "argument --iters: not an integer: '2.5'"),
                          (["--shift", "nan"], "argument --shift: must be in [0, 1], got nan"),
                          (["--shift", "-0.1"], "argument --shift: must be in [0, 1], got -0.1")):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == f"x: error: {message}"
    assert non_negative("0") == 0 and number(float, high=1)("-5") == -5.0
    assert device("cpu") == "cpu"
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    for text, message in (("bogus", "not a device: 'bogus'"), ("mps", "only cpu and cuda"), (missing, missing)):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            device(text)


@pytest.mark.parametrize("name, argv, message", [
    ("train_speed", ["--iters", "0"], "argument --iters: must be at least 1, got 0"),
    ("train_speed", ["--seed-batch", "1"], "argument --seed-batch: must be at least 2, got 1"),
    ("gpu_check", ["--dry-run", "--sweep", "0"], "argument --sweep: must be at least 1, got 0"),
    ("numerics_check", ["--batches", "0"], "argument --batches: must be at least 1, got 0"),
    ("host_speed", ["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    ("demo_seeds", ["--seeds", "1", "1"], "--seeds: each seed once, got [1, 1]"),
    ("gpu_check", ["--dry-run", "--out", ""], "argument --out: an empty path: ''"),
    ("gpu_check", ["--dry-run", "--work", " "], "argument --work: an empty path: ' '"),
    ("numerics_check", ["--json", ""], "argument --json: an empty path: ''"),
    ("synthetic_gap", ["--out", ""], "argument --out: an empty path: ''"),
    ("synthetic_gap", ["--seeds", "4294967296"], "argument --seeds: must be in [0, 4294967295], got 4294967296"),
    ("eval_speed", ["--seed", "-1"], "argument --seed: must be in [0, 4294967295], got -1"),
])
def test_benchmarks_refuse_counts_that_would_measure_nothing_or_twice(capsys, name, argv, message):
    module = load_benchmark(name)
    with pytest.raises(SystemExit) as stop:
        module.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("script", ["train", "esl", "test", "viz", "summarize", "check_data", "demo",
                                    "make_synthetic_data"])
def test_a_bad_command_line_is_one_line_without_the_usage_block(script, capsys):
    import importlib
    module = importlib.import_module(f"advent.scripts.{script}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--no-such-flag", "1"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert ": error: " in line and "usage" not in line, line
