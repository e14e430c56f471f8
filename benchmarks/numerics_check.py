"""The numerics check of the switches that change what training computes (TRAIN.AMP bf16 / fp16,
TF32): AdvEnt iterations from the same initial weights on the same batches, each switch's loss
curves against those of IEEE float32 (TF32 off), within a stated tolerance.

    python benchmarks/numerics_check.py          # CUDA: R101 at 1280x720 / 1024x512; CPU: Tiny at 128x64
    python benchmarks/numerics_check.py [--device cpu|cuda] [--model NAME] [--iters 200] [--batches 8]
        [--source-size W H] [--target-size W H] [--channels-last] [--cuda-graph] [--window 20]
        [--tolerance 0.05] [--json FILE]

The data: `--batches` source and target batches drawn once from a seed and cycled, each a blocky
random label map (16-pixel blocks, 5 % of the pixels ignored) and an image whose pixels are their
class's colour plus noise, so that the segmenter can learn them and its losses move: a curve worth
comparing. Each variant starts from the weights of seed 0 and runs `--iters` iterations as
train.py runs them (train_UDA.make_step; --cuda-graph replays them from a CUDA graph where
TRAIN.AMP allows, which computes the same numbers).

The comparison: each loss smoothed by a moving mean over `--window` iterations; its deviation is
the largest difference from the reference's smoothed curve, from the window's end on, over the
reference's first smoothed value (the loss's scale). The noise floor is the deviation of the
reference run again from initial weights each multiplied by (1 + 1e-6 x a normal draw): a change
the size of float32 rounding, which a GPU run gets anyway from kernels that add with atomics. The
verdict is on the segmentation losses (source, main and aux): a variant passes when each deviates
by at most `--tolerance` or 3 times its noise floor, whichever is larger (training amplifies
rounding: at 30 iterations of the Tiny model on the CPU the floor was already 3.6 %). The
adversarial and discriminator losses are shown, not judged: at batch 1 the discriminators soon
win and the adversarial loss swings widely, so that any change of the arithmetic sends it down
another path. Exit 1 when a variant fails.

Variants: fp32 with TF32 (the default on GPUs that have it), bf16 and fp16, against fp32 with TF32
off; on the CPU, where TF32 does not exist and fp16 has no fast kernels, bf16 only.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed (benchmarks/ is no package)
from train_speed import training_cfg  # noqa: E402

from advent.utils.cli import ArgumentParser, description, device, non_empty_path, number, positive  # noqa: E402
from advent.utils.output_dir import check_writable  # noqa: E402
from advent.utils.runtime import memory_format, run_main  # noqa: E402
from advent.utils.serialization import json_dump  # noqa: E402

WRITER = "numerics_check.py"
REFERENCE = ("fp32, TF32 off", "none", False)
JUDGED = ("loss_seg_src_main", "loss_seg_src_aux")
FLOOR_FACTOR = 3  # a judged loss may deviate by this many noise floors (or --tolerance, if larger)
PERTURBATION = 1e-6  # relative, of each initial weight: the noise floor's run
VARIANTS = {"cuda": [("fp32, TF32 on", "none", True), ("bf16", "bf16", True), ("fp16", "fp16", True)],
            "cpu": [("bf16", "bf16", True)]}
NUM_CLASSES, BLOCK, IGNORED = 19, 16, 0.05


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="default: DeepLabv2 (R101) on CUDA, DeepLabv2-Tiny on the CPU")
    parser.add_argument("--iters", type=number(int, 2), default=200, help="iterations per variant (default 200)")
    parser.add_argument("--batches", type=positive, default=8, help="distinct batches per domain, cycled (default 8)")
    parser.add_argument("--source-size", type=positive, nargs=2, default=None, metavar=("W", "H"))
    parser.add_argument("--target-size", type=positive, nargs=2, default=None, metavar=("W", "H"))
    parser.add_argument("--channels-last", action="store_true", help="CHANNELS_LAST in the AMP variants")
    parser.add_argument("--cuda-graph", action="store_true", help="TRAIN.CUDA_GRAPH where TRAIN.AMP allows it")
    parser.add_argument("--window", type=positive, default=20, help="iterations of the moving mean (default 20)")
    parser.add_argument("--tolerance", type=number(float, 0), default=0.05, help="relative, of the smoothed losses")
    parser.add_argument("--json", default=None, type=non_empty_path, help="also write the curves and the verdicts here")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("DeepLabv2" if cuda else "DeepLabv2-Tiny")
    args.source_size = tuple(args.source_size or ((1280, 720) if cuda else (128, 64)))
    args.target_size = tuple(args.target_size or ((1024, 512) if cuda else (128, 64)))
    if not 1 <= args.window < args.iters:
        parser.error("--window must be at least 1 and below --iters")
    if args.cuda_graph and not cuda:
        parser.error(f"--cuda-graph needs a CUDA device (--device is {args.device})")
    return args


def learnable_batches(count, size, generator):
    """`count` (image, label) pairs on the CPU: blocky random labels, images of class colours + noise."""
    width, height = size
    colours = torch.rand(NUM_CLASSES, 3, generator=generator) * 200 - 100  # about the mean-subtracted range
    batches = []
    for _ in range(count):
        coarse = torch.randint(0, NUM_CLASSES, (1, height // BLOCK + 1, width // BLOCK + 1), generator=generator)
        labels = coarse.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)[:, :height, :width].contiguous()
        images = colours[labels].permute(0, 3, 1, 2) + torch.randn(1, 3, height, width, generator=generator) * 20
        labels[torch.rand(labels.shape, generator=generator) < IGNORED] = 255
        batches.append((images.contiguous(), labels))
    return batches


def loss_curves(args, amp, tf32, data, perturb=False):
    """{loss name: [value per iteration]} of one variant, from the weights of seed 0 (each
    multiplied by 1 + PERTURBATION x a normal draw with `perturb`)."""
    from advent.domain_adaptation.train_UDA import build_setup, make_step
    from advent.utils.cuda_flags import set_cuda_flags

    device = torch.device(args.device)
    channels_last = args.channels_last and amp != "none"
    spec = {"model": args.model, "amp": amp, "channels_last": channels_last, "tf32": tf32,
            "cuda_graph": args.cuda_graph and amp != "fp16", "source": args.source_size, "target": args.target_size}
    cfg = training_cfg(spec)
    set_cuda_flags(cfg.TF32, cfg.CUDNN_BENCHMARK)
    torch.manual_seed(0)
    setup = build_setup(cfg, device)
    setup.model.train()
    if perturb:
        with torch.no_grad():
            for param in setup.model.parameters():
                param.mul_(1 + PERTURBATION * torch.randn_like(param))
    step = make_step(setup, cfg)
    on_device = {domain: [(images.to(device, memory_format=memory_format(channels_last)), labels.to(device))
                          for images, labels in batches] for domain, batches in data.items()}
    curves = {}
    for i_iter in range(args.iters):
        k = i_iter % args.batches
        metrics, _ = step(on_device["source"][k], on_device["target"][k], i_iter)
        for name, value in metrics.items():
            if name.startswith("loss_"):
                curves.setdefault(name, []).append(value)
    return curves


def smoothed(values, window):
    """The moving mean over `window` values, from the window's end on."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def deviation(curves, reference, window):
    """{loss: the largest difference of the smoothed curve from the reference's, over the
    reference's first smoothed value}."""
    result = {}
    for name, values in reference.items():
        ours, theirs = smoothed(curves[name], window), smoothed(values, window)
        result[name] = float(np.max(np.abs(ours - theirs)) / max(abs(theirs[0]), 1e-12))
    return result


def allowances(floor, tolerance):
    """{judged loss: the deviation it may reach: `tolerance` or FLOOR_FACTOR noise floors, the larger}."""
    return {loss: max(tolerance, FLOOR_FACTOR * floor[loss]) for loss in JUDGED}


def judge(deviations, floor, tolerance):
    """Whether a variant passes: each judged loss within its allowance."""
    return all(deviations[loss] <= allowed for loss, allowed in allowances(floor, tolerance).items())


def main(argv=None):
    args = parse_args(argv)
    check_writable([args.json], WRITER, "--json")  # before any work: a user's file is refused
    generator = torch.Generator().manual_seed(1)
    data = {"source": learnable_batches(args.batches, args.source_size, generator),
            "target": learnable_batches(args.batches, args.target_size, generator)}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    print(f"{args.model} on {args.device}, {args.iters} AdvEnt iterations per variant over {args.batches} "
          f"batches, source {args.source_size}, target {args.target_size}; smoothed over {args.window} "
          f"iterations, tolerance {args.tolerance:.0%}", flush=True)
    reference = loss_curves(args, REFERENCE[1], REFERENCE[2], data)
    floor = deviation(loss_curves(args, REFERENCE[1], REFERENCE[2], data, perturb=True), reference, args.window)
    rows = []
    for name, amp, tf32 in VARIANTS[kind]:
        curves = loss_curves(args, amp, tf32, data)
        worst = deviation(curves, reference, args.window)
        rows.append({"variant": name, "deviation": worst,
                     "passed": judge(worst, floor, args.tolerance), "curves": curves})
    names = list(reference)
    print(f"{'deviation':<24}" + "".join(f"{name[5:]:>15}" for name in names))
    print(f"{'noise floor (fp32)':<24}" + "".join(f"{floor[name]:>15.2%}" for name in names))
    for row in rows:
        verdict = "ok" if row["passed"] else "OUT OF TOLERANCE"
        print(f"{row['variant']:<24}" + "".join(f"{row['deviation'][name]:>15.2%}" for name in names) + f"  {verdict}")
    ref = smoothed(reference["loss_seg_src_main"], args.window)
    print(f"reference seg_src_main (smoothed): {ref[0]:.4f} -> {ref[-1]:.4f}; allowed: "
          + ", ".join(f"{loss[5:]} {allowed:.2%}" for loss, allowed in allowances(floor, args.tolerance).items()))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        json_dump({"settings": settings, "noise_floor": floor, "variants": rows,
                   "reference": {"variant": REFERENCE[0], "curves": reference}}, Path(args.json), WRITER)
        print(f"written: {args.json}")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
