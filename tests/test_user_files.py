"""No script loses a user's file: the five ways it once happened, each run through the real scripts
on tiny data in the real formats (issue: one output layer that knows every file the project wrote);
and a run refused for its data leaves nothing behind."""
import json
import os
import shutil
from pathlib import Path

import pytest

from advent.domain_adaptation.checkpoint import model_snapshot_path
from advent.domain_adaptation.eval_UDA import CACHE_NAME, RESULTS_BEST
from advent.scripts import esl as esl_script
from advent.scripts import train as train_script
from advent.scripts import viz as viz_script
from advent.scripts.test import main as run_test_py
from advent.utils.runtime import run_main
from advent.utils.output_dir import MANIFEST_NAME, Manifest, exclusive_lock, prepare_folder, read_manifest
from benchmark_scripts import load_benchmark
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


def test_a_users_file_put_in_place_of_one_the_project_wrote_is_kept(tmp_path, capsys):
    """A label of one's own under the name of one esl.py wrote, a results file edited by hand:
    the user's, whatever its name; a copy of the project's own folder (new times) is still its."""
    cfg, _ = esl_config(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    assert esl_script.main(["--cfg", str(path)]) == 0
    labels = Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
    first = sorted(p.name for p in labels.glob("*.png"))[0]
    (labels / first).write_bytes((labels / first).read_bytes() + b"my correction")
    before = files_bytes(labels)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(esl_script.main, ["--cfg", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [
        f"error: PSEUDO_LABEL_DIRECTORY_TARGET {labels} holds files this project did not write ({first}: not the "
        f"file esl.py wrote there); esl.py would replace or remove what it holds: esl.py replaces only a new, "
        f"empty or own earlier label folder"]
    assert files_bytes(labels) == before
    (labels / first).unlink()
    copy = tmp_path / "labels_copy"
    shutil.copytree(labels, copy, copy_function=shutil.copy)  # cp -r: every file has a new time
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(copy)
    assert esl_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "esl.yml"))]) == 0
    assert sorted(p.name for p in copy.glob("*.png")) == sorted([first, *(p.name for p in labels.glob("*.png"))])


# --- the benchmarks: what they write where the user points them ---

def work_started(*_args, **_kwargs):
    raise AssertionError("the benchmark began its work before checking where it writes")


# (benchmark, the function its work starts with, its arguments given the tmp folder, the user's file)
BENCHMARK_OUTPUTS = [
    ("gpu_check", "check_rows", lambda tmp: ["--dry-run", "--out", f"{tmp}/check.json"], "check.json"),
    ("gpu_check", "check_rows", lambda tmp: ["--dry-run", "--out", f"{tmp}/check.json"], "check_pytest.log"),
    ("gpu_check", "check_rows", lambda tmp: ["--dry-run", "--out", f"{tmp}/check.json"], "check_profile.txt"),
    ("numerics_check", "loss_curves", lambda tmp: ["--json", f"{tmp}/curves.json"], "curves.json"),
    ("host_speed", "unpack_revision", lambda tmp: ["--json", f"{tmp}/speed.json"], "speed.json"),
    ("demo_seeds", "run_seed", lambda tmp: ["--seeds", "0", "1", "--out", str(tmp)], "seed1.log"),
    ("demo_seeds", "run_seed", lambda tmp: ["--seeds", "0", "--out", str(tmp)], "demo_seeds.json"),
]


@pytest.mark.parametrize("name, work, argv, users_file", BENCHMARK_OUTPUTS,
                         ids=[f"{case[0]}-{case[3]}" for case in BENCHMARK_OUTPUTS])
def test_a_benchmark_refuses_a_users_file_of_a_name_it_writes_before_any_work(
        tmp_path, monkeypatch, capsys, name, work, argv, users_file):
    module = load_benchmark(name)
    monkeypatch.setattr(module, work, work_started)
    with pytest.raises(AssertionError, match="began its work"):  # a run that stops before it writes...
        run_main(module.main, argv(tmp_path))
    assert users_file not in (read_manifest(tmp_path) or Manifest()).files  # ...leaves no record of the name
    (tmp_path / users_file).write_text("the user's")  # so a file the user then puts there stays theirs
    with pytest.raises(SystemExit) as stop:
        run_main(module.main, argv(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert f"{tmp_path / users_file} exists and {name}.py may not replace it (this project did not write it)" in err[0]
    assert (tmp_path / users_file).read_text() == "the user's"


def test_the_gpu_checks_work_folder_must_be_new_or_empty_and_demo_seeds_takes_no_scripts_folder(
        tmp_path, monkeypatch, capsys):
    gpu_check, demo_seeds = load_benchmark("gpu_check"), load_benchmark("demo_seeds")
    monkeypatch.setattr(gpu_check, "check_rows", work_started)
    monkeypatch.setattr(demo_seeds, "run_seed", work_started)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("the user's")
    snapshots = tmp_path / "snapshots"
    prepare_folder(snapshots, "train.py", "the snapshots")
    for module, argv, line in (
            (gpu_check, ["--dry-run", "--out", f"{tmp_path}/c.json", "--work", str(work)],
             f"--work {work} is not a new or empty folder"),
            (demo_seeds, ["--out", str(snapshots)], f"--out {snapshots} was written by train.py")):
        with pytest.raises(SystemExit) as stop:
            run_main(module.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and line in err[0], err
    assert (work / "data.txt").read_text() == "the user's" and [p.name for p in snapshots.iterdir()] == [MANIFEST_NAME]


@pytest.mark.parametrize("script", ["train", "test", "esl"])
def test_a_run_refused_for_missing_data_makes_no_folder_and_writes_nothing(tmp_path, capsys, script):
    """The data are checked before the output folder is made: a refused run leaves no trace."""
    if script == "train":
        cfg, _ = tiny_cfg(tmp_path, "MinEnt")
        main = train_script.main
    elif script == "test":
        cfg, _ = best_cfg(tmp_path)
        cfg.TEST.MODE, cfg.TEST.RESTORE_FROM = "single", (str(model_snapshot_path(tmp_path / "snapshots", 2000)),)
        main = run_test_py
    else:
        cfg, _ = esl_config(tmp_path)
        cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "new" / "labels")
        main = esl_script.main
    cfg.DATA_DIRECTORY_TARGET = str(tmp_path / "nowhere")
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        run_main(main, ["--cfg", str(path)])
    assert stop.value.code == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")] == [
        f"error: Cityscapes root {tmp_path / 'nowhere'} not found; expected leftImg8bit/{{split}}/{{city}}/"
        f"*_leftImg8bit.png and gtFine/{{split}}/{{city}}/*_gtFine_labelIds.png"]
    assert sorted(tmp_path.rglob("*")) == before


def script_and_cfg(tmp_path, script):
    """(main, cfg) of `script` on tiny data in tmp_path, its output folder not yet made."""
    if script == "train":
        cfg, _ = tiny_cfg(tmp_path, "MinEnt")
        return train_script.main, cfg
    if script in ("test", "viz"):
        cfg, _ = best_cfg(tmp_path)
        cfg.TEST.MODE, cfg.TEST.RESTORE_FROM = "single", (str(model_snapshot_path(tmp_path / "snapshots", 2000)),)
        return (run_test_py if script == "test" else viz_script.main), cfg
    cfg, _ = esl_config(tmp_path)
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "new" / "labels")
    return esl_script.main, cfg


def refused(main, argv, capsys):
    """The error lines of `main(argv)` run as the script runs, which must exit with code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("script", ["train", "test", "esl", "viz"])
def test_a_run_refused_for_its_checkpoint_makes_no_folder_and_writes_nothing(tmp_path, capsys, script):
    """The checkpoint is loaded before the output folder is made: a corrupt one leaves no trace."""
    main, cfg = script_and_cfg(tmp_path, script)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    cfg.TRAIN.RESTORE_FROM, cfg.ESL.RESTORE_FROM, cfg.TEST.RESTORE_FROM = str(corrupt), str(corrupt), (str(corrupt),)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    before = sorted(tmp_path.rglob("*"))
    [line] = refused(main, ["--cfg", str(path)], capsys)
    assert line.startswith(f"error: cannot read {corrupt}: not a torch checkpoint or corrupt")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_tensorboard_folder_that_is_a_file_stops_train_before_it_makes_any_folder(tmp_path, capsys):
    main, cfg = script_and_cfg(tmp_path, "train")
    (tmp_path / "events").write_text("a file of the user's")
    cfg.TRAIN.TENSORBOARD_LOGDIR = str(tmp_path / "events")
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    before = sorted(tmp_path.rglob("*"))
    assert refused(main, ["--cfg", str(path), "--tensorboard"], capsys) == [
        f"error: cannot write the TensorBoard events (TRAIN.TENSORBOARD_LOGDIR) to {tmp_path / 'events'}: "
        f"{tmp_path / 'events'} is a file, not a folder"]
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "events").read_text() == "a file of the user's"


@pytest.mark.parametrize("script, key", [("train", "TRAIN.SNAPSHOT_DIR"), ("esl", "PSEUDO_LABEL_DIRECTORY_TARGET"),
                                         ("test", "TEST.RESTORE_FROM")])
def test_a_symbolic_link_loop_or_a_name_too_long_is_one_line_and_makes_nothing(tmp_path, capsys, script, key):
    main, cfg = script_and_cfg(tmp_path, script)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    # 245 bytes: a valid name, but .<name>.partial-xxxxxxxx beside it would not be
    sizes = (300,) if key == "TEST.RESTORE_FROM" else (300, 245)
    cases = [(loop / "inside", f"{loop / 'inside'}: Too many levels of symbolic links")]
    cases += [(tmp_path / ("x" * n), "File name too long" if key == "TEST.RESTORE_FROM" else
               f"{key} {tmp_path / ('x' * n)}: the folder name is {n} bytes, over the 237 this project can use "
               f"there") for n in sizes]
    for bad, reason in cases:
        if key == "TEST.RESTORE_FROM":
            cfg.TEST.RESTORE_FROM = (str(bad),)
        elif key == "TRAIN.SNAPSHOT_DIR":
            cfg.TRAIN.SNAPSHOT_DIR = str(bad)
        else:
            cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(bad)
        path = write_cfg_yaml(cfg, tmp_path / "run.yml")
        before = sorted(tmp_path.rglob("*"))
        [line] = refused(main, ["--cfg", str(path)], capsys)
        assert reason in line, line
        assert sorted(tmp_path.rglob("*")) == before


def test_train_writes_no_tensorboard_events_into_another_scripts_folder(tmp_path, capsys):
    esl_main, esl_cfg = script_and_cfg(tmp_path / "esl", "esl")
    assert esl_main(["--cfg", str(write_cfg_yaml(esl_cfg, tmp_path / "esl.yml"))]) == 0
    labels = Path(esl_cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
    before = files_bytes(labels)
    main, cfg = script_and_cfg(tmp_path, "train")
    cfg.TRAIN.TENSORBOARD_LOGDIR = str(labels)
    lines = refused(main, ["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml")), "--tensorboard"], capsys)
    assert lines == [f"error: TRAIN.TENSORBOARD_LOGDIR {labels} was written by esl.py; train.py does not take over "
                     f"another script's folder: point it at a folder of its own"]
    assert files_bytes(labels) == before


def test_pseudo_labels_are_not_replaced_while_a_run_trains_on_them_nor_trained_on_while_replaced(tmp_path, capsys):
    esl_main, esl_cfg = script_and_cfg(tmp_path / "esl", "esl")
    esl_path = write_cfg_yaml(esl_cfg, tmp_path / "esl.yml")
    assert esl_main(["--cfg", str(esl_path)]) == 0
    labels = Path(esl_cfg.PSEUDO_LABEL_DIRECTORY_TARGET)
    before = files_bytes(labels)
    with exclusive_lock(labels, "train.py", shared=True):  # a training run on them (several may read at once)
        with exclusive_lock(labels, "train.py", shared=True):
            assert refused(esl_main, ["--cfg", str(esl_path)], capsys) == [
                f"error: {labels} is in use by another run (train.py, reading it to train on); wait for it to "
                f"finish or write to another folder"]
    assert files_bytes(labels) == before
    main, cfg = script_and_cfg(tmp_path, "train")
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(labels)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    before = sorted(tmp_path.rglob("*"))
    with exclusive_lock(labels, "esl.py"):  # esl.py replacing them: the run does not start on half a set
        [line] = refused(main, ["--cfg", str(path), "--tensorboard"], capsys)
    assert line.startswith(f"error: {labels} is in use by another run (esl.py, pid {os.getpid()}")
    assert sorted(tmp_path.rglob("*")) == before  # no snapshot or TensorBoard folder made


def test_a_run_resumed_on_other_pseudo_labels_than_it_trained_on_is_refused(tmp_path, capsys):
    cfg, _ = tiny_cfg(tmp_path, "SourceOnly", iters=2, save_every=2, pseudo=True)
    report = Path(cfg.PSEUDO_LABEL_DIRECTORY_TARGET) / "esl_report.json"
    report.write_text('{"thresholds": [0.1]}\n')  # as esl.py writes one with every set
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    assert train_script.main(["--cfg", str(path)]) == 0
    report.write_text('{"thresholds": [0.2]}\n')  # esl.py ran again, from another model
    cfg.TRAIN.EARLY_STOP = 4  # extend the run
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    state = Path(cfg.TRAIN.SNAPSHOT_DIR) / "train_state_2.pth"
    assert refused(train_script.main, ["--cfg", str(path), "--resume"], capsys) == [
        f"error: --resume: the pseudo-labels in {cfg.PSEUDO_LABEL_DIRECTORY_TARGET} are not those the run trained "
        f"on (esl_report.json changed since {state} was saved); put those back, or train on these in a new run "
        f"(EXP_NAME / --exp-suffix)"]
    report.write_text('{"thresholds": [0.1]}\n')  # the labels it trained on, back
    assert train_script.main(["--cfg", str(path), "--resume"]) == 0


def test_tensorboard_events_may_go_to_the_snapshot_folder_beside_test_py_results(tmp_path):
    from advent.domain_adaptation.checkpoint import Checkpointer
    from advent.utils.output_dir import updating_manifest
    cfg, _ = tiny_cfg(tmp_path, "SourceOnly")
    cfg.TRAIN.TENSORBOARD_LOGDIR = cfg.TRAIN.SNAPSHOT_DIR
    folder = prepare_folder(cfg.TRAIN.SNAPSHOT_DIR, "train.py", "the snapshots")
    with updating_manifest(folder) as manifest:  # test.py 'best' evaluated the run there
        manifest.files.update({RESULTS_BEST: "test.py", CACHE_NAME: "test.py"})
    Checkpointer(cfg).check_folders(tensorboard=True)  # accepted, as for the snapshots themselves
