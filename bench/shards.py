"""Shard write/read throughput of semipairs against raw webdataset, same samples, same process.

Writes N pair samples built from CIFAR-10 test JPEGs (random pairs of real images) with
``webdataset.ShardWriter`` and with semipairs' ``PairShardWriter``, then reads them back with
``webdataset.WebDataset`` and ``PairDataset.to_torch`` (bytes only, and decoded to PIL). Also times the
whole ``publish`` (image checks, parquet, manifest, verify, rename) against the raw writer.

    python bench/shards.py --pairs 20000 --out bench/out/shards.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import best_of, cifar_tar_images, emit, extract_cifar, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import webdataset as wds

    import semipairs
    from semipairs.publish import PublishRequest, publish
    from semipairs.shards import PairShardWriter, pair_key, sample_meta
    from semipairs.sources import open_source

    images = cifar_tar_images("test")
    rng = np.random.default_rng(0)
    a_idx = rng.integers(0, len(images), args.pairs)
    p_idx = (a_idx + rng.integers(1, len(images), args.pairs)) % len(images)
    metas = [sample_meta({"pair_id": i, "anchor_key": images[a][0], "positive_key": images[p][0], "score": 0.5,
                          "rank": 1, "mutual": False}) for i, (a, p) in enumerate(zip(a_idx, p_idx))]
    work = Path(tempfile.mkdtemp(prefix="sp-bench-shards-"))
    total_bytes = sum(len(images[a][2]) + len(images[p][2]) for a, p in zip(a_idx, p_idx))

    def write_raw() -> None:
        d = work / "raw"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        with wds.ShardWriter(str(d / "pairs-%06d.tar"), maxcount=args.shard_size, verbose=0) as w:
            for i, (a, p) in enumerate(zip(a_idx, p_idx)):
                w.write({"__key__": pair_key(i), "anchor.jpg": images[a][2], "positive.jpg": images[p][2], "json": metas[i]})

    def write_semipairs() -> None:
        d = work / "sp"
        shutil.rmtree(d, ignore_errors=True)
        with PairShardWriter(d, "jpg", maxcount=args.shard_size) as w:
            for i, (a, p) in enumerate(zip(a_idx, p_idx)):
                w.write(i, images[a][2], images[p][2], metas[i])

    # the whole publish path, from an image folder, as `semipairs pack` runs it
    folder = extract_cifar("test", work)
    pairs = pd.DataFrame({"anchor_key": [images[a][0] for a in a_idx], "positive_key": [images[p][0] for p in p_idx],
                          "score": np.float32(0.5), "rank": np.int16(1), "mutual": False})
    src = open_source(f"imagefolder:{folder}")
    src.index_of()
    runs = {"n": 0}

    def publish_semipairs(check: bool) -> None:
        runs["n"] += 1
        publish(PublishRequest(store=work / "store", name="bench", version=f"0.0.{runs['n']}", source=src, pairs=pairs,
                               shard_size=args.shard_size, check_images=check, progress=False))

    def write_raw_from_files() -> None:
        d = work / "raw-files"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        with wds.ShardWriter(str(d / "pairs-%06d.tar"), maxcount=args.shard_size, verbose=0) as w:
            for i, (a, p) in enumerate(zip(pairs["anchor_key"], pairs["positive_key"])):
                meta = sample_meta({"pair_id": i, "anchor_key": a, "positive_key": p, "score": 0.5, "rank": 1,
                                    "mutual": False})  # the same sample JSON publish writes, made in the loop
                w.write({"__key__": pair_key(i), "anchor.jpg": (folder / f"{a}.jpg").read_bytes(),
                         "positive.jpg": (folder / f"{p}.jpg").read_bytes(), "json": meta})

    t = {
        "write_raw": best_of(write_raw, args.repeat),
        "write_semipairs": best_of(write_semipairs, args.repeat),
        "write_raw_from_files": best_of(write_raw_from_files, args.repeat),
        "publish_semipairs_nocheck": best_of(lambda: publish_semipairs(False), args.repeat),
        "publish_semipairs_checked": best_of(lambda: publish_semipairs(True), args.repeat),
    }
    raw_urls = sorted(str(p) for p in (work / "raw").glob("*.tar"))
    ds = semipairs.load(work / "store" / "bench")

    def read_raw_bytes() -> int:
        return sum(1 for _ in wds.WebDataset(raw_urls, shardshuffle=False))

    def read_raw_decoded() -> int:
        pipe = wds.WebDataset(raw_urls, shardshuffle=False).decode("pil").to_tuple("anchor.jpg", "positive.jpg", "json")
        return sum(1 for _ in pipe)

    def read_sp_bytes() -> int:
        return sum(1 for _ in ds.to_torch(decode=False))

    def read_sp_decoded() -> int:
        return sum(1 for _ in ds.to_torch())

    assert read_raw_bytes() == read_sp_bytes() == args.pairs
    t |= {
        "read_raw_bytes": best_of(read_raw_bytes, args.repeat),
        "read_semipairs_bytes": best_of(read_sp_bytes, args.repeat),
        "read_raw_decoded": best_of(read_raw_decoded, args.repeat),
        "read_semipairs_decoded": best_of(read_sp_decoded, args.repeat),
    }
    n = args.pairs
    rate = {k: n / v for k, v in t.items()}
    raw_size = sum(p.stat().st_size for p in (work / "raw").glob("*.tar"))
    sp_size = sum(p.stat().st_size for p in (work / "sp" / "data").glob("*.tar"))
    result = {
        "benchmark": "shards", "pairs": n, "image_bytes": total_bytes, "machine": machine(),
        "samples_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios_vs_raw": {
            "write (PairShardWriter / wds.ShardWriter)": round(rate["write_semipairs"] / rate["write_raw"], 3),
            "publish, no image check (vs raw writer reading the same files)":
                round(rate["publish_semipairs_nocheck"] / rate["write_raw_from_files"], 3),
            "publish, images checked (vs raw writer reading the same files)":
                round(rate["publish_semipairs_checked"] / rate["write_raw_from_files"], 3),
            "read bytes (to_torch(decode=False) / wds.WebDataset)":
                round(rate["read_semipairs_bytes"] / rate["read_raw_bytes"], 3),
            "read decoded (to_torch() / wds .decode('pil'))": round(rate["read_semipairs_decoded"] / rate["read_raw_decoded"], 3),
        },
        "shard_bytes": {"raw": raw_size, "semipairs": sp_size},
    }
    shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
