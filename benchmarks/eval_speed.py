"""Benchmark of the test stage's per-image work after the model forward: the original path vs ours.

(a) original: upsample the main logits on the device, copy the full C-channel map to the CPU,
    numpy argmax over the channels, numpy fast_hist (what ADVENT's evaluation did per image);
(b) ours (advent.domain_adaptation.eval_UDA / metrics): upsample, argmax and bincount on the
    device into a ConfusionMatrix; only the C x C matrix comes back, once.

Both run on the same logits (C x h x w at the model's output resolution for the input size)
and the same labels at the output size; the two confusion matrices must be equal.

    python benchmarks/eval_speed.py [--device cpu|cuda] [--repeats 20]
                                    [--output-size 2048 1024] [--input-size 1024 512] [--threads N]
"""
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from advent.domain_adaptation.eval_UDA import Buffers, upsampled_prediction
from advent.domain_adaptation.metrics import ConfusionMatrix
from advent.utils.cli import ArgumentParser, description, device, non_negative, number, positive, seed
from advent.utils.func import fast_hist
from advent.utils.runtime import run_main

SAMPLES = 4  # distinct (logits, label) pairs, cycled


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=positive, default=20, help="timed images per path (default 20)")
    parser.add_argument("--classes", type=number(int, 1, 255), default=19)
    parser.add_argument("--output-size", type=positive, nargs=2, default=(2048, 1024), metavar=("W", "H"))
    parser.add_argument("--input-size", type=positive, nargs=2, default=(1024, 512), metavar=("W", "H"),
                        help="the model input size; the logits have the DeepLab-v2 output size for it")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=non_negative, default=0, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def logits_size(side):
    """DeepLab-v2 output pixels for an input side of `side` pixels (advent.model.deeplabv2)."""
    return (side + 1) // 8 + 1


def make_samples(args, device):
    """(logits on the device, label as the loader gives it: 8 bits on the CPU) pairs."""
    generator = torch.Generator().manual_seed(args.seed)
    width, height = args.output_size
    h, w = logits_size(args.input_size[1]), logits_size(args.input_size[0])
    samples = []
    for _ in range(SAMPLES):
        logits = 3 * torch.randn(1, args.classes, h, w, generator=generator)
        label = torch.randint(0, args.classes, (1, height, width), generator=generator, dtype=torch.uint8)
        label[torch.rand(1, height, width, generator=generator) < 0.1] = 255  # ~10 % ignored, as Cityscapes
        samples.append((logits.to(device), label))
    return samples


def original_path(logits, label, num_classes, output_size):
    """ADVENT's per-image evaluation: full map to the CPU, numpy argmax and fast_hist."""
    interp = nn.Upsample(size=(output_size[1], output_size[0]), mode="bilinear", align_corners=True)
    output = interp(logits).cpu().data[0].numpy()
    output = output.transpose(1, 2, 0)
    output = np.argmax(output, axis=2)
    return fast_hist(label.numpy()[0].flatten(), output.flatten(), num_classes)


def our_path(logits, label, confmat, output_size, buffers):
    pred = upsampled_prediction([logits], [1.0], output_size, buffers)
    confmat.update(label.to(logits.device, non_blocking=True), pred)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


@torch.inference_mode()
def run(args):
    device = torch.device(args.device)
    samples = make_samples(args, device)
    confmat = ConfusionMatrix(args.classes, device)
    buffers = Buffers()
    hist_original = np.zeros((args.classes, args.classes), dtype=np.int64)
    times = {"original": [], "ours": []}
    for logits, label in samples[:2]:  # warm-up, not counted
        original_path(logits, label, args.classes, args.output_size)
        our_path(logits, label, ConfusionMatrix(args.classes, device), args.output_size, buffers)
    for i in range(args.repeats):
        logits, label = samples[i % SAMPLES]
        runs = [("original", lambda: original_path(logits, label, args.classes, args.output_size)),
                ("ours", lambda: our_path(logits, label, confmat, args.output_size, buffers))]
        for name, fn in runs if i % 2 == 0 else runs[::-1]:  # alternate the order
            seconds, result = timed(fn, device)
            times[name].append(seconds)
            if name == "original":
                hist_original += result
    return device, times, hist_original, confmat.hist()


def describe(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, times, hist_original, hist_ours = run(args)
    width, height = args.output_size
    print(f"device {describe(device)}, torch {torch.__version__}; {args.classes} classes, logits "
          f"{args.classes}x{logits_size(args.input_size[1])}x{logits_size(args.input_size[0])} "
          f"-> {width}x{height}; {args.repeats} images per path")
    medians = {}
    for name, text in (("original", "(a) original: full map to CPU, numpy argmax + fast_hist"),
                       ("ours", "(b) ours: upsample + argmax + bincount on device")):
        medians[name] = statistics.median(times[name])
        print(f"{text:<58} median {1e3 * medians[name]:8.1f} ms/image  (min {1e3 * min(times[name]):.1f})")
    print(f"speed-up (median): {medians['original'] / medians['ours']:.2f}x, "
          f"(min): {min(times['original']) / min(times['ours']):.2f}x")
    equal = np.array_equal(hist_original, hist_ours)
    print(f"confusion matrices equal: {'yes' if equal else 'NO'} ({int(hist_ours.sum())} pixels counted)")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
