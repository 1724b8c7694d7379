"""A small image classifier, trained once per data set on its class labels and cached: its feature
layer is the space of the Fréchet distance, its predictions measure class-conditional samples.

It sees images in the samples' layout (discretized images as bin centres in [-1, 1], (N, H, W, C)
floats; binary images as {0, 1} integers, (N, H, W, 1)), trained on the training split as the data
set delivers it (MNIST freshly binarized on every draw, so that it knows binary pixels, not grey
ones), and tested on the held-out split (the test split; the validation split of your own data).

The network: three 3x3 convolutions (the last two with stride 2) with batch norm and ReLU, global
average pooling, a feature layer of ``features`` ReLU units, a linear head. Trained with AdamW and a
cosine learning rate for ``epochs`` passes over the training split, at most ``max_steps`` steps:
seconds for the digits on a CPU, minutes for MNIST and CIFAR-10 (seconds on a GPU).

Cached as one safetensors file (no pickle) in bfn's cache folder (:mod:`bfncli.cache_dirs`) under
``classifiers/``, named by a hash of the
training and held-out data's content and the settings, so changed data trains a new one; written to
a temporary name and renamed. Beside the weights it keeps what every Fréchet distance against this
data set needs: the Gaussian fit of the training split's features (the reference) and the held-out
split's features and test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from bfncli.errors import UserError
from bfncli.log import bar_disabled, logger

FORMAT = "bfn-classifier"
FORMAT_VERSION = "1"  # bump when the network or its training changes: old caches are then not used
# Images of at most this many pixels (the 8x8 digits) are classified on one thread: their convolutions
# are too small to share out (on two busy cores, training the digits classifier took 2.7 s on one
# thread and 26 s on two).
ONE_THREAD_PIXELS = 16 * 16


@dataclass(frozen=True)
class ClassifierSettings:
    width: int = 32  # channels of the first convolution; the next two have 2x and 4x
    features: int = 64  # units of the feature layer
    batch_size: int = 128
    epochs: float = 10.0  # passes over the training split ...
    max_steps: int = 2000  # ... but at most this many optimizer steps
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0


class SmallCNN(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 32, features: int = 64):
        super().__init__()

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(*block(channels, width, 1), *block(width, 2 * width, 2),
                                  *block(2 * width, 4 * width, 2))
        self.feature = nn.Sequential(nn.Linear(4 * width, features), nn.ReLU())
        self.head = nn.Linear(features, n_classes)

    def features(self, x: Tensor) -> Tensor:
        # Global average pooling as a mean: its gradient is deterministic on GPUs too (--deterministic),
        # unlike adaptive pooling's.
        return self.feature(self.body(x).mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _threads(shape: tuple[int, ...]):
    from bfncli.metrics.distances import one_thread

    return one_thread() if shape[0] * shape[1] <= ONE_THREAD_PIXELS else nullcontext()


def _network_input(images: Tensor, kind: str) -> Tensor:
    """(N, H, W, C) in the samples' layout -> (N, C, H, W) floats in [-1, 1]."""
    x = images.float()
    if kind == "binary":
        x = x * 2 - 1
    return x.permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def _outputs(net: SmallCNN, batches, kind: str, device) -> tuple[Tensor, Tensor]:
    """Features (N, F) and logits (N, C), float32 on the CPU, of batches of images in the samples' layout."""
    features, logits = [], []
    for images in batches:
        f = net.features(_network_input(images, kind).to(device))
        features.append(f.float().cpu())
        logits.append(net.head(f).float().cpu())
    if not features:
        return torch.zeros(0, net.head.in_features), torch.zeros(0, net.head.out_features)
    return torch.cat(features), torch.cat(logits)


class ImageClassifier:
    """A trained :class:`SmallCNN`, what it was trained on, and the reference statistics of its data:
    ``reference_mean``, ``reference_cov`` (float64, the training split's features) and
    ``heldout_features`` (the held-out split's)."""

    def __init__(self, net: SmallCNN, kind: str, shape: tuple[int, ...], class_names: tuple[str, ...],
                 stats: dict[str, Tensor], info: dict, device="cpu"):
        self.net, self.kind, self.shape, self.class_names = net.to(device).eval(), kind, tuple(shape), class_names
        self.device = torch.device(device)
        self.reference_mean, self.reference_cov = stats["reference_mean"], stats["reference_cov"]
        self.heldout_features = stats["heldout_features"]
        self.info = info  # test_accuracy, n_train, n_test, steps, settings, data, heldout
        self.test_accuracy: float = info["test_accuracy"]

    def _run(self, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        if tuple(images.shape[1:]) != self.shape:
            raise UserError(f"the classifier takes images of shape {self.shape}, not {tuple(images.shape[1:])}")
        batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
        with _threads(self.shape):
            return _outputs(self.net, batches, self.kind, self.device)

    def features(self, images: Tensor, batch_size: int = 500) -> Tensor:
        """The feature layer's activations for images (N, H, W, C) in the samples' layout: (N, F) float32."""
        return self._run(images, batch_size)[0]

    def predict_classes(self, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
        """The most likely class of each image (N,) int64 and the class probabilities (N, C) float32, on
        the CPU; classes index ``class_names``."""
        probabilities = self._run(images, batch_size)[1].softmax(-1)
        return probabilities.argmax(-1), probabilities


# ------------------------------------------------------------------------------ getting one
def classifier_splits(data_cfg) -> tuple[str, str]:
    """(training split, held-out split) of a data set: your own data holds out its validation split."""
    return "train", "val" if data_cfg.dataset in ("images", "tensor") else "test"


def classifier_for(data_cfg, settings: ClassifierSettings = ClassifierSettings(), device="cpu",
                   progress: bool = True, cache_dir: Optional[Path] = None) -> ImageClassifier:
    """The classifier of a data set (``cfg.data``): from the cache (``cache_dir``, by default bfn's),
    or trained now and cached."""
    from bfncli.data import describe_split, load_split

    train_split, heldout_split = classifier_splits(data_cfg)
    train = load_split(data_cfg, train_split, labels=True)
    heldout = load_split(data_cfg, heldout_split, labels=True)
    if train.spec.kind == "text":
        raise UserError("the classifier is for images; text samples are measured by their spelling")
    key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "settings": asdict(settings),
                                     "train": train.fingerprint(), "heldout": heldout.fingerprint()},
                                    sort_keys=True).encode()).hexdigest()[:24]
    from bfncli.cache_dirs import bfn_cache_dir

    path = Path(cache_dir or bfn_cache_dir()) / "classifiers" / f"{key}.safetensors"
    if path.exists():
        loaded = _load(path, device)
        if loaded is not None:
            return loaded
        if progress:
            logger.warning(f"the cached classifier {path} is damaged; training it again")
    what = describe_split(data_cfg, train_split)
    if progress:
        logger.info(f"training the feature classifier on {what} ({len(train)} images; cached for later "
                    f"runs in {path.parent})")
    with _threads(train.spec.shape):
        classifier = _train(train, heldout, settings, device, progress)
    classifier.info.update(data=what, heldout=describe_split(data_cfg, heldout_split))
    _save(classifier, path)
    return classifier


# ------------------------------------------------------------------------------ training
def _train(train, heldout, settings: ClassifierSettings, device, progress: bool) -> ImageClassifier:
    from tqdm import tqdm

    from bfncli.metrics.distances import gaussian_fit

    spec = train.spec
    if len(train) < 2 or len(heldout) < 1:
        raise UserError(f"the classifier needs at least 2 training and 1 held-out labeled images, not {len(train)} "
                        f"and {len(heldout)}")
    with torch.random.fork_rng(devices=[]):  # the weights' initialisation, without touching the caller's RNG
        torch.manual_seed(settings.seed)
        net = SmallCNN(spec.shape[-1], len(spec.class_names), settings.width, settings.features).to(device)
    n = len(train)
    steps = max(1, min(settings.max_steps, math.ceil(settings.epochs * n / settings.batch_size)))
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.cat([torch.randperm(n, generator=generator)
                       for _ in range(math.ceil(steps * settings.batch_size / n))])  # epoch after epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    net.train()
    for step in tqdm(range(steps), desc="classifier", unit="step", file=sys.stderr, disable=bar_disabled(None if progress else True),
                     leave=False):
        index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        x = _network_input(train.batch(index, generator), spec.kind).to(device)
        loss = nn.functional.cross_entropy(net(x), train.labels_of(index).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    # The data as the samples are compared with it: one fixed draw (binarization) of every example.
    reference, _ = _outputs(net, _all_batches(train, settings.seed + 1), spec.kind, device)
    heldout_features, logits = _outputs(net, _all_batches(heldout, settings.seed + 2), spec.kind, device)
    mean, cov = gaussian_fit(reference)
    accuracy = float((logits.argmax(-1) == heldout.labels).double().mean())
    info = {"test_accuracy": accuracy, "n_train": n, "n_test": len(heldout), "steps": steps,
            "settings": asdict(settings)}
    stats = {"reference_mean": mean, "reference_cov": cov, "heldout_features": heldout_features}
    return ImageClassifier(net, spec.kind, spec.shape, spec.class_names, stats, info, device)


def _all_batches(examples, seed: int, batch_size: int = 500):
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(examples), batch_size):
        yield examples.batch(torch.arange(start, min(start + batch_size, len(examples))), generator)


# ------------------------------------------------------------------------------ the cache
def _save(classifier: ImageClassifier, path: Path) -> None:
    from bfncli.checkpoint import atomic_path, save_tensors

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in classifier.net.state_dict().items()}
    tensors.update(reference_mean=classifier.reference_mean, reference_cov=classifier.reference_cov,
                   heldout_features=classifier.heldout_features.contiguous())
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": classifier.kind,
            "shape": json.dumps(list(classifier.shape)), "class_names": json.dumps(list(classifier.class_names)),
            "info": json.dumps(classifier.info)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_tensors(tensors, tmp, meta)
    except OSError as err:  # only a cache: the measure goes on, the next run trains again
        logger.warning(f"could not cache the classifier in {path} ({err.strerror or err})")


def _load(path: Path, device) -> Optional[ImageClassifier]:
    """The cached classifier, or None if the file is not a whole one of this version."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            return None
        info = json.loads(meta["info"])
        settings = ClassifierSettings(**info["settings"])
        shape, names = tuple(json.loads(meta["shape"])), tuple(json.loads(meta["class_names"]))
        net = SmallCNN(shape[-1], len(names), settings.width, settings.features)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return ImageClassifier(net, meta["kind"], shape, names, tensors, info, device)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
