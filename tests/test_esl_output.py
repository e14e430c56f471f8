"""esl.py's output folder (PSEUDO_LABEL_DIRECTORY_TARGET): it replaces only a folder the project
wrote (its manifest), all-or-nothing, under an exclusive lock; killed runs leave the old set and
a leftover the next run removes; Ctrl-C and file-system faults end with one line."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from advent import PROJECT_ROOT
from advent.scripts import esl as esl_script
from advent.utils.output_dir import MANIFEST_NAME, foreign_entries, lock_path, read_manifest
from advent.utils.runtime import run_main
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S, ctrl_c_as_from_a_terminal, wait_for_files
from test_esl import esl_config, run_esl

KEY = "PSEUDO_LABEL_DIRECTORY_TARGET"


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def esl_exit(cfg, path, capsys):
    """(exit code, stderr lines) of esl.py run in-process through run_main."""
    write_cfg_yaml(cfg, path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(esl_script.main, ["--cfg", str(path)])
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def leftovers(folder):
    """The staging folders beside `folder`."""
    return sorted(p.name for p in Path(folder).parent.iterdir() if p.name.startswith(f".{Path(folder).name}.partial-"))


def waiting_esl_script(marker, release):
    """Python source of esl.py whose writing pass waits, in the main thread where it counts the
    second image's labels for the report, for the file `release` after creating `marker`: a signal
    or a second run lands mid-run, with the staging folder half written (the PNGs are written by
    ESL.THREADS threads, which finish the images in flight)."""
    return f"""
import sys, time
from pathlib import Path
import advent.domain_adaptation.esl_UDA as E
original, calls = E.QualityStats.update, []
def waiting(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        Path({str(marker)!r}).touch()
        deadline = time.monotonic() + {HANG_GUARD_S}
        while not Path({str(release)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return original(*args, **kwargs)
E.QualityStats.update = waiting
from advent.scripts.esl import main
from advent.utils.runtime import run_main
sys.argv[0] = "advent/scripts/esl.py"
sys.exit(run_main(main, sys.argv[1:]))
"""


def start_waiting_esl(cfg_path, tmp_path):
    """esl.py in a subprocess, stopped mid-run; returns (process, release file)."""
    marker, release = tmp_path / "mid_run", tmp_path / "release"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", waiting_esl_script(marker, release), "--cfg", str(cfg_path)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_from_a_terminal)
    wait_for_files([marker], process)
    return process, release


def earlier_output(tmp_path):
    """A first run's complete output (entropy labels); returns (cfg, its files, a maxprob config
    path whose labels differ)."""
    cfg, _ = esl_config(tmp_path)
    run_esl(cfg, tmp_path)
    before = tree(tmp_path / "labels")
    cfg.ESL.METHOD = "maxprob"
    return cfg, before, write_cfg_yaml(cfg, tmp_path / "maxprob.yml")


# --- ownership ---

@pytest.mark.parametrize("where", ["notes file", "dataset root", "experiments folder"])
def test_a_folder_with_files_the_project_did_not_write_is_refused_before_model_work(tmp_path, capsys, where):
    cfg, _ = esl_config(tmp_path)
    folder = {"notes file": tmp_path / "labels", "dataset root": Path(cfg.DATA_DIRECTORY_TARGET),
              "experiments folder": tmp_path}[where]
    if where == "notes file":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(folder)
    cfg.ESL.RESTORE_FROM = str(tmp_path / "absent.pth")  # would fail later, if it got there
    before = tree(tmp_path)
    code, lines = esl_exit(cfg, tmp_path / "esl.yml", capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {KEY} {folder} holds files this project did not write")
    assert {k: v for k, v in tree(tmp_path).items() if k != "esl.yml"} == before  # nothing written
    assert not lock_path(folder).exists()


def test_a_second_run_replaces_its_own_earlier_output(tmp_path):
    cfg, before, maxprob = earlier_output(tmp_path)
    folder = tmp_path / "labels"
    assert set(read_manifest(folder).files) == set(before) - {MANIFEST_NAME}  # every file written, listed
    assert len([name for name in before if name.startswith("run_esl_")]) == 1  # the run record too
    assert esl_script.main(["--cfg", str(maxprob)]) == 0
    after = tree(folder)
    assert foreign_entries(folder) == [] and set(read_manifest(folder).files) == set(after) - {MANIFEST_NAME}
    [record] = [name for name in after if name.startswith("run_esl_")]  # the old one went
    assert json.loads(after[record])["config"]["ESL"]["METHOD"] == "maxprob"
    pngs = [name for name in before if name.endswith(".png")]
    assert sorted(pngs) == sorted(name for name in after if name.endswith(".png"))
    assert any(before[name] != after[name] for name in pngs)
    assert leftovers(folder) == []


# --- kills, signals, concurrent runs ---

@pytest.mark.slow
def test_a_killed_run_keeps_the_old_set_and_the_next_run_removes_its_leftover(tmp_path):
    _, before, maxprob = earlier_output(tmp_path)
    process, _ = start_waiting_esl(maxprob, tmp_path)
    [partial] = leftovers(tmp_path / "labels")
    assert list((tmp_path / partial).glob("*.png"))  # killed with the staging folder half written
    process.kill()
    process.communicate(timeout=HANG_GUARD_S)
    assert tree(tmp_path / "labels") == before
    assert leftovers(tmp_path / "labels") == [partial]
    assert esl_script.main(["--cfg", str(maxprob)]) == 0
    assert leftovers(tmp_path / "labels") == []
    assert tree(tmp_path / "labels") != before


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_keeps_the_old_set(tmp_path):
    _, before, maxprob = earlier_output(tmp_path)
    process, _ = start_waiting_esl(maxprob, tmp_path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C); what was complete before is kept"
    assert tree(tmp_path / "labels") == before
    assert leftovers(tmp_path / "labels") == []  # its staging folder removed on the way out


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_stops_with_one_line(tmp_path, capsys):
    cfg, _, maxprob = earlier_output(tmp_path)
    process, release = start_waiting_esl(maxprob, tmp_path)
    try:
        code, lines = esl_exit(cfg, tmp_path / "second.yml", capsys)
    finally:
        release.touch()
        _, err = process.communicate(timeout=HANG_GUARD_S)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'labels'} is in use by another run (esl.py, pid {process.pid} ")
    assert process.returncode == 0, err[-2000:]
    assert foreign_entries(tmp_path / "labels") == [] and leftovers(tmp_path / "labels") == []


@pytest.mark.slow
def test_files_that_appear_during_the_run_are_kept_and_the_swap_refused(tmp_path):
    _, before, maxprob = earlier_output(tmp_path)
    process, release = start_waiting_esl(maxprob, tmp_path)
    (tmp_path / "labels" / "notes.txt").write_text("mine")
    release.touch()
    _, err = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {KEY} {tmp_path / 'labels'} holds files this project "
                                                   f"did not write (notes.txt)")
    assert tree(tmp_path / "labels") == {**before, "notes.txt": b"mine"}
    assert leftovers(tmp_path / "labels") == []


# --- file-system faults ---

@pytest.mark.parametrize("how", ["chmod", "deny"])
@pytest.mark.parametrize("exists", [False, True])
def test_an_unwritable_parent_is_one_line_before_model_work(tmp_path, capsys, unwritable, exists, how):
    cfg, _ = esl_config(tmp_path / "run")
    parent = tmp_path / "out"
    parent.mkdir()
    if exists:
        (parent / "labels").mkdir()
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(parent / "labels")
    cfg.ESL.RESTORE_FROM = str(tmp_path / "absent.pth")  # would fail later, if it got there
    unwritable(parent, how)  # the new set is built beside the folder: in `parent`
    code, lines = esl_exit(cfg, tmp_path / "esl.yml", capsys)
    assert code == 2
    assert lines == [f"error: cannot write the pseudo-labels (PSEUDO_LABEL_DIRECTORY_TARGET {parent / 'labels'}) "
                     f"to {parent}: Permission denied"]
    assert sorted(p.name for p in parent.iterdir()) == (["labels"] if exists else [])
