"""Class-conditional BFNs end to end: labels in training, classes and guidance at sampling, the
conditional and unconditional likelihood, class-labelled pictures, and every bad input."""

import json

import pytest
import torch
from conftest import IMAGE, assert_one_line_error, ckpt, run_bfn
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    """A tiny class-conditional model trained for a few steps on the embedded digits."""
    root = tmp_path_factory.mktemp("cond")
    result = run_bfn("train", "--preset", "default-cond", *IMAGE, "--runs-dir", root, "--run-name", "c",
                     "--max-steps", 4, "--set", "train.val_every=2", cwd=root)
    assert result.returncode == 0, result.stderr
    return next((root / "c" / "checkpoints").glob("step-*/model.safetensors"))


def test_the_checkpoint_keeps_the_classes_and_samples_follow_them(call, cond, tmp_path):
    from bfncli.checkpoint import read_info

    cfg = read_info(cond).config
    assert cfg.network.num_classes == 10 and cfg.data.class_names == [str(i) for i in range(10)]
    out = tmp_path / "s.safetensors"
    result = call("sample", "--checkpoint", cond, "--class", "3,3,7", "--guidance", 2, "--steps", 4, "-o", out)
    assert result.returncode == 0, result.stderr
    tensors = load_file(str(out))
    assert tensors["samples"].shape == (3, 8, 8, 1) and tensors["classes"].tolist() == [3, 3, 7]
    picture = tmp_path / "rows.png"
    render = call("render", out, "-o", picture)
    assert render.returncode == 0, render.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # By default the classes in turn; 'none' is the unconditional model.
    default = call("sample", "--checkpoint", cond, "--shape", "12,8,8,1", "--steps", 3, "-o", tmp_path / "d.safetensors")
    assert default.returncode == 0, default.stderr
    assert load_file(str(tmp_path / "d.safetensors"))["classes"].tolist() == [*range(10), 0, 1]
    none = call("sample", "--checkpoint", cond, "--class", "none", "--shape", "2,8,8,1", "--steps", 3,
                   "-o", tmp_path / "n.safetensors")
    assert none.returncode == 0, none.stderr
    assert load_file(str(tmp_path / "n.safetensors"))["classes"].tolist() == [10, 10]


def test_guidance_mixes_conditional_and_unconditional_outputs():
    from bfncli.config import resolve_config
    from bfncli.model import BFN

    torch.manual_seed(0)
    model = BFN(resolve_config("default-cond", environ={})).eval()
    with torch.no_grad():
        for p in model.net.parameters():  # away from the zero-initialised layers, so that classes matter
            p.add_(torch.randn_like(p) * 0.1)
    mu = torch.randn(3, 8, 8, 1) * 0.3
    t = torch.full((3,), 0.4)
    classes = torch.tensor([1, 5, 9])
    none = torch.full_like(classes, 10)
    with torch.no_grad():
        cond, uncond = model.predict(mu, t, classes), model.predict(mu, t, none)
        assert not torch.allclose(cond.mean, uncond.mean)
        for w in (0.0, 1.0, 2.5):
            guided = model.predict(mu, t, classes, guidance=w)
            # The noise prediction mixes linearly; the data prediction is affine in it, so it mixes the same way.
            torch.testing.assert_close(guided.loc, uncond.loc + w * (cond.loc - uncond.loc), rtol=1e-4, atol=1e-5)


def test_conditional_and_unconditional_likelihood(call, cond):
    conditional = call("eval", "--checkpoint", cond, "--repeats", 2, "--json")
    unconditional = call("eval", "--checkpoint", cond, "--repeats", 2, "--class", "none", "--json")
    assert conditional.returncode == 0 and unconditional.returncode == 0, (conditional.stderr, unconditional.stderr)
    a, b = json.loads(conditional.stdout), json.loads(unconditional.stdout)
    assert a["classes"] == "labels" and b["classes"] == "none"
    report = call("eval", "--checkpoint", cond, "--repeats", 1)
    assert "conditional on each example's class" in report.stdout


def test_bad_class_input(call, cond, runs, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_one_line_error(call("sample", "--checkpoint", cond, "--class", "11", "-o", out),
                          "--class '11' is not one of this model's 10 classes")
    assert_one_line_error(call("sample", "--checkpoint", cond, "--class", "cat", "-o", out), "'cat'")
    assert_one_line_error(call("sample", "--checkpoint", cond, "--class", "1,2", "--shape", "3,8,8,1", "-o", out),
                          "lists 2 classes but --shape asks for 3")
    assert_one_line_error(call("sample", "--checkpoint", cond, "--guidance", "-1", "-o", out), "sample.guidance")
    assert_one_line_error(call("sample", "--checkpoint", cond, "--class", "none", "--guidance", 2, "-o", out),
                          "--guidance needs classes")
    assert_one_line_error(call("sample", "--checkpoint", ckpt(runs, "txt"), "--class", "3", "-o", out),
                          "text models are unconditional")
    assert_one_line_error(call("sample", "--checkpoint", ckpt(runs, "img"), "--guidance", 2, "-o", out),
                          "this model has no classes")
    assert_one_line_error(call("eval", "--checkpoint", ckpt(runs, "img"), "--class", "none"), "has no classes")
    assert_one_line_error(call("eval", "--checkpoint", cond, "--class", "3"), "takes only 'none'")
    assert_one_line_error(call("train", "--preset", "pyhelp", "--set", "network.num_classes=3", "--max-steps", 1,
                                  cwd=tmp_path), "text")
    assert_one_line_error(call("convert", cond, "-o", tmp_path / "c.pt"), "class-conditional", "official layout")
    assert not out.exists()


def test_an_image_folder_with_class_subfolders_trains_a_conditional_model(call, tmp_path):
    from matplotlib import pyplot as plt

    for name in ("cat", "dog", "fox"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(3):
            plt.imsave(str(tmp_path / "pics" / name / f"{i}.png"), torch.rand(8, 8).numpy(), cmap="gray")
    result = call("train", "--preset", "default-cond", *IMAGE, "--data", tmp_path / "pics", "--runs-dir",
                     tmp_path / "runs", "--run-name", "f", "--max-steps", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = next((tmp_path / "runs" / "f" / "checkpoints").glob("step-*/model.safetensors"))
    sample = call("sample", "--checkpoint", model, "--class", "fox", "--shape", "2,8,8,1", "--steps", 3,
                     "-o", tmp_path / "fox.safetensors")
    assert sample.returncode == 0, sample.stderr
    tensors = load_file(str(tmp_path / "fox.safetensors"))
    assert tensors["classes"].tolist() == [2, 2]
    unlabelled = tmp_path / "flat.safetensors"
    save_file({"data": torch.zeros(4, 8, 8, 1)}, str(unlabelled))
    assert_one_line_error(call("train", "--preset", "default-cond", *IMAGE, "--data", unlabelled, "--max-steps", 1,
                                  cwd=tmp_path), "labels", code=3)


def test_class_rows_wrap_and_label_the_unconditional_row(call, cond, tmp_path):
    # Many samples of one class wrap onto rows of about sqrt(N) (not one row wider than a PNG may be);
    # --cols sets the width; unconditional samples ('no class') are labelled 'none'.
    from matplotlib import image
    from safetensors import safe_open

    out = tmp_path / "s.safetensors"
    assert call("sample", "--checkpoint", cond, "--class", "7", "--shape", "400,8,8,1", "--steps", 2,
                "-o", out).returncode == 0
    with safe_open(str(out), "pt") as f:
        meta_names = json.loads(f.metadata()["class_names"])
    assert meta_names == [str(i) for i in range(10)]
    assert call("render", out, "-o", tmp_path / "square.png").returncode == 0
    h, w = image.imread(str(tmp_path / "square.png")).shape[:2]
    assert 0.5 < h / w < 2, (h, w)  # 20 x 20 pictures
    assert call("render", out, "--cols", 100, "-o", tmp_path / "wide.png").returncode == 0
    h, w = image.imread(str(tmp_path / "wide.png")).shape[:2]
    assert w > 5 * h, (h, w)  # 4 rows of 100

    from bfncli.jobs.render import _class_label

    assert [_class_label(c, meta_names) for c in (0, 9, 10)] == ["0", "9", "none"]
