"""The GPU check: one command a GPU owner runs, one table, also as JSON. Sized to finish within 8
minutes on one GPU (not yet run on one: each row shows its seconds).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--gpu 0] [--images 32]
        [--sweep 1 2 4 8] [--sweep-iters 100] [--sweep-warmup 20] [--skip-tests] [--work DIR]
    python benchmarks/gpu_check.py --dry-run [--out FILE]   # CPU, Tiny model, tiny images, few iterations

In order, each a row of the table:
  tests        `pytest -m cuda` (tests/test_cuda.py and the other CUDA-marked tests), then the fast
               suite (`-m "not slow and not cuda"`); exit status and pytest's summary line.
  speed        benchmarks/train_speed.py's AdvEnt iteration (train_step on random data, R101 at
               1280x720 / 1024x512, batch 1 + 1) in fp32, bf16, fp16 and bf16 + CHANNELS_LAST, each
               in its own process: it/s and torch.cuda.max_memory_allocated.
  seed sweep   1, 2, 4 and 8 train.py runs started together on the GPU (the paper's settings: R101,
               AdvEnt multi-level, 1280x720 / 1024x512; random initial weights), each with its own
               --exp-suffix and TRAIN.RANDOM_SEED, on GTA5 (1914x1052) and Cityscapes (2048x1024)
               images written in the real formats (tests/fake_data.py; random pixels, which decode
               slower than photographs). Per run: its iterations/s after --sweep-warmup iterations,
               from its own loop (loaders included), and its torch.cuda.max_memory_allocated; the
               aggregate counts every run's iterations in the window where all of them were past
               their warm-up and none had finished. The 1-run sweep is train.py end to end.
  esl.py       over the --images target training images, from the 1-run sweep's snapshot:
               images/s from its first forward to its end (thresholds and PNG writing included).
  test.py      'single' mode over the --images validation images at 2048x1024: images/s of its
               evaluation loop (loader, forward, upsampling, confusion matrix).
Every row also shows the most GPU memory nvidia-smi reported in use during it (the whole GPU,
polled every 0.2 s: other users of the GPU count too), and its seconds.

--dry-run runs the same steps on the CPU at tiny sizes with the Tiny model (the suites are only
collected, the sweep is 1 and 2 runs, nvidia-smi is skipped), so that a test can keep the script
working where no GPU is (tests/test_gpu_check.py).
"""
import argparse
import importlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed (benchmarks/ is no package)
import train_speed  # noqa: E402

from advent import PROJECT_ROOT  # noqa: E402
from advent.config import get_default_cfg  # noqa: E402
from advent.utils.serialization import json_dump, json_load, yaml_dump  # noqa: E402

PAPER = {"model": "DeepLabv2", "gta": (1914, 1052), "cityscapes": (2048, 1024), "source": (1280, 720),
         "target": (1024, 512), "test_output": (2048, 1024)}
TINY = {"model": "DeepLabv2-Tiny", "gta": (96, 52), "cityscapes": (64, 32), "source": (64, 32),
        "target": (64, 32), "test_output": (64, 32)}
SPEED_VARIANTS = (("none", False), ("bf16", False), ("fp16", False), ("bf16", True))
# the function each timed script runs per unit of work (its module, its name)
TIMED = {"train": ("advent.domain_adaptation.train_UDA", "train_step"),
         "esl": ("advent.domain_adaptation.esl_UDA", "main_logits"),
         "test": ("advent.domain_adaptation.eval_UDA", "evaluate")}


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="the table as JSON (default gpu_check.json)")
    parser.add_argument("--gpu", type=int, default=0, help="the GPU (GPU_ID, nvidia-smi -i)")
    parser.add_argument("--images", type=int, default=None, help="target train and val images (default 32)")
    parser.add_argument("--sweep", type=int, nargs="+", default=None, help="concurrent runs (default 1 2 4 8)")
    parser.add_argument("--sweep-iters", type=int, default=None, help="iterations per run (default 100)")
    parser.add_argument("--sweep-warmup", type=int, default=None, help="untimed first iterations (default 20)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the two test rows")
    parser.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, few iterations")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.sizes = TINY if dry else PAPER
    args.device = "cpu" if dry else f"cuda:{args.gpu}"
    args.images = 2 * max(1, (args.images or (4 if dry else 32)) // 2)  # two cities of as many each
    args.sweep = args.sweep or ([1, 2] if dry else [1, 2, 4, 8])
    # enough iterations that runs started together overlap past their warm-up, whatever their start-up
    args.sweep_iters = args.sweep_iters or (3 if dry else 100)
    args.sweep_warmup = args.sweep_warmup if args.sweep_warmup is not None else (1 if dry else 20)
    if not 1 <= args.sweep_warmup < args.sweep_iters:
        parser.error("--sweep-warmup must be at least 1 and below --sweep-iters")
    return args


# --- nvidia-smi ---

def nvidia_smi(gpu, *fields):
    """The values of nvidia-smi --query-gpu `fields` for GPU `gpu`, as strings; None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                              "-i", str(gpu)], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [value.strip() for value in out.strip().split(",")]


class MemoryPoller:
    """The most GPU memory nvidia-smi reports in use while the `with` block runs (MiB; None when off)."""

    def __init__(self, gpu, enabled):
        self.gpu, self.enabled, self.peak = gpu, enabled, None
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.wait(0.2):
            values = nvidia_smi(self.gpu, "memory.used")
            if values:
                self.peak = max(self.peak or 0, int(values[0]))

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()


def stage(args, name, work):
    """Run `work()` (a dict of row fields) under the poller; the row, with its seconds and footprint."""
    start = time.monotonic()
    with MemoryPoller(args.gpu, not args.dry_run) as poller:
        row = work()
    return {"stage": name, **row, "seconds": round(time.monotonic() - start, 1), "smi_mib": poller.peak}


# --- a script run, timed from inside (the child process) ---

def run_timed(kind, out, argv):
    """Run train.py / esl.py / test.py (`kind`) on `argv` in this process, recording the start and end
    (time.monotonic: comparable between processes) of each call of its unit of work (TIMED) and its
    peak memory into the JSON file `out`."""
    from advent.utils.runtime import run_main

    module, name = TIMED[kind]
    target = importlib.import_module(module)
    original, stamps = getattr(target, name), []

    def timed(*a, **k):
        start = time.monotonic()
        result = original(*a, **k)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the work done, not only queued
        stamps.append((start, time.monotonic()))
        return result

    setattr(target, name, timed)
    code = 0
    try:
        run_main(importlib.import_module(f"advent.scripts.{kind}").main, argv)
    except SystemExit as stop:
        code = stop.code
    cuda = torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024
    json_dump({"exit": code, "stamps": stamps, "end": time.monotonic(), "peak_mib": peak,
               "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss"}, out)
    return code


def start_timed(kind, out, argv, log):
    """A child process running `run_timed`, its output into the file `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, __file__, "--timed", kind, str(out), *map(str, argv)],
                                stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)


def finished(process, out, log):
    """The child's JSON record once it ended, or {'exit': code, 'error': the last log line}."""
    code = process.wait()
    if code == 0 and Path(out).is_file():
        return json_load(out)
    lines = Path(log).read_text(errors="replace").strip().splitlines() or ["no output"]
    return {"exit": code, "error": lines[-1][-300:]}


# --- the data and the configs ---

def write_data(root, sizes, images):
    """GTA5 (8 images) and Cityscapes train / val (`images` each) in the real formats; (cfg paths)."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from fake_data import write_cityscapes, write_gta5

    per_city = images // 2
    gta = write_gta5(root / "GTA5", 8, size=sizes["gta"], seed=1)
    size = sizes["cityscapes"]
    train = write_cityscapes(root / "Cityscapes", "train", ("aachen", "bochum"), per_city, size, seed=2)
    write_cityscapes(root / "Cityscapes", "val", ("frankfurt", "lindau"), per_city, size, seed=3)
    return {"DATA_DIRECTORY_SOURCE": str(gta.root), "DATA_LIST_SOURCE": gta.list_template,
            "DATA_DIRECTORY_TARGET": str(train.root), "DATA_LIST_TARGET": train.list_template}


def base_cfg(args, data, exp_root):
    """The defaults (the paper's settings) over the written data, on the checked device."""
    cfg, sizes = get_default_cfg(), args.sizes
    cfg.update(data)
    cfg.EXP_ROOT, cfg.GPU_ID = str(exp_root), -1 if args.dry_run else args.gpu
    cfg.TRAIN.MODEL = cfg.ESL.MODEL = sizes["model"]
    cfg.TEST.MODEL = (sizes["model"],)
    cfg.TRAIN.INPUT_SIZE_SOURCE, cfg.TRAIN.INPUT_SIZE_TARGET = sizes["source"], sizes["target"]
    cfg.ESL.INPUT_SIZE_TARGET = cfg.ESL.OUTPUT_SIZE_TARGET = cfg.TEST.INPUT_SIZE_TARGET = sizes["target"]
    cfg.TEST.OUTPUT_SIZE_TARGET = sizes["test_output"]
    if args.dry_run:
        cfg.NUM_WORKERS = 0
    return cfg


def write_cfg(cfg, path):
    from advent.config import cfg_to_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    yaml_dump(cfg_to_dict(cfg), path)
    return path


# --- the rows ---

def test_rows(args):
    """The CUDA-marked tests, then the fast suite (collected only in a dry run)."""
    rows = []
    for name, marks in (("tests: -m cuda", "cuda"), ("tests: fast suite", "not slow and not cuda")):
        command = [sys.executable, "-m", "pytest", "-q", "-m", marks, "tests"]
        command += ["--collect-only"] if args.dry_run else []
        rows.append(stage(args, name, lambda: pytest_row(command)))
    return rows


def pytest_row(command):
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    summary = ([line for line in result.stdout.splitlines() if line.strip()] or ["no output"])[-1]
    return {"status": "ok" if result.returncode == 0 else "failed", "note": summary.strip("= ")}


def speed_rows(args):
    """train_speed.py's variants, each in its own process."""
    sizes, rows = args.sizes, []
    for amp, channels_last in SPEED_VARIANTS:
        spec = {"model": sizes["model"], "amp": amp, "channels_last": channels_last, "device": args.device,
                "source": sizes["source"], "target": sizes["target"], "iters": 2 if args.dry_run else 20,
                "warmup": 1 if args.dry_run else 5, "budget": 5 if args.dry_run else 0, "threads": 0}
        name = f"speed: {train_speed.variant_name(amp, channels_last)}"
        rows.append(stage(args, name, lambda: speed_row(spec)))
    return rows


def speed_row(spec):
    result = train_speed.measure(spec)
    if "error" in result:
        return {"status": "failed", "note": result["error"]}
    return {"status": "ok", "rate": result["it_s"], "unit": "it/s", "peak_mib": result["peak_mib"],
            "note": f"{result['timed']} timed iterations"}


def sweep_rows(args, data, work):
    """One row per sweep size; also the 1-run sweep's last snapshot (or None)."""
    rows, snapshot = [], None
    for runs in args.sweep:
        folder = work / f"sweep{runs}"
        rows.append(stage(args, f"seed sweep: {runs} train.py", lambda: sweep_row(args, data, folder, runs)))
        if runs == 1 and rows[-1]["status"] == "ok":
            snapshot = folder / "snapshots" / "sweep_seed0" / f"model_{args.sweep_iters}.pth"
        else:
            shutil.rmtree(folder, ignore_errors=True)  # several GB of snapshots
    return rows, snapshot


def sweep_row(args, data, folder, runs):
    """`runs` train.py processes started together, seeds 0..runs-1."""
    children = []
    for seed in range(runs):
        cfg = base_cfg(args, data, folder)
        cfg.EXP_NAME, cfg.TRAIN.RANDOM_SEED = "sweep", seed
        cfg.TRAIN.EARLY_STOP = cfg.TRAIN.SAVE_PRED_EVERY = args.sweep_iters
        path = write_cfg(cfg, folder / f"seed{seed}.yml")
        out, log = folder / f"seed{seed}.json", folder / f"seed{seed}.log"
        children.append((start_timed("train", out, ["--cfg", path, "--exp-suffix", f"seed{seed}"], log), out, log))
    records = [finished(*child) for child in children]
    failed = [r for r in records if r["exit"] != 0]
    if failed:
        return {"status": "failed", "note": f"{len(failed)} of {runs} failed: {failed[0].get('error', '')}"}
    rates = [run_rate([end for _, end in r["stamps"]], args.sweep_warmup) for r in records]
    total, note = aggregate_rate(records, args.sweep_warmup)
    peaks = [round(r["peak_mib"]) for r in records]
    return {"status": "ok" if total else "failed", "rate": total, "unit": "it/s (all runs)",
            "peak_mib": max(peaks), "per_run_it_s": rates, "per_run_peak_mib": peaks,
            "note": note or f"per run: {', '.join(f'{r:.2f}' for r in rates)} it/s; peaks {peaks} MiB"}


def run_rate(ends, warmup):
    """Iterations per second of one run after its first `warmup` iterations."""
    return (len(ends) - warmup) / (ends[-1] - ends[warmup - 1])


def aggregate_rate(records, warmup):
    """(iterations of all runs per second in the window where every run was past its warm-up and
    none had finished, a note) or (None, why not)."""
    ends = [[end for _, end in r["stamps"]] for r in records]
    start, stop = max(e[warmup - 1] for e in ends), min(e[-1] for e in ends)
    done = sum(1 for e in ends for t in e if start < t <= stop)
    if stop <= start or done == 0:
        return None, "the runs did not overlap past their warm-up: raise --sweep-iters"
    return done / (stop - start), ""


def esl_row(args, data, work, snapshot):
    cfg = base_cfg(args, data, work / "esl")
    cfg.ESL.RESTORE_FROM, cfg.ESL.WAIT_MODEL = str(snapshot), False
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(work / "esl" / "labels")
    record = timed_script(args, "esl", write_cfg(cfg, work / "esl" / "esl.yml"))
    if "error" in record:
        return record
    first_forward = record["stamps"][0][0]
    return script_row(record, args.images / (record["end"] - first_forward), "first forward to the end")


def test_row(args, data, work, snapshot):
    cfg = base_cfg(args, data, work / "test")
    cfg.TEST.MODE, cfg.TEST.RESTORE_FROM = "single", (str(snapshot),)
    record = timed_script(args, "test", write_cfg(cfg, work / "test" / "test.yml"))
    if "error" in record:
        return record
    (start, end), = record["stamps"]
    return script_row(record, args.images / (end - start), "the evaluation loop")


def timed_script(args, kind, cfg_path):
    out, log = cfg_path.with_suffix(".json"), cfg_path.with_suffix(".log")
    record = finished(start_timed(kind, out, ["--cfg", cfg_path], log), out, log)
    if record["exit"] != 0:
        return {"status": "failed", "error": record.get("error", ""), "note": record.get("error", "")}
    return record


def script_row(record, rate, what):
    return {"status": "ok", "rate": rate, "unit": "images/s", "peak_mib": record["peak_mib"], "note": what}


def skipped(name, why):
    return {"stage": name, "status": "skipped", "note": why}


# --- the table ---

def environment(args):
    smi = None if args.dry_run else nvidia_smi(args.gpu, "name", "driver_version", "memory.total")
    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {"device": args.device, "gpu": smi[0] if smi else None, "driver": smi[1] if smi else None,
            "gpu_memory_mib": int(smi[2]) if smi else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "dry_run": args.dry_run,
            "nvidia_smi": "skipped (dry run)" if args.dry_run else ("ok" if smi else "not found")}


def print_table(env, rows):
    dry = " -- DRY RUN (CPU, tiny sizes)" if env["dry_run"] else ""
    print(f"GPU check on {env['device']} ({env['gpu'] or 'no GPU'}), driver {env['driver']}, "
          f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}{dry}")
    header = f"{'stage':<32}{'status':<9}{'rate':>10} {'unit':<16}{'peak MiB':>9}{'smi MiB':>9}{'s':>7}  note"
    print(header)
    print("-" * len(header))
    for row in rows:
        rate = f"{row['rate']:>10.2f}" if row.get("rate") is not None else f"{'':>10}"
        peak = f"{row['peak_mib']:>9.0f}" if row.get("peak_mib") is not None else f"{'':>9}"
        smi = f"{row['smi_mib']:>9}" if row.get("smi_mib") is not None else f"{'':>9}"
        seconds = f"{row['seconds']:>7.0f}" if "seconds" in row else f"{'':>7}"
        print(f"{row['stage']:<32}{row['status']:<9}{rate} {row.get('unit', ''):<16}{peak}{smi}{seconds}  "
              f"{row.get('note', '')}")
    if env["dry_run"]:
        print("nvidia-smi columns skipped in a dry run; peak MiB on the CPU is the process's peak RSS")


def run_check(args, work):
    rows = [] if args.skip_tests else test_rows(args)
    rows += speed_rows(args)
    data = write_data(work / "data", args.sizes, args.images)
    sweep, snapshot = sweep_rows(args, data, work)
    rows += sweep
    for name, row in (("esl.py", esl_row), ("test.py", test_row)):
        if snapshot is None:
            rows.append(skipped(name, "no snapshot: the 1-run sweep failed or was not run"))
        else:
            rows.append(stage(args, name, lambda: row(args, data, work, snapshot)))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--timed"]:
        return run_timed(argv[1], argv[2], argv[3:])
    args = get_arguments(argv)
    env = environment(args)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        work = Path(args.work or temporary).resolve()
        rows = run_check(args, work)
    print_table(env, rows)
    json_dump({"environment": env, "rows": rows}, Path(args.out))
    print(f"written: {args.out}")
    return 0 if all(row["status"] != "failed" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
