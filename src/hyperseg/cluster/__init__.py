"""Clustering of latent points: k-means, k-medians and a mixture, in the Poincare ball and in R^d.

=====================  ==========================================================
module                 what it holds
=====================  ==========================================================
``dispatch``           :func:`make_clusterer`, the one choice of estimator by
                       method (``Config.clustering``) and latent
``kmeans``             :class:`HyperbolicKMeans`, :class:`EuclideanKMeans`,
                       :func:`frechet_mean`
``kmedians``           :class:`HyperbolicKMedians`, :class:`EuclideanKMedians`,
                       :func:`geometric_median` (Weiszfeld)
``mixture``            :class:`HyperbolicMixture`, :class:`EuclideanMixture`
                       (a scale per cluster, classification EM)
``hierarchy``          :class:`NestedClustering` (divisive, agglomerative)
``lloyd``              the Lloyd loop shared by k-means and k-medians
``points``             point sets: the geometry of that loop (flat / ball x
                       mean / median), feature-major kernels
``_validation``        the parameter check, input conversion and subsampling
                       every estimator uses
``_base``              ``get_params`` / ``__repr__`` / ``fit_predict``
=====================  ==========================================================

Every estimator follows scikit-learn's conventions: the constructor stores
its arguments as given and checks them; ``fit(X)`` returns the estimator with
fitted attributes ending in ``_``; ``predict`` before ``fit`` raises
:class:`hyperseg.errors.NotFittedError`.
"""
from .dispatch import make_clusterer
from .hierarchy import NestedClustering
from .kmeans import EuclideanKMeans, HyperbolicKMeans, frechet_mean
from .kmedians import EuclideanKMedians, HyperbolicKMedians, geometric_median
from .mixture import EuclideanMixture, HyperbolicMixture

__all__ = [
    "HyperbolicKMeans",
    "EuclideanKMeans",
    "HyperbolicKMedians",
    "EuclideanKMedians",
    "HyperbolicMixture",
    "EuclideanMixture",
    "NestedClustering",
    "frechet_mean",
    "geometric_median",
    "make_clusterer",
]
