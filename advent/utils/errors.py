"""The one error class for user mistakes (bad config, missing files, wrong checkpoint).

A script's `runtime.run_main` prints its single line and exits with code 2; so are file-system
faults a user has to fix (a full disk, a read-only or unwritable folder). Ctrl-C ends a script
with one line and exit code 130. Anything else is a bug and keeps its traceback.
"""
import errno
import os


class UserError(Exception):
    """A mistake in the user's input, reported as one line naming the bad key, file or value."""

    def __init__(self, message):
        # A DataLoader worker re-raises our error in the main process as
        # UserError("Caught UserError in DataLoader worker ...\n<traceback>\n...UserError: msg"):
        # keep only the original one-line message.
        message = str(message)
        if message.startswith("Caught ") and "\n" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split("UserError: ", 1)[-1]
        super().__init__(message)


# OSErrors that say what the user must fix about the file system or a path they gave, not a bug
# of ours (EFBIG: a file over the file system's or the process's size limit, e.g. 4 GiB on FAT32,
# `ulimit -f`; ELOOP: a symbolic link loop; ENAMETOOLONG: a name over the file system's limit)
FILE_SYSTEM_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.ELOOP, errno.ENAMETOOLONG}


def symlink_loop(error):
    """One line for pathlib's RuntimeError on a symbolic link loop (Python < 3.13), else None."""
    text = str(error)
    if isinstance(error, RuntimeError) and text.startswith("Symlink loop from "):
        return f"{text[len('Symlink loop from '):].strip(chr(39))}: {os.strerror(errno.ELOOP)}"
    return None


def file_system_fault(error):
    """One line for an OSError a user has to fix (full disk, read-only, permission), else None."""
    if not isinstance(error, OSError) or error.errno not in FILE_SYSTEM_FAULTS:
        return None
    return f"{error.filename or 'file system'}: {error.strerror}"
