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
from semipairs import faults
from semipairs.atomic import atomic_write, write_text
from semipairs.decoded import DecodedImages, decode_source
from semipairs.dist import rank_world
from semipairs.precision import Precision, select_for_inference
from semipairs.sources.base import ImageSource, Skipped, read_or_skip


class _Images(Dataset):
    """Decodes and transforms source images in DataLoader workers; unreadable ones give a zero tensor."""

    def __init__(self, source: ImageSource, encoder: Encoder) -> None:
        self.source, self.transform = source, encoder.transform
        self.size = encoder.info.image_size or 224
        self.blank = torch.zeros(3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        why: list[str] = []
        view = read_or_skip(lambda: self.transform(self.source.read(i).image("RGB", at_least=self.size)), str(i),
                            lambda _k, reason: why.append(reason))
        return (i, view, "") if view is not None else (i, self.blank, why[0])


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


def cache_key(source: ImageSource, encoder: Encoder, chunk_size: int, dtype: str, variant: str = "") -> str:
    h = hashlib.sha256(f"{source.fingerprint()}\n{encoder.fingerprint}\n{chunk_size}\n{dtype}\n{variant}".encode())
    return h.hexdigest()[:20]


def _chunk_path(cache: Path, c: int) -> Path:
    return cache / f"chunk-{c:06d}.npz"


def _write_chunk(path: Path, vectors: np.ndarray, ok: np.ndarray, reasons: dict[int, str]) -> None:
    with atomic_write(path) as f:  # unique temp per writer: two runs sharing a cache never collide
        np.savez(f, vectors=vectors, ok=ok, reasons=np.array(json.dumps(reasons)))
    faults.point("embed.chunk")


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
    precision: str = "fp32",
    decode_budget: int | None = 0,
) -> Embeddings:
    """Embed every image of ``source`` (cached, resumable); under torch.distributed every rank returns
    after all chunks exist, each having computed its share.

    An encoder whose preprocessing is the decoded cache's geometry (``Encoder.decoded_size``: pixels and
    training checkpoints at small sizes) reads its images from ``semipairs.decoded`` when the source fits
    ``decode_budget`` bytes (None: the default share of RAM; 0: always stream). Path and precision are
    part of the cache key, so a resumed run never mixes embeddings made two ways."""
    if dtype not in ("float32", "float16"):
        raise EmbeddingError(f"dtype must be float32 or float16, not {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prec = select_for_inference(precision, device, encoder.model, encoder.info.image_size or 224,
                                key=f"embed:{encoder.fingerprint}", batch_size=batch_size)
    decoded = None
    if encoder.decoded_size is not None:
        decoded = decode_source(source, encoder.decoded_size, budget_bytes=decode_budget, workers=max(1, num_workers),
                                progress=progress)
    n = len(source)
    variant = f"{prec.name if not prec.channels_last else prec.label}|{'decoded' if decoded is not None else 'streamed'}"
    cache = Path(cache_root) / cache_key(source, encoder, chunk_size, dtype, variant)
    cache.mkdir(parents=True, exist_ok=True)
    write_text(cache / "info.json", json.dumps({"source": source.spec, "encoder": encoder.info.model_dump(),
                                                 "n": n, "chunk_size": chunk_size, "dtype": dtype, "variant": variant},
                                                indent=1))
    num_chunks = -(-n // chunk_size)
    rank, world = rank_world()
    todo = [c for c in range(num_chunks) if c % world == rank and not _chunk_path(cache, c).exists()]
    if todo:
        sampler = _ChunkBatches(todo, chunk_size, n, batch_size)
        batches = _decoded_batches(decoded, encoder, sampler) if decoded is not None else \
            _streamed_batches(source, encoder, sampler, num_workers, prec.device_type == "cuda")
        total = sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in todo)
        _compute(batches, encoder, cache, chunk_size, dtype, device, prec, total, progress)
    if world > 1:
        torch.distributed.barrier()
    return _assemble(source, cache, num_chunks)


Batches = Iterator[tuple[list[int], torch.Tensor, list[str]]]  # (source rows, model input, error per row or "")


def _streamed_batches(source: ImageSource, encoder: Encoder, sampler: Sampler, num_workers: int, pin: bool) -> Batches:
    loader = DataLoader(_Images(source, encoder), batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    for idx, images, errs in loader:
        yield idx.tolist(), images, list(errs)


def _decoded_batches(decoded: DecodedImages, encoder: Encoder, sampler: Sampler) -> Batches:
    """Consecutive rows of the decoded array as the encoder's input (its transform, done as one batch)."""
    norm = None if encoder.normalise is None else [torch.tensor(v).view(1, 3, 1, 1) for v in encoder.normalise]
    for idx in sampler:
        x = torch.from_numpy(np.array(decoded.images[idx[0]:idx[-1] + 1])).permute(0, 3, 1, 2).float().div_(255)
        if norm is not None:
            x = (x - norm[0]) / norm[1]
        yield list(idx), x, [decoded.reasons[i][1] if i in decoded.reasons else "" for i in idx]


def _compute(batches: Batches, encoder: Encoder, cache: Path, chunk_size: int, dtype: str, device: str, prec: Precision,
             total: int, progress: bool) -> None:
    model = prec.prepare_model(encoder.model.to(device))
    bar = tqdm(total=total, desc="embed", unit="img", disable=not progress)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    current, rows, oks, reasons = -1, [], [], {}
    with torch.inference_mode(), prec.autocast():
        for idx, images, errs in batches:
            c = idx[0] // chunk_size
            if c != current:
                if current >= 0:
                    _write_chunk(_chunk_path(cache, current), np.concatenate(rows), np.concatenate(oks), reasons)
                current, rows, oks, reasons = c, [], [], {}
            images = prec.prepare_input(images.to(device, non_blocking=True))
            feats = torch.nn.functional.normalize(model(images).flatten(1).float(), dim=1)
            ok = np.array([not e for e in errs])
            reasons.update({i: e for i, e in zip(idx, errs) if e})
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
    return Embeddings(vectors, ok, skipped)
