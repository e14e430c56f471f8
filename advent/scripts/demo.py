"""Demo: the whole ESL pipeline on a synthetic GTA5 -> Cityscapes shift, on a laptop CPU.

    python advent/scripts/demo.py [--quick] [--study] [--seed S] [--out DIR] [--data DIR]

Writes a synthetic two-domain benchmark in the real GTA5 / Cityscapes formats (data/demo/seedS;
reused when already there), then runs train.py, esl.py and test.py with the configs in
advent/scripts/configs/demo/: source-only, AdvEnt, ESL and MPSL pseudo-labels, the retraining
with ESL's (--study: also with MPSL's and with two ground-truth oracles). It prints one table and
writes it, the configs it ran, each stage's log and pictures to <out> (default experiments/demo),
which it replaces as a whole once the new run is complete. The stages: advent/demo/pipeline.py.
Exit code 2 with one line on a user error, before any work (among them an --out holding files the
project did not write, or in use by another demo, an --out and --data that overlap, a seed outside
0 .. 2**32 - 1).
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import sys

from advent.demo.configs import QUICK_SCALE
from advent.demo.pipeline import DEFAULT_DATA, DEFAULT_OUT, DEFAULT_SEED, run_demo
from advent.utils.cli import ArgumentParser, MAX_SEED, description, non_empty_path, seed
from advent.utils.errors import UserError
from advent.utils.runtime import run_main


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true",
                        help=f"CI mode: every run {QUICK_SCALE:g} times as long (about 2 minutes)")
    parser.add_argument("--study", action="store_true",
                        help="also retrain with the MPSL pseudo-labels and with target-train ground truth "
                             "(all of it; on ESL's kept pixels), with per-class IoU (three more 500-iteration runs)")
    parser.add_argument("--seed", type=seed, default=DEFAULT_SEED,
                        help=f"data and training seed, 0 to {MAX_SEED} (default 0)")
    parser.add_argument("--out", type=non_empty_path, default=str(DEFAULT_OUT),
                        help="output folder (default experiments/demo)")
    parser.add_argument("--data", type=non_empty_path, default=str(DEFAULT_DATA),
                        help="data folder, apart from --out; the data of seed S goes to DATA/seedS (default data/demo)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run_demo(parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
