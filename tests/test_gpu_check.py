"""benchmarks/gpu_check.py: its dry run (CPU, tiny sizes, the same steps) end to end, so that the GPU
check cannot rot where no GPU is, and the seed sweep's rates on hand-made timestamps."""
import os
import subprocess
import sys

import pytest

from advent.utils.serialization import json_load
from benchmark_scripts import benchmark_path, load_benchmark
from processes import HANG_GUARD_S
from test_eval import fake_clock

SCRIPT = benchmark_path("gpu_check")
STAGES = ["tests: -m cuda", "tests: fast suite", "speed: fp32", "speed: fp32 (TF32 off)", "speed: bf16", "speed: fp16",
          "speed: bf16 + channels_last", "speed: bf16 + channels_last + cudnn.benchmark",
          "speed: fp32 + CUDA graph", "speed: bf16 + channels_last + CUDA graph",
          "speed: bf16 + channels_last, 2 seeds batched", "profile: bf16 + channels_last",
          "seed sweep: 1 train.py", "seed sweep: 2 train.py", "esl.py", "test.py"]
CUDA_ONLY = ["speed: fp32 + CUDA graph", "speed: bf16 + channels_last + CUDA graph"]


def gpu_check():
    return load_benchmark("gpu_check")


def stamps(*ends):
    return {"stamps": [(end - 0.1, end) for end in ends]}


def test_run_rate_and_the_aggregate_count_only_what_follows_the_warm_up():
    check = gpu_check()
    assert check.run_rate([0.0, 1.0, 2.0, 4.0], warmup=1) == pytest.approx(3 / 4)
    # window (0.5, 3]: run a ends 1, 2, 3 in it, run b 1.5, 2.5: 5 iterations in 2.5 s
    rate, note = check.aggregate_rate([stamps(0, 1, 2, 3), stamps(0.5, 1.5, 2.5, 3.5)], warmup=1)
    assert rate == pytest.approx(2.0) and note == ""
    rate, note = check.aggregate_rate([stamps(0, 1), stamps(5, 6)], warmup=1)  # one ended before the other began
    assert rate is None and "did not overlap" in note


def test_nvidia_smi_names_the_gpu_cuda_numbers_and_reads_n_a_as_missing(monkeypatch):
    check = gpu_check()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert check.smi_gpu(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-8f2e")  # CUDA's 0 and 1 are nvidia-smi's 3 and that UUID
    assert [check.smi_gpu(0), check.smi_gpu(1)] == ["3", "GPU-8f2e"]
    assert check.smi_number("81559") == 81559.0 and check.smi_number("[N/A]") is None


def test_a_run_waits_after_its_warm_up_until_every_run_of_the_sweep_is_past_its_own(tmp_path, monkeypatch):
    check = gpu_check()
    polls = []

    def another_run_arrives():  # at the third poll
        polls.append(1)
        if len(polls) == 3:
            (tmp_path / "another-run.ready").touch()

    fake_clock(monkeypatch, another_run_arrives, module=check)
    check.wait_at_barrier(tmp_path, 2, 600)
    assert len(polls) == 3  # it waited for the other run, and no longer
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{os.getpid()}.ready", "another-run.ready"])
    alone = tmp_path / "alone"
    alone.mkdir()
    now = fake_clock(monkeypatch, module=check)
    check.wait_at_barrier(alone, 2, 5)  # a run that never comes: it gives up after the timeout
    assert now[0] >= 5 and [p.name for p in alone.iterdir()] == [f"{os.getpid()}.ready"]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    out, work = tmp_path / "check.json", tmp_path / "work"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work),
                             "--seed-batch", "2"],
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = json_load(out)
    rows = {row["stage"]: row for row in table["rows"]}
    assert list(rows) == STAGES
    for name in CUDA_ONLY:
        assert rows.pop(name) == {"stage": name, "status": "skipped", "note": "CUDA only"}
    assert all(row["status"] == "ok" for row in rows.values()), table["rows"]
    assert all(stage in result.stdout for stage in STAGES) and f"written: {out}" in result.stdout
    assert "tests collected" in rows["tests: -m cuda"]["note"]  # a dry run collects the suites only
    for name in rows:
        assert rows[name]["smi_mib"] is None and rows[name]["gpu_util"] is None  # no nvidia-smi in a dry run
        if not name.startswith("tests"):
            assert rows[name]["rate"] > 0 and rows[name]["peak_mib"] > 0, name
    assert "Name" in (tmp_path / "check_profile.txt").read_text()  # the profiler's tables
    assert "$ " in (tmp_path / "check_pytest.log").read_text()  # pytest's whole output
    assert 0 < rows["seed sweep: 1 train.py"]["step_share"] <= 1 and rows["seed sweep: 1 train.py"]["loop_vs_step"] > 0
    sweep = rows["seed sweep: 2 train.py"]
    assert len(sweep["per_run_it_s"]) == len(sweep["per_run_peak_mib"]) == 2
    assert table["environment"]["dry_run"] is True and table["environment"]["nvidia_smi"] == "skipped (dry run)"
    # esl.py and test.py ran on the 1-run sweep's snapshot, over the 4 images written
    assert len(list((work / "esl" / "labels").glob("*.png"))) == 4
    assert json_load(next((work / "test").rglob("results_single.json")))["images"] == 4


def test_without_the_gpu_it_names_it_refuses_before_any_work_with_one_line(capsys):
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit) as stop:
        gpu_check().parse_args(["--gpu", str(count)])  # one past the last GPU; the CPU has none
    assert stop.value.code == 2
    reason = "CUDA is not available here" if count == 0 else f"this machine has {count} GPU(s)"
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(  # after the program's name
        f": error: --gpu {count}: cuda:{count}: {reason} (--dry-run runs the same steps on the CPU, "
        f"at tiny sizes)")
