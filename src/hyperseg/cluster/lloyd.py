"""The Lloyd loop shared by k-means and k-medians, in the ball and in R^d.

The estimators accept numpy arrays or torch tensors ``(N, d)`` of any real
dtype and compute in float64 torch on the CPU with no Python loop over
points. The geometry comes from a point set (:mod:`hyperseg.cluster.points`);
the loop is the same for all four.

Algorithm
---------
1. **Seeding**: greedy k-means++ (Arthur & Vassilvitskii 2007, with the
   ``2 + log K`` local trials of scikit-learn): the first centroid is a
   uniformly drawn point, each next one is drawn with probability
   proportional to ``d ** power`` (``power`` 2 for k-means, 1 for k-medians;
   Poincare or Euclidean distance) to the nearest centroid so far, keeping
   the best of the trials. ``init="random"`` draws K distinct points instead
   (the reference code's choice).
2. **Lloyd iterations**: assign every point to its nearest centroid; an
   empty cluster is re-seeded at the point farthest from its own centroid;
   each centroid becomes the centre of its points (the point set's
   ``update``). Stop when every centroid moved by less than ``tol`` (in the
   geometry's own distance) or after ``max_iter`` iterations. A last
   assignment makes ``labels_`` agree with ``predict`` on the data.
3. The best of ``n_init`` seeded runs (lowest objective
   ``sum_i d(x_i, m_{l_i}) ** power``) is kept.

All randomness comes from one ``torch.Generator`` seeded with ``seed``
(first the subsample, :func:`hyperseg.cluster._validation.subsample`, then
the seeding of every run), so equal seeds give equal results.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from ._base import Estimator
from ._validation import CURVATURE, DTYPE, Integer, OneOf, Real, as_points, subsample

__all__ = ["LloydKMeans", "InBall", "torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


class LloydKMeans(Estimator):
    """k-means++ seeding + Lloyd iterations over a point set (module docstring).

    A subclass says how to build the point set (``_points``: validate and
    map input to internal coordinates), how to map centroids back
    (``_export``), the factor from internal to user distances (``_unit``),
    how many centre-update steps one Lloyd iteration takes (``_steps``) and
    the power of the distance in the objective (``_power``).
    """

    _unit = 1.0
    _steps = 1
    _power = 2  # the objective is sum_i d(x_i, m_{l_i}) ** _power (2: k-means, 1: k-medians)
    _RULES = {"n_clusters": Integer(1), "n_init": Integer(1), "max_iter": Integer(1), "tol": Real(0.0),
              "init": OneOf(("k-means++", "random")), "sample_size": Integer(1, optional=True),
              "seed": Integer(0), "n_threads": Integer(1, optional=True)}
    _AT_LEAST = (("sample_size", "n_clusters"),)

    # -- hooks ------------------------------------------------------------------
    def _points(self, X, name: str = "X"):
        raise NotImplementedError

    def _export(self, C: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    # -- algorithm --------------------------------------------------------------
    def _seed(self, pts, gen: torch.Generator) -> torch.Tensor:
        """k-means++ (greedy, ``2 + log K`` trials per centroid) or K random distinct points."""
        z, K = pts.z, self.n_clusters
        N = z.shape[0]
        if self.init == "random":
            return z[torch.randperm(N, generator=gen)[:K]].clone()
        # Candidates are compared through a cheap increasing "key" of the
        # distance (cosh d - 1 in the ball); squared distances come from the
        # minimum key, one transcendental pass per round.
        n_trials = 2 + int(math.log(K))
        idx = [int(torch.randint(N, (1,), generator=gen))]
        key = pts.pairwise_key(z[idx])[0]  # key of the nearest chosen centroid, (N,)
        w = self._seed_weight(pts.key_to_sq(key))  # its distance ** _power
        for _ in range(1, K):
            cum = torch.cumsum(w, 0)
            r = torch.rand(n_trials, generator=gen, dtype=DTYPE) * cum[-1]
            cand = torch.searchsorted(cum, r, right=True).clamp_max(N - 1)  # D^power sampling
            ck = torch.minimum(pts.pairwise_key(z[cand]), key)  # (n_trials, N)
            cw = self._seed_weight(pts.key_to_sq(ck))
            best = int(cw.sum(1).argmin())  # greedy: the trial with the lowest potential
            key, w = ck[best], cw[best]
            idx.append(int(cand[best]))
        return z[idx].clone()

    def _seed_weight(self, sq: torch.Tensor) -> torch.Tensor:
        """Seeding weight of each point from its squared distance: ``d ** _power``."""
        return sq if self._power == 2 else sq.sqrt() ** self._power

    def _objective(self, pts, C: torch.Tensor, labels: torch.Tensor) -> float:
        """``sum_i d(x_i, C[labels_i]) ** _power`` in the user's distance unit."""
        return ((pts.rowdist(C, labels) * self._unit) ** self._power).sum().item()

    def _reseed_empty(self, pts, labels: torch.Tensor, C: torch.Tensor) -> bool:
        """Move each empty cluster's centroid onto a point farthest from its own centroid (in place).

        Returns whether anything moved.
        """
        empty = (torch.bincount(labels, minlength=C.shape[0]) == 0).nonzero()[:, 0]
        if len(empty) == 0:
            return False
        far = pts.rowdist(C, labels).topk(len(empty)).indices
        C[empty] = pts.z[far]
        labels[far] = empty
        return True

    def _lloyd(self, pts, gen: torch.Generator):
        C = self._seed(pts, gen)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            labels, delta = pts.nearest(C)
            if self._reseed_empty(pts, labels, C):
                delta = None
            C_new, _ = pts.update(labels, C, self._steps, delta=delta)
            moved = pts.shift(C, C_new).max().item() * self._unit
            C = C_new
            if moved < self.tol or moved == 0.0:
                break
        labels = pts.assign(C)
        return C, labels, self._objective(pts, C, labels), n_iter

    def fit(self, X, y=None):
        """Fit on ``X`` ``(N, d)`` (numpy or torch, any real dtype). Returns ``self``.

        With ``sample_size``, the centroids are fitted on a random subset of
        at most ``sample_size`` points (drawn with ``seed``); ``labels_`` and
        ``inertia_`` then cover *all* points, assigned to the nearest
        centroid exactly as ``predict`` does.
        """
        self._check_params()
        with torch_threads(self.n_threads):
            return self._fit(X)

    def _fit(self, X):
        pts = self._points(X)
        N = pts.z.shape[0]
        if N < self.n_clusters:
            raise ValueError(f"{type(self).__name__}: n_samples={N} should be >= n_clusters={self.n_clusters}; "
                             "ask for fewer clusters or give more points")
        gen = torch.Generator().manual_seed(int(self.seed))
        idx = subsample(N, self.sample_size, gen)
        fit_pts = pts if idx is None else pts.subset(idx)
        best = None
        for _ in range(self.n_init):
            run = self._lloyd(fit_pts, gen)
            if best is None or run[2] < best[2]:
                best = run
        C, labels, inertia, n_iter = best
        if fit_pts is not pts:
            labels = pts.assign(C)
            inertia = self._objective(pts, C, labels)
        self._centers = C
        self.cluster_centers_ = self._export(C)
        self.labels_ = labels.numpy().astype(np.int64)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.n_features_in_ = int(pts.z.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centroid for each point of ``X`` ``(N, d)``: int64 ``(N,)``."""
        self._check_fitted("cluster_centers_")
        with torch_threads(self.n_threads):
            pts = self._points(X)
            if pts.z.shape[1] != self.n_features_in_:
                raise ValueError(f"{type(self).__name__}: X has {pts.z.shape[1]} features but the model was "
                                 f"fitted on {self.n_features_in_}; pass points of the fitted dimension")
            return pts.assign(self._centers).numpy().astype(np.int64)


class InBall:
    """Mixin of the hyperbolic Lloyd estimators: curvature ``c``, internal coordinates in the unit ball.

    Points are stored as ``z = sqrt(c) x``, so distances computed there scale by ``1/sqrt(c)``.
    """

    c: float
    _BALL_RULES = {"c": CURVATURE}

    @property
    def _unit(self) -> float:
        return 1.0 / math.sqrt(self.c)

    def _export(self, C):
        return (C * self._unit).numpy().copy()
