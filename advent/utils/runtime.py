"""What the scripts share: `run_main` (a user error ends as one line), logging, seeding, memory format."""
import logging
import random
import re
import sys

import numpy as np
import torch

from advent.utils.distributed import get_rank, is_main_process, leave_process_group, lost_another_process
from advent.utils.errors import UserError, file_system_fault, symlink_loop
from advent.utils.startup import loud_interrupts


def memory_format(channels_last):
    """torch.channels_last (NHWC) with CHANNELS_LAST, else the default contiguous (NCHW) format."""
    return torch.channels_last if channels_last else torch.contiguous_format


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def setup_logging():
    """INFO messages on the console; under torchrun from the main process only, the others log
    errors only (they would repeat its messages)."""
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.ERROR, format="%(message)s")


def run_main(main, argv=None):
    """Run a script's `main(argv)`; turn a UserError (or a file-system fault: `file_system_fault`)
    into one line on stderr and exit code 2, and Ctrl-C into one line and exit code 130.

    Under torchrun each failing process says why in one line (the main process as "error: ...",
    the others naming their rank) and torchrun stops the rest; a process that loses contact with
    one that failed says so in one line (exit code 1). An error every process raised together
    (`all_processes`, e.g. a diverged loss averaged over them) is said by the main process alone.
    Ctrl-C before, while the script's imports load, is one line too (advent.utils.startup).
    Running out of memory (host or GPU: `out_of_memory`) is one line and exit code 2 as well: as a
    full disk, a limit the user meets with smaller sizes, batches or another machine, not a bug."""
    try:
        loud_interrupts()  # from here Ctrl-C is a KeyboardInterrupt, handled below or by `main`
        return main(argv)
    except (UserError, OSError) as error:
        line = str(error) if isinstance(error, UserError) else file_system_fault(error)
        if line is None:
            raise
        shared = getattr(error, "all_processes", False)
        if is_main_process() or not shared:
            _say(line)
        if shared:
            leave_process_group()
        sys.exit(2)
    except (MemoryError, RuntimeError) as error:
        if out_of_memory(error):
            _say(out_of_memory(error))
            sys.exit(2)
        if isinstance(error, MemoryError):
            raise
        if symlink_loop(error):
            _say(symlink_loop(error))
            sys.exit(2)
        if not lost_another_process(error):
            raise
        _say("stopped: another process of this run ended; its error is above")
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); what was complete before is kept", file=sys.stderr, flush=True)
        sys.exit(130)


def out_of_memory(error):
    """One line for running out of memory, else None: Python's or numpy's MemoryError and PyTorch's
    CPU allocator's RuntimeError ("can't allocate memory"): host memory; torch.cuda.OutOfMemoryError:
    GPU memory. A DataLoader worker's error, re-raised as "Caught ... in DataLoader worker" with
    its traceback, is taken by its last line."""
    text = str(error).strip()
    if text.startswith("Caught ") and "\n" in text:
        text = text.splitlines()[-1].split("Error: ", 1)[-1]
    text = text.splitlines()[0] if text else ""
    advice = "use smaller sizes or batches"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in text:
        asked = re.search(r"Tried to allocate ([0-9.]+ \w+)", text)
        return f"out of GPU memory: {f'tried to allocate {asked.group(1)}' if asked else text} ({advice})"
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in text):
        asked = re.search(r"tried to allocate (\d+) bytes", text)
        if asked:
            text = f"tried to allocate {int(asked.group(1)) / 2 ** 30:.1f} GiB"
        return f"out of host memory: {text} ({advice})" if text else f"out of host memory ({advice})"
    return None


def _say(line):
    where = "" if is_main_process() else f" (process {get_rank()})"
    print(f"error{where}: {line}", file=sys.stderr, flush=True)
