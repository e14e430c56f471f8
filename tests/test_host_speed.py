"""benchmarks/host_speed.py: a tiny run against HEAD (both versions' labels compared), and its
label comparison on hand-made folders."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from advent import PROJECT_ROOT
from advent.utils.runtime import run_main
from advent.utils.serialization import json_load
from benchmark_scripts import benchmark_path, load_benchmark
from processes import HANG_GUARD_S

SCRIPT = benchmark_path("host_speed")


def in_a_git_checkout():
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.mark.skipif(not in_a_git_checkout(), reason="host_speed.py compares against a git revision: "
                                                   "a git checkout of the project is needed")
def test_a_tiny_run_against_head_writes_the_same_labels(tmp_path):
    out = tmp_path / "host_speed.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--baseline", "HEAD", "--images", "3", "--rounds", "1",
                           "--image-size", "128", "64", "--input-size", "64", "32", "--output-size", "64", "32",
                           "--test-output-size", "128", "64",
                           "--json", str(out)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].strip() == "the same labels and thresholds"
    median = json_load(out)["median"]
    for version in ("baseline", "ours"):
        assert set(median[version]) == {"esl_loader_s", "test_loader_s", "main_s", "maps_s"}
        assert all(value > 0 for value in median[version].values())


def test_label_folders_are_compared_pixel_for_pixel(tmp_path):
    check = load_benchmark("host_speed")
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(labels).save(tmp_path / name / "x.png")
    assert check.same_labels(tmp_path / "a", tmp_path / "b")
    labels[2, 3] = 255
    Image.fromarray(labels).save(tmp_path / "b" / "x.png")
    assert not check.same_labels(tmp_path / "a", tmp_path / "b")
    Image.fromarray(labels).save(tmp_path / "b" / "y.png")
    Image.fromarray(labels).save(tmp_path / "a" / "x.png")
    assert not check.same_labels(tmp_path / "a", tmp_path / "b")  # a file the other lacks


def work_started(*_args, **_kwargs):
    raise AssertionError("host_speed.py began its work before checking its arguments")


def test_bad_arguments_are_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    check = load_benchmark("host_speed")
    monkeypatch.setattr(check, "write_data", work_started)
    cases = [(["--images", "0"], ": error: argument --images: must be at least 1, got 0"),
             (["--image-size", "64", "x"], ": error: argument --image-size: not an integer: 'x'"),
             (["--threads", "-1"], ": error: argument --threads: must be at least 0, got -1"),
             (["--json", ""], ": error: argument --json: empty: ''"),
             (["--baseline", ""], ": error: argument --baseline: empty: ''")]
    if in_a_git_checkout():
        cases.append((["--baseline", "nonexistentrev"], "error: --baseline nonexistentrev: git archive: "))
    for argv, line in cases:
        with pytest.raises(SystemExit) as stop:
            run_main(check.main, argv + ["--json", str(tmp_path / "speed.json")] * ("--json" not in argv))
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and line in err[0], err
    assert not any(tmp_path.iterdir())
