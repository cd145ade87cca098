"""Generate model files to serve: a real GGUF (via the gguf package) or plain random bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def write_random_file(path: Path, size: int, seed: int = 0, block: int = 64 << 20) -> str:
    """Write ``size`` pseudo-random bytes in blocks (bounded memory); return the SHA-256."""
    rng = np.random.default_rng(seed)
    hasher = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(block, left)
            chunk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            fh.write(chunk)
            hasher.update(chunk)
            left -= n
    return hasher.hexdigest()


def write_gguf(path: Path, payload_bytes: int, name: str = "modelfetch-demo", seed: int = 0) -> str:
    """Write a valid GGUF file (llama arch metadata, one uint8-backed tensor). Returns SHA-256."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_name(name)
    writer.add_context_length(2048)
    writer.add_block_count(1)
    n = max(4, payload_bytes // 4)
    writer.add_tensor("token_embd.weight", rng.standard_normal(n, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()
