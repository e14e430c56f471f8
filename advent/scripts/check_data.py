"""Check a configuration's datasets before a long run (data stage).

    python advent/scripts/check_data.py --cfg FILE [--sample N]

For the source, each target split the config uses (TRAIN / TEST / ESL.SET_TARGET) and the
pseudo-label folder when set: the layout, listed vs present files (one directory listing per
folder), whole-file decoding of images, label values and image/label sizes on an evenly spaced
sample (the rules by which the loaders stop train.py, esl.py and test.py at such a file), and
which splits have labels against which need them (training: none; test: required; esl:
optional, for its quality report only). Exit code 0: all well; 1: problems found (listed last); 2: a user
error such as a bad config file.
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import sys
from dataclasses import dataclass, field

import numpy as np

from advent.config import load_config, mutable_copy
from advent.dataset import factory
from advent.dataset.base_dataset import image_size, missing_files, open_image
from advent.utils.cli import ArgumentParser, description
from advent.utils.errors import UserError
from advent.utils.runtime import run_main

NEEDS = {
    "train": ("none", "training needs no target labels"),
    "esl": ("optional", "esl uses labels only for its quality report"),
    "test": ("required", "test needs labels"),
}
NEED_ORDER = ("none", "optional", "required")


@dataclass
class Report:
    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def add(self, text):
        self.lines.append(text)

    def problem(self, text):
        self.problems.append(text)
        self.lines.append(f"  PROBLEM: {text}")

    def text(self):
        if self.problems:
            summary = [f"{len(self.problems)} problem(s) found:"] + [f"  - {p}" for p in self.problems]
        else:
            summary = ["all checks passed"]
        return "\n".join(self.lines + summary)


def parse_args(argv):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--cfg", required=True, help="the YAML config whose datasets to check")
    parser.add_argument("--sample", type=int, default=20,
                        help="images and label files decoded per split (default 20)")
    args = parser.parse_args(argv)
    if args.sample < 1:
        raise UserError(f"--sample must be at least 1, got {args.sample}")
    return args


def evenly_spaced(items, count):
    if count <= 0 or not items:
        return []
    indices = np.unique(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int))
    return [items[i] for i in indices]


def build(make, title, report):
    """The dataset `make()` builds, or None after reporting its UserError as a problem."""
    try:
        return make()
    except UserError as error:
        report.problem(f"{title}: {error}")
        return None


def count_files(names, path_of, what, title, report, required=True):
    """Report listed vs present; a missing file is a problem when `required`. Returns the present names."""
    missing = set(missing_files([path_of(n) for n in names]))
    present = [n for n in names if path_of(n) not in missing]
    report.add(f"  {what}: {len(present)}/{len(names)} present")
    if missing and required:
        first = next(path_of(n) for n in names if path_of(n) in missing)
        report.problem(f"{title}: {len(missing)} of {len(names)} {what} missing; first: {first}")
    return present


def check_label_values(dataset, names, title, report):
    """Decode a sample of label files; values outside the dataset's id set are a problem (the
    loader's rule: `unexpected_label_ids`, which stops test.py, esl.py and train.py at such a file)."""
    try:
        _, description = dataset.expected_label_ids()
    except UserError as error:
        report.problem(f"{title}: {error}")
        return
    bad = []
    for name in names:
        path = dataset.label_path(name)
        try:
            outside = dataset.unexpected_label_ids(dataset.open_label(path))
        except UserError as error:
            report.problem(f"{title}: {error}")
            continue
        if outside.size:
            bad.append((path, outside))
    if bad:
        path, outside = bad[0]
        report.problem(f"{title}: {len(bad)} of {len(names)} sampled label files hold values outside "
                       f"{description}; first: {path} ({outside[:8].tolist()})")
    else:
        report.add(f"  label values: {len(names)} sampled files hold only {description}")


def check_images_decode(dataset, names, title, report):
    """Decode a sample of images whole (a truncated file has a sound header: the loader would stop
    at it mid-run)."""
    broken = []
    for name in names:
        try:
            open_image(dataset.image_path(name))
        except UserError as error:
            broken.append(str(error))
    if broken:
        report.problem(f"{title}: {len(broken)} of {len(names)} sampled images cannot be decoded; first: {broken[0]}")
    else:
        report.add(f"  images: {len(names)} sampled files decode")


def check_sizes(dataset, names, title, report):
    """Image and label sizes (file headers) must agree, as the loader requires, except where it
    allows a difference (LABEL_SIZE_MAY_DIFFER: GTA5, whose loader resizes both)."""
    try:
        pairs = [(n, image_size(dataset.image_path(n)), image_size(dataset.label_path(n), "label"))
                 for n in names]
    except UserError as error:
        report.problem(f"{title}: {error}")
        return
    differ = [(n, a, b) for n, a, b in pairs if a != b]
    if not differ:
        report.add(f"  sizes: image and label agree in {len(pairs)} sampled pairs")
    elif dataset.LABEL_SIZE_MAY_DIFFER:
        report.add(f"  sizes: {len(differ)} of {len(pairs)} sampled pairs differ "
                   "(harmless: both are resized)")
    else:
        name, a, b = differ[0]
        report.problem(f"{title}: {len(differ)} of {len(pairs)} sampled image/label pairs differ in size; "
                       f"first: {name} (image {a[0]}x{a[1]}, label {b[0]}x{b[1]})")


def check_split(dataset, title, need, report, sample):
    """Images, ground-truth labels (as `need` demands), label values and sizes of one split."""
    names = list(dict.fromkeys(dataset.img_ids))
    report.add(f"  listed: {len(names)} (from {dataset.list_source()})")
    images = count_files(names, dataset.image_path, "images", title, report)
    labels = count_files(names, dataset.gt_label_path, "labels", title, report,
                         required=need == "required")
    complete = len(labels) == len(names)
    report.add(f"  has labels: {'yes' if complete else 'partly' if labels else 'no'}")
    if need == "optional" and not complete:
        report.add("  (esl will run without labels: no pseudo-label quality report)")
    check_images_decode(dataset, evenly_spaced(images, sample), title, report)
    labelled = set(labels)
    both = evenly_spaced([n for n in images if n in labelled], sample)
    if both:
        check_label_values(dataset, both, title, report)
        check_sizes(dataset, both, title, report)


def check_source(cfg, report, sample):
    title = f"source {cfg.SOURCE} '{cfg.TRAIN.SET_SOURCE}' ({cfg.DATA_DIRECTORY_SOURCE})"
    report.add(f"{title}: labels required")
    dataset = build(lambda: factory.get_source_dataset(cfg, check_files=False), title, report)
    if dataset is not None:
        check_split(dataset, title, "required", report, sample)


def target_uses(cfg):
    """{split: [stage, ...]} for the target splits the config uses."""
    uses = {}
    for stage in ("train", "esl", "test"):
        uses.setdefault(factory.stage_section(cfg, stage).SET_TARGET, []).append(stage)
    return uses


def check_target_split(cfg, split, stages, report, sample):
    need = max((NEEDS[s][0] for s in stages), key=NEED_ORDER.index)
    roles = "; ".join(NEEDS[s][1] for s in stages)
    title = f"target {cfg.TARGET} '{split}' ({cfg.DATA_DIRECTORY_TARGET})"
    report.add(f"{title}: used by {', '.join(stages)} ({roles})")
    # Ground truth only here: the pseudo-label folder is checked on its own.
    plain = mutable_copy(cfg)
    plain.PSEUDO_LABEL_DIRECTORY_TARGET = ""
    dataset = build(lambda: factory.get_target_dataset(plain, stages[-1], check_files=False), title, report)
    if dataset is not None:
        check_split(dataset, title, need, report, sample)


def check_pseudo_labels(cfg, report, sample):
    title = f"pseudo-labels {cfg.PSEUDO_LABEL_DIRECTORY_TARGET} (target '{cfg.TRAIN.SET_TARGET}')"
    report.add(f"{title}: training uses them as target labels")
    dataset = build(lambda: factory.get_target_dataset(cfg, "train", check_files=False), title, report)
    if dataset is None:
        return
    names = list(dict.fromkeys(dataset.img_ids))
    present = count_files(names, dataset.label_path, "pseudo-labels", title, report)
    if present:
        check_label_values(dataset, evenly_spaced(present, sample), title, report)


def check_class_info(cfg, report):
    """Each stage's info json must load and hold NUM_CLASSES classes."""
    used = {}
    for stage in ("source",) + factory.STAGES:
        try:
            info = factory.get_class_info(cfg, stage)
        except UserError as error:
            report.problem(f"class info of {stage}: {error}")
            continue
        used.setdefault((info.path, info.num_classes), []).append(stage)
    for (path, count), stages in used.items():
        report.add(f"class info of {', '.join(stages)}: {count} classes from {path}")


def check_all(cfg, sample):
    report = Report()
    check_class_info(cfg, report)
    check_source(cfg, report, sample)
    for split, stages in target_uses(cfg).items():
        check_target_split(cfg, split, stages, report, sample)
    if cfg.PSEUDO_LABEL_DIRECTORY_TARGET:
        check_pseudo_labels(cfg, report, sample)
    return report


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.cfg)
    report = check_all(cfg, args.sample)
    print(report.text())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
