"""JSON / YAML reading and atomic writing (no pickle anywhere)."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml


_UMASK = os.umask(0)  # the umask can only be read by setting it: set it back at once
os.umask(_UMASK)
# mkstemp/mkdtemp create private (0600/0700) entries; finished outputs get the usual permissions.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    A crash or a kill before the rename leaves `path` as it was: never a truncated file. A
    file-system failure (a full disk) while the block writes it raises the OSError behind it,
    naming `path` (`writing`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with writing(path):
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
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


def json_load(path):
    with open(path) as f:
        return json.load(f)


def json_dump(data, path):
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def yaml_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def yaml_dump(data, path):
    """Write `data` (plain dicts, lists and scalars) as YAML, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)
