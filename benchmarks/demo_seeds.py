"""The demo over several seeds: mean and spread of every number its table prints.

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--quick] [--study] [--jobs N --threads T] [--out DIR] [--reuse]

Runs `python advent/scripts/demo.py --seed S` once per seed (each its own data, in <out>/data,
its own output folder <out>/seedS and its console output in <out>/seedS.log), reads the
demo_results.json each run wrote, and prints per seed and as mean +- sample standard deviation:
the target val mIoU of every model, the kept share and accuracy of the ESL and MPSL
pseudo-labels, and how many seeds met the orderings the ESL paper reports (ESL retrain >=
AdvEnt >= source-only; ESL's pseudo-labels more accurate than MPSL's).

--study (demo.py --study) adds the MPSL retrain and the two oracles (retrained on target-train
ground truth: all of it; on exactly ESL's kept pixels), the gaps between them per seed (label
noise: oracle at ESL's coverage - ESL retrain; coverage: oracle all - oracle at coverage; ESL -
MPSL retrain) and a per-class table of the IoU means. The summary goes to <out>/demo_seeds.json.
The default demo takes about 9 minutes per seed on an idle 2-core machine; --study adds three
retraining runs of 500 iterations each (--study over seeds 0 1 2 with --jobs 3 --threads 1, the
three seeds sharing two cores, took 43 minutes). --jobs N --threads T runs N seeds at once with T
torch threads each; the thread count changes the last digits, so compare runs with the same T.
--reuse takes the results of a seed already run into <out> with the same --quick / --study
instead of running it again (a long study can be run a few seeds at a time).
"""
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from advent import PROJECT_ROOT
from advent.demo.report import per_class_table
from advent.utils.cli import ArgumentParser, MAX_SEED, description, non_empty_path, positive, seed
from advent.utils.output_dir import check_owner, check_writable, recorded_file
from advent.utils.runtime import run_main
from advent.utils.serialization import json_dump, json_load

WRITER = "demo_seeds.py"
DEMO = PROJECT_ROOT / "advent" / "scripts" / "demo.py"
# (row, model a, model b): the per-seed differences of mIoU the study reports
GAPS = (("label noise: oracle at ESL's coverage - ESL retrain", "oracle_coverage", "esl"),
        ("coverage: oracle all GT - oracle at ESL's coverage", "oracle_all", "oracle_coverage"),
        ("ESL retrain - MPSL retrain", "esl", "mpsl"),
        ("ESL retrain - AdvEnt", "esl", "advent"))


def parse_args(argv=None):
    parser = ArgumentParser(description=description(__doc__))
    parser.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2], help=f"each 0 to {MAX_SEED}")
    parser.add_argument("--quick", action="store_true", help="demo.py --quick (shorter runs)")
    parser.add_argument("--study", action="store_true", help="demo.py --study (MPSL retrain, oracles)")
    parser.add_argument("--jobs", type=positive, default=1, help="seeds run at once (default 1)")
    parser.add_argument("--threads", type=positive, help="torch threads of each run (default: PyTorch's)")
    parser.add_argument("--out", type=non_empty_path, default=str(PROJECT_ROOT / "experiments" / "demo_seeds"))
    parser.add_argument("--reuse", action="store_true",
                        help="take the results of seeds already run into --out with the same --quick / --study")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds: each seed once, got {args.seeds}")
    return args


def run_seed(seed, args, out):
    """Run the demo for `seed` (or, --reuse, take its earlier run); its results (demo_results.json)."""
    earlier = out / f"seed{seed}" / "demo_results.json"
    if args.reuse and earlier.is_file():
        try:
            results = json_load(earlier)
        except (OSError, ValueError):
            results = {}  # unreadable: run the seed again (demo.py replaces its own folder)
        complete = isinstance(results, dict) and {"models", "pseudo_labels"} <= set(results)
        if complete and (results.get("quick"), results.get("study")) == (args.quick, args.study):
            print(f"seed {seed}: reusing {earlier}", flush=True)
            return results
    command = [sys.executable, str(DEMO), "--seed", str(seed), "--out", str(out / f"seed{seed}"),
               "--data", str(out / "data")]
    command += ["--quick"] * args.quick + ["--study"] * args.study
    env = dict(os.environ)
    if args.threads:
        command += ["--threads", str(args.threads)]
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = out / f"seed{seed}.log"
    print(f"$ {' '.join(command)} > {log}", flush=True)
    start = time.time()
    with recorded_file(log, WRITER) as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"seed {seed}: demo.py failed (exit {result.returncode}); the end of {log}:\n{tail}")
    print(f"seed {seed} done in {time.time() - start:.0f} s", flush=True)
    return json_load(out / f"seed{seed}" / "demo_results.json")


def rows(results):
    """{row name: value} of one run's table."""
    models = results["models"]
    values = {f"mIoU {entry['name']}": entry["mIoU"] for entry in models.values()}
    for entry in results["pseudo_labels"].values():
        values[f"{entry['name']} labels kept %"] = 100 * entry["kept_fraction"]
        if "accuracy_kept" in entry:  # not the oracles': ground truth
            values[f"{entry['name']} labels accuracy %"] = 100 * entry["accuracy_kept"]
            values[f"{entry['name']} labels mIoU"] = 100 * entry["mIoU_kept"]
    for name, a, b in GAPS:
        if a in models and b in models:
            values[name] = models[a]["mIoU"] - models[b]["mIoU"]
    return values


def orderings(values):
    """{claim: whether this run met it}."""
    mious = {name[len("mIoU "):]: value for name, value in values.items() if name.startswith("mIoU ")}
    claims = {
        "AdvEnt >= source-only": mious["AdvEnt"] >= mious["source-only"],
        "ESL retrain >= AdvEnt": mious["ESL retrain"] >= mious["AdvEnt"],
        "ESL labels more accurate than MPSL": values["ESL labels accuracy %"] > values["MPSL labels accuracy %"],
    }
    if "MPSL retrain" in mious:
        claims["ESL retrain >= MPSL retrain"] = mious["ESL retrain"] >= mious["MPSL retrain"]
    return claims


def mean_std(values):
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else None  # undefined for one seed
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(per_seed):
    """{row: {mean, std, values}} over the seeds, and {claim: number of seeds that met it}."""
    table = {name: mean_std(run[name] for run in per_seed) for name in per_seed[0]}
    met = {claim: sum(orderings(run)[claim] for run in per_seed) for claim in orderings(per_seed[0])}
    return table, met


def mean_models(runs):
    """{model: {mIoU, per_class: {class: IoU}}}, each the mean over the seeds (None where a seed
    has it undefined)."""
    def mean(values):
        return None if None in values else statistics.fmean(values)

    return {model: {"mIoU": mean([run["models"][model]["mIoU"] for run in runs]),
                    "per_class": {name: mean([run["models"][model]["per_class"][name] for run in runs])
                                  for name in entry["per_class"]}}
            for model, entry in runs[0]["models"].items()}


def print_summary(seeds, table, met):
    print(f"\n{'':54}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}{'std':>7}")
    for name, row in table.items():
        std = "-" if row["std"] is None else f"{row['std']:.2f}"
        print(f"{name:54}" + "".join(f"{v:9.2f}" for v in row["values"]) + f"{row['mean']:9.2f}{std:>7}")
    print()
    for claim, count in met.items():
        print(f"{claim:40} {count} of {len(seeds)} seeds")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    # before any run: neither another script's folder nor a user's file of a name it writes
    check_owner(out, WRITER, "--out", guests=("demo.py",))
    check_writable([out / f"seed{seed}.log" for seed in args.seeds] + [out / "demo_seeds.json"], WRITER, "--out")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda seed: run_seed(seed, args, out), args.seeds))
    table, met = summarize([rows(run) for run in runs])
    print_summary(args.seeds, table, met)
    means = mean_models(runs)
    if args.study:
        print(f"\nMean over seeds {', '.join(map(str, args.seeds))}. {per_class_table(means)}")
    json_dump({"seeds": args.seeds, "quick": args.quick, "study": args.study, "rows": table,
               "orderings_met": met, "mean_per_class": means}, out / "demo_seeds.json", WRITER)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
