"""Sample-quality measures: spelling accuracy on known strings, the Fréchet distance and MMD² against
closed forms and brute force, the cached classifier, and `bfn eval --samples` through the real CLI
on tiny trained models, with every bad input."""

import json
import math
import time

import pytest
import torch
from conftest import IMAGE, assert_one_line_error, run_bfn
from safetensors.torch import save_file

from bfncli.config import DataConfig
from bfncli.data import ALPHABET, load_split
from bfncli.metrics import classifier as classifier_module
from bfncli.metrics import spelling
from bfncli.metrics.classifier import ClassifierSettings, classifier_for
from bfncli.metrics.distances import (frechet_distance, frechet_distance_of, frechet_distance_to, gaussian_fit,
                                      median_bandwidth, mmd2_unbiased)
from bfncli.metrics.spelling import measured_words, spelling_accuracy, vocabulary, vocabulary_of_windows


def codes(*texts):
    """Strings with '_' or ' ' for space -> (N, L) codes."""
    return torch.tensor([[ALPHABET.index("_" if c == " " else c) for c in t] for t in texts])


# ------------------------------------------------------------------------------- spelling
@pytest.mark.parametrize("sample,words", [
    ("_the_cat_sat_", ["the", "cat", "sat"]),  # spaces at both ends: nothing is cut
    ("he_cat_sat_on", ["cat", "sat"]),  # first and last word may be cut off
    ("_the_ca", ["the"]),
    ("xyzzyplugh", ["xyzzyplugh"]),  # no space at all: one word, measured whole
    ("__word__", ["word"]),
    ("ab_cd", []),  # two words, both possibly cut
    ("______", []),
])
def test_which_words_are_measured(sample, words):
    assert measured_words(sample.replace("_", " ").encode()) == [w.encode() for w in words]


def test_spelling_accuracy_exact_values():
    vocab = vocabulary(codes("the cat sat on the mat "))
    assert vocab == {b"the", b"cat", b"sat", b"on", b"mat"}
    samples = codes("x_the_cat_sat_y", "q_teh_mat_on_zz", "qqqqqqqqqqqqqqq", "ab_cd_ef_gh_ijk")
    # measured: [the cat sat] 3/3, [teh mat on] 2/3, [qqq...] 0/1, [cd ef gh] 0/3 -> 5 of 10
    result = spelling_accuracy(samples, vocab)
    assert (result.n_found, result.n_words, result.n_samples, result.n_samples_measured) == (5, 10, 4, 4)
    assert result.accuracy == 0.5
    # ratio-estimator standard error: residuals c - R w = 1.5, 0.5, -0.5, -1.5
    assert result.stderr == pytest.approx(math.sqrt(4 / 3 * (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2)) / 10)
    one = spelling_accuracy(codes("_the_"), vocab)
    assert one.accuracy == 1.0 and one.stderr is None


def test_standard_error_with_one_word_per_sample_is_the_binomial_one():
    vocab = frozenset({b"yes"})
    samples = codes(*(["_yes_"] * 7 + ["_nop_"] * 3))
    result = spelling_accuracy(samples, vocab)
    assert result.accuracy == 0.7 and result.stderr == pytest.approx(math.sqrt(0.7 * 0.3 / 9))


def test_vocabulary_is_read_in_chunks_without_cutting_words(monkeypatch):
    text = codes("the quick brown fox jumps over the lazy dog and runs far away " * 20)
    whole = vocabulary(text)
    monkeypatch.setattr(spelling, "_CHUNK", 7)
    assert vocabulary(text) == whole and len(whole) == 12
    assert vocabulary_of_windows(codes("he_cat_sat_on", "_the_dog_____")) == {b"cat", b"sat", b"the", b"dog"}


# ----------------------------------------------------------------------- Fréchet distance
def _spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    cov = _spd(6, 1)
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    assert frechet_distance(m1, cov, m2, cov) == pytest.approx(float((m1 - m2).square().sum()), rel=1e-9)
    assert frechet_distance(m1, cov, m1, cov) == pytest.approx(0, abs=1e-9)
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    # Diagonal covariances: sum (sqrt a - sqrt b)^2 = 1 + 1 + 0.
    assert frechet_distance(zero, torch.diag(a), zero, torch.diag(b)) == pytest.approx(2.0, rel=1e-9)


def test_frechet_distance_is_symmetric_and_zero_for_identical_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g) @ torch.randn(8, 8, generator=g)
    y = torch.randn(300, 8, generator=g) * torch.linspace(0.5, 2, 8) + 1
    assert frechet_distance_of(x, x) == pytest.approx(0, abs=1e-8)
    assert frechet_distance_of(x, y) == pytest.approx(frechet_distance_of(y, x), rel=1e-9)
    assert frechet_distance_of(x, y) > 1


def test_frechet_distance_of_shifted_gaussians_from_samples():
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0])
    x, y = torch.randn(20000, 4, generator=g), torch.randn(20000, 4, generator=g) + shift
    assert frechet_distance_of(x, y) == pytest.approx(5.0, abs=0.05)
    result = frechet_distance_to(y[:500], *gaussian_fit(x), resamples=10, seed=3)
    assert result.n_samples == 500 and 0 < result.std < 0.5 and abs(result.value - 5.0) < 4 * result.std + 0.1
    assert result == frechet_distance_to(y[:500], *gaussian_fit(x), resamples=10, seed=3)  # seeded


# ---------------------------------------------------------------------------------------- MMD
def test_mmd_matches_the_brute_force_estimate_and_jackknife():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 2, 3, generator=g), torch.randn(25, 2, 3, generator=g) + 0.4
    result = mmd2_unbiased(x, y, chunk=7)  # blocks straddling the x/y boundary
    sigma = result.bandwidth

    def estimate(a, b):
        a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
        k = lambda p, q: torch.exp(-torch.cdist(p, q).square() / (2 * sigma**2))  # noqa: E731
        n, m = a.shape[0], b.shape[0]
        kxx, kyy = k(a, a), k(b, b)
        return float((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
                     - 2 * k(a, b).mean())

    assert result.mmd2 == pytest.approx(estimate(x, y), abs=1e-7)
    loo_x = torch.tensor([estimate(torch.cat([x[:i], x[i + 1:]]), y) for i in range(30)], dtype=torch.float64)
    loo_y = torch.tensor([estimate(x, torch.cat([y[:j], y[j + 1:]])) for j in range(25)], dtype=torch.float64)
    variance = 29 / 30 * (loo_x - loo_x.mean()).square().sum() + 24 / 25 * (loo_y - loo_y.mean()).square().sum()
    assert result.stderr == pytest.approx(math.sqrt(variance), rel=1e-5)
    assert mmd2_unbiased(x, y, chunk=1000).mmd2 == pytest.approx(result.mmd2, abs=1e-7)


def test_mmd_is_noise_for_one_distribution_and_clear_for_two():
    g = torch.Generator().manual_seed(1)
    x, same, other = (torch.randn(300, 16, generator=g) for _ in range(3))
    null = mmd2_unbiased(x, same)
    assert abs(null.mmd2) < 3 * null.stderr and null.stderr > 0
    shifted = mmd2_unbiased(x, other + 0.5)
    assert shifted.mmd2 > 10 * shifted.stderr and shifted.mmd2 > 20 * abs(null.mmd2)


def test_median_bandwidth():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    assert median_bandwidth(x, y) == 2.0  # distances 1, 3, 2


# ---------------------------------------------------------------------------- classifier
def _spy_on_training(monkeypatch):
    """A list that grows by one with every classifier training."""
    calls = []
    train = classifier_module._train

    def spy(*args, **kwargs):
        calls.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "_train", spy)
    return calls


DIGITS = DataConfig(dataset="digits", num_bins=16)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """The digits classifier, trained once (timed, and counting trainings) in a cache shared by this
    module's tests, the command's included."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        calls = _spy_on_training(patch)
        start = time.perf_counter()
        first = classifier_for(DIGITS, progress=False, cache_dir=cache)
        seconds = time.perf_counter() - start
        second = classifier_for(DIGITS, progress=False, cache_dir=cache)
    return {"dir": cache, "first": first, "second": second, "seconds": seconds, "calls": calls}


def test_classifier_on_the_digits_trains_fast_is_accurate_and_cached(digits_cache):
    first, second = digits_cache["first"], digits_cache["second"]
    assert first.test_accuracy > 0.9 and digits_cache["seconds"] < 120, (first.test_accuracy, digits_cache["seconds"])
    assert digits_cache["calls"] == [1]  # the second call read the cache
    assert len(list((digits_cache["dir"] / "classifiers").glob("*.safetensors"))) == 1
    assert second.test_accuracy == first.test_accuracy
    test = load_split(DIGITS, "test", labels=True)
    images = test.batch(torch.arange(len(test)))
    assert torch.equal(first.features(images), second.features(images))
    predicted, probabilities = second.predict_classes(images)
    assert predicted.shape == (len(test),) and probabilities.shape == (len(test), 10)
    assert torch.allclose(probabilities.sum(-1), torch.ones(len(test)))
    assert (predicted == test.labels).double().mean().item() == pytest.approx(first.test_accuracy)
    assert second.class_names == tuple("0123456789") and first.features(images).shape == (len(test), 64)


def _binary_file(path, flip=None):
    """Binary 8x8 images of two classes (a bar on the left or on the right), noisy."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    images = (torch.rand(60, 8, 8, 1, generator=g) < 0.1).long()
    images[labels == 0, :, :3] = 1
    images[labels == 1, :, 5:] = 1
    if flip is not None:
        images[flip] = 1 - images[flip]
    save_file({"data": images, "labels": labels}, str(path))
    return images, labels


def test_classifier_cache_follows_the_data(monkeypatch, tmp_path):
    calls = _spy_on_training(monkeypatch)
    path = tmp_path / "bars.safetensors"
    images, _ = _binary_file(path)
    c = DataConfig(dataset="tensor", path=path, val_frac=0.2)
    quick = ClassifierSettings(epochs=5, batch_size=16)
    first = classifier_for(c, quick, progress=False)
    assert first.kind == "binary" and first.test_accuracy > 0.9
    classifier_for(c, quick, progress=False)
    assert len(calls) == 1
    _binary_file(path, flip=3)  # one example changes
    classifier_for(c, quick, progress=False)
    assert len(calls) == 2
    classifier_for(c, ClassifierSettings(epochs=4, batch_size=16), progress=False)  # other settings
    assert len(calls) == 3
    for cached in (tmp_path / "cache" / "classifiers").glob("*.safetensors"):
        cached.write_bytes(cached.read_bytes()[:100])  # damaged caches are trained again
    classifier_for(c, quick, progress=False)
    assert len(calls) == 4


def test_image_quality_of_binary_images(tmp_path):
    from bfncli.jobs.quality import image_quality

    path = tmp_path / "bars.safetensors"
    images, labels = _binary_file(path)
    c = DataConfig(dataset="tensor", path=path, val_frac=0.2)
    good = image_quality(images[:20], c, seed=0, progress=False)
    noise = image_quality((torch.rand(20, 8, 8, 1, generator=torch.Generator().manual_seed(5)) < 0.5).long(), c,
                          seed=0, progress=False)
    assert good["n_samples"] == 20 and good["n_mmd_reference"] == 48 and good["n_heldout"] == 12
    assert noise["fd"] > good["fd"] + 3 * noise["fd_std"] and noise["mmd2"] > good["mmd2"] + 3 * noise["mmd2_stderr"]


# ------------------------------------------------------------------------ the command
TEXT = ["network.n_layer=1", "network.n_embd=32", "network.input_adapter.output_size=32"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, digits_cache):
    """A tiny digits model trained and sampled through the CLI (24 samples); an untrained tiny pyhelp
    model; and the classifier cache that already holds the digits classifier."""
    from bfncli.checkpoint import save_checkpoint
    from bfncli.config import resolve_config
    from bfncli.model import BFN

    root = tmp_path_factory.mktemp("quality")
    env = {"BFN_CACHE_DIR": str(digits_cache["dir"])}
    result = run_bfn("train", *IMAGE, "--runs-dir", root / "runs", "--run-name", "img", "--max-steps", 1, cwd=root)
    assert result.returncode == 0, result.stderr
    img = next((root / "runs" / "img" / "checkpoints").glob("step-*/model.safetensors"))
    samples = root / "img.safetensors"
    result = run_bfn("sample", "--checkpoint", img, "--shape", "24,8,8,1", "--steps", 3, "-o", samples)
    assert result.returncode == 0, result.stderr
    cfg = resolve_config(preset="pyhelp", sets=TEXT, environ={})
    txt = save_checkpoint(root / "txt.safetensors", BFN(cfg).net.state_dict(), cfg)
    return {"img": img, "img_samples": samples, "txt": txt, "env": env, "root": root}


def _samples_file(path, samples, kind="discretized_image", bins="16"):
    from bfncli.jobs.sample import SAMPLES_FORMAT

    save_file({"samples": samples}, str(path), metadata={"format": SAMPLES_FORMAT, "kind": kind, "num_bins": bins,
                                                          "steps": "7", "seed": "0"})
    return path


def test_eval_samples_of_an_image_model(drawn, monkeypatch):
    result = run_bfn("eval", "--checkpoint", drawn["img"], "--samples", drawn["img_samples"], env=drawn["env"])
    assert result.returncode == 0, result.stderr
    assert "training the feature classifier" not in result.stderr  # the cached one
    for needle in ("FD ", "FD held-out", "MMD²", "test accuracy", "24 samples vs the reference", "digits train split"):
        assert needle in result.stdout, result.stdout
    result = run_bfn("eval", "--checkpoint", drawn["img"], "--samples", drawn["img_samples"], "--json", env=drawn["env"])
    report = json.loads(result.stdout)
    assert report["n_samples"] == 24 and report["classifier_test_accuracy"] > 0.9 and report["sample_steps"] == 3
    # One training step makes noise, far from the data; real held-out digits are close.
    assert report["fd"] > report["fd_heldout"] + 3 * report["fd_std"]
    assert report["mmd2"] > 3 * report["mmd2_stderr"] and report["n_mmd_reference"] == 1000
    # The same call in-process gives the same numbers: everything is seeded.
    from bfncli.jobs.quality import run_quality

    monkeypatch.setenv("BFN_CACHE_DIR", drawn["env"]["BFN_CACHE_DIR"])
    again = run_quality(drawn["img_samples"], drawn["img"], drawn["root"], {}, [], as_json=True)
    assert again == report
    other = run_quality(drawn["img_samples"], drawn["img"], drawn["root"], {"eval": {"seed": 1}}, [], as_json=True)
    assert other["fd"] == report["fd"] and other["fd_std"] != report["fd_std"] and other["seed"] == 1


def test_more_samples_than_held_out_images_are_also_compared_at_equal_n(drawn, monkeypatch, tmp_path):
    # The digits' test split has 179 images: 400 "samples" (real training digits) get their FD at N = 179
    # beside the held-out FD, and being real digits both are alike; the FD at N = 400 is smaller (bias).
    from bfncli.checkpoint import read_info
    from bfncli.data import load_split
    from bfncli.jobs.quality import run_quality

    monkeypatch.setenv("BFN_CACHE_DIR", drawn["env"]["BFN_CACHE_DIR"])
    train = load_split(read_info(drawn["img"]).config.data, "train")
    real = _samples_file(tmp_path / "real.safetensors", train.batch(torch.arange(400)))
    report = run_quality(real, drawn["img"], drawn["root"], {}, [], as_json=True)
    assert report["n_heldout"] == 179 and report["fd_at_heldout_n"] is not None
    noise = 3 * (report["fd_at_heldout_n_std"] + report["fd_heldout_std"])
    assert abs(report["fd_at_heldout_n"] - report["fd_heldout"]) < noise, report
    assert report["fd"] < report["fd_at_heldout_n"]


def test_eval_samples_of_a_text_model(drawn, tmp_path):
    # Known text: the vocabulary is the pyhelp train split, which has "the", "value", "of" and "function".
    text = ("x_the_value_of_the_function_qzxv_" + "_" * 31, "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq")
    samples = _samples_file(tmp_path / "text.safetensors", codes(*text), kind="text", bins="27")
    result = run_bfn("eval", "--checkpoint", drawn["txt"], "--samples", samples, "--json", env=drawn["env"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["measure"] == "spelling" and report["vocabulary"] == "the pyhelp train split"
    assert (report["n_found"], report["n_words"], report["n_samples"], report["n_samples_measured"]) == (5, 7, 2, 2)
    assert report["spelling_accuracy"] == pytest.approx(5 / 7) and report["spelling_stderr"] > 0
    from bfncli.jobs.quality import format_quality_report

    lines = format_quality_report(report)
    assert "spelling     0.7143 ± " in lines and "5 of 7 words in 2 samples" in lines


def test_bad_eval_samples_input(drawn, tmp_path):
    from bfncli.errors import UserError
    from bfncli.jobs.quality import run_quality

    img, txt, env = drawn["img"], drawn["txt"], drawn["env"]
    # Through the executable: one line, exit code 2.
    assert_one_line_error(run_bfn("eval", "--checkpoint", img, "--samples", drawn["img_samples"], "--steps", 5,
                                  "--repeats", 2, env=env), "--steps/--repeats", "drop --steps --repeats")
    text = _samples_file(tmp_path / "text.safetensors", torch.zeros(2, 64, dtype=torch.long), kind="text", bins="27")
    assert_one_line_error(run_bfn("eval", "--checkpoint", img, "--samples", text, env=env),
                          "holds text but", "models images")
    flat = tmp_path / "flat"
    flat.mkdir()
    from matplotlib import pyplot as plt

    for i in range(4):
        plt.imsave(str(flat / f"{i}.png"), torch.rand(8, 8).numpy(), cmap="gray")
    assert_one_line_error(run_bfn("eval", "--checkpoint", img, "--samples", drawn["img_samples"], "--data", flat,
                                  env=env), "needs class labels", "one subfolder per class")
    # The job's other refusals, before it sets anything up.
    cases = [
        (txt, drawn["img_samples"], "holds images but .* models text"),
        (img, _samples_file(tmp_path / "empty.safetensors", torch.zeros(0, 8, 8, 1)), "holds no samples"),
        (img, _samples_file(tmp_path / "wrong.safetensors", torch.zeros(5, 4, 4, 1)), "shape \\(4, 4, 1\\).*makes \\(8, 8, 1\\)"),
        (img, _samples_file(tmp_path / "bins.safetensors", torch.zeros(5, 8, 8, 1), bins="4"), "at 4 bins .* has 16"),
        (img, _samples_file(tmp_path / "two.safetensors", torch.zeros(2, 8, 8, 1)), "need at least 3"),
        (img, _samples_file(tmp_path / "nan.safetensors", torch.full((4, 8, 8, 1), float("nan"))), "NaN or infinite"),
        (txt, _samples_file(tmp_path / "t.safetensors", torch.full((2, 64), 27), kind="text"), "text ids are 0..26"),
        (img, img, "is a bfn checkpoint, not samples"),
        (img, tmp_path / "missing.safetensors", "does not exist"),
    ]
    (tmp_path / "zero.safetensors").write_bytes(b"")
    cases.append((img, tmp_path / "zero.safetensors", "is empty"))
    for checkpoint, samples, message in cases:
        with pytest.raises(UserError, match=message) as err:
            run_quality(samples, checkpoint, tmp_path, {}, [])
        assert "\n" not in str(err.value)


def test_eval_samples_without_checkpoint_uses_the_one_that_drew_them(drawn, monkeypatch, tmp_path, capsys):
    """Not the newest run under --runs-dir (here there is none): the checkpoint the samples file names."""
    from bfncli.errors import UserError
    from bfncli.jobs.quality import run_quality
    from bfncli.jobs.sample import SAMPLES_FORMAT

    monkeypatch.setenv("BFN_CACHE_DIR", drawn["env"]["BFN_CACHE_DIR"])
    report = run_quality(drawn["img_samples"], None, tmp_path / "no-runs", {}, [], as_json=True)
    assert report["checkpoint"] == str(drawn["img"])
    assert f"using checkpoint {drawn['img']} (it drew" in capsys.readouterr().err
    gone = tmp_path / "gone.safetensors"
    save_file({"samples": torch.zeros(4, 8, 8, 1)}, str(gone), metadata={
        "format": SAMPLES_FORMAT, "kind": "discretized_image", "num_bins": "16", "checkpoint": str(tmp_path / "x")})
    with pytest.raises(UserError, match="was drawn by the checkpoint .*x, which is not there; name the checkpoint"):
        run_quality(gone, None, tmp_path, {}, [])
