"""The benchmarks that no other test runs, each end to end at tiny sizes, so that none rots where
no one measures: esl_memory.py (both approaches, ours through esl.py's own pseudo-label writer),
eval_speed.py (both paths must give one confusion matrix) and synthetic_gap.py."""
import re
import subprocess
import sys

import pytest

from benchmark_scripts import benchmark_path, load_benchmark
from processes import HANG_GUARD_S


def run_benchmark(name, *argv):
    result = subprocess.run([sys.executable, str(benchmark_path(name)), *argv], capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_esl_memory_runs_both_approaches_and_prints_the_scaling_table():
    stdout = run_benchmark("esl_memory", "--counts", "2", "4", "--output-size", "128", "64")
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+) +\d+$", stdout, flags=re.M)
    assert [row[0] for row in rows] == ["2", "4"] and all(int(mb) > 0 for row in rows for mb in row[1:])
    assert re.search(r"^ours: peak\(4\) / peak\(2\) = \d+\.\d{3}", stdout, flags=re.M)


@pytest.mark.slow
def test_eval_speed_gives_one_confusion_matrix_by_both_paths():
    stdout = run_benchmark("eval_speed", "--device", "cpu", "--repeats", "2", "--output-size", "128", "64",
                           "--input-size", "64", "32")
    assert re.search(r"^confusion matrices equal: yes \(\d+ pixels counted\)$", stdout, flags=re.M)
    assert "speed-up" in stdout


@pytest.mark.slow
def test_synthetic_gap_trains_and_reports_every_model(tmp_path):
    stdout = run_benchmark("synthetic_gap", "--seeds", "0", "--iters", "2", "--batch", "2", "--size", "64", "32",
                           "--num-train", "4", "--num-val", "2", "--out", str(tmp_path / "data"))
    assert re.search(r"^ +0 +[\d.]+ +[\d.]+ +[\d.]+ +-?[\d.]+$", stdout, flags=re.M)  # seed 0's mIoUs and gap
    assert re.search(r"^total time [\d.]+ s$", stdout, flags=re.M)
    assert (tmp_path / "data" / "seed0").is_dir()


def test_esl_memory_refuses_an_odd_image_count_before_any_work(capsys):
    with pytest.raises(SystemExit) as stop:
        load_benchmark("esl_memory").main(["--counts", "2", "3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        ": error: --counts and --defaults-count must be even, got 3")


def test_train_speed_refuses_an_unknown_model_or_a_huge_size_in_one_line_before_any_work(monkeypatch, capsys):
    train_speed = load_benchmark("train_speed")
    monkeypatch.setattr(train_speed, "measure", lambda spec: pytest.fail("a variant ran before the check"))
    for argv, line in ((["--device", "cpu", "--models", "DeepLabv2-Tiny", "Foo"],
                        "argument --models: invalid choice: 'Foo'"),
                       (["--device", "cpu", "--source-size", "100000", "64"],
                        "argument --source-size: must be in [1, 4096], got 100000")):
        with pytest.raises(SystemExit) as stop:
            train_speed.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and f": error: {line}" in err[0], err
