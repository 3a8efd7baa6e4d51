"""The engine core's batching decisions, without threads or tensors: grouping, order, fairness, deadlines, bounds."""

from __future__ import annotations

import pytest
import torch

from engine.errors import InvalidInputError, QueueFullError
from engine.runtime import Batcher, EnginePolicy, Request, ShapeClass

FULL = ShapeClass(frames=16, latent_size=32, guidance_scale=1.5, steps=20, deepcache_interval=3, eta=0.0,
                  dtype=torch.float32)
TAIL = ShapeClass(frames=4, latent_size=32, guidance_scale=1.5, steps=20, deepcache_interval=3, eta=0.0,
                  dtype=torch.float32)
NO_CFG = ShapeClass(frames=16, latent_size=32, guidance_scale=1.0, steps=20, deepcache_interval=3, eta=0.0,
                    dtype=torch.float32)


def req(job, shape=FULL, t=0.0, deadline=None, name=None):
    r = Request(job=job, shape=shape, work=None, enqueued=t, deadline=deadline)
    r.name = name or f"{job}"
    return r


def names(batch):
    return [r.name for r in batch]


def batcher(max_batch=4, wait=0.0, capacity=64, **kw):
    return Batcher(max_batch=max_batch, max_wait_s=wait, capacity=capacity, **kw)


def test_only_one_shape_class_per_batch_and_at_most_max_batch():
    b = batcher(max_batch=2)
    for r in (req("a"), req("b", TAIL), req("c"), req("d"), req("e", NO_CFG)):
        b.add(r)
    first = b.next_batch(0.0)
    assert names(first) == ["a", "c"] and {r.shape for r in first} == {FULL}
    # a and c went to the back of the line: b leads with its tail, which nobody shares
    assert names(b.next_batch(0.0)) == ["b"]
    assert names(b.next_batch(0.0)) == ["d"]
    assert names(b.next_batch(0.0)) == ["e"]
    assert b.next_batch(0.0) == [] and len(b) == 0


def test_a_jobs_chunks_run_in_order_and_alone_unless_same_job_batching():
    b = batcher()
    for k in range(3):
        b.add(req("job", name=f"chunk{k}"))
    b.add(req("job", TAIL, name="tail"))
    assert [names(b.next_batch(0.0)) for _ in range(4)] == [["chunk0"], ["chunk1"], ["chunk2"], ["tail"]]

    b = batcher(same_job_batching=True)
    for k in range(3):
        b.add(req("job", name=f"chunk{k}"))
    b.add(req("job", TAIL, name="tail"))  # the tail is its own shape class: never with the full chunks
    b.add(req("other", name="x"))
    assert names(b.next_batch(0.0)) == ["chunk0", "x", "chunk1", "chunk2"]  # one per job per pass, in order
    assert names(b.next_batch(0.0)) == ["tail"]


def test_a_later_chunk_never_overtakes_an_earlier_one_of_another_shape():
    b = batcher(same_job_batching=True)
    b.add(req("a", TAIL, name="a-tail"))
    b.add(req("a", name="a-next"))
    b.add(req("b", name="b0"))
    assert names(b.next_batch(0.0)) == ["a-tail"]  # a's full chunk waits behind its tail
    assert names(b.next_batch(0.0)) == ["b0", "a-next"]


def test_round_robin_fairness_between_jobs():
    b = batcher(max_batch=1)
    for k in range(3):
        for job in "abc":
            b.add(req(job, name=f"{job}{k}"))
    order = [names(b.next_batch(0.0))[0] for _ in range(9)]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]

    b = batcher(max_batch=2)
    for k in range(2):
        for job in "abc":
            b.add(req(job, name=f"{job}{k}"))
    batches = [names(b.next_batch(0.0)) for _ in range(3)]
    assert batches == [["a0", "b0"], ["c0", "a1"], ["b1", "c1"]]  # every job served once per two batches


def test_a_lone_job_of_another_shape_is_not_starved():
    b = batcher(max_batch=2)
    b.add(req("lone", NO_CFG, name="lone"))
    for job in "xyz":
        b.add(req(job, name=job))
    b.add(req("x", name="x2"))
    assert names(b.next_batch(0.0)) == ["lone"]  # first in line
    for job in "yz":
        b.add(req(job, name=f"{job}2"))
    b.add(req("lone", NO_CFG, name="lone2"))
    served = [names(b.next_batch(0.0)) for _ in range(4)]
    assert ["lone2"] in served[:3]


def test_partial_batches_wait_for_max_wait_and_full_ones_do_not():
    b = batcher(max_batch=2, wait=0.010)
    b.add(req("a", t=1.000))
    assert b.next_batch(1.005) == [] and b.wait_s(1.005) == pytest.approx(0.005)
    assert names(b.next_batch(1.011)) == ["a"]
    b.add(req("a", t=2.0))
    b.add(req("b", t=2.001))
    assert names(b.next_batch(2.001)) == ["a", "b"]  # full: no waiting
    assert b.wait_s(3.0) is None


def test_expired_requests_are_taken_out_before_batching():
    b = batcher()
    b.add(req("a", deadline=1.0, name="late"))
    b.add(req("a", deadline=5.0, name="on-time"))
    b.add(req("b", name="no-deadline"))
    assert names(b.pop_expired(2.0)) == ["late"]
    assert b.pop_expired(2.0) == []
    assert names(b.next_batch(2.0)) == ["on-time", "no-deadline"]


def test_a_full_queue_refuses_at_once_and_cancelling_frees_slots():
    b = batcher(capacity=3)
    for k in range(3):
        b.add(req("a", name=f"a{k}"))
    with pytest.raises(QueueFullError, match="expected fewer than 3 chunks waiting, found 3"):
        b.add(req("b"))
    assert names(b.remove_job("a")) == ["a0", "a1", "a2"] and len(b) == 0
    b.add(req("b"))
    assert len(b) == 1 and names(b.drain()) == ["b"] and len(b) == 0


def test_unet_row_cap_counts_cfg_rows():
    b = batcher(max_batch=4, max_rows=4)  # e.g. a TensorRT profile built for batch 4
    for job in "abc":
        b.add(req(job, name=job))
    assert names(b.next_batch(0.0)) == ["a", "b"]  # CFG: 2 rows each
    for job in "xyz":
        b.add(req(job, NO_CFG, name=job))
    assert names(b.next_batch(0.0)) == ["c"]
    assert names(b.next_batch(0.0)) == ["x", "y", "z"]


def test_policy_is_validated():
    assert EnginePolicy().max_wait_s == 0.0
    for bad in (dict(max_batch=0), dict(max_wait_ms=-1), dict(max_vae_rows=0), dict(max_queued_chunks=2),
                dict(prefetch_chunks=0)):
        with pytest.raises(InvalidInputError, match="EnginePolicy"):
            EnginePolicy(**bad)
