"""Static backend bookkeeping: slot allocation and reuse, segment splits and prefixes, shape buckets."""

import pytest
import torch

from ibtpo.backends.static_store import SegmentStore, SlotPool, batch_buckets, bucket_at_least, ctx_bucket
from ibtpo.core.tree import Tree


def seg(values):
    """A (layers=1, 2, heads=1, tokens, dim=1) segment whose keys hold `values` and values hold their negatives."""
    v = torch.tensor(values, dtype=torch.float32)[None, :, None]
    return torch.stack([v, -v])[None]


def test_slot_pool_takes_lowest_free_and_reuses():
    pool = SlotPool(4)
    assert [pool.take(r) for r in (10, 11, 12)] == [0, 1, 2]
    pool.give(1)
    assert pool.used() == [0, 2] and pool.high_water() == 3 and pool.n_free == 2
    assert pool.take(13) == 1  # the freed low slot comes back first
    pool.move(2, 3)
    assert pool.owner == [10, 13, -1, 12] and pool.take(14) == 2
    with pytest.raises(ValueError):
        pool.give(2) or pool.give(2)
    with pytest.raises(ValueError):
        pool.move(0, 1)  # destination taken


def test_segment_store_split_complete_and_prefix():
    t = Tree(question_id="q", prompt_ids=[1, 2, 3])
    a = t.root.add_child([4, 5, 6, 7], [0.0] * 4, [0.0] * 4)
    store = SegmentStore()
    store.put(t.root, seg([1, 2]))  # prompt minus its last token, as after a prefill
    assert store.prefix(t, t.root) is not None
    assert store.prefix(t, a) is None  # the root is incomplete and not the last piece
    store.complete(t.root, 3, seg([3]))
    store.complete(t.root, 3, seg([99]))  # already complete: no change
    store.put(a, seg([4, 5, 6]))  # the row stopped right after drawing 7: its key/value is missing
    pieces = store.prefix(t, a)
    assert torch.cat(pieces, -2)[0, 0, 0, :, 0].tolist() == [1, 2, 3, 4, 5, 6]
    tail = a.split(2)
    store.split(a, tail, 2)
    assert torch.cat(store.prefix(t, a), -2)[0, 0, 0, :, 0].tolist() == [1, 2, 3, 4]
    assert torch.cat(store.prefix(t, tail), -2)[0, 1, 0, :, 0].tolist() == [-1, -2, -3, -4, -5, -6]
    store.clear()
    assert len(store) == 0


def test_buckets():
    b = batch_buckets(100)
    assert b[:6] == [1, 2, 4, 8, 12, 16] and b[-1] == 100 and b == sorted(b)
    assert bucket_at_least(b, 13) == 16 and bucket_at_least(b, 100) == 100 and bucket_at_least([1, 2], 5) == 2
    assert batch_buckets(1) == [1] and batch_buckets(3) == [1, 2, 3]
    assert ctx_bucket(1, 16, 100) == 16 and ctx_bucket(17, 16, 100) == 32 and ctx_bucket(99, 16, 100) == 100
