"""A self-contained HTML report of one segmented case (``hyperseg segment --report``, ``hyperseg demo``).

One file a user can e-mail and open in any browser, offline: everything is
inline (the volume and label maps as base64 bytes, the Poincare-disk figures
as base64 PNGs, the script that draws the slices); nothing is fetched.

What it shows
-------------
* The three orthogonal views (slices normal to axis 0, 1 and 2, as in the PNG
  report), each with its own slider (or the mouse wheel) to scroll through the
  slices; the grey image under one label layer at a time (every level ``k = K``
  and every ground-truth level), with an opacity slider. Anisotropic voxels are
  drawn with their aspect.
* The voxel embeddings in the Poincare disk (:func:`hyperseg.report.disk_coordinates`),
  coloured by the chosen layer.
* Per level, every cluster's size (voxels and share of the volume).
* With ground truth: each cluster in the colour of the class it is matched to
  (:func:`hyperseg.report.colours_matched_to_truth`) and the Dice table
  (Hungarian matching, :func:`hyperseg.metrics.dice_iou`).

Volumes above :data:`MAX_VOXELS` voxels are shown every ``s``-th voxel along
each axis (sizes and Dice are computed on the full maps), so that the file stays
small enough to open.

The data block is a JSON object in ``<script type="application/json"
id="hyperseg-data">``: ``shape`` ``[D, H, W]`` (as shown), ``spacing``,
``image`` (base64 uint8, C order), ``layers`` (``name``, ``data`` base64 uint8
colour indices, ``disk`` PNG base64 or ``null``), ``palette`` (``"#rrggbb"`` per
colour index). Once drawn, the page sets ``data-rendered`` on ``<body>`` to the
number of views drawn and ``data-label-pixels`` to the number of pixels of the
three views that carry a label colour (what a headless-browser test checks).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .report import (DISPLAY_PERCENTILES, MAX_DISK_POINTS, OVERLAY_ALPHA, _new_figure, _png_bytes,
                     colours_matched_to_truth, disk_coordinates, disk_frame, label_cmap, truth_for)
from .utils import atomic_write

#: Volumes with more voxels are shown subsampled (every s-th voxel per axis): 16 M voxels is 21 MB of base64 a map.
MAX_VOXELS = 4_000_000
#: Longest side of a view on screen, in CSS pixels.
VIEW_PX = 280


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    """The image scaled to 0..255 between its display percentiles (as in the PNG report)."""
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, DISPLAY_PERCENTILES) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    scaled = (np.nan_to_num(image, nan=lo) - lo) / (hi - lo)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in rgb[:3])


def _disk_png(xy: np.ndarray, colour: np.ndarray, n_colours: int, hyperbolic: bool, how: str) -> bytes:

    fig = _new_figure(3.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=label_cmap(n_colours), vmin=-0.5, vmax=n_colours - 0.5,
               s=3, linewidths=0, rasterized=True)
    disk_frame(ax, hyperbolic)
    ax.set_xlabel(("Poincare disk: " if hyperbolic else "Euclidean latent: ") + how, fontsize=6)
    fig.tight_layout()
    return _png_bytes(fig, dpi=100)


def _sizes_table(name: str, lab: np.ndarray, lut: np.ndarray | None, palette: list[str],
                 matched: dict[int, int] | None) -> str:
    counts = np.bincount(lab.reshape(-1).astype(np.int64))
    total = int(lab.size)
    rows = []
    for cluster, n in enumerate(counts):
        if n == 0:
            continue
        colour = palette[int(lut[cluster]) if lut is not None else cluster]
        match = ""
        if matched is not None:
            match = f"<td>{matched[cluster]}</td>" if cluster in matched else "<td>-</td>"
        rows.append(f'<tr><td><span class="sw" style="background:{colour}"></span> {cluster}</td>'
                    f"<td>{int(n):,}</td><td>{100.0 * n / total:.1f} %</td>{match}</tr>")
    head = "<th>matched class</th>" if matched is not None else ""
    return (f'<table class="sizes"><caption>{html.escape(name)}</caption><tr><th>cluster</th><th>voxels</th>'
            f"<th>share</th>{head}</tr>{''.join(rows)}</table>")


def render_html_report(
    image: np.ndarray,
    labels: dict[int, np.ndarray],
    embedding: np.ndarray | None = None,
    c: float | None = 1.0,
    spacing: tuple[float, float, float] | None = None,
    title: str = "",
    truth: dict[int, np.ndarray] | None = None,
    max_points: int = MAX_DISK_POINTS,
    seed: int = 0,
    max_voxels: int = MAX_VOXELS,
) -> str:
    """The report of one case as one HTML string (nothing is written).

    ``image``: ``(D, H, W)`` (the first channel); ``labels``: ``{K: (D, H, W)}``
    integer maps; ``embedding``: ``(D, H, W, d)`` latent points (ball points for
    ``c`` > 0, Euclidean for ``c = None``) or ``None`` to leave the disk out;
    ``spacing``: voxel size along ``D, H, W``; ``truth``: ``{level: (D, H, W)}``
    ground truth (classes ``0..n-1``) or ``None``. The disk shows at most
    ``max_points`` voxels drawn at random (``seed``).
    """
    from .metrics import dice_iou

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (D, H, W), got {image.shape}")
    truth = {int(k): np.asarray(v).astype(np.int64) for k, v in (truth or {}).items()}
    for what, maps in (("label map for k", labels), ("truth level", truth)):
        for key, m in maps.items():
            if np.shape(m) != image.shape:
                raise ValueError(f"{what}={key} has shape {np.shape(m)}, the image {image.shape}")
    if embedding is not None and np.shape(embedding)[:3] != image.shape:
        raise ValueError(f"embedding has shape {np.shape(embedding)}, expected {image.shape} + (d,)")
    sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)

    # colour index per voxel of every layer: clusters in their matched class's colour where truth is given
    layers: list[tuple[str, np.ndarray, np.ndarray | None, dict[int, int] | None]] = []
    dice_rows = []
    for k in sorted(labels):
        lab = np.asarray(labels[k]).astype(np.int64)
        if truth:
            level = truth_for(k, truth)
            shown, lut = colours_matched_to_truth(lab, truth[level])
            score = dice_iou(lab, truth[level])
            layers.append((f"k = {k}", shown, lut, score["matching"]))
            dice_rows.append((level, k, score))
        else:
            layers.append((f"k = {k}", lab, None, None))
    for level in sorted(truth):
        layers.append((f"truth level {level}", truth[level], None, None))
    n_colours = max([int(m.max()) + 1 for _, m, _, _ in layers] + [10])
    palette = [_hex(rgb) for rgb in label_cmap(n_colours)(np.arange(n_colours))]

    stride = 1
    while image[::stride, ::stride, ::stride].size > max_voxels:
        stride += 1
    view = (slice(None, None, stride),) * 3
    shown_shape = image[view].shape

    disk_xy = None
    if embedding is not None:
        flat = np.asarray(embedding).reshape(-1, np.shape(embedding)[-1])
        rng = np.random.default_rng(seed)
        n = min(len(flat), max(int(max_points), 1))
        idx = np.sort(rng.choice(len(flat), size=n, replace=False))
        disk_xy, how = disk_coordinates(flat[idx], c)

    data_layers = []
    for name, m, _, _ in layers:
        disk = None
        if disk_xy is not None:
            disk = _b64(_disk_png(disk_xy, m.reshape(-1)[idx], n_colours, c is not None, how))
        data_layers.append({"name": name, "data": _b64(np.ascontiguousarray(m[view], dtype=np.uint8).tobytes()),
                            "disk": disk})
    payload = {"shape": list(shown_shape), "spacing": [s * stride for s in sp], "stride": stride,
               "image": _b64(np.ascontiguousarray(_grey_uint8(image)[view]).tobytes()),
               "layers": data_layers, "palette": palette, "opacity": OVERLAY_ALPHA, "view_px": VIEW_PX}

    sizes = "".join(_sizes_table(name, np.asarray(labels[k]), lut, palette, matched)
                    for k, (name, _, lut, matched) in zip(sorted(labels), layers))
    dice = ""
    if dice_rows:
        n_cls = max(len(s["dice"]) for _, _, s in dice_rows)
        head = "".join(f"<th>class {j}</th>" for j in range(n_cls))
        body = ""
        for level, k, s in dice_rows:
            cells = "".join(f"<td>{v:.3f}</td>" if np.isfinite(v) else "<td>-</td>" for v in s["dice"])
            cells += "<td></td>" * (n_cls - len(s["dice"]))
            body += (f"<tr><td>{level}</td><td>{k}</td><td><b>{s['mean_dice']:.3f}</b></td>"
                     f"<td>{s['mean_iou']:.3f}</td>{cells}</tr>")
        dice = (f'<h2>Dice against the ground truth</h2><table class="dice"><tr><th>level</th><th>clusters</th>'
                f"<th>mean Dice</th><th>mean IoU</th>{head}</tr>{body}</table>"
                "<p class=note>Clusters matched to classes one to one by the Hungarian algorithm (maximal summed "
                "Dice); each cluster is drawn in its class's colour, unmatched clusters in colours of their own.</p>")
    note = (f"<p class=note>Shown: one voxel in {stride} along each axis ({' x '.join(map(str, shown_shape))} of "
            f"{' x '.join(map(str, image.shape))}); sizes and Dice are of the full maps.</p>" if stride > 1 else "")
    heading = html.escape(title or "hyperseg report")
    data_json = json.dumps(payload).replace("</", "<\\/")
    return _TEMPLATE.format(title=heading, shape=" x ".join(map(str, image.shape)),
                            spacing=" x ".join(f"{s:g}" for s in sp), note=note, sizes=sizes, dice=dice,
                            data=data_json, script=_SCRIPT, style=_STYLE,
                            disk_hidden="" if disk_xy is not None else " hidden")


def save_html_report(path: str | Path, image: np.ndarray, labels: dict[int, np.ndarray],
                     embedding: np.ndarray | None = None, **kwargs) -> Path:
    """:func:`render_html_report`, written atomically to ``path``. Returns ``path``."""
    return write_html(path, render_html_report(image, labels, embedding, **kwargs))


def write_html(path: str | Path, text: str) -> Path:
    """Write an HTML report (from :func:`render_html_report`) atomically, UTF-8."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px 0; } h2 { font-size: 16px; margin: 18px 0 6px 0; }
.controls { margin: 8px 0; display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
.views { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
.view { display: flex; flex-direction: column; align-items: center; font-size: 12px; }
canvas { image-rendering: pixelated; image-rendering: crisp-edges; background: #000; }
.view input[type=range] { width: 100%; }
table { border-collapse: collapse; font-size: 12px; margin: 4px 12px 8px 0; display: inline-table;
        vertical-align: top; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
caption { font-weight: bold; text-align: left; }
.sw { display: inline-block; width: 10px; height: 10px; border: 1px solid #555; }
.note { font-size: 12px; color: #555; }
#disk img { width: 300px; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
<div class="note">volume {shape} voxels, voxel size {spacing}; hyperseg report</div>{note}
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>opacity <input id="opacity" type="range" min="0" max="100"></label>
</div>
<div class="views"><div class="views" id="views"></div>
<div id="disk"{disk_hidden}><img id="disk-img" alt="Poincare disk"></div></div>
<h2>Cluster sizes</h2>{sizes}
{dice}
<script type="application/json" id="hyperseg-data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  const D = JSON.parse(document.getElementById('hyperseg-data').textContent);
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const shape = D.shape, sp = D.spacing, img = bytes(D.image);
  const layers = D.layers.map((l) => ({name: l.name, data: bytes(l.data), disk: l.disk}));
  const rgb = D.palette.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
  const strides = [shape[1] * shape[2], shape[2], 1];
  const sel = document.getElementById('layer'), op = document.getElementById('opacity');
  const none = document.createElement('option'); none.value = -1; none.textContent = 'image only'; sel.appendChild(none);
  layers.forEach((l, i) => { const o = document.createElement('option'); o.value = i; o.textContent = l.name; sel.appendChild(o); });
  sel.value = layers.length ? 0 : -1;
  op.value = Math.round(D.opacity * 100);
  const views = [];
  for (let axis = 0; axis < 3; axis++) {
    const [ra, ca] = [0, 1, 2].filter((a) => a !== axis);
    const div = document.createElement('div'); div.className = 'view';
    const canvas = document.createElement('canvas'); canvas.width = shape[ca]; canvas.height = shape[ra];
    const w = shape[ca] * sp[ca], h = shape[ra] * sp[ra], scale = D.view_px / Math.max(w, h);
    canvas.style.width = (w * scale) + 'px'; canvas.style.height = (h * scale) + 'px';
    const slider = document.createElement('input'); slider.type = 'range'; slider.min = 0;
    slider.max = shape[axis] - 1; slider.value = Math.floor(shape[axis] / 2);
    const label = document.createElement('div');
    div.appendChild(canvas); div.appendChild(slider); div.appendChild(label);
    document.getElementById('views').appendChild(div);
    const v = {axis, ra, ca, canvas, slider, label, coloured: 0};
    canvas.addEventListener('wheel', (e) => { e.preventDefault();
      slider.value = Math.min(shape[axis] - 1, Math.max(0, +slider.value + (e.deltaY > 0 ? 1 : -1))); draw(v); });
    slider.addEventListener('input', () => draw(v));
    views.push(v);
  }
  function draw(v) {
    const ctx = v.canvas.getContext('2d'), H = shape[v.ra], W = shape[v.ca];
    const out = ctx.createImageData(W, H), s = +v.slider.value, a = +op.value / 100;
    const li = +sel.value, lab = li >= 0 ? layers[li].data : null;
    let coloured = 0;
    for (let r = 0; r < H; r++) {
      for (let c = 0; c < W; c++) {
        const idx = s * strides[v.axis] + r * strides[v.ra] + c * strides[v.ca];
        const g = img[idx], p = 4 * (r * W + c);
        let px = [g, g, g];
        if (lab && a > 0) { const col = rgb[lab[idx]]; px = px.map((x, k) => Math.round((1 - a) * x + a * col[k])); coloured++; }
        out.data[p] = px[0]; out.data[p + 1] = px[1]; out.data[p + 2] = px[2]; out.data[p + 3] = 255;
      }
    }
    ctx.putImageData(out, 0, 0);
    v.coloured = coloured;
    v.label.textContent = 'axis ' + v.axis + ' (' + 'DHW'[v.axis] + '), slice ' + (s * D.stride) + ' of ' + (shape[v.axis] * D.stride);
    document.body.dataset.labelPixels = views.reduce((n, w) => n + w.coloured, 0);
  }
  function drawAll() {
    views.forEach(draw);
    const li = +sel.value, disk = document.getElementById('disk-img');
    if (li >= 0 && layers[li].disk) { disk.src = 'data:image/png;base64,' + layers[li].disk; }
    document.body.dataset.rendered = views.length;
  }
  sel.addEventListener('change', drawAll); op.addEventListener('input', drawAll);
  drawAll();
})();
"""

__all__ = ["MAX_VOXELS", "render_html_report", "save_html_report", "write_html"]
