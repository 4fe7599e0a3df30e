"""k-means in the Poincare ball (the paper's segmentation step) and in R^d (ablation).

Both estimators follow the scikit-learn API (``fit``, ``predict``,
``fit_predict``; fitted ``cluster_centers_``, ``labels_``, ``inertia_``,
``n_iter_``), accept numpy arrays or torch tensors ``(N, d)`` of any real
dtype, and compute in float64 torch on the CPU with no Python loop over
points. They share one Lloyd loop (:class:`_LloydKMeans`), run over a point
set that supplies the geometry (:class:`_FlatPoints`: Euclidean distance and
arithmetic means; :class:`_BallPoints`: Poincare distance and Frechet means).

Algorithm (both)
----------------
1. **Seeding**: greedy k-means++ (Arthur & Vassilvitskii 2007, with the
   ``2 + log K`` local trials of scikit-learn): the first centroid is a
   uniformly drawn point, each next one is drawn with probability
   proportional to the *squared* distance (Poincare or Euclidean) to the
   nearest centroid so far, keeping the best of the trials. ``init="random"``
   draws K distinct points instead (the reference code's choice).
2. **Lloyd iterations**: assign every point to its nearest centroid; an
   empty cluster is re-seeded at the point farthest from its own centroid;
   each centroid becomes the mean of its points (Frechet mean in the ball,
   arithmetic mean in R^d). Stop when every centroid moved by less than
   ``tol`` (in the geometry's own distance) or after ``max_iter`` iterations.
   A last assignment makes ``labels_`` agree with ``predict`` on the data.
3. The best of ``n_init`` seeded runs (lowest inertia, the sum of squared
   distances to the assigned centroid) is kept.

All randomness comes from one ``torch.Generator`` seeded with ``seed``, so
equal seeds give equal results.

Frechet mean in the Poincare ball
---------------------------------
The Frechet (Karcher) mean ``argmin_m sum_i d(x_i, m)^2`` is computed with
the fixed-point iteration of Lou et al., "Differentiating through the
Frechet Mean" (ICML 2020; its Poincare-ball algorithm), the algorithm the
paper cites. Setting the gradient to zero gives, for curvature -1 and
``A_i = 1 - |x_i|^2``,

    ``alpha_i = d_i / sinh(d_i)`` (``d_i = d(x_i, m)``, 1 at ``d_i = 0``),
    ``p = sum_i alpha_i (1 + |x_i|^2) / A_i``,  ``b = sum_i alpha_i x_i / A_i``,
    ``m <- 2 b / (p + sqrt(p^2 - 4 |b|^2))``,

where the ``alpha_i`` are evaluated at the current ``m`` (the smaller root of
``|b|^2 s^2 - p s + 1 = 0``, written without cancellation; ``p >= 2|b|`` so it
stays in the ball). Its fixed points are exactly the stationary points of
the Frechet objective, which is strictly convex on the ball (a Hadamard
manifold), and Lou et al. prove that the iteration converges to it; in the flat limit
(points near the origin) one step gives the arithmetic mean. Other
curvatures ``c`` are handled by scaling points by ``sqrt(c)`` first.

All clusters are updated at once: the weights are computed against each
point's own centroid and summed per cluster with ``bincount``. Inside
k-means each Lloyd iteration runs ``frechet_iters`` steps warm-started at the
previous centroid; since the Lloyd loop stops only when no centroid moves by
``tol`` or more, on convergence the centroids are fixed points of this
update to within ``tol`` (Poincare distance), i.e. Frechet means of their
clusters. :func:`frechet_mean` runs the same iteration to its own tolerance.

Assignment uses a monotone surrogate of the Poincare distance: for a fixed
point ``x``, ``d(x, m) = arccosh(1 + 2|x-m|^2 / ((1-|x|^2)(1-|m|^2)))`` is
increasing in ``|x - m|^2 / (1 - |m|^2)``, so the argmin needs only one matrix
product and no ``arccosh``. Distances themselves (inertia, empty clusters,
centroid shifts) use the cancellation-free ``log1p`` form of ``arccosh``.

Points at or beyond the ball's radius ``1/sqrt(c)`` are refused; points
within the projection shell (closer than ``BALL_EPS[float64] = 1e-5``
relative to the rim) are first projected onto it, so that every distance is
finite.

Performance
-----------
With the defaults (``n_init=4``, ``frechet_iters=1``, one thread) a fit on
125,000 points of the 2-D ball (one 50^3 volume, 8 clusters) took 0.36 s
(separated blobs) to 0.71 s (overlapping blobs) on a 2-core CPU, against
~200 s extrapolated for a pure-Python loop; ``python
benchmarks/bench_kmeans.py`` measures it. What makes it
fast: per-point data kept feature-major, ``(K, d+1) @ (d+1, N)`` products for
all distances, the assignment's distances reused for the next Frechet
step, transcendental functions only on ``(N,)`` vectors (k-means++ weights
in float32), and a single thread, since each step is only a few passes over
N points and OpenMP threads cost more than they give, dramatically so on a
machine whose cores are busy with other work.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers

import numpy as np
import torch

from .errors import NotFittedError
from .geometry.poincare import BALL_EPS, MIN_NORM

__all__ = ["HyperbolicKMeans", "EuclideanKMeans", "frechet_mean", "NotFittedError"]

_DTYPE = torch.float64


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------

def _as_points(X, name: str = "X") -> torch.Tensor:
    """Any real ``(N, d)`` array-like -> contiguous float64 CPU tensor, checked finite."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        a = np.asarray(X)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (n_samples, n_features), got shape {tuple(t.shape)}; "
                         "reshape a single point to (1, d)")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(device="cpu", dtype=_DTYPE).contiguous()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------
# geometries: a point set with the few operations the Lloyd loop needs
# ---------------------------------------------------------------------------

def _acosh1p(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(arccosh(1 + delta), sinh of it)``, without cancellation for small ``delta``.

    ``log1p(delta + sqrt(delta (delta + 2)))`` is exact near 0 and about
    twice as fast as ``torch.acosh`` on the CPU.
    """
    sh = torch.sqrt(delta * (delta + 2.0))
    return torch.log1p(delta + sh), sh


def _ball_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise Poincare distance in the unit ball, ``(..., d) -> (...)``."""
    sq = ((x - y) ** 2).sum(-1)
    den = ((1.0 - (x * x).sum(-1)) * (1.0 - (y * y).sum(-1))).clamp_min(MIN_NORM)
    return _acosh1p(2.0 * sq / den)[0]


def _project_unit(z: torch.Tensor) -> torch.Tensor:
    """Project onto the float64 projection shell of the unit ball (radius ``1 - 1e-5``)."""
    maxnorm = 1.0 - BALL_EPS[_DTYPE]
    norm = z.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(norm > maxnorm, z / norm * maxnorm, z)


def _to_unit_ball(X, c: float, name: str = "X") -> torch.Tensor:
    """Validate points of the ball of curvature ``-c``; return ``sqrt(c) X`` (float64), projected."""
    x = _as_points(X, name)
    z = x * math.sqrt(c)
    norms = z.norm(dim=-1)
    if norms.max().item() >= 1.0:
        i = int(norms.argmax())
        raise ValueError(
            f"{name} has points outside the Poincare ball of curvature -{c}: points must have norm "
            f"< 1/sqrt(c) = {1 / math.sqrt(c):.6g}, but point {i} has norm {x[i].norm().item():.6g}. "
            "Map tangent vectors onto the ball with expmap0, or rescale/project the points first.")
    return _project_unit(z)


def _argmin0(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, argmin)`` over axis 0 of ``S`` ``(K, N)``; ties go to the lowest index.

    ``amin`` plus K equality passes: on the CPU several times faster than
    ``S.min(0)`` / ``S.argmin(0)``, which reduce slowly over a short axis.
    """
    best = S.amin(0)
    labels = torch.zeros(S.shape[1], dtype=torch.int64)
    for k in range(S.shape[0] - 1, 0, -1):  # over the K clusters
        labels.masked_fill_(S[k] == best, k)
    labels.masked_fill_(S[0] == best, 0)
    return best, labels


class _PointSet:
    """Points ``(N, d)`` kept feature-major, plus what every Lloyd iteration reuses.

    Feature-major rows ``(d, N)`` make the per-point work 1-D passes and
    ``(K, d) @ (d, N)`` products, which on the CPU are several times faster
    than ``(N, d)`` layouts (short-axis reductions, skinny BLAS calls).
    Subclasses define the geometry: ``pairwise_key`` (``(K, N)``, increasing
    in the distance), ``key_to_sq``, ``nearest``, ``rowdist``, ``update``,
    ``shift``.
    """

    def __init__(self, z: torch.Tensor):
        self.z = z
        self.zt = z.T.contiguous()  # (d, N)
        self.z2 = (self.zt * self.zt).sum(0)  # (N,)

    def subset(self, idx: torch.Tensor):
        return type(self)(self.z[idx])

    def assign(self, m: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centroid, ``(N,)`` int64."""
        return self.nearest(m)[0]

    def _row_sq(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` ``|z_i - m_{l_i}|^2`` from exact differences (no cancellation)."""
        mt = m.T.contiguous()
        sq = torch.zeros_like(self.z2)
        for j in range(mt.shape[0]):  # over the d coordinates
            sq.add_((self.zt[j] - mt[j][labels]).square_())
        return sq

    def _cluster_sums(self, labels: torch.Tensor, rows: torch.Tensor, weights, K: int) -> torch.Tensor:
        """``(K, R)``: ``sum_{i in cluster k} weights_i rows[r, i]`` (``weights=None``: 1)."""
        return torch.stack([torch.bincount(labels, weights=r if weights is None else r * weights,
                                           minlength=K) for r in rows], 1)


class _FlatPoints(_PointSet):
    """Points of R^d: Euclidean distance, arithmetic means."""

    def _scores(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``|m_k|^2 - 2 <z, m_k>`` = squared distance minus ``|z|^2``."""
        return torch.addmm((m * m).sum(-1)[:, None], m, self.zt, alpha=-2.0)

    def pairwise_key(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` squared distances (the key is the squared distance itself)."""
        return self._scores(m).add_(self.z2).clamp_min_(0.0)

    @staticmethod
    def key_to_sq(key: torch.Tensor) -> torch.Tensor:
        return key

    def nearest(self, m: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Nearest-centroid labels, and nothing for :meth:`update`."""
        return _argmin0(self._scores(m))[1], None

    def rowdist(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distance of each point to its own centroid ``m[labels]``."""
        return self._row_sq(m, labels).sqrt_()

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0, delta=None):
        """Cluster means (an empty cluster keeps its centroid); returns ``(means, 1)``."""
        K = m.shape[0]
        sums = self._cluster_sums(labels, self.zt, None, K)
        counts = torch.bincount(labels, minlength=K).to(m.dtype)[:, None]
        return torch.where(counts > 0, sums / counts.clamp_min(1.0), m), 1

    @staticmethod
    def shift(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
        return (m0 - m1).norm(dim=-1)


class _BallPoints(_PointSet):
    """Points of the unit Poincare ball (curvature -1): Poincare distance, Frechet means."""

    def __init__(self, z: torch.Tensor):
        super().__init__(z)
        self.inv_a = 1.0 / (1.0 - self.z2).clamp_min(MIN_NORM)  # 1 / (1 - |z|^2)
        # rows [z_1 .. z_d, |z|^2]: one product gives |z - m_k|^2 / (1 - |m_k|^2) for every centroid
        self.zaug = torch.cat([self.zt, self.z2[None]], 0)
        # rows [1 + |z|^2, z_1 .. z_d] / (1 - |z|^2): the Frechet-step sums, before the weights
        self.terms = torch.cat([(1.0 + self.z2)[None], self.zt], 0) * self.inv_a

    def _scaled_sq(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``|z - m_k|^2 / (1 - |m_k|^2)``, increasing in ``d(z, m_k)`` for each ``z``."""
        m2 = (m * m).sum(-1)
        inv_b = (1.0 / (1.0 - m2).clamp_min(MIN_NORM))[:, None]
        lhs = torch.cat([-2.0 * m, torch.ones_like(m2)[:, None]], 1) * inv_b
        return torch.addmm(m2[:, None] * inv_b, lhs, self.zaug).clamp_min_(0.0)

    def pairwise_key(self, m: torch.Tensor) -> torch.Tensor:
        """``(K, N)`` ``cosh d(z, m_k) - 1``: increasing in the distance, no transcendental."""
        return self._scaled_sq(m).mul_(2.0 * self.inv_a)

    @staticmethod
    def key_to_sq(key: torch.Tensor) -> torch.Tensor:
        """Squared Poincare distance from ``cosh d - 1``, in float32 (returned as float64).

        Only used for the k-means++ sampling weights and trial potentials,
        where a relative error of 1e-7 is immaterial and float32
        ``sqrt``/``log1p`` are 2-4x faster on the CPU.
        """
        return _acosh1p(key.float())[0].square_().double()

    def nearest(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid through the monotone surrogate (no arccosh needed).

        Also returns ``cosh d - 1`` to that centroid, from the same matrix
        product (accurate to ~1e-16 absolute: enough for the Frechet weights
        of the next :meth:`update`, not for reporting distances).
        """
        best, labels = _argmin0(self._scaled_sq(m))
        return labels, best.mul_(2.0 * self.inv_a)

    def _row_delta(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` ``cosh d(z_i, m_{l_i}) - 1``, from the exact differences (no cancellation)."""
        inv_b = 1.0 / (1.0 - (m * m).sum(-1)).clamp_min(MIN_NORM)
        return self._row_sq(m, labels).mul_(self.inv_a).mul_(2.0 * inv_b[labels])

    def rowdist(self, m: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distance of each point to its own centroid ``m[labels]``."""
        return _acosh1p(self._row_delta(m, labels))[0]

    def update(self, labels: torch.Tensor, m: torch.Tensor, n_steps: int = 1, tol: float = 0.0,
               delta: torch.Tensor | None = None):
        """Up to ``n_steps`` Lou et al. steps for all clusters at once, warm-started at ``m``.

        A cluster without points keeps its centroid. Stops early once no
        centroid moves by ``tol`` or more. ``delta``: ``cosh d - 1`` of each
        point to ``m[labels]`` if already known (from :meth:`nearest`), which
        saves the first distance pass. Returns ``(centroids, steps)``.
        """
        K = m.shape[0]
        occupied = (torch.bincount(labels, minlength=K) > 0)[:, None]
        steps = 0
        for steps in range(1, n_steps + 1):
            if delta is None or steps > 1:
                delta = self._row_delta(m, labels)
            d, sh = _acosh1p(delta)
            alpha = torch.where(sh > 1e-8, d.div_(sh.clamp_min(1e-300)), 1.0)  # d / sinh d, -> 1 at 0
            sums = self._cluster_sums(labels, self.terms, alpha, K)
            p, b = sums[:, 0], sums[:, 1:]
            disc = (p * p - 4.0 * (b * b).sum(-1)).clamp_min(0.0)  # >= 0 in exact arithmetic
            s = 2.0 / (p + torch.sqrt(disc)).clamp_min(MIN_NORM)
            new = _project_unit(torch.where(occupied, s[:, None] * b, m))
            moved = self.shift(m, new).max().item() if tol > 0 else math.inf
            m = new
            if moved < tol:
                break
        return m, steps

    @staticmethod
    def shift(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
        return _ball_dist(m0, m1)


def frechet_mean(X, labels=None, n_clusters: int | None = None, c: float = 1.0, init=None,
                 max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """Frechet (Karcher) mean(s) in the Poincare ball of curvature ``-c``.

    ``X`` ``(N, d)``; without ``labels`` returns the mean of all points
    ``(d,)``, otherwise the mean of each cluster ``(n_clusters, d)``, all
    clusters at once (an empty cluster gets its ``init`` row, or NaN).
    Iterates the Lou et al. update (module docstring) from ``init`` ``(K, d)``
    (default: the first point of each cluster) until no mean moves by ``tol``
    (Poincare distance) or ``max_iter`` steps have been taken.
    """
    return _cluster_centres(_BallPoints, X, labels, n_clusters, c, init, max_iter, tol)


def _cluster_centres(point_set: type, X, labels, n_clusters: int | None, c: float, init,
                     max_iter: int, tol: float) -> np.ndarray:
    """Centre(s) of ball points by ``point_set.update`` run to convergence (Frechet mean, geometric median).

    Shared argument handling of :func:`frechet_mean` and
    :func:`hyperseg.kmedians.geometric_median`: ``(d,)`` without ``labels``,
    else ``(K, d)``; an empty cluster gets its ``init`` row, or NaN.
    """
    if not (_is_real(c) and c > 0):
        raise ValueError(f"curvature magnitude c must be a finite number > 0, got {c!r}")
    pts = point_set(_to_unit_ball(X, c))
    n = pts.z.shape[0]
    if labels is None:
        lab, K = torch.zeros(n, dtype=torch.int64), 1
    else:
        lab = torch.as_tensor(np.asarray(labels)).reshape(-1).to(torch.int64)
        if lab.shape[0] != n:
            raise ValueError(f"labels has {lab.shape[0]} entries but X has {n} points")
        K = int(lab.max()) + 1 if n_clusters is None else int(n_clusters)
        if int(lab.min()) < 0 or int(lab.max()) >= K:
            raise ValueError(f"labels must lie in [0, {K})")
    if init is None:
        first = torch.full((K,), n, dtype=torch.int64).scatter_reduce(0, lab, torch.arange(n), reduce="amin")
        empty = first == n
        m0 = pts.z[first.clamp_max(n - 1)]
    else:
        m0 = _to_unit_ball(torch.as_tensor(np.asarray(init)).reshape(K, -1), c, "init")
        empty = torch.zeros(K, dtype=torch.bool)
    m, _ = pts.update(lab, m0, max_iter, tol * math.sqrt(c))
    m = torch.where(empty[:, None], math.nan, m / math.sqrt(c)).numpy()
    return m[0] if labels is None else m


# ---------------------------------------------------------------------------
# shared Lloyd loop
# ---------------------------------------------------------------------------

class _LloydKMeans:
    """k-means++ seeding + Lloyd iterations over a point set (``_FlatPoints`` or ``_BallPoints``).

    A subclass says how to build the point set (``_points``: validate and
    map input to internal coordinates), how to map centroids back
    (``_export``), the factor from internal to user distances (``_unit``)
    and how many mean-update steps one Lloyd iteration takes (``_steps``).
    """

    _unit = 1.0
    _steps = 1
    _power = 2  # the objective is sum_i d(x_i, m_{l_i}) ** _power (2: k-means, 1: k-medians)

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
                 init: str = "k-means++", sample_size: int | None = None, seed: int = 0,
                 n_threads: int | None = 1):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.sample_size = sample_size
        self.seed = seed
        self.n_threads = n_threads
        self._check_params()

    # -- parameters -----------------------------------------------------------
    def _check_params(self) -> None:
        _check_int("n_clusters", self.n_clusters, 1)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)
        _check_int("seed", self.seed, 0)
        _check_int("n_threads", self.n_threads, 1, allow_none=True)
        if self.sample_size is not None:
            _check_int("sample_size", self.sample_size, 1)
            if self.sample_size < self.n_clusters:
                raise ValueError(f"sample_size={self.sample_size} must be >= n_clusters={self.n_clusters} "
                                 "(or None to fit on all points)")
        if not (_is_real(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++' or 'random', got {self.init!r}")

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (scikit-learn convention)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

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
            r = torch.rand(n_trials, generator=gen, dtype=_DTYPE) * cum[-1]
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
        with _torch_threads(self.n_threads):
            return self._fit(X)

    def _fit(self, X):
        pts = self._points(X)
        N = pts.z.shape[0]
        if N < self.n_clusters:
            raise ValueError(f"n_samples={N} should be >= n_clusters={self.n_clusters}: "
                             "ask for fewer clusters or give more points")
        gen = torch.Generator().manual_seed(int(self.seed))
        fit_pts = pts
        if self.sample_size is not None and N > self.sample_size:
            fit_pts = pts.subset(torch.randperm(N, generator=gen)[: self.sample_size])
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
        if not hasattr(self, "_centers"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")
        with _torch_threads(self.n_threads):
            pts = self._points(X)
            if pts.z.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {pts.z.shape[1]} features but the model was fitted on "
                                 f"{self.n_features_in_}")
            return pts.assign(self._centers).numpy().astype(np.int64)

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X).labels_``."""
        return self.fit(X).labels_


# ---------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------

class _InBall:
    """Mixin of the hyperbolic estimators: curvature ``c``, internal coordinates in the unit ball.

    Points are stored as ``z = sqrt(c) x``, so distances computed there scale by ``1/sqrt(c)``.
    """

    c: float

    def _check_curvature(self) -> None:
        if not (_is_real(self.c) and self.c > 0):
            raise ValueError(f"curvature magnitude c must be a finite number > 0, got {self.c!r}")

    @property
    def _unit(self) -> float:
        return 1.0 / math.sqrt(self.c)

    def _export(self, C):
        return (C * self._unit).numpy().copy()


class HyperbolicKMeans(_InBall, _LloydKMeans):
    """k-means in the Poincare ball of curvature ``-c`` (Hsu et al. 2021, paper.md 1.7).

    Poincare distance for assignment, Frechet mean for centroids (module
    docstring).

    Parameters
    ----------
    n_clusters : number of clusters K (>= 1).
    n_init : seeded runs; the one with the lowest inertia is kept.
    max_iter : maximum Lloyd iterations per run.
    tol : a run stops once no centroid moved by ``tol`` or more (Poincare
        distance) in one Lloyd iteration.
    c : curvature magnitude (> 0); points must have norm < ``1/sqrt(c)``
        (those within ``1e-5`` relative of the rim are projected inside).
    seed : seed of the ``torch.Generator`` behind all sampling.
    frechet_iters : Lou et al. steps per Lloyd iteration, warm-started at
        the previous centroid; convergence of the means is then enforced by
        ``tol`` through the Lloyd stopping rule.
    init : ``"k-means++"`` (D^2 sampling with squared Poincare distances) or
        ``"random"`` (K distinct data points, as the reference code).
    sample_size : fit on a random subset of at most this many points, then
        label all points (``None``: fit on all points).
    n_threads : torch intra-op threads during ``fit``/``predict`` (restored
        afterwards; ``None``: leave torch's setting). Default 1: each step is
        a few passes over N points, too little work per parallel region;
        on the 2-core development machine (shared with other processes) 2
        OpenMP threads made the fit 1.3x to ~40x *slower*, depending on the
        other load (``benchmarks/bench_kmeans.py``).

    Fitted attributes: ``cluster_centers_`` ``(K, d)`` float64 numpy, in the
    input's coordinates; ``labels_`` ``(N,)`` int64; ``inertia_`` (sum of
    squared Poincare distances to the assigned centroid); ``n_iter_`` (Lloyd
    iterations of the kept run).
    """

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
                 c: float = 1.0, seed: int = 0, frechet_iters: int = 1, init: str = "k-means++",
                 sample_size: int | None = None, n_threads: int | None = 1):
        self.c = c
        self.frechet_iters = frechet_iters
        super().__init__(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, tol=tol,
                         init=init, sample_size=sample_size, seed=seed, n_threads=n_threads)

    def _check_params(self) -> None:
        super()._check_params()
        self._check_curvature()
        _check_int("frechet_iters", self.frechet_iters, 1)

    @property
    def _steps(self) -> int:
        return self.frechet_iters

    def _points(self, X, name="X"):
        return _BallPoints(_to_unit_ball(X, self.c, name))


class EuclideanKMeans(_LloydKMeans):
    """k-means in R^d (the Euclidean-latent ablation), same API as :class:`HyperbolicKMeans`.

    Euclidean distance, arithmetic-mean centroids, k-means++ seeding with
    squared Euclidean distances; ``tol`` bounds the Euclidean centroid shift
    and ``inertia_`` is the sum of squared Euclidean distances.
    """

    def __init__(self, n_clusters: int = 8, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
                 seed: int = 0, init: str = "k-means++", sample_size: int | None = None,
                 n_threads: int | None = 1):
        super().__init__(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, tol=tol,
                         init=init, sample_size=sample_size, seed=seed, n_threads=n_threads)

    def _points(self, X, name="X"):
        return _FlatPoints(_as_points(X, name))

    def _export(self, C):
        return C.numpy().copy()
