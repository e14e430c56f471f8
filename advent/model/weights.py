"""Weight loading: the one loader every script uses for RESTORE_FROM files and snapshots.

`load_checkpoint(model, path)` recognises a file by its content, never by its name:

- "state dict": a plain state dict of this model (the released gta2cityscapes_advent.pth,
  this project's model_{i}.pth snapshots); a 'module.' prefix (DataParallel / DDP) is stripped.
  Loaded strictly.
- "training state": a dict holding the model's state dict under the key 'model' (beside
  optimiser state, iteration, ...; `state_key` picks another entry, e.g. 'd_main').
  Loaded strictly.
- "ImageNet init": DeepLab_resnet_pretrained_imagenet.pth, keys prefixed 'Scale.'; its 'layer5'
  belongs to another task and is skipped. Backbone only.
- "torchvision ResNet": torchvision's resnet50/101 state dict; 'fc.*' skipped. Backbone only.

Backbone-only inits must hold every backbone tensor and leave the classifiers at their
initialisation. `num_batches_tracked` entries are optional everywhere (old files lack them and
batch norm does not use them here). Every mismatch raises a one-line UserError naming the file.
"""
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from advent.utils.errors import UserError
from advent.utils.func import file_sha256

logger = logging.getLogger(__name__)

TRAINING_STATE_KEY = "model"
CLASSIFIER_PREFIXES = ("layer5.", "layer6.")
BACKBONE_ONLY_LAYOUTS = ("imagenet", "torchvision")  # initialisations: their classifiers are not loaded
LAYOUT_NAMES = {
    "state_dict": "state dict",
    "training_state": "training state",
    "imagenet": "ImageNet init",
    "torchvision": "torchvision ResNet",
}


@dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded: the file, its SHA-256 (hex) and the layout recognised (a LAYOUT_NAMES key)."""
    path: str
    sha256: str
    layout: str


def read_checkpoint(path):
    """torch.load(path) on the CPU with weights_only=True; any failure is a one-line UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"cannot read {path}: it is a directory") from None
    except Exception as error:  # arbitrary bytes can make the unpickler raise almost anything
        raise UserError(f"cannot read {path}: {_read_failure(path, error)}") from None


def _read_failure(path, error):
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"not loadable with weights_only=True (it stores a Python object, "
                f"{unsafe.group(1)}, besides tensors)")
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if isinstance(error, RuntimeError) and text.strip():
        return text.strip().splitlines()[0].split(". ")[0]  # e.g. a truncated zip archive
    detail = text.split("WeightsUnpickler error:", 1)[-1]  # torch's long advice around the cause
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"not a torch checkpoint or corrupt ({reason})"


def load_checkpoint(model, path, state_key=TRAINING_STATE_KEY):
    """Load the weights in `path` into `model`; return a CheckpointInfo and log one line."""
    path = str(path)
    obj = read_checkpoint(path)
    sha256 = file_sha256(path)
    layout, state = _recognise(obj, path, state_key, model)
    _load(model, state, path, backbone_only=layout in BACKBONE_ONLY_LAYOUTS)
    logger.info("loaded %s (%s, sha256 %s)", path, LAYOUT_NAMES[layout], sha256)
    return CheckpointInfo(path, sha256, layout)


def _is_state_dict(obj):
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip_prefix(state, prefix):
    if all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def _recognise(obj, path, state_key, model):
    """Return (layout, state dict in this model's naming) for a loaded object."""
    if isinstance(obj, Mapping) and _is_state_dict(obj.get(state_key)):
        return "training_state", _strip_prefix(obj[state_key], "module.")
    if not _is_state_dict(obj):
        raise UserError(f"{path}: unrecognised checkpoint layout ({_describe(obj, state_key)})")
    state = _strip_prefix(obj, "module.")
    if all(key.startswith("Scale.") for key in state):
        state = _strip_prefix(state, "Scale.")
        return "imagenet", {k: v for k, v in state.items() if not k.startswith("layer5.")}
    if "fc.weight" in state and not any(k.startswith(CLASSIFIER_PREFIXES) for k in state):
        return "torchvision", {k: v for k, v in state.items() if not k.startswith("fc.")}
    if set(model.state_dict()) & set(state):
        return "state_dict", state
    raise UserError(f"{path}: unrecognised checkpoint layout (first keys: {_first_keys(state)})")


def _describe(obj, state_key):
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        return f"first keys: {_first_keys(obj)}; no state dict under '{state_key}'"
    return f"a {type(obj).__name__}, not a dict of tensors"


def _first_keys(keys, count=5):
    keys = [str(k) for k in keys]
    more = ", ..." if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


def _load(model, state, path, backbone_only):
    """Check `state` against the model (all of it, or the backbone only), then load it strictly."""
    _check_architecture(model, state, path)
    current = model.state_dict()
    expected = {k: v for k, v in current.items() if not (backbone_only and k.startswith(CLASSIFIER_PREFIXES))}
    _check_keys(expected, state, path, "backbone " if backbone_only else "")
    current.update(state)  # what the file lacks (classifiers, num_batches_tracked) stays as it is
    model.load_state_dict(current)


def _check_architecture(model, state, path):
    """DeepLab-specific one-line messages: block counts, class count, aux classifier."""
    if not hasattr(model, "blocks"):
        return
    blocks = _blocks_in(state)
    if any(blocks) and blocks != model.blocks:
        raise UserError(f"{path}: backbone has blocks {'-'.join(map(str, blocks))}, model "
                        f"{model.arch_name} has {'-'.join(map(str, model.blocks))} (check MODEL)")
    main = state.get("layer6.conv2d_list.0.weight")
    if main is not None and main.ndim == 4 and main.shape[0] != model.num_classes:
        raise UserError(f"{path}: classifier has {main.shape[0]} classes, "
                        f"config NUM_CLASSES is {model.num_classes}")
    if not any(k.startswith("layer6.") for k in state):
        return
    has_aux = any(k.startswith("layer5.") for k in state)
    if has_aux != model.multi_level:
        if model.multi_level:
            raise UserError(f"{path} has no aux classifier (layer5) but MULTI_LEVEL is True")
        raise UserError(f"{path} has an aux classifier (layer5) but MULTI_LEVEL is False")


def _blocks_in(state):
    """Blocks per backbone layer in a state dict's names, e.g. (3, 4, 23, 3)."""
    counts = []
    for layer in range(1, 5):
        prefix = f"layer{layer}."
        indices = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
        counts.append(len({i for i in indices if i.isdigit()}))
    return tuple(counts)


def _check_keys(expected, state, path, what):
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(f"{path}: missing {len(missing)} {what}keys ({_first_keys(missing, 3)})")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UserError(f"{path}: {len(unexpected)} unexpected keys ({_first_keys(unexpected, 3)})")
    wrong = [f"{k} {list(state[k].shape)} vs model {list(expected[k].shape)}"
             for k in state if state[k].shape != expected[k].shape]
    if wrong:
        raise UserError(f"{path}: {len(wrong)} tensors differ in shape ({_first_keys(wrong, 2)})")
