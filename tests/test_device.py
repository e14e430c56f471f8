"""Where a run computes, and how: GPU_ID -1 forces the CPU, also where CUDA is visible (the test
suite's configs use it, so its exact comparisons hold on a GPU machine); a GPU_ID the machine
lacks is one line; the config's TF32 and CUDNN_BENCHMARK are set by each script, without a
deprecation warning, and written to its run record. The GPU itself: test_cuda.py."""
import warnings
from pathlib import Path

import pytest
import torch

from advent.config import cfg_from_file, cfg_to_dict, get_default_cfg
from advent.domain_adaptation.checkpoint import check_resume_config
from advent.domain_adaptation.eval_UDA import RESULTS_SINGLE
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.scripts import train as train_script
from advent.utils import distributed
from advent.utils.cuda_flags import cuda_flags, set_cuda_flags
from advent.utils.errors import UserError
from advent.utils.runtime import run_main
from advent.utils.serialization import json_load
from fake_data import write_cfg_yaml
from test_esl import esl_config
from test_eval import save_tiny, single_cfg
from test_train import tiny_cfg

CPU = torch.device("cpu")


@pytest.fixture
def cuda_seen(monkeypatch):
    """A machine that reports one GPU; any attempt to use it fails the test."""
    def touched(*args, **kwargs):
        raise AssertionError("the GPU was selected")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", touched)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)  # the run record asks; it would start CUDA


@pytest.fixture
def restore_cuda_flags():
    """The process-wide TF32 / autotuner settings, back as they were after the test."""
    before = cuda_flags()
    yield
    set_cuda_flags(before["tf32_convolutions"], before["cudnn_benchmark"])


def test_gpu_id_minus_one_is_the_cpu_where_cuda_is_visible(cuda_seen, monkeypatch):
    assert distributed.select_device(-1) == CPU
    with pytest.raises(AssertionError, match="the GPU was selected"):
        distributed.select_device(0)  # the fixture does catch a GPU selection
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun too: the CPU (gloo), whatever the GPU count
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.select_device(-1) == CPU


def test_a_gpu_id_the_machine_lacks_is_one_line(cuda_seen, tmp_path):
    with pytest.raises(UserError, match=r"^GPU_ID is 1, but this machine sees 1 GPU\(s\) \(GPU_ID -1: the CPU\)$"):
        distributed.select_device(1)
    (tmp_path / "bad.yml").write_text("GPU_ID: -2\n")
    with pytest.raises(UserError, match=r"GPU_ID must be a GPU index \(0, 1, \.\.\.\) or -1 \(the CPU\), got -2"):
        cfg_from_file(tmp_path / "bad.yml")


def test_the_suites_script_runs_stay_on_the_cpu_where_cuda_is_visible(cuda_seen, tmp_path):
    cfg, _ = esl_config(tmp_path, count=2)  # the tests' fake config: GPU_ID -1
    assert esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "esl.yml"))]) == 0
    record = json_load(next(Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET).glob("run_esl_*.json")))
    assert record["environment"]["device"] == "cpu"


def test_a_resumed_run_may_change_the_autotuner_but_not_tf32():
    cfg = get_default_cfg()
    saved = {**cfg_to_dict(cfg), "CUDNN_BENCHMARK": True}
    check_resume_config(saved, cfg, "run/train_state_2.pth")  # accepted: the same computation
    with pytest.raises(UserError, match=r"^--resume: TF32 was False when the run started"):
        check_resume_config({**saved, "TF32": False}, cfg, "run/train_state_2.pth")


def test_the_tf32_flags_are_set_and_read_without_a_warning(restore_cuda_flags):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch >= 2.9 warns about the older allow_tf32 flags
        for tf32, benchmark in ((False, True), (True, False)):
            set_cuda_flags(tf32, benchmark)
            assert cuda_flags() == {"tf32_convolutions": tf32, "tf32_matmul": tf32, "cudnn_benchmark": benchmark}
            assert torch.backends.cudnn.benchmark is benchmark


def run_record_of(script, tmp_path, tf32, benchmark):
    """Run `script` ('train', 'esl' or 'test') on a tiny config with TF32 / CUDNN_BENCHMARK set;
    its run record."""
    if script == "train":
        cfg, _ = tiny_cfg(tmp_path, "SourceOnly", iters=1, save_every=1)
        main, folder = train_script.main, lambda: cfg.TRAIN.SNAPSHOT_DIR
    elif script == "esl":
        cfg, _ = esl_config(tmp_path, count=2)
        main, folder = esl_script.main, lambda: cfg.PSEUDO_LABEL_DIRECTORY_TARGET
    else:
        cfg, _ = single_cfg(tmp_path, [save_tiny(tmp_path / "model.pth", seed=5)], count=2)
        main, folder = test_script.main, lambda: Path(cfg.EXP_ROOT) / "logs" / "test" / "run"
    cfg.TF32, cfg.CUDNN_BENCHMARK = tf32, benchmark
    assert main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml"))]) == 0
    if script == "test":
        assert (Path(folder()) / RESULTS_SINGLE).is_file()
    return json_load(next(Path(folder()).glob(f"run_{script}_*.json")))


@pytest.mark.parametrize("script", ["train", "esl", "test"])
def test_each_script_sets_tf32_and_the_autotuner_from_the_config_and_records_them(
        script, tmp_path, restore_cuda_flags):
    set_cuda_flags(True, False)
    record = run_record_of(script, tmp_path, tf32=False, benchmark=True)
    expected = {"tf32_convolutions": False, "tf32_matmul": False, "cudnn_benchmark": True}
    assert cuda_flags() == expected
    assert {key: record["environment"][key] for key in expected} == expected
    assert record["config"]["TF32"] is False and record["config"]["CUDNN_BENCHMARK"] is True


@pytest.mark.parametrize("problem, expected", [
    ({"GPU_ID": -1}, r"TRAIN.CUDA_GRAPH needs a CUDA GPU, but this run uses cpu \(GPU_ID -1\)"),
    ({"WORLD_SIZE": 2}, r"TRAIN.CUDA_GRAPH runs in one process, not under torchrun"),
    ({"TRAIN.AMP": "fp16"}, r"TRAIN.CUDA_GRAPH works with TRAIN.AMP 'none' or 'bf16', not 'fp16'"),
])
def test_cuda_graph_is_refused_where_a_graph_cannot_hold_the_iteration(monkeypatch, problem, expected):
    """train.py checks TRAIN.CUDA_GRAPH right after choosing the device, before any data or model."""
    cfg = get_default_cfg()
    cfg.TRAIN.CUDA_GRAPH = True
    device = torch.device("cuda", 0)
    if "GPU_ID" in problem:
        cfg.GPU_ID, device = -1, CPU
    if "WORLD_SIZE" in problem:
        monkeypatch.setattr(train_script, "get_world_size", lambda: 2)
    if "TRAIN.AMP" in problem:
        cfg.TRAIN.AMP = "fp16"
    with pytest.raises(UserError, match=f"^{expected}"):
        train_script.check_cuda_graph(cfg, device)
    cfg.TRAIN.CUDA_GRAPH = False  # off: nothing to check
    train_script.check_cuda_graph(cfg, device)


def test_train_py_with_cuda_graph_on_the_cpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=2)
    cfg.TRAIN.CUDA_GRAPH = True  # tiny_cfg runs on the CPU (GPU_ID -1)
    with pytest.raises(SystemExit) as stop:
        run_main(train_script.main, ["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml"))])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TRAIN.CUDA_GRAPH needs a CUDA GPU" in err[0], err
    assert not Path(cfg.TRAIN.SNAPSHOT_DIR).exists()
