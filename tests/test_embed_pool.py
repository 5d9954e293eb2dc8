"""Embedding on several local GPUs through sentence-transformers' multi-process pool, with a fake encoder and a
fake CUDA device count (this machine has no GPU): the pool is used only with more than one CUDA device, gets every
local GPU, returns the same rows in the same order as one process, and is stopped by clear_model_cache."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import hashing_embed
from shed_jax import embed


class FakeEncoder:
    def __init__(self, device):
        self.device = device
        self.pools, self.stopped, self.pool_calls, self.plain_calls = [], [], 0, 0

    def start_multi_process_pool(self, target_devices=None):
        pool = {"devices": list(target_devices)}
        self.pools.append(pool)
        return pool

    def stop_multi_process_pool(self, pool):
        self.stopped.append(pool)

    def encode(self, texts, *, pool=None, batch_size=32, chunk_size=None, normalize_embeddings=True, **kwargs):
        assert normalize_embeddings
        if pool is None:
            self.plain_calls += 1
        else:
            assert pool in self.pools and chunk_size == batch_size
            self.pool_calls += 1
        return hashing_embed(list(texts))


@pytest.fixture
def fake_cuda(monkeypatch):
    import torch

    def set_count(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    yield set_count
    embed._stop_pools()


TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(50)]


def _embed(encoder, monkeypatch):
    monkeypatch.setattr(embed, "_get_model", lambda model, device, dtype="float32": encoder)
    return embed.embed_texts(TEXTS, batch_size=4, progress=False)


def test_two_gpus_use_a_pool_with_the_same_result(fake_cuda, monkeypatch):
    fake_cuda(2)
    pooled = FakeEncoder("cuda:0")
    got = _embed(pooled, monkeypatch)
    np.testing.assert_array_equal(got, hashing_embed(TEXTS))
    assert [p["devices"] for p in pooled.pools] == [["cuda:0", "cuda:1"]]
    assert pooled.pool_calls == 2 and pooled.plain_calls == 0  # 50 texts in steps of 4 x 2 GPUs x 4
    _embed(pooled, monkeypatch)
    assert len(pooled.pools) == 1  # started once per encoder
    embed.clear_model_cache()
    assert pooled.stopped == pooled.pools


@pytest.mark.parametrize("device, n_gpus, env", [("cpu", 0, None), ("cuda:0", 1, None), ("cuda:0", 2, "0")])
def test_cpu_one_gpu_or_pool_off_keep_one_process(fake_cuda, monkeypatch, device, n_gpus, env):
    fake_cuda(n_gpus)
    if env is not None:
        monkeypatch.setenv("SHED_EMBED_POOL", env)
    encoder = FakeEncoder(device)
    np.testing.assert_array_equal(_embed(encoder, monkeypatch), hashing_embed(TEXTS))
    assert encoder.pools == [] and encoder.pool_calls == 0 and encoder.plain_calls == 13
