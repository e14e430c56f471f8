"""Discriminator of AdvEnt: tells source from target by the weighted self-information maps."""
import torch.nn as nn


def get_fc_discriminator(num_classes, ndf=64):
    """Fully convolutional: 5 convs 4x4 stride 2 padding 1, C -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1.

    A plain nn.Sequential (LeakyReLU(0.2) between the convs, none after the last, no norm), so its
    state-dict names are `0.weight` ... `8.bias`, as in the released `*_D_main.pth` files.
    """
    channels = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                   nn.LeakyReLU(negative_slope=0.2, inplace=True)]
    layers.append(nn.Conv2d(channels[-1], 1, 4, stride=2, padding=1))
    return nn.Sequential(*layers)
