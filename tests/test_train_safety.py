"""train.py and the files it writes: one run per snapshot folder, a run killed while writing its
first train state restarts cleanly, folders that cannot be written and a full disk are one-line
errors that leave the files written before intact."""
import errno
import io
import os
import resource
import signal
import subprocess
import socket
import sys
from pathlib import Path

import pytest
import torch

from advent import PROJECT_ROOT
from advent.domain_adaptation import checkpoint, train_UDA
from advent.domain_adaptation.checkpoint import torch_save_atomic, train_state_iterations
from advent.domain_adaptation.train_UDA import train_domain_adaptation
from advent.model.weights import file_sha256, read_checkpoint
from advent.scripts import train as train_script
from advent.utils.errors import UserError
from advent.utils import serialization
from advent.utils.output_dir import MANIFEST_NAME, _start_time, updating_manifest
from advent.utils.runtime import run_main
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S, train_script_stopped_at, wait_for_files
from test_train import assert_same_tensors, files_in, tiny_cfg

CPU = torch.device("cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}


def train_py(args, capsys):
    """run_main(train.py main, args): (exit code, the stderr lines starting with 'error:')."""
    capsys.readouterr()
    try:
        code = run_main(train_script.main, args)
    except SystemExit as stop:
        code = stop.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def digests(folder):
    """{name: SHA-256} of the files in `folder`, but the output layer's manifest (which records what
    runs write and remove, so it changes when they start and end)."""
    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST_NAME}


# --- one run per snapshot folder ---

@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_stops_and_touches_nothing(tmp_path, capsys):
    cfg, _ = tiny_cfg(tmp_path / "run", "AdvEnt", iters=10, save_every=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    reached = tmp_path / "reached"
    first = subprocess.Popen([sys.executable, "-c", train_script_stopped_at(2, reached), "--cfg", str(path)],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_files([f"{reached}.0"], first)  # training, under the lock, until it gets SIGTERM
        # as a temporary file of the first run (recorded as its own): the second must not remove it
        in_flight = folder / f".train_state_10.pth.{first.pid}-abcd1234.tmp"
        with updating_manifest(folder) as manifest:
            manifest.temporary[in_flight.name] = {"host": socket.gethostname(), "pid": first.pid,
                                                  "start": _start_time(first.pid)}
        in_flight.write_bytes(b"being written")
        for args in (["--cfg", str(path)], ["--cfg", str(path), "--resume"]):
            code, errors = train_py(args, capsys)
            assert code == 2
            [line] = errors
            assert line.startswith(f"error: {folder} is in use by another run (train.py, pid {first.pid} on ")
            assert line.endswith("wait for it to finish or write to another folder")
        assert in_flight.read_bytes() == b"being written"
        assert first.poll() is None  # undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    # the lock ends with its holder: the run resumes, and the stale temporary file goes
    assert train_py(["--cfg", str(path), "--resume"], capsys) == (0, [])
    assert not in_flight.exists()


# --- a run killed while writing its first train state ---

KILLED_IN_FIRST_TRAIN_STATE = """
import os, signal, sys
import advent.domain_adaptation.checkpoint as S
from advent.utils.output_dir import atomic_path
save = S.torch_save_atomic
def killed_while_writing(obj, path):
    if path.name.startswith("train_state_"):
        with atomic_path(path, S.WRITER) as tmp:
            tmp.write_bytes(b"half a train state")
            os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path)
S.torch_save_atomic = killed_while_writing
from advent.scripts.train import main
from advent.utils.runtime import run_main
run_main(main, sys.argv[1:])
"""


@pytest.mark.slow
def test_resume_restarts_a_run_killed_in_its_first_train_state_from_zero(tmp_path, capsys, caplog):
    def config(**changes):
        cfg, _ = tiny_cfg(tmp_path / "run", "AdvEnt", iters=4, save_every=2, pseudo=True)
        cfg.TRAIN.update(changes)
        return cfg

    cfg = config()
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_FIRST_TRAIN_STATE, "--cfg", str(path)],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert files_in(folder) == ["model_2.pth", "model_2_D_aux.pth", "model_2_D_main.pth"]
    [leftover] = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    before = {name: digest for name, digest in digests(folder).items() if name != leftover.name}

    code, errors = train_py(["--cfg", str(path)], capsys)  # a fresh run says what to do
    assert code == 2
    assert errors == [f"error: {folder} already holds a training run stopped before its first train state "
                      f"was complete (model_2.pth, 3 files); pass --resume to restart it from iteration 0 "
                      f"(its snapshots are replaced as it goes), or delete the model_*.pth files there, or "
                      f"change EXP_NAME / --exp-suffix for a new run"]
    with pytest.raises(UserError, match=r"TRAIN.LEARNING_RATE was 0.00025 when the run started .*config.yml"):
        train_domain_adaptation(config(LEARNING_RATE=1e-3), CPU, resume=True)  # not the run's config
    assert digests(folder) == before
    assert not leftover.exists()  # a killed run's temporary file: removed by the next run holding the lock

    inode = (folder / "model_2.pth").stat().st_ino
    caplog.set_level("INFO")
    assert train_py(["--cfg", str(path), "--resume"], capsys) == (0, [])
    assert any("starting again from iteration 0" in r.getMessage() for r in caplog.records)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert (folder / "model_2.pth").stat().st_ino != inode  # replaced
    straight, _ = tiny_cfg(tmp_path / "straight", "AdvEnt", iters=4, save_every=2, pseudo=True)
    train_domain_adaptation(straight, CPU)
    assert files_in(folder) == files_in(straight.TRAIN.SNAPSHOT_DIR)
    ours = read_checkpoint(folder / "train_state_4.pth")
    theirs = read_checkpoint(Path(straight.TRAIN.SNAPSHOT_DIR) / "train_state_4.pth")
    for key in ("iteration", "model", "d_aux", "d_main", "optimizer", "rng", "data"):
        assert_same_tensors(ours[key], theirs[key], key)


def test_snapshots_of_several_iterations_whose_train_state_is_gone_are_refused_with_one_way_out(tmp_path, capsys):
    cfg, _ = tiny_cfg(tmp_path / "run", "AdvEnt", iters=4, save_every=2)
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    folder.mkdir(parents=True)
    for name in ("model_2.pth", "model_2_D_main.pth", "model_4.pth", "model_4_D_main.pth"):
        torch_save_atomic({"w": torch.zeros(1)}, folder / name)  # a finished run's, as train.py records them
    before = digests(folder)
    code, errors = train_py(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml")), "--resume"], capsys)
    assert code == 2
    assert errors == [f"error: {folder} holds snapshots of 2 iterations (model_2.pth to model_4.pth) but no "
                      f"train state, so this run cannot be resumed, and restarting it would replace them; put "
                      f"train_state_4.pth back, or change EXP_NAME / --exp-suffix for a new run"]
    code, errors = train_py(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "run.yml"))], capsys)  # without --resume
    assert code == 2  # the same way out, not "pass --resume", which the line above refuses
    assert errors == [f"error: {folder} holds snapshots of 2 iterations (model_2.pth to model_4.pth) but no train "
                      f"state; put train_state_4.pth back and pass --resume to continue the run, or change "
                      f"EXP_NAME / --exp-suffix for a new run"]
    assert digests(folder) == before


FINAL = ("the final snapshot of its run, but no train state (the run finished and it was removed since, or the "
         "run was killed while writing it)")


@pytest.mark.parametrize("iters, save_every, kept, why, way_out", [
    # SAVE_PRED_EVERY == EARLY_STOP, as in the demo configs: its one snapshot is the final one, complete
    (2, 2, 2, FINAL, "the snapshot is complete: use it as it is, delete the model_2*.pth files there to train "
                     "the run again, or change EXP_NAME / --exp-suffix for a new run"),
    (6, 2, 6, FINAL, "the snapshot is complete: use it as it is, delete the model_6*.pth files there to train "
                     "the run again, or change EXP_NAME / --exp-suffix for a new run"),
    (6, 2, 4, "a snapshot written after the run's first train state (with model_2.pth), but no train state", None),
])
def test_a_lone_snapshot_other_than_a_first_one_is_never_replaced(tmp_path, capsys, iters, save_every, kept, why,
                                                                   way_out):
    cfg, _ = tiny_cfg(tmp_path / "run", "AdvEnt", iters=iters, save_every=save_every)
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    folder.mkdir(parents=True)
    for name in (f"model_{kept}.pth", f"model_{kept}_D_main.pth"):
        torch_save_atomic({"w": torch.zeros(1)}, folder / name)  # its train state deleted by hand, or never written
    before = digests(folder)
    path = str(write_cfg_yaml(cfg, tmp_path / "run.yml"))
    assert train_py(["--cfg", path, "--resume"], capsys) == (2, [
        f"error: {folder} holds model_{kept}.pth, {why}, so this run cannot be resumed, and restarting it would "
        f"replace it; " + (way_out or f"put train_state_{kept}.pth back, or change EXP_NAME / --exp-suffix for a "
                                      f"new run")])
    assert train_py(["--cfg", path], capsys) == (2, [
        f"error: {folder} holds model_{kept}.pth, {why}; " + (
            way_out or f"put train_state_{kept}.pth back and pass --resume to continue the run, or change "
                       f"EXP_NAME / --exp-suffix for a new run")])
    assert digests(folder) == before


def test_resume_restarts_a_run_that_died_before_its_first_snapshot(tmp_path, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "SourceOnly", iters=2, save_every=2)

    def crash(*args):
        raise RuntimeError("the machine went down")

    with monkeypatch.context() as patch:
        patch.setattr(train_UDA, "train_step", crash)
        with pytest.raises(RuntimeError, match="went down"):
            train_domain_adaptation(cfg, CPU)
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    assert (folder / "config.yml").is_file() and files_in(folder) == []
    changed, _ = tiny_cfg(tmp_path, "SourceOnly", iters=2, save_every=2)
    changed.TRAIN.RANDOM_SEED = 7
    with pytest.raises(UserError, match=r"TRAIN.RANDOM_SEED was 1234 when the run started"):
        train_domain_adaptation(changed, CPU, resume=True)
    assert train_domain_adaptation(cfg, CPU, resume=True) == 2
    assert files_in(folder) == ["model_2.pth", "train_state_2.pth"]


# --- folders that cannot be written ---

def no_model_work(monkeypatch):
    """Fail the test if the model is built: the folder checks come first (after the data checks,
    so that a run refused for its data makes no folder)."""
    def fail(*args, **kwargs):
        raise AssertionError("model work before the folder check")

    monkeypatch.setattr(train_UDA, "build_setup", fail)


def test_a_snapshot_folder_under_a_regular_file_is_one_line_before_any_model_work(tmp_path, capsys, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt")
    (tmp_path / "file").write_text("a file, not a folder")
    cfg.TRAIN.SNAPSHOT_DIR = str(tmp_path / "file" / "snapshots" / "run")
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    no_model_work(monkeypatch)
    assert train_py(["--cfg", str(path)], capsys) == (2, [
        f"error: cannot write the snapshots (TRAIN.SNAPSHOT_DIR) to {cfg.TRAIN.SNAPSHOT_DIR}: "
        f"{tmp_path / 'file'} is a file, not a folder"])
    cfg.TRAIN.SNAPSHOT_DIR = str(tmp_path / "file")
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    assert train_py(["--cfg", str(path), "--resume"], capsys) == (2, [
        f"error: TRAIN.SNAPSHOT_DIR {tmp_path / 'file'} exists and is not a folder"])
    assert (tmp_path / "file").read_text() == "a file, not a folder"


@pytest.mark.parametrize("how", ["chmod", "deny"])
@pytest.mark.parametrize("denied", ["EXP_ROOT", "TRAIN.SNAPSHOT_DIR"])
def test_an_unwritable_folder_is_one_line_before_any_model_work(tmp_path, capsys, monkeypatch, unwritable, denied, how):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt")
    root, folder = Path(cfg.EXP_ROOT), Path(cfg.TRAIN.SNAPSHOT_DIR)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    no_model_work(monkeypatch)
    if denied == "EXP_ROOT":  # creating the snapshots folder under it fails
        root.mkdir(parents=True)
        unwritable(root, how)
        cause = f"Permission denied ({root / 'snapshots'})"
    else:  # the folder exists; the file written to try it fails
        folder.mkdir(parents=True)
        unwritable(folder, how)
        cause = "Permission denied"
    assert train_py(["--cfg", str(path)], capsys) == (2, [
        f"error: cannot write the snapshots (TRAIN.SNAPSHOT_DIR) to {folder}: {cause}"])
    assert not folder.exists() or list(folder.iterdir()) == []


# --- a full disk ---

class FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes."""
    room = 1000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_the_last_train_state(tmp_path, capsys, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "AdvEnt", iters=4, save_every=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")
    folder = Path(cfg.TRAIN.SNAPSHOT_DIR)
    kept = {}
    original = checkpoint.save_train_state

    def keep_digests(snapshot_dir, n_iter, state):  # what the run wrote before the disk filled up
        written = original(snapshot_dir, n_iter, state)
        kept.update(digests(folder))
        return written

    def disk_full_at_4(file, mode="r", *args, **kwargs):
        if Path(file).name.startswith(".train_state_4.pth."):
            return FullDisk(file, "wb")
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_train_state", keep_digests)
    monkeypatch.setattr(checkpoint, "open", disk_full_at_4, raising=False)
    code, errors = train_py(["--cfg", str(path)], capsys)
    assert code == 2
    assert errors == [f"error: {folder / 'train_state_4.pth'}: No space left on device; the files written "
                      f"before are intact (newest train state: {folder / 'train_state_2.pth'}); fix it and "
                      f"continue with --resume"]
    assert train_state_iterations(folder) == [2]
    assert {name: digest for name, digest in digests(folder).items() if name in kept} == kept
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()  # space again: the run continues from its last train state
    assert train_py(["--cfg", str(path), "--resume"], capsys) == (0, [])
    straight, _ = tiny_cfg(tmp_path / "straight", "AdvEnt", iters=4, save_every=2)
    train_domain_adaptation(straight, CPU)
    assert_same_tensors(read_checkpoint(folder / "train_state_4.pth")["model"],
                        read_checkpoint(Path(straight.TRAIN.SNAPSHOT_DIR) / "train_state_4.pth")["model"])


def test_a_full_disk_at_the_start_names_the_file(tmp_path, capsys, monkeypatch):
    cfg, _ = tiny_cfg(tmp_path, "SourceOnly", iters=2)
    path = write_cfg_yaml(cfg, tmp_path / "run.yml")

    def full(data, file, **kwargs):  # as a buffered write whose flush fails: the error names no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(serialization.yaml, "safe_dump", full)
    assert train_py(["--cfg", str(path)], capsys) == (2, [
        f"error: {Path(cfg.TRAIN.SNAPSHOT_DIR) / 'config.yml'}: No space left on device"])


def test_torch_save_atomic_reports_the_kernels_write_error_and_keeps_the_old_file(tmp_path):
    """A real failing write (the file size limit, EFBIG): torch.save says 'unexpected pos', a
    RuntimeError; the caller gets the OSError naming the file, and the old file stays."""
    path = tmp_path / "state.pth"
    torch_save_atomic({"w": torch.ones(10)}, path)
    before = file_sha256(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(OSError) as raised:
            torch_save_atomic({"w": torch.zeros(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (raised.value.errno, raised.value.filename) == (errno.EFBIG, str(path))
    assert file_sha256(path) == before
    assert [p.name for p in tmp_path.iterdir() if p.name != MANIFEST_NAME] == ["state.pth"]  # no temporary file
