"""Several processes (torchrun, gloo on the CPU): test.py and esl.py give exactly the results of one
process, train.py averages the gradients as DDP should, snapshots once, stops together on SIGTERM
and resumes exactly; the sharding and the collectives helpers. Tiny model, tiny images, 2 processes."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advent import PROJECT_ROOT
from advent.domain_adaptation import train_UDA
from advent.domain_adaptation.eval_UDA import RESULTS_BEST, RESULTS_SINGLE
from advent.domain_adaptation.esl_UDA import REPORT_NAME
from advent.domain_adaptation.checkpoint import model_snapshot_path, train_state_iterations
from advent.domain_adaptation.train_data import ResumableSampler
from advent.domain_adaptation.train_UDA import build_setup, train_domain_adaptation, train_step
from advent.model import build_segmenter, load_checkpoint
from advent.model.weights import read_checkpoint
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.utils import distributed
from advent.utils.distributed import shard_batches
from advent.utils.errors import UserError
from advent.utils.serialization import json_load
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S, train_script_stopped_at, wait_for_files
from test_esl import esl_config
from test_eval import TINY, base_cfg, save_tiny, single_cfg
from test_train import assert_same_tensors, tiny_cfg

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
SCRIPTS = PROJECT_ROOT / "advent" / "scripts"


def torchrun_command(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *map(str, args)]


def torchrun(args, cwd, nproc=2):
    """`python -m torch.distributed.run --standalone --nproc_per_node=nproc ARGS`, finished."""
    return subprocess.run(torchrun_command(args, nproc), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def check(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def files_bytes(folder, pattern="*.png"):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob(pattern))}


# --- sharding and the helpers ---

@pytest.mark.parametrize("count, batch_size, world_size",
                         [(7, 1, 2), (7, 2, 2), (6, 4, 3), (1, 1, 3), (0, 2, 2)])
def test_shards_are_whole_batches_of_one_process_without_padding(count, batch_size, world_size):
    single = shard_batches(range(count), batch_size, 0, 1)
    shards = [shard_batches(range(count), batch_size, rank, world_size) for rank in range(world_size)]
    assert [batch for shard in shards for batch in shard] == single  # in order, each batch once
    assert [i for batch in single for i in batch] == list(range(count))
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shard_batches(range(10, 15), 2, 1, 2) == [[12, 13], [14]]  # indices, not positions


def test_sampler_shares_one_permutation_out_and_resumes_per_process():
    full = list(ResumableSampler(20, seed=3))
    for start in (0, 6):  # a resumed run: `start` samples consumed by both processes together
        ranks = [list(ResumableSampler(20, seed=3, start=start, rank=r, world_size=2)) for r in (0, 1)]
        assert ranks[0] == full[start::2] and ranks[1] == full[start + 1::2]
        assert [len(ResumableSampler(20, 3, start, r, 2)) for r in (0, 1)] == [len(x) for x in ranks]


def test_one_process_helpers_are_the_single_process_case():
    tensor = torch.arange(4)
    assert distributed.sum_over_processes(tensor) is tensor
    assert distributed.max_over_processes(3) == 3
    assert distributed.broadcast_from_main({"a": 1}) == {"a": 1}
    assert distributed.get_world_size() == 1 and distributed.is_main_process()
    distributed.join_process_group(CPU)  # not under torchrun: nothing to join
    assert not distributed.is_distributed()


COLLECTIVES = """
import os
import sys
from pathlib import Path
import torch
from advent.utils import distributed
torch.set_num_threads(1)
rank = int(os.environ["RANK"])  # set by torchrun, also read by the helpers below
device = distributed.select_device(-1)  # the CPU (gloo), also where CUDA is visible
# before the group exists (where the checks run), each process knows its place from torchrun
results = {"before": (distributed.get_rank(), distributed.get_world_size(), distributed.is_distributed())}
distributed.join_process_group(device)
results.update(device=str(device),
               sum=distributed.sum_over_processes(torch.tensor([rank + 1, 10])).tolist(),
               max=distributed.max_over_processes(rank * 5),
               broadcast=distributed.broadcast_from_main(f"from {rank}"))
distributed.leave_process_group()
torch.save(results, Path(sys.argv[1]) / f"rank{rank}.pth")
"""


def test_rank_before_the_group_and_collectives_with_two_processes(tmp_path):
    """Under torchrun (whose rendezvous chooses the port: no race for a free one)."""
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    check(torchrun([script, tmp_path], tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in (0, 1)]
    for rank, results in enumerate(ranks):
        assert results["before"] == (rank, 2, False)
        assert results["device"] == "cpu"
        assert results["sum"] == [3, 20] and results["max"] == 5
        assert results["broadcast"] == "from 0"


# --- test.py ---

def test_test_single_two_processes_equal_one(tmp_path):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    runs = {}
    for nproc in (1, 2):
        cfg, _ = single_cfg(tmp_path / f"n{nproc}", [checkpoint], count=6)  # 6 images
        cfg.TEST.BATCH_SIZE_TARGET = 2  # 3 batches: 1 for one process, 2 for the other
        cfg.TEST.SAVE_PREDICTIONS = True
        path = write_cfg_yaml(cfg, tmp_path / f"n{nproc}" / "single.yml")
        if nproc == 1:
            assert test_script.main(["--cfg", str(path)]) == 0
        else:
            check(torchrun([SCRIPTS / "test.py", "--cfg", path], tmp_path))
        folder = Path(cfg.EXP_ROOT) / "logs" / "test" / "single"
        runs[nproc] = (json_load(folder / RESULTS_SINGLE), folder)
    (one, one_dir), (two, two_dir) = runs[1], runs[2]
    assert one["images"] == two["images"] == 6 and two["processes"] == 2
    for key in ("confusion_matrix", "mIoU", "per_class", "labelled_pixels", "unexpected_label_pixels"):
        assert one[key] == two[key], key
    assert sum(map(sum, two["confusion_matrix"])) == two["labelled_pixels"] > 0
    for kind in ("labelIds", "color"):
        expected = files_bytes(one_dir / "predictions" / kind)
        assert len(expected) == 6 and files_bytes(two_dir / "predictions" / kind) == expected
    assert len(list(two_dir.glob("run_test_*.json"))) == 1  # written once, by the main process
    assert json_load(next(two_dir.glob("run_test_*.json")))["processes"] == 2


def test_test_best_two_processes_equal_one_and_reuse_the_cache(tmp_path):
    results = {}
    for nproc in (1, 2):
        cfg, _ = base_cfg(tmp_path / f"n{nproc}", count=6)
        folder = tmp_path / f"n{nproc}" / "snapshots"
        folder.mkdir()
        for n_iter, seed in ((2, 7), (4, 8), (6, 9)):
            save_tiny(model_snapshot_path(folder, n_iter), seed)
        cfg.TEST.MODE = "best"
        cfg.TEST.SNAPSHOT_DIR, cfg.TEST.SNAPSHOT_STEP, cfg.TEST.SNAPSHOT_MAXITER = (str(folder),), 2, 8
        cfg.TEST.WAIT_MODEL = False  # model_8 is missing on every process: skipped
        path = write_cfg_yaml(cfg, tmp_path / f"n{nproc}" / "best.yml")
        if nproc == 1:
            assert test_script.main(["--cfg", str(path)]) == 0
        else:
            check(torchrun([SCRIPTS / "test.py", "--cfg", path], tmp_path))
        results[nproc] = json_load(folder / RESULTS_BEST)
    one, two = results[1], results[2]
    strip = ("path", "cached")
    assert [{k: v for k, v in s.items() if k not in strip} for s in two["snapshots"]] == \
        [{k: v for k, v in s.items() if k not in strip} for s in one["snapshots"]]
    assert (two["best"], two["last"]) == (one["best"], one["last"]) and len(two["snapshots"]) == 3
    assert not any(s["cached"] for s in two["snapshots"])
    check(torchrun([SCRIPTS / "test.py", "--cfg", path], tmp_path))  # again: all from the cache
    again = json_load(tmp_path / "n2" / "snapshots" / RESULTS_BEST)
    assert all(s["cached"] for s in again["snapshots"])
    assert [s["mIoU"] for s in again["snapshots"]] == [s["mIoU"] for s in one["snapshots"]]


def test_a_missing_checkpoint_stops_both_processes_with_one_line_before_they_connect(tmp_path):
    cfg, _ = single_cfg(tmp_path, [tmp_path / "absent.pth"])
    path = write_cfg_yaml(cfg, tmp_path / "single.yml")
    result = torchrun([SCRIPTS / "test.py", "--cfg", path], tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    # each process checks alone and says so; torchrun stops the other as soon as one has ended, so
    # the first to end is heard (either one), the other perhaps not, and no line twice
    lines = {f"error{who}: checkpoint not found: {tmp_path / 'absent.pth'}" for who in ("", " (process 1)")}
    assert errors and set(errors) <= lines and len(set(errors)) == len(errors), result.stderr[-2000:]
    assert "process 0 of 2" not in result.stderr  # the check ran before the process group was joined
    assert "[rank" not in result.stderr  # no traceback


# --- esl.py ---

@pytest.mark.parametrize("method", ["entropy", "maxprob"])
def test_esl_two_processes_write_the_labels_and_report_of_one(tmp_path, method):
    outputs = {}
    for nproc in (1, 2):
        cfg, _ = esl_config(tmp_path / f"n{nproc}", method=method, group=4, count=6)  # groups of 4 and 2
        path = write_cfg_yaml(cfg, tmp_path / f"n{nproc}" / "esl.yml")
        if nproc == 1:
            assert esl_script.main(["--cfg", str(path)]) == 0
        else:
            check(torchrun([SCRIPTS / "esl.py", "--cfg", path], tmp_path))
        outputs[nproc] = Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
    one, two = outputs[1], outputs[2]
    labels = files_bytes(one)
    assert len(labels) == 6 and files_bytes(two) == labels  # every PNG byte-identical
    assert json_load(two / REPORT_NAME) == json_load(one / REPORT_NAME)
    assert 0 < json_load(two / REPORT_NAME)["kept_fraction"] < 1
    assert len(list(two.glob("run_esl_*.json"))) == 1
    # no staging folder left beside it, only the lock file and the manifest recording it; inside, no
    # spill folder, only the manifest
    assert sorted(p.name for p in two.parent.iterdir() if p.name.startswith(".")) == [
        ".advent-manifest.json", ".labels.lock"]
    assert [p.name for p in two.glob(".*")] == [".advent-manifest.json"]


# --- train.py ---

GRADIENT_RUN = """
import sys, torch
from advent.domain_adaptation.train_UDA import build_setup, parallel, train_step
from advent.utils.distributed import get_rank, join_process_group, leave_process_group, select_device
from advent.config import load_config
torch.set_num_threads(1)
cfg, batches, out = load_config(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3]
device = select_device(cfg.GPU_ID)
join_process_group(device)
torch.manual_seed(0)
setup = parallel(build_setup(cfg, device), device)
setup.model.train()
for i_iter, (src, trg) in enumerate(batches[get_rank()]):
    train_step(setup, src, trg, cfg, i_iter)
if get_rank() == 0:
    torch.save({"model": setup.model.state_dict(),
                **{level: d.state_dict() for level, d in setup.discriminators.items()}}, out)
leave_process_group()
"""


def random_batch(generator):
    labels = torch.randint(0, 19, (1, 32, 64), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
    return torch.randn(1, 3, 32, 64, generator=generator) * 60, labels


def reference_states(cfg, batches, ranks, monkeypatch):
    """One process: per iteration, the gradients of each of `ranks`' batches, averaged, then one step."""
    torch.manual_seed(0)
    setup = build_setup(cfg, CPU)
    setup.model.train()
    step = train_UDA.step_optimizers
    captured = []
    monkeypatch.setattr(train_UDA, "step_optimizers", lambda s: captured.append(
        [None if p.grad is None else p.grad.clone() for p in all_params(s)]))
    for i_iter in range(len(batches[0])):
        captured.clear()
        for rank in ranks:
            train_step(setup, *batches[rank][i_iter], cfg, i_iter)
        for n, p in enumerate(all_params(setup)):
            grads = [g[n] for g in captured]
            p.grad = None if grads[0] is None else sum(grads) / len(grads)
        step(setup)
    return {"model": setup.model.state_dict(),
            **{level: d.state_dict() for level, d in setup.discriminators.items()}}


def all_params(setup):
    return [p for module in (setup.model, *setup.discriminators.values()) for p in module.parameters()]


def test_ddp_step_averages_the_gradients_of_the_processes(tmp_path, monkeypatch):
    """Two AdvEnt iterations (two segmenter passes, discriminators frozen then trained, repeated
    backbone updates) in 2 processes equal one process stepping on the mean of the two gradients."""
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4, pseudo=True)
    cfg.TRAIN.LAMBDA_ADV_MAIN, cfg.TRAIN.LAMBDA_ADV_AUX = 0.3, 0.07  # large enough to matter
    generator = torch.Generator().manual_seed(1)
    batches = [[(random_batch(generator), random_batch(generator)) for _ in range(2)] for _ in range(2)]
    torch.save(batches, tmp_path / "batches.pth")
    (tmp_path / "run.py").write_text(GRADIENT_RUN)
    config = write_cfg_yaml(cfg, tmp_path / "run.yml")
    check(torchrun([tmp_path / "run.py", config, tmp_path / "batches.pth", tmp_path / "ddp.pth"], tmp_path))
    ddp = torch.load(tmp_path / "ddp.pth", weights_only=True)
    mean = reference_states(cfg, batches, (0, 1), monkeypatch)
    rank0_only = reference_states(cfg, batches, (0,), monkeypatch)
    for part in ("model", "aux", "main"):
        for name, value in mean[part].items():
            if value.is_floating_point() and "running_" not in name:  # batch-norm statistics: per process
                # bit-identical here; the tolerance leaves DDP free to divide before or after the sum
                assert torch.allclose(ddp[part][name], value, rtol=1e-6, atol=1e-9), (part, name)
    moved = [name for name, v in rank0_only["model"].items()
             if v.is_floating_point() and not torch.allclose(mean["model"][name], v, rtol=1e-4, atol=1e-7)]
    assert len(moved) > 20  # the average differs from one process's own gradient


def two_process_cfg(folder):
    cfg, _ = tiny_cfg(folder, "AdvEnt", iters=8, save_every=2, pseudo=True)
    cfg.TRAIN.BATCH_SIZE_SOURCE = 2  # the position counts samples of both processes
    return cfg


def test_two_process_training_snapshots_once_stops_together_and_resumes_exactly(tmp_path):
    straight = two_process_cfg(tmp_path / "straight")
    straight_path = write_cfg_yaml(straight, tmp_path / "straight.yml")
    check(torchrun([SCRIPTS / "train.py", "--cfg", straight_path], tmp_path))
    folder = Path(straight.TRAIN.SNAPSHOT_DIR)
    names = sorted(p.name for p in folder.iterdir())
    assert names[:2] == [".advent-manifest.json", "config.yml"] and len(list(folder.glob("run_train_*.json"))) == 1
    assert {f"model_{n}.pth" for n in (2, 4, 6, 8)} <= set(names) and "train_state_8.pth" in names
    assert not [n for n in names if n.endswith(".tmp")]
    model = build_segmenter(TINY, 19, True)
    assert load_checkpoint(model, folder / "model_8.pth").layout == "state_dict"  # plain names
    state = read_checkpoint(folder / "train_state_8.pth")
    assert state["world_size"] == 2 and state["data"]["source"]["position"] == 8 * 2 * 2

    cfg = two_process_cfg(tmp_path / "stopped")
    path = write_cfg_yaml(cfg, tmp_path / "stopped.yml")
    reached = tmp_path / "reached"
    (tmp_path / "stopped.py").write_text(train_script_stopped_at(3, reached))
    process = subprocess.Popen(torchrun_command([tmp_path / "stopped.py", "--cfg", path]), cwd=tmp_path, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_files([f"{reached}.0", f"{reached}.1"], process)  # both in their fourth iteration
    process.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
    _, err = process.communicate(timeout=HANG_GUARD_S)
    n_iter = 4
    assert train_state_iterations(cfg.TRAIN.SNAPSHOT_DIR) == [n_iter], err[-3000:]
    stops = [line for line in err.splitlines() if line.startswith("SIGTERM: stopped after")]
    assert stops == [f"SIGTERM: stopped after {n_iter} iterations, train state saved to "
                     f"{Path(cfg.TRAIN.SNAPSHOT_DIR) / f'train_state_{n_iter}.pth'}; resume with: torchrun "
                     f"--nproc_per_node=2 advent/scripts/train.py --cfg {path} --resume"], err[-3000:]

    with pytest.raises(UserError, match=r"trained by 2 process\(es\) and this is 1 .*--nproc_per_node=2"):
        train_domain_adaptation(two_process_cfg(tmp_path / "stopped"), CPU, resume=True)
    check(torchrun([SCRIPTS / "train.py", "--cfg", path, "--resume"], tmp_path))
    ours = read_checkpoint(Path(cfg.TRAIN.SNAPSHOT_DIR) / "train_state_8.pth")
    theirs = read_checkpoint(folder / "train_state_8.pth")
    for key in ("model", "d_aux", "d_main", "optimizer", "optimizer_d_aux", "optimizer_d_main", "rng",
                "data"):
        assert_same_tensors(ours[key], theirs[key], key)


FAILING_RUN = """
import sys
import advent.domain_adaptation.train_UDA as T
from advent.utils.distributed import get_rank
from advent.utils.errors import UserError
original = T.train_step
def failing_step(setup, source, target, cfg, i_iter):
    if i_iter == 2 and get_rank() == 1:
        raise UserError("made-up failure")
    return original(setup, source, target, cfg, i_iter)
T.train_step = failing_step
from advent.scripts.train import main
from advent.utils.runtime import run_main
run_main(main, sys.argv[1:])
"""


def test_a_failure_on_one_process_mid_run_ends_the_run_with_its_one_line(tmp_path):
    cfg = two_process_cfg(tmp_path / "run")
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    (tmp_path / "failing.py").write_text(FAILING_RUN)
    result = torchrun([tmp_path / "failing.py", "--cfg", path], tmp_path)
    assert result.returncode != 0
    ours = [line[line.index("error"):] for line in result.stderr.splitlines() if "error (process" in line
            or line.startswith("error:")]
    # process 1 says why before it ends; process 0 says that it lost it, unless torchrun, stopping
    # the rest once process 1 has ended, stops it first
    assert ours.count("error (process 1): made-up failure") == 1, result.stderr[-3000:]
    assert set(ours) <= {"error (process 1): made-up failure",
                         "error: stopped: another process of this run ended; its error is above"}
    assert len(set(ours)) == len(ours), result.stderr[-3000:]
    assert "[rank" not in result.stderr  # no traceback of either process (torchrun reports its own)
    assert train_state_iterations(cfg.TRAIN.SNAPSHOT_DIR) == [2]  # what was saved before stays
