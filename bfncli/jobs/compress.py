"""``bfn compress`` / ``bfn decompress``: any trained BFN as a lossless codec (see bfncli.compression).

Compress: read the input (a file or standard input), cut it into chunks, code the chunks in
batches with bits back (one network call per step serves a whole batch), write the .bfnz file
atomically and report its size against the model's n-step loss on the same chunks. Decompress:
check the file and that the checkpoint is the one that wrote it, decode, check the result against
the original's checksum, and only then write it: a decode that drifted (another machine's
arithmetic) is one line on stderr, never wrong data on disk.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from bfncli import __version__
from bfncli.atomic_files import atomic_path, file_sha256
from bfncli.errors import InputError, UserError
from bfncli.jobs.runtime import resolve_checkpoint, setup
from bfncli.jobs.sample import MAX_STEPS
from bfncli.log import bar_disabled, logger

CODEC = "bbans-bitswap-1"  # the coding scheme; a file from another scheme is refused
SUFFIX = ".bfnz"


# ---------------------------------------------------------------------------------- compress
def run_compress(source: Optional[Path], checkpoint: Optional[Path], runs_dir: Path, output: Optional[Path],
                 steps: Optional[int], batch_size: int, force: bool, as_json: bool) -> dict[str, Any]:
    from bfncli.compression import container, inputs
    from bfncli.compression.bitsback import BatchCoder
    from bfncli.compression.schedule import make_walk
    from bfncli.compression.stream import encode_batches

    data, name = _read_source(source, "data to compress")
    output = _output_path(output, source, lambda s: s.with_name(s.name + SUFFIX), force, "compressed file")
    if output is None and as_json:
        raise UserError("--json prints the summary on standard output, where the compressed file would go; pass "
                        "-o FILE")
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise UserError(f"--steps must be from 1 (the code sends n noisy samples) to {MAX_STEPS:,} (each step is a "
                        f"network call for every batch), got {steps}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    model, path, weights, runtime = _load(checkpoint, runs_dir)
    n = steps or _default_steps(model.cfg)
    prepared = inputs.prepare(data, name, model)
    walk = make_walk(model.flow, n, model.discrete)
    coder = BatchCoder(model, walk, runtime.device)
    count = prepared.x.shape[0]
    batches = [(prepared.x[i : i + batch_size].to(runtime.device), prepared.valid[i : i + batch_size])
               for i in range(0, count, batch_size)]
    first = int(batches[0][1].sum()) * walk.coords
    bar = _bar(len(batches) * (n + 1), "compress")
    start = time.perf_counter()
    encoded = encode_batches(coder, batches, first, bar.update)
    seconds = time.perf_counter() - start
    bar.close()
    header = {
        "codec": CODEC, "bfn_version": __version__, "checkpoint": str(Path(path).resolve()), "weights_sha256": weights,
        "steps": n, "resolution": walk.resolution, "batch_size": batch_size, "chunks": count,
        "device": _device_kind(runtime.device), "seed_words": encoded.seed, "untouched_words": encoded.untouched,
        "data": prepared.info, "data_sha256": prepared.sha256, "data_bytes": len(data),
        "valid": _valid_runs(prepared.valid),
    }
    packed = container.pack(header, encoded.payload)
    _write(packed, output)
    summary = _summary(len(data), packed, encoded, n, seconds, model, path, output)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        logger.info(_describe(summary))
    return summary


def _default_steps(cfg) -> int:
    """The checkpoint's eval steps where it evaluates an n-step loss, else its sampling steps."""
    return cfg.eval.steps if cfg.eval.steps > 0 else cfg.sample.steps


def _valid_runs(valid: np.ndarray) -> list[int]:
    """The valid dimensions, which are all but the tail of the last chunk: their count per chunk."""
    return [int(v) for v in valid.sum(1)]


def _summary(data_bytes, packed, encoded, n, seconds, model, path, output) -> dict[str, Any]:
    dims = encoded.dims
    ln2 = math.log(2)
    file_bits = 8 * len(packed)
    loss_bits = encoded.loss_nats / ln2
    return {
        "input_bytes": data_bytes, "output_bytes": len(packed), "output": str(output) if output else None,
        "checkpoint": str(path), "steps": n, "dims": dims,
        "bits_per_dim": file_bits / dims,
        "initial_bits": encoded.initial_bits,
        "net_bits_per_dim": (file_bits - encoded.initial_bits) / dims,
        "code_bits_per_dim": (encoded.bits - encoded.initial_bits) / dims,
        "loss_bits_per_dim": loss_bits / dims,
        "header_bytes": len(packed) - 4 * len(encoded.payload),
        "seconds": seconds, "dims_per_second": dims / max(seconds, 1e-9),
    }


def _describe(s: dict[str, Any]) -> str:
    where = s["output"] or "standard output"
    dims = s["dims"]
    return (f"{s['input_bytes']} bytes -> {s['output_bytes']} bytes ({where}): {s['bits_per_dim']:.4f} bits/dim = "
            f"net code {s['code_bits_per_dim']:.4f} + initial bits {s['initial_bits'] / dims:.4f} + header "
            f"{8 * s['header_bytes'] / dims:.4f}; the model's {s['steps']}-step loss on the same chunks: "
            f"{s['loss_bits_per_dim']:.4f} bits/dim ({s['seconds']:.1f} s)")


# -------------------------------------------------------------------------------- decompress
def run_decompress(source: Optional[Path], checkpoint: Optional[Path], runs_dir: Path, output: Optional[Path],
                   force: bool) -> Optional[Path]:
    from bfncli.compression import container, inputs
    from bfncli.compression.bitsback import BatchCoder
    from bfncli.compression.schedule import make_walk
    from bfncli.compression.stream import decode_batches

    data, name = _read_source(source, "a .bfnz file")
    header, payload = container.unpack(data, name)
    if header.get("codec") != CODEC:
        raise InputError(f"{name} was written with the coding scheme {header.get('codec')!r} (bfn "
                        f"{header.get('bfn_version')}); this bfn reads {CODEC}: use the bfn that wrote it")
    output = _output_path(output, source, _strip_suffix, force, "decompressed file")
    if checkpoint is None and Path(header.get("checkpoint", "")).is_file():
        checkpoint = Path(header["checkpoint"])
    model, path, weights, runtime = _load(checkpoint, runs_dir)
    if weights != header.get("weights_sha256"):
        raise InputError(f"{name} was compressed with another checkpoint ({header.get('checkpoint')}, weights "
                        f"{str(header.get('weights_sha256'))[:12]}); '{path}' has weights {weights[:12]}: pass the "
                        "checkpoint that compressed it with --checkpoint")
    n, batch = int(header["steps"]), int(header["batch_size"])
    if not 1 <= n <= MAX_STEPS or batch < 1:
        raise InputError(f"{name} has a damaged header (steps {n}, batch size {batch}); compress the original again")
    walk = make_walk(model.flow, n, model.discrete, float(header["resolution"]))
    coder = BatchCoder(model, walk, runtime.device)
    d = math.prod(model.data_shape)
    counts = header["valid"]
    valid = np.zeros((len(counts), d), dtype=bool)
    for row, k in enumerate(counts):
        valid[row, :k] = True
    valids = [valid[i : i + batch] for i in range(0, len(counts), batch)]
    bar = _bar(len(valids) * (n + 1), "decompress")
    xs = decode_batches(coder, payload, int(header["seed_words"]), int(header["untouched_words"]), valids, bar.update)
    bar.close()
    info = header["data"]
    content, write = None, None
    if xs is not None:
        x = torch.cat([v.cpu() for v in xs])
        content, write = _rebuild(x, info, inputs)
    if content is None or _sha256(content) != header.get("data_sha256"):
        here = _device_kind(runtime.device)
        where = (f"it was compressed on {header.get('device')}, this is {here}: decompress on the same kind of machine"
                 if here != header.get("device") else "the model's arithmetic differs from the compressing run's; "
                 "decompress with the same bfn and torch versions on the same machine")
        raise UserError(f"decoding {name} drifted (the result does not match the original's checksum) and nothing was "
                        f"written; {where}", exit_code=1)
    _write_with(write, output)
    if output is not None:
        logger.info(f"{name} -> {output}: checked against the original's checksum")
    return output


def _rebuild(x: torch.Tensor, info: dict, inputs):
    """The content (to check) and a writer (bytes or path -> None) for the decoded chunks."""
    kind = info["type"]
    if kind == "text":
        text = inputs.text_from(x, info)
        return text, text
    if kind == "image":
        pixels, content = inputs.image_from(x, info)
        return content, lambda target: inputs.write_image(pixels, target)
    tensor, content = inputs.tensor_from(x, info)
    if info["format"] == "npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, tensor.numpy(), allow_pickle=False)
        return content, buffer.getvalue()
    from safetensors.torch import save

    return content, save({info["key"]: tensor.contiguous()}, metadata=info.get("metadata") or None)


# ------------------------------------------------------------------------------------ shared
def _sha256(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def _load(checkpoint: Optional[Path], runs_dir: Path):
    from bfncli.checkpoint import CHECKSUM, load_model

    runtime = setup(deterministic=True)  # same kernels, same results: both sides must see the same outputs
    path = resolve_checkpoint(checkpoint, runs_dir)
    model, info = load_model(path, "cpu")
    if model.cfg.network.num_classes:
        raise UserError(f"'{path}' is a class-conditional model; compression uses unconditional models (the code "
                        "would have to carry each example's class)")
    weights = info.metadata.get(CHECKSUM) or file_sha256(path)
    return model.to(runtime.device).eval(), path, weights, runtime


def _device_kind(device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}"


def _read_source(source: Optional[Path], what: str) -> tuple[bytes, str]:
    if source is None or str(source) == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError(f"give {what} as an argument, or pipe it in on standard input")
        return sys.stdin.buffer.read(), "standard input"
    source = Path(source)
    if source.is_dir():
        raise InputError(f"'{source}' is a folder; give one file")
    try:
        return source.read_bytes(), f"'{source}'"
    except FileNotFoundError:
        raise InputError(f"'{source}' does not exist") from None
    except OSError as err:
        raise InputError(f"cannot read '{source}': {err.strerror or err}") from None


def _strip_suffix(source: Path) -> Path:
    if source.suffix != SUFFIX:
        raise UserError(f"'{source}' does not end in {SUFFIX}, so there is no name to restore; pass -o FILE")
    return source.with_suffix("")


def _output_path(output: Optional[Path], source: Optional[Path], default, force: bool, what: str) -> Optional[Path]:
    """Where to write: -o, else a name beside a source file, else standard output (never a terminal)."""
    if output is None and source is not None and str(source) != "-":
        output = default(Path(source))
    if output is None or str(output) == "-":
        if sys.stdout.isatty():
            raise UserError(f"the {what} is binary: pipe it on or pass -o FILE")
        return None
    output = Path(output)
    if output.is_dir():
        raise UserError(f"-o '{output}' is a folder; give a file name")
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o")
    if not output.parent.is_dir():
        raise UserError(f"the output folder '{output.parent}' does not exist")
    if source is not None and output.exists() and Path(source).exists() and output.resolve() == Path(source).resolve():
        raise UserError(f"-o '{output}' is the input itself; choose another output file")
    return output


def _write(data: bytes, output: Optional[Path]) -> None:
    _write_with(data, output)


def _write_with(write, output: Optional[Path]) -> None:
    """Write bytes (or call a writer with a path) atomically to ``output``, or bytes to standard output."""
    if output is None:
        if not isinstance(write, bytes):
            import io

            buffer = io.BytesIO()
            write(buffer)
            write = buffer.getvalue()
        sys.stdout.buffer.write(write)
        sys.stdout.buffer.flush()
        return
    try:
        with atomic_path(output) as tmp:
            if isinstance(write, bytes):
                tmp.write_bytes(write)
            else:
                write(tmp)
    except OSError as err:
        raise UserError(f"cannot write '{output}': {err.strerror or err}", exit_code=1) from None


def _bar(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="step", file=sys.stderr, disable=bar_disabled(), dynamic_ncols=True,
                leave=False)

