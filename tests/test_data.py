"""The data layer on small files in the real formats: reading, splits, preprocessing, downloads
through a local HTTP server (including broken ones), and every bad input."""

import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import random_split

from bfncli.config import DataConfig
from bfncli.data import data_spec, decode_text, encode_text, load_split
from bfncli.data import formats
from bfncli.data.download import RemoteFile, ensure
from bfncli.data.examples import holdout
from bfncli.errors import UserError


# ------------------------------------------------------------------------------ file makers
def idx_images(images: torch.Tensor) -> bytes:
    n, h, w = images.shape
    return gzip.compress(struct.pack(">IIII", 0x803, n, h, w) + bytes(images.flatten().tolist()))


def cifar_archive(train: torch.Tensor, test: torch.Tensor) -> bytes:
    """A cifar-10-binary.tar.gz with five training batches and a test batch."""
    def records(images):
        planes = images.permute(0, 3, 1, 2).reshape(images.shape[0], -1)  # R, G, B planes
        return b"".join(bytes([7]) + bytes(row.tolist()) for row in planes)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        chunks = train.chunk(5)
        for i, chunk in enumerate(chunks, 1):
            _add(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", records(chunk))
        _add(tar, "cifar-10-batches-bin/test_batch.bin", records(test))
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def text8_zip(text: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("text8", text)
    return buffer.getvalue()


def cfg(**kw):
    return DataConfig(**kw)


# ------------------------------------------------------------------------------------ MNIST
def _mnist_dir(tmp_path, n_train=200, n_test=50):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (n_test, 28, 28), generator=g, dtype=torch.uint8)
    d = tmp_path / "mnist"
    d.mkdir(parents=True)
    (d / "train-images-idx3-ubyte.gz").write_bytes(idx_images(train))
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(idx_images(test))
    return train, test


def test_mnist_reads_idx_and_binarizes_dynamically(tmp_path):
    train, test = _mnist_dir(tmp_path)
    c = cfg(dataset="mnist", data_dir=tmp_path, download=False)
    test_set = load_split(c, "test")
    assert len(test_set) == 50 and test_set.spec.shape == (28, 28, 1)
    x = test_set.batch(torch.arange(50), torch.Generator().manual_seed(1))
    assert x.dtype == torch.int64 and x.shape == (50, 28, 28, 1) and set(x.unique().tolist()) <= {0, 1}
    # Dynamic binarization: each pixel is 1 with probability grey/255, fresh at every draw.
    draws = torch.stack([test_set.batch(torch.arange(50), torch.Generator().manual_seed(s)) for s in range(200)])
    freq = draws.float().mean(0).squeeze(-1)
    assert (freq - test.float() / 255).abs().mean() < 0.03
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(test_set.batch(torch.arange(5), torch.Generator().manual_seed(3)),
                       test_set.batch(torch.arange(5), torch.Generator().manual_seed(3)))


def test_vision_validation_split_is_the_official_one():
    for n in (60000, 50000, 1234):
        ours = holdout(n, (0.99, 0.01))
        theirs = random_split(range(n), [0.99, 0.01], generator=torch.Generator().manual_seed(2147483647))
        assert [t.tolist() for t in ours] == [list(s.indices) for s in theirs]


def test_mnist_train_and_val_partition_the_training_file(tmp_path):
    _mnist_dir(tmp_path, n_train=1000)
    c = cfg(dataset="mnist", data_dir=tmp_path, download=False)
    train, val = load_split(c, "train"), load_split(c, "val")
    assert (len(train), len(val)) == (990, 10)
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())


def test_files_already_there_are_used_without_network(tmp_path):
    _mnist_dir(tmp_path)  # synthetic files: another checksum than the canonical ones
    c = cfg(dataset="mnist", data_dir=tmp_path, download=True, mirrors=["http://127.0.0.1:9/"])
    assert len(load_split(c, "test")) == 50


def test_corrupt_idx_is_reported(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20))
    with pytest.raises(UserError, match="not an IDX image file"):
        load_split(cfg(dataset="mnist", data_dir=tmp_path, download=False), "test")
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(idx_images(torch.zeros(3, 28, 28, dtype=torch.uint8))[:-30])
    with pytest.raises(UserError, match="not a readable|truncated"):
        load_split(cfg(dataset="mnist", data_dir=tmp_path, download=False), "test")


# --------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_binary_archive_bins_and_flip(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (100, 32, 32, 3), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (20, 32, 32, 3), generator=g, dtype=torch.uint8)
    d = tmp_path / "cifar10"
    d.mkdir()
    (d / "cifar-10-binary.tar.gz").write_bytes(cifar_archive(train, test))
    monkeypatch.setattr(formats, "_read_cache", lambda path, shape: None)
    for bins in (256, 16):
        c = cfg(dataset="cifar10", data_dir=tmp_path, download=False, num_bins=bins)
        x = load_split(c, "test").batch(torch.arange(20))
        assert x.dtype == torch.float32 and x.shape == (20, 32, 32, 3)
        centres = (torch.arange(bins) * 2 + 1) / bins - 1
        assert set(x.unique().tolist()) <= set(centres.tolist())
        # The official transform: ToTensor (/255), then x*2-1 snapped to the bin centres.
        expected = torch.clamp(torch.floor(test.float() / 255 * bins), max=bins - 1)
        torch.testing.assert_close(x, (expected * 2 + 1) / bins - 1)
    flipping = load_split(cfg(dataset="cifar10", data_dir=tmp_path, download=False, horizontal_flip=True), "train")
    plain = load_split(cfg(dataset="cifar10", data_dir=tmp_path, download=False), "train")
    index = torch.arange(len(plain))
    a, b = flipping.batch(index, torch.Generator().manual_seed(5)), plain.batch(index)
    flipped = torch.tensor([torch.equal(a[i], b[i].flip(1)) and not torch.equal(a[i], b[i]) for i in range(len(index))])
    kept = torch.tensor([torch.equal(a[i], b[i]) for i in range(len(index))])
    assert (flipped | kept).all() and 0.3 < flipped.float().mean() < 0.7
    assert len(plain) == 99 and len(load_split(cfg(dataset="cifar10", data_dir=tmp_path, download=False), "val")) == 1


def test_cifar_archive_without_the_binary_batches_is_refused(tmp_path):
    bad = tmp_path / "cifar-10-binary.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, "cifar-10-batches-py/data_batch_1", b"pickle")
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="binary"):
        formats.read_cifar10_binary(bad)


# ------------------------------------------------------------------------------------ text8
def test_text8_split_and_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "TEXT8_CHARS", 1000)
    text = (b"the quick brown fox jumps over the lazy dog " * 30)[:1000]
    d = tmp_path / "text8"
    d.mkdir()
    (d / "text8.zip").write_bytes(text8_zip(text))
    c = cfg(dataset="text8", data_dir=tmp_path, download=False, seq_len=16)
    train = load_split(c, "train")
    assert len(train) == 900 - 16
    x = train.batch(torch.tensor([0, 4]))
    assert x.dtype == torch.int64 and x.shape == (2, 16)
    assert decode_text(x) == ["the_quick_brown_", "quick_brown_fox_"]
    test = load_split(c, "test")
    assert decode_text(test.batch(torch.tensor([0])))[0] == text[950:966].decode().replace(" ", "_")
    assert len(load_split(c, "val")) == 50 - 16
    assert sorted(p.name for p in d.iterdir()) == ["test.safetensors", "text8.zip", "train.safetensors",
                                                   "val.safetensors"]  # decoded once, cached


def test_text8_zip_structure_is_checked(tmp_path):
    (tmp_path / "text8").mkdir()
    bad = tmp_path / "text8" / "text8.zip"
    bad.write_bytes(text8_zip(b"too short"))
    assert "instead of" in formats.check_text8_zip(bad)
    bad.write_bytes(b"not a zip")
    assert "not the text8 zip" in formats.check_text8_zip(bad)
    c = cfg(dataset="text8", data_dir=tmp_path, download=False, seq_len=16)
    with pytest.raises(UserError, match=r"not the text8 zip .*; delete it to download it again"):
        load_split(c, "train")
    assert bad.read_bytes() == b"not a zip"  # a file someone put there is never deleted behind their back


def test_text_encoding_maps_to_the_27_character_alphabet():
    codes = encode_text("Héllo,  World!\n42 times")
    assert decode_text(codes.unsqueeze(0))[0] == "hello_world_times"


# ----------------------------------------------------------------------------- downloads
class _Server:
    """A bounded local HTTP server on 127.0.0.1 serving given paths, optionally misbehaving."""

    def __init__(self, files: dict[str, bytes], truncate: int = 0):
        self.files, self.truncate, self.requests = files, truncate, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if outer.truncate:
                    payload = payload[: outer.truncate]  # promise more than we send
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _remote(body: bytes, name="file.bin", **kw):
    return RemoteFile(name, ("http://127.0.0.1:9/unreachable/" + name,), md5=hashlib.md5(body).hexdigest(), **kw)


def test_download_verifies_and_renames(tmp_path):
    body = b"payload" * 1000
    with _Server({"file.bin": body}) as server:
        path = ensure(_remote(body), tmp_path, True, [server.url])
    assert path.read_bytes() == body and not list(tmp_path.glob("*.part"))
    with _Server({}) as server:  # already there: no network touched
        ensure(_remote(body), tmp_path, True, [server.url])
        assert server.requests == 0


def test_download_resumes_a_truncated_transfer(tmp_path):
    body = bytes(range(256)) * 400
    with _Server({"file.bin": body}, truncate=40_000) as server:
        path = ensure(_remote(body), tmp_path, True, [server.url])
    assert path.read_bytes() == body and server.requests >= 3


def test_truncated_download_is_rejected_and_never_trusted(tmp_path, monkeypatch):
    import bfncli.data.download as dl

    monkeypatch.setattr(dl, "ATTEMPTS_PER_URL", 2)
    body = b"x" * 100_000
    with _Server({"file.bin": body}, truncate=10) as server:
        with pytest.raises(UserError, match="could not download file.bin.*put it in"):
            ensure(_remote(body), tmp_path, True, [server.url])
    assert not (tmp_path / "file.bin").exists()  # only a .part, which is verified before any use


def test_checksum_mismatch_is_rejected_and_removed(tmp_path):
    with _Server({"file.bin": b"evil bytes"}) as server:
        with pytest.raises(UserError, match="does not match its MD5 checksum"):
            ensure(_remote(b"good bytes"), tmp_path, True, [server.url])
    assert [p.name for p in tmp_path.iterdir()] == [".file.bin.lock"]  # the turn-taking lock stays, empty


def test_offline_fails_fast_naming_files_urls_and_place(tmp_path):
    import time

    remote = RemoteFile("data.gz", ("http://bfn-no-such-host.invalid/data.gz",), md5="0" * 32)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        ensure(remote, tmp_path / "d", True, [])
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert "data.gz" in message and "http://bfn-no-such-host.invalid/data.gz" in message and str(tmp_path) in message


def test_downloads_off_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="missing and downloads are off"):
        ensure(_remote(b"x"), tmp_path, False, [])


# ------------------------------------------------------------------------------ user data
def _png(path, array):
    from matplotlib import pyplot as plt

    plt.imsave(str(path), array, cmap="gray", vmin=0, vmax=1)


def test_image_folder_becomes_a_discretized_dataset(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        _png(tmp_path / f"{i}.png", torch.rand(12, 12, generator=g).numpy())
    c = cfg(dataset="images", path=tmp_path, num_bins=16)
    spec = data_spec(c)
    assert spec.kind == "discretized" and spec.shape == (12, 12, 1)
    train, val = load_split(c, "train"), load_split(c, "val")
    assert len(train) + len(val) == 10 and len(val) >= 1
    x = train.batch(torch.arange(len(train)))
    assert x.shape == (len(train), 12, 12, 1)


def test_bad_image_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no PNG or JPEG"):
        load_split(cfg(dataset="images", path=empty), "train")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _png(mixed / "a.png", torch.rand(8, 8).numpy())
    _png(mixed / "b.png", torch.rand(9, 8).numpy())
    with pytest.raises(UserError, match="differ in size"):
        load_split(cfg(dataset="images", path=mixed), "train")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        load_split(cfg(dataset="images", path=broken), "train")


def test_one_colour_picture_among_many_grey_ones_makes_the_folder_rgb(tmp_path):
    from bfncli.data import data_spec

    for i in range(70):
        _png(tmp_path / f"{i:03d}.png", torch.rand(8, 8).numpy())
    _png(tmp_path / "zzz.png", torch.rand(8, 8, 3).numpy())
    c = cfg(dataset="images", path=tmp_path)
    assert data_spec(c).shape == (8, 8, 3)
    assert load_split(c, "all").batch(torch.tensor([0, 70])).shape == (2, 8, 8, 3)


def test_text_file_becomes_a_text8_style_dataset(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("It was the best of times, it was the worst of times. " * 50)
    c = cfg(dataset="text", path=f, seq_len=20)
    x = load_split(c, "train").batch(torch.tensor([0]))
    assert decode_text(x)[0] == "it_was_the_best_of_t"


@pytest.mark.parametrize("content,message", [(b"", "is empty"), (b"\x00\x01\x02binary", "looks binary"),
                                             (b"1234 5678 !!!", "no letters")])
def test_bad_text_files(tmp_path, content, message):
    f = tmp_path / "t.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_split(cfg(dataset="text", path=f, seq_len=4), "train")


def test_tensor_files_are_used_as_they_are(tmp_path):
    from safetensors.torch import save_file

    data = (torch.randint(0, 16, (20, 4, 4, 3)).float() * 2 + 1) / 16 - 1
    save_file({"data": data}, str(tmp_path / "d.safetensors"))
    examples = load_split(cfg(dataset="tensor", path=tmp_path / "d.safetensors", num_bins=16), "test")
    assert examples.spec.kind == "discretized" and len(examples) == 20
    assert torch.equal(examples.batch(torch.arange(20)), data)
    import numpy as np

    np.save(tmp_path / "t.npy", np.random.randint(0, 27, (5, 8)))
    assert load_split(cfg(dataset="tensor", path=tmp_path / "t.npy"), "test").spec.kind == "text"


@pytest.mark.parametrize("tensor,message", [
    (torch.rand(5, 3), "holds floats of shape"),
    (torch.full((2, 4, 4, 1), 3.0), "outside \\[-1, 1\\]"),
    (torch.randint(0, 50, (3, 8)), "outside 0..26"),
    (torch.randint(0, 5, (3, 4, 4, 2)), "holds integers of shape"),
])
def test_tensor_files_with_the_wrong_layout(tmp_path, tensor, message):
    from safetensors.torch import save_file

    save_file({"data": tensor}, str(tmp_path / "d.safetensors"))
    with pytest.raises(UserError, match=message):
        load_split(cfg(dataset="tensor", path=tmp_path / "d.safetensors"), "test")


def test_missing_user_data(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_split(cfg(dataset="text", path=tmp_path / "nope.txt"), "train")
    with pytest.raises(UserError, match="needs a path"):
        load_split(cfg(dataset="images"), "train")


# ----------------------------------------------------------------------------- embedded
def test_embedded_digits_need_no_download():
    c = cfg(dataset="digits", num_bins=16, data_dir=Path("/nonexistent"))
    sizes = [len(load_split(c, s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[2] > 100
    x = load_split(c, "train").batch(torch.arange(8))
    assert x.shape == (8, 8, 8, 1) and x.min() >= -1 and x.max() <= 1


def test_embedded_python_help_text():
    c = cfg(dataset="pyhelp", seq_len=64)
    x = load_split(c, "train").batch(torch.arange(2))
    assert x.shape == (2, 64) and x.max() <= 26
