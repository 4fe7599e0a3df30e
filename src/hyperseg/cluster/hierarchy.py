"""Hierarchy-consistent clustering: label maps that nest, one tree of segments.

The paper clusters each level on its own, so the level-(n+1) clusters need
not lie inside the level-n ones. Here the requested numbers of clusters
``K_1 < K_2 < ...`` are produced as one tree, so that every cluster of a finer
level is a subset of exactly one cluster of each coarser level. Two ways
(``Config.hierarchy``, one of :data:`hyperseg.config.HIERARCHIES` besides
``"independent"``). Every level is cut from k-means (its estimators come from
:func:`hyperseg.cluster.make_clusterer`), whatever ``Config.clustering`` and
``Config.level_clustering`` say; ``Config.validate`` refuses a nested hierarchy
with another method, except the untouched default ``level_clustering``:

``"divisive"`` (top-down, bisecting k-means)
    k-means with ``K_1`` clusters; then, until there are ``K_2`` clusters,
    the cluster whose split into two by 2-means lowers the total inertia the
    most is split; and so on for ``K_3``, ... The coarsest level is exactly
    the independent k-means of ``K_1`` clusters.

``"agglomerative"`` (bottom-up, Ward linkage on Frechet means)
    k-means with ``K_n`` clusters (the finest level); then the pair of
    clusters ``(a, b)`` with the smallest Ward cost
    ``n_a n_b / (n_a + n_b) * d(m_a, m_b)^2`` is merged, repeatedly, where
    ``m`` is a cluster's Frechet mean (arithmetic mean for the Euclidean
    latent) and ``d`` the Poincare (Euclidean) distance; the merged cluster's
    mean is recomputed from its points. In flat space this cost is exactly
    the increase of the within-cluster sum of squares (Ward 1963); in the ball
    it is that formula with the geodesic distance.

Both fit on at most ``sample_size`` points (drawn by
:func:`hyperseg.cluster._validation.subsample`) and then label every point by the
tree (``fit`` stores it, ``predict`` applies it), so the nesting holds for all voxels, not only the sample: the
divisive tree sends a point down from the root, at each split to the nearer
child centroid; the agglomerative one labels a point by its nearest finest
centroid and maps that cluster up through the merges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..config import LATENTS, TREE_HIERARCHIES
from ..geometry.poincare import pairwise_dist
from . import dispatch
from ._base import Estimator
from ._validation import CURVATURE, Integer, Levels, OneOf, as_points, subsample
from .kmeans import frechet_mean

__all__ = ["NestedClustering", "NESTED"]

#: The nested hierarchies (``Config.hierarchy`` without ``"independent"``).
NESTED = TREE_HIERARCHIES


@dataclass
class _Node:
    centre: np.ndarray  # (d,)
    children: list["_Node"] = field(default_factory=list)


class NestedClustering(Estimator):
    """Nested partitions of points ``(N, d)`` for increasing numbers of clusters.

    Parameters: ``levels`` (numbers of clusters, in any order; duplicates are
    merged), ``method`` (``"divisive"`` or ``"agglomerative"``), ``latent``
    (``"hyperbolic"`` or ``"euclidean"``), ``c`` (curvature magnitude, used
    by the hyperbolic latent), ``n_init``, ``max_iter``, ``sample_size``,
    ``seed``: as in :class:`hyperseg.cluster.HyperbolicKMeans`.

    ``fit(X)`` stores the tree and ``labels_``, ``{K: labels (N,) int64}``;
    ``predict(X)`` labels any points by the tree; ``fit_predict(X)`` is
    ``fit(X).labels_``. For ``K < K'``, every cluster of ``labels[K']`` lies
    inside one cluster of ``labels[K]``. Fitted: ``levels_`` (sorted),
    ``labels_``, and the tree (divisive: ``tree_``, the root, and ``cuts_``,
    ``{K: nodes}``; agglomerative: ``cluster_centers_``, the finest level's
    k-means centres, and ``merges_``, ``{K: (K_finest,) cluster of each finest
    cluster}``).
    """

    _RULES = {"levels": Levels(), "method": OneOf(NESTED), "latent": OneOf(LATENTS), "c": CURVATURE,
              "n_init": Integer(1), "max_iter": Integer(1), "sample_size": Integer(1, optional=True),
              "seed": Integer(0)}

    def __init__(self, levels: Sequence[int], method: str = "divisive", latent: str = "hyperbolic",
                 c: float = 1.0, n_init: int = 4, max_iter: int = 100, sample_size: int | None = 50000,
                 seed: int = 0):
        self.levels = levels
        self.method = method
        self.latent = latent
        self.c = c
        self.n_init = n_init
        self.max_iter = max_iter
        self.sample_size = sample_size
        self.seed = seed
        self._check_params()

    # -- geometry -------------------------------------------------------------------
    def _kmeans(self, k: int, seed: int):
        return dispatch.make_clusterer("kmeans", self.latent, k, c=self.c, n_init=self.n_init,
                                       max_iter=self.max_iter, seed=seed)

    def _dist2(self, X: np.ndarray, C: np.ndarray) -> np.ndarray:
        """Squared distances ``(N, K)`` between points ``(N, d)`` and centres ``(K, d)``."""
        if self.latent == "hyperbolic":
            d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(C), c=self.c).numpy()
            return d * d
        return ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)

    def _mean(self, X: np.ndarray) -> np.ndarray:
        return frechet_mean(X, c=self.c) if self.latent == "hyperbolic" else X.mean(0)

    # -- fitting --------------------------------------------------------------------
    def fit(self, X, y=None) -> "NestedClustering":
        """Build the tree on (a subsample of) ``X`` ``(N, d)`` and label all points; returns ``self``."""
        self._check_params()
        X = as_points(X, type(self).__name__).numpy()
        self.levels_ = sorted({int(k) for k in self.levels})
        if len(X) < self.levels_[-1]:
            raise ValueError(f"{type(self).__name__}: n_samples={len(X)} should be >= the largest level "
                             f"{self.levels_[-1]}; ask for fewer clusters or give more points")
        idx = subsample(len(X), self.sample_size, torch.Generator().manual_seed(int(self.seed)))
        S = X if idx is None else X[idx.numpy()]
        if self.method == "divisive":
            self.tree_, self.cuts_ = self._divisive(S)
        else:
            self.cluster_centers_, self.merges_ = self._agglomerative(S)
        self.n_features_in_ = X.shape[1]
        self.labels_ = self.predict(X)
        return self

    def predict(self, X) -> dict[int, np.ndarray]:
        """Labels ``{K: (N,) int64}`` of points ``X`` ``(N, d)`` by the fitted tree."""
        self._check_fitted("levels_")
        X = as_points(X, type(self).__name__).numpy()
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{type(self).__name__}: X has {X.shape[1]} features but the tree was fitted on "
                             f"{self.n_features_in_}; pass points of the fitted dimension")
        if self.method == "divisive":
            return {k: self._descend(X, cut) for k, cut in self.cuts_.items()}
        finest = self._dist2(X, self.cluster_centers_).argmin(1)
        return {k: m[finest] for k, m in self.merges_.items()}

    def _divisive(self, S: np.ndarray) -> tuple[_Node, dict[int, list[_Node]]]:
        km = self._kmeans(self.levels_[0], self.seed).fit(S)
        root = _Node(centre=np.zeros(S.shape[1]))
        root.children = [_Node(centre=c) for c in km.cluster_centers_]
        leaves: list[tuple[_Node, np.ndarray]] = [(n, S[km.labels_ == i]) for i, n in enumerate(root.children)]
        cuts = {self.levels_[0]: [n for n, _ in leaves]}
        seed = self.seed
        for k in self.levels_[1:]:
            while len(leaves) < k:
                best = None
                for i, (node, pts) in enumerate(leaves):
                    if len(pts) < 2 or len(np.unique(pts, axis=0)) < 2:
                        continue
                    seed += 1
                    two = self._kmeans(2, seed).fit(pts)
                    gain = self._dist2(pts, node.centre[None]).sum() - two.inertia_
                    if best is None or gain > best[0]:
                        best = (gain, i, two, pts)
                if best is None:
                    raise ValueError(f"{type(self).__name__}: cannot split the points into {k} distinct "
                                     "clusters; ask for fewer clusters")
                _, i, two, pts = best
                node = leaves[i][0]
                node.children = [_Node(centre=c) for c in two.cluster_centers_]
                leaves[i:i + 1] = [(ch, pts[two.labels_ == j]) for j, ch in enumerate(node.children)]
            cuts[k] = [n for n, _ in leaves]
        return root, cuts

    def _descend(self, X: np.ndarray, cut: list[_Node]) -> np.ndarray:
        """Label points by walking down the tree from ``tree_`` to the nodes of ``cut``."""
        label = {id(n): i for i, n in enumerate(cut)}
        out = np.empty(len(X), dtype=np.int64)

        def walk(node: _Node, idx: np.ndarray) -> None:
            if id(node) in label:
                out[idx] = label[id(node)]
                return
            C = np.stack([ch.centre for ch in node.children])
            nearest = self._dist2(X[idx], C).argmin(1)
            for j, ch in enumerate(node.children):
                walk(ch, idx[nearest == j])

        walk(self.tree_, np.arange(len(X)))
        return out

    def _agglomerative(self, S: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Finest k-means centres ``(K_f, d)`` and, per level, the cluster ``(K_f,)`` of each finest cluster."""
        kf = self.levels_[-1]
        km = self._kmeans(kf, self.seed).fit(S)
        groups = {i: S[km.labels_ == i] for i in range(kf)}
        means = {i: km.cluster_centers_[i] for i in range(kf)}
        parent = np.arange(kf)  # finest cluster -> current cluster id
        maps = {kf: parent.copy()}
        next_id = kf
        for k in sorted(self.levels_[:-1], reverse=True):
            while len(groups) > k:
                ids = list(groups)
                C = np.stack([means[i] for i in ids])
                n = np.array([len(groups[i]) for i in ids], dtype=np.float64)
                cost = self._dist2(C, C) * (n[:, None] * n[None, :]) / (n[:, None] + n[None, :])
                np.fill_diagonal(cost, np.inf)
                a, b = np.unravel_index(np.argmin(cost), cost.shape)
                ia, ib = ids[a], ids[b]
                merged = np.concatenate([groups.pop(ia), groups.pop(ib)])
                means.pop(ia), means.pop(ib)
                groups[next_id], means[next_id] = merged, self._mean(merged)
                parent[(parent == ia) | (parent == ib)] = next_id
                next_id += 1
            maps[k] = parent.copy()
        dense = {k: np.unique(m, return_inverse=True)[1].astype(np.int64) for k, m in maps.items()}  # ids -> 0..k-1
        return km.cluster_centers_, dense
