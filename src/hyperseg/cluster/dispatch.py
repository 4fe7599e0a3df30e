"""The one place where a clustering method and a latent geometry become an estimator.

``make_clusterer(method, latent, n_clusters, c=..., **params)`` picks

==============  ======================  =====================
method          latent "hyperbolic"      latent "euclidean"
==============  ======================  =====================
``"kmeans"``    HyperbolicKMeans         EuclideanKMeans
``"kmedians"``  HyperbolicKMedians       EuclideanKMedians
``"mixture"``   HyperbolicMixture        EuclideanMixture
==============  ======================  =====================

and passes the curvature ``c`` to the hyperbolic estimators only (R^d has
none). The method names are ``Config.clustering``'s
(:data:`hyperseg.config.CLUSTERINGS`), the latents ``Config.latent``'s
(:data:`hyperseg.config.LATENTS`). :func:`hyperseg.segment.cluster_points`,
the mixture's k-means initialisation and the nested clustering's k-means /
2-means all build their estimators here.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..config import CLUSTERINGS, LATENTS
from .kmeans import EuclideanKMeans, HyperbolicKMeans
from .kmedians import EuclideanKMedians, HyperbolicKMedians
from .mixture import EuclideanMixture, HyperbolicMixture

__all__ = ["make_clusterer", "ESTIMATORS"]

#: ``(method, latent) -> estimator class``.
ESTIMATORS: dict[tuple[str, str], type] = {
    ("kmeans", "hyperbolic"): HyperbolicKMeans,
    ("kmeans", "euclidean"): EuclideanKMeans,
    ("kmedians", "hyperbolic"): HyperbolicKMedians,
    ("kmedians", "euclidean"): EuclideanKMedians,
    ("mixture", "hyperbolic"): HyperbolicMixture,
    ("mixture", "euclidean"): EuclideanMixture,
}


def make_clusterer(method: str, latent: str, n_clusters: int, *, c: float = 1.0, **params: Any):
    """An unfitted estimator of ``method`` for points of ``latent`` with ``n_clusters`` clusters.

    ``c`` is the curvature magnitude of the ball (used by the hyperbolic
    estimators, not passed to the Euclidean ones); ``params`` are the
    estimator's other constructor arguments (``n_init``, ``seed``,
    ``sample_size``, ``max_iter``, ...), checked by the estimator itself.
    Returns e.g. ``HyperbolicKMeans(n_clusters=n_clusters, c=c, **params)``.
    """
    if method not in CLUSTERINGS:
        raise ValueError(f"make_clusterer: method must be one of {', '.join(CLUSTERINGS)}, got {method!r}; "
                         "pick one of those")
    if latent not in LATENTS:
        raise ValueError(f"make_clusterer: latent must be one of {', '.join(LATENTS)}, got {latent!r}; "
                         "pick one of those")
    cls = ESTIMATORS[method, latent]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"make_clusterer: {cls.__name__} takes no parameter {', '.join(unknown)}; "
                         f"its parameters are {', '.join(accepted)}")
    if "c" in accepted:
        params["c"] = c
    return cls(n_clusters=n_clusters, **params)
