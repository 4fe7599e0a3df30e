"""Local orientation of the intensities: the structure tensor and its coherence.

Why
---
The encoder sees a 5^3 patch and the embedding is smoothed before clustering, so the finer levels' classes are
told apart mostly by colour and coarse texture. Two textures of one mean and contrast, one oriented (the
stripes of cristae, membranes, fibres, lamellae) and one isotropic (granular cytoplasm), look alike to it: on
the simple synthetic validation volumes the embedding alone put whole mitochondria (stripes) into the cytoplasm
(granules) cluster. The structure tensor measures orientation directly; it is the classical feature for it
(Bigun and Granlund 1987; ilastik's pixel features; OrientationJ's coherency in Fiji).

What
----
For channels ``x_c`` (already normalised) the structure tensor at every voxel is

    ``J = G_rho * sum_c (grad_sigma x_c)(grad_sigma x_c)^T``,

``grad_sigma`` the gradient of Gaussian derivatives of standard deviation ``sigma`` (the *gradient* scale,
:data:`GRADIENT_SIGMA`) and ``G_rho *`` a Gaussian average of standard deviation ``rho`` (the *integration*
scale, the neighbourhood whose orientation is measured). Several channels add their tensors (Di Zenzo 1986),
so one orientation shared by the channels counts once. With the eigenvalues ``l1 >= l2 >= l3 >= 0`` of ``J``,

    ``coherence = (l1 - l2) / (l1 + l2 + l3 + eps)``

is 1 where all gradients share one direction (planar stripes, a straight edge), 0 where they spread over a
plane or over every direction (tubes, isotropic granules and noise), and 0 in a flat region. ``eps``
(:data:`FLAT_FRACTION` times the volume's mean trace) keeps a flat region finite: there ``l1 = l2 = l3 = 0``
and the ratio is undefined.

Eigenvalues are computed in closed form (:func:`symmetric_eigenvalues`, the trigonometric solution of the
characteristic cubic), voxel by voxel in vectorised numpy, in slabs so the float64 work arrays stay small.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["GRADIENT_SIGMA", "FLAT_FRACTION", "structure_tensor", "symmetric_eigenvalues", "coherence"]

#: standard deviation (voxels) of the Gaussian derivatives: the smallest that still averages out voxel noise;
#: 0.7 and 0.8 gave the same validation Dice (BENCHMARKS.md, "Structure-tensor coherence")
GRADIENT_SIGMA = 0.8
#: ``eps`` of the coherence as a fraction of the volume's mean trace of ``J`` (module docstring)
FLAT_FRACTION = 1e-6
#: voxels per slab of the eigenvalue pass (float64 work arrays of about 10 x 8 B per voxel)
_SLAB_VOXELS = 1 << 20

#: the order of the six distinct components of ``J`` in :func:`structure_tensor`'s first axis
COMPONENTS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def structure_tensor(x: np.ndarray, integration_sigma: float, gradient_sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    """The six distinct components of ``J = G_rho * sum_c grad x_c grad x_c^T``: ``(6, D, H, W)`` float32, in the
    order of :data:`COMPONENTS` (``J_00, J_11, J_22, J_01, J_02, J_12``, axis 0 = D).

    ``x``: ``(D, H, W)`` or ``(C, D, H, W)``; ``integration_sigma``: ``rho``, ``gradient_sigma``: ``sigma`` (voxels;
    module docstring). The volume is extended past its border by repeating the edge voxel (``mode="nearest"``,
    the dense pass's replicate padding), so a face adds no gradient of its own.
    """
    v = np.asarray(x, dtype=np.float32)
    v = v[None] if v.ndim == 3 else v
    if v.ndim != 4:
        raise ValueError(f"structure_tensor: expected a (D, H, W) or (C, D, H, W) volume, got shape {np.shape(x)}")
    if integration_sigma <= 0 or gradient_sigma <= 0:
        raise ValueError(f"structure_tensor: the scales must be > 0, got integration {integration_sigma}, "
                         f"gradient {gradient_sigma}")
    J = np.zeros((6,) + v.shape[1:], dtype=np.float32)
    for channel in v:
        g = [ndi.gaussian_filter(channel, gradient_sigma, order=tuple(int(a == b) for b in range(3)), mode="nearest")
             for a in range(3)]
        for n, (a, b) in enumerate(COMPONENTS):
            J[n] += g[a] * g[b]
        del g
    for n in range(6):
        J[n] = ndi.gaussian_filter(J[n], integration_sigma, mode="nearest")
    return J


def symmetric_eigenvalues(J: np.ndarray) -> np.ndarray:
    """Eigenvalues ``(3, ...)`` in decreasing order of symmetric 3 x 3 matrices given by their six components
    ``(6, ...)`` in the order of :data:`COMPONENTS`; float64.

    The trigonometric solution: with ``q = tr(A) / 3``, ``p = sqrt(|A - qI|_F^2 / 6)`` and ``B = (A - qI) / p``,
    ``r = det(B) / 2`` lies in ``[-1, 1]`` (clipped: rounding can step past it) and the eigenvalues are
    ``q + 2p cos(acos(r) / 3 + 2 pi j / 3)``, ``j = 0, 2, 1`` in decreasing order. Where ``p = 0`` the matrix is
    ``qI`` and all three are ``q`` (``B`` is then not formed).
    """
    A = np.asarray(J, dtype=np.float64)
    if A.shape[0] != 6:
        raise ValueError(f"symmetric_eigenvalues: expected 6 components on the first axis, got shape {A.shape}")
    a00, a11, a22, a01, a02, a12 = A
    q = (a00 + a11 + a22) / 3.0
    d0, d1, d2 = a00 - q, a11 - q, a22 - q
    off = a01 * a01 + a02 * a02 + a12 * a12
    p = np.sqrt((d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * off) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    # det(A - qI) / p^3 / 2
    det = d0 * (d1 * d2 - a12 * a12) - a01 * (a01 * d2 - a12 * a02) + a02 * (a01 * a12 - d1 * a02)
    r = np.clip(det / (2.0 * safe ** 3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    return np.stack([l1, l2, l3])


def coherence(x: np.ndarray, integration_sigma: float, gradient_sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    """``(l1 - l2) / (l1 + l2 + l3 + eps)`` of the structure tensor at every voxel: ``(D, H, W)`` float32 in
    ``[0, 1]`` (module docstring). ``x``, the scales: as :func:`structure_tensor`."""
    J = structure_tensor(x, integration_sigma, gradient_sigma)
    shape = J.shape[1:]
    flat = J.reshape(6, -1)
    trace = flat[0].astype(np.float64) + flat[1] + flat[2]
    eps = FLAT_FRACTION * float(trace.mean()) + np.finfo(np.float64).tiny
    out = np.empty(flat.shape[1], dtype=np.float32)
    for start in range(0, flat.shape[1], _SLAB_VOXELS):
        part = slice(start, start + _SLAB_VOXELS)
        lam = symmetric_eigenvalues(flat[:, part])
        lam = np.maximum(lam, 0.0)  # J is positive semi-definite; rounding can give -1e-9
        out[part] = (lam[0] - lam[1]) / (lam.sum(0) + eps)
    return out.reshape(shape)
