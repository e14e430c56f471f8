"""Peak memory of ESL pseudo-label generation: ours (streaming) against the original's approach.

    python benchmarks/esl_memory.py                      # scaling: 8 vs 40 images at 2048x1024
    python benchmarks/esl_memory.py --defaults           # + R101 at the paper's sizes, extrapolated

Each measurement runs in a fresh process on tiny Cityscapes-format images (64x32, upsampled
by the model to the output size) and reports that process's peak resident memory (ru_maxrss). "Original" restates
the original code's storage: the label and entropy maps of every image of the group held in
float64 arrays of N x H x W, then a per-class masked sort — with N = the number of images,
the most favourable case for it (the original allocated MAX_MEDIAN_BATCH rows).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from advent.utils.cli import ArgumentParser, number, positive
from advent.utils.runtime import run_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake-data writers of the test suite

CITYSCAPES_TRAIN = 2975


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_config(args):
    from fake_data import make_fake_cfg

    cfg, _ = make_fake_cfg(Path(args.workdir), count=args.count, size=(64, 32))
    cfg.NUM_WORKERS = 0
    cfg.ESL.MODEL = args.model
    cfg.ESL.RESTORE_FROM = str(Path(args.workdir) / "model.pth")
    cfg.ESL.INPUT_SIZE_TARGET = tuple(args.input_size)
    cfg.ESL.OUTPUT_SIZE_TARGET = tuple(args.output_size)
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(Path(args.workdir) / "labels")
    return cfg


def run_child(args):
    """One measurement, in this (fresh) process."""
    from advent.dataset import get_target_dataset
    from advent.domain_adaptation.esl_UDA import generate_pseudo_labels, output_folder
    from advent.domain_adaptation.pseudo_labels import predict_with_confidence
    from advent.model.inference import load_segmenter

    cfg = child_config(args)
    model, _ = load_segmenter(cfg.ESL.MODEL, cfg.NUM_CLASSES, True, cfg.ESL.RESTORE_FROM, torch.device("cpu"))
    dataset = get_target_dataset(cfg, "esl")
    assert len(dataset) == args.count, (len(dataset), args.count)
    baseline = peak_rss_mb()
    if args.approach == "ours":
        output = output_folder(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
        with output.held():
            generate_pseudo_labels(model, dataset, cfg, output, torch.device("cpu"))
    else:
        original_approach(model, dataset, cfg, predict_with_confidence)
    print(json.dumps({"peak_mb": peak_rss_mb(), "before_mb": baseline}))


def original_approach(model, dataset, cfg, predict):
    """The original's storage: float64 N x H x W label and entropy arrays, then per-class sorts."""
    width, height = cfg.ESL.OUTPUT_SIZE_TARGET
    from advent.model.inference import main_logits

    labels = np.zeros((len(dataset), height, width), np.float64)
    entropies = np.zeros((len(dataset), height, width), np.float64)
    for i, (image, _, _, _) in enumerate(dataset):
        label, entropy = predict(main_logits(model, torch.from_numpy(image)[None]), (width, height), "entropy")
        labels[i], entropies[i] = label[0].numpy(), entropy[0].numpy()
    for c in range(cfg.NUM_CLASSES):
        values = np.sort(entropies[labels == c])
        _ = values[round(len(values) / 2)] if len(values) else 0.0


def measure(approach, count, model, input_size, output_size):
    with tempfile.TemporaryDirectory() as workdir:
        from advent.model import build_segmenter

        torch.save(build_segmenter(model, 19, True).state_dict(), Path(workdir) / "model.pth")
        command = [sys.executable, __file__, "--child", approach, "--workdir", workdir, "--count", str(count),
                   "--model", model, "--input-size", *map(str, input_size),
                   "--output-size", *map(str, output_size)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def scaling(counts, output_size):
    print(f"Peak resident memory, Tiny model, input 512x256, output {output_size[0]}x{output_size[1]}:")
    print(f"{'images':>8}{'ours MiB':>10}{'original MiB':>13}{'original (arithmetic) MiB':>26}")
    ours = {}
    for count in counts:
        ours[count] = measure("ours", count, "DeepLabv2-Tiny", (512, 256), output_size)
        original = measure("original", count, "DeepLabv2-Tiny", (512, 256), output_size)
        maps_mb = 2 * count * output_size[0] * output_size[1] * 8 / 2 ** 20
        print(f"{count:>8}{ours[count]:>10.0f}{original:>13.0f}{maps_mb:>26.0f}")
    low, high = min(counts), max(counts)
    print(f"ours: peak({high}) / peak({low}) = {ours[high] / ours[low]:.3f} (target: within 15%, <= 1.15)")


def defaults(count):
    width, height = 1024, 512
    print(f"\nAt the paper's defaults (ResNet-101, input and output {width}x{height}), {count} images:")
    peak = measure("ours", count, "DeepLabv2", (width, height), (width, height))
    original_gb = 2 * CITYSCAPES_TRAIN * width * height * 8 / 2 ** 30
    spill_gb = CITYSCAPES_TRAIN * width * height * 5 / 2 ** 30
    print(f"ours, measured: {peak:.0f} MiB peak; it does not grow with the image count (above), so the full "
          f"Cityscapes train set ({CITYSCAPES_TRAIN} images) needs about {peak / 1024:.2f} GiB "
          f"(target < 3 GB) plus {spill_gb:.1f} GiB of temporary disk, removed at the end")
    print(f"original: 2 x {CITYSCAPES_TRAIN} x {height} x {width} float64 maps = {original_gb:.1f} GiB "
          f"before its sorts")


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=number(int, 2), nargs=2, default=(8, 40))
    parser.add_argument("--output-size", type=positive, nargs=2, default=(2048, 1024))
    parser.add_argument("--defaults", action="store_true", help="also measure R101 at 1024x512 (slow on a CPU)")
    parser.add_argument("--defaults-count", type=number(int, 2), default=4)
    parser.add_argument("--child", choices=("ours", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--input-size", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    odd = [n for n in (*args.counts, args.defaults_count) if n % 2]
    if odd and not args.child:  # the fake Cityscapes split holds two cities of count / 2 images
        parser.error(f"--counts and --defaults-count must be even, got {odd[0]}")
    if args.child:
        args.approach = args.child
        return run_child(args)
    scaling(args.counts, tuple(args.output_size))
    if args.defaults:
        defaults(args.defaults_count)


if __name__ == "__main__":
    sys.exit(run_main(main))
