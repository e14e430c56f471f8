"""Benchmark of the host-side work of esl.py and test.py per image: this checkout against an
earlier revision, in the same run.

    python benchmarks/host_speed.py [--baseline REV] [--images 24] [--rounds 2]
        [--image-size 2048 1024] [--input-size 1024 512] [--output-size 1024 512]
        [--test-output-size 2048 1024] [--device cpu|cuda] [--threads N] [--json FILE]

On a GPU esl.py and test.py are limited by the host (docs/speed.md), in two places, timed apart:
  loader        one worker process's time per item (decode, resize, the label), through a
                DataLoader with one worker, for esl.py's items (labels at --output-size) and
                test.py's (labels at --test-output-size); NUM_WORKERS of them share the work;
  main process  `generate_pseudo_labels` (advent.domain_adaptation.esl_UDA) on items decoded
                beforehand, less the time in `predict_with_confidence` (softmax, upsampling,
                argmax, entropy: GPU work on a GPU, timed apart as 'the maps' arithmetic'):
                the three passes (counting, spilling, thresholds, PNGs, report counts).
The data: Cityscapes-format train images it writes once (smooth colour fields, PNGs at
--image-size; label ids as PNGs). The model is a stand-in whose forward costs almost nothing (an
average pool and a 1x1 convolution with fixed random weights) and whose maps have smooth class
regions, as a trained segmenter's, so the PNGs compress as real pseudo-labels do.

Each code version runs in its own subprocess with PYTHONPATH set to it (the baseline: `git
archive REV` unpacked into a temporary folder), alternating, --rounds times each; printed: the
median milliseconds per image of each and the ratio. Both must write the same labels (compared
pixel for pixel) and thresholds, else the run fails (exit code 1). A bad argument, or a --baseline
that is not a revision of this repository, is one line and exit code 2, before any work.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WRITER = "host_speed.py"
DEFAULT_BASELINE = "685a1e5"  # the last revision before the host-side work on esl.py and test.py


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line, `host_speed.py: error: <what>`, and
    exit code 2, as advent.utils.cli's (not imported here: the child processes run with the
    `advent` of the version they time, and the baseline's may not have it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def at_least(low):
    """An argparse `type`: an integer of at least `low`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    return parse


def not_empty(text):
    """An argparse `type`: a revision or path, refused when empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty: {text!r}")
    return text


def parse_args(argv=None):
    parser = OneLineParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # no advent import here
    parser.add_argument("--baseline", type=not_empty, default=DEFAULT_BASELINE, help="git revision to compare with")
    parser.add_argument("--images", type=at_least(1), default=24)
    parser.add_argument("--rounds", type=at_least(1), default=2)
    parser.add_argument("--image-size", type=at_least(1), nargs=2, default=(2048, 1024), metavar=("W", "H"))
    parser.add_argument("--input-size", type=at_least(1), nargs=2, default=(1024, 512), metavar=("W", "H"))
    parser.add_argument("--output-size", type=at_least(1), nargs=2, default=(1024, 512), metavar=("W", "H"))
    parser.add_argument("--test-output-size", type=at_least(1), nargs=2, default=(2048, 1024), metavar=("W", "H"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=not_empty, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("CODE", "DATA", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the data, written once ---

def smooth_field(rng, size, channels, cells=(16, 8)):
    """An H x W x channels uint8 array: random values on a coarse grid, bilinearly enlarged."""
    from PIL import Image

    width, height = size
    coarse = rng.integers(0, 256, (cells[1], cells[0], channels), dtype=np.uint8)
    planes = [np.asarray(Image.fromarray(coarse[:, :, c]).resize((width, height), Image.BILINEAR))
              for c in range(channels)]
    return np.stack(planes, axis=2)


def write_data(folder, args):
    """Cityscapes train: leftImg8bit PNGs, gtFine label ids, lists/train.txt."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"aachen/aachen_{i:06d}_000019_leftImg8bit.png" for i in range(args.images)]
    for name in names:
        image = folder / "leftImg8bit" / "train" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_field(rng, args.image_size, 3)).save(image)
        ids = smooth_field(rng, args.image_size, 1, cells=(32, 16))[:, :, 0] % 34
        label = folder / "gtFine" / "train" / name.replace("_leftImg8bit", "_gtFine_labelIds")
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(label)
    (folder / "lists").mkdir()
    (folder / "lists" / "train.txt").write_text("".join(f"{name}\n" for name in names))


def unpack_revision(revision, folder):
    """The files of git revision `revision` of this repository, unpacked into `folder`."""
    archive = folder / "code.tar"
    from advent.utils.errors import UserError  # the parent's: a child imports only the version it times

    with open(archive, "wb") as f:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), "archive", revision], stdout=f, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise UserError("git not found: host_speed.py unpacks the --baseline revision with git archive") from None
    if done.returncode:
        said = (done.stderr.decode().strip().splitlines() or ["failed"])[-1].removeprefix("fatal: ")
        raise UserError(f"--baseline {revision}: git archive: {said}")
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "code", filter="data")
    return folder / "code"


# --- one measurement, in a subprocess whose `advent` is the version under test ---

def stand_in_model(num_classes, torch):
    """A segmenter-shaped module, (aux, main) = two views of one cheap, smooth logit map."""
    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.weight = torch.nn.Parameter(torch.randn(num_classes, 3, 1, 1, generator=generator) / 8)

        def forward(self, images):
            pooled = torch.nn.functional.avg_pool2d(images, 8, ceil_mode=True)
            logits = torch.nn.functional.conv2d(pooled, self.weight)
            return logits, logits

    return StandIn()


class InMemory:
    """The items of `dataset`, decoded once: the main process's work is then timed alone."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.has_labels = dataset.has_labels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def seconds_per_item(dataset):
    """Seconds per item of `dataset` through a loader with one worker process."""
    from torch.utils.data import DataLoader

    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=1, num_workers=1):
        pass
    return (time.perf_counter() - start) / len(dataset)


def run_child(args):
    code, data, out = (Path(p) for p in args.child)
    import torch

    import advent
    import advent.domain_adaptation.esl_UDA as esl_UDA
    from advent.config import get_default_cfg
    from advent.dataset import get_target_dataset

    assert Path(advent.__file__).resolve().is_relative_to(code.resolve()), (advent.__file__, code)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_default_cfg()
    cfg.DATA_DIRECTORY_TARGET, cfg.DATA_LIST_TARGET = str(data), str(data / "lists" / "{}.txt")
    cfg.ESL.INPUT_SIZE_TARGET, cfg.ESL.OUTPUT_SIZE_TARGET = tuple(args.input_size), tuple(args.output_size)
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(out)
    device = torch.device(args.device)
    dataset = get_target_dataset(cfg, "esl")

    # the loader: items through one worker process, as the DataLoader hands them over
    cfg.TEST.SET_TARGET, cfg.TEST.OUTPUT_SIZE_TARGET = "train", tuple(args.test_output_size)
    loader_s = {stage: seconds_per_item(get_target_dataset(cfg, stage)) for stage in ("esl", "test")}

    # the main process: the whole ESL stage on decoded items, without the maps' arithmetic
    # (softmax, upsampling, argmax, entropy), which runs on the GPU there
    maps_s = [0.0]
    predict = esl_UDA.predict_with_confidence

    def timed_predict(*a, **k):
        begin = time.perf_counter()
        result = predict(*a, **k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        maps_s[0] += time.perf_counter() - begin
        return result

    esl_UDA.predict_with_confidence = timed_predict
    cfg.NUM_WORKERS = 0
    items = InMemory(dataset)
    model = stand_in_model(cfg.NUM_CLASSES, torch).eval().to(device)
    output = esl_UDA.output_folder(out)
    with output.held():
        start = time.perf_counter()
        report = esl_UDA.generate_pseudo_labels(model, items, cfg, output, device)
        seconds = time.perf_counter() - start
    print(json.dumps({"esl_loader_s": loader_s["esl"], "test_loader_s": loader_s["test"],
                      "main_s": (seconds - maps_s[0]) / len(items),
                      "maps_s": maps_s[0] / len(items), "thresholds": report["groups"][0]["thresholds"]}))


def measure(code, data, out, args):
    command = [sys.executable, __file__, "--child", str(code), str(data), str(out),
               "--device", args.device, "--threads", str(args.threads),
               "--input-size", *map(str, args.input_size), "--output-size", *map(str, args.output_size),
               "--test-output-size", *map(str, args.test_output_size)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{code}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_labels(first, second):
    """Whether two label folders hold the same PNG names with the same pixels."""
    from PIL import Image

    names = sorted(p.name for p in first.glob("*.png"))
    if names != sorted(p.name for p in second.glob("*.png")):
        return False
    return all(np.array_equal(np.asarray(Image.open(first / n)), np.asarray(Image.open(second / n)))
               for n in names)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    from advent.utils.output_dir import check_writable  # here: a child imports only the version it times
    from advent.utils.serialization import json_dump

    check_writable([args.json], WRITER, "--json")  # before any work: a user's file is refused
    keys = ("esl_loader_s", "test_loader_s", "main_s", "maps_s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        versions = {"baseline": unpack_revision(args.baseline, tmp), "ours": ROOT}  # a bad revision first
        write_data(tmp / "data", args)
        times, results = {name: {key: [] for key in keys} for name in versions}, {}
        for round_index in range(args.rounds):
            for name, code in versions.items():
                results[name] = measure(code, tmp / "data", tmp / f"labels_{name}", args)
                for key in keys:
                    times[name][key].append(results[name][key])
                print(f"round {round_index + 1}, {name}: " + ", ".join(
                    f"{key} {1000 * results[name][key]:.1f} ms" for key in keys), flush=True)
        if results["baseline"]["thresholds"] != results["ours"]["thresholds"]:
            sys.exit("the thresholds differ between the two versions")
        if not same_labels(tmp / "labels_baseline", tmp / "labels_ours"):
            sys.exit("the pseudo-labels differ between the two versions")
    median = {name: {key: statistics.median(v) for key, v in values.items()} for name, values in times.items()}
    print(f"per image, {args.images} images of {args.image_size[0]}x{args.image_size[1]}, ESL maps at "
          f"{args.output_size[0]}x{args.output_size[1]}, {args.device} (median of {args.rounds} rounds; "
          f"ms per image, baseline {args.baseline} / ours / speed-up):")
    rows = (("esl.py loader, one worker's time per item", "esl_loader_s"),
            ("test.py loader, one worker's time per item", "test_loader_s"),
            ("esl.py main process, without the maps' arithmetic", "main_s"),
            ("the maps' arithmetic (GPU work on a GPU)", "maps_s"))
    for label, key in rows:
        base, ours = median["baseline"][key], median["ours"][key]
        print(f"  {label:<51}{1000 * base:8.1f}{1000 * ours:8.1f}{base / ours:8.2f}x")
    print("  the same labels and thresholds")
    if args.json:
        json_dump({"args": vars(args), "seconds_per_image": times, "median": median}, args.json, WRITER)
    return 0


if __name__ == "__main__":
    from advent.utils.runtime import run_main  # a child's: PYTHONPATH leads to the version it times

    sys.exit(run_main(main))
