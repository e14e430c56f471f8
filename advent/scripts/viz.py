"""Entropy maps: image | prediction | normalised entropy | ground truth | pseudo-label, per image.

    python advent/scripts/viz.py --cfg advent/scripts/configs/advent_pretrained.yml --num-images 8
    python advent/scripts/viz.py --cfg advent/scripts/configs/esl.yml --stage esl --names aachen/aachen_000000_000019_leftImg8bit.png

--stage test (default) shows TEST.SET_TARGET with the model of TEST.RESTORE_FROM[0]; --stage esl
shows ESL.SET_TARGET with ESL.RESTORE_FROM; --checkpoint overrides either (e.g. a snapshot of a
'best'-mode run). Ground truth is shown when the split has it, the pseudo-label when
PSEUDO_LABEL_DIRECTORY_TARGET holds one for the image. Everything is shown at the input size, and
the prediction and entropy are those of the stage's script: test.py's argmax of the upsampled
logits, or ESL's argmax and normalised entropy of the upsampled probabilities (what it thresholds).
One PNG per image goes to --out (default EXP_ROOT_LOGS/viz/EXP_NAME), written beside what the
folder holds: its manifest lists the files viz.py wrote there (output_dir), which a later run may
replace; a file of that name it did not write is refused with one line, before any model work.
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advent.config import load_config
from advent.dataset import get_class_info, get_target_dataset, png_name
from advent.dataset.factory import stage_section
from advent.domain_adaptation.pseudo_labels import predict_with_confidence
from advent.model.inference import load_segmenter, main_logits, upsample
from advent.utils.cli import ArgumentParser, non_empty_path
from advent.utils.distributed import select_device
from advent.utils.errors import UserError
from advent.utils.output_dir import check_creatable, check_names, check_owner, prepare_folder
from advent.utils.runtime import run_main, setup_logging
from advent.utils.viz_segmask import (
    entropy_image, input_image, mask_image, panel_row, save_png, softmax_entropy,
)

log = logging.getLogger("viz")
WRITER = "viz.py"


def parse_args(argv=None):
    parser = ArgumentParser(description="Write image | prediction | entropy | labels panels")
    parser.add_argument("--cfg", type=non_empty_path, required=True, help="YAML config file")
    parser.add_argument("--stage", choices=("test", "esl"), default="test",
                        help="which config section gives the split, sizes and model (default: test)")
    parser.add_argument("--checkpoint", type=non_empty_path,
                        help="model file (default: TEST.RESTORE_FROM[0] or ESL.RESTORE_FROM)")
    parser.add_argument("--num-images", type=int, default=4, help="the first N images of the split")
    parser.add_argument("--names", nargs="+", help="list entries to show instead of the first N")
    parser.add_argument("--out", type=non_empty_path, help="output folder (default: EXP_ROOT_LOGS/viz/EXP_NAME)")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {args.num_images}")
    return args


def model_settings(cfg, stage, checkpoint):
    """(model name, multi-level, checkpoint path) for the stage."""
    if stage == "esl":
        name, multi_level, default = cfg.ESL.MODEL, cfg.ESL.MULTI_LEVEL, cfg.ESL.RESTORE_FROM
    else:
        name, multi_level, default = cfg.TEST.MODEL[0], cfg.TEST.MULTI_LEVEL[0], cfg.TEST.RESTORE_FROM[0]
    path = checkpoint or default
    if not path:
        key = "ESL.RESTORE_FROM" if stage == "esl" else "TEST.RESTORE_FROM"
        raise UserError(f"{key} is empty: pass --checkpoint (e.g. a model_{{n}}.pth snapshot)")
    return name, multi_level, path


def chosen_indices(dataset, names, count):
    if not names:
        return list(range(min(count, len(dataset))))
    entries = list(dataset.img_ids)
    missing = [n for n in names if n not in entries]
    if missing:
        raise UserError(f"not in the split's list: {missing[0]}")
    return [entries.index(n) for n in names]


def pseudo_label(folder, name, size):
    """The pseudo-label of list entry `name` resized (nearest) to `size` (W, H), or None."""
    path = Path(folder) / png_name(name) if folder else None
    if path is None or not path.exists():
        return None
    return np.asarray(Image.open(path).resize(size, Image.NEAREST))


def prediction_and_entropy(model, image, size, stage):
    """The label map and normalised entropy (H x W each, at `size` (W, H)) as the stage's script
    computes them: test.py takes the argmax of the upsampled logits; ESL upsamples the
    probabilities and takes their argmax and entropy."""
    logits = main_logits(model, image[None])
    if stage == "esl":
        label, entropy = predict_with_confidence(logits, size, "entropy")
        return label[0].cpu(), entropy[0].cpu()
    logits = upsample(logits, size)[0].cpu()
    return logits.argmax(0), softmax_entropy(logits)


def panels_for(model, item, cfg, stage, palette, has_labels, device):
    """[(title, panel)] of one dataset item of `stage`'s split, all at the input size."""
    image, label, _, name = item
    height, width = image.shape[1:]
    prediction, entropy = prediction_and_entropy(model, torch.from_numpy(image).to(device), (width, height), stage)
    mean = stage_section(cfg, stage).IMG_MEAN
    panels = [("image", input_image(image, mean)), ("prediction", mask_image(prediction, palette)),
              ("entropy", entropy_image(entropy, colormap=True))]
    if has_labels:
        resized = Image.fromarray(label.astype(np.uint8)).resize((width, height), Image.NEAREST)
        panels.append(("ground truth", mask_image(np.asarray(resized), palette)))
    pseudo = pseudo_label(cfg.PSEUDO_LABEL_DIRECTORY_TARGET, name, (width, height))
    if pseudo is not None:
        panels.append(("pseudo-label", mask_image(pseudo, palette)))
    return panels


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    cfg = load_config(args.cfg)
    name, multi_level, checkpoint = model_settings(cfg, args.stage, args.checkpoint)
    dataset = get_target_dataset(cfg, args.stage)
    indices = chosen_indices(dataset, args.names, args.num_images)
    out = args.out or Path(cfg.EXP_ROOT_LOGS) / "viz" / cfg.EXP_NAME
    check_owner(out, WRITER, "--out")  # the user's files may stay beside the panels, another script's not
    check_creatable(out, "the panels")
    check_names(out, WRITER, [png_name(dataset.img_ids[i]) for i in indices], "--out")
    device = select_device(cfg.GPU_ID, cfg.TF32, cfg.CUDNN_BENCHMARK)
    model, _ = load_segmenter(name, cfg.NUM_CLASSES, multi_level, checkpoint, device)
    out = prepare_folder(out, WRITER, "the panels")  # once the checkpoint loaded: a bad one makes no folder
    palette = get_class_info(cfg, args.stage).palette
    for index in indices:
        item = dataset[index]
        titled = panels_for(model, item, cfg, args.stage, palette, dataset.has_labels, device)
        row = panel_row([p for _, p in titled], [t for t, _ in titled])
        path = out / png_name(item[3])
        save_png(Image.fromarray(row), path, WRITER)
        log.info("wrote %s (%s)", path, " | ".join(t for t, _ in titled))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
