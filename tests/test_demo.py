"""The demo (advent/scripts/demo.py): the shipped demo configs, its output folder, and one
--quick run of the whole pipeline whose table must be what the stages' results files say."""
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from advent.config import cfg_to_dict, get_key, load_config
from advent.demo.synthetic import _demo_data
from advent.scripts import demo
from advent.utils.errors import UserError
from advent.utils.serialization import json_load

pytestmark = pytest.mark.slow
DEMO = Path(demo.__file__)
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
    run = SimpleNamespace(data=_demo_data(demo.DEFAULT_DATA.resolve() / "seed0", demo.DATA["size"], {}),
                          out=demo.DEFAULT_OUT.resolve(), seed=demo.DEFAULT_SEED, quick=False)
    loaded = {}
    for name in demo.CONFIGS:
        shipped_path = demo.CONFIG_DIR / f"{name}.yml"
        shipped = load_config(shipped_path)
        settings = demo.run_settings(name, demo.yaml_load(shipped_path), run, loaded)
        assert "TRAIN.RESTORE_FROM" in settings or name == "source_only"
        for key, value in settings.items():
            expected = get_key(cfg_to_dict(shipped), key)
            assert same(value, expected), (name, key, value, expected)
        loaded[name] = shipped


def test_quick_shortens_every_run_and_keeps_the_chain_consistent():
    run = SimpleNamespace(data=_demo_data(Path("/data/seed0"), (128, 64), {}), out=Path("/out"), seed=3,
                          quick=True)
    loaded = {}
    for name in demo.CONFIGS:
        data = demo.yaml_load(demo.CONFIG_DIR / f"{name}.yml")
        settings = demo.run_settings(name, data, run, loaded)
        for key in demo.ITERATION_KEYS:
            assert settings[key] == max(1, round(get_key(data, key) * demo.QUICK_SCALE))
        assert settings["TRAIN.RANDOM_SEED"] == 3
        for key, value in settings.items():
            demo.set_key(data, key, value)
        loaded[name] = SimpleNamespace(TRAIN=SimpleNamespace(
            SNAPSHOT_DIR=f"/out/snapshots/{data['EXP_NAME']}", EARLY_STOP=data["TRAIN"]["EARLY_STOP"],
            MAX_ITERS=data["TRAIN"]["MAX_ITERS"]))
    # the AdvEnt model ESL reads is the one the shortened AdvEnt run ends with
    advent_iters = loaded["advent"].TRAIN.EARLY_STOP
    assert settings["ESL.RESTORE_FROM"] == f"/out/snapshots/demo_advent/model_{advent_iters}.pth"


def test_out_folder_is_cleared_only_when_a_demo_made_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(UserError, match="not empty and was not made by demo.py"):
        demo.prepare_out(foreign)
    assert (foreign / "thesis.tex").read_text() == "keep"

    out = demo.prepare_out(tmp_path / "demo")
    (out / "snapshots" / "old").mkdir(parents=True)
    (out / demo.RESULTS_NAME).write_text("{}")
    (out / "notes.txt").write_text("mine")
    demo.prepare_out(out)
    assert not (out / "snapshots").exists() and not (out / demo.RESULTS_NAME).exists()
    assert (out / "notes.txt").read_text() == "mine"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        demo.prepare_out(a_file)


def test_bad_out_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    result = subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(tmp_path / "busy"),
                             "--data", str(tmp_path / "data")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "busy" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `demo.py --quick` run, as CI runs it (about 1.5 minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("demo_quick")
    out = root / "out"
    result = subprocess.run([sys.executable, str(DEMO), "--quick", "--seed", "1", "--out", str(out),
                             "--data", str(root / "data")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, json_load(out / demo.RESULTS_NAME)


def test_quick_demo_runs_every_stage_and_prints_the_table(quick_run):
    out, stdout, results = quick_run
    progress = re.findall(r"^\[(\d)/(\d)\] ", stdout, flags=re.M)
    assert [int(i) for i, _ in progress] == list(range(1, 8)) and {n for _, n in progress} == {"7"}
    assert list(results["models"]) == ["source_only", "advent", "esl"]  # MPSL retrain only when asked
    assert list(results["pseudo_labels"]) == ["esl", "mpsl"]
    for entry in results["models"].values():
        assert re.search(rf"^  {re.escape(entry['name'])} +{entry['mIoU']:.2f}$", stdout, flags=re.M)
    for entry in results["pseudo_labels"].values():
        assert re.search(rf"^  {entry['name']} +{100 * entry['kept_fraction']:.2f} +"
                         rf"{100 * entry['accuracy_kept']:.2f}", stdout, flags=re.M)
    assert results["quick"] is True and results["seed"] == 1 and results["model"] == "DeepLabv2-Tiny"


def test_quick_demo_numbers_come_from_the_results_files(quick_run):
    out, _, results = quick_run
    for name, entry in results["models"].items():
        written = json_load(entry["results_file"])
        last = next(e for e in written["snapshots"] if e["snapshot"] == written["last"])
        assert entry["mIoU"] == last["mIoU"] and 0 <= entry["mIoU"] <= 100
        assert Path(entry["results_file"]).is_relative_to(out / "snapshots" / f"demo_{name}")
    for name, entry in results["pseudo_labels"].items():
        report = json_load(entry["report_file"])
        assert entry["kept_fraction"] == report["kept_fraction"]
        assert entry["accuracy_kept"] == report["accuracy_kept"]
        # no floor (ESL) and no cap (MPSL): each class keeps its better half, so about half of all
        assert abs(report["kept_fraction"] - 0.5) < 0.01
    assert results["pseudo_labels"]["esl"]["method"] == "entropy"
    assert results["pseudo_labels"]["mpsl"]["method"] == "maxprob"


def test_quick_demo_writes_configs_pictures_and_logs(quick_run):
    out, _, results = quick_run
    for name in demo.CONFIGS:
        text = (out / "configs" / f"{name}.yml").read_text()
        changed = re.search(r"^# Keys it set to other values than the shipped file: (.*)$", text, flags=re.M)
        allowed = {"TRAIN.RANDOM_SEED", "PSEUDO_LABEL_DIRECTORY_TARGET", "TRAIN.RESTORE_FROM", "ESL.RESTORE_FROM",
                   *demo.ITERATION_KEYS, *DATA_KEYS, *OUTPUT_KEYS}
        assert set(changed.group(1).split(", ")) <= allowed, name
    pictures = [Path(p) for p in results["pictures"]]
    assert len(pictures) == 2 * demo.NUM_PICTURES
    for path in pictures:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.height >= 64 * demo.PICTURE_SCALE
    for stage in ("source_only", "advent", "esl_labels", "mpsl_labels", "esl"):
        assert "$ python advent/scripts/" in (out / "logs" / f"demo_{stage}.log").read_text()
