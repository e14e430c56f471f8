"""benchmarks/seed_batching.py: N networks computed as one are the N networks, to the bit on the CPU,
forward and backward, batch-norm statistics included; and the speed benchmark runs it."""
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from advent.model import build_segmenter, get_fc_discriminator
from benchmark_scripts import benchmark_path, load_benchmark
from processes import HANG_GUARD_S

seed_batching = load_benchmark("seed_batching")


def networks(make, n):
    built = []
    for seed in range(n):
        torch.manual_seed(seed)
        built.append(make().double().train())
    return built


@pytest.mark.parametrize("kind", ["segmenter", "discriminator"])
def test_seed_batched_networks_compute_each_network_exactly(kind):
    if kind == "segmenter":
        make, channels = (lambda: build_segmenter("DeepLabv2-Tiny", 19, multi_level=True)), 3
    else:
        make, channels = (lambda: get_fc_discriminator(19, ndf=8)), 19
    singles = networks(make, 3)
    batched = seed_batching.SeedBatched(networks(make, 3)).train()
    x = torch.randn(3, channels, 64, 48, dtype=torch.float64)
    outputs = batched(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    wide_params = dict(batched.wide.named_parameters())
    loss = sum((o ** 2).sum() for o in outputs)
    loss.backward()
    for k, single in enumerate(singles):
        own = single(x[k:k + 1])
        own = own if isinstance(own, tuple) else (own,)
        for mine, theirs in zip(own, outputs):
            assert torch.equal(mine, theirs[k:k + 1])
        sum((o ** 2).sum() for o in own).backward()
        for name, param in single.named_parameters():
            block = wide_params[name].shape[0] // 3
            wide = wide_params[name]
            assert wide.requires_grad == param.requires_grad, name
            if param.requires_grad:
                assert torch.equal(wide.grad[k * block:(k + 1) * block], param.grad), name
        for name, buffer in single.named_buffers():
            wide = dict(batched.wide.named_buffers())[name]
            if buffer.dim():  # the running statistics, after one train-mode forward each
                block = wide.shape[0] // 3
                assert torch.equal(wide[k * block:(k + 1) * block], buffer), name
    assert any(not p.requires_grad for p in wide_params.values()) == (kind == "segmenter")  # frozen BN


def test_seed_batched_refuses_a_batch_of_another_size_and_layers_that_mix_channels():
    batched = seed_batching.SeedBatched(networks(lambda: get_fc_discriminator(19, ndf=8), 2))
    with pytest.raises(ValueError, match="a batch of 2 expected"):
        batched(torch.randn(3, 19, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="Linear mixes channels"):
        seed_batching.widen([nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))])


@pytest.mark.slow
def test_train_speed_runs_seed_batched_iterations():
    result = subprocess.run([sys.executable, str(benchmark_path("train_speed")), "--device", "cpu", "--models",
                             "DeepLabv2-Tiny", "--modes", "none", "--seed-batch", "2", "--iters", "1", "--warmup",
                             "1", "--source-size", "64", "32", "--target-size", "64", "32", "--threads", "1"],
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {fields[1]: fields[2:] for fields in (re.split(r"\s{2,}", line.strip()) for line in
                                                 result.stdout.splitlines() if line.startswith("DeepLabv2-Tiny"))}
    assert list(rows) == ["fp32", "fp32, 2 seeds batched"]
    assert all(float(value) > 0 for value in rows["fp32, 2 seeds batched"])
    assert len(rows["fp32, 2 seeds batched"]) == len(rows["fp32"]) + 1  # and its ratio to one seed
