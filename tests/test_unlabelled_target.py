"""Unsupervised means unlabelled: every training method runs on a Cityscapes tree without
gtFine/train, and the script path (train.py via its config file) does too."""
from pathlib import Path

import pytest

from advent.scripts import train as train_script
from test_train import tiny_cfg
from fake_data import write_cfg_yaml, write_pseudo_labels


@pytest.mark.parametrize("method,pseudo", [("SourceOnly", False), ("MinEnt", False), ("AdvEnt", False),
                                           ("AdvEnt", True)])
def test_training_needs_no_target_training_labels(tmp_path, method, pseudo):
    cfg, written = tiny_cfg(tmp_path, method=method, iters=2, save_every=2, train_labels=False)
    target_root = Path(cfg.DATA_DIRECTORY_TARGET)
    assert not (target_root / "gtFine" / "train").exists() and (target_root / "gtFine" / "val").exists()
    if pseudo:  # ESL's second stage: pseudo-labels, still no ground truth
        write_pseudo_labels(tmp_path / "labels", written["train"].names, (64, 32))
        cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "labels")
    path = write_cfg_yaml(cfg, tmp_path / "unlabelled.yml")
    assert train_script.main(["--cfg", str(path)]) == 0
    assert (Path(cfg.TRAIN.SNAPSHOT_DIR) / "model_2.pth").exists()
