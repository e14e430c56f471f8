"""The scripts' command lines: a parser whose mistakes are one line, and argparse value types for
numeric flags, so that a value out of range is refused in one line naming the flag
(`train_speed.py: error: argument --iters: must be at least 1, got 0`), before any work."""
import argparse

import torch


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line, `<script>: error: <what>`, and exit
    code 2, as every other user mistake: without argparse's usage block before it (--help has it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind=int, low=None, high=None):
    """An argparse `type`: a `kind` (int or float) in [low, high] (either bound may be None)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if (low is not None and not value >= low) or (high is not None and not value <= high):  # NaN too
            bounds = f"in [{low}, {high}]" if low is not None and high is not None else (
                f"at least {low}" if low is not None else f"at most {high}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def device(text):
    """An argparse `type`: a torch device this machine has ('cpu', 'cuda', 'cuda:1')."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPU(s)")
    if parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda devices are supported")
    return text


def non_empty_path(text):
    """An argparse `type`: a file or folder path, refused when empty (an empty --json would be
    ignored, an empty --out or --cfg taken for the default or the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path: {text!r} (give a file or folder)")
    return text


def description(doc):
    """A script's --help description: the first paragraph of its docstring `doc`, on one line."""
    return " ".join(doc.split("\n\n")[0].split())


positive = number(int, 1)  # a count: images, iterations, rounds, threads
non_negative = number(int, 0)  # a warm-up, a thread count where 0 means the default
MAX_SEED = 2 ** 32 - 1  # numpy's and TRAIN.RANDOM_SEED's range
seed = number(int, 0, MAX_SEED)  # a data or training seed
# the largest image side a script's size flag takes (the papers' largest images are 2048x1024):
# beyond it an image (or a batch of them) would only exhaust the memory
MAX_IMAGE_SIDE = 4096
