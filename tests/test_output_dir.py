"""The shared rules for the folders scripts write: locks, manifests, atomic replacement, leftovers."""
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from advent.utils.errors import UserError
from advent.utils.output_dir import (
    MANIFEST_NAME, check_replaceable, check_writable, exclusive_lock, lock_path, read_manifest,
    remove_leftovers, remove_temporary_files, replace_dir, staging_prefix, write_manifest,
)
from processes import HANG_GUARD_S


def staged(final, names, content="new"):
    """A complete staging folder beside `final` holding `names`, with its manifest."""
    staging = final.parent / f"{staging_prefix(final)}test"
    staging.mkdir()
    for name in names:
        (staging / name).write_text(content)
    write_manifest(staging, "test", names)
    return staging


def test_missing_empty_and_own_folders_may_be_replaced_foreign_ones_not(tmp_path):
    final = tmp_path / "labels"
    check_replaceable(final, "KEY")  # missing
    final.mkdir()
    check_replaceable(final, "KEY")  # empty
    (final / "a.png").write_text("x")
    write_manifest(final, "test", ["a.png"])
    check_replaceable(final, "KEY")  # only its own files
    assert read_manifest(final) == {"a.png"}
    (final / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"KEY .*labels holds files this project did not write \(notes.txt\)"):
        check_replaceable(final, "KEY")
    (final / "notes.txt").unlink()
    (final / MANIFEST_NAME).write_text("{truncated")  # an unreadable manifest proves nothing
    with pytest.raises(UserError, match="a.png"):
        check_replaceable(final, "KEY")


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "labels").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_replaceable(tmp_path / "labels", "KEY")


def test_replace_dir_swaps_in_the_new_set_and_removes_the_old(tmp_path):
    final = tmp_path / "labels"
    replace_dir(staged(final, ["a.png"], "old"), final)
    replace_dir(staged(final, ["b.png"]), final)
    assert sorted(p.name for p in final.iterdir()) == sorted([MANIFEST_NAME, "b.png"])
    assert (final / "b.png").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]  # nothing left beside it


def test_leftovers_are_removed_and_a_half_done_swap_is_undone(tmp_path):
    final = tmp_path / "labels"
    replace_dir(staged(final, ["a.png"]), final)
    (tmp_path / f"{staging_prefix(final)}killed").mkdir()
    (tmp_path / "other").mkdir()  # not ours: stays
    removed = remove_leftovers(final)
    assert [p.name for p in removed] == [f"{staging_prefix(final)}killed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "other"]
    # a run that died between the two renames of the fallback swap: the old folder comes back
    os.rename(final, tmp_path / ".labels.old-123")
    remove_leftovers(final)
    assert (final / "a.png").read_text() == "new"


def test_only_atomic_paths_temporary_files_are_removed(tmp_path):
    fd, leftover = tempfile.mkstemp(dir=tmp_path, prefix=".train_state_2.pth.", suffix=".tmp")  # as atomic_path
    os.close(fd)
    (tmp_path / "notes.tmp").write_text("user file")
    (tmp_path / "train_state_2.pth").write_text("complete")
    assert remove_temporary_files(tmp_path) == [os.path.basename(leftover)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "train_state_2.pth"]


def test_check_writable_creates_the_folder_or_names_what_is_in_the_way(tmp_path):
    assert check_writable(tmp_path / "a" / "b", "the results") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []  # no probe left
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"cannot write the results to .*file/sub: .*file is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub", "the results")


def _hold_lock_code(folder, child_marker=None, release=None):
    """Python source that holds the lock of `folder`, prints "locked" and waits for a line on
    stdin; with `child_marker`, it forks a child instead and ends once the child has written its
    pid to `child_marker`; the child lives on until the file `release` exists."""
    return textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from advent.utils.output_dir import exclusive_lock

        def wait_for(path):
            deadline = time.monotonic() + {HANG_GUARD_S}
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

        with exclusive_lock({str(folder)!r}, "holder.py"):
            if {child_marker is None!r}:
                print("locked", flush=True)
                sys.stdin.readline()
            elif os.fork() == 0:
                Path({str(child_marker)!r} + ".tmp").write_text(str(os.getpid()))
                os.replace({str(child_marker)!r} + ".tmp", {str(child_marker)!r})
                wait_for(Path({str(release)!r}))
                os._exit(0)
            else:
                wait_for(Path({str(child_marker)!r}))
    """)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    folder = tmp_path / "snapshots"
    holder = subprocess.Popen([sys.executable, "-c", _hold_lock_code(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"{folder} is in use by another run \(holder.py, pid {holder.pid} "):
            with exclusive_lock(folder, "test"):
                pass
    finally:
        holder.communicate("\n", timeout=HANG_GUARD_S)
    with exclusive_lock(folder, "test"):  # released when its holder ended
        assert lock_path(folder).exists()


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_ends(tmp_path):
    folder, child, release = tmp_path / "snapshots", tmp_path / "child.pid", tmp_path / "release"
    try:
        subprocess.run([sys.executable, "-c", _hold_lock_code(folder, child, release)], check=True,
                       timeout=HANG_GUARD_S)
        os.kill(int(child.read_text()), 0)  # the child lives on, its copy of the lock closed as it began
        with exclusive_lock(folder, "test"):
            assert lock_path(folder).exists()
    finally:
        release.touch()
