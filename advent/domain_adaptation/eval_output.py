"""Test stage, the files it writes (the evaluation itself is in eval_UDA.py): saved predictions,
the snapshot cache of 'best' mode, the results JSON and the run record.

A file-system fault (a full disk) after the model work stops no evaluation: the results are shown
first, then the failed write is reported in one line; the cache keeps every snapshot evaluated so far.
"""
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from advent.config import cfg_to_dict
from advent.dataset import check_png_names, png_name
from advent.utils.distributed import get_world_size, is_main_process
from advent.utils.errors import UserError, file_system_fault
from advent.utils.output_dir import FolderReplacement
from advent.utils.run_record import build_run_record, write_run_record
from advent.utils.serialization import json_dump, json_load
from advent.utils.viz_segmask import colorize_mask, save_png

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
PREDICTIONS_KEY = "TEST.SAVE_PREDICTIONS folder"
WRITER = "test.py"


# --- saved predictions ---

def predictions_folder(final):
    """The predictions folder `final` as the FolderReplacement test.py replaces it with."""
    return FolderReplacement(final, WRITER, PREDICTIONS_KEY,
                             advice="move it away (an earlier version's predictions/ has no manifest)")


def check_predictions_folder(final, names):
    """Before any model work, creating nothing: the predictions of the list entries `names` can be
    written to `final` (no two share a file name; the folder may be replaced: FolderReplacement)."""
    check_png_names(names, PREDICTIONS_KEY)
    predictions_folder(final).check()


class PredictionWriter:
    """Writes each prediction (TEST.SAVE_PREDICTIONS) as a colour PNG in color/ and an id PNG:
    Cityscapes label ids in labelIds/ (via the class info's train2label; the names cityscapesscripts'
    evaluation looks for), or train ids in trainIds/ when the classes have no one-to-one label id
    (the 7-class setting); 'best' mode puts both under a subfolder named after the snapshot.

    Built before any model work, on every process: the folder `final` is held (a
    FolderReplacement: refused when it holds files the project did not write or another script's
    output, locked until `stack` closes, leftovers of killed runs removed). `share` (once the
    process group exists) opens its staging folder, which every process writes its own images
    into; `finish` swaps it in, all or nothing: a crash or a kill before leaves the complete
    earlier predictions.

    Check it first with check_predictions_folder. A file-system fault while writing an image stops
    the writing, not the evaluation: `finish` reports it."""

    def __init__(self, final, info, stack):
        self.subfolder, self.fault, self.staging = "", None, None
        self.palette = info.palette
        if info.train2label is not None:
            self.ids_name, self.lut = "labelIds", info.train2label.astype(np.uint8)
        else:
            self.ids_name, self.lut = "trainIds", np.arange(info.num_classes, dtype=np.uint8)
        self.output = predictions_folder(final)
        self.final = self.output.final
        stack.enter_context(self.output.held())
        stack.callback(lambda: self.staging and self.output.discard(self.staging))  # after a failure (else gone)

    def share(self):
        """Open the staging folder; every process learns its path (after the setup)."""
        self.staging = self.output.open()

    def __call__(self, preds, names):
        if self.fault is not None:
            return
        folder = self.staging / self.subfolder
        try:
            for pred, name in zip(preds, names):
                save_png(Image.fromarray(self.lut[pred]), folder / self.ids_name / png_name(name))
                save_png(colorize_mask(pred, self.palette), folder / "color" / png_name(name))
        except OSError as error:
            fault = file_system_fault(error)
            if fault is None:
                raise
            self.fault = UserError(f"cannot write the predictions: {fault}")
            log.warning("%s; the evaluation goes on without them", self.fault)

    def finish(self):
        """After the evaluation: this process's write fault, if any, ends it (and torchrun the
        others, so that no partial folder is put in place); else, once every process has written
        its images, the main process puts the new folder in place. Returns where they are."""
        if self.fault is not None:
            raise self.fault
        self.output.publish(self.staging)
        log.info("predictions written to %s", self.final / self.subfolder)
        return self.final / self.subfolder


# --- the snapshot cache of 'best' mode ---

def eval_setting(cfg, dataset, info):
    """Everything besides the snapshot file that decides its confusion matrix (the cache key)."""
    setting = {
        "target": cfg.TARGET,
        "data_directory": str(Path(cfg.DATA_DIRECTORY_TARGET).resolve()),
        "set": cfg.TEST.SET_TARGET,
        "images": len(dataset),
        "image_list_sha256": hashlib.sha256("\n".join(dataset.img_ids).encode()).hexdigest(),
        "input_size": list(cfg.TEST.INPUT_SIZE_TARGET),
        "output_size": list(cfg.TEST.OUTPUT_SIZE_TARGET),
        # Mapillary: each label at its native size, padded (not OUTPUT_SIZE)
        "native_labels": bool(getattr(dataset, "native_labels", False)),
        "img_mean": [float(v) for v in cfg.TEST.IMG_MEAN],
        "num_classes": cfg.NUM_CLASSES,
        "class_names": list(info.names),
        "label_lookup_sha256": hashlib.sha256(
            np.ascontiguousarray(dataset.label_lookup, dtype=np.int64).tobytes()).hexdigest(),
        "model": cfg.TEST.MODEL[0],
        "multi_level": bool(cfg.TEST.MULTI_LEVEL[0]),
        "amp": cfg.TEST.AMP,
        "channels_last": bool(cfg.CHANNELS_LAST),
    }
    if setting["native_labels"]:  # Mapillary entries of before the published float fit are stale
        setting["image_fit"] = "floor(side * float scale), as published"
    return json.loads(json.dumps(setting))  # the form it has after a round trip through the file


def valid_counts(entry, num_classes):
    """A cache entry's confusion matrix is num_classes x num_classes counts (integers, 0 or more)
    and its count of unexpected label pixels one too: as written, not edited into nonsense."""
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    matrix = entry.get("confusion_matrix")
    return (count(entry.get("unexpected_label_pixels")) and isinstance(matrix, list) and len(matrix) == num_classes
            and all(isinstance(row, list) and len(row) == num_classes and all(map(count, row)) for row in matrix))


class EvalCache:
    """Confusion matrices of evaluated snapshots in a JSON file, found by (file name, SHA-256 of
    the file, evaluation setting): a changed file or setting is never served a stale entry.

    The file is saved after each snapshot. When that fails for a file-system fault (a full
    disk), the evaluation goes on and `fault` says why, until a later save succeeds."""

    def __init__(self, path, setting):
        self.path = Path(path)
        self.setting = setting
        self.entries = self._read()
        self.fault = None

    def _read(self):
        if not self.path.exists():
            return []
        try:
            data = json_load(self.path)
        except (OSError, ValueError) as error:
            log.warning("ignoring the unreadable test cache %s (%s)", self.path, error)
            return []
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
                not isinstance(data.get("entries"), list):
            log.warning("ignoring the test cache %s: not in format %d", self.path, CACHE_FORMAT)
            return []
        return [e for e in data["entries"] if isinstance(e, dict)]

    def lookup(self, snapshot, sha256):
        """The entry of that file under this setting, or None (also when its counts are damaged:
        the snapshot is evaluated again and the entry replaced)."""
        for entry in self.entries:
            if (entry.get("snapshot"), entry.get("sha256"), entry.get("setting")) == \
                    (snapshot, sha256, self.setting):
                if valid_counts(entry, self.setting["num_classes"]):
                    return entry
                log.warning("ignoring the damaged entry of %s in the test cache %s (its counts are not a %d x %d "
                            "matrix of counts); evaluating it again", snapshot, self.path,
                            self.setting["num_classes"], self.setting["num_classes"])
        return None

    def store(self, snapshot, info, hist, unexpected):
        """Record a result (replacing the entry of this file under this setting) and save the file."""
        entry = {"snapshot": snapshot, "sha256": info.sha256, "layout": info.layout, "setting": self.setting,
                 "confusion_matrix": np.asarray(hist).tolist(), "unexpected_label_pixels": int(unexpected)}
        self.entries = [e for e in self.entries
                        if (e.get("snapshot"), e.get("setting")) != (snapshot, self.setting)] + [entry]
        try:
            json_dump({"format": CACHE_FORMAT, "entries": self.entries}, self.path, WRITER)
            self.fault = None
        except OSError as error:
            fault = file_system_fault(error)
            if fault is None:
                raise
            self.fault = UserError(f"cannot save the test cache: {fault}")
            log.warning("%s; the evaluation goes on, the results are shown at the end", self.fault)
        return entry


# --- results and run record (the main process's) ---

def run_header(cfg, cfg_path, dataset, mode):
    """What every results file starts with: the mode, the config and the evaluation setting."""
    return {
        "mode": mode,
        "config": str(Path(cfg_path).resolve()) if cfg_path else None,
        "target": cfg.TARGET,
        "set": cfg.TEST.SET_TARGET,
        "images": len(dataset),
        "num_classes": cfg.NUM_CLASSES,
        "input_size": list(cfg.TEST.INPUT_SIZE_TARGET),
        "output_size": list(cfg.TEST.OUTPUT_SIZE_TARGET),
        "amp": cfg.TEST.AMP,
        "channels_last": cfg.CHANNELS_LAST,
        "processes": get_world_size(),
        "iou_unit": "percent",
    }


def write_outputs(folder, file_name, results, cfg, device, weights, argv):
    """The results JSON and the run record of a test run in `folder` (both atomic; by the main
    process). `weights`: the CheckpointInfo of each evaluated model file."""
    if not is_main_process():
        return
    path = Path(folder) / file_name
    json_dump(results, path, WRITER)
    record = build_run_record("test", cfg_to_dict(cfg), device, weights, argv)
    record.update(processes=get_world_size(), results_file=str(path))
    write_run_record(folder, record, WRITER)
    log.info("results written to %s", path)
