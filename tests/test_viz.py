"""viz.py writes image | prediction | entropy | ground truth | pseudo-label panels."""
import numpy as np
import pytest
import torch
from PIL import Image

from advent.dataset import png_name
from advent.model import build_segmenter
from advent.scripts import viz
from advent.utils.errors import UserError
from advent.utils.output_dir import MANIFEST_NAME, FolderReplacement
from advent.domain_adaptation.pseudo_labels import normalized_entropy
from advent.model.inference import upsample
from advent.utils.viz_segmask import CITYSCAPES_PALETTE, entropy_image, panel_row, softmax_entropy
from fake_data import make_fake_cfg, write_cfg_yaml, write_pseudo_labels


def config(tmp_path, **changes):
    cfg, written = make_fake_cfg(tmp_path)
    torch.manual_seed(0)
    torch.save(build_segmenter("DeepLabv2-Tiny", 19, True).state_dict(), tmp_path / "m.pth")
    cfg.NUM_WORKERS = 0
    cfg.TEST.MODE, cfg.TEST.MODEL, cfg.TEST.RESTORE_FROM = "single", ("DeepLabv2-Tiny",), (str(tmp_path / "m.pth"),)
    cfg.ESL.MODEL, cfg.ESL.RESTORE_FROM = "DeepLabv2-Tiny", str(tmp_path / "m.pth")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return write_cfg_yaml(cfg, tmp_path / "viz.yml"), written


@pytest.mark.slow
def test_test_stage_panels_with_ground_truth(tmp_path):
    path, written = config(tmp_path)
    assert viz.main(["--cfg", str(path), "--num-images", "2", "--out", str(tmp_path / "out")]) == 0
    files = sorted(p for p in (tmp_path / "out").iterdir() if p.name != MANIFEST_NAME)
    assert [f.name for f in files] == sorted(png_name(n) for n in written["val"].names[:2])
    picture = np.asarray(Image.open(files[0]))
    # 4 panels of 64 px plus 3 gaps of 4 px; a title strip of 18 px over 32 px panels
    assert picture.shape == (18 + 32, 4 * 64 + 3 * 4, 3)


def test_esl_stage_shows_the_pseudo_label(tmp_path):
    path, written = config(tmp_path, PSEUDO_LABEL_DIRECTORY_TARGET=str(tmp_path / "labels"))
    name = written["train"].names[0]
    labels = write_pseudo_labels(tmp_path / "labels", [name], size=(64, 32))
    viz.main(["--cfg", str(path), "--stage", "esl", "--names", name, "--out", str(tmp_path / "out")])
    picture = np.asarray(Image.open(tmp_path / "out" / png_name(name)))
    assert picture.shape[1] == 5 * 64 + 4 * 4  # image, prediction, entropy, ground truth, pseudo-label
    last = picture[18:, -64:]
    expected = np.array([CITYSCAPES_PALETTE[v] if v < 19 else (0, 0, 0) for v in labels[name].ravel()])
    np.testing.assert_array_equal(last.reshape(-1, 3), expected)


def test_entropy_panel_is_uniform_for_a_uniform_softmax():
    entropy = softmax_entropy(torch.zeros(19, 2, 3))
    assert entropy.shape == (2, 3)
    grey = entropy_image(entropy)
    assert torch.allclose(grey, torch.ones(3, 2, 3))
    coloured = entropy_image(entropy, colormap=True)
    assert coloured.shape == (3, 2, 3) and torch.unique(coloured.reshape(3, -1), dim=1).shape[1] == 1


class FixedLogits(torch.nn.Module):
    """A 'model' whose main output is the given logits, whatever the image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        return None, self.logits


def test_each_stage_shows_the_prediction_and_entropy_of_its_script():
    """Two confident classes meeting: upsampling the logits (test.py) and upsampling the
    probabilities (ESL) give other labels and entropies between the two pixels' centres."""
    logits = torch.tensor([[[40.0, -10.0]], [[-40.0, 10.0]]])[None].repeat(1, 1, 2, 1)  # 1 x 2 x 2 x 2
    model, image, size = FixedLogits(logits), torch.zeros(3, 2, 9), (9, 2)
    label, entropy = viz.prediction_and_entropy(model, image, size, "test")
    logits_up = upsample(logits, size)[0]
    assert torch.equal(label, logits_up.argmax(0))
    assert torch.allclose(entropy, normalized_entropy(torch.softmax(logits_up[None], 1))[0])
    esl_label, esl_entropy = viz.prediction_and_entropy(model, image, size, "esl")
    prob_up = upsample(torch.softmax(logits, 1), size)
    assert torch.equal(esl_label, prob_up.argmax(1)[0])
    assert torch.equal(esl_entropy, normalized_entropy(prob_up)[0])
    assert not torch.equal(label, esl_label) and not torch.allclose(entropy, esl_entropy)


def test_panel_row_layout():
    row = panel_row([torch.zeros(3, 5, 7), torch.ones(3, 5, 2)], ["a", "b"], gap=1, title_height=10)
    assert row.shape == (15, 10, 3)
    assert (row[10:, :7] == 0).all() and (row[10:, 8:] == 255).all() and (row[10:, 7] == 255).all()


def test_bad_inputs(tmp_path):
    path, _ = config(tmp_path)
    with pytest.raises(UserError, match="not in the split's list"):
        viz.main(["--cfg", str(path), "--names", "nowhere/x.png"])
    cfg_path, _ = config(tmp_path / "b")
    text = cfg_path.read_text().replace(str(tmp_path / "b" / "m.pth"), "''")
    cfg_path.write_text(text)
    with pytest.raises(UserError, match="TEST.RESTORE_FROM is empty: pass --checkpoint"):
        viz.main(["--cfg", str(cfg_path)])
    with pytest.raises(UserError, match="--num-images must be at least 1, got 0"):
        viz.main(["--cfg", str(path), "--num-images", "0"])


def test_an_empty_path_is_refused_in_one_line_not_taken_for_the_default(tmp_path, capsys):
    path = str(tmp_path / "viz.yml")
    for argv, line in ((["--cfg", path, "--out", ""], "argument --out: an empty path: ''"),
                       (["--cfg", ""], "argument --cfg: an empty path: ''"),
                       (["--cfg", path, "--checkpoint", ""], "argument --checkpoint: an empty path: ''")):
        with pytest.raises(SystemExit) as stop:
            viz.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and f": error: {line}" in err[0], err
    assert not any(tmp_path.iterdir())


def test_out_is_not_another_scripts_folder(tmp_path, monkeypatch):
    path, _ = config(tmp_path)
    labels = tmp_path / "labels"  # esl.py's: its next run replaces the folder whole
    output = FolderReplacement(labels, "esl.py", "PSEUDO_LABEL_DIRECTORY_TARGET")
    with output.held(), output.staged() as staging:
        (staging / "a.png").write_bytes(b"label")
    monkeypatch.setattr(viz, "load_segmenter", lambda *a: pytest.fail("model work before the check"))
    with pytest.raises(UserError, match=r"^--out .*labels was written by esl.py; viz.py does not take over"):
        viz.main(["--cfg", str(path), "--out", str(labels)])
    assert sorted(p.name for p in labels.iterdir()) == sorted(["a.png", MANIFEST_NAME])


def test_out_folder_keeps_files_viz_did_not_write(tmp_path, monkeypatch):
    path, written = config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    names = [png_name(n) for n in written["val"].names[:2]]
    (out / "notes.txt").write_text("mine")
    assert viz.main(["--cfg", str(path), "--num-images", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["notes.txt", MANIFEST_NAME])
    assert viz.main(["--cfg", str(path), "--num-images", "2", "--out", str(out)]) == 0  # its own: replaced
    assert (out / "notes.txt").read_text() == "mine"
    other = png_name(written["val"].names[2])
    (out / other).write_bytes(b"the user's own file")
    monkeypatch.setattr(viz, "load_segmenter", lambda *a: pytest.fail("model work before the check"))
    refused = rf"--out: {out / other} exists and viz.py may not replace it \(this project did not write it\)"
    with pytest.raises(UserError, match=refused):
        viz.main(["--cfg", str(path), "--num-images", "3", "--out", str(out)])
    assert (out / other).read_bytes() == b"the user's own file"


def test_out_under_a_file_is_one_line_before_any_model_work(tmp_path, monkeypatch):
    path, _ = config(tmp_path)
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(viz, "load_segmenter", lambda *a: pytest.fail("model work before the check"))
    with pytest.raises(UserError, match="cannot write the panels to .*file/out: .*file is a file, not a folder"):
        viz.main(["--cfg", str(path), "--out", str(tmp_path / "file" / "out")])
