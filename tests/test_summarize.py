"""summarize.py: mean and sample std over runs on known inputs, best-mode files, bad inputs."""
import json
import statistics as stats

import pytest
import torch

from advent.model import build_segmenter
from advent.scripts import summarize
from advent.scripts import test as test_script
from advent.utils.errors import UserError
from fake_data import make_fake_cfg, write_cfg_yaml


def single(path, miou, ious, names=("road", "sky")):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mode": "single", "mIoU": miou,
                                "per_class": [{"name": n, "IoU": v} for n, v in zip(names, ious)]}))
    return path


def best(path, snapshots, last, best_name):
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"snapshot": name, "mIoU": miou, "per_class": [{"name": "road", "IoU": miou}]}
               for name, miou in snapshots.items()]
    path.write_text(json.dumps({"mode": "best", "snapshots": entries, "last": last, "best": best_name}))
    return path


def test_mean_and_sample_std_on_known_values(tmp_path, capsys):
    files = [single(tmp_path / f"seed{i}" / "results_single.json", m, [r, s])
             for i, (m, r, s) in enumerate([(43.3, 90.0, None), (44.1, 92.0, 80.0), (43.8, 91.0, 82.0)])]
    summary = summarize.summarize_files(files)["single"]["statistics"]
    assert summary["mIoU"]["mean"] == pytest.approx(stats.mean([43.3, 44.1, 43.8]))
    assert summary["mIoU"]["std"] == pytest.approx(stats.stdev([43.3, 44.1, 43.8]))
    assert (summary["mIoU"]["min"], summary["mIoU"]["max"], summary["mIoU"]["n"]) == (43.3, 44.1, 3)
    assert summary["road"]["std"] == pytest.approx(1.0)
    assert summary["sky"]["n"] == 2 and summary["sky"]["mean"] == pytest.approx(81.0)  # undefined skipped
    assert summarize.main([str(tmp_path), "--json", str(tmp_path / "sweep.json")]) == 0
    out = capsys.readouterr().out
    assert "single-model results: 3 runs" in out
    assert "43.73 ±  0.40   43.30   44.10" in out
    assert json.loads((tmp_path / "sweep.json").read_text())["single"]["statistics"]["mIoU"]["n"] == 3


def test_best_mode_files_give_last_and_oracle_rows(tmp_path):
    files = [best(tmp_path / "a" / "results_best.json", {"model_2000": 40.0, "model_4000": 42.0}, "model_4000",
                  "model_4000"),
             best(tmp_path / "b" / "results_best.json", {"model_2000": 45.0, "model_4000": 41.0}, "model_4000",
                  "model_2000")]
    summary = summarize.summarize_files(files)
    assert summary["last"]["statistics"]["mIoU"]["mean"] == pytest.approx(41.5)
    assert summary["best"]["statistics"]["mIoU"]["mean"] == pytest.approx(43.5)
    text = summarize.format_group("best", summary["best"])
    assert text.startswith("best snapshot on val (oracle selection, as in the papers): 2 runs")


def test_a_file_reached_twice_counts_once(tmp_path):
    first = single(tmp_path / "a" / "results_single.json", 40.0, [1.0, 2.0])
    single(tmp_path / "b" / "results_single.json", 44.0, [1.0, 2.0])
    files = summarize.find_result_files([tmp_path, first, tmp_path / "a" / ".." / "a"])
    assert files == [first, tmp_path / "b" / "results_single.json"]
    assert summarize.summarize_files(files)["single"]["statistics"]["mIoU"]["mean"] == pytest.approx(42.0)


def test_one_run_has_no_std(tmp_path, capsys):
    path = single(tmp_path / "results_single.json", 40.0, [1.0, 2.0])
    assert summarize.summarize_files([path])["single"]["statistics"]["mIoU"]["std"] is None
    assert summarize.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "single-model results: 1 run"
    assert lines[2].split() == ["mIoU", "40.00", "±", "-", "40.00", "40.00"]


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="not found"):
        summarize.find_result_files([tmp_path / "absent"])
    with pytest.raises(UserError, match="no results_single.json or results_best.json"):
        summarize.find_result_files([tmp_path])
    for text, message in (("{", "cannot read results"),
                          ("[1, 2]", "x.json is not a test.py results file"),
                          ('{"per_class": 5, "mIoU": 3}', r"x.json is not a test.py results file \(an mIoU and a per_class"),
                          ('{"mode": "best", "snapshots": []}', "x.json is not a complete test.py 'best' results file"),
                          ('{"per_class": [], "mIoU": 3, "mIoU13": "high"}', r"mIoU13 a number where given\)$")):
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(UserError, match=message):
            summarize.summarize_files([tmp_path / "x.json"])
    a = single(tmp_path / "a.json", 1.0, [1.0, 2.0])
    b = single(tmp_path / "b.json", 1.0, [1.0, 2.0], names=("road", "car"))
    with pytest.raises(UserError, match="other classes"):
        summarize.summarize_files([a, b])


def test_reads_real_test_py_results(tmp_path):
    cfg, _ = make_fake_cfg(tmp_path)
    torch.manual_seed(0)
    torch.save(build_segmenter("DeepLabv2-Tiny", 19, True).state_dict(), tmp_path / "m.pth")
    cfg.TEST.MODE, cfg.TEST.MODEL, cfg.TEST.RESTORE_FROM = "single", ("DeepLabv2-Tiny",), (str(tmp_path / "m.pth"),)
    cfg.NUM_WORKERS = 0
    for seed in ("s1", "s2"):
        cfg.EXP_ROOT_LOGS = str(tmp_path / seed)
        test_script.main(["--cfg", str(write_cfg_yaml(cfg, tmp_path / f"{seed}.yml"))])
    summary = summarize.summarize_files(summarize.find_result_files([tmp_path / "s1", tmp_path / "s2"]))
    assert summary["single"]["statistics"]["mIoU"]["n"] == 2
    assert summary["single"]["statistics"]["mIoU"]["std"] == 0.0  # same model, same data


def test_json_is_refused_before_any_reading_when_it_is_a_users_file(tmp_path, monkeypatch):
    results = single(tmp_path / "runs" / "results_single.json", 1.0, [1.0, 2.0])
    (tmp_path / "mine.json").write_text("the user's")
    monkeypatch.setattr(summarize, "find_result_files", lambda paths: pytest.fail("read before the check"))
    with pytest.raises(UserError, match=r"^--json: .*mine.json exists and summarize.py may not replace it"):
        summarize.main([str(results), "--json", str(tmp_path / "mine.json")])
    assert (tmp_path / "mine.json").read_text() == "the user's"


def test_results_of_different_evaluations_are_not_combined(tmp_path):
    a = single(tmp_path / "a" / "results_single.json", 30.0, [1.0, 2.0])
    b = single(tmp_path / "b" / "results_single.json", 40.0, [3.0, 4.0])
    for path, target, size in ((a, "Cityscapes", [2048, 1024]), (b, "Mapillary", [2048, 1024])):
        results = json.loads(path.read_text())
        path.write_text(json.dumps({**results, "target": target, "set": "val", "output_size": size}))
    with pytest.raises(UserError, match=r"b/results_single.json was evaluated with target Mapillary, .*a/results_single"
                                        r".json with Cityscapes: results of different evaluations cannot be combined"):
        summarize.summarize_files([a, b])
    results = json.loads(b.read_text())
    b.write_text(json.dumps({**results, "target": "Cityscapes"}))
    assert summarize.summarize_files([a, b])["single"]["statistics"]["mIoU"]["mean"] == 35.0
    c = single(tmp_path / "c" / "results_single.json", 50.0, [5.0, 6.0])  # records no setting: not compared
    assert summarize.summarize_files([a, b, c])["single"]["statistics"]["mIoU"]["n"] == 3


def test_an_empty_path_is_refused_in_one_line_before_any_reading(tmp_path, monkeypatch, capsys):
    results = single(tmp_path / "runs" / "results_single.json", 1.0, [1.0, 2.0])
    monkeypatch.setattr(summarize, "find_result_files", lambda paths: pytest.fail("read before the check"))
    for argv, line in (([str(results), "--json", ""], "argument --json: an empty path: ''"),
                       (["", str(results)], "argument paths: an empty path: ''")):  # '' would search the current folder
        with pytest.raises(SystemExit) as stop:
            summarize.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and f": error: {line}" in err[0], err
