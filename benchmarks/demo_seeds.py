"""The demo over several seeds: mean and spread of every number its table prints.

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--quick] [--mpsl-retrain] [--out DIR]

Runs `python advent/scripts/demo.py --seed S` once per seed (each its own data, in
<out>/data, and its own output folder <out>/seedS), reads the demo_results.json each run wrote,
and prints per seed and as mean +- sample standard deviation: the target val mIoU of every
model, the kept share and accuracy of the ESL and MPSL pseudo-labels, and how many seeds met
the orderings the ESL paper reports (ESL retrain >= AdvEnt >= source-only; ESL's pseudo-labels
more accurate than MPSL's). The summary goes to <out>/demo_seeds.json as well.
About 8 minutes per seed on 2 CPU cores (--quick: 1.5).
"""
import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from advent import PROJECT_ROOT
from advent.utils.serialization import json_dump, json_load

DEMO = PROJECT_ROOT / "advent" / "scripts" / "demo.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="demo.py --quick (shorter runs)")
    parser.add_argument("--mpsl-retrain", action="store_true", help="demo.py --mpsl-retrain")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "experiments" / "demo_seeds"))
    return parser.parse_args(argv)


def run_seed(seed, args, out):
    """Run the demo for `seed`; its results (demo_results.json)."""
    command = [sys.executable, str(DEMO), "--seed", str(seed), "--out", str(out / f"seed{seed}"),
               "--data", str(out / "data")]
    command += ["--quick"] * args.quick + ["--mpsl-retrain"] * args.mpsl_retrain
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    return json_load(out / f"seed{seed}" / "demo_results.json")


def rows(results):
    """{row name: value} of one run's table."""
    values = {f"mIoU {entry['name']}": entry["mIoU"] for entry in results["models"].values()}
    for entry in results["pseudo_labels"].values():
        values[f"{entry['name']} labels kept %"] = 100 * entry["kept_fraction"]
        values[f"{entry['name']} labels accuracy %"] = 100 * entry["accuracy_kept"]
        values[f"{entry['name']} labels mIoU"] = 100 * entry["mIoU_kept"]
    return values


def orderings(values):
    """{claim: whether this run met it}."""
    mious = {name[len("mIoU "):]: value for name, value in values.items() if name.startswith("mIoU ")}
    return {
        "AdvEnt >= source-only": mious["AdvEnt"] >= mious["source-only"],
        "ESL retrain >= AdvEnt": mious["ESL retrain"] >= mious["AdvEnt"],
        "ESL labels more accurate than MPSL": values["ESL labels accuracy %"] > values["MPSL labels accuracy %"],
    }


def summarize(per_seed):
    """{row: {mean, std, values}} over the seeds, and {claim: number of seeds that met it}."""
    table = {}
    for name in per_seed[0]:
        values = [run[name] for run in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        table[name] = {"mean": statistics.fmean(values), "std": std, "values": values}
    met = {claim: sum(orderings(run)[claim] for run in per_seed) for claim in orderings(per_seed[0])}
    return table, met


def print_summary(seeds, table, met):
    print(f"\n{'':34}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}{'std':>7}")
    for name, row in table.items():
        print(f"{name:34}" + "".join(f"{v:9.2f}" for v in row["values"]) + f"{row['mean']:9.2f}{row['std']:7.2f}")
    print()
    for claim, count in met.items():
        print(f"{claim:40} {count} of {len(seeds)} seeds")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    per_seed = [rows(run_seed(seed, args, out)) for seed in args.seeds]
    table, met = summarize(per_seed)
    print_summary(args.seeds, table, met)
    json_dump({"seeds": args.seeds, "quick": args.quick, "rows": table, "orderings_met": met},
              out / "demo_seeds.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
