"""Segmenter SGD: the original's repeated backbone updates, stated step by step, and plain SGD."""
import io
import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn

from advent.model.deeplabv2 import build_segmenter, get_deeplab_v2
from advent.model.discriminator import get_fc_discriminator
from advent.model.optim import (RepeatedSGD, discriminator_optimizer, segmenter_optimizer,
                                segmenter_param_groups)
from advent.utils.func import adjust_learning_rate

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4


def old_sgd_step(occurrences, state, lr, momentum, weight_decay):
    """torch.optim.SGD.step of PyTorch 0.4 over a list that may hold a parameter several times."""
    with torch.no_grad():
        for p in occurrences:
            if p.grad is None:
                continue
            d_p = p.grad
            d_p.add_(p, alpha=weight_decay)
            if momentum != 0:
                if p not in state:
                    state[p] = d_p.clone()
                else:
                    state[p].mul_(momentum).add_(d_p)
                d_p = state[p]
            p.add_(d_p, alpha=-lr)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def set_grads(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = None if p is model.unused.weight else torch.randn(p.shape, generator=generator)


def clone_toy(model):
    copy = Toy()
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_repeated_sgd_equals_the_old_rule_over_a_duplicated_list(momentum):
    torch.manual_seed(0)
    ours = Toy()
    ref = clone_toy(ours)
    repeats = {"a.weight": 3, "a.bias": 1, "b.weight": 4, "b.bias": 2, "unused.weight": 3, "unused.bias": 1}
    named = dict(ours.named_parameters())
    optimizer = RepeatedSGD([{"params": list(named.values()), "repeats": list(repeats.values())}],
                            lr=LR, momentum=momentum, weight_decay=WD)
    ref_named = dict(ref.named_parameters())
    duplicated = [ref_named[name] for name, n in repeats.items() for _ in range(n)]
    state = {}
    for step in range(3):  # the second and third steps exercise the momentum buffers
        set_grads(ours, seed=step)
        set_grads(ref, seed=step)
        optimizer.step()
        old_sgd_step(duplicated, state, LR, momentum, WD)
        for name, p in ours.named_parameters():
            assert torch.equal(p, ref_named[name]), (step, name)
            if p.grad is not None:  # the weight decay was added in place, once per occurrence
                assert torch.equal(p.grad, ref_named[name].grad), (step, name)
    assert torch.equal(named["unused.weight"], ref_named["unused.weight"])  # grad None: untouched
    if momentum:
        buffer = optimizer.state[named["b.weight"]]["momentum_buffer"]
        assert torch.equal(buffer, state[ref_named["b.weight"]])
        assert named["unused.weight"] not in optimizer.state


def test_repeats_change_the_result():
    torch.manual_seed(0)
    once = Toy()
    thrice = clone_toy(once)
    opt_once = RepeatedSGD(once.parameters(), lr=LR, momentum=MOMENTUM)
    opt_thrice = RepeatedSGD([{"params": list(thrice.parameters()), "repeats": [3] * 6}], lr=LR,
                             momentum=MOMENTUM)
    set_grads(once, 0)
    set_grads(thrice, 0)
    opt_once.step()
    opt_thrice.step()
    # first step, no weight decay: buf = g, then m*g + g, then m*(m*g+g) + g: 1 + 1.9 + 2.71 = 5.61 x
    delta_once = once.a.weight.grad * LR
    torch.testing.assert_close(thrice.a.weight - once.a.weight, -4.61 * delta_once)


@pytest.mark.slow
def test_repeat_counts_follow_the_original_generator():
    model = get_deeplab_v2(num_classes=19, multi_level=True)
    backbone, classifiers = segmenter_param_groups(model)
    counts = {name: n for (name, p) in model.named_parameters()
              for q, n in zip(backbone["params"], backbone["repeats"]) if p is q}
    assert counts["conv1.weight"] == 1
    block_convs = [n for k, n in counts.items() if k.startswith("layer") and ".conv" in k]
    downsample_convs = [n for k, n in counts.items() if "downsample" in k]
    assert len(block_convs) == 3 * 33 and set(block_convs) == {3}
    assert len(downsample_convs) == 4 and set(downsample_convs) == {4}
    assert Counter(counts.values()) == {1: 1, 3: 3 * (3 + 4 + 23 + 3), 4: 4}
    assert classifiers["repeats"] == [1] * 16
    # each tensor once, frozen batch norm left out, every trainable tensor in exactly one group
    groups = backbone["params"] + classifiers["params"]
    assert len({id(p) for p in groups}) == len(groups)
    assert {id(p) for p in groups} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(list(model.get_1x_lr_params_no_scale())) == sum(backbone["repeats"])


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_segmenter("DeepLabv2-Tiny", 19, True)


def forward_backward(model, seed):
    generator = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    aux, main = model(torch.randn(1, 3, 32, 48, generator=generator))
    (0.1 * aux.square().mean() + main.square().mean()).backward()


@pytest.mark.parametrize("repeat", [True, False])
def test_segmenter_optimizer_equals_the_old_loop_on_the_original_groups(repeat):
    model, ref = tiny(), tiny()
    optimizer = segmenter_optimizer(model, LR, MOMENTUM, WD, repeat_backbone_updates=repeat)
    assert isinstance(optimizer, RepeatedSGD if repeat else torch.optim.SGD)
    backbone = list(ref.get_1x_lr_params_no_scale())  # the original's list, duplicates included
    if not repeat:
        backbone = list({id(p): p for p in backbone}.values())
    classifiers = list(ref.get_10x_lr_params())
    state = {}
    for step in range(2):
        forward_backward(model, step)
        forward_backward(ref, step)
        optimizer.step()
        old_sgd_step(backbone, state, LR, MOMENTUM, WD)
        old_sgd_step(classifiers, state, 10 * LR, MOMENTUM, WD)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=f"step {step}: {name}")


def test_no_duplicate_warning_and_lr_schedule():
    model = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for repeat in (True, False):
            optimizer = segmenter_optimizer(model, LR, MOMENTUM, WD, repeat_backbone_updates=repeat)
            for group in optimizer.param_groups:
                assert len({id(p) for p in group["params"]}) == len(group["params"])
            assert [g["lr"] for g in optimizer.param_groups] == [LR, 10 * LR]
            lr = adjust_learning_rate(optimizer, 500, LR, 1000, 0.9)
            assert [g["lr"] for g in optimizer.param_groups] == [lr, 10 * lr]


def test_state_dict_round_trip_resumes_exactly():
    model, resumed = tiny(), tiny()
    optimizer = segmenter_optimizer(model, LR, MOMENTUM, WD)
    forward_backward(model, 0)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = segmenter_optimizer(resumed, LR, MOMENTUM, WD)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert resumed_optimizer.param_groups[0]["repeats"] == optimizer.param_groups[0]["repeats"]
    for m, opt in ((model, optimizer), (resumed, resumed_optimizer)):
        forward_backward(m, 1)
        opt.step()
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_repeated_sgd_rejects_duplicates_and_bad_repeats():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="twice"):
        RepeatedSGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="repeats"):
        RepeatedSGD([{"params": [p], "repeats": [0]}], lr=0.1)


def test_discriminator_optimizer():
    disc = get_fc_discriminator(19, ndf=4)
    optimizer = discriminator_optimizer(disc, 1e-4)
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"]) == (1e-4, (0.9, 0.99))
    assert len(group["params"]) == 10
