"""The demo's table: target val mIoU per model, the pseudo-labels' quality and (--study) the
per-class IoU of every model with the gaps the oracles measure (also benchmarks/demo_seeds.py)."""
from advent.demo.configs import ORACLES

MODELS = {"source_only": "source-only", "advent": "AdvEnt", "esl": "ESL retrain", "mpsl": "MPSL retrain",
          "oracle_all": "oracle: all target GT", "oracle_coverage": "oracle at ESL's coverage"}
SHORT = {"source_only": "source", "advent": "AdvEnt", "esl": "ESL", "mpsl": "MPSL", "oracle_all": "GT all",
         "oracle_coverage": "GT@ESL"}  # the per-class table's column heads
LABELS = {"esl": "ESL", "mpsl": "MPSL", "oracle_all": "GT all", "oracle_coverage": "GT@ESL"}
# The gaps the per-class table shows: label noise (GT at ESL's coverage - ESL), coverage (all GT -
# GT at ESL's coverage), and ESL - MPSL after retraining.
GAPS = (("oracle_coverage", "esl"), ("oracle_all", "oracle_coverage"), ("esl", "mpsl"))


def format_table(results, out):
    """The models' target val mIoU and the pseudo-labels' quality, as printed at the end; with
    --study the per-class IoU of every model."""
    width = max(len(entry["name"]) for entry in results["models"].values()) + 4
    lines = [f"Synthetic GTA5 -> Cityscapes, seed {results['seed']}{' (--quick)' if results['quick'] else ''}, "
             f"{results['model']}: mIoU on target val ({results['target_val_images']} images), final snapshots",
             f"  {'model':<{width}}{'mIoU':>8}"]
    for entry in results["models"].values():
        lines.append(f"  {entry['name']:<{width}}{entry['mIoU']:>8.2f}")
    labels = {key: entry for key, entry in results["pseudo_labels"].items() if key not in ORACLES}
    if labels:
        images = next(iter(labels.values()))["images"]
        lines += ["", f"Pseudo-labels of target train ({images} images) from the AdvEnt model, scored against "
                      f"its ground truth (never used in training but by the oracles):",
                  f"  {'method':<8}{'kept %':>8}{'accuracy of kept %':>20}{'mIoU of kept':>14}{'accuracy of all %':>19}"]
        for entry in labels.values():
            lines.append(f"  {entry['name']:<8}{100 * entry['kept_fraction']:>8.2f}"
                         f"{100 * entry['accuracy_kept']:>20.2f}{100 * entry['mIoU_kept']:>14.2f}"
                         f"{100 * entry['accuracy_all']:>19.2f}")
        for key in ORACLES:
            if key in results["pseudo_labels"]:
                entry = results["pseudo_labels"][key]
                lines.append(f"  {entry['name']:<8}{100 * entry['kept_fraction']:>8.2f}  (ground truth)")
    if results.get("study"):
        lines += ["", per_class_table(results["models"])]
    lines.append(f"\n{results['seconds']['total']:.0f} s in all; numbers from the results files in {out}")
    return "\n".join(lines)


def per_class_table(models):
    """IoU per class (rows) and model (columns), with the gaps the oracles measure."""
    keys = list(models)
    gaps = [(a, b) for a, b in GAPS if a in models and b in models]
    lines = ["IoU per class on target val (GT all / GT@ESL: retrained with all target-train ground truth / "
             "with it on ESL's kept pixels):",
             f"  {'class':<15}" + "".join(f"{SHORT[k]:>8}" for k in keys)
             + "".join(f"{SHORT[a] + ' - ' + SHORT[b]:>17}" for a, b in gaps)]
    for name in [*next(iter(models.values()))["per_class"], "mIoU"]:
        values = {k: models[k]["mIoU"] if name == "mIoU" else models[k]["per_class"][name] for k in keys}
        if all(value is None for value in values.values()):
            continue  # a class in neither the labels nor the predictions of target val
        row = f"  {name:<15}" + "".join(f"{number(values[k]):>8}" for k in keys)
        row += "".join(f"{number(difference(values[a], values[b]), '+.2f'):>17}" for a, b in gaps)
        lines.append(row)
    return "\n".join(lines)


def difference(a, b):
    return None if a is None or b is None else a - b


def number(value, form=".2f"):
    return "-" if value is None else format(value, form)
