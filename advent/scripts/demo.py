"""Demo: the whole ESL pipeline on a synthetic GTA5 -> Cityscapes shift, on a laptop CPU.

    python advent/scripts/demo.py [--quick] [--mpsl-retrain] [--seed S] [--out DIR] [--data DIR]

Writes a synthetic two-domain benchmark in the real GTA5 / Cityscapes formats (advent.dataset.
synthetic; reused when already there), then runs the pipeline through the scripts and configs
a user runs (train.py, esl.py and test.py with advent/scripts/configs/demo/*.yml, in-process):

  source-only     source_only.yml   train.py + test.py
  AdvEnt          advent.yml        train.py (from the source-only model) + test.py
  ESL labels      esl.yml           esl.py: pseudo-labels of target train from the AdvEnt model
  MPSL labels     mpsl.yml          esl.py, ESL.METHOD maxprob: the baseline, same model
  ESL retrain     esl.yml           train.py with the ESL pseudo-labels + test.py
  MPSL retrain    mpsl.yml          train.py with the MPSL pseudo-labels + test.py (--mpsl-retrain)

then prints one table (target val mIoU per stage; kept share and accuracy of the pseudo-labels)
and writes it as <out>/demo_results.json, with pictures in <out>/pictures/. Every number comes
from the results files test.py and esl.py wrote (results_best.json, esl_report.json).

The configs it runs go to <out>/configs/: the shipped ones with the data folder, the output
folder, the seed, the models of the earlier stages and (--quick) the run lengths set. With the
default arguments they hold exactly the shipped values (tests/test_demo.py checks it), so a
stage can be re-run by hand with the shipped file. Each stage's full output goes to
<out>/logs/demo_<stage>.log; the console shows one line per stage and the progress bars.

<out> (default experiments/demo) is cleared of an earlier demo's results at the start; a
non-empty folder that a demo did not make is refused. Exit code 2 with one line on a user error.
"""
import argparse
import logging
import shutil
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
from advent.dataset import get_class_info, get_target_dataset
from advent.dataset import png_name as prediction_file_name, png_name as pseudo_label_name
from advent.demo.synthetic import write_demo_data
from advent.domain_adaptation.esl_UDA import REPORT_NAME
from advent.domain_adaptation.eval_UDA import RESULTS_BEST
from advent.domain_adaptation.checkpoint import model_snapshot_path
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.scripts import train as train_script
from advent.utils.errors import UserError
from advent.utils.runtime import run_main
from advent.utils.serialization import json_dump, json_load, yaml_dump, yaml_load
from advent.utils.viz_segmask import input_image, mask_image, panel_row

log = logging.getLogger("demo")

CONFIG_DIR = SCRIPTS_DIR / "configs" / "demo"
DEFAULT_OUT = PROJECT_ROOT / "experiments" / "demo"
DEFAULT_DATA = PROJECT_ROOT / "data" / "demo"
DEFAULT_SEED = 0
RESULTS_NAME = "demo_results.json"
MARKER = ".advent_demo"  # marks a folder as a demo's output, which a new demo run may clear
OUTPUTS = ("configs", "snapshots", "logs", "pseudo_labels", "pictures", RESULTS_NAME)
# The synthetic benchmark: images per split, size and shift strength (advent.dataset.synthetic).
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
MODELS = {"source_only": "source-only", "advent": "AdvEnt", "esl": "ESL retrain", "mpsl": "MPSL retrain"}
LABELS = {"esl": "ESL", "mpsl": "MPSL"}
NUM_PICTURES = 4
PICTURE_SCALE = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"CI mode: every run {QUICK_SCALE:g} times as long (about 1.5 minutes)")
    parser.add_argument("--mpsl-retrain", action="store_true",
                        help="also retrain with the MPSL pseudo-labels (about 3.5 minutes more)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data and training seed (default 0)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default experiments/demo)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="data folder; the data of seed S goes to DATA/seedS (default data/demo)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, one per core)")
    return parser.parse_args(argv)


# --- the output folder ---

def prepare_out(out):
    """Create `out`, or clear the results of an earlier demo run there; refuse any other folder."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"--out {out} is not empty and was not made by demo.py; choose another folder")
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by advent/scripts/demo.py; it clears this folder's results\n")
    return out


# --- the configs it runs ---

def set_key(data, key, value):
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def final_snapshot(cfg):
    """The model file a run of `cfg` ends with."""
    return model_snapshot_path(cfg.TRAIN.SNAPSHOT_DIR, min(cfg.TRAIN.EARLY_STOP, cfg.TRAIN.MAX_ITERS))


def run_settings(name, shipped, run, loaded):
    """{key: value} demo.py sets in config `name`: data, outputs, seed, earlier models, run length.
    `loaded`: the configs written so far (name -> resolved config)."""
    settings = {key: str(value) for key, value in run.data.cfg_paths().items()}
    settings["EXP_ROOT"] = str(run.out)
    settings["TRAIN.RANDOM_SEED"] = run.seed
    if shipped.get("PSEUDO_LABEL_DIRECTORY_TARGET"):
        settings["PSEUDO_LABEL_DIRECTORY_TARGET"] = str(run.out / "pseudo_labels" / name)
    for key, earlier in CHAIN.get(name, {}).items():
        settings[key] = str(final_snapshot(loaded[earlier]))
    if run.quick:
        for key in ITERATION_KEYS:
            settings[key] = max(1, round(get_key(shipped, key) * QUICK_SCALE))
    return settings


def write_configs(run):
    """Write the configs of this run into <out>/configs/; return {name: (path, resolved config)}."""
    written, loaded = {}, {}
    for name in CONFIGS:
        source = CONFIG_DIR / f"{name}.yml"
        data = yaml_load(source)
        for key, value in run_settings(name, data, run, loaded).items():
            set_key(data, key, value)
        path = run.out / "configs" / f"{name}.yml"
        yaml_dump(data, path)
        loaded[name] = load_config(path)
        shipped = dict(flat_items(cfg_to_dict(load_config(source))))
        changed = sorted(key for key, value in flat_items(cfg_to_dict(loaded[name])) if value != shipped.get(key))
        header = (f"# Written by advent/scripts/demo.py from {source.relative_to(PROJECT_ROOT)}.\n"
                  f"# Keys it set to other values than the shipped file: {', '.join(changed) or 'none'}\n")
        path.write_text(header + path.read_text())
        written[name] = path
    return written, loaded


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
    """`python <script>.py --cfg <config>`, in this process, its output appended to `log_path`."""
    with stage_log(log_path):
        print(f"$ python advent/scripts/{module.__name__.rsplit('.', 1)[-1]}.py --cfg {config}", flush=True)
        module.main(["--cfg", str(config)])


def test_results(cfg):
    """(file, the final snapshot's entry) of test.py's best-mode results of `cfg`."""
    path = Path(cfg.TEST.SNAPSHOT_DIR[0]) / RESULTS_BEST
    results = json_load(path)
    entry = next(e for e in results["snapshots"] if e["snapshot"] == results["last"])
    return path, entry


# --- the stages ---

class Demo:
    """One run of the demo: its settings, the configs it wrote and what the stages found."""

    def __init__(self, args):
        self.args, self.seed, self.quick = args, args.seed, args.quick
        self.out = Path(args.out).resolve()
        self.data_root = Path(args.data).resolve() / f"seed{args.seed}"
        self.data = None
        self.configs, self.cfgs = {}, {}
        self.results = {"models": {}, "pseudo_labels": {}, "seconds": {}}

    def stages(self):
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
            ("mpsl", "retrain with the MPSL pseudo-labels: train.py + test.py (mpsl.yml)",
             lambda: self.train_and_test("mpsl")),
            ("report", "table, pictures", self.report),
        ]
        return [stage for stage in stages if stage[0] != "mpsl" or self.args.mpsl_retrain]

    def make_data(self):
        self.data = write_demo_data(self.data_root, seed=self.seed, **DATA)
        self.configs, self.cfgs = write_configs(self)
        return f"{sum(self.data.counts.values())} images; configs in {self.out / 'configs'}"

    def log_path(self, stage):
        return self.out / "logs" / f"demo_{stage}.log"

    def train_and_test(self, name):
        config = self.configs[name]
        run_script(train_script, config, self.log_path(name))
        run_script(test_script, config, self.log_path(name))
        path, entry = test_results(self.cfgs[name])
        self.results["models"][name] = {"name": MODELS[name], "mIoU": entry["mIoU"], "snapshot": entry["path"],
                                        "results_file": str(path), "config": str(config)}
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
            "report_file": str(folder / REPORT_NAME), "config": str(config)}
        return (f"kept {100 * report['kept_fraction']:.1f} %, accuracy of the kept pixels "
                f"{100 * report['accuracy_kept']:.1f} %")

    def report(self):
        self.results["pictures"] = [str(p) for p in write_pictures(self)]
        self.results.update(run_summary(self))  # run() writes the results file once the timings are in
        return f"{self.out / RESULTS_NAME}, {len(self.results['pictures'])} pictures in {self.out / 'pictures'}"

    def run(self):
        start = time.time()
        stages = self.stages()
        for number, (key, title, action) in enumerate(stages, 1):
            print(f"[{number}/{len(stages)}] {title} ...", flush=True)
            began = time.time()
            outcome = action()
            self.results["seconds"][key] = round(time.time() - began, 1)
            print(f"      {outcome} ({time.time() - began:.0f} s)", flush=True)
        self.results["seconds"]["total"] = round(time.time() - start, 1)
        json_dump(self.results, self.out / RESULTS_NAME)
        print(format_table(self.results))
        return self.results


def run_summary(demo):
    """What the table was measured with (for the JSON)."""
    cfg = demo.cfgs["source_only"]
    return {"seed": demo.seed, "quick": demo.quick, "data": str(demo.data_root), "synthetic": dict(DATA),
            "model": cfg.TRAIN.MODEL, "target_val_images": demo.data.counts["target_val"],
            "configs": {name: str(path) for name, path in demo.configs.items()},
            "command": ["python", "advent/scripts/demo.py"] + list(demo.args.argv)}


# --- table ---

def format_table(results):
    """The models' target val mIoU and the pseudo-labels' quality, as printed at the end."""
    lines = [f"Synthetic GTA5 -> Cityscapes, seed {results['seed']}{' (--quick)' if results['quick'] else ''}, "
             f"{results['model']}: mIoU on target val ({results['target_val_images']} images), final snapshots",
             f"  {'model':<16}{'mIoU':>8}"]
    for entry in results["models"].values():
        lines.append(f"  {entry['name']:<16}{entry['mIoU']:>8.2f}")
    labels = results["pseudo_labels"]
    if labels:
        images = next(iter(labels.values()))["images"]
        lines += ["", f"Pseudo-labels of target train ({images} images) from the AdvEnt model, scored against "
                      f"its ground truth (never used in training):",
                  f"  {'method':<8}{'kept %':>8}{'accuracy of kept %':>20}{'mIoU of kept':>14}{'accuracy of all %':>19}"]
        for entry in labels.values():
            lines.append(f"  {entry['name']:<8}{100 * entry['kept_fraction']:>8.2f}"
                         f"{100 * entry['accuracy_kept']:>20.2f}{100 * entry['mIoU_kept']:>14.2f}"
                         f"{100 * entry['accuracy_all']:>19.2f}")
    lines.append(f"\n{results['seconds']['total']:.0f} s in all; numbers from the results files in "
                 f"{Path(results['pictures'][0]).parent.parent if results.get('pictures') else 'the output folder'}")
    return "\n".join(lines)


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
        paths.append(save_row(panels, titles, demo.out / "pictures" / f"{prefix}_{pseudo_label_name(name)}"))
    return paths


def write_pictures(demo):
    """Target val: each model's prediction (as test.py saved it); target train: the ESL and MPSL
    pseudo-labels (black: dropped)."""
    def predictions(name, palette):
        for key, entry in demo.results["models"].items():
            folder = Path(demo.cfgs[key].TEST.SNAPSHOT_DIR[0]) / "predictions" / Path(entry["snapshot"]).stem
            yield colour_file(folder / "color" / prediction_file_name(name)), entry["name"]

    def pseudo_labels(name, palette):
        for key, entry in demo.results["pseudo_labels"].items():
            pseudo = Image.open(Path(demo.cfgs[key].PSEUDO_LABEL_DIRECTORY_TARGET) / pseudo_label_name(name))
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
    demo = Demo(args)
    demo.out = prepare_out(demo.out)
    return demo.run()


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
