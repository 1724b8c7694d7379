"""bfn compress / decompress: lossless round trips for the three kinds of data, the code length
against the model's n-step loss, and every error a user can cause (one line, nothing written)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IMAGE, TEXT, assert_one_line_error, run_bfn

TEXT_SAMPLE = b"the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all afternoon"


def _checkpoint(path: Path, preset: str, sets: list[str]) -> Path:
    """A checkpoint with the untrained network of a tiny config: round trips need no training."""
    from bfncli.checkpoint import save_checkpoint
    from bfncli.config import resolve_config
    from bfncli.model import BFN

    flags = [s for s in sets if s != "--set" and s not in ("--preset", preset)]
    cfg = resolve_config(preset=preset, sets=flags)
    torch.manual_seed(0)
    return save_checkpoint(path, BFN(cfg).net.state_dict(), cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    image = [s for s in IMAGE if s != "--set" and not s.startswith("train.")]
    return {
        "text": _checkpoint(root / "text.safetensors", "pyhelp", [s for s in TEXT if s != "--set"][2:]),
        "discretized": _checkpoint(root / "digits.safetensors", "default", image),
        "continuous": _checkpoint(root / "cont.safetensors", "default",
                                  image + ["output.kind=delta", "network.output_adapter.output_height=1",
                                           "data.num_bins=256", "output.num_bins=256"]),
    }


def _digits(tmp_path: Path, bins: int, count: int = 3) -> Path:
    from safetensors.torch import save_file

    from bfncli.flows.distributions import quantize

    g = torch.Generator().manual_seed(1)
    x = quantize(torch.rand(count, 8, 8, 1, generator=g) * 2 - 1, bins)
    path = tmp_path / "digits.safetensors"
    save_file({"data": x}, str(path), metadata={"note": "kept"})
    return path


def _round_trip(call, source: Path, checkpoint: Path, *extra) -> dict:
    import json

    packed = source.with_name(source.name + ".bfnz")
    result = call("compress", source, "--checkpoint", checkpoint, "--steps", 3, "--json", "-o", packed, *extra)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    out = source.with_name("restored" + source.suffix)
    result = call("decompress", packed, "--checkpoint", checkpoint, "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == source.read_bytes()
    return summary


def test_text_round_trip_and_summary(call, models, tmp_path):
    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT_SAMPLE)  # longer than one 64-character chunk: the last one is padded, not coded
    s = _round_trip(call, source, models["text"], "--batch-size", 1)
    assert s["dims"] == len(TEXT_SAMPLE) and s["steps"] == 3
    assert s["output_bytes"] * 8 == pytest.approx(s["bits_per_dim"] * s["dims"])
    assert 0 < s["initial_bits"] < s["output_bytes"] * 8


def test_discretized_round_trip_keeps_the_tensor_file(call, models, tmp_path):
    _round_trip(call, _digits(tmp_path, 16), models["discretized"], "--batch-size", 2)


def test_binary_round_trip(call, models, tmp_path):
    from safetensors.torch import save_file

    source = tmp_path / "binary.safetensors"
    save_file({"data": (torch.rand(1, 28, 28, 1, generator=torch.Generator().manual_seed(3)) < 0.3).long()},
              str(source))
    _round_trip(call, source, _checkpoint(tmp_path / "mnist.safetensors", "mnist-tiny", []))


def test_continuous_round_trip_of_a_picture(call, models, tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    source = tmp_path / "pic.png"
    Image.fromarray(pixels).save(source)
    packed = tmp_path / "pic.bfnz"
    assert call("compress", source, "--checkpoint", models["continuous"], "--steps", 3, "-o", packed).returncode == 0
    out = tmp_path / "back.png"
    result = call("decompress", packed, "--checkpoint", models["continuous"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.array(Image.open(out)), pixels)


def test_decode_in_another_process(call, models, tmp_path):
    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT_SAMPLE[:70])
    assert call("compress", source, "--checkpoint", models["text"], "--steps", 3).returncode == 0
    result = run_bfn("decompress", tmp_path / "notes.txt.bfnz", "--checkpoint", models["text"],
                     "-o", tmp_path / "o.txt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.txt").read_bytes() == source.read_bytes()


def test_stdin_to_stdout(models, tmp_path):
    packed = run_bfn("compress", "--checkpoint", models["text"], "--steps", 2, stdin=TEXT_SAMPLE[:40], text=False)
    assert packed.returncode == 0, packed.stderr
    back = run_bfn("decompress", "--checkpoint", models["text"], stdin=packed.stdout, text=False)
    assert back.returncode == 0, back.stderr
    assert back.stdout == TEXT_SAMPLE[:40]


def test_code_length_approaches_the_n_step_loss(models):
    """Over many chunks the net code (without the one-off initial bits) is the model's n-step loss,
    estimated on the same chunks by the loss's own code, up to its Monte Carlo noise and the
    lattice's small overheads."""
    from bfncli.checkpoint import load_model
    from bfncli.compression.bitsback import BatchCoder
    from bfncli.compression.schedule import make_walk
    from bfncli.compression.stream import decode_batches, encode_batches

    model, _ = load_model(models["discretized"])
    walk = make_walk(model.flow, 16, model.discrete)
    coder = BatchCoder(model, walk, torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    from bfncli.flows.distributions import quantize

    data = quantize(torch.rand(48, 8, 8, 1, generator=g) * 2 - 1, 16)
    valid = np.ones((16, 64), dtype=bool)
    batches = [(data[i : i + 16], valid) for i in range(0, 48, 16)]
    encoded = encode_batches(coder, batches, 16 * 64)
    net_bits = encoded.bits - encoded.initial_bits
    loss_bits = encoded.loss_nats / math.log(2)
    assert net_bits == pytest.approx(loss_bits, rel=0.03)
    decoded = decode_batches(coder, encoded.payload, encoded.seed, encoded.untouched, [valid] * 3)
    assert torch.equal(torch.cat(decoded), data)


# ------------------------------------------------------------------------------------ errors
def _packed(call, models, tmp_path) -> Path:
    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT_SAMPLE[:30])
    assert call("compress", source, "--checkpoint", models["text"], "--steps", 2).returncode == 0
    return tmp_path / "notes.txt.bfnz"


def test_character_outside_the_alphabet(call, models, tmp_path):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"hello world\nthe End")
    result = call("compress", source, "--checkpoint", models["text"], "--steps", 2)
    assert_one_line_error(result, "'\\n'", "line 1, column 12", "alphabet", code=3)
    assert not (tmp_path / "bad.txt.bfnz").exists()


def test_empty_input(call, models, tmp_path):
    source = tmp_path / "empty.txt"
    source.write_bytes(b"")
    assert_one_line_error(call("compress", source, "--checkpoint", models["text"]), "empty", code=3)
    assert not (tmp_path / "empty.txt.bfnz").exists()


def test_data_the_model_cannot_code(call, models, tmp_path):
    result = call("compress", _digits(tmp_path, 256), "--checkpoint", models["discretized"], "-o", tmp_path / "d.bfnz")
    assert_one_line_error(result, "not centres of this model's 16 bins", code=3)
    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT_SAMPLE)
    assert_one_line_error(call("compress", source, "--checkpoint", models["discretized"]), "looks like text", code=3)
    assert not list(tmp_path.glob("*.bfnz"))


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "foreign", "empty"])
def test_damaged_files_are_refused(call, models, tmp_path, damage):
    packed = _packed(call, models, tmp_path)
    data = packed.read_bytes()
    bad = tmp_path / "bad.bfnz"
    bad.write_bytes({"truncated": data[: len(data) // 2], "corrupted": data[:40] + bytes([data[40] ^ 1]) + data[41:],
                     "foreign": b"PK\x03\x04 a zip file", "empty": b""}[damage])
    result = call("decompress", bad, "--checkpoint", models["text"])
    assert_one_line_error(result, {"truncated": "damaged or truncated", "corrupted": "damaged", "foreign": "not a bfn",
                                   "empty": "empty"}[damage], code=3)
    assert not (tmp_path / "bad").exists()


def test_wrong_checkpoint_is_refused(call, models, tmp_path):
    packed = _packed(call, models, tmp_path)
    result = call("decompress", packed, "--checkpoint", models["discretized"], "-o", tmp_path / "out.txt")
    assert_one_line_error(result, "another checkpoint", code=3)
    assert not (tmp_path / "out.txt").exists()


def test_step_counts_are_bounded(call, models, tmp_path):
    """A huge --steps, or a header rewritten (with a fresh checksum) to claim one, would run for ever."""
    from bfncli.compression import container

    source = tmp_path / "notes.txt"
    source.write_bytes(TEXT_SAMPLE[:30])
    for steps in (0, 10**12):
        result = call("compress", source, "--checkpoint", models["text"], "--steps", steps)
        assert_one_line_error(result, "--steps must be from 1", "1,000,000")
    assert not (tmp_path / "notes.txt.bfnz").exists()
    packed = _packed(call, models, tmp_path)
    header, payload = container.unpack(packed.read_bytes(), "x")
    packed.write_bytes(container.pack({**header, "steps": 10**12}, payload))
    result = call("decompress", packed, "--checkpoint", models["text"], "-o", tmp_path / "out.txt")
    assert_one_line_error(result, "damaged header", code=3)
    assert not (tmp_path / "out.txt").exists()


def test_decompress_never_overwrites_without_force(call, models, tmp_path):
    packed = _packed(call, models, tmp_path)
    (tmp_path / "notes.txt").write_bytes(b"precious")
    assert_one_line_error(call("decompress", packed, "--checkpoint", models["text"]), "already exists", "--force")
    assert (tmp_path / "notes.txt").read_bytes() == b"precious"
    assert call("decompress", packed, "--checkpoint", models["text"], "--force").returncode == 0
    assert (tmp_path / "notes.txt").read_bytes() == TEXT_SAMPLE[:30]


def test_drift_is_reported_and_nothing_written(call, models, tmp_path, monkeypatch):
    """A decoder whose network disagrees with the encoder's (another machine's arithmetic) must
    say so in one line and write nothing."""
    packed = _packed(call, models, tmp_path)
    from bfncli.model import BFN

    predict = BFN.predict

    def drifting(self, params, t, *args, **kwargs):
        return predict(self, params * (1 + 1e-3), t, *args, **kwargs)

    monkeypatch.setattr(BFN, "predict", drifting)
    result = call("decompress", packed, "--checkpoint", models["text"], "-o", tmp_path / "out.txt")
    assert_one_line_error(result, "drifted", "nothing was written", code=1)
    assert not (tmp_path / "out.txt").exists()
