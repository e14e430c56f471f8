"""Demo: the whole ESL pipeline on a synthetic GTA5 -> Cityscapes shift, on a laptop CPU.

    python advent/scripts/demo.py [--quick] [--study] [--seed S] [--out DIR] [--data DIR]

Writes a synthetic two-domain benchmark in the real GTA5 / Cityscapes formats (advent.dataset.
synthetic; reused when already there), then runs the pipeline through the scripts and configs
a user runs (train.py, esl.py and test.py with advent/scripts/configs/demo/*.yml, in-process):

  source-only     source_only.yml   train.py + test.py
  AdvEnt          advent.yml        train.py (from the source-only model) + test.py
  ESL labels      esl.yml           esl.py: pseudo-labels of target train from the AdvEnt model
  MPSL labels     mpsl.yml          esl.py, ESL.METHOD maxprob: the baseline, same model
  ESL retrain     esl.yml           train.py with the ESL pseudo-labels + test.py

--study adds what tells where self-training loses (about 7 minutes more): the same retraining
with the MPSL pseudo-labels, and with two oracles, target-train ground truth written as
pseudo-labels (8-bit PNGs of train ids, 255 ignored, named by png_name):

  MPSL retrain              mpsl.yml   train.py with the MPSL pseudo-labels + test.py
  oracle: all target GT     esl.yml    with all the ground truth (PSEUDO_LABEL_DIRECTORY_TARGET
                                       pseudo_labels/oracle_all, EXP_NAME demo_oracle_all)
  oracle at ESL's coverage  esl.yml    with the ground truth on exactly the pixels ESL kept, 255
                                       elsewhere (pseudo_labels/oracle_coverage)

Oracle at coverage vs ESL retrain is what the wrong kept labels cost; oracle all vs oracle at
coverage what the dropped pixels cost. It prints one table (target val mIoU per model; kept share
and accuracy of the pseudo-labels; with --study the per-class IoU of every model) and writes it as
<out>/demo_results.json (paths in it relative to <out>), with pictures in <out>/pictures/. Every
number comes from the results files test.py and esl.py wrote (results_best.json, esl_report.json).

The configs it runs go to <out>/configs/: the shipped ones with the data folder, the output
folder, the seed, the models of the earlier stages and (--quick) the run lengths set. With the
default arguments they hold exactly the shipped values (tests/test_demo.py checks it), so a
stage can be re-run by hand with the shipped file. Each stage's full output goes to
<out>/logs/demo_<stage>.log; the console shows one line per stage and the progress bars.

<out> (default experiments/demo) is replaced as a whole, and only once the new run is complete:
the run is built in a staging folder beside it (.<name>.partial-*), which then takes its place,
so a crash leaves the earlier demo's results as they were (the unfinished one is removed; after
a kill, by the next run, by the exact name recorded). The paths in the configs and in demo_results.json are the final ones; the scripts' own
records and logs name the staging folder the run was built in. A folder holding anything the
project did not write is refused; two demos into one folder at once, too (the second stops).
Exit code 2 with one line on a user error.
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import argparse
import logging
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advent import PROJECT_ROOT
from advent.config import SCRIPTS_DIR, cfg_to_dict, flat_items, get_key, load_config
from advent.dataset import get_class_info, get_target_dataset, png_name
from advent.dataset.class_info import IGNORE_LABEL
from advent.demo.synthetic import write_demo_data
from advent.domain_adaptation.esl_UDA import REPORT_NAME
from advent.domain_adaptation.eval_UDA import RESULTS_BEST
from advent.domain_adaptation.checkpoint import model_snapshot_path, total_iterations
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.scripts import train as train_script
from advent.utils.errors import UserError
from advent.utils.output_dir import FolderReplacement
from advent.utils.runtime import run_main
from advent.utils.serialization import json_dump, json_load, yaml_dump, yaml_load
from advent.utils.viz_segmask import input_image, mask_image, panel_row, save_png

log = logging.getLogger("demo")

CONFIG_DIR = SCRIPTS_DIR / "configs" / "demo"
DEFAULT_OUT = PROJECT_ROOT / "experiments" / "demo"
DEFAULT_DATA = PROJECT_ROOT / "data" / "demo"
DEFAULT_SEED = 0
RESULTS_NAME = "demo_results.json"
OUTPUTS = ("configs", "snapshots", "logs", "pseudo_labels", "pictures", RESULTS_NAME)
# The synthetic benchmark: images per split, size and shift strength (advent.demo.synthetic).
DATA = {"num_source": 400, "num_source_val": 100, "num_target_train": 400, "num_target_val": 100,
        "size": (128, 64), "shift": 1.0}
# --quick (CI): every run length times this; the data and all other settings stay.
QUICK_SCALE = 0.15
ITERATION_KEYS = ("TRAIN.MAX_ITERS", "TRAIN.EARLY_STOP", "TRAIN.SAVE_PRED_EVERY", "TEST.SNAPSHOT_STEP",
                  "TEST.SNAPSHOT_MAXITER")
# Which earlier run's final model a config loads: {config: {key: config that trains the model}}.
CHAIN = {"advent": {"TRAIN.RESTORE_FROM": "source_only"},
         "esl": {"TRAIN.RESTORE_FROM": "source_only", "ESL.RESTORE_FROM": "advent"},
         "mpsl": {"TRAIN.RESTORE_FROM": "source_only", "ESL.RESTORE_FROM": "advent"}}
CONFIGS = ("source_only", "advent", "esl", "mpsl")  # in the order their inputs exist
# --study: the oracles retrain exactly as esl.yml, with other pseudo-labels (and their own EXP_NAME)
ORACLES = ("oracle_all", "oracle_coverage")
MODELS = {"source_only": "source-only", "advent": "AdvEnt", "esl": "ESL retrain", "mpsl": "MPSL retrain",
          "oracle_all": "oracle: all target GT", "oracle_coverage": "oracle at ESL's coverage"}
SHORT = {"source_only": "source", "advent": "AdvEnt", "esl": "ESL", "mpsl": "MPSL", "oracle_all": "GT all",
         "oracle_coverage": "GT@ESL"}  # the per-class table's column heads
LABELS = {"esl": "ESL", "mpsl": "MPSL", "oracle_all": "GT all", "oracle_coverage": "GT@ESL"}
# The gaps the per-class table shows: label noise (GT at ESL's coverage - ESL), coverage (all GT -
# GT at ESL's coverage), and ESL - MPSL after retraining.
GAPS = (("oracle_coverage", "esl"), ("oracle_all", "oracle_coverage"), ("esl", "mpsl"))
NUM_PICTURES = 4
PICTURE_SCALE = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"CI mode: every run {QUICK_SCALE:g} times as long (about 2 minutes)")
    parser.add_argument("--study", action="store_true",
                        help="also retrain with the MPSL pseudo-labels and with target-train ground truth "
                             "(all of it; on ESL's kept pixels), with per-class IoU (three more 500-iteration runs)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data and training seed (default 0)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default experiments/demo)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="data folder; the data of seed S goes to DATA/seedS (default data/demo)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, one per core)")
    return parser.parse_args(argv)


# --- the output folder ---

@contextmanager
def staged_out(out):
    """Hold the output folder `out` (output_dir.FolderReplacement: refused unless new, empty or an
    earlier demo's, locked) and yield a fresh staging folder beside it, which takes its place when
    the block ends without error (and is removed when it fails)."""
    output = FolderReplacement(out, "demo.py", "--out", advice="move them or choose another folder")
    with output.held(), output.staged() as work:
        try:
            yield work
        except BaseException:
            log.warning("demo.py stopped; %s is as it was", output.final)
            raise


# --- the configs it runs ---

def set_key(data, key, value):
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def final_snapshot(cfg):
    """The model file a run of `cfg` ends with."""
    return model_snapshot_path(cfg.TRAIN.SNAPSHOT_DIR, total_iterations(cfg))


def shipped_name(name):
    """The shipped config (configs/demo/<it>.yml) that config `name` is made from."""
    return "esl" if name in ORACLES else name


def run_settings(name, shipped, run, root, loaded):
    """{key: value} demo.py sets in config `name`: data, outputs under `root`, seed, earlier models,
    run length. `loaded`: the configs written so far (name -> resolved config)."""
    settings = {key: str(value) for key, value in run.data.cfg_paths().items()}
    settings["EXP_ROOT"] = str(root)
    settings["TRAIN.RANDOM_SEED"] = run.seed
    if name in ORACLES:
        settings["EXP_NAME"] = f"demo_{name}"
    if shipped.get("PSEUDO_LABEL_DIRECTORY_TARGET"):
        settings["PSEUDO_LABEL_DIRECTORY_TARGET"] = str(root / "pseudo_labels" / name)
    for key, earlier in CHAIN.get(shipped_name(name), {}).items():
        settings[key] = str(final_snapshot(loaded[earlier]))
    if run.quick:
        for key in ITERATION_KEYS:
            settings[key] = max(1, round(get_key(shipped, key) * QUICK_SCALE))
    return settings


def write_configs(run, root):
    """Write the configs of this run into <run.work>/configs/, their outputs under `root`;
    return {name: path}, {name: resolved config}."""
    written, loaded = {}, {}
    for name in CONFIGS + (ORACLES if run.study else ()):
        source = CONFIG_DIR / f"{shipped_name(name)}.yml"
        data = yaml_load(source)
        for key, value in run_settings(name, data, run, root, loaded).items():
            set_key(data, key, value)
        path = run.work / "configs" / f"{name}.yml"
        yaml_dump(data, path)
        loaded[name] = load_config(path)
        shipped = dict(flat_items(cfg_to_dict(load_config(source))))
        changed = sorted(key for key, value in flat_items(cfg_to_dict(loaded[name])) if value != shipped.get(key))
        header = (f"# Written by advent/scripts/demo.py from {source.relative_to(PROJECT_ROOT)}.\n"
                  f"# Keys it set to other values than the shipped file: {', '.join(changed) or 'none'}\n")
        if root != run.work:
            header += f"# demo.py ran it with the outputs under {run.work}, the folder it then moved to {root}.\n"
        path.write_text(header + path.read_text())
        written[name] = path
    return written, loaded


# --- the oracle pseudo-labels ---

def oracle_labels(gt, kept):
    """(all, at coverage): the ground truth `gt` (train ids, 255 ignored), and the same where the
    pseudo-label map `kept` is not 255 (255 elsewhere); both uint8."""
    gt = np.asarray(gt).astype(np.uint8)
    return gt, np.where(np.asarray(kept) != IGNORE_LABEL, gt, IGNORE_LABEL).astype(np.uint8)


def write_oracle_labels(dataset, kept_dir, all_dir, coverage_dir):
    """For every image of `dataset` (the target split with its ground truth at the pseudo-labels'
    size): its ground truth as a pseudo-label in `all_dir`, and the ground truth on the pixels the
    pseudo-labels in `kept_dir` keep in `coverage_dir`, in the pseudo-label format (8-bit PNG of
    train ids, 255 ignored, png_name). Returns {folder: share of all pixels labelled}."""
    if not dataset.has_labels:
        raise UserError("the oracle pseudo-labels need the target train ground truth, and it is missing")
    folders = (Path(all_dir), Path(coverage_dir))
    labelled, pixels = np.zeros(2, np.int64), 0
    for index in range(len(dataset)):
        _, gt, _, name = dataset[index]
        with Image.open(Path(kept_dir) / png_name(name)) as image:
            kept = np.asarray(image)
        if kept.shape != gt.shape:
            raise UserError(f"pseudo-label {png_name(name)} in {kept_dir} is {kept.shape[::-1]}, "
                            f"the ground truth {gt.shape[::-1]}")
        for i, (folder, label) in enumerate(zip(folders, oracle_labels(gt, kept))):
            save_png(Image.fromarray(label), folder / png_name(name))
            labelled[i] += np.count_nonzero(label != IGNORE_LABEL)
        pixels += gt.size
    return {folder: float(count / pixels) for folder, count in zip(folders, labelled)}


# --- running a script in-process ---

@contextmanager
def stage_log(path):
    """While running a stage: its log messages and printed output go to `path` (the console keeps
    warnings and the progress bars)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        with open(path, "a") as stream, redirect_stdout(stream):
            yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_script(module, config, log_path):
    """`python <script>.py --cfg <config>`, in this process, its output appended to `log_path`
    (sys.argv set to that command meanwhile: the scripts name it in their records and messages)."""
    argv = [str(Path(module.__file__).relative_to(PROJECT_ROOT)), "--cfg", str(config)]
    with stage_log(log_path):
        print(f"$ python {' '.join(argv)}", flush=True)
        saved, sys.argv = sys.argv, argv
        try:
            module.main(argv[1:])
        finally:
            sys.argv = saved


def test_results(cfg):
    """(file, the final snapshot's entry) of test.py's best-mode results of `cfg`."""
    path = Path(cfg.TEST.SNAPSHOT_DIR[0]) / RESULTS_BEST
    results = json_load(path)
    entry = next(e for e in results["snapshots"] if e["snapshot"] == results["last"])
    return path, entry


# --- the stages ---

class Demo:
    """One run of the demo: its settings, the configs it wrote and what the stages found.
    It is built in `work` (a staging folder) and moved to `out` at the end."""

    def __init__(self, args):
        self.args, self.seed, self.quick, self.study = args, args.seed, args.quick, args.study
        self.out = Path(args.out).resolve()
        self.work = None
        self.data_root = Path(args.data).resolve() / f"seed{args.seed}"
        self.data = None
        self.configs, self.cfgs = {}, {}
        self.results = {"paths": "relative to this file's folder, except 'data'", "models": {},
                        "pseudo_labels": {}, "seconds": {}}

    def stages(self):
        retrain = "train.py + test.py (esl.yml, other PSEUDO_LABEL_DIRECTORY_TARGET)"
        stages = [
            ("data", f"synthetic data -> {self.data_root}", self.make_data),
            ("source_only", "source-only: train.py + test.py (configs/demo/source_only.yml)",
             lambda: self.train_and_test("source_only")),
            ("advent", "AdvEnt from the source-only model: train.py + test.py (advent.yml)",
             lambda: self.train_and_test("advent")),
            ("esl_labels", "ESL pseudo-labels from the AdvEnt model: esl.py (esl.yml)",
             lambda: self.pseudo_labels("esl")),
            ("mpsl_labels", "MPSL pseudo-labels from the AdvEnt model: esl.py (mpsl.yml)",
             lambda: self.pseudo_labels("mpsl")),
            ("esl", "retrain with the ESL pseudo-labels: train.py + test.py (esl.yml)",
             lambda: self.train_and_test("esl")),
        ]
        if self.study:
            stages += [
                ("oracle_labels", "oracle pseudo-labels: target-train ground truth, all / on ESL's kept pixels",
                 self.oracle_pseudo_labels),
                ("mpsl", "retrain with the MPSL pseudo-labels: train.py + test.py (mpsl.yml)",
                 lambda: self.train_and_test("mpsl")),
                ("oracle_all", f"retrain with all target-train ground truth: {retrain}",
                 lambda: self.train_and_test("oracle_all")),
                ("oracle_coverage", f"retrain with the ground truth on ESL's kept pixels: {retrain}",
                 lambda: self.train_and_test("oracle_coverage")),
            ]
        return stages + [("report", "table, pictures", self.report)]

    def make_data(self):
        self.data = write_demo_data(self.data_root, seed=self.seed, **DATA)
        self.configs, self.cfgs = write_configs(self, self.work)
        return f"{sum(self.data.counts.values())} images; configs in <out>/configs"

    def log_path(self, stage):
        return self.work / "logs" / f"demo_{stage}.log"

    def relative(self, path):
        """`path` inside the staging folder, relative to it (so to <out> at the end)."""
        return str(Path(path).resolve().relative_to(self.work))

    def train_and_test(self, name):
        config = self.configs[name]
        run_script(train_script, config, self.log_path(name))
        run_script(test_script, config, self.log_path(name))
        path, entry = test_results(self.cfgs[name])
        self.results["models"][name] = {
            "name": MODELS[name], "mIoU": entry["mIoU"],
            "per_class": {c["name"]: c["IoU"] for c in entry["per_class"]},
            "snapshot": self.relative(entry["path"]), "results_file": self.relative(path),
            "config": self.relative(config)}
        return f"mIoU {entry['mIoU']:.2f}"

    def pseudo_labels(self, name):
        config = self.configs[name]
        run_script(esl_script, config, self.log_path(f"{name}_labels"))
        folder = Path(self.cfgs[name].PSEUDO_LABEL_DIRECTORY_TARGET)
        report = json_load(folder / REPORT_NAME)
        self.results["pseudo_labels"][name] = {
            "name": LABELS[name], "method": report["method"], "images": report["images"],
            "kept_fraction": report["kept_fraction"], "accuracy_kept": report["accuracy_kept"],
            "accuracy_all": report["accuracy_all"], "mIoU_kept": report["mIoU_kept"],
            "report_file": self.relative(folder / REPORT_NAME), "config": self.relative(config)}
        return (f"kept {100 * report['kept_fraction']:.1f} %, accuracy of the kept pixels "
                f"{100 * report['accuracy_kept']:.1f} %")

    def oracle_pseudo_labels(self):
        cfg = self.cfgs["esl"]
        dataset = get_target_dataset(cfg, "esl")  # target train, ground truth at ESL.OUTPUT_SIZE_TARGET
        folders = [Path(self.cfgs[name].PSEUDO_LABEL_DIRECTORY_TARGET) for name in ORACLES]
        shares = write_oracle_labels(dataset, cfg.PSEUDO_LABEL_DIRECTORY_TARGET, *folders)
        for name, folder in zip(ORACLES, folders):
            self.results["pseudo_labels"][name] = {
                "name": LABELS[name], "method": "ground truth", "images": len(dataset),
                "kept_fraction": shares[folder], "folder": self.relative(folder)}
        return ", ".join(f"{LABELS[n]}: {100 * shares[f]:.1f} % of the pixels labelled"
                         for n, f in zip(ORACLES, folders))

    def report(self):
        self.results["pictures"] = [self.relative(p) for p in write_pictures(self)]
        self.results.update(run_summary(self))
        return f"{len(self.results['pictures'])} pictures in <out>/pictures"

    def run(self):
        with staged_out(self.out) as work:
            self.work = work
            print(f"Building the run in {work}; it replaces {self.out} once complete.", flush=True)
            start = time.time()
            stages = self.stages()
            for number, (key, title, action) in enumerate(stages, 1):
                print(f"[{number}/{len(stages)}] {title} ...", flush=True)
                began = time.time()
                outcome = action()
                self.results["seconds"][key] = round(time.time() - began, 1)
                print(f"      {outcome} ({time.time() - began:.0f} s)", flush=True)
            write_configs(self, self.out)  # the same configs, with the paths they have once moved
            self.results["seconds"]["total"] = round(time.time() - start, 1)
            json_dump(self.results, work / RESULTS_NAME)
        print(format_table(self.results, self.out))
        return self.results


def run_summary(demo):
    """What the table was measured with (for the JSON)."""
    cfg = demo.cfgs["source_only"]
    return {"seed": demo.seed, "quick": demo.quick, "study": demo.study, "data": str(demo.data_root),
            "synthetic": dict(DATA), "model": cfg.TRAIN.MODEL, "target_val_images": demo.data.counts["target_val"],
            "configs": {name: demo.relative(path) for name, path in demo.configs.items()},
            "command": ["python", "advent/scripts/demo.py"] + list(demo.args.argv)}


# --- table ---

def format_table(results, out):
    """The models' target val mIoU and the pseudo-labels' quality, as printed at the end; with
    --study the per-class IoU of every model."""
    width = max(len(entry["name"]) for entry in results["models"].values()) + 4
    lines = [f"Synthetic GTA5 -> Cityscapes, seed {results['seed']}{' (--quick)' if results['quick'] else ''}, "
             f"{results['model']}: mIoU on target val ({results['target_val_images']} images), final snapshots",
             f"  {'model':<{width}}{'mIoU':>8}"]
    for entry in results["models"].values():
        lines.append(f"  {entry['name']:<{width}}{entry['mIoU']:>8.2f}")
    labels = {key: entry for key, entry in results["pseudo_labels"].items() if key not in ORACLES}
    if labels:
        images = next(iter(labels.values()))["images"]
        lines += ["", f"Pseudo-labels of target train ({images} images) from the AdvEnt model, scored against "
                      f"its ground truth (never used in training but by the oracles):",
                  f"  {'method':<8}{'kept %':>8}{'accuracy of kept %':>20}{'mIoU of kept':>14}{'accuracy of all %':>19}"]
        for entry in labels.values():
            lines.append(f"  {entry['name']:<8}{100 * entry['kept_fraction']:>8.2f}"
                         f"{100 * entry['accuracy_kept']:>20.2f}{100 * entry['mIoU_kept']:>14.2f}"
                         f"{100 * entry['accuracy_all']:>19.2f}")
        for key in ORACLES:
            if key in results["pseudo_labels"]:
                entry = results["pseudo_labels"][key]
                lines.append(f"  {entry['name']:<8}{100 * entry['kept_fraction']:>8.2f}  (ground truth)")
    if results.get("study"):
        lines += ["", per_class_table(results["models"])]
    lines.append(f"\n{results['seconds']['total']:.0f} s in all; numbers from the results files in {out}")
    return "\n".join(lines)


def per_class_table(models):
    """IoU per class (rows) and model (columns), with the gaps the oracles measure."""
    keys = list(models)
    gaps = [(a, b) for a, b in GAPS if a in models and b in models]
    lines = ["IoU per class on target val (GT all / GT@ESL: retrained with all target-train ground truth / "
             "with it on ESL's kept pixels):",
             f"  {'class':<15}" + "".join(f"{SHORT[k]:>8}" for k in keys)
             + "".join(f"{SHORT[a] + ' - ' + SHORT[b]:>17}" for a, b in gaps)]
    for name in [*next(iter(models.values()))["per_class"], "mIoU"]:
        values = {k: models[k]["mIoU"] if name == "mIoU" else models[k]["per_class"][name] for k in keys}
        if all(value is None for value in values.values()):
            continue  # a class in neither the labels nor the predictions of target val
        row = f"  {name:<15}" + "".join(f"{number(values[k]):>8}" for k in keys)
        row += "".join(f"{number(difference(values[a], values[b]), '+.2f'):>17}" for a, b in gaps)
        lines.append(row)
    return "\n".join(lines)


def difference(a, b):
    return None if a is None or b is None else a - b


def number(value, form=".2f"):
    return "-" if value is None else format(value, form)


# --- pictures ---

def colour_file(path):
    """A colour PNG written by test.py as a 3 x H x W float tensor in [0, 1]."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)


def enlarge(panel):
    return F.interpolate(panel[None], scale_factor=PICTURE_SCALE, mode="nearest")[0]


def save_row(panels, titles, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel_row([enlarge(p) for p in panels], titles)).save(path)
    return path


def picked(count, total):
    """`count` indices spread over range(total)."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


def picture_rows(demo, split, mean, prefix, extra_panels):
    """For a few target images of `split` ('test': val, 'esl': train): image | ground truth |
    the (panel, title) pairs of extra_panels(name, palette); one PNG each, named prefix_<image>."""
    cfg = demo.cfgs["esl"]
    dataset = get_target_dataset(cfg, split)  # with the ground truth, which only the pictures use
    palette = get_class_info(cfg, split).palette
    paths = []
    for index in picked(NUM_PICTURES, len(dataset)):
        image, label, _, name = dataset[index]
        panels, titles = [input_image(image, mean), mask_image(label, palette)], ["image", "ground truth"]
        for panel, title in extra_panels(name, palette):
            panels.append(panel)
            titles.append(title)
        paths.append(save_row(panels, titles, demo.work / "pictures" / f"{prefix}_{png_name(name)}"))
    return paths


def write_pictures(demo):
    """Target val: each model's prediction (as test.py saved it); target train: the ESL and MPSL
    pseudo-labels (black: dropped); the oracles' are the ground truth shown."""
    def predictions(name, palette):
        for key, entry in demo.results["models"].items():
            folder = Path(demo.cfgs[key].TEST.SNAPSHOT_DIR[0]) / "predictions" / Path(entry["snapshot"]).stem
            yield colour_file(folder / "color" / png_name(name)), entry["name"]

    def pseudo_labels(name, palette):
        for key, entry in demo.results["pseudo_labels"].items():
            if key in ORACLES:
                continue
            pseudo = Image.open(Path(demo.cfgs[key].PSEUDO_LABEL_DIRECTORY_TARGET) / png_name(name))
            yield mask_image(np.asarray(pseudo), palette), f"{entry['name']} label"

    cfg = demo.cfgs["esl"]
    return (picture_rows(demo, "test", cfg.TEST.IMG_MEAN, "val", predictions)
            + picture_rows(demo, "esl", cfg.ESL.IMG_MEAN, "train", pseudo_labels))


# --- entry point ---

def run_demo(argv=None):
    """Run the demo with command-line arguments `argv`; return the results (as in the JSON)."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return Demo(args).run()


def setup_console():
    """Log messages of INFO and up go to the stage logs; the console shows warnings only."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[console])


def main(argv=None):
    setup_console()
    run_demo(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
