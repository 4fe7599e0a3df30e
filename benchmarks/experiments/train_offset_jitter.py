"""Experiment (session 7): train with a random intensity offset on every triplet patch.

    python benchmarks/experiments/train_offset_jitter.py SIGMA train -i DATA/train -o RUN --config CFG.yaml

Runs ``hyperseg train`` (every argument after SIGMA is passed on) with the
triplet sampler wrapped: each parent, positive and negative patch gets its own
offset ``sigma * std(batch of parents) * N(0, 1)``, drawn from the sampler's
generator. Two patches of one region then differ in mean intensity, so the
triplet loss can only pull them together through what the offset leaves alone
(texture, contrast). Not yet a configuration field: BENCHMARKS.md, section
"The irregular bar", has what it did on validation volumes.
"""
from __future__ import annotations

import sys

import torch

from hyperseg.cli import main
from hyperseg.data.sampler import TripletSampler


def with_offsets(sample, sigma: float):
    """``TripletSampler.sample`` with an independent offset added to every returned patch."""

    def jittered(self, batch_size, generator, return_boxes=False):
        out = sample(self, batch_size, generator, return_boxes)
        patches, rest = (out[:3], out[3:]) if return_boxes else (out, ())
        scale = sigma * patches[0].std()
        shifted = tuple(p + scale * torch.randn((p.shape[0],) + (1,) * (p.ndim - 1), generator=generator).to(p)
                        for p in patches)
        return shifted + tuple(rest)

    return jittered


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    TripletSampler.sample = with_offsets(TripletSampler.sample, float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
