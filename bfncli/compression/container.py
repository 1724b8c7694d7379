"""The .bfnz file: magic, a JSON header, the code's 32-bit words, and a SHA-256 of all before it.

    b"BFNZ" | version (1 byte) | header length (uint32 LE) | header (UTF-8 JSON)
    | payload (uint32 LE words) | sha256 of everything before it (32 bytes)

The header says what decoding needs and what it must match: the checkpoint's weight checksum, the
steps and lattice resolution, the bfn version and device kind that encoded it, the chunking, the
seed words, and the original data's SHA-256 (see :mod:`bfncli.compression.inputs`). A file that is
truncated or has any byte changed fails the trailing checksum before anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np

from bfncli.errors import InputError

MAGIC = b"BFNZ"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")


def pack(header: dict[str, Any], payload: np.ndarray) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    body = _PREFIX.pack(MAGIC, VERSION, len(head)) + head + payload.astype("<u4").tobytes()
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, where: str) -> tuple[dict[str, Any], np.ndarray]:
    """Header and payload of a .bfnz file's bytes; one-line errors for anything else."""
    if not data:
        raise InputError(f"{where} is empty; give a file written by bfn compress")
    if data[:4] != MAGIC:
        raise InputError(f"{where} is not a bfn compressed file (no BFNZ header); give a file written by "
                        "bfn compress")
    if len(data) < _PREFIX.size + 32:
        raise InputError(f"{where} is truncated ({len(data)} bytes); compress the original again")
    _, version, size = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise InputError(f"{where} has .bfnz format version {version}; this bfn reads version {VERSION}: use the "
                        "bfn that wrote it")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise InputError(f"{where} is damaged or truncated (its checksum does not match); compress the original again")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + size])
        if not isinstance(header, dict):
            raise ValueError
    except ValueError:
        raise InputError(f"{where} has a damaged header; compress the original again") from None
    words = body[_PREFIX.size + size:]
    if len(words) % 4:
        raise InputError(f"{where} is damaged (its payload is not whole words); compress the original again")
    return header, np.frombuffer(words, dtype="<u4").astype(np.uint32)
