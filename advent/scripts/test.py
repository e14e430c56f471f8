"""Test stage: mIoU of trained models on the target validation set.

    python advent/scripts/test.py --cfg FILE [--exp-suffix SUFFIX]
    torchrun --nproc_per_node=N advent/scripts/test.py --cfg FILE    (the images shared out)

TEST.MODE 'single' evaluates TEST.RESTORE_FROM (several checkpoints: a weighted ensemble);
'best' evaluates every snapshot model_{k}.pth of the training run, k = TEST.SNAPSHOT_STEP ...
TEST.SNAPSHOT_MAXITER, and reports the last one and the best one. Runs on cuda:GPU_ID when
CUDA is available, else (or with GPU_ID -1) on the CPU (under torchrun: cuda:LOCAL_RANK).
Exit code 2 with one line on a user error, also for a results, cache or predictions folder that
cannot be written (checked before any model work) and for a full disk (reported after the results
are shown).
TEST.SAVE_PREDICTIONS replaces the predictions folder as a whole, all or nothing, and refuses
one holding files the project did not write.
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import sys

from advent.config import load_config
from advent.domain_adaptation.eval_UDA import evaluate_domain_adaptation
from advent.utils.cli import ArgumentParser
from advent.utils.distributed import leave_process_group, select_device
from advent.utils.runtime import run_main, setup_logging


def parse_args(argv=None):
    parser = ArgumentParser(description="Code for evaluation")
    parser.add_argument("--cfg", type=str, required=True, help="the YAML config file")
    parser.add_argument("--exp-suffix", type=str, default="",
                        help="appended to EXP_NAME (the default snapshot folder of 'best' mode)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    cfg = load_config(args.cfg, args.exp_suffix)
    command = None if argv is None else [__file__] + list(argv)
    device = select_device(cfg.GPU_ID, cfg.TF32, cfg.CUDNN_BENCHMARK)
    evaluate_domain_adaptation(cfg, device, cfg_path=args.cfg, argv=command)
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
