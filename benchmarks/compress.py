"""bfn compress against the model's n-step loss and the classic compressors, with speeds.

Two models: one trained with the pyhelp preset, coding held-out text (the start of the pyhelp test
split), and the default digits model, coding the 179 test digits (their 16-bin centres as a
tensor file). For each, with the same n:

- the file size in bits per dimension (character or pixel): all of it, and without the one-off
  initial bits (the net code, which is what approaches the loss);
- the model's n-step loss on the same data from ``bfn eval --steps N`` (+- its standard error), and
  the loss estimated on the very chunks that were coded (printed by compress, one draw a step);
- gzip -9, bzip2 -9 and xz -9 on the same bytes (the text's bytes; for the digits their bin indices,
  one byte a pixel, so no compressor is handed the float padding of a tensor file);
- encode and decode speed (the coding alone, and the whole command with its start-up);
- the round trip, checked byte for byte, with decompression in a separate process.

Models that are not given are trained briefly first (keep runs small on a CPU):

    python benchmarks/compress.py --pyhelp runs/pyhelp/best.safetensors --digits runs/digits/best.safetensors \\
        --steps 100 --chars 2048 --repeats 20
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def bfn(*args, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bfncli", *map(str, args)], capture_output=True, input=stdin)


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode:
        sys.exit(f"command failed: {result.stderr.decode()[-2000:]}")
    return result


def trained(given, preset: str, steps: int, work: Path) -> Path:
    if given:
        return Path(given)
    runs = work / "runs"
    found = sorted(runs.glob(f"{preset}/checkpoints/*/model.safetensors"))
    if not found:
        sys.stderr.write(f"training a {preset} model for {steps} steps (no checkpoint given)\n")
        checked(bfn("train", "--preset", preset, "--runs-dir", runs, "--run-name", preset, "--max-steps", steps,
                    "--checkpoint-every", steps))
        found = sorted(runs.glob(f"{preset}/checkpoints/*/model.safetensors"))
    return found[-1]


def held_out_text(chars: int, path: Path) -> bytes:
    from bfncli.data.formats import python_help_text

    codes = python_help_text()
    test = codes[int(codes.numel() * 0.95):][:chars].numpy()  # the pyhelp test split (90/5/5)
    data = np.frombuffer(b" abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)[test].tobytes()
    path.write_bytes(data)
    return data


def test_digits(path: Path) -> bytes:
    """The 179 test digits as 16-bin centres in a tensor file; returns their bin indices as bytes."""
    import torch
    from safetensors.torch import save_file

    from bfncli.config import resolve_config
    from bfncli.data import load_split
    from bfncli.flows.distributions import bin_index

    cfg = resolve_config(preset="default")
    examples = load_split(cfg.data, "test")
    x = examples.batch(torch.arange(len(examples)))
    save_file({"data": x.contiguous()}, str(path))
    return bin_index(x, cfg.data.num_bins).to(torch.uint8).numpy().tobytes()


def classic(data: bytes, dims: int) -> dict[str, float]:
    return {"gzip -9": 8 * len(gzip.compress(data, 9)) / dims, "bzip2 -9": 8 * len(bz2.compress(data, 9)) / dims,
            "xz -9": 8 * len(lzma.compress(data, preset=9)) / dims}


def measure(name: str, checkpoint: Path, source: Path, raw: bytes, steps: int, batch: int, repeats: int,
            work: Path) -> dict:
    packed = work / f"{source.name}.bfnz"
    start = time.perf_counter()
    result = checked(bfn("compress", source, "--checkpoint", checkpoint, "--steps", steps, "--batch-size", batch,
                         "--json", "-o", packed, "--force"))
    encode_wall = time.perf_counter() - start
    summary = json.loads(result.stdout)
    restored = work / f"restored-{source.name}"
    start = time.perf_counter()
    checked(bfn("decompress", packed, "--checkpoint", checkpoint, "-o", restored, "--force"))
    decode_wall = time.perf_counter() - start
    assert restored.read_bytes() == source.read_bytes(), f"{name}: the round trip is not exact"
    ev = json.loads(checked(bfn("eval", "--checkpoint", checkpoint, "--data", source, "--steps", steps,
                                "--repeats", repeats, "--json")).stdout)
    dims = summary["dims"]
    return {
        "name": name, "dims": dims, "steps": steps, "batch_size": batch, "bits_per_dim": summary["bits_per_dim"],
        "net_bits_per_dim": summary["code_bits_per_dim"], "initial_bits": summary["initial_bits"],
        "header_bytes": summary["header_bytes"], "chunk_loss_bits_per_dim": summary["loss_bits_per_dim"],
        "eval_bits_per_dim": ev["bits_per_dim"], "eval_stderr_bits": ev["total_stderr"] / math.log(2),
        "eval_repeats": ev["repeats"], "classic": classic(raw, dims),
        "encode_dims_per_s": summary["dims_per_second"], "encode_wall_s": encode_wall, "decode_wall_s": decode_wall,
        "round_trip": True,
    }


def table(rows: list[dict]) -> str:
    lines = ["| data | n | file (bits/dim) | net code | model's n-step loss (bfn eval) | loss on the coded chunks "
             "| initial bits | gzip -9 | bzip2 -9 | xz -9 | encode | decode |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["classic"]
        lines.append(
            f"| {r['name']} ({r['dims']} dims) | {r['steps']} | {r['bits_per_dim']:.3f} | {r['net_bits_per_dim']:.3f} "
            f"| {r['eval_bits_per_dim']:.3f} ± {r['eval_stderr_bits']:.3f} | {r['chunk_loss_bits_per_dim']:.3f} "
            f"| {r['initial_bits']} | {c['gzip -9']:.3f} | {c['bzip2 -9']:.3f} | {c['xz -9']:.3f} "
            f"| {r['encode_dims_per_s']:.0f} dims/s ({r['encode_wall_s']:.0f} s) | {r['decode_wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pyhelp", help="a pyhelp checkpoint (default: train one briefly)")
    p.add_argument("--digits", help="a default-preset digits checkpoint (default: train one briefly)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--chars", type=int, default=2048, help="held-out characters to code")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10, help="bfn eval repeats (its standard error)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--work", type=Path, default=Path("compress-bench"))
    p.add_argument("--only", choices=["pyhelp", "digits"])
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.only in (None, "pyhelp"):
        ck = trained(args.pyhelp, "pyhelp", args.train_steps, args.work)
        source = args.work / "pyhelp-held-out.txt"
        raw = held_out_text(args.chars, source)
        rows.append(measure("pyhelp held-out text", ck, source, raw, args.steps, args.batch_size, args.repeats,
                            args.work))
    if args.only in (None, "digits"):
        ck = trained(args.digits, "default", args.train_steps, args.work)
        source = args.work / "digits-test.safetensors"
        raw = test_digits(source)
        rows.append(measure("179 test digits", ck, source, raw, args.steps, args.batch_size, args.repeats, args.work))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
