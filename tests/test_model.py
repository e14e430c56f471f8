"""DeepLab-v2 and the discriminator: released state-dict layout, output sizes, frozen batch norm."""
import json
from pathlib import Path

import pytest
import torch

from advent.config import MODELS
from advent.model.deeplabv2 import DeepLabV2, build_segmenter, get_deeplab_v2
from advent.model.discriminator import get_fc_discriminator
from advent.model.optim import segmenter_optimizer
from advent.utils.errors import UserError

# The state-dict names and shapes of the released checkpoints.
REFERENCE = Path(__file__).resolve().parent / "reference" / "deeplabv2_state_dict.json"


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE) as f:
        return {name: [(key, list(shape)) for key, shape in entries]
                for name, entries in json.load(f).items()}


def layout(module):
    return [(key, list(value.shape)) for key, value in module.state_dict().items()]


def with_classes(entries, num_classes):
    """The reference layout with the classifiers' class dimension changed."""
    return [(k, [num_classes] + s[1:] if k.startswith(("layer5.", "layer6.")) else s)
            for k, s in entries]


@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return get_deeplab_v2(num_classes=19, multi_level=True)


def tiny(num_classes=19, multi_level=True):
    return build_segmenter("DeepLabv2-Tiny", num_classes, multi_level)


@pytest.mark.slow
def test_r101_state_dict_equals_released_layout(reference, r101):
    assert layout(r101) == reference["deeplabv2_num_classes19_multi_level"]
    single = get_deeplab_v2(num_classes=19, multi_level=False)
    assert layout(single) == reference["deeplabv2_num_classes19_single_level"]


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [16, 7])
def test_r101_layout_for_other_class_counts(reference, num_classes):
    model = get_deeplab_v2(num_classes=num_classes, multi_level=True)
    expected = with_classes(reference["deeplabv2_num_classes19_multi_level"], num_classes)
    assert layout(model) == expected
    assert model.layer6.conv2d_list[3].weight.shape == (num_classes, 2048, 3, 3)
    assert model.layer5.conv2d_list[0].weight.shape == (num_classes, 1024, 3, 3)


def test_r50_and_tiny_keep_the_naming_layout(reference):
    names_101 = [k for k, _ in reference["deeplabv2_num_classes19_multi_level"]]
    r50 = [k for k, _ in layout(get_deeplab_v2(depth=50))]
    assert r50 == [k for k in names_101 if not any(k.startswith(f"layer3.{i}.") for i in range(6, 23))]
    backbone_layers = ("layer1.", "layer2.", "layer3.", "layer4.")
    first_blocks = [k for k in names_101 if not k.startswith(backbone_layers) or k.split(".")[1] == "0"]
    assert [k for k, _ in layout(tiny())] == first_blocks
    with pytest.raises(ValueError, match=r"^depth must be one of \[50, 101\], got 34$"):
        get_deeplab_v2(depth=34)


@pytest.mark.slow
def test_build_segmenter_maps_every_config_model():
    blocks = {"DeepLabv2": (3, 4, 23, 3), "DeepLabv2-R50": (3, 4, 6, 3), "DeepLabv2-Tiny": (1, 1, 1, 1)}
    assert set(MODELS) == set(blocks)
    for name in MODELS:
        model = build_segmenter(name, 7, False)
        assert (model.blocks, model.arch_name, model.num_classes) == (blocks[name], name, 7)
        assert not hasattr(model, "layer5")
    with pytest.raises(UserError, match=r"^unknown model 'DeepLabv3'; expected one of DeepLabv2, "):
        build_segmenter("DeepLabv3", 19, True)


def test_discriminator_layout_and_output(reference):
    disc = get_fc_discriminator(num_classes=19)
    assert layout(disc) == reference["fc_discriminator_num_classes19"]
    out = disc(torch.rand(2, 19, 64, 128))
    assert out.shape == (2, 1, 2, 4)
    assert [type(m).__name__ for m in disc] == ["Conv2d", "LeakyReLU"] * 4 + ["Conv2d"]
    assert all(m.negative_slope == 0.2 for m in disc[1::2])


def logits_side(n):
    """Stem conv /2 (padding 3), ceil-mode max-pool 3/2 (padding 1), layer2 1x1 conv stride 2."""
    n = (n - 1) // 2 + 1
    n = -(-(n - 1) // 2) + 1
    return (n - 1) // 2 + 1


def test_logits_side_formula():
    assert [logits_side(n) for n in (512, 1024, 720, 1280, 64, 65, 32, 33)] == \
           [65, 129, 91, 161, 9, 9, 5, 5]
    assert all(logits_side(n) == (n + 1) // 8 + 1 for n in range(8, 600))


@pytest.mark.parametrize("width,height", [(64, 32), (65, 33), (71, 39), (72, 40)])
def test_tiny_output_shapes(width, height):
    aux, main = tiny()(torch.randn(2, 3, height, width))
    assert main.shape == (2, 19, logits_side(height), logits_side(width))
    assert aux.shape == main.shape
    aux, main = tiny(7, multi_level=False)(torch.randn(1, 3, height, width))
    assert aux is None and main.shape == (1, 7, logits_side(height), logits_side(width))


@pytest.mark.slow
def test_r101_output_shape(r101):
    r101.eval()
    with torch.no_grad():
        aux, main = r101(torch.randn(1, 3, 33, 65))
    r101.train()
    assert aux.shape == main.shape == (1, 19, 5, 9)


def test_output_stride_8_with_dilated_layers():
    model = tiny()
    assert [model.layer3[0].conv2.dilation, model.layer4[0].conv2.dilation] == [(2, 2), (4, 4)]
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer3[0].downsample[0].stride == model.layer4[0].downsample[0].stride == (1, 1)
    assert model.maxpool.ceil_mode


def test_classifier_init_and_summed_branches():
    torch.manual_seed(1)
    model = tiny()
    weights = torch.cat([c.weight.flatten() for c in model.layer6.conv2d_list])
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.01) < 5e-4
    assert [c.dilation[0] for c in model.layer6.conv2d_list] == [6, 12, 18, 24]
    assert [c.padding[0] for c in model.layer5.conv2d_list] == [6, 12, 18, 24]
    x = torch.randn(1, 512, 9, 9)
    expected = sum(conv(x) for conv in model.layer6.conv2d_list)
    torch.testing.assert_close(model.layer6(x), expected)


def test_batch_norm_frozen_but_running_stats_update():
    torch.manual_seed(2)
    model = tiny()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 1 + 4 * 4  # stem + 3 per block + projection, one block per layer
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    affine = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k or "downsample.1" in k}
    conv = model.layer2[0].conv2.weight.clone()
    optimizer = segmenter_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    aux, main = model(torch.randn(1, 3, 32, 64) * 50)
    (aux.square().mean() + main.square().mean()).backward()
    optimizer.step()
    after = model.state_dict()
    for key, before in affine.items():
        if key.endswith(("weight", "bias")):
            assert torch.equal(after[key], before), key
        elif key.endswith("running_mean"):
            assert not torch.equal(after[key], before), key
    assert not torch.equal(model.layer2[0].conv2.weight, conv)  # the convs did train


def test_dilated_resnet_is_a_deeplabv2():
    model = DeepLabV2((1, 2, 1, 1), num_classes=5, multi_level=True, width=8)
    assert model.arch_name == "DeepLabV2(blocks=1-2-1-1, width=8)"
    assert len(model.layer2) == 2 and model.layer2[1].downsample is None
