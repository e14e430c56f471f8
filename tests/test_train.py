"""Training: every method runs, one iteration equals the published statement of it, snapshots, exact
resume, signals, a non-finite loss, refusing to overwrite a run, TensorBoard."""
import copy
import logging
import math
import os
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advent import PROJECT_ROOT
from advent.config import derive_paths
from advent.domain_adaptation import train_UDA
from advent.domain_adaptation.checkpoint import train_state_iterations
from advent.domain_adaptation.train_data import ResumableSampler, rng_state, set_rng_state
from advent.domain_adaptation.train_UDA import (
    TrainingInterrupted, build_setup, train_domain_adaptation, train_step,
)
from advent.model import build_segmenter, get_fc_discriminator, load_checkpoint
from advent.model.weights import file_sha256, read_checkpoint
from advent.scripts import train as train_script
from advent.utils.errors import UserError
from advent.utils.runtime import run_main
from advent.utils.serialization import json_load
from fake_data import make_fake_cfg, write_cfg_yaml, write_pseudo_labels
from processes import HANG_GUARD_S, train_script_stopped_at, wait_for_files

CPU = torch.device("cpu")


def tiny_cfg(tmp_path, method="AdvEnt", iters=4, save_every=2, multi_level=True, pseudo=False, **fake):
    """A Tiny-model config over fake 64x32 data; pseudo-labels (ESL) written when `pseudo`."""
    cfg, written = make_fake_cfg(tmp_path, **fake)
    cfg.TRAIN.MODEL = "DeepLabv2-Tiny"
    cfg.TRAIN.DA_METHOD = method
    cfg.TRAIN.MULTI_LEVEL = multi_level
    cfg.TRAIN.EARLY_STOP, cfg.TRAIN.MAX_ITERS = iters, 2 * iters
    cfg.TRAIN.SAVE_PRED_EVERY = save_every
    cfg.NUM_WORKERS = 0
    if pseudo:
        folder = tmp_path / "labels"
        write_pseudo_labels(folder, written["train"].names, (64, 32), cfg.NUM_CLASSES)
        cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(folder)
    return derive_paths(cfg), written


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix == ".pth")


def assert_same_tensors(a, b, where="state"):
    """Every tensor in two nested structures is torch.equal; every other leaf is ==."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# --- every method runs and writes loadable snapshots ---

@pytest.mark.parametrize("method, multi_level, pseudo", [
    ("SourceOnly", True, False), ("MinEnt", True, False), ("AdvEnt", True, False),
    ("AdvEnt", True, True), ("AdvEnt", False, False), ("SourceOnly", False, True),
])
def test_each_method_runs_and_writes_snapshots(tmp_path, method, multi_level, pseudo):
    cfg, _ = tiny_cfg(tmp_path, method, iters=5, save_every=2, multi_level=multi_level, pseudo=pseudo)
    assert train_domain_adaptation(cfg, CPU) == 5
    levels = ["aux", "main"] if multi_level else ["main"]
    expected = {f"model_{n}.pth" for n in (2, 4, 5)} | {"train_state_5.pth"}
    if method == "AdvEnt":
        expected |= {f"model_{n}_D_{level}.pth" for n in (2, 4, 5) for level in levels}
    assert set(files_in(cfg.TRAIN.SNAPSHOT_DIR)) == expected  # older train states deleted
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert (folder / "config.yml").is_file() and list(folder.glob("run_train_*.json"))
    model = build_segmenter("DeepLabv2-Tiny", 19, multi_level)
    assert load_checkpoint(model, folder / "model_5.pth").layout == "state_dict"  # strict
    for level in levels if method == "AdvEnt" else []:
        state = torch.load(folder / f"model_5_D_{level}.pth", weights_only=True)
        get_fc_discriminator(19).load_state_dict(state)  # strict
    state = read_checkpoint(folder / "train_state_5.pth")
    assert state["iteration"] == 5
    assert ("d_main" in state) == (method == "AdvEnt")
    assert ("d_aux" in state) == (method == "AdvEnt" and multi_level)
    assert set(state["data"]) == ({"source", "target"} if method != "SourceOnly" or pseudo else {"source"})


def test_discriminator_width_is_the_configured_one(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=1, save_every=1, multi_level=False)
    cfg.TRAIN.DISCRIMINATOR_WIDTH = 8
    train_domain_adaptation(cfg, CPU)
    state = torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_1_D_main.pth", weights_only=True)
    assert state["0.weight"].shape[0] == 8 and state["6.weight"].shape[0] == 64
    get_fc_discriminator(19, ndf=8).load_state_dict(state)  # strict


def test_source_only_needs_no_target_images(tmp_path):
    cfg, written = tiny_cfg(tmp_path, "SourceOnly", iters=2)
    for path in written["train"].image_paths:
        path.unlink()
    assert train_domain_adaptation(cfg, CPU) == 2
    cfg2, written2 = tiny_cfg(tmp_path / "b", "MinEnt", iters=2)
    for path in written2["train"].image_paths:
        path.unlink()
    with pytest.raises(UserError, match="missing"):
        train_domain_adaptation(cfg2, CPU)
    assert not Path(cfg2.TRAIN.SNAPSHOT_DIR).exists()  # refused before its run folder was made


def test_backbone_moves_while_frozen_batch_norm_affine_does_not(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=3, save_every=3)
    torch.manual_seed(5)
    init = build_segmenter("DeepLabv2-Tiny", 19, True).state_dict()
    torch.save(init, tmp_path / "init.pth")
    cfg.TRAIN.RESTORE_FROM = str(tmp_path / "init.pth")
    train_domain_adaptation(cfg, CPU)
    trained = torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_3.pth", weights_only=True)
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.0.downsample.0.weight",
                "layer5.conv2d_list.0.weight", "layer6.conv2d_list.3.bias", "bn1.running_mean",
                "layer3.0.bn2.running_var"):
        assert not torch.equal(trained[key], init[key]), key
    frozen = [k for k in init if k.endswith((".weight", ".bias")) and ("bn" in k or "downsample.1" in k)]
    assert len(frozen) > 10
    for key in frozen:
        assert torch.equal(trained[key], init[key]), key
    assert trained["bn1.num_batches_tracked"] == 6  # source and target forwards, 3 iterations


# --- one iteration against a separate statement of the published step (docs/training.md) ---

def reference_iteration(model, discriminators, sgd, adams, src, trg, cfg, i_iter, method, pseudo):
    """The published AdvEnt iteration, written out with plain torch (no project helpers)."""
    train, num_classes = cfg.TRAIN, cfg.NUM_CLASSES
    lr = train.LEARNING_RATE * (1 - i_iter / train.MAX_ITERS) ** train.POWER
    lr_d = train.LEARNING_RATE_D * (1 - i_iter / train.MAX_ITERS) ** train.POWER
    sgd.param_groups[0]["lr"], sgd.param_groups[1]["lr"] = lr, 10 * lr
    for adam in adams.values():
        adam.param_groups[0]["lr"] = lr_d
    for optimizer in [sgd, *adams.values()]:
        optimizer.zero_grad()
    weights = {"seg": (train.LAMBDA_SEG_AUX, train.LAMBDA_SEG_MAIN),
               "adv": (train.LAMBDA_ADV_AUX, train.LAMBDA_ADV_MAIN),
               "ent": (train.LAMBDA_ENT_AUX, train.LAMBDA_ENT_MAIN)}
    losses = {}

    def up(logits, images):
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=True)

    def self_info(logits):
        p = F.softmax(logits, dim=1)
        return -p * torch.log2(p + 1e-30) / math.log2(num_classes)

    def total(name, per_level):
        out = 0
        for (level, value), weight in zip(per_level.items(), weights[name.split("_")[0]][-len(per_level):]):
            losses[f"loss_{name}_{level}"] = value.item()
            out = out + weight * value
        return out

    def levels(outputs):
        return {level: out for level, out in zip(("aux", "main"), outputs) if out is not None}

    pred_src = {k: up(v, src[0]) for k, v in levels(model(src[0])).items()}
    def cross_entropy(preds, labels):
        return {k: F.cross_entropy(v, labels, ignore_index=255) for k, v in preds.items()}

    total("seg_src", cross_entropy(pred_src, src[1])).backward()
    pred_trg = {k: up(v, trg[0]) for k, v in levels(model(trg[0])).items()}
    loss = 0
    if pseudo:
        loss = total("seg_trg", cross_entropy(pred_trg, trg[1]))
    if method == "MinEnt":
        loss = loss + total("ent", {k: self_info(v).sum(1).mean() for k, v in pred_trg.items()})
    else:
        loss = loss + total("adv_trg", {k: F.binary_cross_entropy_with_logits(
            discriminators[k](self_info(v)), torch.zeros_like(discriminators[k](self_info(v))))
            for k, v in pred_trg.items()})
    loss.backward()
    if method == "AdvEnt":
        for d in discriminators.values():  # the adversarial loss must not train the discriminators
            for p in d.parameters():
                p.grad = None
        for domain, preds, label in (("src", pred_src, 0.0), ("trg", pred_trg, 1.0)):
            for level, pred in preds.items():
                out = discriminators[level](self_info(pred.detach()))
                loss_d = F.binary_cross_entropy_with_logits(out, torch.full_like(out, label)) / 2
                losses[f"loss_d_{domain}_{level}"] = loss_d.item()
                right_side = out < 0 if label == 0 else out > 0
                losses[f"acc_d_{domain}_{level}"] = right_side.float().mean().item()
                loss_d.backward()
    for optimizer in [sgd, *adams.values()]:
        optimizer.step()
    return losses


def reference_optimizers(model, discriminators, cfg):
    heads = ("layer5.", "layer6.")
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(heads)]
    classifiers = [p for n, p in model.named_parameters() if n.startswith(heads)]
    sgd = torch.optim.SGD([{"params": backbone}, {"params": classifiers}], lr=1.0,
                          momentum=cfg.TRAIN.MOMENTUM, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
    adams = {k: torch.optim.Adam(d.parameters(), lr=1.0, betas=(0.9, 0.99))
             for k, d in discriminators.items()}
    return sgd, adams


@pytest.mark.parametrize("method, multi_level, pseudo", [
    ("AdvEnt", True, False), ("AdvEnt", True, True), ("MinEnt", False, False),
])
def test_iterations_equal_a_direct_statement_of_the_spec(tmp_path, method, multi_level, pseudo):
    cfg, _ = tiny_cfg(tmp_path, method, iters=10, multi_level=multi_level, pseudo=pseudo)
    cfg.TRAIN.REPEAT_BACKBONE_UPDATES = False  # plain SGD here; the repeated SGD has its own tests
    cfg.TRAIN.LAMBDA_ADV_MAIN, cfg.TRAIN.LAMBDA_ADV_AUX = 0.3, 0.07  # large enough to matter
    cfg.TRAIN.LAMBDA_ENT_MAIN, cfg.TRAIN.LAMBDA_ENT_AUX = 0.3, 0.07
    torch.manual_seed(0)
    setup = build_setup(cfg, CPU)
    setup.model.train()
    initial = copy.deepcopy(setup.model.state_dict())
    model, discriminators = copy.deepcopy(setup.model), copy.deepcopy(setup.discriminators)
    sgd, adams = reference_optimizers(model, discriminators, cfg)
    generator = torch.Generator().manual_seed(1)

    def batch():
        labels = torch.randint(0, 19, (1, 32, 64), generator=generator)
        labels[torch.rand(labels.shape, generator=generator) < 0.3] = 255
        return torch.randn(1, 3, 32, 64, generator=generator) * 60, labels

    for i_iter in (3, 4):  # two iterations: momentum and Adam state carry over
        src, trg = batch(), batch()
        metrics, _ = train_step(setup, src, trg, cfg, i_iter)
        expected = reference_iteration(model, discriminators, sgd, adams, src, trg, cfg, i_iter, method,
                                       pseudo)
        losses = {k: v for k, v in metrics.items() if k.startswith(("loss_", "acc_"))}
        assert losses == pytest.approx(expected, rel=1e-5)
        assert metrics["lr"] == pytest.approx(2.5e-4 * (1 - i_iter / 20) ** 0.9)
    pairs = [(setup.model, model)] + [(setup.discriminators[k], discriminators[k]) for k in discriminators]
    for ours, theirs in pairs:
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-8), name
    moved = [name for name, p in setup.model.named_parameters() if not torch.equal(p, initial[name])]
    assert len(moved) == sum(p.requires_grad for p in setup.model.parameters())


def test_a_step_sets_the_poly_learning_rates_of_the_configured_power(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4, multi_level=False)  # MAX_ITERS 8
    cfg.TRAIN.POWER = 2.0
    setup = build_setup(cfg, CPU)
    setup.model.train()
    images = torch.zeros(1, 3, 32, 64)
    metrics, _ = train_step(setup, (images, torch.zeros(1, 32, 64, dtype=torch.long)), (images, None), cfg, 2)
    # worked by hand: (1 - 2/8)^2 = 0.5625
    assert [g["lr"] for g in setup.optimizer.param_groups] == pytest.approx([1.40625e-4, 1.40625e-3])
    assert setup.optimizers_d["main"].param_groups[0]["lr"] == pytest.approx(5.625e-5)
    assert (metrics["lr"], metrics["lr_d"]) == pytest.approx((1.40625e-4, 5.625e-5))


# --- exact resume ---

def test_resumable_sampler_order():
    full = list(ResumableSampler(10, seed=3))
    assert sorted(full) == list(range(10)) and full != list(range(10))
    assert list(ResumableSampler(10, seed=3, start=4)) == full[4:]
    assert list(ResumableSampler(10, seed=4)) != full


def test_rng_states_survive_a_train_state_file(tmp_path):
    def draw():
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save({"rng": rng_state()}, tmp_path / "state.pth")
    expected = draw()
    set_rng_state(read_checkpoint(tmp_path / "state.pth")["rng"])  # weights_only=True
    assert draw() == expected


def interrupt_at(monkeypatch, i_stop, signum=signal.SIGTERM):
    """Make the process receive `signum` during iteration `i_stop` (0-based)."""
    original = train_UDA.train_step

    def step(setup, batch_src, batch_trg, cfg, i_iter):
        if i_iter == i_stop:
            signal.raise_signal(signum)
        return original(setup, batch_src, batch_trg, cfg, i_iter)

    monkeypatch.setattr(train_UDA, "train_step", step)


def test_the_train_state_counts_the_samples_each_loader_took(tmp_path, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "MinEnt", iters=3, save_every=3, multi_level=False)
    cfg.TRAIN.BATCH_SIZE_SOURCE = cfg.TRAIN.BATCH_SIZE_TARGET = 2
    batch_sizes = []
    original = train_UDA.train_step

    def step(setup, batch_src, batch_trg, cfg, i_iter):
        batch_sizes.append((len(batch_src[0]), len(batch_trg[0])))
        return original(setup, batch_src, batch_trg, cfg, i_iter)

    monkeypatch.setattr(train_UDA, "train_step", step)
    assert train_domain_adaptation(cfg, CPU) == 3
    assert batch_sizes == [(2, 2)] * 3
    data = read_checkpoint(Path(cfg.TRAIN.SNAPSHOT_DIR) / "train_state_3.pth")["data"]
    # 3 iterations x batch 2 x 1 process: the resumed loaders start at sample 6 of each order
    assert (data["source"]["position"], data["target"]["position"]) == (6, 6)


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    def config(folder):
        cfg, _ = tiny_cfg(folder, "AdvEnt", iters=5, save_every=2, pseudo=True)
        cfg.NUM_WORKERS = 2  # prefetched batches of the interrupted run must not shift the order
        cfg.TRAIN.BATCH_SIZE_SOURCE = 2  # the position counts samples, not iterations
        return cfg

    straight = config(tmp_path / "a")
    train_domain_adaptation(straight, CPU)
    cfg = config(tmp_path / "b")
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        with pytest.raises(TrainingInterrupted) as stop:
            train_domain_adaptation(cfg, CPU)
    assert stop.value.n_iter == 3 and stop.value.signum == signal.SIGTERM
    assert stop.value.path.name == "train_state_3.pth"
    assert train_state_iterations(cfg.TRAIN.SNAPSHOT_DIR) == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert train_domain_adaptation(config(tmp_path / "b"), CPU, resume=True) == 5
    ours = read_checkpoint(Path(cfg.TRAIN.SNAPSHOT_DIR) / "train_state_5.pth")
    theirs = read_checkpoint(Path(straight.TRAIN.SNAPSHOT_DIR) / "train_state_5.pth")
    for key in ("model", "d_aux", "d_main", "optimizer", "optimizer_d_aux", "optimizer_d_main", "rng",
                "data"):
        assert_same_tensors(ours[key], theirs[key], key)
    assert files_in(cfg.TRAIN.SNAPSHOT_DIR) == files_in(straight.TRAIN.SNAPSHOT_DIR)


@pytest.mark.slow
def test_a_run_extended_by_a_larger_early_stop_equals_one_started_with_it(tmp_path):
    def config(folder, early_stop):
        cfg, _ = tiny_cfg(folder, "AdvEnt", iters=early_stop, save_every=2, pseudo=True)
        cfg.TRAIN.MAX_ITERS = 10  # the order covers 10 iterations: 12 of the 4 images, not 4 or 8
        return cfg

    straight = config(tmp_path / "straight", 6)
    assert train_domain_adaptation(straight, CPU) == 6
    assert train_domain_adaptation(config(tmp_path / "extended", 4), CPU) == 4
    longer = config(tmp_path / "extended", 8)
    longer.TRAIN.MAX_ITERS = 12  # changes the learning rates of the finished part: refused
    with pytest.raises(UserError, match=r"--resume: TRAIN.MAX_ITERS was 10 when the run started"):
        train_domain_adaptation(longer, CPU, resume=True)
    assert train_domain_adaptation(config(tmp_path / "extended", 6), CPU, resume=True) == 6
    extended = config(tmp_path / "extended", 6).TRAIN.SNAPSHOT_DIR
    ours = read_checkpoint(Path(extended) / "train_state_6.pth")
    theirs = read_checkpoint(Path(straight.TRAIN.SNAPSHOT_DIR) / "train_state_6.pth")
    assert ours["data"]["source"]["num_samples"] == 12
    for key in ("iteration", "model", "d_aux", "d_main", "optimizer", "optimizer_d_aux", "optimizer_d_main",
                "rng", "data"):
        assert_same_tensors(ours[key], theirs[key], key)
    assert files_in(extended) == files_in(straight.TRAIN.SNAPSHOT_DIR)
    for name in files_in(extended):
        if name.startswith("model_"):
            assert_same_tensors(torch.load(Path(extended) / name, weights_only=True),
                                torch.load(Path(straight.TRAIN.SNAPSHOT_DIR) / name, weights_only=True), name)


@pytest.mark.slow
def test_sigterm_saves_a_state_that_resumes_and_finishes(tmp_path):
    cfg, _ = tiny_cfg(tmp_path / "run", "AdvEnt", iters=12, save_every=4)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    reached = tmp_path / "reached"
    process = subprocess.Popen([sys.executable, "-c", train_script_stopped_at(5, reached), "--cfg", str(path)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_files([f"{reached}.0"], process)  # in its sixth iteration, after the snapshot of 4
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 128 + signal.SIGTERM, err
    line = err.strip().splitlines()[-1]
    n_iter = 6
    assert train_state_iterations(cfg.TRAIN.SNAPSHOT_DIR) == [n_iter], err[-2000:]
    assert line.startswith(f"SIGTERM: stopped after {n_iter} iterations, train state saved to ")
    assert line.endswith(f"train_state_{n_iter}.pth; resume with: "
                         f"python advent/scripts/train.py --cfg {path} --resume")
    assert run_main(train_script.main, ["--cfg", str(path), "--resume"]) == 0
    straight, _ = tiny_cfg(tmp_path / "straight", "AdvEnt", iters=12, save_every=4)
    train_domain_adaptation(straight, CPU)
    resumed = torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_12.pth", weights_only=True)
    expected = torch.load(Path(straight.TRAIN.SNAPSHOT_DIR) / "model_12.pth", weights_only=True)
    assert_same_tensors(resumed, expected)


# --- failures and refusals ---

def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_snapshot(tmp_path, monkeypatch, capsys):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4, save_every=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    original, calls = train_UDA.seg_losses, []

    def poisoned(preds, labels):
        calls.append(1)
        losses = original(preds, labels)
        return {k: v * float("nan") for k, v in losses.items()} if len(calls) == 3 else losses

    monkeypatch.setattr(train_UDA, "seg_losses", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_script.main, ["--cfg", str(path)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert errors == [f"error: training diverged at iteration 3: loss_seg_src_aux is nan; nothing of this "
                      f"iteration was saved, last good train state: {folder / 'train_state_2.pth'}"]
    assert files_in(folder) == ["model_2.pth", "model_2_D_aux.pth", "model_2_D_main.pth", "train_state_2.pth"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    state = read_checkpoint(folder / "train_state_2.pth")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_fresh_run_refuses_an_existing_run_and_resume_checks_the_config(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "MinEnt", iters=2, save_every=2)
    train_domain_adaptation(cfg, CPU)
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    before = {name: file_sha256(folder / name) for name in files_in(folder)}
    refusal = r"already holds a training run .*pass --resume.*EXP_NAME / --exp-suffix"
    with pytest.raises(UserError, match=refusal):
        train_domain_adaptation(tiny_cfg(tmp_path, "MinEnt", iters=2)[0], CPU)
    assert {name: file_sha256(folder / name) for name in files_in(folder)} == before
    assert train_domain_adaptation(tiny_cfg(tmp_path, "MinEnt", iters=2)[0], CPU, resume=True) == 2  # done
    changed, _ = tiny_cfg(tmp_path, "MinEnt", iters=2)
    changed.TRAIN.LEARNING_RATE = 1e-3
    with pytest.raises(UserError, match=r"TRAIN.LEARNING_RATE was 0.00025 when the run started"):
        train_domain_adaptation(changed, CPU, resume=True)
    other = derive_paths(tiny_cfg(tmp_path, "MinEnt", iters=2)[0], "")
    other.TRAIN.SNAPSHOT_DIR = str(tmp_path / "empty")
    assert train_domain_adaptation(other, CPU, resume=True) == 2  # nothing to resume: a run from iteration 0
    assert (tmp_path / "empty" / "model_2.pth").is_file()


@pytest.mark.slow
def test_random_train_differs_from_seeded(tmp_path):
    runs, orders = [], []
    for name, seeded in (("a", False), ("b", False), ("c", True), ("d", True)):
        cfg, _ = tiny_cfg(tmp_path / name, "SourceOnly", iters=1, save_every=1)
        train_domain_adaptation(cfg, CPU, seeded=seeded)
        runs.append(torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_1.pth", weights_only=True))
        orders.append(json_load(next(Path(cfg.TRAIN.SNAPSHOT_DIR).glob("run_train_*.json")))["data_orders"])
    assert not torch.equal(runs[0]["conv1.weight"], runs[1]["conv1.weight"])
    assert_same_tensors(runs[2], runs[3])
    # the data order's seed is in the run record: the drawn one of a --random-train run too
    assert orders[2] == orders[3] and orders[2]["source"]["seed"] == cfg.TRAIN.RANDOM_SEED
    assert orders[0]["source"]["seed"] != orders[1]["source"]["seed"]
    assert orders[0]["source"]["position"] == 0 and orders[0]["source"]["batch_size"] == 1


@pytest.mark.slow
def test_bf16_autocast_runs(tmp_path, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=2, save_every=2)
    cfg.TRAIN.AMP = "bf16"
    seen = {"segmenter": [], "discriminator": []}  # per forward: autocast on, its dtype, the output's dtype
    original = train_UDA.build_setup

    def record(name):
        return lambda module, inputs, output: seen[name].append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
             (output[1] if name == "segmenter" else output).dtype))

    def build_setup_with_hooks(cfg, device):
        setup = original(cfg, device)
        setup.model.register_forward_hook(record("segmenter"))
        for discriminator in setup.discriminators.values():
            discriminator.register_forward_hook(record("discriminator"))
        return setup

    monkeypatch.setattr(train_UDA, "build_setup", build_setup_with_hooks)
    assert train_domain_adaptation(cfg, CPU) == 2
    bf16 = (True, torch.bfloat16, torch.bfloat16)
    assert seen["segmenter"] == [bf16] * 2 * 2  # source and target, 2 iterations
    assert seen["discriminator"] == [bf16] * 2 * 2 * 3  # 2 levels: adversarial, source, target
    state = torch.load(Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_2.pth", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())


# --- TensorBoard ---

def read_events(logdir):
    """{tag: [(step, Summary.Value)]} from the TFRecord event files in `logdir`."""
    from tensorboardX.proto import event_pb2

    tags = {}
    for path in Path(logdir).glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


@pytest.mark.slow
def test_tensorboard_scalars_and_images(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=2, save_every=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    assert run_main(train_script.main, ["--cfg", str(path), "--tensorboard", "--viz-every-iter", "2"]) == 0
    tags = read_events(cfg.TRAIN.TENSORBOARD_LOGDIR)
    for name in ("loss_seg_src_aux", "loss_seg_src_main", "loss_adv_trg_aux", "loss_adv_trg_main",
                 "loss_d_src_main", "loss_d_trg_aux", "acc_d_src_main", "acc_d_trg_aux", "lr", "lr_d"):
        assert [step for step, _ in tags[f"train/{name}"]] == [1, 2], name
    for step, value in tags["train/acc_d_src_main"]:
        assert 0 <= value.simple_value <= 1
    assert tags["train/lr"][0][1].simple_value == pytest.approx(2.5e-4)
    for domain in ("source", "target"):
        [(step, value)] = tags[f"{domain}/image_prediction_entropy"]
        assert step == 2 and value.image.height == 32 + 4 and value.image.width == 3 * 64 + 8


def test_log_lines_above_the_progress_bar_keep_the_consoles_level(capsys):
    """The demo's console shows warnings only (its INFO lines go to the stage logs): the training
    loop's log redirection above the progress bar must not show INFO lines there."""
    root, console = logging.getLogger(), logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    saved = root.handlers[:], root.level
    root.handlers[:], root.level = [console], logging.INFO
    try:
        with train_UDA.log_above_progress_bar():
            logging.getLogger("advent.test").info("saved snapshot model_2.pth")
            logging.getLogger("advent.test").warning("TRAIN.RESTORE_FROM is empty")
        assert root.handlers == [console]  # the console handler is back after the loop
    finally:
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "TRAIN.RESTORE_FROM is empty" in err and "saved snapshot" not in err
