"""The demo's pipeline (demo.py): the whole ESL pipeline on a synthetic GTA5 -> Cityscapes shift.

Writes a synthetic two-domain benchmark in the real GTA5 / Cityscapes formats (advent.demo.
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
a kill, by the next run, by the exact name recorded). The paths in the configs and in
demo_results.json are the final ones; the scripts' own records and logs name the staging folder
the run was built in. A folder holding anything the project did not write is refused; two
demos into one folder at once, too (the second stops). An output folder that is the data
folder, or inside it, or holds it, is refused before anything is written (`check_folders`).
"""
import logging
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch

from advent import PROJECT_ROOT
from advent.dataset import get_target_dataset
from advent.demo.configs import ORACLES, write_configs
from advent.demo.oracle_labels import write_oracle_labels
from advent.demo.pictures import write_pictures
from advent.demo.report import LABELS, MODELS, format_table
from advent.demo.synthetic import write_demo_data
from advent.domain_adaptation.esl_UDA import REPORT_NAME
from advent.domain_adaptation.eval_UDA import RESULTS_BEST
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.scripts import train as train_script
from advent.utils.errors import UserError
from advent.utils.output_dir import FolderReplacement
from advent.utils.serialization import json_dump, json_load

log = logging.getLogger("demo")

DEFAULT_OUT = PROJECT_ROOT / "experiments" / "demo"
DEFAULT_DATA = PROJECT_ROOT / "data" / "demo"
DEFAULT_SEED = 0
RESULTS_NAME = "demo_results.json"
OUTPUTS = ("configs", "snapshots", "logs", "pseudo_labels", "pictures", RESULTS_NAME)
# The synthetic benchmark: images per split, size and shift strength (advent.demo.synthetic).
DATA = {"num_source": 400, "num_source_val": 100, "num_target_train": 400, "num_target_val": 100,
        "size": (128, 64), "shift": 1.0}


# --- the output folder ---

STAGE_SCRIPTS = ("train.py", "esl.py", "test.py")  # what the demo runs, also by hand in its folder

@contextmanager
def staged_out(out):
    """Hold the output folder `out` (output_dir.FolderReplacement: refused unless new, empty or an
    earlier demo's, locked) and yield a fresh staging folder beside it, which takes its place when
    the block ends without error (and is removed when it fails)."""
    output = FolderReplacement(out, "demo.py", "--out", advice="move them or choose another folder",
                               guests=STAGE_SCRIPTS)  # a stage re-run by hand in it stays the demo's
    with output.held(), output.staged() as work:
        try:
            yield work
        except BaseException:
            log.warning("demo.py stopped; %s is as it was, and the unfinished demo is removed (a stage's "
                        "'resume with' line above does not apply to it): run demo.py again", output.final)
            raise


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


# --- entry point ---

def check_folders(out, data):
    """Refuse an output folder `out` and a data folder `data` that overlap (the same folder, or one
    inside the other; compared resolved): the output folder is replaced as a whole at the end, so
    the data would be lost with it, or written into a folder the run then refuses to replace."""
    out_path, data_path = Path(out).resolve(), Path(data).resolve()
    if out_path == data_path:
        overlap = f"--out {out} and --data {data} are the same folder"
    elif out_path.is_relative_to(data_path):
        overlap = f"--out {out} is inside --data {data}"
    elif data_path.is_relative_to(out_path):
        overlap = f"--data {data} is inside --out {out}"
    else:
        return
    raise UserError(f"{overlap}: give two separate folders, neither inside the other (--out is replaced as a whole)")


def run_demo(args, argv):
    """Run the demo with the parsed arguments `args` of the command line `argv`; return the results
    (as in the JSON). The arguments are checked before anything is written."""
    check_folders(args.out, args.data)
    args.argv = list(argv)
    setup_console()
    if args.threads:
        torch.set_num_threads(args.threads)
    return Demo(args).run()


def setup_console():
    """Log messages of INFO and up go to the stage logs; the console shows warnings only."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[console])
