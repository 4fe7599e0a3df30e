"""The one configuration of a hyperseg run, validated once and saved as YAML.

Every knob of the model, the objective, training and segmentation lives in
:class:`Config`. ``hyperseg train --config FILE`` reads a YAML file holding
any subset of the fields; the resolved configuration is written to
``RUN/config.yaml`` so that a run can always be reproduced and reloaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

LATENTS = ("hyperbolic", "euclidean")
DECODER_INPUTS = ("gyroplane", "linear")
PATCH_SCALES = ("uniform", "log")
PAD_MODES = ("replicate", "zeros", "reflect")
LIKELIHOODS = ("unit", "scale")
CLUSTERINGS = ("kmeans", "mixture", "kmedians")
#: How the Potts prior on a level's assignment is minimised (regularize.py).
POTTS_METHODS = ("icm", "mean_field")
#: How the levels relate: clustered one by one, nested (cluster/hierarchy.py), or every level above 2
#: clustered inside the 2-cluster level's foreground (segment.py).
HIERARCHIES = ("independent", "divisive", "agglomerative", "foreground")
#: Levels cut from one k-means tree (cluster/hierarchy.py).
TREE_HIERARCHIES = ("divisive", "agglomerative")
#: How a level's assignment is refined (regularize.py): one pass of the clustering's log-likelihoods plus the
#: intensity term, or hidden-MRF EM of a diagonal Gaussian per cluster on the embedding and the intensities.
REFINE_METHODS = ("once", "hmrf_em")
#: Where hidden-MRF EM starts (regularize.py): the level's clustering of the embedding, or k-means on the voxels'
#: normalised intensities (FSL FAST's start).
REFINE_INITS = ("clusters", "intensity")
#: Where the foreground of hierarchy "foreground" comes from: the 2-cluster level of the embedding, the
#: automatic intensity mask of ANTs' get_mask (data/masks.py), or whichever of the two the data call for ("auto":
#: the mask, with the stage of ``masked_stage``, where the two agree; segment.py).
FOREGROUNDS = ("split", "threshold", "auto")
#: Segmentation fields ``Config.masked_stage`` may set: the refinement of the levels inside an intensity mask.
MASKED_STAGE_FIELDS = ("refine", "refine_init", "embedding_weight", "embedding_weight_mm", "intensity_weight",
                       "potts_beta", "potts_method", "potts_iter", "refine_iter", "bias_fwhm", "bias_classes",
                       "mixture_proportions", "mixture_proportions_mm")
#: Most clusters a level may have: label maps are stored as uint8.
MAX_CLUSTERS = 256
#: What the convolutions run in (``embed_dtype``, ``train_dtype``; nn/precision.py): "auto" is bfloat16 where the
#: processor multiplies it natively, float32 elsewhere.
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
TRIPLET_DISTANCES = ("distance", "squared")
NEGATIVES = ("disjoint", "all_axes")  # negative-child placements of data/sampler.py


#: Folder of the shipped presets, one YAML file of Config fields each (``hyperseg train --preset NAME``).
PRESETS_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """Names of the shipped presets (``paper``: Hsu et al. 2021)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


@dataclass
class Config:
    """Hyperparameters of the model, objective, training and segmentation.

    Defaults follow the paper (Hsu et al. 2021, see ``shared/paper.md``) where it
    gives a value, and say so; the other values were chosen here.
    """

    # --- model -----------------------------------------------------------
    latent: str = "hyperbolic"  # "hyperbolic" (Poincare ball) or "euclidean" (ablation)
    decoder_input: str = "gyroplane"  # "gyroplane" conv on z, or "linear" on log_0(z) (ablation)
    latent_dim: int = 4  # paper: d = 2 in all experiments; 4 chosen here on validation volumes (BENCHMARKS.md)
    # curvature magnitude: the ball has curvature -c (paper: c = 1); 3 and 10 scored worse and 0.3 no
    # better on the irregular validation volumes (BENCHMARKS.md, "What was tried")
    c: float = 1.0
    patch_edge: int = 10  # model input edge m (paper: 10)
    in_channels: int = 1
    encoder_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64])
    encoder_kernel: int = 3  # valid convolutions: the receptive field is exactly the patch
    hidden: int = 128  # width of the layer before the mean / scale heads
    decoder_channels: list[int] = field(default_factory=lambda: [64, 32, 32, 16])
    gyro_channels: int = 128  # output channels of the decoder's first (gyroplane) layer
    latent_float64: bool = True  # do the ball maths in float64 (float32 clips at |x| = 0.996)

    # --- objective -------------------------------------------------------
    n_samples: int = 4  # K posterior samples for the Monte-Carlo ELBO
    kl_weight: float = 1.0
    triplet: bool = True  # hierarchical triplet loss on encoder means
    triplet_weight: float = 1e3  # paper: beta = 1e3
    triplet_margin: float = 0.2  # paper: alpha = 0.2
    # "distance": max(0, d_pos - d_neg + margin), the paper's equation; "squared": the same with
    # squared distances, as the released code computes it (paper.md 1.4)
    triplet_distance: str = "distance"
    prior_scale: float = 1.0  # paper's code: wrapped normal prior with sigma = 1
    # "mean": L = mean_b(-ELBO) + beta mean_b(triplet), the paper's Eq. (9) per example;
    # "sum": the released code's sum of the ELBO over the batch (shrinks beta by the batch size)
    elbo_reduction: str = "mean"
    # p(x | z): "unit" is a unit-variance Gaussian on the voxels (the paper's code); "scale"
    # (the default) lets the decoder also predict each voxel's standard deviation
    # (floored at likelihood_min_scale), so the latent must say how strongly a patch is
    # textured, not only its mean intensity. Chosen on validation volumes over 3 seeds
    # (BENCHMARKS.md, "What was tried").
    likelihood: str = "scale"
    likelihood_min_scale: float = 0.05

    # --- sampling ---------------------------------------------------------
    parent_range: list[int] = field(default_factory=lambda: [5, 34])  # paper's code: randint(5, 35)
    child_range: list[int] = field(default_factory=lambda: [3, 14])  # paper's code: 3..14
    patch_scale: str = "uniform"  # "uniform" (paper, synthetic) or "log" (paper, large volumes)
    # where the negative child may lie (data/sampler.py): "disjoint", anywhere not overlapping the
    # parent; "all_axes", separated from the parent along every axis (as the released code draws it)
    negatives: str = "disjoint"
    normalize: bool = True  # z-score each channel of each volume before use
    # robust normalisation (data/preprocess.py): percentiles (in %) each channel is clipped to
    # inside the foreground before z-scoring, or null for no clipping
    clip_percentiles: list[float] | None = field(default_factory=lambda: [0.5, 99.5])
    # foreground mask for the normalisation statistics: "auto" (voxels above the flat floor of
    # the channel mean) or "none" (all voxels)
    normalize_mask: str = "auto"
    # remove a smooth bias field before normalising: subtract each channel's Gaussian-smoothed
    # copy (sigma in voxels; 0 = off). Larger than the structures to keep (data/preprocess.py)
    highpass_sigma: float = 0.0
    # intensity jitter of triplet patches (data/augment.py): every parent, positive and negative
    # patch gets its own offset, intensity_offset x (std of the batch's parents) x N(0, 1), and a
    # contrast factor exp(intensity_gain x N(0, 1)) about its own mean; 0 = off (the paper)
    intensity_offset: float = 0.0
    intensity_gain: float = 0.0
    # turn every triplet patch by its own random symmetry of the cube (48: axis permutations and flips;
    # data/augment.py), so that the loss matches a region's texture whatever its orientation; False = the paper
    patch_symmetry: bool = False

    # --- training ---------------------------------------------------------
    batch_size: int = 32  # triplets per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 8.0  # paper's code: --clip 8
    # what the convolutions run in during training: "auto" (default: bfloat16 under autocast where the processor
    # multiplies it natively, Intel AMX / AVX512-BF16 or CUDA, float32 elsewhere; nn/precision.py), "float32" or
    # "bfloat16". The ball maths, the likelihood and the optimiser stay float32 / float64. On an AMX processor 1.7x
    # the triplets per second, and on the simple volumes (3 seeds) validation Dice 0.976 / 0.598 / 0.414 against
    # 0.969 / 0.594 / 0.407 in float32; Colin27 3 % / 20 %: level (benchmarks/results/train_speed.json,
    # train_dtype_simple_val_*.json, mri_colin27.json)
    train_dtype: str = "auto"
    steps: int = 1500  # chosen on validation volumes: levels 2-3 get worse with longer training (BENCHMARKS.md)
    checkpoint_every: int = 200
    max_bad_steps: int = 20  # training stops after this many non-finite steps in a row (each is skipped)
    seed: int = 0

    # --- segmentation -----------------------------------------------------
    embed_patch_edge: int = 5  # paper: 5x5x5 patches around every voxel
    embed_tile: int = 64  # output edge of each tile of the dense pass (bounds memory; 16 was ~6x slower)
    pad_mode: str = "replicate"  # how the volume is extended past its border
    # what the encoder's convolutions run in during the dense pass: "float32", "bfloat16", or "auto" (bfloat16 where
    # the processor multiplies it natively: Intel AMX / AVX512-BF16, CUDA; float32 elsewhere; nn/precision.py).
    # The heads, exp_0 and everything after stay float32 / float64.
    embed_dtype: str = "auto"
    levels: list[int] = field(default_factory=lambda: [2, 4, 6])  # clusters per level
    # k-means(++) starts per level, the best kept. 2 since the finer levels are over-clustered (overcluster): on the
    # validation volumes (seed-0 models, levels 2 / 3) 4 starts gave simple 0.672 / 0.455 and irregular 0.475 / 0.322,
    # 2 starts 0.675 / 0.455 and 0.475 / 0.325, at about half the clustering time
    kmeans_n_init: int = 2
    kmeans_max_iter: int = 100
    kmeans_sample: int = 50000  # k-means is fitted on at most this many voxels, then applied to all
    # "independent": each level clustered on its own (paper); "divisive" / "agglomerative": levels cut from one
    # k-means tree (hierarchy.py); "foreground": the 2-cluster level splits foreground from background (the
    # cluster holding most of the volume's border voxels) and every finer level K clusters K - 1 classes inside
    # that foreground, background labelled 0, as Atropos and FAST cluster tissue inside a brain mask
    # (segment.py). "foreground" chosen on validation volumes and Colin27 (BENCHMARKS.md)
    hierarchy: str = "foreground"
    # the foreground of hierarchy "foreground": "split", the 2-cluster level (the border cluster where it
    # touches the border is background); "threshold", the automatic intensity mask of ANTs' get_mask
    # (voxels above the mean, opened, largest component, holes filled: data/masks.py; the "mri" preset);
    # "auto" (default): the mask where it agrees with the split (Dice >= foreground_agreement outside a band of the
    # embedding's reach around the mask's surface, foreground.mask_agreement: an object brighter
    # than its background, as a brain in a T1 scan) or where it lies inside the split as a brain inside its head
    # (foreground.choose_mask: a scan with skull and scalp), its levels then refined with masked_stage's fields
    # on top, else the split with this configuration's own refinement. Chosen on Colin27 and the synthetic validation
    # volumes (BENCHMARKS.md): outside the band the mask and the split agree to 0.965 (clean 1 mm) and 0.998-1.000
    # (degraded) on Colin27, to at most 0.334 on the synthetic cells' validation volumes (over the whole grid:
    # 0.893, 0.969-0.994 and 0.675; benchmarks/results/mri_colin27*.json, foreground_agreement_simple_val.json)
    foreground: str = "auto"
    foreground_agreement: float = 0.9
    # the refinement fields used inside the intensity mask when foreground "auto" picks it (FSL FAST's recipe:
    # hidden-MRF EM from k-means on intensity, led by intensity, with a smooth bias field of 20 mm FWHM, FAST's
    # default), the embedding's log-likelihood at weight 0.1 on 2 mm voxels and in proportion to the voxel edge
    # below (embedding_weight_mm 2: 0.05 at 1 mm), Potts coupling 1.5. Chosen on two brains with a grid of weights
    # 0 / 0.05 / 0.1 / 0.15 and couplings 1 / 1.5 / 2 (benchmarks/bench_masked_stage.py): Colin27 at 2 mm (4 noise
    # / bias settings) and 1 mm (3 settings), grey-matter level and three tissue classes, and the MNI152 template
    # with its CSF / GM / WM truth (4 settings at 2 mm); mean over the three of both scores 0.790 against 0.783
    # for the previous 0.15 / 1, the best of the grid, and above it on each brain (masked_stage_colin27*.json,
    # masked_stage_mni152.json). The classes' log mixing proportions at weight 0.25 (mixture_proportions): of
    # 0.25 / 0.5 / 0.75 / 1 the largest above the weight 0 on each of four brain groups (Colin27 2 mm and 1 mm,
    # MNI152 2 mm and 1 mm) at both levels; mean of the two scores over the four 0.825 against 0.814 (0.5 / 0.75:
    # 0.830 / 0.831, but the MNI152 template's CSF class shrinks at 2 mm; masked_stage_proportions_*.json); on finer
    # grids in inverse proportion to the voxel edge (mixture_proportions_mm 2: 0.5 at 1 mm), which raised all five
    # 1 mm settings of three images at both levels (masked_stage_proportions_1mm.json). Keys from MASKED_STAGE_FIELDS
    masked_stage: dict[str, Any] = field(default_factory=lambda: {
        "refine": "hmrf_em", "refine_init": "intensity", "embedding_weight": 0.1, "embedding_weight_mm": 2.0,
        "intensity_weight": 1.0, "potts_beta": 1.5, "bias_fwhm": 20.0, "bias_classes": 3,
        "mixture_proportions": 0.25, "mixture_proportions_mm": 2.0})
    # "kmeans": hyperbolic k-means (paper); "mixture": a scale per cluster (mixture.py);
    # "kmedians": geometric-median centroids, unsquared distances (kmedians.py)
    clustering: str = "kmeans"
    # Gaussian smoothing of the embedding field before clustering (smooth.py), standard deviation
    # in voxels of the model grid; 0 = off (the paper). Chosen on validation volumes.
    smooth_sigma: float = 2.0
    # per-level overrides of smooth_sigma, {number of clusters: sigma}; e.g. {2: 4.0} smooths the
    # two-cluster level more, as coarse levels describe larger structures (independent levels only)
    level_smooth_sigma: dict[int, float] = field(default_factory=dict)
    # per-level overrides of clustering, {number of clusters: method}; nested levels (hierarchy) use k-means at
    # every level: they do not apply this default and refuse any other setting but k-means (validate). The
    # default k-medians for 2 clusters keeps two large regions apart where 2-means would give a centroid
    # to a small, distant group (kmedians.py); chosen on validation volumes (BENCHMARKS.md). {} = the paper.
    level_clustering: dict[int, str] = field(default_factory=lambda: {2: "kmedians"})
    # weight w of each voxel's own normalised intensities next to its embedding: a Gaussian per cluster on
    # the channels (fitted on the clustering's labels) adds w x its log-likelihood to the clustering's own
    # (regularize.py), and each voxel takes the most likely cluster; 0 = off. Tree hierarchies (divisive,
    # agglomerative) do not apply it or potts_beta, and refuse values other than 0 and the default.
    # Validation Dice per weight: benchmarks/results/segment_options_simple_val.json
    intensity_weight: float = 6.0
    # hierarchy "foreground" with refine "once": each finer level's K - 1 classes are first clustered and refined as
    # overcluster x (K - 1) clusters, then the most interleaved pairs of clusters are merged until K - 1 are left
    # (interleave.py): the pieces a large, varied class is cut into meet along far more surface than distinct
    # structures do. 1 = off. Other hierarchies and refine "hmrf_em" (the masked stage) do not apply the default
    # and refuse other values. Chosen on the synthetic validation volumes (BENCHMARKS.md)
    overcluster: int = 2
    # hierarchy "foreground" with refine "once": the finer levels' intensity term also reads the structure-tensor
    # coherence of the channels (texture.py; this is its integration scale in voxels, 0 = off), standardised over the
    # foreground: oriented textures (stripes, membranes, fibres) apart from isotropic ones of the same brightness,
    # which the embedding of a 5^3 patch mixes. Not the 2-cluster level, not the masked stage. Chosen on the synthetic
    # validation volumes (BENCHMARKS.md, "Structure-tensor coherence")
    coherence_sigma: float = 2.0
    # refine "once": passes of the refinement, each refitting the clusters' intensity Gaussians (and the clustering's
    # per-cluster spread) on the previous pass's labels before the Potts prior, so that a channel the clustering did
    # not see (the coherence) can move voxels between clusters; 1 = one pass. Chosen on the synthetic validation
    # volumes with the coherence channel (BENCHMARKS.md, "Structure-tensor coherence")
    refine_passes: int = 3
    # Potts prior on the clustering's log-likelihoods (and the intensity term): coupling in nats per
    # disagreeing 6-neighbour, 0 = off (not with tree hierarchies); potts_method: "icm" or "mean_field",
    # potts_iter: its sweeps (regularize.py, potts.py)
    potts_beta: float = 4.0
    potts_method: str = "mean_field"
    potts_iter: int = 5
    # "once": the clustering's log-likelihoods + intensity term, one Potts pass (default); "hmrf_em": hidden-MRF
    # EM from the clustering's labels of a diagonal Gaussian per cluster on the standardised tangent
    # coordinates log_0(x) (weight embedding_weight) and on the intensities (weight intensity_weight), the E
    # step mean field with potts_beta, refine_iter iterations (regularize.py; the "mri" preset)
    refine: str = "once"
    embedding_weight: float = 1.0
    # hmrf_em only: the voxel edge (mm) at and above which embedding_weight applies in full; on a finer grid the
    # weight is embedding_weight x voxel edge / embedding_weight_mm, as the share of voxels that straddle a tissue
    # boundary (where the intensity is ambiguous and the patch's context decides) shrinks with the voxel edge;
    # 0 = the same weight at every voxel size (segment.hmrf_embedding_weight; the masked stage sets 2 mm)
    embedding_weight_mm: float = 0.0
    refine_iter: int = 8
    # where hmrf_em starts: "clusters", the level's clustering of the embedding; "intensity", k-means on the
    # voxels' normalised intensities (FSL FAST's start; the masked stage's). From the clustering of the embedding
    # the EM stopped in a partition that did not follow tissue at 4 clusters on Colin27 (BENCHMARKS.md)
    refine_init: str = "clusters"
    # hmrf_em only: full width at half maximum (mm) of the smooth bias field on the intensities that the EM estimates
    # in each M step, as FSL FAST does (its -l, default 20 mm, the masked stage's value); 0 = none (regularize.py).
    # On Colin27 (4 noise / bias settings, 2 mm) 20 mm raised the masked stage's mean Dice at 3 / 4 clusters from
    # 0.746 / 0.734 to 0.757 / 0.757 (benchmarks/results/mri_colin27.json)
    bias_fwhm: float = 0.0
    # hierarchy "foreground", hmrf_em with bias_fwhm > 0: 0 = each level's EM estimates its own bias field; n > 0 =
    # the field is estimated once, by the EM with n classes inside the foreground (FSL FAST's -n, 3 tissue classes
    # in a T1 brain), then subtracted from the intensities of every level, whose EMs hold it fixed (the level of n
    # classes takes that EM's labels). A level with fewer classes than the tissues would otherwise fit a field that
    # takes part of their contrast (2 classes in a brain: GM with CSF or with WM). The masked stage's 3 raised the
    # grey-matter level on Colin27 (2 mm, 4 settings) and the MNI152 template (BENCHMARKS.md)
    bias_classes: int = 0
    # hmrf_em only: weight tau of each class's log mixing proportion in the EM's E step (the weights of a Gaussian
    # mixture, re-estimated every iteration from the posteriors without the Potts prior: regularize.mixing_proportions);
    # 0 = every class equally likely a priori (FAST's hidden-MRF EM, where the Potts prior is the only prior)
    mixture_proportions: float = 0.0
    # hmrf_em only: the voxel edge (mm) at and above which mixture_proportions applies as given; on a finer grid the
    # weight is mixture_proportions x mixture_proportions_mm / voxel edge, at most 0.5 (segment.MAX_GRID_PROPORTIONS):
    # on a coarse grid a thin class (sulcal CSF at 2 mm) is mostly partial-volume voxels with no mode of its own,
    # and its weight starves it; on a fine grid the classes are pure and their weights are what a mixture fits.
    # 0 = the same weight at every voxel size (segment.hmrf_proportions; the masked stage sets 2 mm: 0.5 at 1 mm)
    mixture_proportions_mm: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and what to do about it."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid configuration: {msg}")

        need(self.latent in LATENTS, f"latent must be one of {LATENTS}, got {self.latent!r}")
        need(self.decoder_input in DECODER_INPUTS,
             f"decoder_input must be one of {DECODER_INPUTS}, got {self.decoder_input!r}")
        need(not (self.latent == "euclidean" and self.decoder_input == "gyroplane"),
             "decoder_input 'gyroplane' needs latent 'hyperbolic'; use decoder_input: linear "
             "for the Euclidean latent")
        need(self.latent_dim >= 1, "latent_dim must be >= 1")
        need(self.c > 0, "c (curvature magnitude) must be > 0")
        need(self.in_channels >= 1, "in_channels must be >= 1")
        need(len(self.encoder_channels) >= 1, "encoder_channels needs at least one layer")
        rf = len(self.encoder_channels) * (self.encoder_kernel - 1)
        need(self.encoder_kernel >= 1 and rf < self.patch_edge,
             f"patch_edge {self.patch_edge} is too small for {len(self.encoder_channels)} valid "
             f"convolutions of kernel {self.encoder_kernel}; use fewer layers or a larger patch_edge")
        need(self.n_samples >= 1, "n_samples must be >= 1")
        need(self.triplet_margin >= 0, "triplet_margin must be >= 0")
        need(self.triplet_distance in TRIPLET_DISTANCES,
             f"triplet_distance must be one of {TRIPLET_DISTANCES}, got {self.triplet_distance!r}")
        need(self.prior_scale > 0, "prior_scale must be > 0")
        need(self.elbo_reduction in ("mean", "sum"), "elbo_reduction must be 'mean' or 'sum'")
        need(self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        need(self.likelihood_min_scale > 0, "likelihood_min_scale must be > 0 (it keeps the NLL finite)")
        lo, hi = self.parent_range
        need(2 <= lo <= hi, f"parent_range must be [lo, hi] with 2 <= lo <= hi, got {self.parent_range}")
        clo, chi = self.child_range
        need(1 <= clo <= chi < hi and clo <= lo,
             f"child_range must be [lo, hi] with 1 <= lo <= hi, lo <= parent lo and hi < parent hi, "
             f"got {self.child_range} for parent_range {self.parent_range}")
        need(self.patch_scale in PATCH_SCALES, f"patch_scale must be one of {PATCH_SCALES}")
        need(self.negatives in NEGATIVES, f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        need(self.clip_percentiles is None or (len(self.clip_percentiles) == 2
             and 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100),
             f"clip_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, or null, got {self.clip_percentiles}")
        need(self.normalize_mask in ("auto", "none"),
             f"normalize_mask must be 'auto' or 'none', got {self.normalize_mask!r}")
        need(self.highpass_sigma >= 0, f"highpass_sigma must be >= 0 voxels (0 = off), got {self.highpass_sigma}")
        need(self.intensity_offset >= 0 and self.intensity_gain >= 0,
             f"intensity_offset and intensity_gain must be >= 0 (0 = off), got {self.intensity_offset} "
             f"and {self.intensity_gain}")
        need(isinstance(self.patch_symmetry, bool), f"patch_symmetry must be true or false, got {self.patch_symmetry!r}")
        need(self.batch_size >= 1 and self.lr > 0 and self.steps >= 0, "batch_size, lr, steps must be positive")
        need(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        need(self.max_bad_steps >= 1, "max_bad_steps must be >= 1")
        need(self.embed_patch_edge >= 1, "embed_patch_edge must be >= 1")
        need(self.embed_tile >= 1, "embed_tile must be >= 1")
        need(self.pad_mode in PAD_MODES, f"pad_mode must be one of {PAD_MODES}")
        need(self.train_dtype in COMPUTE_DTYPES,
             f"train_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.train_dtype!r}")
        need(self.embed_dtype in COMPUTE_DTYPES,
             f"embed_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.embed_dtype!r}")
        need(len(self.levels) >= 1 and all(1 <= k <= MAX_CLUSTERS for k in self.levels),
             f"levels must be a non-empty list of cluster counts from 1 to {MAX_CLUSTERS} (label maps are "
             f"uint8), got {self.levels}")
        need(self.hierarchy in HIERARCHIES,
             f"hierarchy must be one of {', '.join(HIERARCHIES)}, got {self.hierarchy!r}")
        need(self.smooth_sigma >= 0, f"smooth_sigma must be >= 0 voxels (0 turns smoothing off), "
             f"got {self.smooth_sigma}")
        need(isinstance(self.level_smooth_sigma, dict)
             and all(isinstance(k, int) and k >= 1 and v >= 0 for k, v in self.level_smooth_sigma.items()),
             f"level_smooth_sigma must map numbers of clusters (>= 1) to sigmas (>= 0), "
             f"got {self.level_smooth_sigma!r}")
        need(not self.level_smooth_sigma or self.hierarchy not in TREE_HIERARCHIES,
             f"level_smooth_sigma needs hierarchy 'independent' or 'foreground': {self.hierarchy!r} levels are cut "
             "from one embedding field; use smooth_sigma instead")
        need(self.clustering in CLUSTERINGS,
             f"clustering must be one of {', '.join(CLUSTERINGS)}, got {self.clustering!r}")
        need(isinstance(self.level_clustering, dict)
             and all(isinstance(k, int) and k >= 1 and v in CLUSTERINGS for k, v in self.level_clustering.items()),
             f"level_clustering must map numbers of clusters (>= 1) to one of {', '.join(CLUSTERINGS)}, "
             f"got {self.level_clustering!r}")
        # nested levels are cut from one k-means tree: refuse a method they would not apply (the field's
        # default level_clustering is allowed and documented as not applied, so that "hierarchy: divisive" alone works)
        default_levels = next(f for f in fields(self) if f.name == "level_clustering").default_factory()
        need(self.hierarchy not in TREE_HIERARCHIES or (self.clustering == "kmeans" and (
             self.level_clustering == default_levels or set(self.level_clustering.values()) <= {"kmeans"})),
             f"hierarchy {self.hierarchy!r} cuts every level from one k-means tree, so clustering "
             f"{self.clustering!r} with level_clustering {self.level_clustering!r} cannot apply; use hierarchy "
             "'independent' or 'foreground' for per-level methods, or clustering 'kmeans' with level_clustering {}")

        need(self.intensity_weight >= 0, f"intensity_weight must be >= 0 (0 = off), got {self.intensity_weight}")
        need(self.potts_beta >= 0, f"potts_beta must be >= 0 (0 = off), got {self.potts_beta}")
        need(self.potts_method in POTTS_METHODS,
             f"potts_method must be one of {', '.join(POTTS_METHODS)}, got {self.potts_method!r}")
        need(isinstance(self.potts_iter, int) and self.potts_iter >= 1, f"potts_iter must be an integer >= 1, "
             f"got {self.potts_iter!r}")
        # a k-means tree refines nothing: the defaults of the refinement fields are allowed and not applied (as
        # level_clustering's), any other non-zero value is refused
        defaults = Config.__dataclass_fields__
        unapplied = all(getattr(self, name) in (0, defaults[name].default)
                        for name in ("potts_beta", "intensity_weight"))
        need(self.hierarchy not in TREE_HIERARCHIES or unapplied,
             f"potts_beta and intensity_weight need hierarchy 'independent' or 'foreground' (they refine each "
             f"level's own clustering), got hierarchy {self.hierarchy!r}; set them to 0 or use another hierarchy")
        need(isinstance(self.overcluster, int) and self.overcluster >= 1,
             f"overcluster must be an integer >= 1 (1 = off), got {self.overcluster!r}")
        need(self.overcluster in (1, defaults["overcluster"].default)
             or (self.hierarchy == "foreground" and self.refine == "once"),
             f"overcluster {self.overcluster} merges the finer levels' clusters of hierarchy 'foreground' with refine "
             f"'once', got hierarchy {self.hierarchy!r} and refine {self.refine!r}; set overcluster: 1 or use those")
        need(isinstance(self.refine_passes, int) and self.refine_passes >= 1,
             f"refine_passes must be an integer >= 1, got {self.refine_passes!r}")
        need(self.coherence_sigma >= 0, f"coherence_sigma must be >= 0 (0 = off), got {self.coherence_sigma}")
        need(self.coherence_sigma in (0, defaults["coherence_sigma"].default)
             or (self.hierarchy == "foreground" and self.refine == "once"),
             f"coherence_sigma {self.coherence_sigma} adds a channel to the finer levels of hierarchy 'foreground' "
             f"with refine 'once', got hierarchy {self.hierarchy!r} and refine {self.refine!r}; set coherence_sigma: 0 "
             f"or use those")
        need(self.overcluster * (max(self.levels) - 1) < MAX_CLUSTERS,
             f"overcluster {self.overcluster} x (largest level {max(self.levels)} - 1) must stay below "
             f"{MAX_CLUSTERS} clusters; lower overcluster or the levels")
        need(self.foreground in FOREGROUNDS,
             f"foreground must be one of {', '.join(FOREGROUNDS)}, got {self.foreground!r}")
        need(0.0 <= self.foreground_agreement <= 1.0,
             f"foreground_agreement must be a Dice between 0 and 1, got {self.foreground_agreement}")
        need(isinstance(self.masked_stage, dict) and set(self.masked_stage) <= set(MASKED_STAGE_FIELDS),
             f"masked_stage may set only {', '.join(MASKED_STAGE_FIELDS)}, got {self.masked_stage!r}")
        if self.masked_stage and self.hierarchy == "foreground" and self.foreground == "auto":
            try:  # the masked stage's own values are checked by the same rules, as the configuration they make
                self.masked_config()
            except ValueError as err:
                raise ValueError(f"invalid configuration: masked_stage {self.masked_stage!r}: "
                                 f"{str(err).removeprefix('invalid configuration: ')}") from None
        need(self.refine in REFINE_METHODS, f"refine must be one of {', '.join(REFINE_METHODS)}, got {self.refine!r}")
        need(self.embedding_weight >= 0, f"embedding_weight must be >= 0 (0 = intensities only), "
             f"got {self.embedding_weight}")
        need(self.embedding_weight_mm >= 0, f"embedding_weight_mm must be >= 0 mm (0 = the same embedding weight at "
             f"every voxel size), got {self.embedding_weight_mm}")
        need(self.refine_init in REFINE_INITS,
             f"refine_init must be one of {', '.join(REFINE_INITS)}, got {self.refine_init!r}")
        need(self.bias_fwhm >= 0, f"bias_fwhm must be >= 0 mm (0 = no bias field), got {self.bias_fwhm}")
        need(self.mixture_proportions >= 0,
             f"mixture_proportions must be >= 0 (0 = classes equally likely a priori), got {self.mixture_proportions}")
        need(self.mixture_proportions_mm >= 0, f"mixture_proportions_mm must be >= 0 mm (0 = the same weight at every "
             f"voxel size), got {self.mixture_proportions_mm}")
        need(self.mixture_proportions == 0 or self.refine == "hmrf_em",
             f"mixture_proportions {self.mixture_proportions} is read by refine 'hmrf_em' only, got refine "
             f"{self.refine!r}; set refine: hmrf_em or mixture_proportions: 0")
        need(isinstance(self.bias_classes, int) and not isinstance(self.bias_classes, bool) and self.bias_classes >= 0,
             f"bias_classes must be an integer >= 0 (0 = a bias field per level), got {self.bias_classes!r}")
        need(self.bias_fwhm == 0 or self.refine == "hmrf_em",
             f"bias_fwhm {self.bias_fwhm} is estimated by refine 'hmrf_em' only, got refine {self.refine!r}; set "
             "refine: hmrf_em or bias_fwhm: 0")
        need(isinstance(self.refine_iter, int) and self.refine_iter >= 1,
             f"refine_iter must be an integer >= 1, got {self.refine_iter!r}")
        need(self.refine != "hmrf_em" or self.hierarchy not in TREE_HIERARCHIES,
             f"refine 'hmrf_em' refines each level's own clustering; it needs hierarchy 'independent' or "
             f"'foreground', got {self.hierarchy!r}")
        need(self.refine != "hmrf_em" or self.embedding_weight + self.intensity_weight > 0,
             "refine 'hmrf_em' needs embedding_weight or intensity_weight above 0")

    def masked_config(self) -> "Config":
        """This configuration with :attr:`masked_stage` on top and ``foreground: threshold``: the stage
        ``foreground: auto`` runs where it picks the intensity mask."""
        # masked_stage {} in the result: it is applied, and checking it again would recurse; its EM does not
        # over-cluster (overcluster 1) and reads the intensities alone (coherence_sigma 0)
        return dataclasses.replace(self, foreground="threshold", masked_stage={}, overcluster=1, coherence_sigma=0.0,
                                   **self.masked_stage)

    # ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known keys are {sorted(known)}")
        data = dict(data)
        for name in ("level_smooth_sigma", "level_clustering"):  # JSON keys are strings: "2" -> 2
            if isinstance(data.get(name), dict):
                data[name] = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v
                              for k, v in data[name].items()}
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> "Config":
        """The named preset (a YAML file of :data:`PRESETS_DIR`) on top of the defaults, then ``changes``.

        ``Config.from_preset("paper")`` is the configuration of Hsu et al. 2021.
        """
        if name not in presets():
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets())}")
        data = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text()) or {}
        return cls.from_dict({**data, **changes})

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a configuration file must hold a YAML mapping of field: value")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        from .utils import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)
