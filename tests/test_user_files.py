"""No script loses a user's file: the five ways it once happened, each run through the real scripts
on tiny data in the real formats (issue: one output layer that knows every file the project wrote)."""
import json
from pathlib import Path

import pytest

from advent.domain_adaptation.checkpoint import model_snapshot_path
from advent.domain_adaptation.eval_UDA import CACHE_NAME, RESULTS_BEST
from advent.scripts import esl as esl_script
from advent.scripts import train as train_script
from advent.scripts.test import main as run_test_py
from advent.utils.runtime import run_main
from advent.utils.output_dir import read_manifest
from fake_data import write_cfg_yaml
from test_esl import esl_config
from test_eval import best_cfg, run_test, user_error
from test_eval_output import files_bytes, no_model_work, predictions_cfg
from test_train import tiny_cfg
from test_train_safety import no_model_work as no_training_work
from test_train_safety import train_py


def test_esl_does_not_take_over_the_predictions_test_wrote(tmp_path, capsys):
    path, predictions, _ = predictions_cfg(tmp_path)
    assert run_test_py(["--cfg", str(path)]) == 0
    before = files_bytes(predictions)
    assert read_manifest(predictions).owner == "test.py" and len(before) > 8
    cfg, _ = esl_config(tmp_path / "esl")
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(predictions)
    esl_path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    with pytest.raises(SystemExit) as stop:
        run_main(esl_script.main, ["--cfg", str(esl_path)])
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: PSEUDO_LABEL_DIRECTORY_TARGET {predictions} was written by test.py; esl.py does not "
                   f"take over another script's folder: esl.py replaces only a new, empty or own earlier label "
                   f"folder"]
    assert files_bytes(predictions) == before


def test_test_keeps_a_users_file_inside_the_prediction_subfolders(tmp_path, monkeypatch, capsys):
    path, predictions, _ = predictions_cfg(tmp_path)
    assert run_test_py(["--cfg", str(path)]) == 0
    (predictions / "color" / "my_figure.png").write_bytes(b"the user's")
    before = files_bytes(predictions)
    no_model_work(monkeypatch)
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1 and f"{predictions} holds files this project did not write (color/my_figure.png)" in lines[0]
    assert files_bytes(predictions) == before


@pytest.mark.parametrize("what", ["config.yml of the user's", "dataset folder"])
def test_train_refuses_a_folder_holding_files_it_did_not_write(tmp_path, monkeypatch, capsys, what):
    cfg, written = tiny_cfg(tmp_path, "SourceOnly", iters=1)
    if what == "dataset folder":
        folder = Path(cfg.DATA_DIRECTORY_SOURCE) / "images"
        first = sorted(p.name for p in folder.iterdir())[0]
    else:
        folder, first = tmp_path / "run", "config.yml"
        folder.mkdir()
        (folder / "config.yml").write_text("# my own notes on this run\n")
    cfg.TRAIN.SNAPSHOT_DIR = str(folder)
    before = files_bytes(folder)
    no_training_work(monkeypatch)
    for resume in ([], ["--resume"]):
        code, lines = train_py(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml")), *resume], capsys)
        assert code == 2 and len(lines) == 1
        assert lines[0].startswith(f"error: TRAIN.SNAPSHOT_DIR {folder} holds files this project did not write "
                                   f"({first}")
    assert files_bytes(folder) == before


def test_train_resumes_beside_the_results_test_wrote_into_its_folder(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, "SourceOnly", iters=2, save_every=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    assert train_script.main(["--cfg", str(path)]) == 0
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert read_manifest(folder).owner == "train.py" and model_snapshot_path(folder, 2).is_file()
    cfg.TEST.MODE, cfg.TEST.MODEL, cfg.TEST.SNAPSHOT_DIR = "best", ("DeepLabv2-Tiny",), (str(folder),)
    cfg.TEST.SNAPSHOT_STEP, cfg.TEST.SNAPSHOT_MAXITER, cfg.TEST.WAIT_MODEL = 2, 2, False
    run_test(cfg, tmp_path, "best.yml")
    manifest = read_manifest(folder)
    assert manifest.files[RESULTS_BEST] == manifest.files[CACHE_NAME] == "test.py"
    cfg.TRAIN.EARLY_STOP = 4  # extend the run: its folder holds only what the project wrote
    assert train_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml")), "--resume"]) == 0
    assert model_snapshot_path(folder, 4).is_file() and (folder / RESULTS_BEST).is_file()


def test_test_best_keeps_the_users_results_and_cache_files(tmp_path, monkeypatch, capsys):
    cfg, folder = best_cfg(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "best.yml")
    for name in (RESULTS_BEST, CACHE_NAME):
        (folder / name).write_text(json.dumps({"mine": name}))
        no_model_work(monkeypatch)
        lines = user_error(["--cfg", str(path)], capsys)
        assert lines == [f"error: the test cache and results: {folder / name} exists and test.py may not replace "
                         f"it (this project did not write it); move it away or choose another folder"]
        assert json.loads((folder / name).read_text()) == {"mine": name}
        (folder / name).rename(tmp_path / name)
