"""Run under torchrun (2 CPU processes, gloo) by test_training: trains a few real DDP steps with the
trainer, then records which pairs / shards this rank reads and whether the MoCo queue received both
ranks' keys. Writes OUT/probe-RANK.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import semipairs
from semipairs.backbones import BackboneSpec, build_backbone
from semipairs.dist import init_distributed
from training.moco import MoCo
from training.trainer import TrainConfig, train


def main(data: str, pairs: str, out: str) -> None:
    init_distributed()  # the probe owns the group (train() leaves a group it did not create alone)
    cfg = TrainConfig(method="moco", data=data, pairs=pairs, out=Path(out), epochs=1, batch_size=16, image_size=16,
                      queue_size=64, num_workers=0, seed=0)
    metrics = train(cfg, progress=False)
    rank, world = dist.get_rank(), dist.get_world_size()

    ds = semipairs.load(pairs)
    per_shard = ds.manifest.shard_files()[0].samples
    ids = [m["pair_id"] for _, _, m in ds.to_torch(decode=False)]
    from torchvision.transforms import v2

    from semipairs.sources import open_source
    from training.streamed import SePPViews

    samples = sum(1 for _ in SePPViews(open_source(data), v2.ToImage(), ds, seed=0))

    torch.manual_seed(100 + rank)  # each rank its own batch, so its own keys
    backbone, dim = build_backbone(BackboneSpec("resnet18", image_size=16))
    moco = MoCo(backbone, dim, queue_size=64)
    _, _, keys = moco(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16))
    moco.enqueue(keys)
    gathered = [torch.empty_like(keys) for _ in range(world)]
    dist.all_gather(gathered, keys)
    queue_ok = torch.equal(moco.queue[: 8 * world], torch.cat(gathered)) and torch.equal(
        moco.queue[8 * rank: 8 * (rank + 1)], keys)
    Path(out, f"probe-{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "pair_ids": ids, "shards": sorted({i // per_shard for i in ids}),
        "queue_ok": bool(queue_ok), "samples": samples, "queue_ptr": int(moco.queue_ptr),
        "steps": len(metrics["epochs"][0]["step_losses"]),
    }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
