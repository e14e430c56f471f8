"""The demo (advent/scripts/demo.py, advent/demo/): the shipped demo configs, the --study oracles'
configs and pseudo-labels, its output folder, and one --quick run of the whole pipeline whose
table must be what the stages' results files say."""
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from advent import PROJECT_ROOT
from advent.config import cfg_to_dict, flat_items, get_key, load_config
from advent.dataset import get_target_dataset, png_name
from advent.demo import configs, oracle_labels, pictures, pipeline, report
from advent.demo.synthetic import _demo_data, write_demo_data
from advent.utils.errors import UserError
from advent.utils.output_dir import MANIFEST_NAME, foreign_entries, read_manifest
from advent.utils.serialization import json_dump, json_load, yaml_load
from benchmark_scripts import load_benchmark
from processes import HANG_GUARD_S

pytestmark = pytest.mark.slow
DEMO = PROJECT_ROOT / "advent" / "scripts" / "demo.py"
DATA_KEYS = ("DATA_DIRECTORY_SOURCE", "DATA_LIST_SOURCE", "DATA_DIRECTORY_TARGET", "DATA_LIST_TARGET")
# EXP_ROOT and the folders derived from it
OUTPUT_KEYS = ("EXP_ROOT", "EXP_ROOT_LOGS", "EXP_ROOT_SNAPSHOT", "TRAIN.SNAPSHOT_DIR", "TEST.SNAPSHOT_DIR",
               "TRAIN.TENSORBOARD_LOGDIR")


def same(a, b):
    """Config values equal; paths compared once resolved."""
    if isinstance(a, str) and "/" in a:
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def test_shipped_configs_are_what_the_default_demo_runs():
    """With the default arguments, every value demo.py sets (data, outputs, seed, the earlier
    stages' final models) is already the shipped value: the configs run as they are by hand."""
    run = SimpleNamespace(data=_demo_data(pipeline.DEFAULT_DATA.resolve() / "seed0", pipeline.DATA["size"], {}),
                          seed=pipeline.DEFAULT_SEED, quick=False)
    loaded = {}
    for name in configs.CONFIGS:
        shipped_path = configs.CONFIG_DIR / f"{name}.yml"
        shipped = load_config(shipped_path)
        settings = configs.run_settings(name, yaml_load(shipped_path), run, pipeline.DEFAULT_OUT.resolve(), loaded)
        assert "TRAIN.RESTORE_FROM" in settings or name == "source_only"
        for key, value in settings.items():
            expected = get_key(cfg_to_dict(shipped), key)
            assert same(value, expected), (name, key, value, expected)
        loaded[name] = shipped


def test_quick_shortens_every_run_and_keeps_the_chain_consistent():
    run = SimpleNamespace(data=_demo_data(Path("/data/seed0"), (128, 64), {}), seed=3, quick=True)
    loaded = {}
    for name in configs.CONFIGS:
        data = yaml_load(configs.CONFIG_DIR / f"{name}.yml")
        settings = configs.run_settings(name, data, run, Path("/out"), loaded)
        for key in configs.ITERATION_KEYS:
            assert settings[key] == max(1, round(get_key(data, key) * configs.QUICK_SCALE))
        assert settings["TRAIN.RANDOM_SEED"] == 3
        for key, value in settings.items():
            configs.set_key(data, key, value)
        loaded[name] = SimpleNamespace(TRAIN=SimpleNamespace(
            SNAPSHOT_DIR=f"/out/snapshots/{data['EXP_NAME']}", EARLY_STOP=data["TRAIN"]["EARLY_STOP"],
            MAX_ITERS=data["TRAIN"]["MAX_ITERS"]))
    # the AdvEnt model ESL reads is the one the shortened AdvEnt run ends with
    advent_iters = loaded["advent"].TRAIN.EARLY_STOP
    assert settings["ESL.RESTORE_FROM"] == f"/out/snapshots/demo_advent/model_{advent_iters}.pth"


def small_run(tmp_path, study=True):
    """A run's settings on a few real synthetic images, its configs written (outputs under final/)."""
    data = write_demo_data(tmp_path / "data", seed=0, num_source=2, num_source_val=1, num_target_train=3,
                           num_target_val=1, size=(32, 16))
    run = SimpleNamespace(data=data, work=tmp_path / "work", seed=0, quick=False, study=study)
    written, loaded = configs.write_configs(run, tmp_path / "final")
    return run, written, loaded


def test_study_oracles_retrain_as_esl_with_only_their_labels_and_names_changed(tmp_path):
    run, written, loaded = small_run(tmp_path)
    assert list(written) == [*configs.CONFIGS, *configs.ORACLES]
    esl = dict(flat_items(cfg_to_dict(loaded["esl"])))
    for name in configs.ORACLES:
        oracle = dict(flat_items(cfg_to_dict(loaded[name])))
        changed = {key for key in esl if oracle[key] != esl[key]}
        # the labels, and the name of the run with the folders named after it
        assert changed == {"PSEUDO_LABEL_DIRECTORY_TARGET", "EXP_NAME", "TRAIN.SNAPSHOT_DIR",
                           "TEST.SNAPSHOT_DIR", "TRAIN.TENSORBOARD_LOGDIR"}, name
        assert Path(oracle["PSEUDO_LABEL_DIRECTORY_TARGET"]) == tmp_path / "final" / "pseudo_labels" / name
        assert Path(oracle["TRAIN.SNAPSHOT_DIR"]) == tmp_path / "final" / "snapshots" / f"demo_{name}"
        assert f"moved to {tmp_path / 'final'}" in written[name].read_text()
    assert list(small_run(tmp_path, study=False)[1]) == list(configs.CONFIGS)


def test_oracle_labels_are_the_ground_truth_in_the_pseudo_label_format(tmp_path):
    _, _, loaded = small_run(tmp_path)
    dataset = get_target_dataset(loaded["esl"], "esl")  # target train, ground truth at the ESL size
    assert dataset.has_labels and len(dataset) == 3
    rng = np.random.default_rng(0)
    kept_dir = tmp_path / "esl_labels"  # stand-in ESL pseudo-labels: wrong classes, half dropped
    kept_dir.mkdir()
    truth = {}
    for index in range(len(dataset)):
        _, gt, _, name = dataset[index]
        kept = rng.integers(0, 19, gt.shape).astype(np.uint8)
        kept[rng.random(gt.shape) < 0.5] = 255
        Image.fromarray(kept).save(kept_dir / png_name(name))
        truth[name] = gt, kept
    folders = [Path(loaded[name].PSEUDO_LABEL_DIRECTORY_TARGET) for name in configs.ORACLES]
    shares = oracle_labels.write_oracle_labels(dataset, kept_dir, *folders)

    pixels = sum(gt.size for gt, _ in truth.values())
    all_dir, coverage_dir = folders
    for name, (gt, kept) in truth.items():
        with Image.open(all_dir / png_name(name)) as image:
            assert image.mode == "L"
            assert np.array_equal(np.asarray(image), gt)
        with Image.open(coverage_dir / png_name(name)) as image:
            written = np.asarray(image)
        assert np.array_equal(written[kept != 255], gt[kept != 255])
        assert (written[kept == 255] == 255).all()
    assert shares[all_dir] == sum(np.count_nonzero(gt != 255) for gt, _ in truth.values()) / pixels
    assert shares[coverage_dir] == sum(np.count_nonzero((gt != 255) & (k != 255)) for gt, k in truth.values()) / pixels
    # train.py's loader reads them as the target labels
    for name, folder in zip(configs.ORACLES, folders):
        assert sorted(p.name for p in folder.iterdir()) == sorted(png_name(n) for n in truth)
        train_set = get_target_dataset(loaded[name], "train")
        for index in range(len(train_set)):
            _, label, _, image_name = train_set[index]
            gt, kept = truth[image_name]
            expected = gt if name == "oracle_all" else np.where(kept != 255, gt, 255)
            assert np.array_equal(label, expected)


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-"))


def test_out_folder_is_replaced_whole_and_only_at_the_end(tmp_path):
    out = tmp_path / "demo"
    with pipeline.staged_out(out) as work:
        (work / "snapshots").mkdir()
    with pipeline.staged_out(out) as work:
        assert work.parent == tmp_path and work.name.startswith(".demo.partial-")
        (work / pipeline.RESULTS_NAME).write_text('{"new": 1}')
        assert (out / "snapshots").is_dir()  # the earlier results stay until the new ones are complete
    assert sorted(p.name for p in out.iterdir()) == sorted([pipeline.RESULTS_NAME, MANIFEST_NAME])
    assert read_manifest(out).files == {pipeline.RESULTS_NAME: "demo.py"}
    assert leftovers(out) == []

    with pytest.raises(RuntimeError):  # a crash: the earlier results as they were, no staging folder left
        with pipeline.staged_out(out) as work:
            (work / pipeline.RESULTS_NAME).write_text('{"newer": 1}')
            raise RuntimeError("crash")
    assert (out / pipeline.RESULTS_NAME).read_text() == '{"new": 1}'
    assert leftovers(out) == []


def test_threads_must_be_positive():
    from advent.scripts import demo
    for value in ("0", "-1"):
        with pytest.raises(UserError, match=f"--threads must be at least 1, got {value}"):
            demo.parse_args(["--threads", value])
    assert demo.parse_args(["--threads", "2"]).threads == 2


def test_out_folder_with_foreign_files_or_in_use_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(UserError, match="holds files this project did not write"):
        with pipeline.staged_out(foreign):
            pass
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"] and [p.name for p in tmp_path.iterdir()] == ["mine"]

    out = tmp_path / "demo"  # an earlier demo's folder with a file of the user's
    with pipeline.staged_out(out) as work:
        (work / pipeline.RESULTS_NAME).write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt"):
        with pipeline.staged_out(out):
            pass
    assert (out / "notes.txt").read_text() == "mine"

    with pipeline.staged_out(tmp_path / "new"):
        with pytest.raises(UserError, match="in use by another run"):
            with pipeline.staged_out(tmp_path / "new"):
                pass

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        with pipeline.staged_out(a_file):
            pass


def test_bad_out_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    result = subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(tmp_path / "busy"),
                             "--data", str(tmp_path / "data")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "busy" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def work_started(*_args, **_kwargs):
    raise AssertionError("the demo began its work before checking its arguments")


def test_out_and_data_that_overlap_are_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from advent.scripts import demo
    from advent.utils.runtime import run_main
    monkeypatch.setattr(pipeline.Demo, "run", work_started)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # compared resolved: link/x is inside real
    here = str(tmp_path)
    cases = [(f"{here}/d", f"{here}/d", f"--out {here}/d and --data {here}/d are the same folder"),
             (f"{here}/d/../d", f"{here}/d", "are the same folder"),
             (f"{here}/d/out", f"{here}/d", f"--out {here}/d/out is inside --data {here}/d"),
             (f"{here}/d", f"{here}/d/data", f"--data {here}/d/data is inside --out {here}/d"),
             (f"{here}/link/out", f"{here}/real", f"--out {here}/link/out is inside --data {here}/real")]
    for out, data, line in cases:
        with pytest.raises(SystemExit) as stop:
            run_main(demo.main, ["--quick", "--out", out, "--data", data])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and line in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"] and not any((tmp_path / "real").iterdir())
    with pytest.raises(AssertionError, match="began its work"):  # separate folders: on to the work
        run_main(demo.main, ["--quick", "--out", f"{here}/out", "--data", f"{here}/data"])


def test_a_seed_outside_the_training_seeds_range_or_an_empty_folder_is_one_line_at_parsing(capsys):
    from advent.scripts import demo
    seeds = load_demo_seeds()
    for parse, argv, line in (
            (demo.parse_args, ["--seed", "99999999999"], "argument --seed: must be in [0, 4294967295], got 9999"),
            (demo.parse_args, ["--seed", "-1"], "argument --seed: must be in [0, 4294967295], got -1"),
            (demo.parse_args, ["--out", ""], "argument --out: an empty path: ''"),
            (demo.parse_args, ["--data", ""], "argument --data: an empty path: ''"),
            (seeds.parse_args, ["--seeds", "0", str(2 ** 32)], "argument --seeds: must be in [0, 4294967295]"),
            (seeds.parse_args, ["--out", ""], "argument --out: an empty path: ''")):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and line in err[0], err
    assert demo.parse_args(["--seed", str(2 ** 32 - 1)]).seed == 2 ** 32 - 1
    assert seeds.parse_args(["--seeds", str(2 ** 32 - 1)]).seeds == [2 ** 32 - 1]


def seed_results(mious, esl_accuracy, mpsl_accuracy):
    """A demo_results.json of a --study run, as far as demo_seeds.py reads it."""
    models = {key: {"name": report.MODELS[key], "mIoU": value, "per_class": {"road": value + 10, "pole": None}}
              for key, value in mious.items()}
    labels = {key: {"name": report.LABELS[key], "kept_fraction": 0.5, "accuracy_kept": accuracy, "mIoU_kept": 0.5}
              for key, accuracy in (("esl", esl_accuracy), ("mpsl", mpsl_accuracy))}
    labels["oracle_all"] = {"name": report.LABELS["oracle_all"], "kept_fraction": 0.94}
    return {"models": models, "pseudo_labels": labels}


def load_demo_seeds():
    return load_benchmark("demo_seeds")


def test_demo_seeds_reports_each_gap_per_seed_with_its_spread(capsys):
    seeds = load_demo_seeds()
    runs = [seed_results({"source_only": 29, "advent": 36, "esl": 34, "mpsl": 33, "oracle_all": 46,
                          "oracle_coverage": 44}, 0.96, 0.95),
            seed_results({"source_only": 30, "advent": 35, "esl": 31, "mpsl": 32, "oracle_all": 46,
                          "oracle_coverage": 43}, 0.95, 0.96)]
    table, met = seeds.summarize([seeds.rows(run) for run in runs])
    noise = table["label noise: oracle at ESL's coverage - ESL retrain"]
    assert noise["values"] == [10, 12] and noise["mean"] == 11 and noise["std"] == pytest.approx(2 ** 0.5)
    assert table["coverage: oracle all GT - oracle at ESL's coverage"]["values"] == [2, 3]
    assert table["ESL retrain - MPSL retrain"]["values"] == [1, -1]
    assert table["mIoU oracle at ESL's coverage"]["mean"] == 43.5
    assert table["GT all labels kept %"]["values"] == [94, 94] and "GT all labels accuracy %" not in table
    assert met == {"AdvEnt >= source-only": 2, "ESL retrain >= AdvEnt": 0, "ESL labels more accurate than MPSL": 1,
                   "ESL retrain >= MPSL retrain": 1}
    one_seed, _ = seeds.summarize([seeds.rows(runs[0])])
    assert one_seed["ESL retrain - MPSL retrain"] == {"mean": 1, "std": None, "values": [1]}  # no spread of one
    seeds.print_summary([0], one_seed, met)
    assert re.search(r"^ESL retrain - MPSL retrain +1\.00 +1\.00 +-$", capsys.readouterr().out, flags=re.M)
    means = seeds.mean_models(runs)
    assert means["esl"] == {"mIoU": 32.5, "per_class": {"road": 42.5, "pole": None}}
    table = report.per_class_table(means)  # the class no model has is left out
    assert re.search(r"^  road .* \+11\.00 +\+2\.50 +\+0\.00$", table, flags=re.M) and "pole" not in table


def test_demo_seeds_reuse_takes_a_finished_seed_of_the_same_kind_only(tmp_path, monkeypatch):
    seeds = load_demo_seeds()
    (tmp_path / "seed0").mkdir()
    results = tmp_path / "seed0" / "demo_results.json"
    json_dump({"seed": 0, "quick": False, "study": True, "models": {}, "pseudo_labels": {}}, results)
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(seeds.subprocess, "run", fake_run)
    args = seeds.parse_args(["--study", "--reuse", "--out", str(tmp_path)])
    assert seeds.run_seed(0, args, tmp_path)["seed"] == 0 and commands == []
    for argv in (["--quick", "--study", "--reuse"], ["--study"]):  # another kind, or no --reuse: run again
        with pytest.raises(SystemExit, match="seed 0: demo.py failed"):
            seeds.run_seed(0, seeds.parse_args(argv + ["--out", str(tmp_path)]), tmp_path)
    for text in ('{"seed": 0, "quick": false, "study": true', '{"seed": 0, "quick": false, "study": true}'):
        results.write_text(text)  # cut short, or without the tables: run again, no traceback
        with pytest.raises(SystemExit, match="seed 0: demo.py failed"):
            seeds.run_seed(0, args, tmp_path)
    assert len(commands) == 4 and "--seed" in commands[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `demo.py --quick` run, as CI runs it (about 2 minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("demo_quick")
    out = root / "out"
    result = subprocess.run([sys.executable, str(DEMO), "--quick", "--seed", "1", "--out", str(out),
                             "--data", str(root / "data")], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, json_load(out / pipeline.RESULTS_NAME)


def test_quick_demo_runs_every_stage_and_prints_the_table(quick_run):
    out, stdout, results = quick_run
    progress = re.findall(r"^\[(\d)/(\d)\] ", stdout, flags=re.M)
    assert [int(i) for i, _ in progress] == list(range(1, 8)) and {n for _, n in progress} == {"7"}
    assert list(results["models"]) == ["source_only", "advent", "esl"]  # the other retrainings with --study
    assert list(results["pseudo_labels"]) == ["esl", "mpsl"]
    for entry in results["models"].values():
        assert re.search(rf"^  {re.escape(entry['name'])} +{entry['mIoU']:.2f}$", stdout, flags=re.M)
    for entry in results["pseudo_labels"].values():
        assert re.search(rf"^  {entry['name']} +{100 * entry['kept_fraction']:.2f} +"
                         rf"{100 * entry['accuracy_kept']:.2f}", stdout, flags=re.M)
    assert results["quick"] is True and results["seed"] == 1 and results["model"] == "DeepLabv2-Tiny"
    assert stdout.rstrip().endswith(f"numbers from the results files in {out}")


def test_quick_demo_numbers_come_from_the_results_files(quick_run):
    out, _, results = quick_run
    for name, entry in results["models"].items():
        written = json_load(out / entry["results_file"])  # paths relative to the output folder
        last = next(e for e in written["snapshots"] if e["snapshot"] == written["last"])
        assert entry["mIoU"] == last["mIoU"] and 0 <= entry["mIoU"] <= 100
        assert entry["per_class"] == {c["name"]: c["IoU"] for c in last["per_class"]}
        assert Path(entry["results_file"]).parts[:2] == ("snapshots", f"demo_{name}")
        assert (out / entry["snapshot"]).is_file()
    for name, entry in results["pseudo_labels"].items():
        written = json_load(out / entry["report_file"])
        assert entry["kept_fraction"] == written["kept_fraction"]
        assert entry["accuracy_kept"] == written["accuracy_kept"]
        # no floor (ESL) and no cap (MPSL): each class keeps its better half, so about half of all
        assert abs(written["kept_fraction"] - 0.5) < 0.01
    assert results["pseudo_labels"]["esl"]["method"] == "entropy"
    assert results["pseudo_labels"]["mpsl"]["method"] == "maxprob"


def test_quick_demo_writes_configs_pictures_and_logs(quick_run):
    out, _, results = quick_run
    for name in configs.CONFIGS:
        text = (out / "configs" / f"{name}.yml").read_text()
        # the configs name the final folder: the earlier models they load are there
        cfg = load_config(out / "configs" / f"{name}.yml")
        assert Path(cfg.EXP_ROOT) == out and (name == "source_only" or Path(cfg.TRAIN.RESTORE_FROM).is_file())
        changed = re.search(r"^# Keys it set to other values than the shipped file: (.*)$", text, flags=re.M)
        allowed = {"TRAIN.RANDOM_SEED", "PSEUDO_LABEL_DIRECTORY_TARGET", "TRAIN.RESTORE_FROM", "ESL.RESTORE_FROM",
                   *configs.ITERATION_KEYS, *DATA_KEYS, *OUTPUT_KEYS}
        assert set(changed.group(1).split(", ")) <= allowed, name
    files = [out / p for p in results["pictures"]]
    assert len(files) == 2 * pictures.NUM_PICTURES
    for path in files:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.height >= 64 * pictures.PICTURE_SCALE
    for stage in ("source_only", "advent", "esl_labels", "mpsl_labels", "esl"):
        assert "$ python advent/scripts/" in (out / "logs" / f"demo_{stage}.log").read_text()
    # the run was built beside the folder and moved there whole: nothing left over, all in the manifest
    assert {name.split("/")[0] for name in read_manifest(out).files} == set(pipeline.OUTPUTS)
    assert foreign_entries(out) == []
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out.partial-")] == []
