"""check_data.py: exit codes and report on good and broken fake trees."""
import re
import subprocess
import sys

import numpy as np
import pytest

from advent import PROJECT_ROOT
from advent.dataset import get_source_dataset, get_target_dataset
from advent.scripts.check_data import main
from advent.utils.errors import UserError
from fake_data import make_fake_cfg, save_ids, write_cfg_yaml, write_pseudo_labels

SCRIPT = PROJECT_ROOT / "advent" / "scripts" / "check_data.py"


def run_check(cfg, tmp_path, capsys):
    path = write_cfg_yaml(cfg, tmp_path / "check.yml")
    code = main(["--cfg", str(path)])
    return code, capsys.readouterr().out


def test_good_tree_passes(tmp_path, capsys):
    cfg, _ = make_fake_cfg(tmp_path, train_labels=False)
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 0, out
    assert out.rstrip().endswith("all checks passed")
    assert "target Cityscapes 'train'" in out and "training needs no target labels" in out
    assert "esl uses labels only for its quality report" in out and "test needs labels" in out
    train_part, val_part = out.split("target Cityscapes 'val'")
    assert "labels: 0/4 present" in train_part and "has labels: no" in train_part
    assert "has labels: yes" in val_part and "Cityscapes label ids 0..33" in val_part
    assert "images: 4/4 present" in out


def test_missing_image_is_a_problem(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    missing = written["val"].image_paths[1]
    missing.unlink()
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1
    assert "1 problem(s) found" in out and f"1 of 4 images missing; first: {missing}" in out


def test_missing_test_labels_are_a_problem_but_esl_labels_are_optional(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    written["train"].label_paths[0].unlink()  # esl: optional
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 0, out
    assert "has labels: partly" in out and "esl will run without labels" in out
    written["val"].label_paths[2].unlink()  # test: required
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1 and f"1 of 4 labels missing; first: {written['val'].label_paths[2]}" in out


def test_a_truncated_image_is_a_problem_and_sample_must_be_positive(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    truncated = written["train"].image_paths[3]  # the last of the sample: evenly spaced from first to last
    truncated.write_bytes(truncated.read_bytes()[:100])  # its header intact
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1
    assert f"1 of 4 sampled images cannot be decoded; first: cannot decode image {truncated}" in out
    with pytest.raises(UserError, match="--sample must be at least 1, got 0"):
        main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / "check.yml")), "--sample", "0"])


def test_bad_label_values_are_reported(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    bad = written["source"].label_paths[2]
    save_ids(np.full((32, 64), 40), bad, palette=True)
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1
    expected = (f"1 of 4 sampled label files hold values outside Cityscapes label ids 0..33; "
                f"first: {bad} ([40])")
    assert expected in out


def test_size_mismatch_is_a_problem_except_for_gta5(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    save_ids(np.full((16, 32), 7), written["source"].label_paths[0], palette=True)
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 0 and "1 of 4 sampled pairs differ (harmless" in out
    save_ids(np.full((16, 32), 7), written["val"].label_paths[0])
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1 and "(image 64x32, label 32x16)" in out


def test_the_loaders_stop_at_exactly_the_labels_check_data_calls_a_problem(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path)
    source, val = get_source_dataset(cfg), get_target_dataset(cfg, "test")
    save_ids(np.full((16, 32), 7), written["source"].label_paths[0], palette=True)  # harmless
    save_ids(np.full((32, 64), 40), written["source"].label_paths[1], palette=True)
    save_ids(np.full((16, 32), 7), written["val"].label_paths[2])
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1 and "2 problem(s) found" in out
    assert f"first: {written['source'].label_paths[1]} ([40])" in out
    assert f"first: {written['val'].names[2]} (image 64x32, label 32x16)" in out
    source[0]  # the harmless size difference loads
    for dataset, index, path in ((source, 1, written["source"].label_paths[1]),
                                 (val, 2, written["val"].label_paths[2])):
        with pytest.raises(UserError, match=f"^label {re.escape(str(path))} "):
            dataset[index]


def test_pseudo_labels_checked(tmp_path, capsys):
    cfg, written = make_fake_cfg(tmp_path, train_labels=False)
    names = written["train"].names
    write_pseudo_labels(tmp_path / "labels", names)
    cfg.PSEUDO_LABEL_DIRECTORY_TARGET = str(tmp_path / "labels")
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 0 and "pseudo-labels: 4/4 present" in out and "train ids 0..18 and 255" in out
    save_ids(np.full((32, 64), 19), tmp_path / "labels" / "aachen_000000_000019_leftImg8bit.png")
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1 and "outside train ids 0..18 and 255" in out and "([19])" in out


def test_missing_root_and_mapillary_tree(tmp_path, capsys):
    cfg, _ = make_fake_cfg(tmp_path / "m", source="SYNTHIA", target="Mapillary", num_classes=7)
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 0, out
    assert "SYNTHIA class ids 0..22" in out and "the 66 class indices of config.json" in out
    cfg.DATA_DIRECTORY_SOURCE = str(tmp_path / "nowhere")
    code, out = run_check(cfg, tmp_path, capsys)
    assert code == 1 and f"SYNTHIA root {tmp_path / 'nowhere'} not found" in out


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    cfg, written = make_fake_cfg(tmp_path)
    good = write_cfg_yaml(cfg, tmp_path / "good.yml")
    result = subprocess.run([sys.executable, str(SCRIPT), "--cfg", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("NUM_CLASSE: 19\n")
    result = subprocess.run([sys.executable, str(SCRIPT), "--cfg", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "NUM_CLASSE" in result.stderr
    written["val"].image_paths[0].unlink()
    result = subprocess.run([sys.executable, str(SCRIPT), "--cfg", str(good)], capture_output=True, text=True)
    assert result.returncode == 1 and str(written["val"].image_paths[0]) in result.stdout


def test_missing_config_file_exits_2(tmp_path, capsys):
    from advent.utils.runtime import run_main
    with pytest.raises(SystemExit) as excinfo:
        run_main(main, ["--cfg", str(tmp_path / "none.yml")])
    assert excinfo.value.code == 2
    assert capsys.readouterr().err == f"error: config file not found: {tmp_path / 'none.yml'}\n"
