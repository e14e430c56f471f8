"""A full disk (or another refused write) while a script writes its files: one line naming the
file and exit code 2, however the failure surfaces (a plain write's OSError names no file, numpy's
own file writes lose the errno). train.py's full disk: test_train_safety.py."""
import errno
import os
import re
import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from advent import PROJECT_ROOT
from advent.scripts import esl as esl_script
from advent.scripts import test as test_script
from advent.utils.output_dir import exclusive_lock, lock_path
from advent.utils.runtime import run_main
from advent.utils.serialization import atomic_path, json_dump
from advent.utils.viz_segmask import save_png
from fake_data import write_cfg_yaml
from processes import HANG_GUARD_S
from test_esl import esl_config
from test_eval_output import predictions_cfg

FULL = os.strerror(errno.ENOSPC)


def full_disk(*args, **kwargs):
    """What a write to a full disk raises: an OSError with errno ENOSPC and no file name."""
    raise OSError(errno.ENOSPC, FULL)


def exit_of(main, argv, capsys):
    """(exit code, error lines on stderr) of a script's main run in-process through run_main."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return stop.value.code, [line for line in err.splitlines() if line.startswith("error")]


# --- the atomic writes name the file ---

def test_a_failed_write_in_an_atomic_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError) as raised:
        save_png(Image.fromarray(np.zeros((2, 2), np.uint8)), tmp_path / "a.png")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path / "a.png"))
    monkeypatch.setattr(os, "fsync", full_disk)  # a full disk found when the data is flushed
    with pytest.raises(OSError) as raised:
        json_dump({"a": 1}, tmp_path / "b.json")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path / "b.json"))
    assert list(tmp_path.iterdir()) == []


def test_other_errors_in_an_atomic_write_pass_unchanged(tmp_path):
    with pytest.raises(OSError, match="^2048 requested and 448 written$"), atomic_path(tmp_path / "a"):
        raise OSError("2048 requested and 448 written")  # no errno: not a fault we can name
    with pytest.raises(ValueError), atomic_path(tmp_path / "b"):
        raise ValueError("a bug")
    assert list(tmp_path.iterdir()) == []


# --- the scripts: one line, exit code 2 ---

def test_esl_on_a_full_disk_writing_a_label_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    cfg, _ = esl_config(tmp_path)
    path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    monkeypatch.setattr(Image.Image, "save", full_disk)
    code, lines = exit_of(esl_script.main, ["--cfg", str(path)], capsys)
    assert code == 2 and len(lines) == 1, lines
    named = re.fullmatch(rf"error: ({re.escape(str(tmp_path))}/\.labels\.partial-\w+/.+\.png): {FULL}", lines[0])
    assert named, lines
    assert not (tmp_path / "labels").exists()


def test_esl_whose_map_spill_hits_the_file_size_limit_is_one_line_naming_the_file(tmp_path):
    """A real short write, in a subprocess: with RLIMIT_FSIZE below a spill file's size the kernel
    writes part of it and then refuses (EFBIG), as a full disk does (ENOSPC); numpy's own write
    said only 'N requested and M written'."""
    cfg, _ = esl_config(tmp_path)  # a spill file: three maps of 48 x 24 pixels, about 7 kB
    path = write_cfg_yaml(cfg, tmp_path / "esl.yml")
    limit = 4096

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "advent" / "scripts" / "esl.py"), "--cfg", str(path)],
                            capture_output=True, text=True, timeout=HANG_GUARD_S, preexec_fn=limited)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    pattern = rf"error: {re.escape(str(tmp_path))}/\.labels\.partial-\w+/\.spill-0/0\.npy: {os.strerror(errno.EFBIG)}"
    assert re.fullmatch(pattern, last), last
    assert not (tmp_path / "labels").exists()


def test_test_py_on_a_full_disk_writing_a_prediction_names_it(tmp_path, monkeypatch, capsys):
    path, predictions, _ = predictions_cfg(tmp_path)
    monkeypatch.setattr(Image.Image, "save", full_disk)
    code, lines = exit_of(test_script.main, ["--cfg", str(path)], capsys)
    assert code == 2 and len(lines) == 1, lines
    prefix = re.escape(f"error: cannot write the predictions: {predictions.parent}/.predictions.partial-")
    assert re.fullmatch(rf"{prefix}\w+/labelIds/.+\.png: {FULL}", lines[0]), lines
    assert not predictions.exists()


def test_a_full_disk_writing_the_holder_into_a_lock_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OSError) as raised, exclusive_lock(tmp_path / "out", "test.py"):
        pass
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(lock_path(tmp_path / "out")))
