"""The config module: the published defaults, strict merge, path resolution, derived names, frozen after loading."""
import copy
import pickle

import numpy as np
import pytest

from advent.config import (
    LAMBDA_KEYS, PATH_KEYS, REQUIRED_PATH_KEYS, SCRIPTS_DIR, cfg_from_file, cfg_to_dict, derive_paths,
    flat_items, get_default_cfg, load_config, mutable_copy,
)
from advent.utils.errors import UserError
from advent.utils.serialization import yaml_dump

PUBLISHED_DEFAULTS = {
    "SOURCE": "GTA", "TARGET": "Cityscapes", "NUM_WORKERS": 4, "PSEUDO_LABEL_DIRECTORY_TARGET": "",
    "NUM_CLASSES": 19, "EXP_NAME": "", "GPU_ID": 0,
    "TRAIN.SET_SOURCE": "all", "TRAIN.SET_TARGET": "train", "TRAIN.BATCH_SIZE_SOURCE": 1,
    "TRAIN.BATCH_SIZE_TARGET": 1, "TRAIN.IGNORE_LABEL": 255, "TRAIN.INPUT_SIZE_SOURCE": (1280, 720),
    "TRAIN.INPUT_SIZE_TARGET": (1024, 512), "TRAIN.MODEL": "DeepLabv2", "TRAIN.MULTI_LEVEL": True,
    "TRAIN.RESTORE_FROM": "", "TRAIN.LEARNING_RATE": 2.5e-4, "TRAIN.MOMENTUM": 0.9,
    "TRAIN.WEIGHT_DECAY": 5e-4, "TRAIN.POWER": 0.9, "TRAIN.LAMBDA_SEG_MAIN": 1.0,
    "TRAIN.LAMBDA_SEG_AUX": 0.1, "TRAIN.DA_METHOD": "AdvEnt", "TRAIN.LEARNING_RATE_D": 1e-4,
    "TRAIN.DISCRIMINATOR_WIDTH": 64,
    "TRAIN.LAMBDA_ADV_MAIN": 1e-3, "TRAIN.LAMBDA_ADV_AUX": 2e-4, "TRAIN.LAMBDA_ENT_MAIN": 1e-3,
    "TRAIN.LAMBDA_ENT_AUX": 2e-4, "TRAIN.MAX_ITERS": 250000, "TRAIN.EARLY_STOP": 120000,
    "TRAIN.SAVE_PRED_EVERY": 2000, "TRAIN.SNAPSHOT_DIR": "", "TRAIN.RANDOM_SEED": 1234,
    "TRAIN.TENSORBOARD_LOGDIR": "", "TRAIN.TENSORBOARD_VIZRATE": 100,
    "TEST.MODE": "best", "TEST.MODEL": ("DeepLabv2",), "TEST.MODEL_WEIGHT": (1.0,),
    "TEST.MULTI_LEVEL": (True,), "TEST.RESTORE_FROM": ("",), "TEST.SNAPSHOT_DIR": ("",),
    "TEST.SNAPSHOT_STEP": 2000, "TEST.SNAPSHOT_MAXITER": 120000, "TEST.SET_TARGET": "val",
    "TEST.BATCH_SIZE_TARGET": 1, "TEST.INPUT_SIZE_TARGET": (1024, 512),
    "TEST.OUTPUT_SIZE_TARGET": (2048, 1024), "TEST.WAIT_MODEL": True,
    "ESL.THRESHOLD": 0.1, "ESL.RESTORE_FROM": "", "ESL.MODEL": "DeepLabv2", "ESL.MULTI_LEVEL": True,
    "ESL.SET_TARGET": "train", "ESL.BATCH_SIZE_TARGET": 1, "ESL.INPUT_SIZE_TARGET": (1024, 512),
    "ESL.OUTPUT_SIZE_TARGET": (1024, 512), "ESL.WAIT_MODEL": True, "ESL.MAX_MEDIAN_BATCH": 3000,
    "ESL.THREADS": 4,
}


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def _load(tmp_path, text):
    path = tmp_path / "exp.yml"
    path.write_text(text)
    return cfg_from_file(path, get_default_cfg())


def _error(tmp_path, text):
    with pytest.raises(UserError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_match_spec():
    config = get_default_cfg()
    for key, expected in PUBLISHED_DEFAULTS.items():
        value = _get(config, key)
        if isinstance(expected, tuple):
            assert tuple(value) == expected, key
        else:
            assert value == expected and type(value) is type(expected), key
    for section in ("TRAIN", "TEST", "ESL"):
        np.testing.assert_allclose(config[section].IMG_MEAN, [104.00698793, 116.66876762, 122.67891434])
    assert config.DATA_LIST_SOURCE.endswith("gta5_list/{}.txt")
    assert config.TRAIN.INFO_TARGET.endswith("cityscapes_list/info.json")


def test_default_copies_are_independent():
    first, second = get_default_cfg(), get_default_cfg()
    first.TRAIN.LEARNING_RATE = 1.0
    assert second.TRAIN.LEARNING_RATE == 2.5e-4


def test_unknown_key_names_key_file_and_closest(tmp_path):
    message = _error(tmp_path, "TRAIN:\n  LEARNIN_RATE: 0.1\n")
    assert "TRAIN.LEARNIN_RATE" in message and "exp.yml" in message
    assert "did you mean TRAIN.LEARNING_RATE" in message
    # case aside; a key of its own section before the section itself; a key put in the wrong section
    for text, hint in (("TRAIN:\n  learning_rate: 0.1\n", "TRAIN.LEARNING_RATE"),
                       ("TEST:\n  SNAPSHOT_DIRS: [a]\n", "TEST.SNAPSHOT_DIR"),
                       ("RANDOM_SEED: 3\n", "TRAIN.RANDOM_SEED")):
        assert _error(tmp_path, text).endswith(f"; did you mean {hint}?")
    assert "did you mean" not in _error(tmp_path, "TRAIN:\n  XYZQW: 1\n")  # nothing close: no guess


def test_wrong_type_names_key_expected_and_given(tmp_path):
    message = _error(tmp_path, "TRAIN:\n  MAX_ITERS: 1.5\n")
    assert "TRAIN.MAX_ITERS" in message and "expects int" in message and "float" in message
    assert "expects bool" in _error(tmp_path, "TRAIN:\n  MULTI_LEVEL: 1\n")
    assert "expects mapping" in _error(tmp_path, "TEST: 3\n")
    assert "expects list" in _error(tmp_path, "TRAIN:\n  INPUT_SIZE_SOURCE: 1280\n")
    assert "TEST.MODEL_WEIGHT[0]" in _error(tmp_path, "TEST:\n  MODEL_WEIGHT: [heavy]\n")


def test_lists_accepted_for_tuple_and_array_defaults(tmp_path):
    config = _load(tmp_path, "TRAIN:\n  INPUT_SIZE_SOURCE: [640, 360]\n  IMG_MEAN: [1, 2, 3]\n"
                             "TEST:\n  MODEL_WEIGHT: [1]\n")
    assert tuple(config.TRAIN.INPUT_SIZE_SOURCE) == (640, 360)
    assert isinstance(config.TRAIN.IMG_MEAN, np.ndarray) and config.TRAIN.IMG_MEAN.dtype == np.float32
    np.testing.assert_array_equal(config.TRAIN.IMG_MEAN, [1, 2, 3])
    assert tuple(config.TEST.MODEL_WEIGHT) == (1.0,) and isinstance(config.TEST.MODEL_WEIGHT[0], float)


def test_float_keys_take_yaml_exponent_strings_and_ints(tmp_path):
    config = _load(tmp_path, "TRAIN:\n  LEARNING_RATE: 1e-4\n  LAMBDA_SEG_MAIN: 2\n")
    assert config.TRAIN.LEARNING_RATE == 1e-4 and config.TRAIN.LAMBDA_SEG_MAIN == 2.0
    assert "expects float" in _error(tmp_path, "TRAIN:\n  LEARNING_RATE: fast\n")


@pytest.mark.parametrize("text, key, shown", [
    ("TRAIN:\n  LEARNING_RATE: .nan\n", "TRAIN.LEARNING_RATE", "nan"),  # passes every `< 0` check
    ("TRAIN:\n  LAMBDA_ADV_MAIN: .inf\n", "TRAIN.LAMBDA_ADV_MAIN", "inf"),
    ("TRAIN:\n  IMG_MEAN: [104, .nan, 122]\n", "TRAIN.IMG_MEAN[1]", "nan"),
    ("TEST:\n  MODEL_WEIGHT: [nan]\n", "TEST.MODEL_WEIGHT[0]", "nan"),  # text float() reads
    ("ESL:\n  THRESHOLD: -.inf\n", "ESL.THRESHOLD", "-inf"),
])
def test_nan_and_infinity_are_refused_naming_the_key(tmp_path, text, key, shown):
    assert _error(tmp_path, text).endswith(f"exp.yml: {key} must be a finite number, got {shown}")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    message = _error(tmp_path, "TRAIN:\n  MAX_ITERS: 10\n  INPUT_SIZE_SOURCE: [1, 2\n")
    assert "exp.yml:4" in message and "YAML syntax error" in message


def test_paths_are_normalised_and_run_names_stay_inside_exp_root(tmp_path):
    config = derive_paths(_load(tmp_path, f"EXP_ROOT: {tmp_path}/new/../exp\nEXP_NAME: gta/advent\n"))
    assert config.EXP_ROOT == str(tmp_path / "exp")  # 'new' need not exist: '..' undoes it
    assert config.TRAIN.SNAPSHOT_DIR == str(tmp_path / "exp" / "snapshots" / "gta" / "advent")
    for name, suffix in (("../../elsewhere", ""), ("/abs", ""), ("run", "x/../../../y")):
        with pytest.raises(UserError, match="not lead out of EXP_ROOT"):
            derive_paths(_load(tmp_path, f"EXP_NAME: {name}\n"), exp_suffix=suffix)


def test_a_key_given_twice_names_both_lines(tmp_path):
    # PyYAML keeps the last silently: the first TRAIN section's keys would fall back to defaults
    message = _error(tmp_path, "TRAIN:\n  MODEL: DeepLabv2-Tiny\nGPU_ID: -1\nTRAIN:\n  MAX_ITERS: 4\n")
    assert message.endswith("exp.yml:4: YAML syntax error: key TRAIN given twice (first at line 1)")
    message = _error(tmp_path, "TRAIN:\n  MAX_ITERS: 4\n  MAX_ITERS: 5\n")
    assert message.endswith("exp.yml:3: YAML syntax error: key MAX_ITERS given twice (first at line 2)")


def test_safe_load_rejects_python_tags(tmp_path):
    message = _error(tmp_path, "EXP_NAME: !!python/object/apply:os.system ['true']\n")
    assert "exp.yml:1" in message


def test_invalid_choices_and_sizes(tmp_path):
    message = _error(tmp_path, "TRAIN:\n  DA_METHOD: Advent\n")
    assert "TRAIN.DA_METHOD" in message and "AdvEnt" in message
    assert "TEST.MODEL[0]" in _error(tmp_path, "TEST:\n  MODEL: [ResNet]\n")
    assert "[width, height]" in _error(tmp_path, "TEST:\n  OUTPUT_SIZE_TARGET: [2048]\n")
    assert "one entry per model" in _error(tmp_path, "TEST:\n  RESTORE_FROM: [a.pth, b.pth]\n")
    assert "TRAIN.DISCRIMINATOR_WIDTH" in _error(tmp_path, "TRAIN:\n  DISCRIMINATOR_WIDTH: 0\n")
    assert "ESL.THREADS must be 0 or more, got -1" in _error(tmp_path, "ESL:\n  THREADS: -1\n")
    assert "NUM_WORKERS must be 0 or more, got -2" in _error(tmp_path, "NUM_WORKERS: -2\n")
    assert _load(tmp_path, "NUM_WORKERS: 0\nESL:\n  THREADS: 0\n").ESL.THREADS == 0
    assert "TRAIN.TENSORBOARD_VIZRATE must be positive, got 0" in _error(tmp_path, "TRAIN:\n  TENSORBOARD_VIZRATE: 0\n")
    assert "TRAIN.LEARNING_RATE must be 0 or more" in _error(tmp_path, "TRAIN:\n  LEARNING_RATE: -0.1\n")
    assert "TRAIN.WEIGHT_DECAY must be 0 or more" in _error(tmp_path, "TRAIN:\n  WEIGHT_DECAY: -1\n")
    assert "TEST.SNAPSHOT_MAXITER must be positive, got 0" in _error(tmp_path, "TEST:\n  SNAPSHOT_MAXITER: 0\n")
    assert "ESL.WAIT_TIMEOUT must be 0 or more, got -1" in _error(tmp_path, "ESL:\n  WAIT_TIMEOUT: -1\n")
    for seed in (-1, 2 ** 32):  # numpy's seeding takes [0, 2**32 - 1]
        assert f"TRAIN.RANDOM_SEED must be in [0, 2**32 - 1], got {seed}" in _error(
            tmp_path, f"TRAIN:\n  RANDOM_SEED: {seed}\n")
    assert _load(tmp_path, f"TRAIN:\n  RANDOM_SEED: {2 ** 32 - 1}\n").TRAIN.RANDOM_SEED == 2 ** 32 - 1
    assert "ESL.THRESHOLD must be in [0, 1], got 1.5" in _error(tmp_path, "ESL:\n  THRESHOLD: 1.5\n")
    assert "ESL.MAXPROB_THRESHOLD must be in [0, 1], got -0.1" in _error(tmp_path, "ESL:\n  MAXPROB_THRESHOLD: -0.1\n")
    assert "TRAIN.MOMENTUM must be in [0, 1), got 1.5" in _error(tmp_path, "TRAIN:\n  MOMENTUM: 1.5\n")
    assert "TRAIN.IGNORE_LABEL must be 255" in _error(tmp_path, "TRAIN:\n  IGNORE_LABEL: 300\n")
    for weights in ("[0.0, 0.0]", "[1.0, -1.0]"):
        text = f"TEST:\n  MODEL_WEIGHT: {weights}\n  MODEL: [DeepLabv2, DeepLabv2]\n  MULTI_LEVEL: [true, true]\n" \
               f"  RESTORE_FROM: [a.pth, b.pth]\n"
        assert "TEST.MODEL_WEIGHT must be 0 or more with a positive sum" in _error(tmp_path, text)
    for key in ("SNAPSHOT_DIR", "MODEL"):
        assert f"TEST.{key} must have at least one entry" in _error(tmp_path, f"TEST:\n  {key}: []\n")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        cfg_from_file(tmp_path / "nope.yml", get_default_cfg())
    with pytest.raises(UserError, match="cannot read config file .*: Is a directory"):
        cfg_from_file(tmp_path, get_default_cfg())
    (tmp_path / "model.pth").write_bytes(b"\x80\x02PK\xff\xfe")  # a checkpoint given as the config
    with pytest.raises(UserError, match="model.pth is not a text"):
        cfg_from_file(tmp_path / "model.pth", get_default_cfg())
    assert "top level must be a mapping" in _error(tmp_path, "- a\n- b\n")


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "null\n", "~\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    # accepted as all defaults, it would start a 120000-iteration ResNet-101 run
    assert _error(tmp_path, text).startswith(f"config file {tmp_path / 'exp.yml'} is empty: ")


def _yaml_key(key, value):
    """YAML text setting the dotted `key` (at most one section deep) to `value`."""
    section, _, name = key.rpartition(".")
    return f"{section}:\n  {name}: {value}\n" if section else f"{key}: {value}\n"


@pytest.mark.parametrize("key", REQUIRED_PATH_KEYS)
def test_an_empty_path_that_would_be_the_current_folder_is_refused(tmp_path, key):
    assert _error(tmp_path, _yaml_key(key, "''")).endswith(
        f"exp.yml: {key} is empty; set it to a path ('' would be the current folder)")


def test_optional_path_keys_may_stay_empty(tmp_path):
    # '' means not set (no checkpoint, no pseudo-labels) or derived from the others (derive_paths)
    optional = sorted(PATH_KEYS - set(REQUIRED_PATH_KEYS))
    assert optional == ["ESL.RESTORE_FROM", "EXP_ROOT_LOGS", "EXP_ROOT_SNAPSHOT", "PSEUDO_LABEL_DIRECTORY_TARGET",
                        "TEST.RESTORE_FROM", "TEST.SNAPSHOT_DIR", "TRAIN.INFO_SOURCE", "TRAIN.RESTORE_FROM",
                        "TRAIN.SNAPSHOT_DIR", "TRAIN.TENSORBOARD_LOGDIR"]
    text = ("EXP_ROOT_LOGS: ''\nEXP_ROOT_SNAPSHOT: ''\nPSEUDO_LABEL_DIRECTORY_TARGET: ''\n"
            "TRAIN:\n  INFO_SOURCE: ''\n  RESTORE_FROM: ''\n  SNAPSHOT_DIR: ''\n  TENSORBOARD_LOGDIR: ''\n"
            "TEST:\n  RESTORE_FROM: ['']\n  SNAPSHOT_DIR: ['']\nESL:\n  RESTORE_FROM: ''\n")
    config = derive_paths(_load(tmp_path, text))
    assert config.TRAIN.SNAPSHOT_DIR == config.TEST.SNAPSHOT_DIR[0] != ""
    assert (config.PSEUDO_LABEL_DIRECTORY_TARGET, config.TRAIN.RESTORE_FROM, config.ESL.RESTORE_FROM) == ("", "", "")


def test_every_loss_weight_and_the_lr_power_must_not_be_negative(tmp_path):
    defaults = [key for key, _ in flat_items(get_default_cfg()) if key.rpartition(".")[2].startswith("LAMBDA_")]
    assert sorted(LAMBDA_KEYS) == sorted(defaults)
    for key in (*LAMBDA_KEYS, "TRAIN.POWER", "TRAIN.LEARNING_RATE_D"):
        assert _error(tmp_path, _yaml_key(key, -1)).endswith(f"exp.yml: {key} must be 0 or more, got -1.0")
    zero = _load(tmp_path, "TRAIN:\n" + "".join(f"  {key[6:]}: 0\n" for key in (*LAMBDA_KEYS, "TRAIN.POWER")))
    assert zero.TRAIN.LAMBDA_SEG_AUX == 0 and zero.TRAIN.POWER == 0  # 0: a term off, a constant rate
    assert "TRAIN.MOMENTUM must be in [0, 1), got -0.5" in _error(tmp_path, "TRAIN:\n  MOMENTUM: -0.5\n")


def test_best_mode_needs_a_snapshot_range_holding_a_snapshot(tmp_path):
    message = _error(tmp_path, "TEST:\n  MODE: best\n  SNAPSHOT_STEP: 2\n  SNAPSHOT_MAXITER: 1\n")
    assert message.endswith("exp.yml: TEST.SNAPSHOT_MAXITER (1) is smaller than TEST.SNAPSHOT_STEP (2): "
                            "'best' mode would evaluate no snapshot")
    assert _load(tmp_path, "TEST:\n  SNAPSHOT_STEP: 2\n  SNAPSHOT_MAXITER: 2\n").TEST.SNAPSHOT_MAXITER == 2
    single = "TEST:\n  MODE: single\n  SNAPSHOT_STEP: 2\n  SNAPSHOT_MAXITER: 1\n  RESTORE_FROM: [a.pth]\n"
    assert _load(tmp_path, single).TEST.MODE == "single"  # 'single' mode reads neither key


@pytest.mark.parametrize("script", ["train", "test", "esl"])
@pytest.mark.parametrize("text, line", [
    ("# nothing set\n", "error: config file config.yml is empty: "),
    ("EXP_ROOT: ''\n", "error: config.yml: EXP_ROOT is empty; "),
    ("TEST:\n  SNAPSHOT_STEP: 2\n  SNAPSHOT_MAXITER: 1\n", "error: config.yml: TEST.SNAPSHOT_MAXITER (1) is smaller "),
])
def test_a_script_stops_on_these_configs_with_one_line_before_making_a_folder(tmp_path, monkeypatch, capsys,
                                                                             script, text, line):
    import importlib

    from advent.utils.runtime import run_main
    (tmp_path / "config.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"advent.scripts.{script}").main
    with pytest.raises(SystemExit) as info:
        run_main(main, ["--cfg", "config.yml"])
    lines = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith(line)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yml"]


def test_relative_paths_are_relative_to_scripts_dir(tmp_path):
    config = _load(tmp_path, "TRAIN:\n  RESTORE_FROM: ../../pretrained_models/init.pth\n"
                             "TEST:\n  RESTORE_FROM: [/abs/a.pth]\nPSEUDO_LABEL_DIRECTORY_TARGET: ''\n")
    assert config.TRAIN.RESTORE_FROM == str(SCRIPTS_DIR.parent.parent / "pretrained_models" / "init.pth")
    assert config.TEST.RESTORE_FROM == ("/abs/a.pth",)
    assert config.PSEUDO_LABEL_DIRECTORY_TARGET == ""


def test_derived_names_and_dirs():
    config = get_default_cfg()
    config.EXP_ROOT = "/runs"
    config.TRAIN.DA_METHOD = "MinEnt"
    derive_paths(config, exp_suffix="seed2")
    assert config.EXP_NAME == "GTA2Cityscapes_DeepLabv2_MinEnt_seed2"
    assert config.TRAIN.SNAPSHOT_DIR == "/runs/snapshots/GTA2Cityscapes_DeepLabv2_MinEnt_seed2"
    assert config.TRAIN.TENSORBOARD_LOGDIR == "/runs/logs/tensorboard/GTA2Cityscapes_DeepLabv2_MinEnt_seed2"
    assert config.TEST.SNAPSHOT_DIR[0] == config.TRAIN.SNAPSHOT_DIR


def test_saved_resolved_config_loads_back_equal(tmp_path):
    config = derive_paths(_load(tmp_path, "TRAIN:\n  INPUT_SIZE_SOURCE: [640, 360]\n"))
    saved = tmp_path / "resolved.yml"
    yaml_dump(cfg_to_dict(config), saved)
    reloaded = cfg_from_file(saved, get_default_cfg())
    assert cfg_to_dict(reloaded) == cfg_to_dict(config)


def test_throughput_switches_are_off_by_default_and_checked(tmp_path):
    config = get_default_cfg()
    assert config.CHANNELS_LAST is False
    assert (config.TRAIN.AMP, config.TEST.AMP, config.ESL.AMP) == ("none", "none", "none")
    assert _load(tmp_path, "CHANNELS_LAST: true\nESL:\n  AMP: bf16\n").CHANNELS_LAST is True
    assert "CHANNELS_LAST expects bool" in _error(tmp_path, "CHANNELS_LAST: 1\n")
    assert "TEST.AMP" in _error(tmp_path, "TEST:\n  AMP: fp8\n")


def test_loaded_config_is_frozen_and_copies_say_so(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text("TRAIN:\n  MAX_ITERS: 10\n")
    config = load_config(path, "seed1", {"TRAIN.TENSORBOARD_VIZRATE": 2})
    assert config.TRAIN.TENSORBOARD_VIZRATE == 2 and config.EXP_NAME.endswith("_seed1")
    for change in (lambda c: setattr(c.TRAIN, "MAX_ITERS", 5), lambda c: c.TRAIN.__setitem__("MAX_ITERS", 5),
                   lambda c: c.TRAIN.update(MAX_ITERS=5)):
        with pytest.raises(AttributeError, match="TRAIN.MAX_ITERS"):
            change(config)
    with pytest.raises(AttributeError, match="cannot set EXP_NAME"):
        config.EXP_NAME = "other"
    for copied in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert cfg_to_dict(copied) == cfg_to_dict(config)
        with pytest.raises(AttributeError, match="TEST.MODE"):
            copied.TEST.MODE = "single"
    variant = mutable_copy(config)
    variant.TRAIN.MAX_ITERS = 5
    assert (variant.TRAIN.MAX_ITERS, config.TRAIN.MAX_ITERS) == (5, 10)
