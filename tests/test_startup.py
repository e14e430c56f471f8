"""Ctrl-C while a script's imports load (advent.utils.startup): one line, exit code 130, no
traceback, for every script. Deterministic: the script runs under a harness whose import hook
stops the import of torch until the test has sent SIGINT (no sleeps, no timing)."""
import signal
import subprocess
import sys

import pytest

from advent import PROJECT_ROOT
from advent.utils import startup
from processes import HANG_GUARD_S, ctrl_c_as_from_a_terminal

SCRIPTS = ("train", "esl", "test", "demo", "viz", "check_data", "summarize", "make_synthetic_data")
# Runs the script at argv[1] as `python <script>` would, except that importing torch first says
# so on stdout and waits for a line on stdin (which never comes: the test sends SIGINT).
HARNESS = """
import os, runpy, sys

class StopAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("importing torch", flush=True)
            sys.stdin.readline()
        return None

sys.meta_path.insert(0, StopAtTorch())
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("name", SCRIPTS)
def test_ctrl_c_while_the_imports_load_is_one_line_and_exit_130(name):
    script = PROJECT_ROOT / "advent" / "scripts" / f"{name}.py"
    process = subprocess.Popen([sys.executable, "-c", HARNESS, str(script)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_from_a_terminal)
    try:
        assert process.stdout.readline() == "importing torch\n"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=HANG_GUARD_S)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err == startup.LINE.decode()


def test_only_a_script_started_as_the_program_changes_the_handler():
    assert not startup.started_as_script()  # pytest is the program
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_IGN when run with `&`
    try:
        startup.quiet_interrupts()
        try:
            assert signal.getsignal(signal.SIGINT) is startup._interrupted
        finally:
            startup.loud_interrupts()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job: left as it is
        startup.quiet_interrupts()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)
