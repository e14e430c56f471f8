"""Training stage: train DeepLab-v2 with source-only, MinEnt, AdvEnt or ESL self-training.

    python advent/scripts/train.py --cfg advent/scripts/configs/advent.yml [--resume]
        [--tensorboard] [--viz-every-iter N] [--exp-suffix S] [--random-train]
    torchrun --nproc_per_node=N advent/scripts/train.py --cfg ...     (one process per GPU)

Snapshots, the train state and the resolved config go to TRAIN.SNAPSHOT_DIR (default
EXP_ROOT/snapshots/EXP_NAME), which one run at a time holds (a second run into it stops at once).
--resume continues from the newest train state; in a folder without one (a run stopped before
its first train state was written, or no run yet) it starts from iteration 0; snapshots of several
iterations without a train state (one was removed) are refused. A finished run is
extended by resuming it with a larger TRAIN.EARLY_STOP (the same MAX_ITERS): exactly as if it had
been started so.
Exit codes: 0 done; 2 a user error (one line on stderr), among them a folder in use, one that
cannot be written and a full disk (the files written before stay intact); 128 + signal number
after SIGINT / SIGTERM, with a train state saved for --resume.
Under torchrun each process takes TRAIN.BATCH_SIZE_* images per iteration (docs/distributed.md).
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import logging
import os
import shlex
import signal
import sys

from advent.config import load_config
from advent.domain_adaptation.checkpoint import total_iterations
from advent.domain_adaptation.train_UDA import TrainingInterrupted, train_domain_adaptation
from advent.utils.cli import ArgumentParser, description
from advent.utils.distributed import (
    get_world_size, is_main_process, launched_by_torchrun, leave_process_group, select_device,
)
from advent.utils.errors import UserError
from advent.utils.runtime import run_main, setup_logging

log = logging.getLogger(__name__)


def describe(cfg):
    """One line saying what this config trains."""
    train = cfg.TRAIN
    method = train.DA_METHOD + (" + pseudo-labels" if cfg.PSEUDO_LABEL_DIRECTORY_TARGET else "")
    return (f"{cfg.EXP_NAME}: {method}, {cfg.SOURCE} -> {cfg.TARGET} ({cfg.NUM_CLASSES} classes), "
            f"{train.MODEL} {'multi' if train.MULTI_LEVEL else 'single'}-level, "
            f"{total_iterations(cfg)} iterations, snapshots every {train.SAVE_PRED_EVERY} "
            f"in {train.SNAPSHOT_DIR}")


def parse_args(argv):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--cfg", required=True, help="the YAML config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest train state in the run's snapshot folder "
                             "(from iteration 0 when there is none yet)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard scalars and images to TRAIN.TENSORBOARD_LOGDIR")
    parser.add_argument("--viz-every-iter", type=int, default=None,
                        help="image grids every N iterations (overrides TRAIN.TENSORBOARD_VIZRATE)")
    parser.add_argument("--exp-suffix", default="", help="appended to EXP_NAME (a separate run folder)")
    parser.add_argument("--random-train", action="store_true",
                        help="do not seed the random generators from TRAIN.RANDOM_SEED")
    return parser.parse_args(argv)


def resume_command(args):
    script = sys.argv[0] if sys.argv[0].endswith(".py") else "advent/scripts/train.py"
    launcher = ["python"]
    if launched_by_torchrun():
        launcher = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', get_world_size())}"]
    words = launcher + [script, "--cfg", args.cfg]
    if args.exp_suffix:
        words += ["--exp-suffix", args.exp_suffix]
    if args.tensorboard:
        words.append("--tensorboard")
    return shlex.join(words + ["--resume"])


def check_cuda_graph(cfg, device):
    """TRAIN.CUDA_GRAPH runs where a graph can hold the whole iteration: CUDA, one process, and no
    fp16 loss scaling (which reads the gradients back to the host every step)."""
    if not cfg.TRAIN.CUDA_GRAPH:
        return
    if device.type != "cuda":
        raise UserError(f"TRAIN.CUDA_GRAPH needs a CUDA GPU, but this run uses {device} "
                        f"(GPU_ID {cfg.GPU_ID}); set TRAIN.CUDA_GRAPH: False")
    if get_world_size() > 1:
        raise UserError("TRAIN.CUDA_GRAPH runs in one process, not under torchrun; set TRAIN.CUDA_GRAPH: False")
    if cfg.TRAIN.AMP == "fp16":
        raise UserError("TRAIN.CUDA_GRAPH works with TRAIN.AMP 'none' or 'bf16', not 'fp16' (its loss scaling "
                        "reads the gradients back every step)")


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    viz_rate = {} if args.viz_every_iter is None else {"TRAIN.TENSORBOARD_VIZRATE": args.viz_every_iter}
    cfg = load_config(args.cfg, args.exp_suffix, viz_rate)
    if args.viz_every_iter is not None and args.viz_every_iter <= 0:
        raise UserError(f"--viz-every-iter must be positive, got {args.viz_every_iter}")
    device = select_device(cfg.GPU_ID, cfg.TF32, cfg.CUDNN_BENCHMARK)
    check_cuda_graph(cfg, device)
    processes = f" x {get_world_size()} processes" if get_world_size() > 1 else ""
    log.info("%s on %s%s; full config: %s/config.yml", describe(cfg), device, processes, cfg.TRAIN.SNAPSHOT_DIR)
    try:
        train_domain_adaptation(cfg, device, resume=args.resume, tensorboard=args.tensorboard,
                                seeded=not args.random_train)
    except TrainingInterrupted as stop:
        if is_main_process():
            print(f"{signal.Signals(stop.signum).name}: stopped after {stop.n_iter} iterations, train "
                  f"state saved to {stop.path}; resume with: {resume_command(args)}", file=sys.stderr,
                  flush=True)
        leave_process_group()
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        print(f"aborted without saving; the newest train state in {cfg.TRAIN.SNAPSHOT_DIR} is kept",
              file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
