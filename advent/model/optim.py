"""Optimisers of the training stage: SGD for the segmenter (faithful or plain), Adam for discriminators.

Original quirk, reproduced deliberately (config TRAIN.REPEAT_BACKBONE_UPDATES, docs/training.md
"Optimiser fidelity"): the original's backbone parameter generator walked `modules()` and yielded
each parameter once per enclosing module, so its SGD group held block convs 3 times, projection
convs 4 times and the stem conv once, and the PyTorch it ran on (0.4) applied the SGD update
once per occurrence. `RepeatedSGD` holds each parameter once, with that occurrence count, and
applies the old update that many times. Parameter group 0 is the backbone (LR), group 1 the classifiers
(10x LR), as advent.utils.func.adjust_learning_rate expects.
"""
from collections import Counter

import torch
from torch.optim import Optimizer


class RepeatedSGD(Optimizer):
    """SGD (no dampening, no Nesterov) applying each parameter's update `repeats` times a step.

    Each group holds 'params' (unique) and 'repeats' (one positive int per parameter; default 1).
    Per occurrence, as torch.optim.SGD of PyTorch 0.4 did for a duplicated parameter:
        g <- g + wd * p          (in place on p.grad: accumulates over the occurrences of a step)
        buf <- g on the parameter's very first update, else buf <- momentum * buf + g
        p <- p - lr * buf        (p <- p - lr * g when momentum is 0)
    Parameters whose grad is None are skipped. With all repeats 1 this is torch.optim.SGD.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid lr {lr}, momentum {momentum} or weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def add_param_group(self, param_group):
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        repeats = list(param_group.get("repeats", [1] * len(params)))
        if len(repeats) != len(params) or any(int(n) < 1 for n in repeats):
            raise ValueError("'repeats' needs one positive count per parameter")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears twice in a group; give it a repeat count instead")
        super().add_param_group({**param_group, "params": params, "repeats": [int(n) for n in repeats]})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            entries = [(p, n) for p, n in zip(group["params"], group["repeats"]) if p.grad is not None]
            for occurrence in range(max((n for _, n in entries), default=0)):
                self._update([p for p, n in entries if n > occurrence], group)
        return loss

    def _update(self, params, group):
        """One occurrence of the old SGD rule for every parameter in `params`."""
        grads = [p.grad for p in params]
        if group["weight_decay"] != 0:
            torch._foreach_add_(grads, params, alpha=group["weight_decay"])
        steps = grads
        if group["momentum"] != 0:
            steps = self._momentum_buffers(params, grads, group["momentum"])
        torch._foreach_add_(params, steps, alpha=-group["lr"])

    def _momentum_buffers(self, params, grads, momentum):
        bufs, old_bufs, old_grads = [], [], []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.detach().clone()
            else:
                old_bufs.append(state["momentum_buffer"])
                old_grads.append(g)
            bufs.append(state["momentum_buffer"])
        if old_bufs:
            torch._foreach_mul_(old_bufs, momentum)
            torch._foreach_add_(old_bufs, old_grads)
        return bufs


def occurrence_counts(params):
    """[(parameter, occurrences)] for an iterable that may repeat parameters, in first-seen order."""
    unique, counts = {}, Counter()
    for p in params:
        unique.setdefault(id(p), p)
        counts[id(p)] += 1
    return [(p, counts[key]) for key, p in unique.items()]


def segmenter_param_groups(model):
    """[backbone group, classifier group], each parameter once; the backbone with 'repeats'.

    The repeat counts are the number of times the original's generator
    (`model.get_1x_lr_params_no_scale()`) yields each parameter.
    """
    backbone = occurrence_counts(model.get_1x_lr_params_no_scale())
    classifiers = occurrence_counts(model.get_10x_lr_params())
    assert all(n == 1 for _, n in classifiers), "the original listed classifier parameters once"
    return [{"params": [p for p, _ in backbone], "repeats": [n for _, n in backbone]},
            {"params": [p for p, _ in classifiers], "repeats": [1] * len(classifiers)}]


def segmenter_optimizer(model, lr, momentum, weight_decay, repeat_backbone_updates=True):
    """SGD for the segmenter: backbone at `lr`, classifiers at 10 * `lr`.

    `repeat_backbone_updates` (config TRAIN.REPEAT_BACKBONE_UPDATES) selects the original's
    repeated backbone updates (RepeatedSGD); False gives torch.optim.SGD, each parameter once.
    """
    backbone, classifiers = segmenter_param_groups(model)
    backbone["lr"], classifiers["lr"] = lr, 10 * lr
    if repeat_backbone_updates:
        return RepeatedSGD([backbone, classifiers], lr=lr, momentum=momentum, weight_decay=weight_decay)
    for group in (backbone, classifiers):
        del group["repeats"]
    return torch.optim.SGD([backbone, classifiers], lr=lr, momentum=momentum, weight_decay=weight_decay)


def discriminator_optimizer(discriminator, lr):
    """Adam(lr, betas=(0.9, 0.99)) over a discriminator's parameters, as the original."""
    return torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.9, 0.99))
