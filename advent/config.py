"""Configuration: every default in one place, a strict merge of a YAML file over them, then frozen.

`load_config(path)` is how a script gets its configuration: a fresh copy of the defaults, the
YAML file merged over them (an unknown key, a value of the wrong type or an invalid choice stops
with one line naming the key and the file), the derived names and folders, then frozen: setting
a key afterwards raises an AttributeError naming the key. Relative paths in a YAML file are taken
as relative to advent/scripts/ (the original README runs the scripts from there), so a shipped
config works from any working directory. A config built by hand (tests, benchmarks) starts from
`get_default_cfg()`, or from `mutable_copy(cfg)` of a loaded one.
"""
import copy
import difflib
import math
import os.path as osp

import numpy as np
import yaml

from advent import PROJECT_ROOT
from advent.utils.errors import UserError
from advent.utils.serialization import yaml_parse

SCRIPTS_DIR = PROJECT_ROOT / "advent" / "scripts"
DATASET_DIR = PROJECT_ROOT / "advent" / "dataset"
IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)


class Config(dict):
    """Nested settings, read as attributes (cfg.TRAIN.MAX_ITERS) or items; read-only once frozen."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setitem__(self, key, value):
        prefix = self.__dict__.get("_frozen")
        if prefix is not None:
            raise AttributeError(f"the config is frozen after loading: cannot set {prefix}{key} "
                                 "(pass it to load_config, or change a mutable_copy)")
        super().__setitem__(key, value)

    __setattr__ = __setitem__

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __reduce__(self):  # copies and pickles keep the frozen state
        return Config, (dict(self),), self.__dict__


def _mark(config, frozen, prefix=""):
    object.__setattr__(config, "_frozen", prefix if frozen else None)
    for key, value in config.items():
        if isinstance(value, Config):
            _mark(value, frozen, f"{prefix}{key}.")
    return config


def freeze(config):
    """Make `config` and its sections read-only; returns it."""
    return _mark(config, True)


def mutable_copy(config):
    """A deep copy of `config` that may be changed (building a variant of a loaded config)."""
    return _mark(copy.deepcopy(config), False)


_C = Config()
_C.SOURCE = "GTA"
_C.TARGET = "Cityscapes"
_C.NUM_WORKERS = 4
_C.DATA_LIST_SOURCE = str(DATASET_DIR / "gta5_list" / "{}.txt")
_C.DATA_LIST_TARGET = str(DATASET_DIR / "cityscapes_list" / "{}.txt")
_C.DATA_DIRECTORY_SOURCE = str(PROJECT_ROOT / "data" / "GTA5")
_C.DATA_DIRECTORY_TARGET = str(PROJECT_ROOT / "data" / "Cityscapes")
_C.PSEUDO_LABEL_DIRECTORY_TARGET = ""  # non-empty: train with these target pseudo-labels (ESL)
_C.NUM_CLASSES = 19
_C.EXP_NAME = ""  # '' -> {SOURCE}2{TARGET}_{TRAIN.MODEL}_{TRAIN.DA_METHOD}
_C.EXP_ROOT = str(PROJECT_ROOT / "experiments")
_C.EXP_ROOT_SNAPSHOT = ""  # '' -> EXP_ROOT/snapshots
_C.EXP_ROOT_LOGS = ""  # '' -> EXP_ROOT/logs
# The GPU of a single-process run (under torchrun each process takes cuda:LOCAL_RANK); -1: the CPU
# (also under torchrun), e.g. to compare with a CPU run exactly. Without CUDA every run uses the CPU.
_C.GPU_ID = 0
# CUDA float32 numerics: convolutions (and matrix products) in TF32 on Ampere and newer GPUs, as
# PyTorch does by default for convolutions, so as the published code ran there; False: IEEE
# float32 (slower). No effect on the CPU or on older GPUs (docs/speed.md).
_C.TF32 = True
# The cuDNN autotuner (cudnn.benchmark): off, because while it tries algorithms it briefly took
# about 130 GB of workspace on an H200 (peak 137,549 MiB against 7,360 MiB without it) for the same
# speed (18.35 against 18.44 R101 forward+backward passes/s at 1280x720): runs sharing a GPU
# would fight over that peak (docs/speed.md).
_C.CUDNN_BENCHMARK = False
# Throughput: the segmenter's weights and inputs in the NHWC (channels-last) memory format in
# train, esl and test. Same computation, other kernels (last-bit differences); pays off with
# TRAIN/TEST/ESL.AMP on tensor-core GPUs (docs/speed.md). Off: the faithful default.
_C.CHANNELS_LAST = False

_C.TRAIN = Config()
_C.TRAIN.SET_SOURCE = "all"
_C.TRAIN.SET_TARGET = "train"
_C.TRAIN.BATCH_SIZE_SOURCE = 1
_C.TRAIN.BATCH_SIZE_TARGET = 1
_C.TRAIN.IGNORE_LABEL = 255
_C.TRAIN.INPUT_SIZE_SOURCE = (1280, 720)  # (width, height)
_C.TRAIN.INPUT_SIZE_TARGET = (1024, 512)
_C.TRAIN.INFO_SOURCE = ""  # '' -> TRAIN.INFO_TARGET (source and target share the class list)
_C.TRAIN.INFO_TARGET = str(DATASET_DIR / "cityscapes_list" / "info.json")
_C.TRAIN.MODEL = "DeepLabv2"
_C.TRAIN.MULTI_LEVEL = True
_C.TRAIN.RESTORE_FROM = ""
_C.TRAIN.IMG_MEAN = IMG_MEAN.copy()
_C.TRAIN.LEARNING_RATE = 2.5e-4
_C.TRAIN.MOMENTUM = 0.9
_C.TRAIN.WEIGHT_DECAY = 0.0005
_C.TRAIN.POWER = 0.9
_C.TRAIN.LAMBDA_SEG_MAIN = 1.0
_C.TRAIN.LAMBDA_SEG_AUX = 0.1
# Faithful to the original optimiser, which updated most backbone parameters 3x per step
# (docs/training.md, "Optimiser fidelity").
_C.TRAIN.REPEAT_BACKBONE_UPDATES = True
_C.TRAIN.DA_METHOD = "AdvEnt"  # 'SourceOnly', 'MinEnt' or 'AdvEnt'
_C.TRAIN.LEARNING_RATE_D = 1e-4
_C.TRAIN.DISCRIMINATOR_WIDTH = 64  # channels of the first conv, doubled per layer (AdvEnt: 64)
_C.TRAIN.LAMBDA_ADV_MAIN = 0.001
_C.TRAIN.LAMBDA_ADV_AUX = 0.0002
_C.TRAIN.LAMBDA_ENT_MAIN = 0.001
_C.TRAIN.LAMBDA_ENT_AUX = 0.0002
_C.TRAIN.MAX_ITERS = 250000
_C.TRAIN.EARLY_STOP = 120000
_C.TRAIN.SAVE_PRED_EVERY = 2000
_C.TRAIN.SNAPSHOT_DIR = ""  # '' -> EXP_ROOT_SNAPSHOT/EXP_NAME
_C.TRAIN.RANDOM_SEED = 1234
_C.TRAIN.TENSORBOARD_LOGDIR = ""  # '' -> EXP_ROOT_LOGS/tensorboard/EXP_NAME
_C.TRAIN.TENSORBOARD_VIZRATE = 100
_C.TRAIN.AMP = "none"  # 'none', 'bf16' or 'fp16'
# Throughput on a GPU: steps (1)-(3) of every iteration after the first replayed from a CUDA graph
# captured once (the same kernels, without the host launching each: about 2x on an H200 with
# bf16 + CHANNELS_LAST). One process on CUDA, TRAIN.AMP 'none' or 'bf16' (docs/speed.md).
_C.TRAIN.CUDA_GRAPH = False

_C.TEST = Config()
_C.TEST.MODE = "best"  # 'best' or 'single'
_C.TEST.MODEL = ("DeepLabv2",)
_C.TEST.MODEL_WEIGHT = (1.0,)
_C.TEST.MULTI_LEVEL = (True,)
_C.TEST.IMG_MEAN = IMG_MEAN.copy()
_C.TEST.RESTORE_FROM = ("",)
_C.TEST.SNAPSHOT_DIR = ("",)  # '' -> EXP_ROOT_SNAPSHOT/EXP_NAME
_C.TEST.SNAPSHOT_STEP = 2000
_C.TEST.SNAPSHOT_MAXITER = 120000
_C.TEST.SET_TARGET = "val"
_C.TEST.BATCH_SIZE_TARGET = 1
_C.TEST.INPUT_SIZE_TARGET = (1024, 512)
_C.TEST.OUTPUT_SIZE_TARGET = (2048, 1024)
_C.TEST.INFO_TARGET = str(DATASET_DIR / "cityscapes_list" / "info.json")
_C.TEST.WAIT_MODEL = True
_C.TEST.WAIT_TIMEOUT = 86400  # seconds 'best' mode waits for a snapshot (or its folder) still being trained
_C.TEST.SAVE_PREDICTIONS = False
_C.TEST.AMP = "none"

_C.ESL = Config()
_C.ESL.METHOD = "entropy"  # 'entropy' (ESL) or 'maxprob' (the MPSL baseline)
_C.ESL.THRESHOLD = 0.1  # entropy thresholds are raised to at least this
_C.ESL.MAXPROB_THRESHOLD = 0.9  # max-probability thresholds are lowered to at most this
_C.ESL.RESTORE_FROM = ""
_C.ESL.MODEL = "DeepLabv2"
_C.ESL.MULTI_LEVEL = True
_C.ESL.IMG_MEAN = IMG_MEAN.copy()
_C.ESL.SET_TARGET = "train"
_C.ESL.BATCH_SIZE_TARGET = 1
_C.ESL.INPUT_SIZE_TARGET = (1024, 512)
_C.ESL.OUTPUT_SIZE_TARGET = (1024, 512)
_C.ESL.INFO_TARGET = str(DATASET_DIR / "cityscapes_list" / "info.json")
_C.ESL.WAIT_MODEL = True  # wait for ESL.RESTORE_FROM to appear (it may still be training)
_C.ESL.WAIT_TIMEOUT = 86400  # seconds
_C.ESL.MAX_MEDIAN_BATCH = 3000
_C.ESL.AMP = "none"
# Threads for the per-image host work (counting, spilling, thresholding, writing the PNGs), which
# limits esl.py on a GPU; 0: all in the main thread. The labels do not depend on it.
_C.ESL.THREADS = 4
freeze(_C)

PATH_KEYS = {
    "DATA_LIST_SOURCE", "DATA_LIST_TARGET", "DATA_DIRECTORY_SOURCE", "DATA_DIRECTORY_TARGET",
    "PSEUDO_LABEL_DIRECTORY_TARGET", "EXP_ROOT", "EXP_ROOT_SNAPSHOT", "EXP_ROOT_LOGS",
    "TRAIN.INFO_SOURCE", "TRAIN.INFO_TARGET", "TRAIN.RESTORE_FROM", "TRAIN.SNAPSHOT_DIR",
    "TRAIN.TENSORBOARD_LOGDIR", "TEST.RESTORE_FROM", "TEST.SNAPSHOT_DIR", "TEST.INFO_TARGET",
    "ESL.RESTORE_FROM", "ESL.INFO_TARGET",
}
# The path keys that must name a path: '' would be resolved against the current folder (EXP_ROOT
# '' would write ./snapshots). Every other path key may be '': not set (no checkpoint to start
# from, no pseudo-labels) or derived (derive_paths, TRAIN.INFO_SOURCE -> TRAIN.INFO_TARGET).
REQUIRED_PATH_KEYS = ("DATA_LIST_SOURCE", "DATA_LIST_TARGET", "DATA_DIRECTORY_SOURCE", "DATA_DIRECTORY_TARGET",
                      "EXP_ROOT", "TRAIN.INFO_TARGET", "TEST.INFO_TARGET", "ESL.INFO_TARGET")
CHOICES = {
    "SOURCE": ("GTA", "SYNTHIA"),
    "TARGET": ("Cityscapes", "Mapillary"),
    "TRAIN.DA_METHOD": ("SourceOnly", "MinEnt", "AdvEnt"),
    "TEST.MODE": ("best", "single"),
    "ESL.METHOD": ("entropy", "maxprob"),
    **{f"{section}.AMP": ("none", "bf16", "fp16") for section in ("TRAIN", "TEST", "ESL")},
}
MODELS = ("DeepLabv2", "DeepLabv2-R50", "DeepLabv2-Tiny")
SIZE_KEYS = ("TRAIN.INPUT_SIZE_SOURCE", "TRAIN.INPUT_SIZE_TARGET", "TEST.INPUT_SIZE_TARGET",
             "TEST.OUTPUT_SIZE_TARGET", "ESL.INPUT_SIZE_TARGET", "ESL.OUTPUT_SIZE_TARGET")
PER_MODEL_TEST_KEYS = ("TEST.MODEL", "TEST.MODEL_WEIGHT", "TEST.MULTI_LEVEL", "TEST.RESTORE_FROM")
POSITIVE_KEYS = ("TRAIN.SAVE_PRED_EVERY", "TRAIN.MAX_ITERS", "TRAIN.EARLY_STOP", "TEST.SNAPSHOT_STEP",
                 "TEST.SNAPSHOT_MAXITER", "ESL.MAX_MEDIAN_BATCH", "TRAIN.BATCH_SIZE_SOURCE", "TRAIN.BATCH_SIZE_TARGET",
                 "TEST.BATCH_SIZE_TARGET", "ESL.BATCH_SIZE_TARGET", "TRAIN.DISCRIMINATOR_WIDTH",
                 "TRAIN.TENSORBOARD_VIZRATE")
# The loss weights: 0 switches a term off; a negative one would climb its loss.
LAMBDA_KEYS = ("TRAIN.LAMBDA_SEG_MAIN", "TRAIN.LAMBDA_SEG_AUX", "TRAIN.LAMBDA_ADV_MAIN", "TRAIN.LAMBDA_ADV_AUX",
               "TRAIN.LAMBDA_ENT_MAIN", "TRAIN.LAMBDA_ENT_AUX")
# TRAIN.POWER: the poly schedule's exponent (0: a constant rate; negative: a growing one).
NON_NEGATIVE_KEYS = ("NUM_WORKERS", "ESL.THREADS", "TRAIN.LEARNING_RATE", "TRAIN.LEARNING_RATE_D",
                     "TRAIN.WEIGHT_DECAY", "TRAIN.POWER", "TEST.WAIT_TIMEOUT", "ESL.WAIT_TIMEOUT", *LAMBDA_KEYS)


def get_default_cfg():
    """A fresh copy of the defaults that may be changed (to build a config by hand)."""
    return mutable_copy(_C)


def load_config(path, exp_suffix="", overrides=None):
    """The config of a run, frozen: defaults, then the YAML file (strict), then `overrides`
    ({dotted key: value} a script has checked itself), then the derived names and folders."""
    config = cfg_from_file(path)
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        get_key(config, ".".join(sections))[name] = value
    return freeze(derive_paths(config, exp_suffix))


def cfg_from_file(filename, config=None):
    """Merge the YAML file `filename` into `config` (fresh defaults by default) and return it."""
    config = get_default_cfg() if config is None else config
    try:
        with open(filename) as f:
            data = yaml_parse(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {filename}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {filename} is not a text (YAML) file") from None
    except OSError as error:
        raise UserError(f"cannot read config file {filename}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark is not None else str(filename)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:  # an empty file, only comments, `null`: every default, a 120000-iteration R101 run
        raise UserError(f"config file {filename} is empty: it sets no key (write the keys that differ "
                        f"from the defaults)")
    if not isinstance(data, dict):
        raise UserError(f"{filename}: the top level must be a mapping of keys, got {type_name(data)}")
    _merge(data, config, filename, prefix="")
    check_cfg(config, filename)
    return config


def type_name(value):
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__


def closest_key(full_key):
    """The valid key whose last part is most like `full_key`'s, case aside: in its own section if
    one is close enough, else in any (a key put in the wrong section); None when none is. The
    sections' names take no part in the likeness, which they would dominate."""
    keys = [key for key, _ in flat_items(_C, sections=True)]
    section, _, name = full_key.rpartition(".")
    for pool in ([key for key in keys if key.rpartition(".")[0] == section], keys):
        by_name = {}
        for key in pool:
            by_name.setdefault(key.rpartition(".")[2].upper(), key)
        close = difflib.get_close_matches(name.upper(), by_name, n=1, cutoff=0.6)
        if close:
            return by_name[close[0]]
    return None


def _merge(data, config, filename, prefix):
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if key not in config:
            close = closest_key(full_key)
            hint = f"; did you mean {close}?" if close else ""
            raise UserError(f"{filename}: unknown config key {full_key}{hint}")
        default = config[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise _type_error(filename, full_key, "mapping", value)
            _merge(value, default, filename, full_key + ".")
            continue
        value = _coerce(value, default, full_key, filename)
        if full_key in PATH_KEYS:
            value = _resolve_path(value)
        config[key] = value


def _type_error(filename, key, expected, value):
    return UserError(f"{filename}: {key} expects {expected}, got {type_name(value)} ({value!r})")


def _coerce(value, default, key, filename):
    """Return `value` converted to the type of `default`, or raise a UserError naming `key`."""
    if isinstance(default, (tuple, list, np.ndarray)):
        if not isinstance(value, (list, tuple)):
            raise _type_error(filename, key, "list", value)
        if isinstance(default, np.ndarray):
            if len(value) != len(default):
                raise UserError(f"{filename}: {key} expects a list of {len(default)} numbers, "
                                f"got {len(value)}")
            items = [_coerce(v, float(default[0]), f"{key}[{i}]", filename) for i, v in enumerate(value)]
            return np.array(items, dtype=default.dtype)
        return tuple(_coerce(v, default[0], f"{key}[{i}]", filename) for i, v in enumerate(value))
    expected = type(default)  # bool, int, float or str; a bool is no number here
    accepted = {bool: bool, int: int, float: (int, float), str: str}[expected]
    if isinstance(value, accepted) and (expected is bool or not isinstance(value, bool)):
        return _finite(float(value), key, filename) if expected is float else value
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads '1e-4' (no dot) as a string: accept any text float() accepts.
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            return _finite(number, key, filename)
    raise _type_error(filename, key, expected.__name__, value)


def _finite(number, key, filename):
    """`number`, refused when NaN or infinite (YAML's .nan / .inf): no check below would catch
    a NaN (every comparison with it is False), and a run would train or score nonsense."""
    if not math.isfinite(number):
        raise UserError(f"{filename}: {key} must be a finite number, got {number}")
    return number


def _resolve_path(value):
    """Make a relative path from a YAML file absolute, relative to advent/scripts/; '..' applied
    ('runs/new/../x' is 'runs/x', whether or not 'new' exists)."""
    if isinstance(value, tuple):
        return tuple(_resolve_path(v) for v in value)
    value = osp.expanduser(value)
    return value if value == "" else osp.normpath(osp.join(SCRIPTS_DIR, value))


def get_key(config, full_key):
    """The value at a dotted key ('TRAIN.MAX_ITERS') of a config or a plain nested dict
    ('' is the whole config)."""
    for part in filter(None, full_key.split(".")):
        config = config[part]
    return config


def flat_items(tree, prefix="", sections=False):
    """(dotted key, value) of every leaf of a nested dict (and of every section, with `sections`)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            if sections:
                yield f"{prefix}{key}", value
            yield from flat_items(value, f"{prefix}{key}.", sections)
        else:
            yield f"{prefix}{key}", value


def check_cfg(config, filename="config"):
    """Reject values of the right type that no run can use (bad choices, sizes, lengths, signs,
    empty paths, a 'best' snapshot range without a snapshot)."""
    for key, allowed in CHOICES.items():
        value = get_key(config, key)
        if value not in allowed:
            raise UserError(f"{filename}: {key} is {value!r}; expected one of {', '.join(allowed)}")
    models = [("TRAIN.MODEL", config.TRAIN.MODEL), ("ESL.MODEL", config.ESL.MODEL)]
    for key, name in models + [(f"TEST.MODEL[{i}]", m) for i, m in enumerate(config.TEST.MODEL)]:
        if name not in MODELS:
            raise UserError(f"{filename}: {key} is {name!r}; expected one of {', '.join(MODELS)}")
    for key in SIZE_KEYS:
        size = get_key(config, key)
        if len(size) != 2 or min(size) <= 0:
            raise UserError(f"{filename}: {key} must be [width, height] with positive values, got {list(size)}")
    for key in (*PER_MODEL_TEST_KEYS, "TEST.SNAPSHOT_DIR"):
        if len(get_key(config, key)) == 0:
            raise UserError(f"{filename}: {key} must have at least one entry, got []")
    lengths = {key: len(get_key(config, key)) for key in PER_MODEL_TEST_KEYS}
    if len(set(lengths.values())) != 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise UserError(f"{filename}: the per-model TEST lists must have one entry per model ({listed})")
    if config.GPU_ID < -1:
        raise UserError(f"{filename}: GPU_ID must be a GPU index (0, 1, ...) or -1 (the CPU), got {config.GPU_ID}")
    for key in ("ESL.THRESHOLD", "ESL.MAXPROB_THRESHOLD"):  # a normalised entropy, a probability
        if not 0 <= get_key(config, key) <= 1:
            raise UserError(f"{filename}: {key} must be in [0, 1], got {get_key(config, key)}")
    if not 0 <= config.TRAIN.MOMENTUM < 1:
        raise UserError(f"{filename}: TRAIN.MOMENTUM must be in [0, 1), got {config.TRAIN.MOMENTUM}")
    if config.TRAIN.IGNORE_LABEL != _C.TRAIN.IGNORE_LABEL:  # kept as a key for the published configs
        raise UserError(f"{filename}: TRAIN.IGNORE_LABEL must be {_C.TRAIN.IGNORE_LABEL}, the ignored value of "
                        f"every label file and loader, got {config.TRAIN.IGNORE_LABEL}")
    weights = config.TEST.MODEL_WEIGHT
    if min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"{filename}: TEST.MODEL_WEIGHT must be 0 or more with a positive sum, got {list(weights)}")
    if not 0 <= config.TRAIN.RANDOM_SEED < 2 ** 32:
        raise UserError(f"{filename}: TRAIN.RANDOM_SEED must be in [0, 2**32 - 1], got {config.TRAIN.RANDOM_SEED}")
    if config.NUM_CLASSES < 2:
        raise UserError(f"{filename}: NUM_CLASSES must be at least 2, got {config.NUM_CLASSES}")
    for key in POSITIVE_KEYS:
        if get_key(config, key) <= 0:
            raise UserError(f"{filename}: {key} must be positive, got {get_key(config, key)}")
    for key in NON_NEGATIVE_KEYS:
        if get_key(config, key) < 0:
            raise UserError(f"{filename}: {key} must be 0 or more, got {get_key(config, key)}")
    for key in REQUIRED_PATH_KEYS:
        if get_key(config, key) == "":
            raise UserError(f"{filename}: {key} is empty; set it to a path ('' would be the current folder)")
    check_snapshot_range(config.TEST, filename)


def check_snapshot_range(test, filename):
    """'best' mode evaluates model_<k>.pth for k = SNAPSHOT_STEP, 2 x STEP, ... SNAPSHOT_MAXITER: none
    when MAXITER < STEP, which would only show at run time as a missing snapshot. 'single' mode
    reads neither key."""
    if test.MODE == "best" and test.SNAPSHOT_MAXITER < test.SNAPSHOT_STEP:
        raise UserError(f"{filename}: TEST.SNAPSHOT_MAXITER ({test.SNAPSHOT_MAXITER}) is smaller than "
                        f"TEST.SNAPSHOT_STEP ({test.SNAPSHOT_STEP}): 'best' mode would evaluate no snapshot")


def derive_paths(config, exp_suffix=""):
    """Fill EXP_NAME and the snapshot / log folders left empty, as the original scripts did."""
    if config.EXP_NAME == "":
        config.EXP_NAME = f"{config.SOURCE}2{config.TARGET}_{config.TRAIN.MODEL}_{config.TRAIN.DA_METHOD}"
    if exp_suffix:
        config.EXP_NAME += f"_{exp_suffix}"
    if osp.isabs(config.EXP_NAME) or ".." in config.EXP_NAME.split("/"):
        raise UserError(f"EXP_NAME (with --exp-suffix) is {config.EXP_NAME!r}: a run's name, which may hold "
                        f"subfolders but not lead out of EXP_ROOT; set TRAIN.SNAPSHOT_DIR for a folder elsewhere")
    if config.EXP_ROOT_SNAPSHOT == "":
        config.EXP_ROOT_SNAPSHOT = osp.normpath(osp.join(config.EXP_ROOT, "snapshots"))
    if config.EXP_ROOT_LOGS == "":
        config.EXP_ROOT_LOGS = osp.normpath(osp.join(config.EXP_ROOT, "logs"))
    if config.TRAIN.SNAPSHOT_DIR == "":
        config.TRAIN.SNAPSHOT_DIR = osp.normpath(osp.join(config.EXP_ROOT_SNAPSHOT, config.EXP_NAME))
    if config.TRAIN.TENSORBOARD_LOGDIR == "":
        config.TRAIN.TENSORBOARD_LOGDIR = osp.normpath(osp.join(config.EXP_ROOT_LOGS, "tensorboard",
                                                                config.EXP_NAME))
    if config.TEST.SNAPSHOT_DIR[0] == "":
        config.TEST.SNAPSHOT_DIR = (osp.normpath(osp.join(config.EXP_ROOT_SNAPSHOT, config.EXP_NAME)),) + tuple(
            config.TEST.SNAPSHOT_DIR[1:])
    return config


def cfg_to_dict(config):
    """Plain dicts, lists and scalars (for saving the resolved config as YAML or JSON)."""
    if isinstance(config, dict):
        return {key: cfg_to_dict(value) for key, value in config.items()}
    if isinstance(config, (tuple, list)):
        return [cfg_to_dict(value) for value in config]
    if isinstance(config, np.ndarray):
        return [float(v) for v in config]
    if isinstance(config, np.generic):
        return config.item()
    return config
