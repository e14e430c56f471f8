"""Folders the scripts write: exclusive locks, ownership, and all-or-nothing replacement.

The rules every script follows:
- A script writes only its own files. A folder it replaces as a whole (the ESL pseudo-labels)
  carries a manifest (MANIFEST_NAME) listing what the project wrote there; a folder holding
  anything else is refused with one line naming it (`check_replaceable`).
- Replacing its own earlier output is all-or-nothing: the new folder is built beside the old
  one and swapped in with one atomic exchange (`replace_dir`), so a crash or a kill leaves the
  complete old set or the complete new set, and never no folder.
- Two runs never write into one folder at once (`exclusive_lock`: the second stops with one
  line naming the folder and the holder).
- Leftovers of a killed run (staging folders, temporary files) are the project's own, named
  by fixed patterns, and are removed by the next run that holds the lock (`remove_leftovers`).
"""
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from advent.utils.errors import UserError
from advent.utils.serialization import DIR_MODE, json_dump, writing

MANIFEST_NAME = ".advent-manifest.json"
# atomic_path's temporary files: ".<name>.<8 random characters>.tmp" (tempfile.mkstemp)
TEMPORARY_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


_HELD_LOCKS = set()  # descriptors of the locks this process holds


def _drop_locks_in_child():
    """A forked child (a DataLoader worker) must not keep its parent's locks alive after the
    parent dies: close its copies of their descriptors (the parent's lock stays held)."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


def lock_path(folder):
    """The lock file of `folder`: beside it, so it survives the folder being swapped."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def exclusive_lock(folder, what):
    """Hold the exclusive lock of `folder` for the block; a UserError naming the folder and the
    holder when another process holds it. `what` says what the run is ('train.py', 'esl.py').

    The lock is an flock on a small file beside the folder (lock_path), released by the kernel
    when the process ends, however it ends; the file itself stays (it is empty of meaning once
    unlocked). The holder's pid, host, start time and command are written into it."""
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise UserError(f"cannot create the lock file {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{Path(folder)} is in use by another run ({_holder(fd)}); wait for it to "
                            f"finish or write to another folder") from None
        holder = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        with writing(path):  # a full disk: one line naming the lock file
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # releases the flock


def _holder(fd):
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"{holder['what']}, pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (ValueError, KeyError, OSError):
        return "holder unknown"


def check_writable(folder, what):
    """Create `folder` (and its parents) and a probe file in it; a UserError naming `what`, the
    folder and the cause when the file system refuses (a file in the way, read-only, no
    permission). The probe is named like atomic_path's temporary files, so a kill leaves nothing
    that the next run does not remove. Returns the folder."""
    folder = Path(folder)
    blocker = next(path for path in (folder, *folder.parents) if path.exists())
    if not blocker.is_dir():
        raise UserError(f"cannot write {what} to {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        culprit = Path(error.filename) if error.filename else folder
        where = "" if folder in (culprit, culprit.parent) else f" ({culprit})"  # a parent, not the probe
        raise UserError(f"cannot write {what} to {folder}: {error.strerror}{where}") from None
    return folder


# --- ownership ---

def read_manifest(folder):
    """The names the project wrote in `folder` (its manifest), or None when it has none."""
    try:
        with open(Path(folder) / MANIFEST_NAME) as f:
            return set(json.load(f)["files"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write_manifest(folder, writer, names):
    """Record (atomically) that the project (script `writer`) wrote `names` in `folder`."""
    json_dump({"writer": writer, "files": sorted(names)}, Path(folder) / MANIFEST_NAME)


def foreign_entries(folder):
    """Entries of `folder` the project did not write: all of them when it has no manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = read_manifest(folder) or set()
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST_NAME and p.name not in owned)


def check_replaceable(folder, key, advice="choose a new or empty folder"):
    """`folder` may be replaced as a whole: it does not exist, is empty, or holds only what the
    project wrote there. Otherwise a UserError naming `key`, the folder, a foreign entry and
    what to do (`advice`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key} {folder} exists and is not a folder")
    foreign = foreign_entries(folder)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"{key} {folder} holds files this project did not write ({foreign[0]}{more}); "
                        f"it would replace the whole folder: {advice}")


# --- replacing a folder ---

@contextlib.contextmanager
def holding(final, writer, check):
    """For a script (`writer`) that replaces the folder `final` as a whole: `check()` (which raises
    when it may not be replaced), then for the block its lock held, the leftovers of killed runs
    removed and `check()` again, now that no other run can be writing it. Checking first means a
    refused folder (a dataset, say) gets no lock file beside it."""
    check()
    with exclusive_lock(final, writer):
        remove_leftovers(final)
        check()
        yield


def new_staging(final):
    """A fresh, empty staging folder beside `final`, where its replacement is built."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=staging_prefix(final)))
    os.chmod(staging, DIR_MODE)
    return staging


def publish(staging, final, writer):
    """List everything in the complete folder `staging` in its manifest, then put it in place of
    `final` (replace_dir)."""
    write_manifest(staging, writer, [p.name for p in Path(staging).iterdir()])
    replace_dir(staging, final)


def staging_prefix(final):
    return f".{Path(final).name}.partial-"


def _old_prefix(final):
    return f".{Path(final).name}.old-"


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a, b):
    """Atomically swap the paths `a` and `b` (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(staging, final):
    """Put the complete folder `staging` in place of `final` and delete the old content.

    With an old `final`, the two are exchanged atomically; where the system cannot, the old
    folder is first renamed to .<name>.old-<pid> (which `remove_leftovers` puts back if
    the process dies before the new one is in place)."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging)  # now the old content
        return
    old = final.parent / f"{_old_prefix(final)}{os.getpid()}"
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old)


def remove_leftovers(final):
    """Remove what killed runs left beside `final`: staging folders and old folders of a swap
    (the project's own, by name). Call it holding `final`'s lock."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    if not final.exists():  # a run died between the two renames of a fallback swap: put the old one back
        olds = sorted(p for p in final.parent.iterdir() if p.name.startswith(_old_prefix(final)))
        if olds:
            os.rename(olds[-1], final)
    prefixes = (staging_prefix(final), _old_prefix(final))
    removed = [p for p in final.parent.iterdir() if p.name.startswith(prefixes)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def remove_temporary_files(folder):
    """Remove atomic_path's temporary files left in `folder` by a killed run; return their names.
    Call it holding `folder`'s lock (a running writer's temporary file must not go)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and TEMPORARY_FILE.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]
