"""Shared pieces of the test suite: a tiny model configuration, a one-thread fixture, hypothesis profiles."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

#: Hypothesis profiles. ``ci`` draws the same examples on every run (``derandomize``) and keeps no example
#: database, so a red CI run is one that anyone can repeat; ``dev`` explores new examples each run.
#: ``ci`` is loaded when ``CI`` is set (``.ci/run`` sets it, as most CI services do), else ``dev``;
#: ``HYPOTHESIS_PROFILE`` chooses either explicitly.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

#: Configuration fields of a model small enough to train a few steps in well under a second.
# embed_dtype and train_dtype float32: an untrained tiny model's embeddings differ in their last bits, which
# bfloat16 (chosen by "auto" on processors with AMX) rounds away; the pipeline and training tests must not depend
# on the machine's processor (tests/test_precision.py tests bfloat16 itself)
TINY = dict(encoder_channels=[4, 4, 4, 4], decoder_channels=[4, 4, 4, 4], hidden=8, gyro_channels=8,
            n_samples=2, batch_size=4, kmeans_n_init=1, embed_dtype="float32", train_dtype="float32")


def tiny_yaml(**extra) -> str:
    """``TINY`` (plus ``extra`` fields) as the YAML that ``hyperseg train --config`` reads."""
    return "".join(f"{k}: {v}\n" for k, v in {**TINY, **extra}.items())


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the tiny models gain nothing from more, and a busy 2-core machine loses much."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def clusters_asked(monkeypatch) -> list[int]:
    """The numbers of clusters ``hyperseg.segment.level_labels`` is asked for, in call order (it still runs)."""
    import hyperseg.segment as S

    asked: list[int] = []
    real = S.level_labels

    def spy(points, n_clusters, *args, **kwargs):
        asked.append(n_clusters)
        return real(points, n_clusters, *args, **kwargs)

    monkeypatch.setattr(S, "level_labels", spy)
    return asked
