"""How much the synthetic domain shift hurts: source-only vs oracle on the synthetic benchmark.

    python benchmarks/synthetic_gap.py [--seeds 0 1] [--iters 300] [--shift 1.0] [--out DIR]

For each seed: generate the two domains (advent.demo.synthetic), load them through the
project's dataset factory, then train the DeepLabv2-Tiny segmenter from scratch with a plain
supervised loop (Adam, main + 0.1 aux cross-entropy on logits upsampled to the label size)
  - on the source training split ('source-only'), evaluated on held-out source val and on
    target val: the gap is the damage the shift does;
  - on the target training split with its labels ('oracle'), evaluated on target val: shows
    the target itself is learnable.
Prints mIoU (19-class nanmean, as the test stage) per seed, the mean, per-class IoU and runtime.
"""
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advent.config import get_default_cfg
from advent.dataset import get_class_info, get_source_dataset, get_target_dataset
from advent.demo.synthetic import write_demo_data
from advent.model import build_segmenter
from advent.utils import cli
from advent.utils.cli import ArgumentParser, description, non_empty_path, number, positive
from advent.utils.func import fast_hist, per_class_iu
from advent.utils.loss import cross_entropy_2d
from advent.utils.runtime import run_main

MODEL = "DeepLabv2-Tiny"


def parse_args(argv):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--seeds", type=cli.seed, nargs="+", default=[0, 1])
    parser.add_argument("--iters", type=positive, default=300, help="training iterations per model")
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--lr", type=number(float, 0), default=2e-3, help="Adam learning rate")
    parser.add_argument("--size", type=number(int, 16), nargs=2, default=[128, 64], metavar=("W", "H"))
    parser.add_argument("--num-train", type=positive, default=400, help="source 'all' and target 'train' images")
    parser.add_argument("--num-val", type=positive, default=100, help="source 'val' and target 'val' images")
    parser.add_argument("--shift", type=number(float, 0, 1), default=1.0, help="domain shift strength in [0, 1]")
    parser.add_argument("--out", default=None, type=non_empty_path, help="data folder (default: a temporary one)")
    return parser.parse_args(argv)


def demo_cfg(data, size):
    """A config over the synthetic data, every input and label size `size`."""
    cfg = get_default_cfg()
    for key, value in data.cfg_paths().items():
        cfg[key] = value
    cfg.TRAIN.INPUT_SIZE_SOURCE = cfg.TRAIN.INPUT_SIZE_TARGET = tuple(size)
    for section in (cfg.TEST, cfg.ESL):
        section.INPUT_SIZE_TARGET = section.OUTPUT_SIZE_TARGET = tuple(size)
    return cfg


def as_tensors(dataset):
    """Every item of a dataset (images N x 3 x H x W, labels N x H x W) held in memory."""
    items = [dataset[i] for i in range(len(dataset))]
    images, labels = zip(*((image, label) for image, label, _, _ in items))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def load_splits(cfg):
    """{'source_train', 'source_val', 'target_train', 'target_val'} -> (images, labels)."""
    source_val = copy.deepcopy(cfg)
    source_val.TRAIN.SET_SOURCE = "val"
    target_train = get_target_dataset(cfg, "esl")  # ground truth loaded when present ('auto')
    assert target_train.has_labels
    return {"source_train": as_tensors(get_source_dataset(cfg)),
            "source_val": as_tensors(get_source_dataset(source_val)),
            "target_train": as_tensors(target_train),
            "target_val": as_tensors(get_target_dataset(cfg, "test"))}


def seg_loss(outputs, labels):
    """Main + 0.1 aux cross-entropy, logits upsampled (bilinear, align_corners) to the label size."""
    loss = 0.0
    for pred, weight in zip(outputs, (0.1, 1.0)):
        pred = F.interpolate(pred, size=labels.shape[1:], mode="bilinear", align_corners=True)
        loss = loss + weight * cross_entropy_2d(pred, labels)
    return loss


def train(images, labels, args, seed):
    torch.manual_seed(seed)
    model = build_segmenter(MODEL, 19, True)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.iters):
        index = torch.randint(len(images), (args.batch,), generator=generator)
        optimizer.zero_grad()
        seg_loss(model(images[index]), labels[index]).backward()
        optimizer.step()
    return model


@torch.no_grad()
def evaluate(model, images, labels, num_classes=19):
    """Per-class IoU on (images, labels), as the test stage computes it."""
    model.eval()
    hist = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, len(images), 32):
        _, main = model(images[start:start + 32])
        main = F.interpolate(main, size=labels.shape[1:], mode="bilinear", align_corners=True)
        hist += fast_hist(labels[start:start + 32].numpy(), main.argmax(1).numpy(), num_classes)
    return per_class_iu(hist)


def run_seed(seed, args, root):
    data = write_demo_data(Path(root) / f"seed{seed}", seed=seed, num_source=args.num_train,
                           num_source_val=args.num_val, num_target_train=args.num_train,
                           num_target_val=args.num_val, size=args.size, shift=args.shift)
    splits = load_splits(demo_cfg(data, args.size))
    source_model = train(*splits["source_train"], args, seed)
    oracle = train(*splits["target_train"], args, seed)
    return {"source->source": evaluate(source_model, *splits["source_val"]),
            "source->target": evaluate(source_model, *splits["target_val"]),
            "oracle target->target": evaluate(oracle, *splits["target_val"])}


def miou(iou):
    return 100 * np.nanmean(iou)


def mean_defined(values):
    """Mean of the non-NaN values; NaN when there is none (a class absent from a val set)."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def report(results, names, seconds):
    columns = list(next(iter(results.values())))
    print(f"{'seed':>6} " + " ".join(f"{c:>22}" for c in columns) + f" {'gap':>6}")
    for seed, result in results.items():
        values = [miou(result[c]) for c in columns]
        print(f"{seed:>6} " + " ".join(f"{v:22.2f}" for v in values) + f" {values[0] - values[1]:6.2f}")
    means = [np.mean([miou(r[c]) for r in results.values()]) for c in columns]
    print(f"{'mean':>6} " + " ".join(f"{v:22.2f}" for v in means) + f" {means[0] - means[1]:6.2f}")
    print("\nper-class IoU, mean over seeds (classes absent from every val set omitted):")
    for k, name in enumerate(names):
        values = [mean_defined([100 * r[c][k] for r in results.values()]) for c in columns]
        if not all(np.isnan(values)):
            print(f"{name:>14} " + " ".join(f"{v:22.1f}" for v in values))
    print(f"\ntotal time {seconds:.1f} s")


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        results = {seed: run_seed(seed, args, root) for seed in args.seeds}
    print(f"{MODEL}, {args.iters} iterations of batch {args.batch}, Adam lr {args.lr:g}, "
          f"{args.size[0]}x{args.size[1]}, {args.num_train} train / {args.num_val} val images "
          f"per domain, shift {args.shift:g}\n")
    report(results, get_class_info(get_default_cfg(), "test").names, time.time() - start)


if __name__ == "__main__":
    sys.exit(run_main(main))
