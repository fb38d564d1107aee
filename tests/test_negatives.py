import math

import torch
from conftest import TEST_DEVICE
from torch.nn import functional as F

from contrastlab.negatives import KeyQueue, infonce_logits, infonce_loss


def test_infonce_full_queue_of_identical_keys():
    # every logit equals the positive one: loss = -log(1 / (K + 1)) whatever T is
    k = F.normalize(torch.randn(3, 8), dim=1)
    q = k.clone()
    K = 50
    queue = k[:1].expand(K, 8)
    loss = infonce_loss(infonce_logits(q[:1], k[:1], queue), temperature=0.2)
    assert math.isclose(loss.item(), math.log(K + 1), rel_tol=1e-6)


def test_infonce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    T = 0.5
    logits = infonce_logits(q, k, negatives)
    assert torch.equal(logits, torch.tensor([[0.6, 0.0, -1.0]]))
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    assert math.isclose(infonce_loss(logits, T).item(), expected, rel_tol=1e-6)
    extra = torch.tensor([[0.9]])
    with_extra = infonce_loss(infonce_logits(q, k, negatives, extra), T).item()
    assert math.isclose(
        with_extra,
        expected + math.log(1 + math.exp(1.8) / (math.exp(1.2) + 1 + math.exp(-2.0))),
        rel_tol=1e-6,
    )


def test_queue_initial_rows_are_unit_vectors():
    queue = KeyQueue(100, 16, seed=1)
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(100))
    assert (queue.indices == -1).all() and queue.pointer.item() == 0


def test_queue_wraps_around_with_batch_not_dividing_size():
    queue = KeyQueue(5, 2).to(TEST_DEVICE)
    pushed = []
    for step in range(4):  # 3 keys per step into 5 slots
        keys = torch.full((3, 2), float(step)) + torch.arange(3.0).view(3, 1) / 10
        idx = torch.arange(3) + 10 * step
        queue.push(keys.to(TEST_DEVICE), idx.to(TEST_DEVICE))
        pushed += idx.tolist()
    # 12 keys written in order into a ring of 5: slot s holds key number s + 10 (mod 5 layout)
    expected = {s: pushed[max(i for i in range(12) if i % 5 == s)] for s in range(5)}
    assert queue.indices.tolist() == [expected[s] for s in range(5)]
    assert queue.pointer.item() == 12 % 5


def test_queue_push_larger_than_queue_keeps_newest():
    queue = KeyQueue(4, 1).to(TEST_DEVICE)
    queue.push(
        torch.arange(6.0, device=TEST_DEVICE).view(6, 1), torch.arange(6, device=TEST_DEVICE)
    )
    assert sorted(queue.indices.tolist()) == [2, 3, 4, 5]
    # the next write lands on the oldest survivor (index 2)
    oldest = queue.indices.tolist().index(2)
    assert queue.pointer.item() == oldest


def test_queue_is_checkpoint_state():
    queue = KeyQueue(4, 3)
    queue.push(torch.ones(2, 3), torch.tensor([7, 8]))
    state = queue.state_dict()
    assert set(state) == {"keys", "indices", "labels", "pointer"}
    restored = KeyQueue(4, 3, seed=9)
    restored.load_state_dict(state)
    assert torch.equal(restored.keys, queue.keys) and restored.pointer.item() == 2
