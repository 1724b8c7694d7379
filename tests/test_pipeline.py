"""The user's pipelines through the real CLI on tiny trained models: sample | render for binary
images, discretized images and text; the flow as a GIF; conditional sampling; reproducibility;
and one-line errors for bad input to eval, convert, sample and render."""

import subprocess
import sys

import pytest
import torch
from conftest import CONFORMANCE, assert_one_line_error, ckpt
from safetensors.torch import load_file, save_file

def shell(cmd, cwd):
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=cwd, timeout=300)


BFN = f"{sys.executable} -m bfncli"


def test_sample_render_binary_images_with_no_other_flags(runs, tmp_path):
    # `bfn sample --shape 4,28,28,1 | bfn render` in a directory whose runs/ holds an MNIST-shaped model.
    (tmp_path / "runs").symlink_to(runs / "mnist")
    result = shell(f"{BFN} sample --shape 4,28,28,1 --steps 5 | {BFN} render", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote a grid of 4 binary images to samples.png" in result.stderr


def test_sample_render_discretized_images(runs, tmp_path):
    out = tmp_path / "grid.png"
    result = shell(f"{BFN} sample --checkpoint {ckpt(runs, 'img')} --steps 5 | {BFN} render -o {out} --cols 8", tmp_path)
    assert result.returncode == 0, result.stderr
    from matplotlib import image

    picture = image.imread(str(out))
    assert picture.shape[1] > picture.shape[0]  # 16 samples in rows of 8: wider than tall


def test_sample_render_text(runs, tmp_path):
    result = shell(f"{BFN} sample --checkpoint {ckpt(runs, 'txt')} --shape 3,64 --steps 5 | {BFN} render", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Spaces print as spaces (the official code and the samples' metadata write '_').
    assert len(lines) == 3 and all(len(line) == 64 and set(line) <= set(" abcdefghijklmnopqrstuvwxyz") for line in lines)


def test_every_sampler_works_through_the_render_pipe(runs, tmp_path):
    # auto (the default) goes through the pipe above; here each named sampler, on all three kinds of data.
    from bfncli.samplers import SAMPLERS

    models = ["img", "mnist", "txt"]
    pipes = []
    for i, name in enumerate(SAMPLERS):
        model = models[i % 3]
        shape = {"img": "2,8,8,1", "mnist": "2,28,28,1", "txt": "2,64"}[model]
        render = f"{BFN} render" + ("" if model == "txt" else f" -o {name}.png")
        pipes.append(f"{BFN} sample --checkpoint {ckpt(runs, model)} --sampler {name} --steps 4 --shape {shape} | {render}")
    result = shell(" && ".join(pipes), tmp_path)
    assert result.returncode == 0, result.stderr
    for i, name in enumerate(SAMPLERS):
        if models[i % 3] != "txt":
            assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    texts = [line for line in result.stdout.splitlines() if line]
    assert len(texts) == 2 * sum(models[i % 3] == "txt" for i in range(len(SAMPLERS)))
    assert all(len(line) == 64 and set(line) <= set("_abcdefghijklmnopqrstuvwxyz") for line in texts)


def test_samples_file_says_what_it_holds(runs, tmp_path, call):
    out = tmp_path / "s.safetensors"
    assert call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "2,8,8,1", "--steps", 3, "-o", out).returncode == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["kind"] == "discretized_image" and meta["num_bins"] == "16" and meta["steps"] == "3"
    samples = load_file(str(out))["samples"]
    assert samples.shape == (2, 8, 8, 1)
    assert set(samples.unique().tolist()) <= set(((torch.arange(16) * 2 + 1) / 16 - 1).tolist())


def test_terminal_preview(runs, tmp_path, call):
    out = tmp_path / "s.safetensors"
    assert call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "2,8,8,1", "--steps", 2, "-o", out).returncode == 0
    result = call("render", out, "--preview", "-o", tmp_path / "g.png", cwd=tmp_path)
    assert result.returncode == 0 and "\x1b[38;2;" in result.stdout and "▀" in result.stdout


def test_same_seed_same_samples_also_in_chunks(runs, tmp_path, call):
    def draw(name, *extra):
        out = tmp_path / name
        result = call("sample", "--checkpoint", ckpt(runs, "txt"), "--shape", "5,64", "--steps", 4, "--seed", 11,
                         "-o", out, *extra)
        assert result.returncode == 0, result.stderr
        return load_file(str(out))["samples"]

    whole = draw("a.safetensors")
    assert torch.equal(whole, draw("b.safetensors", "--batch-size", 2))
    assert torch.equal(whole, draw("c.safetensors", "--deterministic"))
    assert not torch.equal(whole, draw("d.safetensors", "--seed", 12))


def test_trajectory_renders_as_an_animation(runs, tmp_path, call):
    # The paper's sampler: 6 updates, 7 evaluations; the ODE solver: 7 evaluations.
    for name, sampler, steps in (("img", "paper", 6), ("txt", "ode", 7)):
        traj = tmp_path / f"{name}.safetensors"
        result = call("sample", "--checkpoint", ckpt(runs, name), "--shape", "2," + ("8,8,1" if name == "img" else "64"),
                         "--sampler", sampler, "--steps", steps, "--trajectory", "--frames", 4, "-o", traj)
        assert result.returncode == 0, result.stderr
        tensors = load_file(str(traj))
        assert tensors["flow_steps"].tolist() == [1, 2, 4, 7]  # denser early; 7 = the final prediction at t = 1
        times = tensors["flow_times"].tolist()
        assert times[-1] == 1.0 and times == sorted(times)
        assert times[0] == (0.0 if sampler == "paper" else 1e-3)
        assert tensors["flow_input"].shape[:2] == (4, 2)
        gif = tmp_path / f"{name}.gif"
        result = call("render", traj, "-o", gif)
        assert result.returncode == 0, result.stderr
        from PIL import Image

        with Image.open(gif) as im:
            assert im.format == "GIF" and im.n_frames == 4
        strip = tmp_path / f"{name}-strip.png"
        assert call("render", traj, "-o", strip).returncode == 0 and strip.stat().st_size > 0


def test_prompt_is_kept_exactly(runs, tmp_path):
    result = shell(f"{BFN} sample --checkpoint {ckpt(runs, 'txt')} --shape 2,64 --steps 4 "
                   f"--prompt 'in the beginning' | {BFN} render", tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("in the beginning") for line in result.stdout.splitlines())
    result = shell(f"{BFN} sample --checkpoint {ckpt(runs, 'txt')} --shape 1,64 --steps 4 "
                   f"--template 'the ??? sat' | {BFN} render", tmp_path)
    line = result.stdout.rstrip("\n")
    assert line[:4] == "the " and line[7:11] == " sat"


def test_inpainting_keeps_the_known_pixels(runs, tmp_path, call):
    known = tmp_path / "known.safetensors"
    assert call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "1,8,8,1", "--steps", 3, "-o", known).returncode == 0
    out = tmp_path / "filled.safetensors"
    result = call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "3,8,8,1", "--steps", 3, "--seed", 5,
                     "--image", known, "--mask", "2,2,4,4", "-o", out)
    assert result.returncode == 0, result.stderr
    original, filled = load_file(str(known))["samples"][0], load_file(str(out))["samples"]
    outside = torch.ones(8, 8, 1, dtype=torch.bool)
    outside[2:6, 2:6] = False
    for sample in filled:
        assert torch.equal(sample[outside], original[outside])


def test_closed_pipe_ends_quietly(runs, tmp_path):
    result = shell(f"{BFN} sample --checkpoint {ckpt(runs, 'img')} --shape 64,8,8,1 --steps 2 | head -c 10 >/dev/null",
                   tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr


# ------------------------------------------------------------------------------ bad input
def test_binary_samples_are_not_written_to_a_terminal(runs, tmp_path):
    import os
    import pty

    main, secondary = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "bfncli", "sample", "--checkpoint", str(ckpt(runs, "img"))],
                                stdout=secondary, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(secondary)
        os.close(main)
    assert result.returncode == 2 and "pipe them (bfn sample | bfn render) or pass -o FILE" in result.stderr

def test_bad_sample_input(runs, tmp_path, call):
    img, txt = ckpt(runs, "img"), ckpt(runs, "txt")
    assert_one_line_error(call("sample", "--checkpoint", img, "--steps", 2, "-o", tmp_path / "no" / "x.safetensors"),
                          "the output folder", "does not exist")
    assert_one_line_error(call("sample", "--checkpoint", img, "--shape", "4,28,28,1", "-o", tmp_path / "x.safetensors"),
                          "cannot be produced", "--shape N,8,8,1")
    assert_one_line_error(call("sample", "--checkpoint", txt, "--prompt", "Hello!", "-o", tmp_path / "x.safetensors"),
                          "outside the model's alphabet")
    assert_one_line_error(call("sample", "--checkpoint", txt, "--prompt", "a" * 65, "-o", tmp_path / "x.safetensors"),
                          "has 65 characters but the model's sequences have 64")
    assert_one_line_error(call("sample", "--checkpoint", img, "--image", img, "--mask", "0,0,2,2",
                                  "-o", tmp_path / "x.safetensors"), "is a bfn checkpoint, not samples", code=3)
    known = tmp_path / "known.safetensors"
    assert call("sample", "--checkpoint", img, "--shape", "1,8,8,1", "--steps", 2, "-o", known).returncode == 0
    assert_one_line_error(call("sample", "--checkpoint", img, "--image", known, "--mask", "0,0,9,9",
                                  "-o", tmp_path / "x.safetensors"), "--mask box 0,0,9,9 does not fit a 8x8 image")
    assert_one_line_error(call("sample", "--checkpoint", img, "--image", known, "-o", tmp_path / "x.safetensors"),
                          "needs both --image")
    assert_one_line_error(call("sample", "--checkpoint", img, "--prompt", "hi", "-o", tmp_path / "x.safetensors"),
                          "for text models")
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_render_input(runs, tmp_path, call):
    assert_one_line_error(call("render", stdin=""), "standard input is empty", code=3)
    assert_one_line_error(call("render", stdin="just some text"), "not a safetensors samples file", code=3)
    assert_one_line_error(call("render", ckpt(runs, "img")), "is a bfn checkpoint, not samples", code=3)
    assert_one_line_error(call("render", tmp_path / "nope.safetensors"), "does not exist", code=3)
    samples = call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "2,8,8,1", "--steps", 2,
                      "-o", tmp_path / "s.safetensors")
    assert samples.returncode == 0, samples.stderr
    assert_one_line_error(call("render", tmp_path / "s.safetensors", "-o", tmp_path / "no" / "dir.png"),
                          "the output folder", "does not exist")  # the user's to fix: 2


def test_a_failed_picture_write_leaves_nothing(tmp_path, monkeypatch):
    from matplotlib import pyplot as plt

    from bfncli.errors import UserError
    from bfncli.jobs.render import _save_png

    def disk_full(path, *args, **kwargs):
        open(path, "wb").write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plt, "imsave", disk_full)
    (tmp_path / "grid.png").write_bytes(b"the previous picture")
    with pytest.raises(UserError, match="cannot write .*No space left on device"):
        _save_png(torch.zeros(4, 4, 1), tmp_path / "grid.png")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    assert (tmp_path / "grid.png").read_bytes() == b"the previous picture"


def test_bad_eval_input(runs, tmp_path, call):
    img = ckpt(runs, "img")
    assert_one_line_error(call("eval", "--checkpoint", img, "--steps", -1), "--steps must be >= 0")
    assert_one_line_error(call("eval", "--checkpoint", tmp_path / "missing.safetensors"), "does not exist", code=3)
    assert_one_line_error(call("eval", "--checkpoint", CONFORMANCE / "mnist" / "official_ema.pt"),
                          "convert official .pt files first", code=3)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"data": torch.zeros(4, 5, 5, 1)}, str(wrong))
    assert_one_line_error(call("eval", "--checkpoint", img, "--data", wrong), "shape (5, 5, 1)", "(8, 8, 1)")
    text = tmp_path / "text.safetensors"
    save_file({"data": torch.zeros(4, 64, dtype=torch.long)}, str(text))
    assert_one_line_error(call("eval", "--checkpoint", img, "--data", text), "shape (64,)")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(img.read_bytes()[:1000])
    assert_one_line_error(call("eval", "--checkpoint", truncated), "truncated", code=3)
    assert_one_line_error(call("eval", "--runs-dir", tmp_path / "empty"), "no checkpoint found", code=3)


def test_bad_convert_input(runs, tmp_path, call):
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module, not a state dict
    assert_one_line_error(call("convert", pickled, "--preset", "mnist", "-o", tmp_path / "a.safetensors"),
                          "not a plain state dict", code=3)
    import pickle

    pickle.dump({"a": 1}, open(tmp_path / "plain.pt", "wb"))  # an old-style pickle: torch adds a warning
    assert_one_line_error(call("convert", tmp_path / "plain.pt", "--preset", "mnist", "-o",
                                  tmp_path / "a.safetensors"), "not a plain state dict", code=3)
    official = (CONFORMANCE / "mnist" / "official_ema.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(official[: len(official) // 2])
    assert_one_line_error(call("convert", tmp_path / "cut.pt", "--preset", "mnist", "-o", tmp_path / "b.safetensors"),
                          "truncated or corrupted", code=3)
    assert_one_line_error(call("convert", CONFORMANCE / "mnist" / "official_ema.pt", "--preset", "text8",
                                  "-o", tmp_path / "c.safetensors"), "does not fit its config", "missing", code=3)
    assert_one_line_error(call("convert", CONFORMANCE / "text8" / "official_ema.pt", "-o", tmp_path / "d.safetensors"),
                          "fit none of the paper presets", "text8:")
    assert_one_line_error(call("convert", tmp_path / "nope.pt", "--preset", "mnist"), "does not exist", code=3)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*partial*"))


def test_render_takes_any_channel_count_and_refuses_incomplete_trajectories(tmp_path, call):
    from bfncli.samples_file import SAMPLES_FORMAT

    meta = {"format": SAMPLES_FORMAT, "kind": "discretized_image", "num_bins": "16"}
    two = tmp_path / "two.safetensors"
    save_file({"samples": torch.rand(3, 8, 8, 2) * 2 - 1}, str(two), metadata=meta)
    result = call("render", two, "-o", tmp_path / "two.png")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "two.png").exists()
    broken = tmp_path / "broken.safetensors"
    save_file({"samples": torch.zeros(1, 8, 8, 1), "flow_input": torch.zeros(2, 1, 8, 8, 1)}, str(broken),
              metadata=meta)
    assert_one_line_error(call("render", broken), "incomplete trajectory", "--trajectory", code=3)
