"""test.py's outputs: unwritable folders refused before any model work, a full disk reported in
one line after the results are shown, and the predictions folder replaced all or nothing, never
touching files the project did not write. Tiny images and the Tiny model throughout."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from advent.domain_adaptation import eval_output, eval_UDA
from advent.domain_adaptation.eval_UDA import CACHE_NAME, RESULTS_BEST, RESULTS_SINGLE
from advent.dataset import png_name
from advent.utils import output_dir
from advent.utils.errors import UserError
from advent.utils.output_dir import MANIFEST_NAME, exclusive_lock, prepare_folder, read_manifest
from fake_data import write_cfg_yaml, write_list
from processes import HANG_GUARD_S
from advent.scripts.test import main
from test_eval import best_cfg, run_test, save_tiny, single_cfg, user_error

TESTS = Path(__file__).parent
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")


def no_model_work(monkeypatch):
    """Make loading a checkpoint or evaluating fail the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("model work before the output folders were checked")
    monkeypatch.setattr(eval_UDA, "load_checkpoint", forbidden)
    monkeypatch.setattr(eval_UDA, "evaluate", forbidden)


def failing_json_dump(monkeypatch, file_name, code, times=None, seen=None, caplog=None):
    """json_dump in eval_output raises OSError(code) for `file_name` (the first `times` writes, or
    all); `seen` collects, per failed write, whether the mIoU table had been shown by then."""
    original = eval_output.json_dump
    failures = []

    def dump(data, path, writer=None):
        if Path(path).name == file_name and (times is None or len(failures) < times):
            failures.append(path)
            if seen is not None:
                seen.append("mIoU =" in caplog.text)
            raise OSError(code, os.strerror(code), str(path))
        return original(data, path, writer)

    monkeypatch.setattr(eval_output, "json_dump", dump)
    return failures


def predictions_cfg(tmp_path, seed=5):
    """A 'single' config saving predictions, its file, and the predictions folder."""
    checkpoint = save_tiny(tmp_path / "model.pth", seed=seed)
    cfg, written = single_cfg(tmp_path, [checkpoint])
    cfg.TEST.SAVE_PREDICTIONS = True
    path = write_cfg_yaml(cfg, tmp_path / "single.yml")
    folder = Path(cfg.EXP_ROOT) / "logs" / "test" / "single"
    return path, folder / "predictions", written


def files_bytes(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def leftovers(predictions):
    return sorted(p.name for p in predictions.parent.iterdir() if p.name.startswith(".predictions.partial-"))


# --- unwritable folders: one line, before any model work ---

def test_prepare_folder_creates_the_folder_with_only_its_manifest(tmp_path):
    folder = prepare_folder(tmp_path / "a" / "b", "test.py", "the results")
    assert folder.is_dir() and [p.name for p in folder.iterdir()] == [MANIFEST_NAME]
    assert read_manifest(folder).owner == "test.py"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match=r"cannot write the results to .*file/sub: .*file is a file, not a folder"):
        prepare_folder(tmp_path / "file" / "sub", "test.py", "the results")
    assert (tmp_path / "file").read_text() == "mine"


def test_results_folder_under_a_file_is_one_line_before_any_model_work(tmp_path, monkeypatch, capsys):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    cfg, _ = single_cfg(tmp_path, [checkpoint])
    (tmp_path / "logs").write_text("a file where the logs folder should be")
    cfg.EXP_ROOT_LOGS = str(tmp_path / "logs")
    path = write_cfg_yaml(cfg, tmp_path / "single.yml")
    no_model_work(monkeypatch)
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1, lines
    assert str(tmp_path / "logs" / "test" / "single") in lines[0] and "is a file, not a folder" in lines[0]
    assert (tmp_path / "logs").read_text() == "a file where the logs folder should be"


def test_read_only_snapshot_folder_is_one_line_before_any_evaluation(tmp_path, monkeypatch, capsys):
    cfg, folder = best_cfg(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "best.yml")
    original = output_dir._write_manifest

    def read_only(where, manifest):  # the file system of the snapshot folder is read-only
        if Path(where) == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(where) / output_dir._MANIFEST_TMP))
        return original(where, manifest)

    monkeypatch.setattr(output_dir, "_write_manifest", read_only)
    no_model_work(monkeypatch)
    lines = user_error(["--cfg", str(path)], capsys)
    assert lines == [f"error: cannot write the test cache and results to {folder}: Read-only file system"]
    assert not (folder / CACHE_NAME).exists() and not (folder / RESULTS_BEST).exists()


@as_root
def test_unwritable_snapshot_folder_is_one_line_before_any_evaluation(tmp_path, monkeypatch, capsys):
    cfg, folder = best_cfg(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "best.yml")
    no_model_work(monkeypatch)
    folder.chmod(0o555)
    try:
        lines = user_error(["--cfg", str(path)], capsys)
    finally:
        folder.chmod(0o755)
    assert lines == [f"error: cannot write the test cache and results to {folder}: Permission denied"]
    assert not (folder / CACHE_NAME).exists()


# --- a full disk later on: the results are shown, then one line ---

def test_full_disk_writing_the_results_is_one_line_after_the_table(tmp_path, monkeypatch, capsys, caplog):
    checkpoint = save_tiny(tmp_path / "model.pth", seed=5)
    cfg, _ = single_cfg(tmp_path, [checkpoint])
    path = write_cfg_yaml(cfg, tmp_path / "single.yml")
    shown = []
    failures = failing_json_dump(monkeypatch, RESULTS_SINGLE, errno.ENOSPC, seen=shown, caplog=caplog)
    with caplog.at_level(logging.INFO):
        lines = user_error(["--cfg", str(path)], capsys)
    assert lines == [f"error: {failures[0]}: No space left on device"]
    assert shown == [True] and "traffic light" in caplog.text  # the per-class table came first


def test_full_disk_saving_the_cache_goes_on_and_fails_after_the_table(tmp_path, monkeypatch, capsys, caplog):
    cfg, folder = best_cfg(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "best.yml")
    failures = failing_json_dump(monkeypatch, CACHE_NAME, errno.ENOSPC)
    with caplog.at_level(logging.INFO):
        lines = user_error(["--cfg", str(path)], capsys)
    assert lines == [f"error: cannot save the test cache: {failures[0]}: No space left on device"]
    assert len(failures) == 3  # every snapshot was evaluated: the first failure stopped nothing
    for n_iter in (2000, 4000, 6000):
        assert f"model_{n_iter}: mIoU = " in caplog.text
    assert "per class" in caplog.text and "best on val" in caplog.text
    assert not (folder / RESULTS_BEST).exists() and not (folder / CACHE_NAME).exists()


def test_a_cache_save_that_fails_once_is_made_good_by_the_next(tmp_path, monkeypatch):
    cfg, folder = best_cfg(tmp_path)
    failures = failing_json_dump(monkeypatch, CACHE_NAME, errno.ENOSPC, times=1)
    run_test(cfg, tmp_path)
    assert len(failures) == 1
    cache = json.loads((folder / CACHE_NAME).read_text())
    assert [e["snapshot"] for e in cache["entries"]] == ["model_2000.pth", "model_4000.pth", "model_6000.pth"]
    assert (folder / RESULTS_BEST).exists()


# --- the predictions folder ---

def test_predictions_folder_with_a_foreign_file_is_refused_and_the_file_kept(tmp_path, monkeypatch, capsys):
    path, predictions, _ = predictions_cfg(tmp_path)
    predictions.mkdir(parents=True)
    (predictions / "notes.txt").write_text("my notes")
    no_model_work(monkeypatch)
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1 and "TEST.SAVE_PREDICTIONS folder" in lines[0]
    assert str(predictions) in lines[0] and "notes.txt" in lines[0]
    assert sorted(p.name for p in predictions.iterdir()) == ["notes.txt"]
    assert (predictions / "notes.txt").read_text() == "my notes" and leftovers(predictions) == []


def test_a_second_run_replaces_its_own_predictions(tmp_path):
    path, predictions, written = predictions_cfg(tmp_path, seed=5)
    assert main(["--cfg", str(path)]) == 0
    manifest = read_manifest(predictions)
    pngs = [f"{kind}/{png_name(n)}" for kind in ("color", "labelIds") for n in written["val"].names]
    assert manifest.owner == "test.py" and sorted(manifest.files) == sorted(["color", "labelIds"] + pngs)
    assert len(list((predictions / "labelIds").iterdir())) == 4
    # the second run: another model over 2 of the 4 images
    write_list(written["val"].list_path, written["val"].names[:2])
    save_tiny(tmp_path / "model.pth", seed=6)
    assert main(["--cfg", str(path)]) == 0
    expected = sorted(Path(n).name for n in written["val"].names[:2])
    for kind in ("labelIds", "color"):
        assert sorted(p.name for p in (predictions / kind).iterdir()) == expected  # no file of run 1
    assert leftovers(predictions) == []
    results = json.loads((predictions.parent / RESULTS_SINGLE).read_text())
    assert results["predictions"] == str(predictions)


@pytest.mark.slow
def test_a_killed_run_leaves_the_old_predictions_and_the_next_run_cleans_up(tmp_path):
    path, predictions, _ = predictions_cfg(tmp_path, seed=5)
    assert main(["--cfg", str(path)]) == 0
    before = files_bytes(predictions)
    save_tiny(tmp_path / "model.pth", seed=6)
    killed = (f"import os, signal, sys\n"
              f"sys.path.insert(0, {str(TESTS)!r})\n"
              f"from advent.domain_adaptation import eval_output\n"
              f"from advent.scripts.test import main\n"
              f"save, written = eval_output.save_png, []\n"
              f"def dying(image, path):\n"
              f"    save(image, path)\n"
              f"    written.append(path)\n"
              f"    if len(written) == 3:\n"
              f"        os.kill(os.getpid(), signal.SIGKILL)\n"
              f"eval_output.save_png = dying\n"
              f"main(['--cfg', {str(path)!r}])\n")
    result = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert files_bytes(predictions) == before  # the complete earlier set
    partial = leftovers(predictions)
    assert len(partial) == 1 and len(files_bytes(predictions.parent / partial[0])) == 3
    assert main(["--cfg", str(path)]) == 0
    assert leftovers(predictions) == []
    after = files_bytes(predictions)
    assert after.keys() == before.keys() and after != before  # the new model's complete set


def test_a_full_disk_writing_predictions_keeps_the_old_ones_and_is_one_line_after_the_table(
        tmp_path, monkeypatch, capsys, caplog):
    path, predictions, _ = predictions_cfg(tmp_path, seed=5)
    assert main(["--cfg", str(path)]) == 0
    before = files_bytes(predictions)
    calls = []

    def full(image, file_path):
        calls.append(file_path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file_path))

    monkeypatch.setattr(eval_output, "save_png", full)
    with caplog.at_level(logging.INFO):
        lines = user_error(["--cfg", str(path)], capsys)
    assert len(calls) == 1  # no more writes after the first failure
    assert lines == [f"error: cannot write the predictions: {calls[0]}: No space left on device"]
    assert "mIoU =" in caplog.text and "traffic light" in caplog.text
    assert files_bytes(predictions) == before and leftovers(predictions) == []


def test_predictions_folder_in_use_by_another_run_is_refused(tmp_path, monkeypatch, capsys):
    path, predictions, _ = predictions_cfg(tmp_path)
    no_model_work(monkeypatch)
    with exclusive_lock(predictions, "test.py"):
        lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1 and f"{predictions} is in use by another run" in lines[0]


def test_best_mode_predictions_of_the_best_snapshot_replace_the_earlier_ones(tmp_path, monkeypatch, capsys):
    cfg, folder = best_cfg(tmp_path, iterations=(2000, 4000), maxiter=4000, seeds={2000: 5, 4000: 6})
    cfg.TEST.SAVE_PREDICTIONS = True
    path = run_test(cfg, tmp_path)
    results = json.loads((folder / RESULTS_BEST).read_text())
    predictions = folder / "predictions"
    assert results["predictions"] == str(predictions / results["best"])
    assert {name.split("/")[0] for name in read_manifest(predictions).files} == {results["best"]}
    assert len(list((predictions / results["best"] / "labelIds").iterdir())) == 4
    # the two snapshots swap places, so the best one changes: its predictions replace the earlier best's
    first, second = (folder / "model_2000.pth").read_bytes(), (folder / "model_4000.pth").read_bytes()
    (folder / "model_2000.pth").write_bytes(second)
    (folder / "model_4000.pth").write_bytes(first)
    other = "model_2000" if results["best"] == "model_4000" else "model_4000"
    assert main(["--cfg", str(path)]) == 0
    assert sorted(p.name for p in predictions.iterdir()) == sorted([MANIFEST_NAME, other])
    (predictions / "mine.txt").write_text("x")  # a foreign file: the next run stops before evaluating
    no_model_work(monkeypatch)
    lines = user_error(["--cfg", str(path)], capsys)
    assert len(lines) == 1 and "mine.txt" in lines[0] and (predictions / "mine.txt").read_text() == "x"
