"""What the scripts share: `run_main` (a user error ends as one line), logging, seeding, memory format."""
import logging
import os
import random
import sys

import numpy as np
import torch

from advent.utils.distributed import is_main_process, leave_together
from advent.utils.errors import UserError, file_system_fault


def memory_format(channels_last):
    """torch.channels_last (NHWC) with CHANNELS_LAST, else the default contiguous (NCHW) format."""
    return torch.channels_last if channels_last else torch.contiguous_format


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def setup_logging():
    """INFO messages on the console; under torchrun from the main process (RANK 0) only, the
    others log errors only (they would repeat its messages)."""
    main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main else logging.ERROR, format="%(message)s")


def run_main(main, argv=None):
    """Run a script's `main(argv)`; turn a UserError (or a file-system fault: `file_system_fault`)
    into one line on stderr and exit code 2, and Ctrl-C into one line and exit code 130.

    Under torchrun, an error that every process raised together (`all_processes`) is printed by
    the main process only, and the processes end together after it; each exits with code 2."""
    try:
        return main(argv)
    except UserError as error:
        shared = getattr(error, "all_processes", False)
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
