"""The shipped configs: each loads strictly from any directory with its paths where the README
puts the data and weights, and each training config trains for real on fake data."""
from pathlib import Path

import pytest
import torch

from advent import PROJECT_ROOT
from advent.config import SCRIPTS_DIR, load_config
from advent.dataset import factory
from advent.model import build_segmenter
from advent.scripts import train as train_script
from advent.utils.runtime import run_main
from advent.utils.serialization import yaml_dump, yaml_load
from fake_data import make_fake_cfg, write_pseudo_labels

CONFIGS = SCRIPTS_DIR / "configs"
PRETRAINED = PROJECT_ROOT / "pretrained_models"
IMAGENET = PRETRAINED / "DeepLab_resnet_pretrained_imagenet.pth"
# name -> (source, method, pseudo-label folder or None, released model(s) the file evaluates or uses)
TRAINING = {
    "advent.yml": ("GTA", "AdvEnt", None, ()),
    "minent.yml": ("GTA", "MinEnt", None, ()),
    "esl.yml": ("GTA", "AdvEnt", "labels", ("gta2cityscapes_advent.pth",)),
    "synthia_advent.yml": ("SYNTHIA", "AdvEnt", None, ()),
    "synthia_minent.yml": ("SYNTHIA", "MinEnt", None, ()),
    "synthia_esl.yml": ("SYNTHIA", "AdvEnt", "labels_synthia", ("synthia2cityscapes_advent.pth",)),
}
PRETRAINED_TESTS = {
    "advent_pretrained.yml": ("GTA", ("gta2cityscapes_advent.pth",)),
    "minent_pretrained.yml": ("GTA", ("gta2cityscapes_minent_ER.pth",)),
    "advent+minent_pretrained.yml": ("GTA", ("gta2cityscapes_advent.pth", "gta2cityscapes_minent_ER.pth")),
    "synthia_advent_pretrained.yml": ("SYNTHIA", ("synthia2cityscapes_advent.pth",)),
    "synthia_minent_pretrained.yml": ("SYNTHIA", ("synthia2cityscapes_minent_ER.pth",)),
}


def test_the_shipped_configs_are_these():
    assert sorted(p.name for p in CONFIGS.glob("*.yml")) == sorted({**TRAINING, **PRETRAINED_TESTS})


def check_data_paths(cfg, source):
    """Where the README puts the data, with the shipped lists and class files."""
    num_classes = {"GTA": 19, "SYNTHIA": 16}[source]
    assert (cfg.SOURCE, cfg.TARGET, cfg.NUM_CLASSES) == (source, "Cityscapes", num_classes)
    folder = {"GTA": "GTA5", "SYNTHIA": "SYNTHIA"}[source]
    assert Path(cfg.DATA_DIRECTORY_SOURCE) == PROJECT_ROOT / "data" / folder
    assert Path(cfg.DATA_DIRECTORY_TARGET) == PROJECT_ROOT / "data" / "Cityscapes"
    source_list = Path(factory.source_list_template(cfg).format(cfg.TRAIN.SET_SOURCE))
    assert source_list.is_file()
    assert source_list.parent.name == {"GTA": "gta5_list", "SYNTHIA": "synthia_list"}[source]
    for section in (cfg.TRAIN, cfg.TEST, cfg.ESL):
        assert Path(factory.target_list_template(cfg).format(section.SET_TARGET)).is_file()
    for stage in ("source", "train", "test", "esl"):
        assert factory.get_class_info(cfg, stage).num_classes == num_classes


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_configs_load_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source, method, labels, released = TRAINING[name]
    cfg = load_config(CONFIGS / name)
    check_data_paths(cfg, source)
    assert (cfg.TRAIN.DA_METHOD, cfg.TRAIN.MODEL, cfg.TRAIN.MULTI_LEVEL) == (method, "DeepLabv2", True)
    assert Path(cfg.TRAIN.RESTORE_FROM) == IMAGENET
    assert cfg.TEST.MODE == "best"
    assert Path(cfg.TRAIN.SNAPSHOT_DIR) == PROJECT_ROOT / "experiments" / "snapshots" / cfg.EXP_NAME
    assert cfg.PSEUDO_LABEL_DIRECTORY_TARGET == (str(PROJECT_ROOT / labels) if labels else "")
    assert cfg.ESL.RESTORE_FROM == (str(PRETRAINED / released[0]) if released else "")


def test_every_training_config_has_its_own_run_folder():
    folders = [load_config(CONFIGS / name).TRAIN.SNAPSHOT_DIR for name in TRAINING]
    assert len(set(folders)) == len(folders)
    assert load_config(CONFIGS / "esl.yml").EXP_NAME == "GTA2Cityscapes_DeepLabv2_ESL"


@pytest.mark.parametrize("name", sorted(PRETRAINED_TESTS))
def test_pretrained_configs_load(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source, released = PRETRAINED_TESTS[name]
    cfg = load_config(CONFIGS / name)
    check_data_paths(cfg, source)
    assert cfg.TEST.MODE == "single"
    assert [Path(p) for p in cfg.TEST.RESTORE_FROM] == [PRETRAINED / r for r in released]
    assert len(cfg.TEST.MODEL) == len(cfg.TEST.MODEL_WEIGHT) == len(released)
    if len(released) == 2:
        assert cfg.TEST.MODEL_WEIGHT == (0.5, 0.5)


def fake_imagenet_init(path, model_name):
    """An ImageNet init in the released layout: 'Scale.' keys, a foreign 'layer5' classifier."""
    torch.manual_seed(0)
    model = build_segmenter(model_name, 19, True)
    state = {f"Scale.{k}": v for k, v in model.state_dict().items()
             if not k.startswith(("layer5.", "layer6."))}
    state["Scale.layer5.conv2d_list.0.weight"] = torch.zeros(21, 3, 3, 3)  # another task's classifier
    torch.save(state, path)
    return path


def redirected(name, tmp_path, model="DeepLabv2-Tiny"):
    """The shipped YAML with its data / weights / output paths pointed at fake data (and `model`)."""
    source, _, labels, _ = TRAINING[name]
    data = yaml_load(CONFIGS / name)
    fake, written = make_fake_cfg(tmp_path, source=source, num_classes=16 if source == "SYNTHIA" else 19)
    for key in ("DATA_DIRECTORY_SOURCE", "DATA_LIST_SOURCE", "DATA_DIRECTORY_TARGET", "DATA_LIST_TARGET",
                "EXP_ROOT"):
        data[key] = fake[key]
    data["NUM_WORKERS"] = 0
    if labels:
        write_pseudo_labels(tmp_path / labels, written["train"].names, (64, 32), fake.NUM_CLASSES)
        data["PSEUDO_LABEL_DIRECTORY_TARGET"] = str(tmp_path / labels)
    data["TRAIN"].update(MODEL=model, RESTORE_FROM=str(fake_imagenet_init(tmp_path / "init.pth", model)),
                         INPUT_SIZE_SOURCE=[64, 32], INPUT_SIZE_TARGET=[64, 32], EARLY_STOP=2,
                         SAVE_PRED_EVERY=2)
    yaml_dump(data, tmp_path / name)
    return tmp_path / name, load_config(tmp_path / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_configs_train_on_fake_data(name, tmp_path):
    path, cfg = redirected(name, tmp_path)
    assert run_main(train_script.main, ["--cfg", str(path)]) == 0
    names = {p.name for p in Path(cfg.TRAIN.SNAPSHOT_DIR).glob("*.pth")}
    expected = {"model_2.pth", "train_state_2.pth"}
    if cfg.TRAIN.DA_METHOD == "AdvEnt":
        expected |= {"model_2_D_aux.pth", "model_2_D_main.pth"}
    assert names == expected


@pytest.mark.slow
def test_advent_config_trains_resnet101_from_an_imagenet_init(tmp_path):
    path, cfg = redirected("advent.yml", tmp_path, model="DeepLabv2")
    assert run_main(train_script.main, ["--cfg", str(path)]) == 0
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    state = torch.load(folder / "model_2.pth", weights_only=True)
    init = torch.load(tmp_path / "init.pth", weights_only=True)
    assert len(state) == len(build_segmenter("DeepLabv2", 19, True).state_dict())
    assert torch.equal(state["layer4.2.bn3.weight"], init["Scale.layer4.2.bn3.weight"])  # frozen
    assert not torch.equal(state["layer4.2.conv3.weight"], init["Scale.layer4.2.conv3.weight"])  # trained
    record = yaml_load(next(folder.glob("run_train_*.json")))  # JSON is YAML
    assert [w["layout"] for w in record["weights"]] == ["imagenet"]
