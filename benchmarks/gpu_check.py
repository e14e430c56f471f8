"""The GPU check: one command a GPU owner runs, one table, also as JSON. Sized to finish within 8
minutes on one GPU (474 s on an H200 without --mps); docs/speed.md shows its latest output.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--gpu 0] [--images 100]
        [--sweep 1 2 4 8] [--sweep-iters 40] [--sweep-warmup 8] [--sweep-amp bf16]
        [--[no-]sweep-channels-last] [--[no-]sweep-cuda-graph] [--mps 4 8]
        [--stages tests speed profile sweep esl test mps] [--skip-tests] [--seed-batch 4 8] [--work DIR]
    python benchmarks/gpu_check.py --dry-run [--out FILE]   # CPU, Tiny model, tiny images, few iterations

In order, each a row of the table (the JSON is rewritten after every row, so a check cut short
keeps what it measured):
  tests        `pytest -m cuda` (tests/test_cuda.py and the other CUDA-marked tests), then the fast
               suite (`-m "not slow and not cuda"`); exit status and pytest's summary line (the
               whole output beside the JSON, in <out>_pytest.log).
  speed        benchmarks/train_speed.py's AdvEnt iteration (train_step on random data, R101 at
               1280x720 / 1024x512, batch 1 + 1) in fp32, fp32 with TF32 off, bf16, fp16,
               bf16 + CHANNELS_LAST, the latter with the cuDNN autotuner, and fp32 and
               bf16 + CHANNELS_LAST with TRAIN.CUDA_GRAPH; each in its own process: it/s and
               torch.cuda.max_memory_allocated (warm-up and graph capture included).
               --seed-batch N ...: also the fastest setting with N seeds computed as one network
               (seed_batching.py), its rate in seed-iterations per second (not run by default:
               about 40 s a row with R101, which the 8 minutes leave no room for).
  profile      torch.profiler over 3 eager iterations of bf16 + CHANNELS_LAST: the share of the
               wall time the GPU ran kernels, and the operators and (operator, input shapes) that
               took the most kernel time (<out>_profile.txt).
  seed sweep   1, 2, 4 and 8 train.py runs started together on the GPU (the paper's settings: R101,
               AdvEnt multi-level, 1280x720 / 1024x512, in the fastest setting: --sweep-amp
               (default bf16), CHANNELS_LAST and TRAIN.CUDA_GRAPH; random initial weights), each
               with its own --exp-suffix and TRAIN.RANDOM_SEED, on GTA5 (1914x1052) and Cityscapes
               (2048x1024) images written in the real formats (tests/fake_data.py; random pixels,
               which decode slower than photographs). Per run: its iterations/s after
               --sweep-warmup iterations, from its own loop (loaders included), and its
               torch.cuda.max_memory_allocated; the aggregate counts every run's iterations in the
               window where all of them were past their warm-up and none had finished (each run
               waits after its warm-up until all are past theirs, so that window exists however
               unevenly they started). The 1-run sweep is train.py end to end; its note compares
               its loop with the step alone (the speed row of the same setting).
               --mps N ...: the same for N runs under an MPS daemon the check starts (and stops),
               which lets the runs' kernels share the GPU at once instead of by time slices.
  esl.py       over the --images target training images, from the 1-run sweep's snapshot:
               images/s from its first forward to its end (thresholds and PNG writing included),
               and the share of that time spent in the forwards.
  test.py      'single' mode over the --images validation images at 2048x1024: images/s of its
               evaluation loop (loader, forward, upsampling, confusion matrix).
Every row also shows the most GPU memory nvidia-smi reported in use during it and the GPU's mean
utilisation (the share of time a kernel ran; the whole GPU, polled every 0.2 s: other users of the
GPU count too), and its seconds.

--dry-run runs the same steps on the CPU at tiny sizes with the Tiny model (the suites are only
collected, the sweep is 1 and 2 runs, the CUDA-graph row is skipped, nvidia-smi is skipped), so
that a test can keep the script working where no GPU is (tests/test_gpu_check.py).
"""
import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed (benchmarks/ is no package)
import train_speed  # noqa: E402

from advent import PROJECT_ROOT  # noqa: E402
from advent.config import get_default_cfg  # noqa: E402
from advent.utils.cli import (  # noqa: E402
    ArgumentParser, description, device, non_empty_path, non_negative, number, positive,
)
from advent.utils.errors import UserError  # noqa: E402
from advent.utils.output_dir import check_writable  # noqa: E402
from advent.utils.runtime import run_main  # noqa: E402
from advent.utils.serialization import json_dump, json_load, text_dump, yaml_dump  # noqa: E402

PAPER = {"model": "DeepLabv2", "gta": (1914, 1052), "cityscapes": (2048, 1024), "source": (1280, 720),
         "target": (1024, 512), "test_output": (2048, 1024)}
TINY = {"model": "DeepLabv2-Tiny", "gta": (96, 52), "cityscapes": (64, 32), "source": (64, 32),
        "target": (64, 32), "test_output": (64, 32)}
FASTEST = {"amp": "bf16", "channels_last": True, "cuda_graph": True}
# a speed row: TRAIN.AMP, CHANNELS_LAST, TF32, CUDNN_BENCHMARK, TRAIN.CUDA_GRAPH, seeds batched
Variant = namedtuple("Variant", "amp channels_last tf32 cudnn_benchmark cuda_graph seeds", defaults=(1,))
SPEED_VARIANTS = (Variant("none", False, True, False, False), Variant("none", False, False, False, False),
                  Variant("bf16", False, True, False, False), Variant("fp16", False, True, False, False),
                  Variant("bf16", True, True, False, False), Variant("bf16", True, True, True, False),
                  Variant("none", False, True, False, True), Variant("bf16", True, True, False, True))
WRITER = "gpu_check.py"
STAGES = ("tests", "speed", "profile", "sweep", "esl", "test", "mps")
PROFILED_ITERS = 3  # the profiler slows the iterations about 2x (5 took 42 s with R101)
BARRIER_ENV = "GPU_CHECK_BARRIER"  # the sweep's start line for its runs' timed iterations (run_timed)
BARRIER_TIMEOUT_S = 120  # longer than any start-up skew of the runs
CHILD_TIMEOUT_S = 300  # a child (a timed script, a speed variant) still running after this is killed
# the function each timed script runs per unit of work: (its module, its name, whether that name
# is a factory whose result is the function: train_UDA.make_step gives train.py's step function)
TIMED = {"train": ("advent.domain_adaptation.train_UDA", "make_step", True),
         "esl": ("advent.domain_adaptation.esl_UDA", "main_logits", False),
         "test": ("advent.domain_adaptation.eval_UDA", "evaluate", False)}


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--out", default="gpu_check.json", type=non_empty_path, help="the table as JSON (default gpu_check.json)")
    parser.add_argument("--gpu", type=non_negative, default=0, help="the GPU (GPU_ID, nvidia-smi -i)")
    parser.add_argument("--images", type=positive, default=None, help="target train and val images (default 100)")
    parser.add_argument("--sweep", type=positive, nargs="+", default=None, help="concurrent runs (default 1 2 4 8)")
    parser.add_argument("--sweep-iters", type=number(int, 2), default=None, help="iterations per run (default 40)")
    parser.add_argument("--sweep-warmup", type=positive, default=None, help="untimed first iterations (default 8)")
    parser.add_argument("--sweep-amp", choices=("none", "bf16", "fp16"), default=FASTEST["amp"],
                        help="TRAIN.AMP of the sweep's runs (default bf16)")
    parser.add_argument("--sweep-channels-last", action=argparse.BooleanOptionalAction,
                        default=FASTEST["channels_last"], help="CHANNELS_LAST in the sweep's runs (default on)")
    parser.add_argument("--sweep-cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="TRAIN.CUDA_GRAPH in the sweep's runs (default: on with a GPU, except with fp16)")
    parser.add_argument("--mps", type=positive, nargs="*", default=[], metavar="N",
                        help="also sweep N runs under an MPS daemon (GPU only)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the parts to run (default: all; esl and test need the 1-run sweep)")
    parser.add_argument("--skip-tests", action="store_true",
                        help="leave out the two test rows (--stages without tests)")
    parser.add_argument("--seed-batch", type=number(int, 2), nargs="*", default=[], metavar="N",
                        help="also speed rows of N seeds batched in one network (seed_batching.py)")
    parser.add_argument("--work", default=None, type=non_empty_path, help="folder for the data and runs (default: a temporary one)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, few iterations")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.sizes = TINY if dry else PAPER
    args.device = "cpu" if dry else f"cuda:{args.gpu}"
    try:
        device(args.device)  # before any work: this machine has that GPU
    except argparse.ArgumentTypeError as error:
        parser.error(f"--gpu {args.gpu}: {error} (--dry-run runs the same steps on the CPU, at tiny sizes)")
    args.images = args.images or (4 if dry else 100)  # target train and val images each
    args.sweep = list(dict.fromkeys(args.sweep or ([1, 2] if dry else [1, 2, 4, 8])))  # each size once
    args.mps = list(dict.fromkeys(args.mps))
    if args.sweep_cuda_graph is None:
        args.sweep_cuda_graph = FASTEST["cuda_graph"] and not dry and args.sweep_amp != "fp16"  # train.py refuses fp16
    # enough iterations that runs started together overlap past their warm-up, whatever their start-up
    args.sweep_iters = args.sweep_iters or (3 if dry else 40)
    args.sweep_warmup = args.sweep_warmup if args.sweep_warmup is not None else (1 if dry else 8)
    if not 1 <= args.sweep_warmup < args.sweep_iters:
        parser.error("--sweep-warmup must be at least 1 and below --sweep-iters")
    if dry and args.mps:
        parser.error("--mps needs a GPU (not with --dry-run)")
    if args.skip_tests:
        args.stages = [name for name in args.stages if name != "tests"]
    return args


def beside_out(args, suffix):
    """A file written beside the JSON: <out>_pytest.log, <out>_profile.txt."""
    return Path(args.out).with_name(Path(args.out).stem + suffix)


def check_outputs(args):
    """Before any work: the files the check writes are new or its own (a user's file of the same
    name is refused, not replaced; output_dir.check_writable), and --work is a new or empty folder."""
    work = Path(args.work) if args.work else None
    if work and (work.is_symlink() or work.exists()) and not (work.is_dir() and not any(work.iterdir())):
        raise UserError(f"--work {work} is not a new or empty folder (the check writes its data and runs there)")
    if work:
        check_writable([work / "data"], WRITER, "--work")  # no file stands where its folders go
    files = [Path(args.out)] + [beside_out(args, suffix) for stage, suffix in
                                (("tests", "_pytest.log"), ("profile", "_profile.txt")) if stage in args.stages]
    check_writable(files, WRITER, "--out")


# --- nvidia-smi ---

def smi_gpu(gpu):
    """nvidia-smi's name (-i) for the GPU that CUDA numbers `gpu`. nvidia-smi ignores
    CUDA_VISIBLE_DEVICES and numbers the GPUs in PCI bus order, so the check runs its children with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (main) and maps the index through CUDA_VISIBLE_DEVICES."""
    visible = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return visible[gpu] if gpu < len(visible) else str(gpu)


def nvidia_smi(gpu, *fields):
    """The values of nvidia-smi --query-gpu `fields` for CUDA's GPU `gpu`, as strings; None without
    nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                              "-i", smi_gpu(gpu)], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [value.strip() for value in out.strip().split(",")]


def smi_number(text):
    """A number nvidia-smi printed, or None for '[N/A]' (MIG instances, some virtual GPUs)."""
    try:
        return float(text)
    except ValueError:
        return None


class SmiPoller:
    """While the `with` block runs: the most GPU memory nvidia-smi reports in use (MiB) and the mean
    GPU utilisation (%); both None when off or without nvidia-smi."""

    def __init__(self, gpu, enabled):
        self.gpu, self.enabled, self.peak, self.utilisation = gpu, enabled, None, []
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.wait(0.2):
            memory, utilisation = map(smi_number, nvidia_smi(self.gpu, "memory.used", "utilization.gpu") or ("", ""))
            if memory is not None:
                self.peak = max(self.peak or 0, int(memory))
            if utilisation is not None:
                self.utilisation.append(utilisation)

    @property
    def mean_utilisation(self):
        return round(sum(self.utilisation) / len(self.utilisation)) if self.utilisation else None

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()


def timed_row(args, name, make_row):
    """Run `make_row()` (a dict of row fields) under the poller; the row, with its seconds and the
    GPU's footprint and mean utilisation. An exception fails the row, not the check."""
    start = time.monotonic()
    with SmiPoller(args.gpu, not args.dry_run) as poller:
        try:
            row = make_row()
        except Exception as error:  # noqa: BLE001 -- a broken row must not cost the others
            row = {"status": "failed", "note": f"{type(error).__name__}: {error}"[:300]}
    return {"stage": name, **row, "seconds": round(time.monotonic() - start, 1), "smi_mib": poller.peak,
            "gpu_util": poller.mean_utilisation}


# --- a script run, timed from inside (the child process) ---

def run_timed(kind, out, argv):
    """Run train.py / esl.py / test.py (`kind`) on `argv` in this process, recording the start and end
    (time.monotonic: comparable between processes) of each call of its unit of work (TIMED) and its
    peak memory into the JSON file `out`. With BARRIER_ENV set (the sweep), it waits there after its
    warm-up calls until every run of the sweep is past its own (`wait_at_barrier`)."""
    module, name, factory = TIMED[kind]
    target = importlib.import_module(module)
    original, stamps = getattr(target, name), []
    barrier = json.loads(os.environ[BARRIER_ENV]) if BARRIER_ENV in os.environ else None

    def timed(function):
        def call(*a, **k):
            start = time.monotonic()
            result = function(*a, **k)
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()  # the work done, not only queued
            stamps.append((start, time.monotonic()))
            if barrier and len(stamps) == barrier["after"]:
                wait_at_barrier(barrier["folder"], barrier["runs"], barrier["timeout"])
                stamps[-1] = (start, time.monotonic())  # the warm-up ends when the timed part starts
            return result
        return call

    setattr(target, name, (lambda *a, **k: timed(original(*a, **k))) if factory else timed(original))
    code = 0
    try:
        run_main(importlib.import_module(f"advent.scripts.{kind}").main, argv)
    except SystemExit as stop:
        code = stop.code
    cuda = torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else train_speed.peak_rss_mib()
    json_dump({"exit": code, "stamps": stamps, "end": time.monotonic(), "peak_mib": peak,
               "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss"}, out)
    return code


def wait_at_barrier(folder, runs, timeout):
    """Say that this run is past its warm-up (a file in `folder`), then wait until all `runs` are
    (or `timeout` s pass): so the timed iterations of the runs of a sweep overlap however unevenly
    they started, which the aggregate rate needs."""
    folder = Path(folder)
    (folder / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.ready"))) < runs and time.monotonic() < deadline:
        time.sleep(0.01)


def start_timed(kind, out, argv, log, env=None):
    """A child process running `run_timed`, its output into the file `log`."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, __file__, "--timed", kind, str(out), *map(str, argv)],
                                stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)


def finished(process, out, log, deadline):
    """The child's JSON record once it ended, or {'exit': code, 'error': the last log line}; a
    child still running at `deadline` (time.monotonic) is killed."""
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"exit": -9, "error": "killed at its deadline"}
    if code == 0 and Path(out).is_file():
        return json_load(out)
    lines = Path(log).read_text(errors="replace").strip().splitlines() or ["no output"]
    return {"exit": code, "error": lines[-1][-300:]}


# --- the data and the configs ---

def _write_city(root, split, city, per_city, size, seed):
    from fake_data import write_cityscapes

    write_cityscapes(root, split, (city,), per_city, size, seed=seed)


def write_data(root, sizes, images):
    """GTA5 (8 images) and Cityscapes train / val (`images` each, in 8 cities written in parallel)
    in the real formats; {cfg key: value}."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from fake_data import cityscapes_names, write_gta5, write_list

    gta = write_gta5(root / "GTA5", 8, size=sizes["gta"], seed=1)
    cityscapes = root / "Cityscapes"
    cities = {"train": ["aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg"],
              "val": ["frankfurt", "lindau", "munster", "berlin", "bielefeld", "bonn", "leverkusen", "mainz"]}
    counts = [images // 8 + (i < images % 8) for i in range(8)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_write_city, cityscapes, split, city, count, sizes["cityscapes"], seed)
                for split, names in cities.items() for seed, (city, count) in enumerate(zip(names, counts))
                if count]
        for job in jobs:
            job.result()
    for split, names in cities.items():  # each writer wrote its own city's list: the whole split's
        write_list(cityscapes / "lists" / f"{split}.txt",
                   [name for city, count in zip(names, counts) for name in cityscapes_names((city,), count)])
    return {"DATA_DIRECTORY_SOURCE": str(gta.root), "DATA_LIST_SOURCE": gta.list_template,
            "DATA_DIRECTORY_TARGET": str(cityscapes), "DATA_LIST_TARGET": str(cityscapes / "lists" / "{}.txt")}


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
    log, logged = beside_out(args, "_pytest.log"), []
    for name, marks in (("tests: -m cuda", "cuda"), ("tests: fast suite", "not slow and not cuda")):
        command = [sys.executable, "-m", "pytest", "-q", "-m", marks, "tests"]
        command += ["--collect-only"] if args.dry_run else []
        yield timed_row(args, name, lambda: pytest_row(command, log, logged, None if args.dry_run else args.gpu))


def pytest_row(command, log, logged, gpu=None):
    """pytest's `command` (on CUDA's GPU `gpu` alone, as the tests' cuda:0); its row."""
    try:
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": smi_gpu(gpu)} if gpu is not None else None)
    except subprocess.TimeoutExpired as error:
        add_output(log, logged, command, error.stdout)
        return {"status": "failed", "note": f"killed after {CHILD_TIMEOUT_S} s"}
    add_output(log, logged, command, result.stdout + result.stderr)
    summary = ([line for line in result.stdout.splitlines() if line.strip()] or ["no output"])[-1]
    return {"status": "ok" if result.returncode == 0 else "failed", "note": summary.strip("= ")}


def add_output(log, logged, command, output):
    """`command` and its output added to `logged` (a timed-out run's output is bytes), all of
    which is then (re)written to the file `log`."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    logged.append(f"$ {' '.join(command)}\n{output or ''}\n")
    text_dump("".join(logged), log, WRITER)


def speed_spec(args, amp, channels_last, tf32=True, cudnn_benchmark=False, cuda_graph=False, seeds=1, profile=0):
    sizes = args.sizes
    return {"model": sizes["model"], "amp": amp, "channels_last": channels_last, "tf32": tf32,
            "cudnn_benchmark": cudnn_benchmark, "cuda_graph": cuda_graph, "seeds": seeds, "profile": profile,
            "device": args.device, "source": sizes["source"], "target": sizes["target"],
            "iters": 2 if args.dry_run else 15, "warmup": 1 if args.dry_run else 3,
            "budget": 5 if args.dry_run else 0, "threads": 0}


def speed_rows(args):
    """train_speed.py's variants, each in its own process (the CUDA graph needs a GPU)."""
    graph = FASTEST["cuda_graph"] and not args.dry_run
    fastest = [Variant(FASTEST["amp"], FASTEST["channels_last"], True, False, graph, seeds) for seeds in args.seed_batch]
    for variant in (*SPEED_VARIANTS, *fastest):
        name = f"speed: {train_speed.variant_name(*variant)}"
        if variant.cuda_graph and args.dry_run:
            yield skipped(name, "CUDA only")
            continue
        yield timed_row(args, name, lambda: speed_row(speed_spec(args, *variant)))


def speed_row(spec):
    result = train_speed.measure(spec, timeout=CHILD_TIMEOUT_S)
    if "error" in result:
        return {"status": "failed", "note": result["error"]}
    return {"status": "ok", "rate": result["it_s"], "unit": "it/s", "peak_mib": result["peak_mib"],
            "note": f"{result['timed']} timed iterations"}


def profile_row(args):
    """Eager bf16 + CHANNELS_LAST under torch.profiler (where the host's launches leave the GPU
    idle); its tables into <out>_profile.txt."""
    result = train_speed.measure(speed_spec(args, "bf16", True, profile=PROFILED_ITERS), timeout=CHILD_TIMEOUT_S)
    if "error" in result:
        return {"status": "failed", "note": result["error"]}
    profile = result["profile"]
    path = beside_out(args, "_profile.txt")
    text_dump(profile["tables"] + "\n", path, WRITER)
    return {"status": "ok", "rate": 1e3 / profile["wall_ms_per_iter"], "unit": "it/s (profiled)",
            "peak_mib": result["peak_mib"], "busy_share": profile["busy_share"],
            "note": f"kernels {profile['kernel_ms_per_iter']:.1f} of {profile['wall_ms_per_iter']:.1f} ms per "
                    f"iteration ({profile['busy_share']:.0%} busy); tables: {path.name}"}


def sweep_rows(args, data, work, state):
    """One row per sweep size; the 1-run sweep's last snapshot goes into state['snapshot']."""
    for runs in args.sweep:
        folder = work / f"sweep{runs}"
        row = timed_row(args, f"seed sweep: {runs} train.py", lambda: sweep_row(args, data, folder, runs))
        if runs == 1 and row["status"] == "ok":
            state["snapshot"] = folder / "snapshots" / "sweep_seed0" / f"model_{args.sweep_iters}.pth"
        else:
            shutil.rmtree(folder, ignore_errors=True)  # several GB of snapshots
        yield row


def mps_rows(args, data, work):
    """One row per --mps size: the sweep under an MPS daemon."""
    for runs in args.mps:
        name = f"seed sweep: {runs} train.py (MPS)"
        with mps_daemon(work / "mps") as mps:
            if mps.get("error"):
                yield skipped(name, mps["error"])
                continue
            folder = work / f"sweep{runs}_mps"
            # a shorter deadline: clients of a daemon that does not work may hang
            row = timed_row(args, name, lambda: sweep_row(args, data, folder, runs, mps["env"], CHILD_TIMEOUT_S / 2))
            shutil.rmtree(folder, ignore_errors=True)
            yield row


@contextlib.contextmanager
def mps_daemon(folder):
    """An MPS control daemon for the `with` block (its pipe and log folders under `folder`): yields
    {'env': what its clients need} or {'error': why none started}."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}

    def control(text=None, *options):
        return subprocess.run(["nvidia-cuda-mps-control", *options], input=text, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=30)

    if shutil.which("nvidia-cuda-mps-control") is None:
        yield {"error": "no nvidia-cuda-mps-control on the PATH"}
        return
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    result = control(None, "-d")
    if result.returncode != 0:
        yield {"error": f"the MPS daemon did not start: {(result.stderr or result.stdout).strip()[:200]}"}
        return
    try:
        yield {"env": env}
    finally:
        control("quit\n")


def sweep_row(args, data, folder, runs, env=None, timeout=CHILD_TIMEOUT_S):
    """`runs` train.py processes started together, seeds 0..runs-1 (killed after `timeout` s)."""
    children = []
    deadline = time.monotonic() + timeout
    barrier = folder / "barrier"
    barrier.mkdir(parents=True)
    # a run that fails before the barrier holds the others there at most BARRIER_TIMEOUT_S
    env = {**(env or {}), BARRIER_ENV: json.dumps({"folder": str(barrier), "runs": runs, "after": args.sweep_warmup,
                                                   "timeout": min(timeout, BARRIER_TIMEOUT_S)})}
    for seed in range(runs):
        cfg = base_cfg(args, data, folder)
        cfg.EXP_NAME, cfg.TRAIN.RANDOM_SEED = "sweep", seed
        cfg.TRAIN.AMP, cfg.CHANNELS_LAST = args.sweep_amp, args.sweep_channels_last
        cfg.TRAIN.CUDA_GRAPH = args.sweep_cuda_graph
        cfg.TRAIN.EARLY_STOP = cfg.TRAIN.SAVE_PRED_EVERY = args.sweep_iters
        path = write_cfg(cfg, folder / f"seed{seed}.yml")
        out, log = folder / f"seed{seed}.json", folder / f"seed{seed}.log"
        process = start_timed("train", out, ["--cfg", path, "--exp-suffix", f"seed{seed}"], log, env)
        children.append((process, out, log))
    records = [finished(*child, deadline) for child in children]
    failed = [r for r in records if r["exit"] != 0]
    if failed:
        return {"status": "failed", "note": f"{len(failed)} of {runs} failed: {failed[0].get('error', '')}"}
    rates = [run_rate([end for _, end in r["stamps"]], args.sweep_warmup) for r in records]
    total, note = aggregate_rate(records, args.sweep_warmup)
    peaks = [round(r["peak_mib"]) for r in records]
    shares = [step_share(r["stamps"], args.sweep_warmup) for r in records]
    return {"status": "ok" if total else "failed", "rate": total, "unit": "it/s (all runs)",
            "peak_mib": max(peaks), "per_run_it_s": rates, "per_run_peak_mib": peaks, "step_share": min(shares),
            "note": note or f"per run: {', '.join(f'{r:.2f}' for r in rates)} it/s; peaks {peaks} MiB"}


def run_rate(ends, warmup):
    """Iterations per second of one run after its first `warmup` iterations."""
    return (len(ends) - warmup) / (ends[-1] - ends[warmup - 1])


def step_share(stamps, warmup):
    """The share of a run's time after its warm-up spent inside its iterations' step (the rest:
    waiting for the loaders, reporting, snapshots)."""
    timed = stamps[warmup:]
    return sum(end - start for start, end in timed) / (timed[-1][1] - stamps[warmup - 1][1])


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
    record = timed_script("esl", write_cfg(cfg, work / "esl" / "esl.yml"))
    if "error" in record:
        return record
    stamps = record["stamps"]
    elapsed = record["end"] - stamps[0][0]
    forwards = sum(end - start for start, end in stamps) / elapsed
    return script_row(record, args.images / elapsed, f"first forward to the end; {forwards:.0%} in the forwards")


def test_row(args, data, work, snapshot):
    cfg = base_cfg(args, data, work / "test")
    cfg.TEST.MODE, cfg.TEST.RESTORE_FROM = "single", (str(snapshot),)
    record = timed_script("test", write_cfg(cfg, work / "test" / "test.yml"))
    if "error" in record:
        return record
    (start, end), = record["stamps"]
    return script_row(record, args.images / (end - start), "the evaluation loop")


def timed_script(kind, cfg_path):
    out, log = cfg_path.with_suffix(".json"), cfg_path.with_suffix(".log")
    record = finished(start_timed(kind, out, ["--cfg", cfg_path], log), out, log,
                      time.monotonic() + CHILD_TIMEOUT_S)
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
            "gpu_memory_mib": smi_number(smi[2]) if smi else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "cpus": os.cpu_count(), "dry_run": args.dry_run,
            "nvidia_smi": "skipped (dry run)" if args.dry_run else ("ok" if smi else "not found")}


def format_row(row):
    def cell(key, width, spec=""):
        value = row.get(key)
        return f"{'' if value is None else format(value, spec):>{width}}"

    return (f"{row['stage']:<48}{row['status']:<8}{cell('rate', 10, '.2f')} {row.get('unit', ''):<16}"
            f"{cell('peak_mib', 9, '.0f')}{cell('smi_mib', 9)}{cell('gpu_util', 5)}{cell('seconds', 6, '.0f')}  "
            f"{row.get('note', '')}")


def print_table(env, rows):
    dry = " -- DRY RUN (CPU, tiny sizes)" if env["dry_run"] else ""
    print(f"GPU check on {env['device']} ({env['gpu'] or 'no GPU'}), driver {env['driver']}, "
          f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['cpus']} CPUs{dry}")
    header = (f"{'stage':<48}{'status':<8}{'rate':>10} {'unit':<16}{'peak MiB':>9}{'smi MiB':>9}{'util%':>5}{'s':>6}"
              "  note")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_row(row))
    if env["dry_run"]:
        print("nvidia-smi columns skipped in a dry run; peak MiB on the CPU is the process's peak RSS")


def with_loop_comparison(row, speed):
    """The 1-run sweep's row, its note saying how its loop compares with train_step alone."""
    if row["status"] == "ok" and speed.get("rate"):
        row["loop_vs_step"] = row["rate"] / speed["rate"]
        row["note"] += (f"; loop at {row['loop_vs_step']:.0%} of {speed['stage'][7:]} steps alone, "
                        f"{row['step_share']:.0%} of its time in the steps")
    return row


def check_rows(args, work):
    """The rows of the --stages asked for, each yielded as soon as it is measured."""
    stages = set(args.stages)
    if "tests" in stages:
        yield from test_rows(args)
    speed = {}
    for row in speed_rows(args) if "speed" in stages else ():
        speed[row["stage"]] = row
        yield row
    if "profile" in stages:
        yield timed_row(args, "profile: bf16 + channels_last", lambda: profile_row(args))
    if not stages & {"sweep", "esl", "test", "mps"}:
        return
    data = write_data(work / "data", args.sizes, args.images)
    state = {"snapshot": None}
    same = "speed: " + train_speed.variant_name(args.sweep_amp, args.sweep_channels_last,
                                                 cuda_graph=args.sweep_cuda_graph)
    for row in sweep_rows(args, data, work, state) if "sweep" in stages else ():
        yield with_loop_comparison(row, speed.get(same, {})) if row["stage"] == "seed sweep: 1 train.py" else row
    for name, make in (("esl.py", esl_row), ("test.py", test_row)):
        if name[:-3] not in stages:
            continue
        if state["snapshot"] is None:
            yield skipped(name, "no snapshot: the 1-run sweep failed or was not run")
        else:
            yield timed_row(args, name, lambda: make(args, data, work, state["snapshot"]))
    if "mps" in stages:
        yield from mps_rows(args, data, work)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--timed"]:
        return run_timed(argv[1], argv[2], argv[3:])
    args = parse_args(argv)
    check_outputs(args)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # the children's GPU numbers as nvidia-smi's (smi_gpu)
    env, rows = environment(args), []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        work = Path(args.work or temporary).resolve()
        for row in check_rows(args, work):
            rows.append(row)
            print(format_row(row), flush=True)
            json_dump({"environment": env, "rows": rows}, Path(args.out), WRITER)
    print()
    print_table(env, rows)
    print(f"written: {args.out}")
    return 0 if all(row["status"] != "failed" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
