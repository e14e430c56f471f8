"""The output layer: every file or folder a script (train, esl, test, viz, demo) creates, replaces or
removes goes through here, so that no script ever loses a file the project did not write.

The record. Every folder the project writes in holds a manifest (MANIFEST_NAME) saying which script
created the folder (`owner`, None when it existed before), which entries (files and folders,
recursively, by relative path) each script wrote there, what each file written whole was (its
`identity`: size, modification time, SHA-256), and which temporary entries are being written by
which process. An entry is recorded before it is created, so a kill never leaves a file of ours
unrecorded; anything the manifest does not list, and any file that is no longer what was
recorded (the user's own put in its place), is the user's ("foreign").

The rules.
- A script overwrites or removes only entries recorded as its own (`atomic_path`, `remove_own`,
  `check_names`); a foreign entry of the same name is refused with one line naming it.
- A folder replaced as a whole (`FolderReplacement`: esl.py's pseudo-labels, test.py's predictions,
  the demo's output) or written freely (train.py's snapshot folder: `check_folder`) must be new,
  empty, or hold only what the project wrote, and must not have been created by another script:
  one line names the path and the foreign entry or the other script. test.py 'best' writes its
  cache and results beside train.py's snapshots, and viz.py its panels into any folder: they add
  only their own names (documented in docs/evaluation.md).
- Replacing one's own earlier output is all-or-nothing: the new folder is built in a staging
  folder beside it and swapped in with one atomic exchange (Linux renameat2). Where the system
  cannot exchange, the new files are moved into the existing folder one by one, with its manifest
  marked incomplete until the end (`check_complete` refuses such a folder), so there is never a
  moment with no output folder at all.
- Leftovers of a killed run (staging folders, temporary files) are recognised by the exact names
  recorded, with the process that wrote them, and removed once that process is gone
  (`remove_stale`); never by a name pattern.
- Two runs never replace one folder at once (`exclusive_lock`).
"""
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from advent.utils.distributed import barrier, broadcast_from_main, is_main_process
from advent.utils.errors import UserError
from advent.utils.func import file_sha256

MANIFEST_NAME = ".advent-manifest.json"
_MANIFEST_TMP = MANIFEST_NAME + ".tmp"  # the manifest's own temporary file (written under the folder's flock)
_RESERVED = {MANIFEST_NAME, _MANIFEST_TMP}
MANIFEST_FORMAT = 2
NEW_FOLDER = "choose a new or empty folder"  # the advice when a folder is refused

_UMASK = os.umask(0)  # the umask can only be read by setting it: set it back at once
os.umask(_UMASK)
# finished outputs get the usual permissions (temporary files are created private)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


# --- the manifest ---

@dataclass
class Manifest:
    owner: Optional[str] = None  # the script that created the folder; None: it existed before
    files: dict = field(default_factory=dict)  # relative path -> the script that wrote it
    temporary: dict = field(default_factory=dict)  # relative path -> the process writing it (`_process`)
    complete: bool = True  # False while a replacement without atomic exchange is moving files in
    # relative path -> the identities (`file_identity`) the file may have: several only while it is
    # being replaced. A file without one (a log or event file that grows in place, a lock file, a
    # record from before identities) is the project's by its name alone.
    identity: dict = field(default_factory=dict)

    def writer_of(self, name):
        return self.files.get(str(name))


def read_manifest(folder):
    """The Manifest of `folder`, or None when it has none (or an unreadable one, which proves nothing).

    A manifest of the first format ({"writer", "files": [top-level names]}) listed the names of
    folders but not what they held: its files are taken as the writer's, its folders are not."""
    folder = Path(folder)
    try:
        with open(folder / MANIFEST_NAME) as f:
            data = json.load(f)
        if data.get("format") == MANIFEST_FORMAT:
            identity = {str(name): [_checked_identity(i) for i in ids] for name, ids in data.get("identity", {}).items()}
            return Manifest(data["owner"], dict(data["files"]), dict(data["temporary"]), bool(data["complete"]),
                            identity)
        writer = data["writer"]
        return Manifest(writer, {n: writer for n in data["files"] if (folder / n).is_file()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_manifest(folder, manifest):
    """Write the manifest atomically (its temporary file is the layer's own, by a fixed name: the
    caller holds the folder's flock, so no one else is writing it)."""
    tmp = Path(folder) / _MANIFEST_TMP
    data = {"format": MANIFEST_FORMAT, "owner": manifest.owner, "complete": manifest.complete,
            "files": dict(sorted(manifest.files.items())), "temporary": manifest.temporary,
            "identity": dict(sorted(manifest.identity.items()))}
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, Path(folder) / MANIFEST_NAME)


@contextlib.contextmanager
def updating_manifest(folder, owner=None):
    """Yield the Manifest of `folder` (a new one with `owner` when it has none) to change, under an
    exclusive flock of the folder, and write it back when the block succeeds."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: a single writer is assumed
            fcntl.flock(fd, fcntl.LOCK_EX)
        manifest = read_manifest(folder) or Manifest(owner)
        yield manifest
        _write_manifest(folder, manifest)
    finally:
        os.close(fd)  # releases the flock


# --- what a file the project wrote is ---

_DIGESTS = {}  # (device, inode, size, mtime, ctime) -> SHA-256 of the files this process has hashed


def _sha256(path, info):
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def file_identity(path):
    """What the complete file `path` is: its size, modification time and SHA-256."""
    info = os.stat(path)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": _sha256(path, info)}


def _checked_identity(data):
    if not (isinstance(data, dict) and isinstance(data.get("size"), int)
            and isinstance(data.get("mtime_ns"), int) and isinstance(data.get("sha256"), str)):
        raise ValueError(f"not a file identity: {data!r}")
    return data


def is_unchanged(path, identities):
    """Whether `path` is still what the project wrote there: true with no identity recorded (the
    file goes by its name) or nothing there; else a regular file of one of `identities`, by its
    size and time, or, when those differ (a copy: `cp -r` gives new times), by its SHA-256."""
    if not identities:
        return True
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    sized = [i for i in identities if i["size"] == info.st_size]
    if any(i["mtime_ns"] == info.st_mtime_ns for i in sized):
        return True
    return bool(sized) and any(i["sha256"] == _sha256(path, info) for i in sized)


def foreign_entries(folder):
    """Relative paths of the entries under `folder` the project did not write, sorted: every entry
    when it has no manifest. An entry is the project's when the manifest of `folder` or of any
    recorded subfolder on its way records it (a subfolder a script wrote keeps a manifest of its
    own; the demo's records its whole tree) and, for a file written whole, it is still that file
    (is_unchanged); a foreign folder is named, not entered."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(entry.path for entry in _entries(folder, {}) if entry.foreign)


@dataclass
class _Entry:
    path: str  # relative to the folder walked
    writers: Optional[frozenset]  # the scripts the manifests on its way record as its writer; None: temporary
    replaced_by_other: bool = False  # a file recorded whole, another file now in its place

    @property
    def foreign(self):
        return self.writers == frozenset() or self.replaced_by_other


def _entries(folder, inherited):
    """Every entry under `folder`, recorded or not, as an _Entry; an unrecorded folder is listed,
    not entered. `inherited` maps the paths under `folder` (relative to it) that enclosing
    manifests record to (their writers, identities); the folder's own manifest adds its writer
    and has the last word on identities."""
    manifest = read_manifest(folder) or Manifest()
    known = dict(inherited)
    for name, by in manifest.files.items():
        writers = known.get(name, (frozenset(), None))[0]
        known[name] = (writers | {by}, manifest.identity.get(name))
    known.update(dict.fromkeys(manifest.temporary, (None, None)))
    found, pending = [], [Path(".")]
    while pending:
        relative = pending.pop()
        for item in os.scandir(folder / relative):
            key = str(relative / item.name)
            if key in _RESERVED:
                continue
            writers, identities = known.get(key, (frozenset(), None))
            found.append(_Entry(key, writers, not is_unchanged(item.path, identities)))
            if writers and not found[-1].replaced_by_other and item.is_dir(follow_symlinks=False):
                if (folder / key / MANIFEST_NAME).exists():
                    below = {k[len(key) + 1:]: v for k, v in known.items() if k.startswith(key + "/")}
                    found += [_Entry(f"{key}/{e.path}", e.writers, e.replaced_by_other)
                              for e in _entries(folder / key, below)]
                else:
                    pending.append(Path(key))
    return found


def tree_entries(folder):
    """Relative paths of every entry under `folder` (files and folders), the manifest aside."""
    folder = Path(folder)
    entries = []
    for root, dirs, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        entries += [str(relative / name) for name in dirs + files]
    return [e for e in entries if e not in _RESERVED]


# --- checks (before any model work) ---

def _resolved(folder):
    """`folder` as the file system will reach it once created: symbolic links followed and '..'
    applied (to 'new/../x' too, whose 'new' does not exist yet: mkdir makes it, then goes up), so
    that what is checked is the folder that will be written."""
    return Path(folder).resolve()


def _nearest_existing(folder):
    """The nearest existing folder on the way to the (resolved) `folder`, itself included."""
    return next(path for path in (folder, *folder.parents) if path.exists())


def _file_in_the_way(folder):
    """The nearest existing entry on the way to the (resolved) `folder`, itself included, when it
    is a file rather than a folder (so `folder` cannot be created); else None."""
    nearest = next(path for path in (folder, *folder.parents) if path.exists() or path.is_symlink())
    return None if nearest.is_dir() else nearest


def check_creatable(folder, what):
    """Before any work, creating nothing: `folder` is a folder or can be made (no file in the way,
    the nearest existing folder on its way writable). A UserError as prepare_folder's otherwise,
    so that a run whose later checks fail (a bad checkpoint) leaves no folder behind."""
    shown, folder = folder, _resolved(folder)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise UserError(f"cannot write {what} to {shown}: {blocker} is a file, not a folder")
    nearest = _nearest_existing(folder)
    if not os.access(nearest, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(nearest).f_flag & os.ST_RDONLY else errno.EACCES
        made = next((path for path in (folder, *folder.parents) if path.parent == nearest), folder)  # first mkdir
        where = "" if made == folder else f" ({made})"
        raise UserError(f"cannot write {what} to {shown}: {os.strerror(code)}{where}")


def prepare_folder(folder, writer, what):
    """Create `folder` (and its parents) when missing, recording `writer` as the script that created
    it, and write its manifest (which also proves the folder writable). A UserError naming `what`,
    the folder and the cause when the file system refuses (a file in the way, read-only, no
    permission). Removes what killed runs left there (`remove_stale`). Returns the folder, resolved
    (`_resolved`)."""
    shown, folder = folder, _resolved(folder)
    check_creatable(shown, what)
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        with updating_manifest(folder, owner=writer if created else None):
            pass
    except OSError as error:
        culprit = Path(error.filename) if error.filename else folder
        where = "" if folder in (culprit, culprit.parent) else f" ({culprit})"  # a parent, not the manifest
        raise UserError(f"cannot write {what} to {shown}: {error.strerror}{where}") from None
    remove_stale(folder)
    return folder


def check_owner(folder, writer, key, advice=NEW_FOLDER, guests=()):
    """`folder` is not another script's: not created by one, and holding no file of one but of
    `writer` and `guests` (the user's own files aside). Otherwise a UserError as check_folder's."""
    shown, folder = folder, _resolved(folder)
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise UserError(f"{key} {shown} exists and is not a folder")
    manifest = read_manifest(folder)
    if manifest is None:  # a folder inside another script's output, which records it there
        above, other = _recorded_above(folder)
        if other not in (None, writer, *guests):
            raise UserError(f"{key} {shown} is part of what {other} wrote in {above}; {writer} does not take "
                            f"over another script's folder: {advice}")
        return
    others = sorted(name for name, by in manifest.files.items() if by not in (writer, *guests))
    if manifest.owner not in (None, writer):
        other, which = manifest.owner, ""
    elif others:
        other, which = manifest.files[others[0]], f" ({others[0]})"
    else:
        return
    raise UserError(f"{key} {shown} was written by {other}{which}; {writer} does not take over "
                    f"another script's folder: {advice}")


def _recorded_above(folder):
    """(the nearest folder above the (resolved) `folder` whose manifest records it or a folder on
    its way, the script recorded there), or (None, None)."""
    for above in folder.parents:
        manifest = read_manifest(above)
        if manifest is not None:
            relative = folder.relative_to(above)
            for path in (relative, *list(relative.parents)[:-1]):  # the folder itself first
                if manifest.writer_of(path) is not None:
                    return above, manifest.writer_of(path)
    return None, None


# what the longest name the project puts beside an output folder adds to its name: the staging
# folder .<name>.partial-<8 hex digits> (the lock, .<name>.lock, adds less)
BESIDE_EXTRA = len("..partial-") + 8


def check_name_room(folder, shown, key):
    """The (resolved) `folder`'s name leaves room for the names written beside it; a UserError
    naming `key` and the limit otherwise (before anything is made: no half-made staging folder)."""
    try:
        name_max = os.pathconf(_nearest_existing(folder), "PC_NAME_MAX")
    except (OSError, ValueError):  # ENAMETOOLONG: a name over the limit already
        name_max = 255
    size = len(os.fsencode(folder.name))
    if size + BESIDE_EXTRA > name_max:
        raise UserError(f"{key} {shown}: the folder name is {size} bytes, over the {name_max - BESIDE_EXTRA} this "
                        f"project can use there (the file system allows {name_max}, and .<name>.partial-* "
                        f"folders are made beside it)")


def check_folder(folder, writer, key, advice=NEW_FOLDER, guests=()):
    """`writer` may write `folder` freely (replace it, or remove its own files in it): it does not
    exist, or it was not created by another script and holds only what `writer` (or one of the
    scripts `guests`, which add their files beside its own) wrote there. Otherwise a UserError
    naming `key`, the folder, the other script or a foreign entry, and what to do (`advice`)."""
    shown, folder = folder, _resolved(folder)
    check_name_room(folder, shown, key)
    check_owner(shown, writer, key, advice, guests)
    entries = sorted(_entries(folder, {}), key=lambda e: e.path) if folder.is_dir() else []
    foreign = [e for e in entries if e.foreign]
    if foreign:
        first, more = foreign[0], len(foreign) - 1
        above, other = (None, None) if read_manifest(folder) else _recorded_above(folder)  # inside an output
        if other is None:
            above, other = folder.parent, (read_manifest(folder.parent) or Manifest()).writer_of(
                f"{folder.name}/{first.path}")
        if other == writer:
            raise UserError(f"{key} {shown} is part of the output {writer} wrote in {above}, which it replaces only "
                            f"as a whole: {advice}")
        if other not in (None, *guests):
            raise UserError(f"{key} {shown} is part of what {other} wrote in {above}; {writer} does not "
                            f"take over another script's folder: {advice}")
        which = (f"{first.path}: not the file {', '.join(sorted(first.writers))} wrote there"
                 if first.replaced_by_other else first.path)
        more = f" and {more} more" if more else ""
        raise UserError(f"{key} {shown} holds files this project did not write ({which}{more}); "
                        f"{writer} would replace or remove what it holds: {advice}")
    others = [e for e in entries if e.writers and e.writers.isdisjoint({writer, *guests})]
    if others:  # another script's output inside this one (viz.py's panels in test.py's predictions)
        raise UserError(f"{key} {shown} holds what {', '.join(sorted(others[0].writers))} wrote there "
                        f"({others[0].path}); {writer} does not take over another script's files: {advice}")


def check_names(folder, writer, names, key):
    """`writer` may write each of `names` in `folder` (beside whatever else it holds): none exists
    unless `writer` wrote it. Otherwise a UserError naming the entry."""
    manifest = read_manifest(folder) or Manifest()
    for name in names:
        path = Path(folder) / name
        if not (path.exists() or path.is_symlink()):
            continue
        if manifest.writer_of(name) != writer:
            whose = manifest.writer_of(name) or "this project did not write it"
        elif not is_unchanged(path, manifest.identity.get(name)):
            whose = f"it is not the file {writer} wrote there"
        else:
            continue
        raise UserError(f"{key}: {path} exists and {writer} may not replace it ({whose}); "
                        f"move it away or choose another folder")


def check_writable(paths, writer, key):
    """Before any work (a benchmark's report, written long after): `writer` may write each file of
    `paths` there: none is a file it did not write (check_names), and no file stands where a
    folder on its way must be. Nothing is recorded yet: each file is recorded when it is written
    (atomic_path, recorded_file), so a run that stops first leaves no record of a file it never
    wrote. A UserError naming `key` and the file otherwise. A None path (an optional file not
    asked for) is skipped."""
    for shown in filter(None, paths):
        path = _resolved(shown)
        check_names(path.parent, writer, [path.name], key)
        blocker = _file_in_the_way(path.parent)
        if blocker is not None:
            raise UserError(f"{key}: cannot write {shown}: {blocker} is a file, not a folder")


def check_complete(folder, key):
    """Refuse a folder whose replacement was stopped half-way (possible only without atomic exchange)."""
    manifest = read_manifest(folder)
    if manifest is not None and not manifest.complete:
        raise UserError(f"{key} {folder} is incomplete: the {manifest.owner} run that was replacing it "
                        f"was stopped; run {manifest.owner} again")


# --- writing and removing single files ---

def _process():
    """Who is writing: this host, pid and the process's start time (so a reused pid is not taken
    for a live writer)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _is_gone(process):
    """Whether the process recorded as `process` has ended (never for one on another host)."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return False
    pid = process.get("pid")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False
    return process.get("start") is not None and _start_time(pid) != process.get("start")


@contextlib.contextmanager
def writing(path):
    """For a block that writes `path`: a file-system failure (a full disk) raises the OSError behind
    it, naming `path`. A failed write, flush or fsync of an open file names no file, and torch.save
    raises a RuntimeError with the OSError only as its context."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        cause = error
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from error


@contextlib.contextmanager
def atomic_path(path, writer=None, new=False):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`, so a
    crash or a kill leaves `path` as it was, never a truncated file. With `new`, `path` must not
    exist: FileExistsError when another process took the name meanwhile (publish_new).

    With `writer` (a folder that may hold the user's files too): `path` may exist only as
    `writer`'s own (check_names), and both `path` and the temporary file are recorded in the
    folder's manifest first; the new file's identity (file_identity) is recorded beside the old
    one's before the rename and alone after it, so that whenever a kill comes, the file under
    that name is the one recorded. Without (inside a folder the project built whole, a staging
    folder) nothing is recorded: the folder is recorded as a whole."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    identity, published = None, False
    if writer is not None:
        check_names(folder, writer, [path.name], "cannot write")
    try:
        with writing(path):  # a full disk names `path`
            if writer is not None:
                with updating_manifest(folder) as manifest:
                    manifest.files[path.name] = writer
                    manifest.temporary[tmp.name] = _process()
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            if writer is not None:
                identity = file_identity(tmp)
                with updating_manifest(folder) as manifest:
                    manifest.identity[path.name] = _old_identities(path, manifest) + [identity]
            publish_new(tmp, path) if new else os.replace(tmp, path)
        published = True
    finally:
        if tmp.exists():
            tmp.unlink()
        if writer is not None:
            with contextlib.suppress(OSError), updating_manifest(folder) as manifest:
                manifest.temporary.pop(tmp.name, None)
                if identity is not None:
                    kept = [identity] if published else [i for i in manifest.identity.get(path.name, []) if i != identity]
                    manifest.identity.pop(path.name, None)
                    if kept:
                        manifest.identity[path.name] = kept


def _old_identities(path, manifest):
    """The identities the file now at `path` may have: those recorded, or, for a file recorded by
    its name alone (by an earlier version), its own."""
    recorded = manifest.identity.get(path.name)
    if recorded or not path.is_file() or path.is_symlink():
        return list(recorded or [])
    return [file_identity(path)]


def publish_new(tmp, path):
    """Give the complete file `tmp` the name `path` only if no file has it (FileExistsError else):
    a hard link, atomic and exclusive; where the file system has none, the name is taken with
    O_EXCL first (a kill between the two then leaves an empty file of that name)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        os.replace(tmp, path)


@contextlib.contextmanager
def recorded_file(path, writer):
    """`path` open for writing in place (a log that grows while a run goes on), recorded as
    `writer`'s first; refused as atomic_path refuses a file `writer` did not write."""
    path = Path(path)
    prepare_folder(path.parent, writer, f"the file {path}")
    check_names(path.parent, writer, [path.name], "cannot write")
    with updating_manifest(path.parent) as manifest:
        manifest.files[path.name] = writer
        manifest.identity.pop(path.name, None)  # it grows in place: it goes by its name
    with writing(path), open(path, "w") as stream:
        yield stream


def remove_own(path, writer):
    """Delete the file `path` when `writer` wrote it (its manifest says so, and it is still the file
    written: is_unchanged), and its record; return whether it did."""
    path = Path(path)
    with updating_manifest(path.parent) as manifest:
        if manifest.writer_of(path.name) != writer or not is_unchanged(path, manifest.identity.get(path.name)):
            return False
        path.unlink(missing_ok=True)
        del manifest.files[path.name]
        manifest.identity.pop(path.name, None)
    return True


def record_new_entries(folder, writer, before):
    """Record as `writer`'s the entries of `folder` that are not in `before` (for a library that
    creates its own uniquely named files, e.g. TensorBoard's event files)."""
    new = [name for name in tree_entries(folder) if name not in before]
    if new:
        with updating_manifest(folder) as manifest:
            manifest.files.update({name: writer for name in new})


def remove_stale(folder):
    """Remove the temporary entries recorded in `folder` whose writing process has ended (a killed
    run's half-written file or staging folder), by their exact recorded names; return them."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not any(_is_gone(p) for p in manifest.temporary.values()):
        return []
    removed = []
    with updating_manifest(folder) as manifest:
        for name, process in list(manifest.temporary.items()):
            if _is_gone(process):
                _remove_entry(folder / name)
                del manifest.temporary[name]
                removed.append(name)
    return removed


def _remove_entry(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- locks ---

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
def exclusive_lock(folder, writer, shared=False):
    """Hold the exclusive lock of `folder` for the block; a UserError naming the folder and the
    holder when another process holds it. `writer` is the script that runs ('train.py', 'esl.py').
    With `shared`: a reader's lock instead (train.py reading the pseudo-labels it trains on; any
    number at once), which the exclusive holder (esl.py replacing them) and a reader exclude.

    The lock is an flock on a small file beside the folder (lock_path), recorded in that folder's
    manifest and released by the kernel when the process ends, however it ends; the file stays.
    A file of that name the project did not write is refused, not overwritten."""
    path = lock_path(folder)
    try:
        prepare_folder(path.parent, writer, f"the lock of {folder}")
        manifest = read_manifest(path.parent)
        if path.exists() and manifest.writer_of(path.name) is None and not _is_lock_file(path):
            raise UserError(f"{path} exists and this project did not write it; move it away")
        with updating_manifest(path.parent) as manifest:
            manifest.files.setdefault(path.name, writer)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise UserError(f"cannot create the lock file {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{Path(folder)} is in use by another run ({_holder(fd, shared)}); wait for it to "
                            f"finish or write to another folder") from None
        if not shared:  # a reader leaves the last writer's record
            holder = {"what": writer, "pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
            with writing(path):  # a full disk: one line naming the lock file
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # releases the flock


def _is_lock_file(path):
    """An unrecorded lock file of an earlier version: empty, or its holder's JSON."""
    try:
        text = path.read_text()
        return not text or "what" in json.loads(text)
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return False


def _holder(fd, shared):
    """Who holds the lock `fd` could not take: training runs reading the folder (when a shared
    lock can be had), else the exclusive holder its file names."""
    if not shared:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return "train.py, reading it to train on"
        except BlockingIOError:
            pass
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"{holder['what']}, pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (ValueError, KeyError, OSError):
        return "holder unknown"


# --- replacing a folder as a whole ---

class FolderReplacement:
    """The folder `final` that script `writer` replaces as a whole, all or nothing.

    `held()` (every process; the main one does the work): the folder checked (`check_folder`),
    its lock taken for the block, what killed runs left beside it removed, and checked again now
    that no other run can be writing it. Checking first means a refused folder (a dataset, say)
    gets no lock file beside it. `staged()` (after the process group exists): a fresh staging
    folder beside `final`, recorded in the parent's manifest, its path shared with every process;
    when the block succeeds, and every process has left it, the main process lists the whole tree
    in its manifest and swaps it in (`publish`); after an error it is removed."""

    def __init__(self, final, writer, key, advice=NEW_FOLDER, guests=()):
        self.final, self.writer, self.key, self.advice = Path(final).resolve(), writer, key, advice
        self.guests = guests  # the scripts whose output inside the folder is `writer`'s too (the demo runs them)

    def check(self):
        check_folder(self.final, self.writer, self.key, self.advice, self.guests)

    @contextlib.contextmanager
    def held(self):
        if not is_main_process():
            yield self.final
            return
        self.check()
        with exclusive_lock(self.final, self.writer):
            remove_stale(self.final.parent)
            self.check()
            yield self.final

    def open(self):
        """Create the staging folder (main process) and return its path on every process."""
        staging = None
        if is_main_process():
            parent = self.final.parent
            staging = parent / f".{self.final.name}.partial-{secrets.token_hex(4)}"
            with updating_manifest(parent) as manifest:
                manifest.temporary[staging.name] = _process()
                manifest.files[self.final.name] = self.writer
            staging.mkdir(mode=DIR_MODE)
        return Path(broadcast_from_main(str(staging) if staging else None))

    def publish(self, staging):
        """Once every process has written its part: record the tree, swap it in (main process)."""
        barrier()
        if not is_main_process():
            return
        self.check()  # a folder that came to hold foreign files meanwhile is refused, not replaced
        with updating_manifest(staging) as manifest:
            in_place = set(manifest.files) - set(manifest.identity)  # a lock or a log written there: by name
            manifest.owner, manifest.files = self.writer, {e: self.writer for e in tree_entries(staging)}
            manifest.identity = {e: [file_identity(staging / e)] for e in manifest.files
                                 if e not in in_place and _whole_file(staging / e)}
        if self.final.exists():
            if not _exchange(staging, self.final):
                _replace_in_place(staging, self.final, self.writer)
        else:
            os.rename(staging, self.final)
        self.discard(staging)  # now the old content (or nothing)

    def discard(self, staging):
        """Remove the staging folder and its record (main process)."""
        if not is_main_process():
            return
        _remove_entry(Path(staging))
        with contextlib.suppress(OSError), updating_manifest(self.final.parent) as manifest:
            manifest.temporary.pop(Path(staging).name, None)

    @contextlib.contextmanager
    def staged(self):
        """Yield the staging folder; publish it when the block succeeds, else discard it."""
        staging = self.open()
        try:
            yield staging
            self.publish(staging)
        finally:
            self.discard(staging)


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


def _whole_file(path):
    """Whether `path` is a file written whole, whose identity is recorded: not a folder, a link, or
    a subfolder's manifest (which changes as its folder is written in)."""
    return path.is_file() and not path.is_symlink() and path.name not in _RESERVED


def _replace_in_place(staging, final, writer):
    """Without atomic exchange: move the new entries into `final` one by one (each file by an atomic
    rename), then remove the old ones the new set lacks. `final` never stops existing; its manifest
    lists both sets and says 'incomplete' until the end (check_complete)."""
    staged = read_manifest(staging)
    new = staged.files
    with updating_manifest(final, owner=writer) as manifest:
        old = dict(manifest.files)
        manifest.files.update(new)
        for name, ids in staged.identity.items():  # the old file or the new one (an old one by name stays so)
            if name not in old or manifest.identity.get(name):
                manifest.identity[name] = manifest.identity.get(name, []) + ids
        manifest.complete = False
    for entry in sorted(new):  # folders before what they hold
        source, target = staging / entry, final / entry
        if source.is_dir() and not source.is_symlink():
            if target.exists() and not target.is_dir():
                target.unlink()
            target.mkdir(exist_ok=True)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(source, target)
    for entry in sorted(set(old) - set(new), reverse=True):  # what folders hold before the folders
        _remove_entry(final / entry)
    with updating_manifest(final) as manifest:
        manifest.owner, manifest.files, manifest.identity, manifest.complete = writer, new, staged.identity, True
