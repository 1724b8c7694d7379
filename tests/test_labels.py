"""Class labels through the data layer, on small files in the real formats: each data set's labels,
the same batches and splits with and without them, nothing read or downloaded unless asked for,
and a one-line error for every bad label source."""

import gzip
import hashlib
import io
import json
import struct
import tarfile

import pytest
import torch
from safetensors.torch import save_file
from test_data import _png, _Server, idx_images

from bfncli.config import DataConfig
from bfncli.data import data_spec, formats, load_split
from bfncli.data.download import RemoteFile
from bfncli.errors import UserError


def idx_labels(labels: torch.Tensor) -> bytes:
    return gzip.compress(struct.pack(">II", 0x801, labels.numel()) + bytes(labels.tolist()))


def cifar_archive(parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> bytes:
    """A cifar-10-binary.tar.gz: {"train": (images, labels), "test": (images, labels)}, records of a
    label byte and the R, G, B planes."""
    def records(images, labels):
        planes = images.permute(0, 3, 1, 2).reshape(images.shape[0], -1)
        return b"".join(bytes([int(y)]) + bytes(row.tolist()) for row, y in zip(planes, labels))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)]
        chunks = zip(parts["train"][0].chunk(5), parts["train"][1].chunk(5))
        files = {name: records(*chunk) for name, chunk in zip(names, chunks)}
        files["test_batch.bin"] = records(*parts["test"])
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cfg(**kw):
    return DataConfig(**kw)


def same_batches(a, b, n=8):
    index = torch.arange(n)
    return torch.equal(a.batch(index, torch.Generator().manual_seed(1)), b.batch(index, torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------------------- embedded digits
def test_digits_labels_follow_the_splits_and_change_nothing_else():
    c = cfg(dataset="digits", num_bins=16)
    everything = formats.embedded_digit_labels()
    assert everything.shape == (1797,) and set(everything.unique().tolist()) == set(range(10))
    for split in ("train", "val", "test"):
        plain, labeled = load_split(c, split), load_split(c, split, labels=True)
        assert plain.labels is None and plain.spec.class_names == ()
        assert labeled.spec.class_names == tuple("0123456789")
        assert torch.equal(plain.indices, labeled.indices) and same_batches(plain, labeled)
        assert labeled.labels.dtype == torch.int64 and torch.equal(labeled.labels, everything[labeled.indices])
        assert torch.equal(labeled.labels_of(torch.tensor([3, 0])), everything[labeled.indices[[3, 0]]])
        with pytest.raises(ValueError, match="labels=True"):
            plain.labels_of(torch.tensor([0]))
    assert data_spec(c).class_names == () and data_spec(c, labels=True).class_names == tuple("0123456789")


# ------------------------------------------------------------------------------------ MNIST
def _mnist(tmp_path, n_train=120, n_test=30, with_labels=True):
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_images(images))
        if with_labels:
            (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_labels(labels))
        out[part] = labels.long()
    return out


def test_mnist_labels_from_the_idx1_files(tmp_path):
    truth = _mnist(tmp_path)
    c = cfg(dataset="mnist", data_dir=tmp_path, download=False)
    test = load_split(c, "test", labels=True)
    assert torch.equal(test.labels, truth["test"]) and test.spec.class_names == tuple("0123456789")
    assert same_batches(test, load_split(c, "test"))
    train, val = load_split(c, "train", labels=True), load_split(c, "val", labels=True)
    assert torch.equal(train.labels, truth["train"][train.indices]) and torch.equal(val.labels, truth["train"][val.indices])
    assert torch.equal(train.indices, load_split(c, "train").indices)


def test_mnist_label_files_are_fetched_only_when_asked_for(tmp_path, monkeypatch):
    _mnist(tmp_path, with_labels=False)
    train_labels = idx_labels(torch.randint(0, 10, (120,), dtype=torch.uint8))
    # The real checksums cannot match synthetic files: serve ours under their own checksum.
    monkeypatch.setitem(formats.MNIST_LABELS, "train", RemoteFile(
        "train-labels-idx1-ubyte.gz", ("http://127.0.0.1:9/unreachable",), md5=hashlib.md5(train_labels).hexdigest()))
    with _Server({"train-labels-idx1-ubyte.gz": train_labels}) as server:
        c = cfg(dataset="mnist", data_dir=tmp_path, download=True, mirrors=[server.url])
        assert len(load_split(c, "train")) == 119 and data_spec(c).class_names == ()
        assert server.requests == 0  # unconditional use downloads nothing new
        assert load_split(c, "train", labels=True).labels.numel() == 119
        assert server.requests == 1
    assert (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes() == train_labels
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz' is missing and downloads are off"):
        load_split(cfg(dataset="mnist", data_dir=tmp_path, download=False), "test", labels=True)


@pytest.mark.parametrize("content,message", [
    (gzip.compress(struct.pack(">II", 0x803, 30) + bytes(30)), "not an IDX label file"),
    (idx_labels(torch.zeros(30, dtype=torch.uint8))[:-5], "not a readable|truncated"),
    (gzip.compress(struct.pack(">II", 0x801, 40) + bytes(30)), "truncated"),
    (idx_labels(torch.zeros(29, dtype=torch.uint8)), "has 29 labels but t10k-images-idx3-ubyte.gz has 30 images"),
    (idx_labels(torch.full((30,), 10, dtype=torch.uint8)), "labels above 9"),
])
def test_bad_mnist_label_files(tmp_path, content, message):
    _mnist(tmp_path)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_split(cfg(dataset="mnist", data_dir=tmp_path, download=False), "test", labels=True)
    assert len(load_split(cfg(dataset="mnist", data_dir=tmp_path, download=False), "test")) == 30


# --------------------------------------------------------------------------------- CIFAR-10
def _cifar(tmp_path):
    g = torch.Generator().manual_seed(0)
    parts = {part: (torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)) for part, n in (("train", 50), ("test", 10))}
    d = tmp_path / "cifar10"
    d.mkdir()
    (d / "cifar-10-binary.tar.gz").write_bytes(cifar_archive(parts))
    return d, parts


def test_cifar10_labels_are_the_record_label_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_read_cache", lambda path, shape: None)
    monkeypatch.setattr(formats, "_read_cached_labels", lambda path, count: None)
    d, parts = _cifar(tmp_path)
    c = cfg(dataset="cifar10", data_dir=tmp_path, download=False, num_bins=16)
    test = load_split(c, "test", labels=True)
    assert torch.equal(test.labels, parts["test"][1].long()) and test.spec.class_names[0] == "airplane"
    assert test.spec.class_names[-1] == "truck" and len(test.spec.class_names) == 10
    assert same_batches(test, load_split(c, "test"))
    train = load_split(c, "train", labels=True)
    assert torch.equal(train.labels, parts["train"][1].long()[train.indices])


def test_cifar10_cache_keeps_labels_and_old_caches_are_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "CIFAR10_SIZES", {"train": 50, "test": 10})
    d, parts = _cifar(tmp_path)
    archive = d / "cifar-10-binary.tar.gz"
    # An old cache (pixels only, as bfn wrote it before labels): unconditional use needs no archive.
    save_file({"data": parts["test"][0]}, str(d / "test.safetensors"))
    content = archive.read_bytes()
    archive.unlink()
    c = cfg(dataset="cifar10", data_dir=tmp_path, download=False, num_bins=256)
    assert len(load_split(c, "test")) == 10
    with pytest.raises(UserError, match="cifar-10-binary.tar.gz' is missing"):
        load_split(c, "test", labels=True)
    archive.write_bytes(content)
    assert torch.equal(load_split(c, "test", labels=True).labels, parts["test"][1].long())
    archive.unlink()  # the caches were rebuilt with the labels: the archive is not needed any more
    train = load_split(c, "train", labels=True)
    assert torch.equal(train.labels, parts["train"][1].long()[train.indices])
    assert torch.equal(train.batch(torch.arange(50)), load_split(c, "train").batch(torch.arange(50)))


# ------------------------------------------------------------------------------ image folders
def _class_folder(root, counts=(("cat", 4), ("dog", 3), ("emu", 2))):
    g = torch.Generator().manual_seed(0)
    for name, n in counts:
        (root / name).mkdir(parents=True)
        for i in range(n):
            _png(root / name / f"{i}.png", torch.rand(6, 6, generator=g).numpy())
    return root


def test_image_folder_with_one_subfolder_per_class(tmp_path):
    root = _class_folder(tmp_path / "pets")
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    c = cfg(dataset="images", path=root, num_bins=16)
    everything = load_split(c, "all", labels=True)
    assert everything.spec.class_names == ("cat", "dog", "emu")
    assert everything.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    plain = load_split(c, "all")  # unconditional use reads the same pictures, class by class
    assert plain.labels is None and len(plain) == 9 and same_batches(plain, everything, 9)
    train, val = load_split(c, "train", labels=True), load_split(c, "val", labels=True)
    assert torch.equal(train.labels, everything.labels[train.indices]) and len(train) + len(val) == 9
    assert data_spec(c, labels=True).class_names == ("cat", "dog", "emu") and data_spec(c).class_names == ()


def test_flat_image_folder_stays_unlabeled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", torch.rand(6, 6).numpy())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("subfolders without pictures are ignored, as before")
    c = cfg(dataset="images", path=tmp_path)
    assert len(load_split(c, "all")) == 3
    with pytest.raises(UserError, match="flat folder of pictures, without labels.*one subfolder per class"):
        load_split(c, "all", labels=True)


def test_bad_class_folders(tmp_path):
    mixed = _class_folder(tmp_path / "mixed")
    _png(mixed / "stray.png", torch.rand(6, 6).numpy())
    for labels in (False, True):
        with pytest.raises(UserError, match="has pictures \\(stray.png\\) beside subfolders of pictures \\(cat/\\)"):
            load_split(cfg(dataset="images", path=mixed), "all", labels=labels)
    empty = _class_folder(tmp_path / "empty")
    (empty / "yak").mkdir()
    with pytest.raises(UserError, match="class folder '.*yak' has no PNG or JPEG images"):
        load_split(cfg(dataset="images", path=empty), "all", labels=True)
    sizes = _class_folder(tmp_path / "sizes")
    _png(sizes / "dog" / "big.png", torch.rand(7, 7).numpy())
    with pytest.raises(UserError, match="differ in size: cat/0.png is 6x6, dog/big.png is 7x7"):
        load_split(cfg(dataset="images", path=sizes), "all", labels=True)


# ------------------------------------------------------------------------------- tensor files
def _tensor_file(path, labels, names=None, n=6, data=None):
    data = torch.zeros(n, 4, 4, 1, dtype=torch.long) if data is None else data
    tensors = {"data": data} if labels is None else {"data": data, "labels": labels}
    save_file(tensors, str(path), metadata=None if names is None else {"class_names": names})
    return path


def test_tensor_file_labels_and_class_names(tmp_path):
    f = _tensor_file(tmp_path / "a.safetensors", torch.tensor([0, 1, 2, 1, 0, 2], dtype=torch.int32))
    c = cfg(dataset="tensor", path=f)
    labeled = load_split(c, "test", labels=True)
    assert labeled.labels.tolist() == [0, 1, 2, 1, 0, 2] and labeled.spec.class_names == ("0", "1", "2")
    assert labeled.spec.kind == "binary" and load_split(c, "test").labels is None
    train = load_split(c, "train", labels=True)
    assert torch.equal(train.labels, labeled.labels[train.indices])
    named = _tensor_file(tmp_path / "b.safetensors", torch.tensor([0, 0, 3, 3, 0, 3], dtype=torch.uint8),
                         json.dumps(["cat", "dog", "emu", "yak"]))
    spec = data_spec(cfg(dataset="tensor", path=named), labels=True)
    assert spec.class_names == ("cat", "dog", "emu", "yak")  # named classes need not all occur


@pytest.mark.parametrize("labels,names,message", [
    (torch.tensor([0, 1, 2]), None, "'labels' has shape \\(3,\\) but there are 6 examples"),
    (torch.zeros(6, 1, dtype=torch.long), None, "shape \\(6, 1\\)"),
    (torch.tensor([0, 1, -1, 0, 1, 0]), None, "negative"),
    (torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]), None, "are float32; store the class ids as integers"),
    (torch.tensor([True, False, True, False, True, False]), None, "are bool"),
    (torch.tensor([0, 2, 2, 0, 2, 0]), None, "class\\(es\\) 1 never occur"),
    (torch.tensor([0, 1, 2, 0, 1, 2]), json.dumps(["a", "b"]), "go up to 2 but 'class_names' names 2 classes"),
    (torch.tensor([0, 1, 1, 0, 1, 0]), "not json", "must be a JSON list of distinct"),
    (torch.tensor([0, 1, 1, 0, 1, 0]), json.dumps(["a", "a"]), "must be a JSON list of distinct"),
])
def test_bad_label_tensors_are_one_line_errors(tmp_path, labels, names, message):
    f = _tensor_file(tmp_path / "d.safetensors", labels, names)
    with pytest.raises(UserError, match=message) as err:
        load_split(cfg(dataset="tensor", path=f), "train", labels=True)
    assert "\n" not in str(err.value)
    assert len(load_split(cfg(dataset="tensor", path=f), "train")) == 5  # unconditional use is unchanged


def test_tensor_files_without_labels(tmp_path):
    import numpy as np

    f = _tensor_file(tmp_path / "d.safetensors", None)
    with pytest.raises(UserError, match="has no 'labels' tensor"):
        load_split(cfg(dataset="tensor", path=f), "test", labels=True)
    np.save(tmp_path / "d.npy", np.zeros((4, 4, 4, 1), dtype=np.int64))
    with pytest.raises(UserError, match=".npy files hold no labels"):
        load_split(cfg(dataset="tensor", path=tmp_path / "d.npy"), "test", labels=True)
    text = _tensor_file(tmp_path / "t.safetensors", torch.zeros(6, dtype=torch.long), data=torch.zeros(6, 8, dtype=torch.long))
    with pytest.raises(UserError, match="text models are unconditional"):
        load_split(cfg(dataset="tensor", path=text), "test", labels=True)


# ------------------------------------------------------------------------------------- text
def test_text_has_no_labels(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("some words to learn from " * 20)
    for c in (cfg(dataset="pyhelp", seq_len=16), cfg(dataset="text", path=book, seq_len=16),
              cfg(dataset="text8", data_dir=tmp_path, download=False)):
        for ask in (lambda: load_split(c, "train", labels=True), lambda: data_spec(c, labels=True)):
            with pytest.raises(UserError, match="text models are unconditional"):
                ask()


# ------------------------------------------------------------------------------ fingerprints
def test_fingerprints_follow_the_content(tmp_path):
    a = load_split(cfg(dataset="digits", num_bins=16), "train", labels=True)
    assert a.fingerprint() == load_split(cfg(dataset="digits", num_bins=16), "train", labels=True).fingerprint()
    others = [load_split(cfg(dataset="digits", num_bins=8), "train", labels=True),
              load_split(cfg(dataset="digits", num_bins=16), "test", labels=True),
              load_split(cfg(dataset="digits", num_bins=16), "train")]
    assert len({a.fingerprint(), *(o.fingerprint() for o in others)}) == 4
    f = _tensor_file(tmp_path / "d.safetensors", torch.tensor([0, 1, 1, 0, 1, 0]))
    before = load_split(cfg(dataset="tensor", path=f), "train", labels=True).fingerprint()
    data = torch.zeros(6, 4, 4, 1, dtype=torch.long)
    data[0, 0, 0, 0] = 1
    _tensor_file(f, torch.tensor([0, 1, 1, 0, 1, 0]), data=data)
    assert load_split(cfg(dataset="tensor", path=f), "train", labels=True).fingerprint() != before
