"""Benchmark of training speed and peak memory: fp32 against mixed precision (TRAIN.AMP bf16 / fp16),
each also with CHANNELS_LAST when asked.

    python benchmarks/train_speed.py            # CUDA: R101 at 1280x720 (source) / 1024x512 (target)
                                                # CPU: Tiny and R101 at 256x128
    python benchmarks/train_speed.py [--device cpu|cuda] [--models DeepLabv2 ...] [--iters 20]
        [--warmup N] [--budget SECONDS] [--rounds N] [--source-size W H] [--target-size W H]
        [--modes none bf16 fp16] [--channels-last] [--cuda-graph] [--seed-batch N ...] [--threads N]

What is timed: one AdvEnt iteration as train.py runs it (`train_UDA.make_step`: source and
target segmenter passes, multi-level, both discriminators frozen then trained, the faithful
repeated-SGD optimiser, the GradScaler with fp16; with --cuda-graph, steps (1)-(3) replayed from
a CUDA graph after the first iteration), batch 1 + 1, on random images and labels of the
given sizes and random weights. With --seed-batch N, each variant also runs as N runs (seeds)
computed as one network (seed_batching.py), on batches of N + N; its speed is then counted in
seed-iterations per second (N per iteration), to compare with N runs in turn. Every variant runs
in a fresh subprocess, one after the other in the same invocation, so that its peak memory is its
own; with --rounds N the list of variants is run N times, interleaved, and the median (and range)
of the speeds is shown, which evens out a machine whose load changes. --budget stops timing a variant after that many seconds (once at
least one iteration is timed): some CPU kernels for half precision are very slow. Printed:
iterations per second and peak memory, each also as a ratio to fp32 of the same model (and a
seed-batched variant's speed as a ratio to that variant with one seed: 'x 1 seed').

Peak memory: CUDA: torch.cuda.max_memory_allocated over the whole variant, warm-up included (the
cuDNN autotuner's trials, a CUDA graph's capture), tensors only, not the caching allocator's
reserve (max_memory_reserved, in the JSON) or the CUDA context; CPU: the process's peak resident
set size (ru_maxrss) above what it held before the networks were built.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from advent.config import MODELS
from advent.utils.cli import ArgumentParser, MAX_IMAGE_SIDE, description, device, non_negative, number, positive
from advent.utils.runtime import run_main

MODES = ("none", "bf16", "fp16")
LABEL = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}
side = number(int, 1, MAX_IMAGE_SIDE)  # an image side, in pixels


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help="default: DeepLabv2 (R101) on CUDA; DeepLabv2-Tiny and DeepLabv2 on the CPU")
    parser.add_argument("--source-size", type=side, nargs=2, default=None, metavar=("W", "H"),
                        help="default: 1280 720 on CUDA (the paper's), 256 128 on the CPU")
    parser.add_argument("--target-size", type=side, nargs=2, default=None, metavar=("W", "H"),
                        help="default: 1024 512 on CUDA (the paper's), 256 128 on the CPU")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="TRAIN.AMP values to compare (default: none and those the device supports)")
    parser.add_argument("--channels-last", action="store_true", help="also run each mode with CHANNELS_LAST")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also run each variant with TRAIN.CUDA_GRAPH (CUDA; not with fp16)")
    parser.add_argument("--seed-batch", type=number(int, 2), nargs="+", default=[], metavar="N",
                        help="also run each variant with N seeds batched in one network (seed_batching.py)")
    parser.add_argument("--iters", type=positive, default=None, help="timed iterations (default 20 CUDA, 5 CPU)")
    parser.add_argument("--warmup", type=positive, default=None,
                        help="untimed first iterations (default 5 CUDA, 2 CPU)")
    parser.add_argument("--budget", type=number(float, 0), default=0,
                        help="seconds of timing per variant after which it stops (at least one "
                             "iteration; 0: no limit)")
    parser.add_argument("--rounds", type=positive, default=1, help="run the list of variants this many times")
    parser.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a variant, in the subprocess
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = args.models or (["DeepLabv2"] if cuda else ["DeepLabv2-Tiny", "DeepLabv2"])
    if args.cuda_graph and not cuda:
        parser.error(f"--cuda-graph needs a CUDA device (--device is {args.device})")
    args.source_size = tuple(args.source_size or ((1280, 720) if cuda else (256, 128)))
    args.target_size = tuple(args.target_size or ((1024, 512) if cuda else (256, 128)))
    args.modes = args.modes or supported_modes(args.device)
    args.iters = args.iters or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    return args


def supported_modes(device):
    """fp32, and the autocast types the device runs: bf16 needs an Ampere or newer GPU."""
    from advent.utils.cuda_flags import bf16_supported

    if device.startswith("cuda") and not bf16_supported(device):
        return ["none", "fp16"]
    return list(MODES)


# --- one variant (in its own process) ---

def training_cfg(spec):
    from advent.config import get_default_cfg

    cfg = get_default_cfg()
    cfg.TRAIN.MODEL, cfg.TRAIN.AMP, cfg.CHANNELS_LAST = spec["model"], spec["amp"], spec["channels_last"]
    cfg.TF32 = spec.get("tf32", cfg.TF32)
    cfg.CUDNN_BENCHMARK = spec.get("cudnn_benchmark", cfg.CUDNN_BENCHMARK)
    cfg.TRAIN.CUDA_GRAPH = spec.get("cuda_graph", cfg.TRAIN.CUDA_GRAPH)
    cfg.TRAIN.INPUT_SIZE_SOURCE, cfg.TRAIN.INPUT_SIZE_TARGET = tuple(spec["source"]), tuple(spec["target"])
    cfg.TRAIN.DA_METHOD, cfg.TRAIN.MULTI_LEVEL = "AdvEnt", True
    return cfg


def random_batch(size, device, channels_last, generator, batch=1):
    from advent.utils.runtime import memory_format

    width, height = size
    images = torch.randn(batch, 3, height, width, generator=generator) * 60
    labels = torch.randint(0, 19, (batch, height, width), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    return images.to(device, memory_format=memory_format(channels_last)), labels.to(device)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(spec):
    """{'it_s', 'peak_mib'} of `spec` (model, amp, channels_last, sizes, device, iters, warmup,
    seeds); with seeds N > 1, it_s counts seed-iterations (N per iteration)."""
    from advent.domain_adaptation.train_UDA import build_setup, make_step
    from advent.utils.cuda_flags import set_cuda_flags

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)  # as train.py: its streams, graph and memory counters on that GPU
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = training_cfg(spec)
    set_cuda_flags(cfg.TF32, cfg.CUDNN_BENCHMARK)  # as train.py sets them
    seeds = spec.get("seeds", 1)
    generator = torch.Generator().manual_seed(0)
    src = random_batch(cfg.TRAIN.INPUT_SIZE_SOURCE, device, cfg.CHANNELS_LAST, generator, seeds)
    trg = random_batch(cfg.TRAIN.INPUT_SIZE_TARGET, device, cfg.CHANNELS_LAST, generator, seeds)
    rss_before = peak_rss_mib()
    torch.manual_seed(0)
    if seeds > 1:
        from seed_batching import seed_batched_setup

        setup = seed_batched_setup(cfg, device, seeds)
    else:
        setup = build_setup(cfg, device)
    setup.model.train()
    one_iteration = make_step(setup, cfg)  # as train.py runs it (TRAIN.CUDA_GRAPH: graphed from the 2nd)

    def step(i_iter):
        return one_iteration(src, trg, i_iter)

    timed, elapsed = time_steps(step, spec["warmup"], spec["iters"], spec["budget"] or float("inf"), device)
    # the whole variant's peak, warm-up included: the autotuner's trials, a graph's capture
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else peak_rss_mib() - rss_before
    result = {"it_s": timed * seeds / elapsed, "timed": timed, "peak_mib": peak,
              "reserved_mib": torch.cuda.max_memory_reserved(device) / 2 ** 20 if cuda else None}
    if spec.get("profile"):
        result["profile"] = profile_steps(step, spec["profile"], device)
    return result


def time_steps(step, warmup, iters, budget, device):
    """(timed iterations, their seconds): `warmup` untimed calls of `step(i_iter)` (one only when
    slow), then `iters` timed ones, or fewer past `budget` seconds (at least one)."""
    start = time.perf_counter()
    for i_iter in range(max(1, warmup)):
        step(i_iter)
        if time.perf_counter() - start > budget / 4:
            break  # a slow variant: one warm-up iteration is enough
    if device.type == "cuda":  # the warm-up's kernels done before the clock starts
        torch.cuda.synchronize(device)
    start, timed = time.perf_counter(), 0
    while timed < iters and (timed == 0 or time.perf_counter() - start < budget):
        step(1000 + timed)  # includes one device sync (the losses)
        timed += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return timed, time.perf_counter() - start


def device_time_us(event):
    """An event's own kernel time in microseconds (the attribute's name changed across torch versions)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def sorted_table(averages, sorts, rows):
    """The profiler's table sorted by the first of `sorts` this torch knows (else by CPU time)."""
    for sort in (*sorts, "self_cpu_time_total"):
        try:
            return averages.table(sort_by=sort, row_limit=rows)
        except (AttributeError, KeyError, ValueError):
            continue
    return ""


def profile_steps(step, iters, device):
    """torch.profiler over `iters` steps: the wall time, the kernel time (its share is how busy
    the GPU was) and the operators and (operator, input shapes) that took the most kernel time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        for i_iter in range(iters):
            step(2000 + i_iter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    averages = prof.key_averages()
    # the kernels' own rows (an operator's row repeats the time of the kernels it launched)
    kernel_us = sum(device_time_us(e) for e in averages if e.device_type != torch.autograd.DeviceType.CPU)
    sorts = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ()
    tables = [sorted_table(averages, sorts, 25),
              sorted_table(prof.key_averages(group_by_input_shape=True), sorts, 40)]
    return {"iters": iters, "wall_ms_per_iter": wall_us / iters / 1e3,
            "kernel_ms_per_iter": kernel_us / iters / 1e3, "busy_share": kernel_us / wall_us,
            "tables": "\n\n".join(tables)}


# --- the table ---

def measure(spec, timeout=None):
    """Run one variant in a fresh Python process; its result dict, or {'error': ...}."""
    command = [sys.executable, __file__, "--one", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])} if spec["threads"] else None
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout} s"}
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def variant_name(amp, channels_last, tf32=True, cudnn_benchmark=False, cuda_graph=False, seeds=1):
    return (LABEL[amp] + (" + channels_last" if channels_last else "") + ("" if tf32 else " (TF32 off)")
            + (" + cudnn.benchmark" if cudnn_benchmark else "") + (" + CUDA graph" if cuda_graph else "")
            + (f", {seeds} seeds batched" if seeds > 1 else ""))


def summarize(model, variant, runs):
    """One table row from the runs of a variant: median speed, its range, the largest peak."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"model": model, "variant": variant, "error": runs[0]["error"]}
    return {"model": model, "variant": variant, "it_s": statistics.median(r["it_s"] for r in good),
            "low": min(r["it_s"] for r in good), "high": max(r["it_s"] for r in good),
            "timed": sum(r["timed"] for r in good), "peak_mib": max(r["peak_mib"] for r in good)}


def add_ratios(rows):
    """Speed and memory of every row relative to fp32 (no channels_last) of the same model; a
    seed-batched row's speed also relative to its variant with one seed ('one_seed')."""
    baselines = {r["model"]: r for r in rows if r["variant"] == "fp32" and "error" not in r}
    named = {(r["model"], r["variant"]): r for r in rows if "error" not in r}
    for row in rows:
        base = baselines.get(row["model"])
        if "error" not in row:
            row["speed_ratio"] = row["it_s"] / base["it_s"] if base else float("nan")
            row["memory_ratio"] = row["peak_mib"] / base["peak_mib"] if base else float("nan")
            if "one_seed" in row:
                one = named.get((row["model"], row["one_seed"]))
                row["seed_ratio"] = row["it_s"] / one["it_s"] if one else float("nan")
    return rows


def print_table(rows, rounds):
    spread = f"{'it/s range':>15}" if rounds > 1 else ""
    width = max(24, *(len(row["variant"]) + 2 for row in rows))
    seeds = any("one_seed" in row for row in rows)
    header = (f"{'model':<16}{'variant':<{width}}{'it/s':>8}{spread}{'s/it':>8}{'timed':>7}{'peak MiB':>10}"
              f"{'speed x':>9}{'memory x':>10}" + (f"{'x 1 seed':>10}" if seeds else ""))
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<16}{row['variant']:<{width}}  failed: {row['error']}")
            continue
        spread = f"{row['low']:>7.2f} - {row['high']:<5.2f}" if rounds > 1 else ""
        print(f"{row['model']:<16}{row['variant']:<{width}}{row['it_s']:>8.2f}{spread}{1 / row['it_s']:>8.2f}"
              f"{row['timed']:>7}{row['peak_mib']:>10.0f}{row['speed_ratio']:>9.2f}"
              f"{row['memory_ratio']:>10.2f}" + (f"{row['seed_ratio']:>10.2f}" if "seed_ratio" in row else ""))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(run_variant(json.loads(args.one))))
        return 0
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    (sw, sh), (tw, th) = args.source_size, args.target_size
    threads = args.threads or torch.get_num_threads()
    budget = f" (at most {args.budget:g} s)" if args.budget else ""
    print(f"device {args.device} ({device_name}), torch {torch.__version__}, {threads} CPU threads; "
          f"source {sw}x{sh}, target {tw}x{th}; {args.warmup} warm-up + {args.iters} timed AdvEnt iterations "
          f"per variant{budget}, {args.rounds} round(s)", flush=True)
    graphs = (False, True) if args.cuda_graph else (False,)
    variants = [(model, amp, channels_last, graph, seeds) for model in args.models for amp in args.modes
                for channels_last in ((False, True) if args.channels_last else (False,)) for graph in graphs
                for seeds in (1, *args.seed_batch)
                if not (graph and amp == "fp16")]  # train.py refuses fp16 with a graph
    runs = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            model, amp, channels_last, graph, seeds = variant
            spec = {"model": model, "amp": amp, "channels_last": channels_last, "cuda_graph": graph,
                    "seeds": seeds, "device": args.device, "source": args.source_size,
                    "target": args.target_size, "iters": args.iters, "warmup": args.warmup,
                    "budget": args.budget, "threads": args.threads}
            runs[variant].append(measure(spec))
    rows = []
    for variant in variants:
        model, amp, channels_last, graph, seeds = variant
        row = summarize(model, variant_name(amp, channels_last, cuda_graph=graph, seeds=seeds), runs[variant])
        if seeds > 1:
            row["one_seed"] = variant_name(amp, channels_last, cuda_graph=graph)
        rows.append(row)
    print_table(add_ratios(rows), args.rounds)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
