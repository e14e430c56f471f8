"""The one weight loader: every init format on tiny files, and one-line errors for every mismatch."""
import argparse
import hashlib
import logging
import re
from collections import OrderedDict

import pytest
import torch
import torchvision

from advent.model.deeplabv2 import DeepLabV2, build_segmenter, get_deeplab_v2
from advent.model.discriminator import get_fc_discriminator
from advent.model.inference import load_segmenter
from advent.model.weights import file_sha256, load_checkpoint
from advent.utils.errors import UserError


def tiny(seed, num_classes=19, multi_level=True):
    torch.manual_seed(seed)
    model = build_segmenter("DeepLabv2-Tiny", num_classes, multi_level)
    with torch.no_grad():  # make batch-norm tensors differ between seeds too
        for name, tensor in model.state_dict().items():
            if "bn" in name or "downsample.1" in name:
                tensor.copy_(torch.rand_like(tensor.float()).to(tensor.dtype) * 3 + 1)
    return model


def is_classifier(key):
    return key.startswith(("layer5.", "layer6."))


def backbone(model):
    return OrderedDict((k, v.clone()) for k, v in model.state_dict().items() if not is_classifier(k))


def assert_loaded(model, expected):
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def save(tmp_path, obj, name="ckpt.pth", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


@pytest.fixture
def source():
    return tiny(seed=1)


@pytest.fixture
def target():
    return tiny(seed=2)


def check_loads_fully(target, source, path, layout):
    info = load_checkpoint(target, path)
    assert info.layout == layout
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_loaded(target, source.state_dict())


def test_plain_state_dict(tmp_path, source, target):
    check_loads_fully(target, source, save(tmp_path, source.state_dict()), "state_dict")


def test_legacy_serialisation_of_old_releases(tmp_path, source, target):
    path = save(tmp_path, source.state_dict(), _use_new_zipfile_serialization=False)
    check_loads_fully(target, source, path, "state_dict")


def test_data_parallel_prefix(tmp_path, source, target):
    state = OrderedDict(("module." + k, v) for k, v in source.state_dict().items())
    check_loads_fully(target, source, save(tmp_path, state), "state_dict")


def test_training_state(tmp_path, source, target):
    state = {"model": source.state_dict(), "optimizer": {"state": {}, "param_groups": []},
             "iteration": 2000, "d_main": get_fc_discriminator(19, ndf=4).state_dict()}
    check_loads_fully(target, source, save(tmp_path, state), "training_state")
    disc = get_fc_discriminator(19, ndf=4)
    assert load_checkpoint(disc, tmp_path / "ckpt.pth", state_key="d_main").layout == "training_state"
    assert_loaded(disc, state["d_main"])


def test_old_files_without_num_batches_tracked(tmp_path, source, target):
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_checkpoint(target, save(tmp_path, state))
    assert_loaded(target, state)


def check_backbone_init(target, source, path, layout):
    classifiers = {k: v.clone() for k, v in target.state_dict().items() if is_classifier(k)}
    assert load_checkpoint(target, path).layout == layout
    assert_loaded(target, backbone(source))
    assert_loaded(target, classifiers)


def imagenet_layout(source):
    """The Caffe-converted ImageNet init: 'Scale.' prefix, no num_batches_tracked, its own layer5."""
    state = OrderedDict(("Scale." + k, v) for k, v in backbone(source).items()
                        if not k.endswith("num_batches_tracked"))
    for i in range(4):
        state[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(21, 512, 3, 3)
        state[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(21)
    return state


def test_imagenet_init(tmp_path, source, target):
    check_backbone_init(target, source, save(tmp_path, imagenet_layout(source)), "imagenet")


def test_torchvision_resnet(tmp_path, source, target):
    state = backbone(source)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    check_backbone_init(target, source, save(tmp_path, state), "torchvision")


def test_inference_refuses_an_initialisation_whose_classifier_is_random(tmp_path, source):
    # esl.py, test.py and viz.py load through load_segmenter: a backbone init gives labels of noise
    torchvision_state = backbone(source)
    torchvision_state["fc.weight"], torchvision_state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    for name, state, kind in (("init.pth", imagenet_layout(source), "ImageNet init"),
                              ("tv.pth", torchvision_state, "torchvision ResNet")):
        path = save(tmp_path, state, name)
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: {kind} file, a backbone without "
                                            rf"a trained classifier.*model_N.pth\)$"):
            load_segmenter("DeepLabv2-Tiny", 19, True, str(path), torch.device("cpu"))
    model, info = load_segmenter("DeepLabv2-Tiny", 19, True, str(save(tmp_path, source.state_dict())),
                                 torch.device("cpu"))
    assert info.layout == "state_dict" and not model.training


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_names_match_the_backbone(depth):
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
        ours = get_deeplab_v2(depth=depth)
    tv_layout = [(k, v.shape) for k, v in tv.state_dict().items() if not k.startswith("fc.")]
    assert tv_layout == [(k, v.shape) for k, v in ours.state_dict().items() if not is_classifier(k)]


@pytest.mark.slow
def test_released_r101_layout_loads(tmp_path):
    """A file with the released names and shapes loads strictly into the paper's model."""
    torch.manual_seed(3)
    model = get_deeplab_v2(19, multi_level=True)
    state = OrderedDict((k, torch.rand_like(v.float()).to(v.dtype)) for k, v in model.state_dict().items())
    path = save(tmp_path, state)
    info = load_checkpoint(model, path)
    assert info.layout == "state_dict"
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert torch.equal(model.layer5.conv2d_list[3].bias, state["layer5.conv2d_list.3.bias"])


def test_logs_one_line_with_the_hash(tmp_path, source, target, caplog):
    path = save(tmp_path, imagenet_layout(source))
    with caplog.at_level(logging.INFO, logger="advent.model.weights"):
        load_checkpoint(target, path)
    assert caplog.messages == [f"loaded {path} (ImageNet init, sha256 {file_sha256(path)})"]


def test_sha256_in_chunks(tmp_path):
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def load_error(model, path):
    with pytest.raises(UserError) as error:
        load_checkpoint(model, path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_wrong_class_count(tmp_path, target):
    path = save(tmp_path, tiny(1, num_classes=16).state_dict())
    assert load_error(target, path) == f"{path}: classifier has 16 classes, config NUM_CLASSES is 19"


def test_aux_classifier_mismatch(tmp_path, target):
    path = save(tmp_path, tiny(1, multi_level=False).state_dict())
    assert load_error(target, path) == f"{path} has no aux classifier (layer5) but MULTI_LEVEL is True"
    path = save(tmp_path, tiny(1).state_dict(), name="multi.pth")
    assert load_error(tiny(2, multi_level=False), path) == \
        f"{path} has an aux classifier (layer5) but MULTI_LEVEL is False"


def test_missing_backbone_keys(tmp_path, source, target):
    state = imagenet_layout(source)
    for key in ("Scale.layer4.0.conv3.weight", "Scale.layer4.0.bn3.running_var"):
        del state[key]
    before = {k: v.clone() for k, v in target.state_dict().items()}
    message = load_error(target, save(tmp_path, state))
    assert message.endswith("missing 2 backbone keys (layer4.0.conv3.weight, layer4.0.bn3.running_var)")
    assert_loaded(target, before)  # nothing was half-loaded


def test_missing_keys_of_a_full_state_dict(tmp_path, source, target):
    state = source.state_dict()
    del state["layer6.conv2d_list.2.bias"]
    assert load_error(target, save(tmp_path, state)).endswith("missing 1 keys (layer6.conv2d_list.2.bias)")


def test_other_architecture(tmp_path, target):
    path = save(tmp_path, DeepLabV2((1, 2, 1, 1), 19, width=16).state_dict())
    assert load_error(target, path) == \
        f"{path}: backbone has blocks 1-2-1-1, model DeepLabv2-Tiny has 1-1-1-1 (check MODEL)"
    path = save(tmp_path, DeepLabV2((1, 1, 1, 1), 19, width=8).state_dict(), name="narrow.pth")
    assert "tensors differ in shape (conv1.weight [8, 3, 7, 7] vs model [16, 3, 7, 7]" in \
        load_error(target, path)


def test_unexpected_keys(tmp_path, source, target):
    state = source.state_dict()
    state["layer6.extra.weight"] = torch.zeros(1)
    assert load_error(target, save(tmp_path, state)).endswith("1 unexpected keys (layer6.extra.weight)")


def test_unrecognised_layouts(tmp_path, target):
    path = save(tmp_path, {"encoder.weight": torch.zeros(1), "decoder.weight": torch.zeros(1)})
    assert load_error(target, path) == \
        f"{path}: unrecognised checkpoint layout (first keys: encoder.weight, decoder.weight)"
    path = save(tmp_path, [torch.zeros(1)], name="list.pth")
    assert "unrecognised checkpoint layout (a list" in load_error(target, path)
    path = save(tmp_path, {"net": {"a": torch.zeros(1)}, "epoch": 3}, name="other.pth")
    assert "first keys: net, epoch; no state dict under 'model'" in load_error(target, path)


def test_unreadable_files(tmp_path, source, target):
    missing = tmp_path / "absent.pth"
    assert load_error(target, missing) == f"checkpoint not found: {missing}"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(bytes(range(200)) * 5)
    assert load_error(target, corrupt).startswith(f"cannot read {corrupt}: not a torch checkpoint")
    truncated = tmp_path / "truncated.pth"
    data = save(tmp_path, source.state_dict()).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert load_error(target, truncated).startswith(f"cannot read {truncated}: ")
    unsafe = save(tmp_path, {"model": source.state_dict(), "args": argparse.Namespace(lr=1)},
                  name="unsafe.pth")
    assert load_error(target, unsafe) == (f"cannot read {unsafe}: not loadable with weights_only=True "
                                          "(it stores a Python object, argparse.Namespace, besides tensors)")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert load_error(target, tmp_path / "empty.pth").endswith("the file is empty")
