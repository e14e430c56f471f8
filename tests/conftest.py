"""Shared fixtures: tiny datasets in the real on-disk formats (see fake_data.py), one per test;
the `slow` marker (`-m "not slow"` runs the fast subset); the `cuda` marker (`-m cuda`: the tests
that need a GPU, skipped without one); `unwritable`, a folder without write permission, also for
root."""
import errno
import os
from pathlib import Path

import pytest
import torch

from fake_data import make_fake_cfg, write_cityscapes, write_gta5, write_mapillary, write_synthia


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the demo, torchrun, benchmark, ResNet-101 and long subprocess "
                                       "or training tests (left out by -m 'not slow')")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; -m cuda runs only these)")


@pytest.fixture
def fake_gta5(tmp_path):
    """4 GTA5 pairs, 64x32, under tmp_path/GTA5 (FakeSplit; list at .list_path)."""
    return write_gta5(tmp_path / "GTA5", 4)


@pytest.fixture
def fake_cityscapes(tmp_path):
    """Cityscapes under tmp_path/Cityscapes: {'train': FakeSplit, 'val': FakeSplit};
    4 labelled images each."""
    root = tmp_path / "Cityscapes"
    return {"train": write_cityscapes(root, "train", ("aachen", "bochum"), 2, seed=1),
            "val": write_cityscapes(root, "val", ("frankfurt", "lindau"), 2, seed=2)}


@pytest.fixture
def fake_synthia(tmp_path):
    """3 SYNTHIA pairs, 64x32, 16-bit 3-channel labels, under tmp_path/SYNTHIA."""
    return write_synthia(tmp_path / "SYNTHIA", 3)


@pytest.fixture
def fake_mapillary(tmp_path):
    """Mapillary 'validation' split of 3 images of mixed aspect ratios, under tmp_path/Mapillary."""
    return write_mapillary(tmp_path / "Mapillary", "validation")


@pytest.fixture
def fake_cfg(tmp_path):
    """(cfg, written): GTA5 -> Cityscapes, 19 classes, every size 64x32, over fake data in tmp_path."""
    return make_fake_cfg(tmp_path)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one torch thread is faster, and steady on a busy 2-core machine (two OpenMP
    threads there can stall for seconds per operation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def unwritable(monkeypatch):
    """unwritable(folder, how): creating a file or a folder directly in `folder` fails with EACCES
    (Permission denied) until the test ends. how='chmod': the kernel refuses it (mode 555; the
    test is skipped as root, whom permission bits do not stop). how='deny': os.open and os.mkdir
    refuse it as the kernel would, also for root (CI runs as root), and os.access says so; below
    tempfile and pathlib, so the project's code meets the error where it would meet the kernel's."""
    denied, chmodded = set(), []
    original_open, original_mkdir, original_access = os.open, os.mkdir, os.access

    def check(path):
        path = Path(os.path.abspath(os.fsdecode(path)))
        if path.parent in denied and not path.exists():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def open_denied(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            check(path)
        return original_open(path, flags, *args, **kwargs)

    def mkdir_denied(path, *args, **kwargs):
        check(path)
        return original_mkdir(path, *args, **kwargs)

    def make(folder, how):
        folder = Path(folder).absolute()
        if how == "deny":
            denied.add(folder)
            return
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits")
        folder.chmod(0o555)
        chmodded.append(folder)

    def access_denied(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(os.path.abspath(os.fsdecode(path))) in denied:
            return False
        return original_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_denied)
    monkeypatch.setattr(os, "access", access_denied)
    monkeypatch.setattr(os, "mkdir", mkdir_denied)
    yield make
    for folder in chmodded:
        folder.chmod(0o755)
