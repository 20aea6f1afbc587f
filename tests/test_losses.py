"""Each loss on hand-made tensors against its textbook form (lightly's tests/loss/ style)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import info_nce, multi_positive_nce, supcon


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_supcon_with_one_positive_is_nt_xent() -> None:
    """SimCLR's NT-Xent over 2B views: cross-entropy of each view against the other 2B - 1, target its twin."""
    b, t = 6, 0.2
    z = _unit(2 * b, 16)
    logits = (z @ z.T / t).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    twin = torch.zeros(2 * b, 2 * b, dtype=torch.bool)
    twin[torch.arange(2 * b), target] = True
    assert torch.allclose(supcon(z, z, twin, ~torch.eye(2 * b, dtype=torch.bool), t), F.cross_entropy(logits, target))


def test_supcon_over_key_and_queue_is_info_nce_and_its_multi_positive_form() -> None:
    q, k, queue = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(10, 8, seed=3)
    pos = torch.zeros(4, 14, dtype=torch.bool)
    pos[torch.arange(4), torch.arange(4)] = True
    valid = torch.ones(4, 14, dtype=torch.bool)
    valid[:, :4] = torch.eye(4, dtype=torch.bool)  # only a query's own key: MoCo never contrasts other batch keys
    assert torch.allclose(supcon(q, torch.cat([k, queue]), pos, valid, 0.2), info_nce(q, k, queue, 0.2))
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, 3] = mask[2, [1, 7]] = True
    pos[:, 4:] = mask
    assert torch.allclose(supcon(q, torch.cat([k, queue]), pos, valid, 0.2), multi_positive_nce(q, k, queue, mask, 0.2))


def test_supcon_averages_positives_in_log_space_and_leaves_invalid_entries_out() -> None:
    a, c = _unit(1, 8, seed=4), _unit(5, 8, seed=5)
    pos = torch.tensor([[True, True, False, False, False]])
    valid = torch.tensor([[True, True, True, False, True]])
    s = (a @ c.T / 0.5)[0]
    log_den = torch.logsumexp(s[valid[0]], 0)
    expected = -((s[0] - log_den) + (s[1] - log_den)) / 2
    assert torch.allclose(supcon(a, c, pos, valid, 0.5), expected)
    w = torch.tensor([2.0])
    assert torch.allclose(supcon(a, c, pos, valid, 0.5, w), expected)
    with pytest.raises(ValueError, match="no positive"):
        supcon(a, c, torch.zeros(1, 5, dtype=torch.bool), valid, 0.5)


def test_info_nce_and_multi_positive_match_a_per_query_loop() -> None:
    """InfoNCE (MoCo, eq. 1 of He et al.): -log exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t)), one query at a time."""
    import math

    q, k, queue, t = _unit(3, 8, seed=6), _unit(3, 8, seed=7), _unit(5, 8, seed=8), 0.2
    mask = torch.tensor([[False] * 5, [True, False, False, True, False], [False, False, False, False, True]])
    plain, multi = [], []
    for i in range(3):
        logits = [float(q[i] @ k[i]) / t] + [float(q[i] @ n) / t for n in queue]
        log_den = math.log(sum(math.exp(v) for v in logits))
        plain.append(log_den - logits[0])
        pos = [0] + [1 + j for j in range(5) if mask[i, j]]
        multi.append(sum(log_den - logits[j] for j in pos) / len(pos))
    assert info_nce(q, k, queue, t).item() == pytest.approx(sum(plain) / 3, rel=1e-5)
    assert multi_positive_nce(q, k, queue, mask, t).item() == pytest.approx(sum(multi) / 3, rel=1e-5)


def test_negative_cosine_and_byol_match_their_formulas_and_stop_gradients() -> None:
    from training.losses import byol_loss, negative_cosine

    p = torch.randn(4, 6, generator=torch.Generator().manual_seed(9), requires_grad=True)
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(10), requires_grad=True)
    cos = [float((p[i] @ z[i] / (p[i].norm() * z[i].norm())).detach()) for i in range(4)]
    assert negative_cosine(p, z).item() == pytest.approx(-sum(cos) / 4, rel=1e-5)
    assert byol_loss(p, z).item() == pytest.approx(sum(2 - 2 * c for c in cos) / 4, rel=1e-5)
    (negative_cosine(p, z) + byol_loss(p, z)).backward()
    assert z.grad is None and p.grad is not None  # the target side is stop-gradient in both


def test_reco_global_and_local_match_their_formulas() -> None:
    from training.losses import reco_global, reco_local

    q, k, queue = _unit(3, 8, seed=11), _unit(3, 8, seed=12), _unit(6, 8, seed=13)
    target = torch.softmax(k @ queue.T / 0.04, dim=1)
    student = torch.log_softmax(q @ queue.T / 0.1, dim=1)
    assert reco_global(q, k, queue).item() == pytest.approx(float(-(target * student).sum(1).mean()), rel=1e-5)
    partner, lam = torch.tensor([1, 2, 0]), 0.7
    mixed_target = F.normalize(lam * k + (1 - lam) * k[partner], dim=1)
    expected = float((1 - (q * mixed_target).sum(1)).mean())
    assert reco_local(q, k, partner, lam).item() == pytest.approx(expected, rel=1e-5)
