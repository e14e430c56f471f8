"""Seed batching: N training runs of one architecture computed as one network, for the speed
benchmarks (train_speed.py --seed-batch, gpu_check.py --seed-batch).

Every layer of DeepLabV2 and of the discriminator acts on each channel apart (batch norm, ReLU,
max-pool, the residual adds, upsampling) or is a convolution. So N networks side by side are one
network whose convolutions are grouped (network k owns the k-th block of channels of every
layer) and whose batch norms span all N networks' channels: with batch 1 per network, each
channel's statistics are still those of its own network's image. `widen` builds that network;
`SeedBatched` feeds it batch item k as network k's input and hands back each network's output as
batch item k, so the training iteration runs unchanged on batches of N.

What this answers: whether one process that trains N seeds this way reaches more seed-iterations
per second on one GPU than N processes sharing it (whose kernels are the small ones of batch 1).
The losses of train_UDA are means over the batch, so here each network's gradients are 1/N of
its own run's: the same work, not yet a seed sweep train.py could run.
"""
import copy
import itertools

import torch
import torch.nn as nn


def _wide_module(module, n):
    """An empty conv or batch norm N times as wide as `module` (its dtype and device); None for
    any other module."""
    like = next(itertools.chain(module.parameters(), module.buffers()), None)
    factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(module.in_channels * n, module.out_channels * n, module.kernel_size,
                         stride=module.stride, padding=module.padding, dilation=module.dilation,
                         groups=module.groups * n, bias=module.bias is not None,
                         padding_mode=module.padding_mode, **factory)
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(module.num_features * n, eps=module.eps, momentum=module.momentum,
                              affine=module.affine, track_running_stats=module.track_running_stats, **factory)
    if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.GroupNorm,
                           nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm3d)):
        raise TypeError(f"widen: {type(module).__name__} mixes channels; only Conv2d and BatchNorm2d "
                        f"are widened")
    return None


def widen(networks):
    """One network computing `networks` (same architecture) side by side; see the module docstring.
    Its parameters and buffers are the networks' own, concatenated along the channels; which of
    them are trained (requires_grad) is kept."""
    n = len(networks)
    wide = copy.deepcopy(networks[0])
    tables = [dict(network.named_modules()) for network in networks]
    for name, module in networks[0].named_modules():
        new = _wide_module(module, n)
        if new is None:
            continue
        states = [table[name].state_dict() for table in tables]
        with torch.no_grad():
            for key, tensor in new.state_dict(keep_vars=True).items():
                if tensor.dim() == 0:  # num_batches_tracked: one count, alike in every network
                    tensor.copy_(states[0][key])
                else:
                    tensor.copy_(torch.cat([state[key] for state in states]))
        for param_name, param in new.named_parameters():
            param.requires_grad_(getattr(module, param_name).requires_grad)
        parent, _, child = name.rpartition(".")
        setattr(wide.get_submodule(parent), child, new)
    return wide


def stack_channels(x):
    """(N, C, H, W) -> (1, N*C, H, W): batch item k becomes channel block k."""
    return x.reshape(1, -1, *x.shape[2:])


def split_channels(x, n):
    """(1, N*C, H, W) -> (N, C, H, W), the inverse of stack_channels."""
    return x.reshape(n, -1, *x.shape[2:])


class SeedBatched(nn.Module):
    """`widen(networks)` taking and giving batches of N: item k is network k's input and output.
    Outputs may be a tensor or a tuple of tensors and None (DeepLabV2's (aux, main))."""

    def __init__(self, networks):
        super().__init__()
        self.n = len(networks)
        self.wide = widen(networks)

    def forward(self, x):
        if x.shape[0] != self.n:
            raise ValueError(f"a batch of {self.n} expected (one item per network), got {x.shape[0]}")
        out = self.wide(stack_channels(x))
        if isinstance(out, tuple):
            return tuple(None if o is None else split_channels(o, self.n) for o in out)
        return split_channels(out, self.n)

    # the parameter groups of segmenter_optimizer (DeepLabV2), on the wide network
    def get_1x_lr_params_no_scale(self):
        return self.wide.get_1x_lr_params_no_scale()

    def get_10x_lr_params(self):
        return self.wide.get_10x_lr_params()


def seed_batched_setup(cfg, device, n):
    """train_UDA.build_setup for `n` networks of each kind (seeds 0 .. n-1), seed-batched."""
    from advent.domain_adaptation.train_UDA import TrainingSetup, build_setup
    from advent.model import discriminator_optimizer, segmenter_optimizer
    from advent.utils.runtime import memory_format

    train = cfg.TRAIN
    setups = []
    for seed in range(n):
        torch.manual_seed(seed)
        setups.append(build_setup(cfg, torch.device("cpu")))
    model = SeedBatched([s.model for s in setups]).to(device, memory_format=memory_format(cfg.CHANNELS_LAST))
    optimizer = segmenter_optimizer(model, train.LEARNING_RATE, train.MOMENTUM, train.WEIGHT_DECAY,
                                    train.REPEAT_BACKBONE_UPDATES)
    discriminators = {level: SeedBatched([s.discriminators[level] for s in setups]).to(device)
                      for level in setups[0].discriminators}
    optimizers_d = {level: discriminator_optimizer(d, train.LEARNING_RATE_D) for level, d in discriminators.items()}
    scaler = torch.amp.GradScaler(device.type) if train.AMP == "fp16" else None  # on `device`, not the CPU
    return TrainingSetup(model, optimizer, discriminators, optimizers_d, scaler)
