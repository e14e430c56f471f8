"""The one error class for user mistakes (bad config, missing files, wrong checkpoint).

Scripts catch it in `main`, print its single line and exit with code 2; anything
else is a bug and keeps its traceback.
"""
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


def run_main(main, argv=None):
    """Run a script's `main(argv)`; turn a UserError into one line on stderr and exit code 2.

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
