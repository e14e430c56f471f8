"""The CUDA paths, where a GPU is (marked `cuda`, skipped cleanly elsewhere): AMP bf16 / fp16 training
steps, CHANNELS_LAST, esl.py and test.py on the GPU against the same model forced to the CPU
(GPU_ID -1), an NCCL process group of one process, and torchrun with one process.

The GPU-against-CPU tolerances: the GPU's float32 kernels sum in another order and, with TF32 (the
default), round the convolution inputs to a 10-bit mantissa, so the logits differ by about 1e-3
relative (the ESL thresholds moved by up to 8e-4 when this was first run on an H200). A pixel's
label can change only where its two best classes are that close, and its keep-or-drop only where
its score is that close to its class's threshold: a small share of the pixels. So: at least 98 % of
the labels equal, thresholds of the classes with enough pixels (a median of a few values jumps with
one flipped pixel) within 0.01 of normalised entropy, the kept fraction and the mIoU within 1 point,
the confusion matrices differing in at most 1 % of the pixels (each changed pixel moves one count,
so the summed absolute difference is at most 2 % of the pixels)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advent.dataset import png_name
from advent.domain_adaptation.esl_UDA import REPORT_NAME
from advent.domain_adaptation.eval_UDA import RESULTS_SINGLE
from advent.domain_adaptation.train_UDA import build_setup, make_step, train_step
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.scripts import train as train_script
from advent.utils.cuda_flags import bf16_supported, set_cuda_flags
from advent.utils.runtime import memory_format
from advent.utils.serialization import json_load
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S
from test_distributed import ENV, SCRIPTS, check, torchrun
from test_esl import esl_config
from test_eval import save_tiny, single_cfg
from test_train import tiny_cfg

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GPU = torch.device("cuda", 0)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LABEL_AGREEMENT = 0.98  # the tolerances: module docstring
THRESHOLD_TOLERANCE = 0.01
MIN_CLASS_PIXELS = 200
POINTS = 1.0


@pytest.fixture(autouse=True)
def restore_cuda_flags():
    """The process-wide TF32 / autotuner settings, each back as it was after each test (torch's
    defaults differ: TF32 convolutions, IEEE matrix products)."""
    backends = torch.backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        settings = [(backends.cudnn.conv, "fp32_precision"), (backends.cudnn.rnn, "fp32_precision"),
                    (backends.cuda.matmul, "fp32_precision")]
    else:
        settings = [(backends.cudnn, "allow_tf32"), (backends.cuda.matmul, "allow_tf32")]
    before = [(owner, name, getattr(owner, name)) for owner, name in settings + [(backends.cudnn, "benchmark")]]
    yield
    for owner, name, value in before:
        setattr(owner, name, value)


def random_batches(count, channels_last=False, seed=1):
    """`count` (images, labels) pairs of 64x32 on the GPU, 30 % of the labels ignored."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 19, (1, 32, 64), generator=generator)
        labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
        images = torch.randn(1, 3, 32, 64, generator=generator) * 60
        batches.append((images.to(GPU, memory_format=memory_format(channels_last)), labels.to(GPU)))
    return batches


def train_on_gpu(cfg, steps=3):
    """(setup, per-step loss metrics, the dtypes of the segmenter's main output) of `steps` AdvEnt
    iterations from seed 0 on random batches."""
    torch.manual_seed(0)
    setup = build_setup(cfg, GPU)
    setup.model.train()
    dtypes = []
    hook = setup.model.register_forward_hook(lambda module, inputs, outputs: dtypes.append(outputs[-1].dtype))
    batches = random_batches(2 * steps, cfg.CHANNELS_LAST)
    losses = []
    for i_iter in range(steps):
        metrics, _ = train_step(setup, batches[2 * i_iter], batches[2 * i_iter + 1], cfg, i_iter)
        losses.append({k: v for k, v in metrics.items() if k.startswith("loss_")})
    hook.remove()
    return setup, losses, dtypes


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_train_steps_on_the_gpu(tmp_path, amp):
    if amp == "bf16" and not bf16_supported(GPU):
        pytest.skip("this GPU has no bf16")
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4)
    cfg.TRAIN.AMP = amp
    torch.manual_seed(0)
    init = {name: value.clone() for name, value in build_setup(cfg, GPU).model.state_dict().items()}
    setup, losses, dtypes = train_on_gpu(cfg)
    assert dtypes and set(dtypes) == {AMP_DTYPES[amp]}  # the forward ran under autocast
    assert all(np.isfinite(value) for step in losses for value in step.values())
    assert {"loss_seg_src_main", "loss_adv_trg_main", "loss_d_src_main", "loss_d_trg_main"} <= set(losses[0])
    state = setup.model.state_dict()
    assert state["conv1.weight"].dtype == torch.float32  # the weights stay float32
    assert not torch.equal(state["conv1.weight"], init["conv1.weight"])  # the steps moved the weights
    assert (setup.scaler is not None) == (amp == "fp16")
    if setup.scaler is not None:
        assert np.isfinite(setup.scaler.get_scale())


def test_channels_last_on_the_gpu_is_nhwc_with_the_same_losses(tmp_path):
    runs = {}
    for channels_last in (False, True):
        cfg, _ = tiny_cfg(tmp_path / str(channels_last), "AdvEnt", iters=4)
        cfg.CHANNELS_LAST = channels_last
        set_cuda_flags(tf32=False, cudnn_benchmark=False)  # IEEE float32: only the layout differs
        setup, losses, _ = train_on_gpu(cfg, steps=2)
        assert setup.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        runs[channels_last] = losses
    for nhwc, plain in zip(runs[True], runs[False]):  # the same computation, other kernels
        assert nhwc == pytest.approx(plain, rel=1e-3)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_cuda_graph_computes_what_eager_iterations_compute(tmp_path, amp):
    """TRAIN.CUDA_GRAPH from the same initial weights on the same (changing) batches: the same losses
    and weights as eager iterations. The same kernels run, but some accumulate with atomic adds
    (the upsampling's backward), whose order varies between any two runs: hence a tolerance."""
    runs = {}
    set_cuda_flags(tf32=False, cudnn_benchmark=False)
    for graphed in (False, True):
        cfg, _ = tiny_cfg(tmp_path / str(graphed), "AdvEnt", iters=8)
        cfg.TRAIN.AMP, cfg.TRAIN.CUDA_GRAPH = amp, graphed
        torch.manual_seed(0)
        setup = build_setup(cfg, GPU)
        setup.model.train()
        step, batches = make_step(setup, cfg), random_batches(8)
        metrics = [step(batches[2 * i], batches[2 * i + 1], i)[0] for i in range(4)]
        runs[graphed] = metrics, {k: v.float().cpu() for k, v in setup.model.state_dict().items()}
    (eager, eager_weights), (graphed, graphed_weights) = runs[False], runs[True]
    for before, after in zip(eager, graphed):
        assert before.keys() == after.keys()
        assert after == pytest.approx(before, rel=1e-4, abs=1e-6)
    assert len({m["loss_seg_src_main"] for m in graphed}) == 4  # each replay saw its own batch
    for name, value in eager_weights.items():
        torch.testing.assert_close(graphed_weights[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_train_py_with_a_cuda_graph_trains_and_records_it(tmp_path):
    """With loader workers: their pin-memory thread allocates pinned memory while the graph is
    captured (GraphedStep's thread-local capture mode lets it)."""
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4, save_every=2)
    cfg.GPU_ID, cfg.TRAIN.AMP, cfg.CHANNELS_LAST, cfg.TRAIN.CUDA_GRAPH = 0, "bf16", True, True
    cfg.NUM_WORKERS = 2
    assert train_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml"))]) == 0
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert (folder / "model_2.pth").is_file() and (folder / "model_4.pth").is_file()
    record = json_load(next(folder.glob("run_train_*.json")))
    assert record["environment"]["device"] == "cuda:0" and record["config"]["TRAIN"]["CUDA_GRAPH"] is True


def esl_run(tmp_path, method, gpu_id):
    """(labels of the 6 images stacked, report, run record) of esl.py with GPU_ID `gpu_id`."""
    cfg, written = esl_config(tmp_path, method, group=4, count=6)  # the same model (seed 0) and data each time
    cfg.GPU_ID = gpu_id
    assert esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "esl.yml"))]) == 0
    folder = Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
    labels = np.stack([np.asarray(Image.open(folder / png_name(name))) for name in written["train"].names])
    return labels, json_load(folder / REPORT_NAME), json_load(next(folder.glob("run_esl_*.json")))


@pytest.mark.parametrize("method", ["entropy", "maxprob"])
def test_esl_on_the_gpu_agrees_with_the_cpu_within_the_tolerance(tmp_path, method):
    cpu_labels, cpu, cpu_record = esl_run(tmp_path / "cpu", method, -1)
    gpu_labels, gpu, gpu_record = esl_run(tmp_path / "gpu", method, 0)
    assert cpu_record["environment"]["device"] == "cpu" and gpu_record["environment"]["device"] == "cuda:0"
    assert (gpu_labels == cpu_labels).mean() >= LABEL_AGREEMENT
    assert abs(gpu["kept_fraction"] - cpu["kept_fraction"]) <= POINTS / 100
    compared = 0
    for ours, theirs in zip(gpu["classes"], cpu["classes"]):
        if min(ours["predicted_pixels"], theirs["predicted_pixels"]) >= MIN_CLASS_PIXELS:
            assert abs(ours["threshold"] - theirs["threshold"]) <= THRESHOLD_TOLERANCE, ours["name"]
            compared += 1
    assert compared >= 2  # the comparison is not empty


def single_results_on(tmp_path, gpu_id):
    """results_single.json of test.py (one Tiny model, 4 images) with GPU_ID `gpu_id`."""
    cfg, _ = single_cfg(tmp_path, [tmp_path / "model.pth"])
    save_tiny(tmp_path / "model.pth", seed=5)  # the same model each time
    cfg.GPU_ID = gpu_id
    assert test_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "single.yml"))]) == 0
    return json_load(Path(cfg.EXP_ROOT) / "logs" / "test" / "single" / RESULTS_SINGLE)


def test_test_py_on_the_gpu_agrees_with_the_cpu_within_the_tolerance(tmp_path):
    cpu = single_results_on(tmp_path / "cpu", -1)
    gpu = single_results_on(tmp_path / "gpu", 0)
    cpu_matrix, gpu_matrix = np.array(cpu["confusion_matrix"]), np.array(gpu["confusion_matrix"])
    assert cpu_matrix.sum() == gpu_matrix.sum() > 0  # the same labelled pixels
    assert np.abs(gpu_matrix - cpu_matrix).sum() <= 2 * (POINTS / 100) * cpu_matrix.sum()
    assert abs(gpu["mIoU"] - cpu["mIoU"]) <= POINTS


NCCL_ONE_PROCESS = """
import sys
import torch
import torch.distributed as dist
from advent.config import load_config
from advent.domain_adaptation.train_UDA import build_setup, parallel, train_step
from advent.utils import distributed
cfg = load_config(sys.argv[1])
device = distributed.select_device(cfg.GPU_ID, cfg.TF32, cfg.CUDNN_BENCHMARK)
bind = {"device_id": device} if distributed._accepts(dist.init_process_group, "device_id") else {}
# port 0: the one process's store takes a free port itself (no other process must find it)
dist.init_process_group("nccl", init_method="tcp://127.0.0.1:0", rank=0, world_size=1, **bind)
assert distributed.is_distributed() and dist.get_backend() == "nccl"
assert distributed.sum_over_processes(torch.tensor([1.0, 2.0], device=device)).tolist() == [1.0, 2.0]
assert distributed.max_over_processes(7) == 7 and distributed.broadcast_from_main({"a": 1}) == {"a": 1}
distributed.barrier()
torch.manual_seed(0)
setup = parallel(build_setup(cfg, device), device)
assert setup.ddp_model is not None and setup.ddp_model.device_ids == [device.index]
setup.model.train()
generator = torch.Generator().manual_seed(1)
def batch():
    labels = torch.randint(0, 19, (1, 32, 64), generator=generator)
    return (torch.randn(1, 3, 32, 64, generator=generator) * 60).to(device), labels.to(device)
for i_iter in range(2):
    metrics, _ = train_step(setup, batch(), batch(), cfg, i_iter)
distributed.leave_process_group()
print("loss_seg_src_main", metrics["loss_seg_src_main"])
"""


def test_an_nccl_process_group_of_one_process_runs_the_collectives_and_ddp_training(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4)
    cfg.GPU_ID = 0
    (tmp_path / "nccl.py").write_text(NCCL_ONE_PROCESS)
    command = [sys.executable, str(tmp_path / "nccl.py"), str(write_cfg_yaml(cfg, tmp_path / "run.yml"))]
    result = check(subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S))
    assert np.isfinite(float(result.stdout.split()[-1]))


def test_torchrun_with_one_process_trains_on_the_gpu(tmp_path):
    """torchrun --nproc_per_node=1 is the single-process case (no process group): it trains on cuda:0."""
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=2, save_every=2)
    cfg.GPU_ID = 0
    check(torchrun([SCRIPTS / "train.py", "--cfg", write_cfg_yaml(cfg, tmp_path / "run.yml")], tmp_path, nproc=1))
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert (folder / "model_2.pth").is_file()
    record = json_load(next(folder.glob("run_train_*.json")))
    assert record["environment"]["device"] == "cuda:0" and record["processes"] == 1
