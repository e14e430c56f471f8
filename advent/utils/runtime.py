"""What every script does first: load the config, pick the device, seed the generators."""
import logging
import os
import random

import numpy as np
import torch

from advent.domain_adaptation.config import cfg_from_file, derive_paths, get_default_cfg

log = logging.getLogger(__name__)


def load_config(path, exp_suffix=""):
    """A fresh config: defaults, then the YAML file (strict), then the derived names and folders."""
    return derive_paths(cfg_from_file(path, get_default_cfg()), exp_suffix)


def select_device(gpu_id=0):
    """cuda:GPU_ID when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_id)
    return torch.device("cpu")


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
