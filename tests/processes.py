"""Tests that run other processes wait for what those processes write (a file, a line), never for
a stretch of time, and assume no order between them: a loaded machine only makes them slower.

HANG_GUARD_S bounds each wait only so that a hung process fails its test instead of stalling the
run; no healthy run comes near it."""
import signal
import time
from pathlib import Path

HANG_GUARD_S = 1800


def ctrl_c_as_from_a_terminal():
    """A Popen preexec_fn: SIGINT raises KeyboardInterrupt in the child, as Ctrl-C in a terminal,
    even when the tests themselves run in the background (`cmd &` ignores SIGINT, and a child
    inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_files(paths, process):
    """Return once every file in `paths` exists; fail, with the end of `process`'s stderr (a
    Popen with text pipes), when the process ends first or after HANG_GUARD_S."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not all(Path(p).exists() for p in paths):
        ended = process.poll() is not None
        if ended or time.monotonic() > deadline:
            if not ended:
                process.kill()
            if all(Path(p).exists() for p in paths):  # written just before it ended
                return
            _, err = process.communicate()
            raise AssertionError(f"{[str(p) for p in paths]} never appeared: {(err or '')[-2000:]}")
        time.sleep(0.05)


def train_script_stopped_at(iteration, reached):
    """Python source of train.py whose step `iteration` (0-based) first creates the file
    `reached`.RANK, then waits until this process has received SIGTERM / SIGINT: the signal lands
    mid-run at a known iteration, so the run stops after exactly `iteration` + 1 iterations."""
    return f"""
import sys, time
from contextlib import contextmanager
from pathlib import Path
import advent.domain_adaptation.train_UDA as T
from advent.utils.distributed import get_rank
stop_signals, requests = T.stop_signals, []
@contextmanager
def recorded_stop_signals():
    with stop_signals() as stop:
        requests.append(stop)
        yield stop
T.stop_signals = recorded_stop_signals
train_step = T.train_step
def waiting_step(setup, source, target, cfg, i_iter):
    if i_iter == {iteration}:
        Path({str(reached)!r} + f".{{get_rank()}}").touch()
        deadline = time.monotonic() + {HANG_GUARD_S}
        while requests[-1]["signum"] is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return train_step(setup, source, target, cfg, i_iter)
T.train_step = waiting_step
from advent.scripts.train import main
from advent.utils.runtime import run_main
sys.argv[0] = "advent/scripts/train.py"
run_main(main, sys.argv[1:])
"""
