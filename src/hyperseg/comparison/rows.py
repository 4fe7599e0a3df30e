"""What each row of the benchmark table runs.

Model rows are the paper's Table 2 ablations (paper.md section 3), expressed as
configuration switches of one model, plus a 3D convolutional autoencoder with
k-means on its latents (Nalepa et al. 2020 style: the same encoder and decoder,
a Euclidean latent, no KL term and no triplet loss). Classical rows name a
function of :mod:`hyperseg.comparison.baselines`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One method of the table.

    ``kind``: ``"model"`` (trained per seed with ``overrides`` on top of the
    profile's configuration) or ``"classical"`` (``baseline`` names a function
    in :data:`hyperseg.comparison.baselines.BASELINES`). ``nested``: hierarchy
    methods (``Config.hierarchy``) also reported from the same embeddings, each
    as its own row named ``"{method}, nested ({name})"``.
    """

    method: str
    kind: str
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    nested: tuple[str, ...] = ()


_EUCLID = {"latent": "euclidean", "decoder_input": "linear"}
_HYPER_LINEAR = {"latent": "hyperbolic", "decoder_input": "linear"}
_HYPER_GYRO = {"latent": "hyperbolic", "decoder_input": "gyroplane"}

FULL_MODEL = "hyperbolic + gyroplane conv + triplet"

ROWS: tuple[Row, ...] = (
    Row("Euclidean base", "model", {**_EUCLID, "triplet": False}),
    Row("Euclidean + triplet", "model", {**_EUCLID, "triplet": True}),
    Row("hyperbolic base", "model", {**_HYPER_LINEAR, "triplet": False}),
    Row("hyperbolic + gyroplane conv", "model", {**_HYPER_GYRO, "triplet": False}),
    Row("hyperbolic + triplet", "model", {**_HYPER_LINEAR, "triplet": True}),
    Row(FULL_MODEL, "model", {**_HYPER_GYRO, "triplet": True}, nested=("divisive", "agglomerative")),
    Row("3D conv autoencoder + k-means", "model",
        {**_EUCLID, "triplet": False, "kl_weight": 0.0, "n_samples": 1, "latent_dim": 8}),
    Row("k-means on intensity", "classical", baseline="k-means on intensity"),
    Row("Gaussian mixture", "classical", baseline="Gaussian mixture"),
    Row("k-means on local mean + std", "classical", baseline="k-means on local mean + std"),
    Row("multi-Otsu", "classical", baseline="multi-Otsu"),
    Row("SLIC + k-means", "classical", baseline="SLIC + k-means"),
    Row("k-means on local mean + std + Potts", "classical", baseline="k-means on local mean + std + Potts"),
    Row("FAST-like (mixture + Potts in mask)", "classical", baseline="FAST-like (mixture + Potts in mask)"),
    Row("ANTs Atropos", "classical", baseline="ANTs Atropos"),
)


def find_rows(names: list[str] | None) -> list[Row]:
    """The rows called ``names`` (all rows for ``None``); a clear error for an unknown name."""
    if not names:
        return list(ROWS)
    by_name = {r.method: r for r in ROWS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown benchmark rows {unknown}; choose from {list(by_name)}")
    return [by_name[n] for n in names]
