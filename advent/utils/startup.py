"""Ctrl-C while a script starts: one line and exit code 130, not a KeyboardInterrupt traceback
from whichever import it hit (importing torch takes a second or more).

Every script in advent/scripts/ imports this module first, before anything slow:

    import advent.utils.startup  # noqa: F401  (first: Ctrl-C during the imports below is one line)

When the program is such a script, the import sets a SIGINT handler that ends it with that line;
`runtime.run_main` puts Python's own handler back as it takes over, so from there on Ctrl-C is a
KeyboardInterrupt again, which run_main (or the script) turns into its own line. Imported any
other way (a test, a notebook, another program), this module changes nothing.
"""
import os
import signal
import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
LINE = b"interrupted (Ctrl-C) while starting; nothing was done\n"


def _interrupted(signum, frame):
    os.write(2, LINE)  # not print: the signal may have come in the middle of a write to stderr
    raise SystemExit(128 + signum)


def started_as_script():
    """Whether the program is one of advent/scripts/*.py (run by path, with -m or via runpy)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is not None and Path(main_file).resolve().parent == SCRIPTS_DIR


def quiet_interrupts():
    """Until `loud_interrupts`, Ctrl-C ends the program with one line and exit code 130; a SIGINT
    handler set before (or SIGINT ignored, as for a background job) is left alone."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


def loud_interrupts():
    """Ctrl-C raises KeyboardInterrupt again (if `quiet_interrupts` had changed it)."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if started_as_script():
    quiet_interrupts()
