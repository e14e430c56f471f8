"""ESL stage: write entropy-filtered pseudo-labels of the target training images.

    python advent/scripts/esl.py --cfg advent/scripts/configs/esl.yml
    torchrun --nproc_per_node=N advent/scripts/esl.py --cfg ...   (the images shared out; same labels)

Loads ESL.RESTORE_FROM, runs it over the target split ESL.SET_TARGET and writes one 8-bit
PNG per image into PSEUDO_LABEL_DIRECTORY_TARGET, with the report (per-class thresholds,
kept fractions and, when the split has ground truth, pseudo-label accuracy) printed and
saved as esl_report.json beside the labels. ESL.METHOD 'maxprob' gives the MPSL baseline.
Then train on them with train.py and the same config.

PSEUDO_LABEL_DIRECTORY_TARGET is replaced as a whole, so it must be a new or empty folder or
an earlier output of esl.py; a folder holding anything else (another script's output included)
is refused. A second esl.py run into the same folder stops while the first holds it. Ctrl-C or
a kill keeps the previous labels; so does a full disk, which stops the run with one line naming
the file (exit code 2).
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import logging
import os
import sys

from advent.config import cfg_to_dict, load_config
from advent.dataset import check_png_names, get_target_dataset
from advent.domain_adaptation.checkpoint import wait_for_file
from advent.domain_adaptation.esl_UDA import format_report, generate_pseudo_labels, output_folder
from advent.model.inference import load_segmenter
from advent.utils.cli import ArgumentParser
from advent.utils.distributed import (
    get_world_size, is_main_process, join_process_group, leave_process_group, select_device,
)
from advent.utils.errors import UserError
from advent.utils.run_record import build_run_record
from advent.utils.runtime import run_main, setup_logging

log = logging.getLogger("esl")


def parse_args(argv=None):
    parser = ArgumentParser(description="Generate ESL (or MPSL) pseudo-labels for the target domain")
    parser.add_argument("--cfg", required=True, help="YAML config file")
    return parser.parse_args(argv)


def check_checkpoint(path, wait, timeout):
    """ESL.RESTORE_FROM must be set and exist; with ESL.WAIT_MODEL, wait for it to appear."""
    if not path:
        raise UserError("ESL.RESTORE_FROM is empty: set it to the trained model (e.g. the best AdvEnt snapshot)")
    if wait:
        wait_for_file(path, timeout, "ESL")
    elif not os.path.exists(path):
        raise UserError(f"ESL.RESTORE_FROM not found: {path}")


def target_images(cfg):
    """The ESL split, checked: it lists images, and their pseudo-label names do not collide."""
    dataset = get_target_dataset(cfg, "esl")
    if len(dataset) == 0:
        raise UserError(f"the target split '{cfg.ESL.SET_TARGET}' lists no image")
    check_png_names(dataset.img_ids, "PSEUDO_LABEL_DIRECTORY_TARGET")
    return dataset


def load_model(cfg, device):
    """(model on `device`, CheckpointInfo) of ESL.RESTORE_FROM, once it exists."""
    esl = cfg.ESL
    check_checkpoint(esl.RESTORE_FROM, esl.WAIT_MODEL, esl.WAIT_TIMEOUT)
    return load_segmenter(esl.MODEL, cfg.NUM_CLASSES, esl.MULTI_LEVEL, esl.RESTORE_FROM, device, cfg.CHANNELS_LAST)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    cfg = load_config(args.cfg)
    device = select_device(cfg.GPU_ID, cfg.TF32, cfg.CUDNN_BENCHMARK)
    # every check first, on every process (the data before any folder is made; the output folder,
    # locked for the whole run, before the model), then the process group
    dataset = target_images(cfg)
    output = output_folder(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)  # checked; made once the model is loaded
    model, checkpoint = load_model(cfg, device)
    with output.held() as output_dir:
        join_process_group(device)
        record = None
        if is_main_process():
            record = build_run_record("esl", cfg_to_dict(cfg), device, [checkpoint])
            record["processes"] = get_world_size()
        log.info("ESL (%s) over %d images of '%s' -> %s", cfg.ESL.METHOD, len(dataset), cfg.ESL.SET_TARGET,
                 output_dir)
        report = generate_pseudo_labels(model, dataset, cfg, output, device, record)
        if is_main_process():
            print(format_report(report))
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
