"""The one error class for user mistakes (bad config, missing files, wrong checkpoint).

Scripts catch it in `main`, print its single line and exit with code 2; so are file-system
faults a user has to fix (a full disk, a read-only or unwritable folder). Ctrl-C ends a script
with one line and exit code 130. Anything else is a bug and keeps its traceback.
"""
import errno
import sys


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


# OSErrors that say what the user must fix about the file system, not a bug of ours
FILE_SYSTEM_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def file_system_fault(error):
    """One line for an OSError a user has to fix (full disk, read-only, permission), else None."""
    if not isinstance(error, OSError) or error.errno not in FILE_SYSTEM_FAULTS:
        return None
    return f"{error.filename or 'file system'}: {error.strerror}"


def run_main(main, argv=None):
    """Run a script's `main(argv)`; turn a UserError (or a file-system fault: `file_system_fault`)
    into one line on stderr and exit code 2, and Ctrl-C into one line and exit code 130.

    Under torchrun, an error that every process raised together (`all_processes`) is printed by
    the main process only, and the processes end together after it; each exits with code 2."""
    try:
        return main(argv)
    except UserError as error:
        shared = getattr(error, "all_processes", False)
        from advent.utils.distributed import is_main_process, leave_together  # it imports this module

        if is_main_process() or not shared:
            print(f"error: {error}", file=sys.stderr, flush=True)
        if shared:
            leave_together()
        sys.exit(2)
    except OSError as error:
        line = file_system_fault(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); what was complete before is kept", file=sys.stderr, flush=True)
        sys.exit(130)
