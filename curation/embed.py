"""Embedding stage: batches through the encoder with DataLoader workers decoding in parallel, written in
chunks to a cache keyed by the source and encoder fingerprints.

Each finished chunk is an atomic ``.npz`` (rows, readable mask, skip reasons). A re-run loads finished
chunks and computes only the missing ones; under torchrun each rank computes chunks ``i % world == rank``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from curation.encoders import Encoder
from curation.vectors import EmbeddingError, Embeddings
from semipairs.atomic import atomic_write
from semipairs.sources.base import ImageSource, Skipped


class _Images(Dataset):
    """Decodes and transforms source images in DataLoader workers; unreadable ones give a zero tensor."""

    def __init__(self, source: ImageSource, encoder: Encoder) -> None:
        self.source, self.transform = source, encoder.transform
        size = encoder.info.image_size or 224
        self.blank = torch.zeros(3, size, size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            item = self.source.read(i)
            return i, self.transform(item.image("RGB")), ""
        except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped, by contract
            return i, self.blank, f"{type(exc).__name__}: {exc}"


class _ChunkBatches(Sampler[list[int]]):
    """Batches that never straddle a chunk, over the given chunks only."""

    def __init__(self, chunks: list[int], chunk_size: int, n: int, batch_size: int) -> None:
        self.chunks, self.chunk_size, self.n, self.batch_size = chunks, chunk_size, n, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for c in self.chunks:
            stop = min(self.n, (c + 1) * self.chunk_size)
            for start in range(c * self.chunk_size, stop, self.batch_size):
                yield list(range(start, min(stop, start + self.batch_size)))

    def __len__(self) -> int:
        return sum(-(-(min(self.n, (c + 1) * self.chunk_size) - c * self.chunk_size) // self.batch_size) for c in self.chunks)


def cache_key(source: ImageSource, encoder: Encoder, chunk_size: int, dtype: str) -> str:
    h = hashlib.sha256(f"{source.fingerprint()}\n{encoder.fingerprint}\n{chunk_size}\n{dtype}".encode())
    return h.hexdigest()[:20]


def _chunk_path(cache: Path, c: int) -> Path:
    return cache / f"chunk-{c:06d}.npz"


def _write_chunk(path: Path, vectors: np.ndarray, ok: np.ndarray, reasons: dict[int, str]) -> None:
    with atomic_write(path) as f:  # unique temp per writer: two runs sharing a cache never collide
        np.savez(f, vectors=vectors, ok=ok, reasons=np.array(json.dumps(reasons)))


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def embed_source(
    source: ImageSource,
    encoder: Encoder,
    cache_root: Path,
    batch_size: int = 256,
    num_workers: int = 2,
    chunk_size: int = 4096,
    dtype: str = "float32",
    device: str | None = None,
    progress: bool = True,
) -> Embeddings:
    """Embed every image of ``source`` (cached, resumable); under torch.distributed every rank returns
    after all chunks exist, each having computed its share."""
    if dtype not in ("float32", "float16"):
        raise EmbeddingError(f"dtype must be float32 or float16, not {dtype!r}")
    n = len(source)
    cache = Path(cache_root) / cache_key(source, encoder, chunk_size, dtype)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "info.json").write_text(json.dumps({"source": source.spec, "encoder": encoder.info.model_dump(),
                                                 "n": n, "chunk_size": chunk_size, "dtype": dtype}, indent=1))
    num_chunks = -(-n // chunk_size)
    rank, world = dist_info()
    todo = [c for c in range(num_chunks) if c % world == rank and not _chunk_path(cache, c).exists()]
    if todo:
        _compute(source, encoder, cache, todo, chunk_size, batch_size, num_workers, dtype, device, progress)
    if world > 1:
        torch.distributed.barrier()
    return _assemble(source, cache, num_chunks)


def _compute(source, encoder, cache, todo, chunk_size, batch_size, num_workers, dtype, device, progress) -> None:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    model = encoder.model.to(device)
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    n = len(source)
    loader = DataLoader(
        _Images(source, encoder),
        batch_sampler=_ChunkBatches(todo, chunk_size, n, batch_size),
        num_workers=num_workers,
        pin_memory=on_gpu,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    bar = tqdm(total=sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in todo), desc="embed", unit="img",
               disable=not progress)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    current, rows, oks, reasons = -1, [], [], {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        for idx, images, errs in loader:
            c = int(idx[0]) // chunk_size
            if c != current:
                if current >= 0:
                    _write_chunk(_chunk_path(cache, current), np.concatenate(rows), np.concatenate(oks), reasons)
                current, rows, oks, reasons = c, [], [], {}
            images = images.to(device, non_blocking=True)
            if on_gpu:
                images = images.contiguous(memory_format=torch.channels_last)
            feats = encoder.model(images).flatten(1).float()
            feats = torch.nn.functional.normalize(feats, dim=1)
            ok = np.array([not e for e in errs])
            for i, e in zip(idx.tolist(), errs):
                if e:
                    reasons[i] = e
            vec = feats.cpu().numpy().astype(np_dtype)
            vec[~ok] = 0
            rows.append(vec)
            oks.append(ok)
            bar.update(len(idx))
    if current >= 0:
        _write_chunk(_chunk_path(cache, current), np.concatenate(rows), np.concatenate(oks), reasons)
    bar.close()


def _assemble(source: ImageSource, cache: Path, num_chunks: int) -> Embeddings:
    vecs, oks, skipped = [], [], []
    keys = source.keys()
    for c in range(num_chunks):
        with np.load(_chunk_path(cache, c)) as z:
            vecs.append(z["vectors"])
            oks.append(z["ok"])
            skipped += [Skipped(keys[int(i)], r) for i, r in json.loads(str(z["reasons"])).items()]
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    ok = np.concatenate(oks) if oks else np.zeros(0, bool)
    return Embeddings(vectors, ok, skipped, cache)
