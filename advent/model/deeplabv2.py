"""Segmenter: DeepLab-v2 on a dilated ResNet, the network AdvEnt and ESL train and evaluate.

Module and attribute names follow the released checkpoints exactly (see
tests/reference/deeplabv2_state_dict.json), so `gta2cityscapes_advent.pth` and
friends load without renaming: `conv1, bn1, layer1..layer4` (backbone),
`layer5.conv2d_list.{0..3}` (aux classifier on layer3, multi-level only) and
`layer6.conv2d_list.{0..3}` (main classifier on layer4).

Output resolution: the logits of an input side of n pixels have
floor((n + 1) / 8) + 1 pixels (stem conv /2, ceil-mode max-pool /2, layer2 /2),
e.g. 512 -> 65, 1024 -> 129, 64 -> 9, 65 -> 9, 33 -> 5. Callers upsample them.
"""
import torch.nn as nn

from advent.utils.errors import UserError

EXPANSION = 4
# name in config.MODELS -> (blocks per layer, base width)
ARCHITECTURES = {
    "DeepLabv2": ((3, 4, 23, 3), 64),  # ResNet-101, the papers' network
    "DeepLabv2-R50": ((3, 4, 6, 3), 64),
    "DeepLabv2-Tiny": ((1, 1, 1, 1), 16),  # same naming layout, for CPU demos and tests
}
DEPTHS = {101: "DeepLabv2", 50: "DeepLabv2-R50"}  # get_deeplab_v2's depth -> its architecture


def _frozen_bn(channels):
    # as the original: affine batch norm whose scale and shift are never trained; the running
    # statistics still update whenever the model is in train mode
    bn = nn.BatchNorm2d(channels, affine=True)
    for param in bn.parameters():
        param.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: the stride sits on the first 1x1 conv, the 3x3 conv is dilated."""

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = _frozen_bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _frozen_bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = _frozen_bn(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ClassifierModule(nn.Module):
    """DeepLab-v2 ASPP head: four dilated 3x3 convs (with bias) whose outputs are summed."""

    def __init__(self, inplanes, num_classes, dilations=(6, 12, 18, 24)):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0, 0.01)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out += conv(x)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet (output stride 8) with a main head on layer4 and an optional aux head on layer3.

    `forward(x)` returns `(aux, main)` logits; `aux` is None when `multi_level` is False.
    """

    def __init__(self, blocks, num_classes, multi_level=True, width=64):
        super().__init__()
        self.blocks = tuple(blocks)
        self.width = width
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _frozen_bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(width, blocks[0])
        self.layer2 = self._make_layer(width * 2, blocks[1], stride=2)
        self.layer3 = self._make_layer(width * 4, blocks[2], dilation=2)
        self.layer4 = self._make_layer(width * 8, blocks[3], dilation=4)
        if multi_level:
            self.layer5 = ClassifierModule(width * 4 * EXPANSION, num_classes)
        self.layer6 = ClassifierModule(width * 8 * EXPANSION, num_classes)
        self._init_backbone()

    @property
    def arch_name(self):
        """The config.MODELS name of this architecture (for messages), or a description."""
        for name, (blocks, width) in ARCHITECTURES.items():
            if (blocks, width) == (self.blocks, self.width):
                return name
        return f"DeepLabV2(blocks={'-'.join(map(str, self.blocks))}, width={self.width})"

    def _make_layer(self, planes, num_blocks, stride=1, dilation=1):
        # every layer's first block gets a projection shortcut (true for all four layers of the
        # original: the channel count, the stride or the dilation changes there)
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
            _frozen_bn(planes * EXPANSION))
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def _init_backbone(self):
        # as the original: every conv N(0, 0.01), batch norm identity (the backbone is then
        # normally overwritten by an ImageNet init)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def backbone_modules(self):
        """The backbone as the original listed it for the 1x LR group (stem BN included)."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def classifier_modules(self):
        return [self.layer5, self.layer6] if self.multi_level else [self.layer6]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        aux = self.layer5(x) if self.multi_level else None
        main = self.layer6(self.layer4(x))
        return aux, main

    def get_1x_lr_params_no_scale(self):
        """The original's backbone generator, duplicates included (see advent.model.optim).

        It walks `modules()` of each backbone part and yields every trainable parameter once per
        enclosing module: block convs 3 times, projection convs 4 times, the stem conv once.
        """
        for part in self.backbone_modules():
            for module in part.modules():
                for param in module.parameters():
                    if param.requires_grad:
                        yield param

    def get_10x_lr_params(self):
        """The classifier parameters (aux then main), each once."""
        for part in self.classifier_modules():
            yield from part.parameters()


def get_deeplab_v2(num_classes=19, multi_level=True, depth=101):
    """DeepLab-v2 on ResNet-101 (the papers' model) or ResNet-50 (`depth=50`)."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
    return build_segmenter(DEPTHS[depth], num_classes, multi_level)


def build_segmenter(name, num_classes, multi_level):
    """The segmenter named by a config MODEL value (one of config.MODELS)."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(ARCHITECTURES)}")
    blocks, width = ARCHITECTURES[name]
    return DeepLabV2(blocks, num_classes, multi_level, width=width)
