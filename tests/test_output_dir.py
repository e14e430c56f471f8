"""The output layer (advent/utils/output_dir.py): manifests that record every entry the project
wrote and by which script, ownership checks, all-or-nothing folder replacement (with and without
the atomic exchange), leftovers removed by their exact recorded names, locks."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from advent.utils import output_dir
from advent.utils.errors import UserError
from advent.utils.output_dir import (
    MANIFEST_NAME, FolderReplacement, atomic_path, check_complete, check_folder, check_names, check_owner,
    check_writable,
    exclusive_lock, foreign_entries, lock_path, prepare_folder, read_manifest, recorded_file, remove_own,
    remove_stale, updating_manifest,
)
from processes import HANG_GUARD_S


def replace_with(final, files, writer="esl.py"):
    """Replace `final` as a whole with `files` ({relative path: text}) through FolderReplacement."""
    output = FolderReplacement(final, writer, "KEY")
    with output.held(), output.staged() as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
    return output


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


# --- the record ---

def test_a_replaced_folder_records_every_entry_recursively_with_its_writer(tmp_path):
    final = tmp_path / "predictions"
    replace_with(final, {"color/a.png": "c", "labelIds/a.png": "l"}, writer="test.py")
    manifest = read_manifest(final)
    assert manifest.owner == "test.py" and manifest.complete and manifest.temporary == {}
    assert manifest.files == {name: "test.py" for name in ("color", "color/a.png", "labelIds", "labelIds/a.png")}
    assert foreign_entries(final) == []
    (final / "color" / "mine.png").write_text("the user's")  # a file inside a subfolder is foreign too
    (final / "extra").mkdir()
    assert foreign_entries(final) == ["color/mine.png", "extra"]
    # the parent records the folder itself and the lock file beside it, nothing temporary
    parent = read_manifest(tmp_path)
    assert parent.files == {"predictions": "test.py", lock_path(final).name: "test.py"} and parent.temporary == {}


def test_a_subfolder_with_its_own_manifest_is_judged_by_it(tmp_path):
    replace_with(tmp_path / "run" / "predictions", {"color/a.png": "c"}, writer="test.py")
    assert read_manifest(tmp_path / "run").owner == "test.py"  # it created the folder for the lock file
    assert foreign_entries(tmp_path / "run") == []  # the lock file and predictions/ recorded there
    (tmp_path / "run" / "predictions" / "color" / "mine.txt").write_text("x")
    assert foreign_entries(tmp_path / "run") == ["predictions/color/mine.txt"]


def test_a_first_format_manifest_vouches_for_its_files_not_for_what_its_folders_hold(tmp_path):
    folder = tmp_path / "predictions"
    (folder / "color").mkdir(parents=True)
    (folder / "color" / "mine.png").write_text("the user's")
    (folder / "a.png").write_text("x")
    (folder / MANIFEST_NAME).write_text(json.dumps({"writer": "test.py", "files": ["a.png", "color"]}))
    assert read_manifest(folder).files == {"a.png": "test.py"}
    assert foreign_entries(folder) == ["color"]
    (folder / MANIFEST_NAME).write_text("{truncated")  # an unreadable manifest proves nothing
    assert foreign_entries(folder) == ["a.png", "color"]


# --- ownership checks ---

def test_missing_empty_and_own_folders_may_be_written_foreign_and_others_not(tmp_path):
    final = tmp_path / "labels"
    check_folder(final, "esl.py", "KEY")  # missing
    final.mkdir()
    check_folder(final, "esl.py", "KEY")  # empty
    replace_with(final, {"a.png": "x"})
    check_folder(final, "esl.py", "KEY")  # only its own files
    with pytest.raises(UserError, match=r"^KEY .*labels was written by esl.py; train.py does not take over "
                                        r"another script's folder: choose a new or empty folder$"):
        check_folder(final, "train.py", "KEY")
    (final / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"^KEY .*labels holds files this project did not write \(notes.txt\); "):
        check_folder(final, "esl.py", "KEY")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_folder(tmp_path / "file", "esl.py", "KEY")


def test_a_path_through_a_missing_folder_and_back_is_checked_where_it_leads(tmp_path):
    # 'new/../../mine': 'new' does not exist, so the path as given does not either, but mkdir would
    # create 'new' and go on into the user's folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    roundabout = tmp_path / "runs" / "new" / ".." / ".." / "mine"
    with pytest.raises(UserError, match=r"^KEY .*/new/\.\./\.\./mine holds files this project did not write \(notes.txt\)"):
        check_folder(roundabout, "train.py", "KEY")
    assert entries(mine) == ["notes.txt"] and not (tmp_path / "runs").exists()
    assert prepare_folder(tmp_path / "runs" / "new" / ".." / "b", "train.py", "the snapshots") == tmp_path / "runs" / "b"
    assert read_manifest(tmp_path / "runs" / "b").owner == "train.py" and entries(tmp_path / "runs") == ["b"]


def test_a_guest_writes_only_its_own_names_beside_the_users_files(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "results_best.json").write_text("the user's")
    with pytest.raises(UserError, match=r"^KEY: .*results_best.json exists and test.py may not replace it "
                                        r"\(this project did not write it\)"):
        check_names(folder, "test.py", ["test_cache.json", "results_best.json"], "KEY")
    with pytest.raises(UserError, match="results_best.json exists and test.py may not replace it"):
        with atomic_path(folder / "results_best.json", "test.py") as tmp:
            tmp.write_text("ours")
    assert (folder / "results_best.json").read_text() == "the user's"
    with atomic_path(folder / "test_cache.json", "test.py") as tmp:
        tmp.write_text("ours")
    with atomic_path(folder / "test_cache.json", "test.py") as tmp:  # its own: replaced
        tmp.write_text("ours again")
    assert (folder / "test_cache.json").read_text() == "ours again"
    with pytest.raises(UserError, match="test_cache.json exists and train.py may not replace it \\(test.py\\)"):
        check_names(folder, "train.py", ["test_cache.json"], "KEY")
    assert entries(folder) == sorted([MANIFEST_NAME, "notes.txt", "results_best.json", "test_cache.json"])
    assert read_manifest(folder).files == {"test_cache.json": "test.py"} and read_manifest(folder).temporary == {}
    assert not remove_own(folder / "notes.txt", "test.py") and (folder / "notes.txt").exists()
    assert remove_own(folder / "test_cache.json", "test.py") and read_manifest(folder).files == {}


def test_files_checked_before_the_work_are_recorded_only_when_written(tmp_path):
    log, report = tmp_path / "new" / "run.log", tmp_path / "report.json"
    check_writable([log, report], "gpu_check.py", "--out")
    assert not log.parent.exists() and read_manifest(tmp_path) is None  # nothing written, nothing recorded
    with recorded_file(log, "gpu_check.py") as stream:  # written in place: recorded before it exists
        assert read_manifest(log.parent).files == {"run.log": "gpu_check.py"} and log.exists()
        stream.write("first run")
    assert read_manifest(log.parent).owner == "gpu_check.py"  # the folder it created
    check_writable([log], "gpu_check.py", "--out")  # its own, from an earlier run: may be written again
    with pytest.raises(UserError, match=r"^--json: .*run.log exists and numerics_check.py may not replace it "
                                        r"\(gpu_check.py\)"):
        check_writable([log], "numerics_check.py", "--json")
    (tmp_path / "mine.json").write_text("the user's")
    with pytest.raises(UserError, match="mine.json exists and gpu_check.py may not replace it"):
        check_writable([tmp_path / "other.json", tmp_path / "mine.json"], "gpu_check.py", "--out")
    with pytest.raises(UserError, match="mine.json exists and gpu_check.py may not replace it"):
        with recorded_file(tmp_path / "mine.json", "gpu_check.py"):
            pass
    assert (tmp_path / "mine.json").read_text() == "the user's"
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^--out: cannot write .*x.json: .*a_file is a file, not a folder"):
        check_writable([tmp_path / "a_file" / "deeper" / "x.json"], "gpu_check.py", "--out")


def test_a_folder_inside_another_scripts_output_is_refused_naming_that_script(tmp_path):
    replace_with(tmp_path / "data", {"Cityscapes/gtFine/x.png": "label", "GTA5/y.png": "image"},
                 writer="make_synthetic_data.py")
    with pytest.raises(UserError, match=r"^KEY .*data/Cityscapes is part of what make_synthetic_data.py wrote in "
                                        r".*data; esl.py does not take over another script's folder"):
        check_folder(tmp_path / "data" / "Cityscapes", "esl.py", "KEY")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("")  # a folder of the user's: named as such
    with pytest.raises(UserError, match=r"mine holds files this project did not write \(notes.txt\)"):
        check_folder(tmp_path / "mine", "esl.py", "KEY")


def test_prepare_folder_records_who_created_it(tmp_path):
    assert prepare_folder(tmp_path / "a" / "b", "train.py", "the snapshots") == tmp_path / "a" / "b"
    assert entries(tmp_path / "a" / "b") == [MANIFEST_NAME] and read_manifest(tmp_path / "a" / "b").owner == "train.py"
    (tmp_path / "mine").mkdir()
    prepare_folder(tmp_path / "mine", "train.py", "the snapshots")
    assert read_manifest(tmp_path / "mine").owner is None  # it existed before
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"cannot write the results to .*file/sub: .*file is a file, not a folder"):
        prepare_folder(tmp_path / "file" / "sub", "test.py", "the results")


# --- replacing a folder ---

def test_replacement_swaps_in_the_new_set_and_leaves_nothing_beside(tmp_path):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "old"})
    replace_with(final, {"b.png": "new"})
    assert entries(final) == sorted([MANIFEST_NAME, "b.png"]) and (final / "b.png").read_text() == "new"
    assert entries(tmp_path) == sorted([MANIFEST_NAME, lock_path(final).name, "labels"])
    assert read_manifest(tmp_path).temporary == {}


def test_a_failed_replacement_keeps_the_old_set_and_removes_its_staging_folder(tmp_path):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "old"})
    output = FolderReplacement(final, "esl.py", "KEY")
    with pytest.raises(RuntimeError), output.held(), output.staged() as staging:
        (staging / "b.png").write_text("new")
        raise RuntimeError("crash")
    assert entries(final) == sorted([MANIFEST_NAME, "a.png"])
    assert not staging.exists() and read_manifest(tmp_path).temporary == {}


def test_files_that_appear_in_the_folder_meanwhile_are_kept_and_the_swap_refused(tmp_path):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "old"})
    output = FolderReplacement(final, "esl.py", "KEY")
    with pytest.raises(UserError, match=r"holds files this project did not write \(notes.txt\)"):
        with output.held(), output.staged() as staging:
            (staging / "b.png").write_text("new")
            (final / "notes.txt").write_text("mine")
    assert entries(final) == sorted([MANIFEST_NAME, "a.png", "notes.txt"])


def test_without_the_atomic_exchange_the_folder_never_disappears(tmp_path, monkeypatch):
    final = tmp_path / "predictions"
    replace_with(final, {"color/a.png": "old", "color/b.png": "old", "notes/old.txt": "old"}, writer="test.py")
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    seen = []
    original = os.replace

    def watching(source, target):  # at every step of the move, the folder exists
        if os.path.basename(target) != MANIFEST_NAME:
            seen.append((final.is_dir(), read_manifest(final).complete))
        original(source, target)

    monkeypatch.setattr(os, "replace", watching)
    replace_with(final, {"color/a.png": "new", "labelIds/a.png": "new"}, writer="test.py")
    assert seen and all(exists for exists, _ in seen)
    assert not any(complete for _, complete in seen)  # marked incomplete while files move
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == sorted(
        [MANIFEST_NAME, "color", "color/a.png", "labelIds", "labelIds/a.png"])
    assert (final / "color" / "a.png").read_text() == "new"
    manifest = read_manifest(final)
    assert manifest.complete and set(manifest.files) == {"color", "color/a.png", "labelIds", "labelIds/a.png"}
    check_complete(final, "KEY")


def test_an_incomplete_folder_is_refused_by_its_readers(tmp_path):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "x"})
    with updating_manifest(final) as manifest:
        manifest.complete = False  # as a replacement without the exchange leaves it when killed
    with pytest.raises(UserError, match=r"^KEY .*labels is incomplete: the esl.py run that was replacing it "
                                        r"was stopped; run esl.py again$"):
        check_complete(final, "KEY")


# --- leftovers: exact recorded names only ---

def dead_process():
    """The record of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return {"host": output_dir.socket.gethostname(), "pid": int(child.stdout), "start": "0"}


def test_leftovers_are_recognised_by_their_recorded_names_never_by_a_prefix(tmp_path):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "x"})
    killed = tmp_path / ".labels.partial-killed1"  # a staging folder a killed run recorded
    killed.mkdir()
    (killed / "b.png").write_text("half")
    with updating_manifest(tmp_path) as manifest:
        manifest.temporary[killed.name] = dead_process()
        manifest.temporary[".labels.partial-alive"] = output_dir._process()  # a running writer's
    (tmp_path / ".labels.partial-alive").mkdir()
    (tmp_path / ".labels.partial-mine.txt").write_text("the user's")  # look like leftovers, are not
    (tmp_path / ".labels.old-backup").mkdir()
    assert remove_stale(tmp_path) == [killed.name]
    assert entries(tmp_path) == sorted([MANIFEST_NAME, lock_path(final).name, ".labels.old-backup",
                                        ".labels.partial-alive", ".labels.partial-mine.txt", "labels"])
    assert list(read_manifest(tmp_path).temporary) == [".labels.partial-alive"]
    replace_with(final, {"c.png": "y"})  # a new run: the user's entries stay, nothing renamed
    assert (tmp_path / ".labels.partial-mine.txt").read_text() == "the user's"
    assert (tmp_path / ".labels.old-backup").is_dir() and entries(final) == sorted([MANIFEST_NAME, "c.png"])


def test_a_temporary_file_of_a_killed_writer_is_removed_by_its_recorded_name(tmp_path):
    folder = tmp_path / "run"
    prepare_folder(folder, "train.py", "the snapshots")
    (folder / ".model_2.pth.123-abcd.tmp").write_bytes(b"half-written")
    (folder / ".model_4.pth.456-abcd.tmp").write_bytes(b"the user's, by chance so named")
    with updating_manifest(folder) as manifest:
        manifest.temporary[".model_2.pth.123-abcd.tmp"] = dead_process()
    assert remove_stale(folder) == [".model_2.pth.123-abcd.tmp"]
    assert entries(folder) == sorted([MANIFEST_NAME, ".model_4.pth.456-abcd.tmp"])


# --- locks ---

def test_a_lock_file_name_the_project_did_not_write_is_not_overwritten(tmp_path):
    lock_path(tmp_path / "labels").write_text("the user's notes")
    with pytest.raises(UserError, match=r"\.labels\.lock exists and this project did not write it"):
        with exclusive_lock(tmp_path / "labels", "esl.py"):
            pass
    assert lock_path(tmp_path / "labels").read_text() == "the user's notes"


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


def test_a_folder_that_existed_before_is_still_not_taken_over_by_another_script(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()  # made by the user, so its manifest names no owner
    with atomic_path(folder / "model_2.pth", "train.py") as tmp:
        tmp.write_text("weights")
    assert read_manifest(folder).owner is None
    with pytest.raises(UserError, match=r"^KEY .*run was written by train.py \(model_2.pth\); esl.py does not "
                                        r"take over another script's folder"):
        check_folder(folder, "esl.py", "KEY")
    with atomic_path(folder / "results_best.json", "test.py") as tmp:
        tmp.write_text("{}")
    check_folder(folder, "train.py", "KEY", guests=("test.py",))  # test.py's results beside the run
    with pytest.raises(UserError, match=r"was written by test.py \(results_best.json\)"):
        check_folder(folder, "train.py", "KEY")


def test_an_entry_recorded_by_an_enclosing_manifest_is_the_projects(tmp_path):
    """The demo's folder: its manifest records the whole tree, while a subfolder's own manifest
    records only the lock files a script put there."""
    out = tmp_path / "out"
    (out / "snapshots" / "run").mkdir(parents=True)
    (out / "snapshots" / "run" / "model_2.pth").write_text("weights")
    with updating_manifest(out / "snapshots") as manifest:
        manifest.files[".run.lock"] = "train.py"
    (out / "snapshots" / ".run.lock").write_text("")
    with updating_manifest(out, owner="demo.py") as manifest:
        manifest.files.update({name: "demo.py" for name in ("snapshots", "snapshots/run", "snapshots/run/model_2.pth",
                                                            "snapshots/.run.lock")})
    assert foreign_entries(out) == []
    check_folder(out, "demo.py", "KEY")  # train.py's lock, in the demo's folder: the demo's too
    (out / "snapshots" / "run" / "notes.txt").write_text("mine")
    assert foreign_entries(out) == ["snapshots/run/notes.txt"]


# --- run records: a new name each, also for runs writing at the same moment ---

@pytest.mark.parametrize("hard_links", [True, False])
def test_a_run_record_never_replaces_one_another_run_wrote_at_the_same_moment(tmp_path, monkeypatch, hard_links):
    from advent.utils.run_record import write_run_record
    record = {"kind": "test", "started": "2026-12-06T02:49:19+00:00", "n": "ours"}
    other = tmp_path / "run_test_20261206T024919.json"
    link = os.link

    def link_after_the_other_run(source, target):  # the other run takes the name between check and write
        if not other.exists():
            other.write_text('{"n": "theirs"}\n')
        if not hard_links:
            raise PermissionError(1, "Operation not permitted")  # a file system without hard links
        return link(source, target)

    monkeypatch.setattr(os, "link", link_after_the_other_run)
    path = write_run_record(tmp_path, record, "test.py")
    assert path.name == "run_test_20261206T024919_1.json"
    assert json.loads(other.read_text()) == {"n": "theirs"}
    assert json.loads(path.read_text())["n"] == "ours"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != MANIFEST_NAME) == [other.name, path.name]
    assert write_run_record(tmp_path, record, "test.py").name == "run_test_20261206T024919_2.json"


# --- a file of the user's under a name the project wrote ---

def set_time(path, seconds):
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_a_file_written_whole_is_recorded_with_its_size_time_and_hash(tmp_path):
    path = tmp_path / "results.json"
    with atomic_path(path, "test.py") as tmp:
        tmp.write_text('{"mIoU": 40.1}')
    [identity] = read_manifest(tmp_path).identity["results.json"]
    info = path.stat()
    assert identity == {"size": info.st_size, "mtime_ns": info.st_mtime_ns,
                        "sha256": hashlib.sha256(b'{"mIoU": 40.1}').hexdigest()}
    assert output_dir.is_unchanged(path, [identity])


def test_a_users_file_in_place_of_the_projects_is_the_users(tmp_path):
    path = tmp_path / "results.json"
    with atomic_path(path, "test.py") as tmp:
        tmp.write_text('{"mIoU": 40.1}')
    path.write_text('{"mIoU": 39.9}')  # the same size: the time tells
    set_time(path, 1_700_000_000)
    with pytest.raises(UserError, match=r"results.json exists and test.py may not replace it \(it is not the file "
                                        r"test.py wrote there\)"):
        with atomic_path(path, "test.py") as tmp:
            tmp.write_text("{}")
    assert not remove_own(path, "test.py") and path.read_text() == '{"mIoU": 39.9}'
    assert foreign_entries(tmp_path) == ["results.json"]
    with pytest.raises(UserError, match=r"holds files this project did not write \(results.json: not the file "
                                        r"test.py wrote there\); esl.py would replace"):
        check_folder(tmp_path, "esl.py", "KEY", guests=("test.py",))
    (tmp_path / "sub").mkdir()  # a folder, a link: not the file written either
    path.unlink()
    path.symlink_to(tmp_path / "sub")
    assert foreign_entries(tmp_path) == ["results.json", "sub"]


def test_a_copy_with_new_times_is_still_the_projects_by_its_hash(tmp_path, monkeypatch):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "labels a", "b.png": "labels b"})
    copy = tmp_path / "copy"
    shutil.copytree(final, copy, copy_function=shutil.copy)  # cp -r: new times
    set_time(copy / "a.png", 1_700_000_000)
    assert foreign_entries(copy) == []
    check_folder(copy, "esl.py", "KEY")
    hashed = []
    monkeypatch.setattr(output_dir, "_sha256", lambda path, info: hashed.append(path))
    assert foreign_entries(final) == [] and hashed == []  # size and time agree: nothing is read


def test_a_record_from_before_identities_goes_by_name_and_a_damaged_one_proves_nothing(tmp_path):
    path = tmp_path / "results.json"
    with atomic_path(path, "test.py") as tmp:
        tmp.write_text("{}")
    with updating_manifest(tmp_path) as manifest:
        manifest.identity.clear()
    path.write_text("the user's, in its place")
    assert foreign_entries(tmp_path) == []  # by name, as before
    with atomic_path(path, "test.py") as tmp:  # replaced: recorded with its identity from now on
        tmp.write_text("{}")
    assert len(read_manifest(tmp_path).identity["results.json"]) == 1
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["identity"]["results.json"] = [{"size": "2"}]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    assert read_manifest(tmp_path) is None and foreign_entries(tmp_path) == ["results.json"]


def test_while_a_file_is_renamed_over_the_old_one_either_is_recorded(tmp_path, monkeypatch):
    path = tmp_path / "model_2.pth"
    with atomic_path(path, "train.py") as tmp:
        tmp.write_bytes(b"old weights")
    old = read_manifest(tmp_path).identity[path.name]
    seen, replace = [], os.replace

    def watching(source, target):  # a kill here leaves the old file under the name; just after, the new one
        if os.path.basename(target) == path.name:
            seen.append(read_manifest(tmp_path).identity[path.name])
        replace(source, target)

    monkeypatch.setattr(os, "replace", watching)
    with atomic_path(path, "train.py") as tmp:
        tmp.write_bytes(b"new weights!")
    monkeypatch.undo()
    [during] = seen
    after = read_manifest(tmp_path).identity[path.name]
    assert during == old + after and len(after) == 1 and after[0]["size"] == len(b"new weights!")

    def failing(source, target):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        with atomic_path(path, "train.py") as tmp:
            tmp.write_bytes(b"never published")
    assert read_manifest(tmp_path).identity[path.name] == after and path.read_bytes() == b"new weights!"


def test_without_the_exchange_the_old_and_new_files_are_both_recorded_until_the_end(tmp_path, monkeypatch):
    final = tmp_path / "labels"
    replace_with(final, {"a.png": "old a"})
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    seen, replace = [], os.replace

    def watching(source, target):
        if os.path.basename(target) == "a.png":
            seen.append(len(read_manifest(final).identity["a.png"]))
            assert foreign_entries(final) == []  # a kill here: the old file is still the project's
        replace(source, target)

    monkeypatch.setattr(os, "replace", watching)
    replace_with(final, {"a.png": "new a!"})
    assert seen == [2] and foreign_entries(final) == []
    assert [i["size"] for i in read_manifest(final).identity["a.png"]] == [len("new a!")]


def test_a_log_written_in_place_goes_by_its_name(tmp_path):
    log = tmp_path / "seed0.log"
    with atomic_path(log, "demo_seeds.py") as tmp:
        tmp.write_text("an earlier log")
    with recorded_file(log, "demo_seeds.py") as stream:
        stream.write("it grows while the run goes on\n")
    assert "seed0.log" not in read_manifest(tmp_path).identity
    with open(log, "a") as stream:
        stream.write("more\n")
    assert foreign_entries(tmp_path) == []


def test_a_lock_file_inside_a_replaced_folder_still_goes_by_its_name(tmp_path):
    """The demo's folder: a script locks a folder inside it while it is staged, and again later."""
    final = tmp_path / "demo"
    output = FolderReplacement(final, "demo.py", "KEY")
    with output.held(), output.staged() as staging:
        with exclusive_lock(staging / "labels", "esl.py"):
            (staging / "labels").mkdir()
    assert lock_path(final / "labels").name not in read_manifest(final).identity
    lock_path(final / "labels").write_text('{"what": "esl.py", "pid": 1}')  # another holder's record, in place
    assert foreign_entries(final) == []


def test_another_scripts_files_inside_a_folder_are_not_replaced_with_it(tmp_path):
    """viz.py's panel in a subfolder of test.py's predictions, esl.py's labels inside the synthetic
    data folder: the script replacing the enclosing folder stops, naming them."""
    final = tmp_path / "predictions"
    replace_with(final, {"color/a.png": "c"}, writer="test.py")
    with atomic_path(final / "color" / "panel.png", "viz.py") as tmp:  # as an earlier viz.py could write it
        tmp.write_text("a panel")
    with pytest.raises(UserError, match=r"^KEY .*predictions holds what viz.py wrote there \(color/panel.png\); "
                                        r"test.py does not take over another script's files"):
        FolderReplacement(final, "test.py", "KEY").check()
    assert foreign_entries(final) == []  # the project's, but not test.py's
    demo = tmp_path / "demo"  # the demo: a stage run again by hand in its folder writes the demo's files
    replace_with(demo, {"snapshots/run/model_2.pth": "w"}, writer="demo.py")
    with atomic_path(demo / "snapshots" / "run" / "results_best.json", "test.py") as tmp:
        tmp.write_text("{}")
    FolderReplacement(demo, "demo.py", "KEY", guests=("test.py",)).check()
    with pytest.raises(UserError, match=r"holds what test.py wrote there \(snapshots/run/results_best.json\)"):
        FolderReplacement(demo, "demo.py", "KEY").check()


def test_a_folder_recorded_inside_another_scripts_output_is_refused_to_a_third(tmp_path):
    final = tmp_path / "predictions"
    replace_with(final, {"color/a.png": "c"}, writer="test.py")
    for inside in (final / "color", final / "color" / "new" / "deeper"):
        with pytest.raises(UserError, match=rf"^--out {inside} is part of what test.py wrote in {final}; viz.py "
                                            r"does not take over another script's folder"):
            check_owner(inside, "viz.py", "--out")
        check_owner(inside, "test.py", "--out")
    check_owner(tmp_path / "mine", "viz.py", "--out")  # a folder of the user's


def test_a_folder_inside_a_scripts_own_output_is_named_as_such(tmp_path):
    data = tmp_path / "data"
    replace_with(data, {"GTA5/all.txt": "names", "GTA5/images/a.png": "x"}, writer="make_synthetic_data.py")
    with pytest.raises(UserError, match=rf"^--out {data / 'GTA5'} is part of the output make_synthetic_data.py "
                                        rf"wrote in {data}, which it replaces only as a whole"):
        check_folder(data / "GTA5", "make_synthetic_data.py", "--out")
