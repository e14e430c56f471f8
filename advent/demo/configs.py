"""The demo's configs: the shipped ones in advent/scripts/configs/demo/, with the data folder,
the output folder, the seed, the models of the earlier stages and (--quick) the run lengths set.
With the default arguments they hold exactly the shipped values (tests/test_demo.py checks it)."""
from advent import PROJECT_ROOT
from advent.config import SCRIPTS_DIR, cfg_to_dict, flat_items, get_key, load_config
from advent.domain_adaptation.checkpoint import model_snapshot_path, total_iterations
from advent.utils.serialization import yaml_dump, yaml_load

CONFIG_DIR = SCRIPTS_DIR / "configs" / "demo"
# --quick (CI): every run length times this; the data and all other settings stay.
QUICK_SCALE = 0.15
ITERATION_KEYS = ("TRAIN.MAX_ITERS", "TRAIN.EARLY_STOP", "TRAIN.SAVE_PRED_EVERY", "TEST.SNAPSHOT_STEP",
                  "TEST.SNAPSHOT_MAXITER")
# Which earlier run's final model a config loads: {config: {key: config that trains the model}}.
CHAIN = {"advent": {"TRAIN.RESTORE_FROM": "source_only"},
         "esl": {"TRAIN.RESTORE_FROM": "source_only", "ESL.RESTORE_FROM": "advent"},
         "mpsl": {"TRAIN.RESTORE_FROM": "source_only", "ESL.RESTORE_FROM": "advent"}}
CONFIGS = ("source_only", "advent", "esl", "mpsl")  # in the order their inputs exist
# --study: the oracles retrain exactly as esl.yml, with other pseudo-labels (and their own EXP_NAME)
ORACLES = ("oracle_all", "oracle_coverage")


def set_key(data, key, value):
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def final_snapshot(cfg):
    """The model file a run of `cfg` ends with."""
    return model_snapshot_path(cfg.TRAIN.SNAPSHOT_DIR, total_iterations(cfg))


def shipped_name(name):
    """The shipped config (configs/demo/<it>.yml) that config `name` is made from."""
    return "esl" if name in ORACLES else name


def run_settings(name, shipped, run, root, loaded):
    """{key: value} demo.py sets in config `name`: data, outputs under `root`, seed, earlier models,
    run length. `loaded`: the configs written so far (name -> resolved config)."""
    settings = {key: str(value) for key, value in run.data.cfg_paths().items()}
    settings["EXP_ROOT"] = str(root)
    settings["TRAIN.RANDOM_SEED"] = run.seed
    if name in ORACLES:
        settings["EXP_NAME"] = f"demo_{name}"
    if shipped.get("PSEUDO_LABEL_DIRECTORY_TARGET"):
        settings["PSEUDO_LABEL_DIRECTORY_TARGET"] = str(root / "pseudo_labels" / name)
    for key, earlier in CHAIN.get(shipped_name(name), {}).items():
        settings[key] = str(final_snapshot(loaded[earlier]))
    if run.quick:
        for key in ITERATION_KEYS:
            settings[key] = max(1, round(get_key(shipped, key) * QUICK_SCALE))
    return settings


def write_configs(run, root):
    """Write the configs of this run into <run.work>/configs/, their outputs under `root`;
    return {name: path}, {name: resolved config}."""
    written, loaded = {}, {}
    for name in CONFIGS + (ORACLES if run.study else ()):
        source = CONFIG_DIR / f"{shipped_name(name)}.yml"
        data = yaml_load(source)
        for key, value in run_settings(name, data, run, root, loaded).items():
            set_key(data, key, value)
        path = run.work / "configs" / f"{name}.yml"
        yaml_dump(data, path)
        loaded[name] = load_config(path)
        shipped = dict(flat_items(cfg_to_dict(load_config(source))))
        changed = sorted(key for key, value in flat_items(cfg_to_dict(loaded[name])) if value != shipped.get(key))
        header = (f"# Written by advent/scripts/demo.py from {source.relative_to(PROJECT_ROOT)}.\n"
                  f"# Keys it set to other values than the shipped file: {', '.join(changed) or 'none'}\n")
        if root != run.work:
            header += f"# demo.py ran it with the outputs under {run.work}, the folder it then moved to {root}.\n"
        path.write_text(header + path.read_text())
        written[name] = path
    return written, loaded
