"""benchmarks/numerics_check.py: its comparison on hand-made curves, its data, and a short run end to
end on the CPU (bf16 against IEEE float32, the Tiny model)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from advent.utils.serialization import json_load
from benchmark_scripts import benchmark_path, load_benchmark
from processes import HANG_GUARD_S

SCRIPT = benchmark_path("numerics_check")


@pytest.fixture(scope="module")
def check():
    return load_benchmark("numerics_check")


def test_deviation_is_the_largest_smoothed_difference_over_the_reference_scale(check):
    reference = {"loss_a": [2.0, 2.0, 1.0, 1.0]}
    assert check.deviation({"loss_a": [2.0, 2.0, 1.2, 1.0]}, reference, window=1) == {"loss_a": pytest.approx(0.1)}
    # a window of 2: smoothed reference [2, 1.5, 1], ours [2, 1.6, 1.1]: 0.1 / 2
    assert check.deviation({"loss_a": [2.0, 2.0, 1.2, 1.0]}, reference, window=2) == {"loss_a": pytest.approx(0.05)}
    assert check.smoothed([1.0, 3.0, 5.0], 2).tolist() == [2.0, 4.0]


def test_a_variant_passes_within_the_tolerance_or_three_noise_floors(check):
    floor = {"loss_seg_src_main": 0.01, "loss_seg_src_aux": 0.04}
    assert check.judge({"loss_seg_src_main": 0.05, "loss_seg_src_aux": 0.12}, floor, tolerance=0.05)
    assert not check.judge({"loss_seg_src_main": 0.051, "loss_seg_src_aux": 0.0}, floor, tolerance=0.05)
    assert not check.judge({"loss_seg_src_main": 0.0, "loss_seg_src_aux": 0.121}, floor, tolerance=0.05)
    # the adversarial losses are not judged
    assert check.judge({"loss_seg_src_main": 0.0, "loss_seg_src_aux": 0.0, "loss_adv_trg_main": 9.0}, floor, 0.05)


def test_the_data_is_blocky_labels_and_their_class_colours(check):
    (images, labels), = check.learnable_batches(1, (64, 32), torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 32, 64) and labels.shape == (1, 32, 64)
    block = labels[0, :16, :16]
    kept = block[block != 255]
    assert kept.numel() > 200 and (kept == kept[0]).all()  # one class per 16-pixel block
    assert 0 < (labels == 255).float().mean() < 0.1
    # pixels of one class share its colour (the noise averages out)
    means = [images[0, :, labels[0] == c].mean(1) for c in labels.unique().tolist() if c != 255]
    assert len(means) >= 2 and not torch.allclose(means[0], means[1], atol=5)


@pytest.mark.slow
def test_a_short_run_compares_bf16_with_ieee_float32(tmp_path):
    out = tmp_path / "numerics.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--iters", "12", "--window", "3",
               "--source-size", "64", "32", "--target-size", "64", "32", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    table = json_load(out)
    (variant,) = table["variants"]
    assert variant["variant"] == "bf16" and result.returncode == (0 if variant["passed"] else 1), result.stderr
    assert set(variant["curves"]) == set(table["reference"]["curves"]) == set(table["noise_floor"])
    assert all(len(values) == 12 and np.isfinite(values).all() for values in variant["curves"].values())
    assert "noise floor (fp32)" in result.stdout and "bf16" in result.stdout
    # the reference is IEEE float32 from the same weights: its curve differs from bf16's, a little
    reference, ours = table["reference"]["curves"]["loss_seg_src_main"], variant["curves"]["loss_seg_src_main"]
    assert reference != ours and reference[0] == pytest.approx(ours[0], rel=0.05)


@pytest.mark.parametrize("name", ["numerics_check", "train_speed"])
def test_a_cuda_graph_on_the_cpu_is_refused_with_one_line(name, capsys):
    with pytest.raises(SystemExit) as stop:
        load_benchmark(name).parse_args(["--device", "cpu", "--cuda-graph"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        ": error: --cuda-graph needs a CUDA device (--device is cpu)")
