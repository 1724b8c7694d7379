"""``bfn eval --samples FILE``: how good a checkpoint's samples are, measured against its data.

The checkpoint gives the data (data set, bins, data path; ``--data``, ``--data-dir`` and ``--set``
change them as for the likelihood). What is measured follows the samples' kind:

- text: spelling accuracy against the vocabulary of the training split
  (:mod:`bfncli.metrics.spelling`);
- images (discretized, continuous or binary), against the training split:
  - the Fréchet distance in the feature space of the data set's classifier
    (:mod:`bfncli.metrics.classifier`, trained once and cached), ± the std over bootstrap
    resamples of the samples; beside it the same distance for as many held-out real images (the
    test split; your own data's validation split), which is what perfect samples would score at
    that N, and the classifier's accuracy on them;
  - MMD² in pixel space with a Gaussian kernel (median-heuristic bandwidth), ± its jackknife
    standard error, against a seeded random subset of the training split (as many images as
    samples, at least 1000 and at most 10000, or all there are).

The bootstrap, the held-out images and the MMD reference subset (and its binarization) follow
``--seed`` (eval.seed); the classifier has its own fixed seed, so its features do not change with it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from bfncli.errors import UserError
from bfncli.jobs.runtime import resolve_checkpoint, setup
from bfncli.log import logger, resolved_config

DATA_KIND = {"binary_image": "binary", "discretized_image": "discretized", "continuous_image": "discretized",
             "text": "text"}
WHAT = {"binary": "binary images", "discretized": "images", "text": "text"}
FD_RESAMPLES = 10
MMD_REFERENCE = (1000, 10000)  # reference images for MMD: as many as samples, within these bounds


def run_quality(samples_path: Path, checkpoint: Optional[Path], runs_dir: Path, overrides: dict[str, Any],
                sets: list[str], as_json: bool = False, deterministic: bool = False) -> dict[str, Any]:
    from bfncli.checkpoint import read_info
    from bfncli.samples_file import read_samples

    samples, meta = read_samples(samples_path)
    announce = os.environ.get("RANK", "0") == "0"
    if checkpoint is None and meta.get("checkpoint"):  # the one that drew them, not the newest run's
        checkpoint = Path(meta["checkpoint"])
        if not checkpoint.is_file():
            raise UserError(f"{samples_path} was drawn by the checkpoint {checkpoint}, which is not there; name the "
                            "checkpoint with --checkpoint")
        if announce:
            logger.info(f"using checkpoint {checkpoint} (it drew {samples_path})")
        announce = False
    path = resolve_checkpoint(checkpoint, runs_dir, announce=announce)
    result = measure_quality(samples, meta, str(samples_path), read_info(path), overrides, sets, deterministic)
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(result) + "\n" if as_json else format_quality_report(result))
    return result


def measure_quality(samples: Tensor, meta: dict[str, str], name: Optional[str], info, overrides: dict[str, Any],
                    sets, deterministic: bool = False, progress: bool = True, device=None) -> dict[str, Any]:
    """The work of ``bfn eval --samples``: the report on ``samples`` (with the samples file's
    metadata ``meta``; ``name``: the file they came from, if any) against the data of the checkpoint
    ``info`` describes, on ``device`` (default: the command's)."""
    from bfncli.config import resolve_config

    cfg = resolve_config(base=info.config.to_dict(), sets=sets, flags=overrides)
    resolved_config(cfg)
    where = f"'{name}'" if name else "the samples"
    kind = _check_fit(samples, meta, cfg, where, info.path)  # before the devices and processes are set up
    runtime = setup(deterministic)
    if kind == "text":
        result = text_quality(samples, cfg.data)
    else:
        result = image_quality(samples, cfg.data, cfg.eval.seed, device or runtime.device,
                               progress=progress and runtime.is_main)
    result.update(checkpoint=str(info.path), weights=info.weights, step=info.step, samples=name,
                  kind=meta["kind"], sample_steps=_int(meta.get("steps")), sample_seed=_int(meta.get("seed")))
    return result


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.lstrip("-").isdigit() else None


def _check_fit(samples: Tensor, meta: dict[str, str], cfg, where: str, checkpoint: Path) -> str:
    """The samples' data kind, if they fit the checkpoint's data; else a one-line error."""
    from bfncli.data import data_spec
    from bfncli.model import data_shape

    kind = DATA_KIND[meta["kind"]]
    flow = cfg.flow
    model_kind = "discretized" if flow.kind == "continuous" else ("binary" if flow.n_classes == 2 else "text")
    if kind != model_kind:
        raise UserError(f"{where} holds {WHAT[kind]} but {checkpoint} models {WHAT[model_kind]}; measure samples with "
                        "the checkpoint that drew them")
    shape = tuple(data_shape(cfg))
    if tuple(samples.shape[1:]) != shape:
        raise UserError(f"{where} holds samples of shape {tuple(samples.shape[1:])} but {checkpoint} makes {shape}; "
                        "measure samples with the checkpoint that drew them")
    # (the values were checked against the samples' kind when the file was read: samples_file.check_samples)
    bins = meta.get("num_bins")
    if meta["kind"] == "discretized_image" and bins and bins.isdigit() and int(bins) != cfg.data.num_bins:
        raise UserError(f"{where} holds images at {bins} bins but the checkpoint's data has {cfg.data.num_bins}; "
                        "measure samples with the checkpoint that drew them")
    if kind != "text":
        if samples.shape[0] < 3:
            raise UserError(f"{where} holds {samples.shape[0]} image(s); the distances need at least 3 (bfn sample "
                            f"--shape N,{','.join(map(str, shape))})")
        spec = data_spec(cfg.data)
        if tuple(spec.shape) != shape or spec.kind != kind:
            raise UserError(f"the data to compare with ({cfg.data.path or cfg.data.dataset}) has {WHAT[spec.kind]} of "
                            f"shape {tuple(spec.shape)}, the samples are {WHAT[kind]} of shape {shape}")
    return kind


# ----------------------------------------------------------------------------------- text
def text_quality(samples: Tensor, data_cfg) -> dict[str, Any]:
    """Spelling accuracy of text samples (N, L) against the words of the training split."""
    from bfncli.data import describe_split, load_split
    from bfncli.metrics.spelling import spelling_accuracy, vocabulary, vocabulary_of_windows

    train = load_split(data_cfg, "train")
    if hasattr(train, "codes"):  # a running text: text8, pyhelp, your file
        vocab = vocabulary(train.codes)
    else:  # a tensor file of separate windows
        vocab = vocabulary_of_windows(train.batch(torch.arange(len(train))))
    result = spelling_accuracy(samples, vocab)
    return {
        "measure": "spelling", "n_samples": result.n_samples, "sample_length": samples.shape[1],
        "spelling_accuracy": result.accuracy, "spelling_stderr": result.stderr, "n_words": result.n_words,
        "n_found": result.n_found, "n_samples_measured": result.n_samples_measured,
        "vocabulary": describe_split(data_cfg, "train"), "vocabulary_size": len(vocab),
    }


# --------------------------------------------------------------------------------- images
def image_quality(samples: Tensor, data_cfg, seed: int = 0, device="cpu", progress: bool = True) -> dict[str, Any]:
    """Fréchet distance (classifier features), MMD² (pixels) and the classifier's accuracy, for image
    samples (N, H, W, C) in the data layout, against the training split of ``data_cfg``."""
    from bfncli.data import data_spec, load_split
    from bfncli.metrics.classifier import classifier_for
    from bfncli.metrics.distances import frechet_distance_to, mmd2_unbiased

    try:
        data_spec(data_cfg, labels=True)
    except UserError as err:
        raise UserError(f"the Fréchet distance needs class labels to train its classifier: {err}") from None
    classifier = classifier_for(data_cfg, device=device, progress=progress)
    n = samples.shape[0]
    fd = frechet_distance_to(classifier.features(samples), classifier.reference_mean, classifier.reference_cov,
                             FD_RESAMPLES, seed)
    heldout = classifier.heldout_features
    pick = torch.randperm(heldout.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    floor = (frechet_distance_to(heldout[pick], classifier.reference_mean, classifier.reference_cov, FD_RESAMPLES,
                                 seed) if pick.numel() >= 2 else None)
    same_n = None  # fewer held-out images than samples: the samples' FD at that N too, the fair comparison
    if floor is not None and pick.numel() < n:
        subset = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:pick.numel()]
        same_n = frechet_distance_to(classifier.features(samples[subset]), classifier.reference_mean,
                                     classifier.reference_cov, FD_RESAMPLES, seed)

    train = load_split(data_cfg, "train")
    m = min(len(train), max(n, MMD_REFERENCE[0]), MMD_REFERENCE[1])
    if m < 3:
        raise UserError(f"the training split has {len(train)} image(s); MMD needs at least 3")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train), generator=generator)[:m]
    mmd = mmd2_unbiased(samples.float(), train.batch(chosen, generator).float())
    info = classifier.info
    return {
        "measure": "images", "n_samples": n, "reference": info["data"], "n_reference": info["n_train"],
        "fd": fd.value, "fd_std": fd.std, "fd_resamples": fd.resamples,
        "fd_heldout": floor.value if floor else None, "fd_heldout_std": floor.std if floor else None,
        "n_heldout": pick.numel(), "heldout": info["heldout"],
        "fd_at_heldout_n": same_n.value if same_n else None, "fd_at_heldout_n_std": same_n.std if same_n else None,
        "classifier_test_accuracy": classifier.test_accuracy, "classifier_n_test": info["n_test"],
        "classifier_features": classifier.reference_mean.numel(),
        "mmd2": mmd.mmd2, "mmd2_stderr": mmd.stderr, "mmd_bandwidth": mmd.bandwidth, "n_mmd_reference": mmd.n_y,
        "seed": seed,
    }


# --------------------------------------------------------------------------------- report
def format_quality_report(r: dict[str, Any]) -> str:
    drawn = f" ({r['sample_steps']} steps, seed {r['sample_seed']})" if r.get("sample_steps") is not None else ""
    lines = [f"checkpoint   {r['checkpoint']} ({r['weights']} weights, step {r['step']})"]
    if r["measure"] == "spelling":
        err = "n/a" if r["spelling_stderr"] is None else f"{r['spelling_stderr']:.4f}"
        lines += [
            f"samples      {r['samples']}: {r['n_samples']} texts of {r['sample_length']} characters{drawn}",
            f"vocabulary   {r['vocabulary']}: {r['vocabulary_size']} distinct words",
            "",
            f"spelling     {r['spelling_accuracy']:.4f} ± {err}   {r['n_found']} of {r['n_words']} words in "
            f"{r['n_samples_measured']} samples are in the vocabulary",
            "             (± = standard error across samples; words touching a sample's ends are not counted)",
        ]
        return "\n".join(lines) + "\n"
    n = r["n_samples"]
    lines += [
        f"samples      {r['samples']}: {n} {r['kind'].replace('_', ' ')}s{drawn}",
        f"reference    {r['reference']}: {r['n_reference']} images",
        f"classifier   {r['classifier_features']} features; test accuracy {r['classifier_test_accuracy']:.4f} on "
        f"{r['classifier_n_test']} images of {r['heldout']}",
        "",
        f"FD           {r['fd']:.4f} ± {r['fd_std']:.4f}   {n} samples vs the reference, in the classifier's features "
        f"(± = std over {r['fd_resamples']} bootstrap resamples)",
    ]
    if r["fd_heldout"] is not None:
        lines.append(f"FD held-out  {r['fd_heldout']:.4f} ± {r['fd_heldout_std']:.4f}   {r['n_heldout']} real images "
                     f"of {r['heldout']} vs the reference: what perfect samples score at N = {r['n_heldout']}")
        if r.get("fd_at_heldout_n") is not None:
            lines.append(f"FD at {r['n_heldout']:<6} {r['fd_at_heldout_n']:.4f} ± {r['fd_at_heldout_n_std']:.4f}   "
                         f"{r['n_heldout']} of the samples vs the reference: to compare with the line above")
    lines.append(f"MMD²         {r['mmd2']:.6f} ± {r['mmd2_stderr']:.6f}   {n} samples vs {r['n_mmd_reference']} "
                 f"reference images, in pixels (Gaussian kernel, sigma {r['mmd_bandwidth']:.4g} by the median "
                 "heuristic; ± = jackknife standard error)")
    lines.append("             (FD is biased upwards by small N: compare values at equal N only)")
    return "\n".join(lines) + "\n"
