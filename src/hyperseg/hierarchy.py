"""Hierarchy-consistent clustering: label maps that nest, one tree of segments.

The paper clusters each level on its own, so the level-(n+1) clusters need
not lie inside the level-n ones. Here the requested numbers of clusters
``K_1 < K_2 < ...`` are produced as one tree, so that every cluster of a finer
level is a subset of exactly one cluster of each coarser level. Two ways
(``Config.hierarchy``):

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

Both fit on at most ``sample_size`` points and then label every point by the
tree, so the nesting holds for all voxels, not only the sample: the
divisive tree sends a point down from the root, at each split to the nearer
child centroid; the agglomerative one labels a point by its nearest finest
centroid and maps that cluster up through the merges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .cluster import EuclideanKMeans, HyperbolicKMeans, frechet_mean
from .geometry.poincare import pairwise_dist

METHODS = ("independent", "divisive", "agglomerative")


@dataclass
class _Node:
    centre: np.ndarray  # (d,)
    children: list["_Node"] = field(default_factory=list)
    label: int = -1  # leaf index at the current depth of the cut


class NestedClustering:
    """Nested partitions of points ``(N, d)`` for increasing numbers of clusters.

    Parameters: ``levels`` (strictly increasing numbers of clusters after
    sorting), ``method`` (``"divisive"`` or ``"agglomerative"``), ``latent``
    (``"hyperbolic"`` or ``"euclidean"``), ``c`` (curvature magnitude),
    ``n_init``, ``max_iter``, ``sample_size``, ``seed``: as in
    :class:`hyperseg.cluster.HyperbolicKMeans`.

    ``fit_predict(X)`` returns ``{K: labels (N,) int64}``; for ``K < K'``,
    every cluster of ``labels[K']`` lies inside one cluster of ``labels[K]``.
    """

    def __init__(self, levels: Sequence[int], method: str = "divisive", latent: str = "hyperbolic",
                 c: float = 1.0, n_init: int = 4, max_iter: int = 100, sample_size: int | None = 50000,
                 seed: int = 0):
        ks = sorted({int(k) for k in levels})
        if not ks or ks[0] < 1:
            raise ValueError(f"levels must be positive numbers of clusters, got {list(levels)}")
        if method not in ("divisive", "agglomerative"):
            raise ValueError(f"method must be 'divisive' or 'agglomerative', got {method!r}")
        if latent not in ("hyperbolic", "euclidean"):
            raise ValueError(f"latent must be 'hyperbolic' or 'euclidean', got {latent!r}")
        self.levels, self.method, self.latent, self.c = ks, method, latent, c
        self.n_init, self.max_iter, self.sample_size, self.seed = n_init, max_iter, sample_size, seed

    # -- geometry -------------------------------------------------------------------
    def _kmeans(self, k: int, seed: int):
        kw = dict(n_clusters=k, n_init=self.n_init, max_iter=self.max_iter, seed=seed)
        return HyperbolicKMeans(c=self.c, **kw) if self.latent == "hyperbolic" else EuclideanKMeans(**kw)

    def _dist2(self, X: np.ndarray, C: np.ndarray) -> np.ndarray:
        """Squared distances ``(N, K)`` between points ``(N, d)`` and centres ``(K, d)``."""
        if self.latent == "hyperbolic":
            d = pairwise_dist(torch.from_numpy(X), torch.from_numpy(C), c=self.c).numpy()
            return d * d
        return ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)

    def _mean(self, X: np.ndarray) -> np.ndarray:
        return frechet_mean(X, c=self.c) if self.latent == "hyperbolic" else X.mean(0)

    # -- fitting --------------------------------------------------------------------
    def fit_predict(self, X: np.ndarray) -> dict[int, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) < self.levels[-1]:
            raise ValueError(f"need at least {self.levels[-1]} points of shape (N, d), got {X.shape}")
        rng = np.random.default_rng(self.seed)
        S = X[rng.choice(len(X), self.sample_size, replace=False)] if (
            self.sample_size and len(X) > self.sample_size) else X
        if self.method == "divisive":
            return self._divisive(S, X)
        return self._agglomerative(S, X)

    def _divisive(self, S: np.ndarray, X: np.ndarray) -> dict[int, np.ndarray]:
        km = self._kmeans(self.levels[0], self.seed).fit(S)
        root = _Node(centre=np.zeros(S.shape[1]))
        root.children = [_Node(centre=c) for c in km.cluster_centers_]
        leaves: list[tuple[_Node, np.ndarray]] = [(n, S[km.labels_ == i]) for i, n in enumerate(root.children)]
        cuts = {self.levels[0]: [n for n, _ in leaves]}
        seed = self.seed
        for k in self.levels[1:]:
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
                    raise ValueError(f"cannot split the points into {k} distinct clusters")
                _, i, two, pts = best
                node = leaves[i][0]
                node.children = [_Node(centre=c) for c in two.cluster_centers_]
                leaves[i:i + 1] = [(ch, pts[two.labels_ == j]) for j, ch in enumerate(node.children)]
            cuts[k] = [n for n, _ in leaves]
        return {k: self._descend(root, X, cut) for k, cut in cuts.items()}

    def _descend(self, root: _Node, X: np.ndarray, cut: list[_Node]) -> np.ndarray:
        """Label points by walking down the tree to the nodes of ``cut``."""
        for i, n in enumerate(cut):
            n.label = i
        in_cut = {id(n) for n in cut}
        out = np.empty(len(X), dtype=np.int64)

        def walk(node: _Node, idx: np.ndarray) -> None:
            if id(node) in in_cut:
                out[idx] = node.label
                return
            C = np.stack([ch.centre for ch in node.children])
            nearest = self._dist2(X[idx], C).argmin(1)
            for j, ch in enumerate(node.children):
                walk(ch, idx[nearest == j])

        walk(root, np.arange(len(X)))
        return out

    def _agglomerative(self, S: np.ndarray, X: np.ndarray) -> dict[int, np.ndarray]:
        kf = self.levels[-1]
        km = self._kmeans(kf, self.seed).fit(S)
        groups = {i: S[km.labels_ == i] for i in range(kf)}
        means = {i: km.cluster_centers_[i] for i in range(kf)}
        parent = np.arange(kf)  # finest cluster -> current cluster id
        maps = {kf: parent.copy()}
        next_id = kf
        for k in sorted(self.levels[:-1], reverse=True):
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
        finest = self._dist2(X, km.cluster_centers_).argmin(1)
        out = {}
        for k, m in maps.items():
            _, dense = np.unique(m, return_inverse=True)  # cluster ids -> 0..k-1
            out[k] = dense[finest]
        return out
