"""Seed sweeps: mean ± std of mIoU and of every class IoU over several test.py results.

    python advent/scripts/summarize.py experiments/snapshots/GTA2Cityscapes_DeepLabv2_AdvEnt_seed*
    python advent/scripts/summarize.py run1/results_best.json run2/results_best.json [--json out.json]

Takes results_single.json / results_best.json files, or folders searched for them. Best-mode
results give two rows of figures: the last snapshot, and the best on val (an oracle selection,
as in the papers). std is the sample standard deviation (n - 1); min and max give the range.
"""
import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line, exit 130)
import sys
from pathlib import Path

import numpy as np

from advent.utils.cli import ArgumentParser, non_empty_path
from advent.utils.errors import UserError
from advent.utils.output_dir import check_writable
from advent.utils.runtime import run_main
from advent.utils.serialization import json_dump, json_load

WRITER = "summarize.py"
RESULT_NAMES = ("results_single.json", "results_best.json")
# what a results file records of how it was evaluated (eval_output.run_header): runs are combined
# only when these agree
SETTING_KEYS = ("target", "set", "images", "num_classes", "input_size", "output_size")
GROUPS = {"single": "single-model results", "last": "last snapshot",
          "best": "best snapshot on val (oracle selection, as in the papers)"}


def find_result_files(paths):
    """The result files named, and those found under the folders named, sorted per folder; a file
    reached twice (a folder and a file in it, overlapping globs) counts once."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for name in RESULT_NAMES for p in path.rglob(name))
            if not found:
                raise UserError(f"no {' or '.join(RESULT_NAMES)} under {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"not found: {path}")
    unique = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def runs_of(path):
    """({group: summary}, the evaluation setting) of one results file; a summary has 'mIoU',
    'per_class' (and 'mIoU13')."""
    try:
        results = json_load(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read results {path}: {error}") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} is not a test.py results file (not a JSON object)")
    if results.get("mode") == "best":
        try:
            by_name = {entry["snapshot"]: entry for entry in results["snapshots"]}
            runs = {"last": by_name[results["last"]], "best": by_name[results["best"]]}
        except (KeyError, TypeError):
            raise UserError(f"{path} is not a complete test.py 'best' results file") from None
    elif "per_class" in results:
        runs = {"single": results}
    else:
        raise UserError(f"{path} is not a test.py results file (no per-class IoU)")
    for summary in runs.values():
        if not is_summary(summary):
            raise UserError(f"{path} is not a test.py results file (an mIoU and a per_class list of "
                            f"{{name, IoU}} expected, mIoU13 a number where given)")
    return runs, {key: results[key] for key in SETTING_KEYS if results.get(key) is not None}


def is_summary(summary):
    """An mIoU (and mIoU13, when there) and a per-class list of {name, IoU}, IoU a number or None
    (a class never seen)."""
    def number(value):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    per_class = summary.get("per_class") if isinstance(summary, dict) else None
    return (isinstance(per_class, list) and number(summary.get("mIoU")) and number(summary.get("mIoU13"))
            and all(isinstance(e, dict) and isinstance(e.get("name"), str) and number(e.get("IoU"))
                    for e in per_class))


def statistics(values):
    """mean, std (n - 1; None for one run, where it is undefined), min, max over the defined values;
    None when none is."""
    values = np.array([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return None
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return {"mean": float(values.mean()), "std": std, "min": float(values.min()),
            "max": float(values.max()), "n": int(values.size)}


def summarize_group(summaries, sources):
    """Statistics of mIoU (and mIoU13) and of each class IoU over runs with the same classes."""
    names = [entry["name"] for entry in summaries[0]["per_class"]]
    for summary, source in zip(summaries, sources):
        if [entry["name"] for entry in summary["per_class"]] != names:
            raise UserError(f"{source} has other classes than {sources[0]}: results cannot be combined")
    table = {"mIoU": statistics(s["mIoU"] for s in summaries)}
    if all("mIoU13" in s for s in summaries):
        table["mIoU13"] = statistics(s["mIoU13"] for s in summaries)
    for i, name in enumerate(names):
        table[name] = statistics(s["per_class"][i]["IoU"] for s in summaries)
    return {"runs": [str(s) for s in sources], "statistics": table}


def check_same_setting(setting, path, first, first_path):
    """Results of one evaluation setting only (a mean over two target sets, or two output sizes,
    would mean nothing); a key a file does not record is not compared."""
    for key in SETTING_KEYS:
        if key in setting and key in first and setting[key] != first[key]:
            raise UserError(f"{path} was evaluated with {key} {setting[key]}, {first_path} with {first[key]}: "
                            f"results of different evaluations cannot be combined")


def summarize_files(files):
    """{group: summarize_group(...)} over the result files, for each group present."""
    grouped, first = {}, None
    for path in files:
        runs, setting = runs_of(path)
        first = first or (setting, path)
        check_same_setting(setting, path, *first)
        for group, summary in runs.items():
            grouped.setdefault(group, ([], []))
            grouped[group][0].append(summary)
            grouped[group][1].append(path)
    return {group: summarize_group(*grouped[group]) for group in GROUPS if group in grouped}


def format_group(group, summary):
    width = max(len(name) for name in summary["statistics"]) + 2
    count = len(summary["runs"])
    lines = [f"{GROUPS[group]}: {count} run{'s' if count > 1 else ''}",
             f"{'':<{width}}{'mean':>7} {'± std':>7}{'min':>8}{'max':>8}"]
    for name, stats in summary["statistics"].items():
        if stats is None:
            lines.append(f"{name:<{width}}{'-':>7}")
        else:
            std = "-" if stats["std"] is None else f"{stats['std']:.2f}"
            lines.append(f"{name:<{width}}{stats['mean']:>7.2f} ±{std:>6}{stats['min']:>8.2f}{stats['max']:>8.2f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = ArgumentParser(description="mean ± std of test.py results over runs (e.g. seeds)")
    parser.add_argument("paths", type=non_empty_path, nargs="+", help="results_*.json files or folders holding them")
    parser.add_argument("--json", type=non_empty_path, help="also write the statistics to this JSON file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_writable([args.json], WRITER, "--json")  # before any reading
    summary = summarize_files(find_result_files(args.paths))
    print("\n\n".join(format_group(group, s) for group, s in summary.items()))
    if args.json:
        json_dump(summary, args.json, WRITER)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
