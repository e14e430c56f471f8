"""Write the synthetic two-domain benchmark (data stage): GTA5-like source, Cityscapes-like target.

    python advent/scripts/make_synthetic_data.py --out data/demo [--seed S] [--num-source N]
        [--num-source-val N] [--num-target-train N] [--num-target-val N] [--size W H]
        [--shift T] [--overwrite]

The files are in the real GTA5 and Cityscapes layouts (see advent.demo.synthetic); the
config values that point at them are printed at the end, as YAML. --seed is in 0 .. 2**32 - 1
(TRAIN.RANDOM_SEED's range), --size 16 to 4096 pixels a side (the papers' largest images are
2048x1024; larger ones would only exhaust the memory).
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import sys
import time

from advent.demo.synthetic import write_demo_data
from advent.utils.cli import ArgumentParser, MAX_IMAGE_SIDE, description, non_empty_path, number, positive, seed
from advent.utils.errors import UserError
from advent.utils.runtime import run_main


def parse_args(argv):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--out", type=non_empty_path, required=True,
                        help="output folder (GTA5/ and Cityscapes/ go inside)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--num-source", type=positive, default=400, help="source training images (split 'all')")
    parser.add_argument("--num-source-val", type=positive, default=100, help="held-out source images ('val')")
    parser.add_argument("--num-target-train", type=positive, default=400)
    parser.add_argument("--num-target-val", type=positive, default=100)
    parser.add_argument("--size", type=number(int, 16, MAX_IMAGE_SIDE), nargs=2, default=[128, 64],
                        metavar=("W", "H"), help=f"image size, 16 to {MAX_IMAGE_SIDE} pixels a side (default 128 64)")
    parser.add_argument("--shift", type=float, default=1.0,
                        help="domain shift strength: 0 = target drawn like the source, 1 = full shift")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate even when the folder already holds data of these parameters")
    return parser.parse_args(argv)


def check_args(args):
    if not 0.0 <= args.shift <= 1.0:
        raise UserError(f"--shift must be in [0, 1], got {args.shift}")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    start = time.time()
    data = write_demo_data(args.out, seed=args.seed, num_source=args.num_source,
                           num_source_val=args.num_source_val, num_target_train=args.num_target_train,
                           num_target_val=args.num_target_val, size=args.size, shift=args.shift,
                           overwrite=args.overwrite)
    total = sum(data.counts.values())
    print(f"{total} image/label pairs ({data.size[0]}x{data.size[1]}) in {data.root} "
          f"({time.time() - start:.1f} s)")
    print("# config values for this data:")
    for key, value in data.cfg_paths().items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
