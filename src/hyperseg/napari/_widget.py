"""The hyperseg dock widget for napari (Plugins > hyperseg).

On the chosen image layer ``(D, H, W)`` (its ``scale`` is the voxel size):

* **Train** a model for a number of minutes (and/or steps) in a napari thread
  worker, so the viewer stays responsive; a progress bar follows the steps or
  the time, **Cancel** stops after the current step and keeps that model. The
  run is written to the folder typed in *run folder* (a new temporary folder
  when empty), as ``hyperseg train`` writes it.
* Or **Load run** folder written by ``hyperseg train`` (or by this widget).
* **Segment** at the levels typed (e.g. ``2 3 4``), also in a worker: one
  Labels layer per level, ``{layer}_k{K}``, with the image's ``scale`` and
  ``translate`` (an existing one is updated in place).
* The **Poincare disk** dock: the voxels' embeddings (a random sample,
  projected as in the PNG report) in the colours of the finest level's Labels
  layer; a click on a voxel of a Labels layer marks that voxel's point.
* The **level tree**: each label of a level with, under it, the labels of the
  next finer level that lie inside it; clicking one shows that label alone in
  its layer and selects its children in the tree.

``widget.config`` (a :class:`~hyperseg.config.Config`) is the configuration new
models are trained with.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                            QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QTreeWidget,
                            QTreeWidgetItem, QVBoxLayout, QWidget)

from ..config import Config
from ..report import MAX_DISK_POINTS, disk_frame, disk_projection
from ._core import Progress, image_volume, labels_name, level_tree, parse_levels, segment_layer, train_on_volume

#: Roles of the tree items' data: the level K and the label.
_LEVEL_ROLE, _LABEL_ROLE = Qt.UserRole, Qt.UserRole + 1


#: Colour of the points of label 0, which napari draws transparent (the background).
BACKGROUND_RGBA = (0.6, 0.6, 0.6, 1.0)


def label_colours(layer, n: int) -> np.ndarray:
    """The colours ``(n, 4)`` RGBA that Labels ``layer`` draws labels ``0..n-1`` with; a transparent label
    (0, the background) gets :data:`BACKGROUND_RGBA` so that its points stay visible."""
    colours = np.asarray(layer.colormap.map(np.arange(n)), dtype=float).reshape(n, 4)
    colours[colours[:, 3] == 0] = BACKGROUND_RGBA
    return colours


class DiskView(QWidget):
    """A matplotlib canvas with the embedding in the Poincare disk and a marker for one voxel's point."""

    def __init__(self, parent: QWidget | None = None) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(parent)
        self.figure = Figure(figsize=(4, 4))
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self.canvas.setMinimumSize(260, 260)
        layout = QVBoxLayout(self)
        layout.addWidget(self.canvas)
        self.project = None
        self.marker = None
        self.points_xy: np.ndarray | None = None

    def draw_points(self, points: np.ndarray, colours: np.ndarray, c: float | None, title: str) -> None:
        """``points`` ``(N, d)`` latent points, ``colours`` ``(N, 4)`` RGBA."""

        self.project, how = disk_projection(points, c)
        xy = self.project(points)
        self.points_xy = xy
        ax = self.axes
        ax.clear()
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=3, linewidths=0)
        disk_frame(ax, c is not None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(how, fontsize=6)
        (self.marker,) = ax.plot([], [], "x", color="red", markersize=12, markeredgewidth=2)
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def mark(self, point: np.ndarray) -> np.ndarray:
        """Mark one latent point ``(d,)``; returns where it is drawn ``(2,)``."""
        xy = self.project(np.asarray(point)[None])[0]
        self.marker.set_data([xy[0]], [xy[1]])
        self.canvas.draw_idle()
        return xy


class HypersegWidget(QWidget):
    """Train (or load) a hyperseg model on an image layer and add its levels as Labels layers."""

    #: a :class:`~hyperseg.napari._core.Progress`, emitted from the training thread
    progressed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.config = Config()
        self.model = None
        self.run_dir: Path | None = None
        self.segmentation = None
        self.segmented_layer: str | None = None
        self.disk: DiskView | None = None
        self.busy = False
        self.error: str | None = None
        self._cancel = threading.Event()
        self._worker = None
        self._sample: np.ndarray | None = None
        self._build()
        self.progressed.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.changed.connect(self._refresh_layers)
        self._refresh_layers()

    # ----------------------------------------------------------------- layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.image_combo = QComboBox()
        form = QFormLayout()
        form.addRow("image layer", self.image_combo)
        layout.addLayout(form)

        model_box = QGroupBox("model")
        mform = QFormLayout(model_box)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.0, 24 * 60.0)
        self.minutes.setDecimals(1)
        self.minutes.setSingleStep(0.5)
        self.minutes.setValue(5.0)
        self.minutes.setSpecialValueText("no time limit")
        mform.addRow("train for (minutes)", self.minutes)
        self.steps = QSpinBox()
        self.steps.setRange(0, 10**7)
        self.steps.setSpecialValueText("no step limit")
        mform.addRow("at most (steps)", self.steps)
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("empty: a new temporary folder")
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.run_edit)
        row.addWidget(browse)
        mform.addRow("run folder", row)
        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.load_button = QPushButton("Load run")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.load_button.clicked.connect(self.load)
        for b in (self.train_button, self.cancel_button, self.load_button):
            buttons.addWidget(b)
        mform.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        mform.addRow(self.progress)
        layout.addWidget(model_box)

        seg_box = QGroupBox("segmentation")
        sform = QFormLayout(seg_box)
        self.levels_edit = QLineEdit("2 3 4")
        sform.addRow("levels (clusters)", self.levels_edit)
        self.disk_check = QCheckBox("Poincare disk view")
        self.disk_check.setChecked(True)
        sform.addRow(self.disk_check)
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        sform.addRow(self.segment_button)
        layout.addWidget(seg_box)

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["level tree", "voxels"])
        self.tree.setSelectionMode(QTreeWidget.ExtendedSelection)
        self.tree.itemClicked.connect(self._on_tree_click)
        layout.addWidget(self.tree)
        self.status = QLabel("train a model on the image, or load a run folder")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self._set_busy(False)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "run folder")
        if folder:
            self.run_edit.setText(folder)

    # ----------------------------------------------------------------- state
    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        for b in (self.train_button, self.load_button, self.segment_button):
            b.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, err: BaseException) -> None:
        self.error = " ".join(str(err).split()) or type(err).__name__
        self._say(f"error: {self.error}")
        self._set_busy(False)

    def image_layer(self):
        """The chosen image layer (a ValueError that says what to do when there is none)."""
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError("no image layer: open a 3D image in napari first")
        return self.viewer.layers[name]

    def _start(self, func, *args, on_done, **kwargs) -> None:
        from napari.qt.threading import create_worker

        self.error = None
        self._set_busy(True)
        worker = create_worker(func, *args, _start_thread=False, **kwargs)
        worker.returned.connect(on_done)
        worker.errored.connect(self._fail)
        worker.finished.connect(lambda: self._set_busy(False))
        self._worker = worker
        worker.start()

    # ----------------------------------------------------------------- actions
    def train(self) -> None:
        """Train a new model on the chosen image layer in a worker thread."""
        try:
            layer = self.image_layer()
            volume = image_volume(layer.data, layer.scale, layer.name)
        except ValueError as err:
            self._fail(err)
            return
        minutes = self.minutes.value() or None
        steps = self.steps.value() or None
        if minutes is None and steps is None:
            self._fail(ValueError("give a number of minutes or of steps to train for"))
            return
        self._cancel.clear()
        self.progress.setValue(0)
        self._say(f"training on {layer.name} ...")
        run = self.run_edit.text().strip() or None
        self._start(train_on_volume, volume, self.config, run, minutes, steps, report=self.progressed.emit,
                    cancelled=self._cancel.is_set, on_done=self._on_trained)

    def cancel(self) -> None:
        """Stop training after the current step (the model of that step is kept)."""
        self._cancel.set()
        self._say("stopping after this step ...")

    def _on_progress(self, progress: Progress) -> None:
        self.progress.setValue(int(round(1000 * progress.fraction)))
        self._say(f"training: {progress.text}")

    def _on_trained(self, result) -> None:
        self.model, self.run_dir = result
        self.progress.setValue(1000)
        self._say(f"trained {'(cancelled) ' if self._cancel.is_set() else ''}; the run is in {self.run_dir}")

    def load(self, folder: str | Path | None = None) -> None:
        """Load a run folder (``folder``, else the one typed in *run folder*)."""
        from ..checkpoint import load_model

        folder = folder or self.run_edit.text().strip()
        if not folder:
            self._fail(ValueError("type or choose a run folder to load"))
            return
        try:
            self.model = load_model(folder).eval()
        except (ValueError, OSError) as err:
            self._fail(err)
            return
        self.run_dir = Path(folder)
        self._say(f"loaded {folder}")

    def segment(self) -> None:
        """Segment the chosen image layer at the typed levels in a worker thread."""
        try:
            if self.model is None:
                raise ValueError("no model: train one or load a run folder first")
            layer = self.image_layer()
            volume = image_volume(layer.data, layer.scale, layer.name)
            levels = parse_levels(self.levels_edit.text())
        except ValueError as err:
            self._fail(err)
            return
        self._say(f"segmenting {layer.name} into {', '.join(map(str, levels))} clusters ...")
        self._start(segment_layer, self.model, volume, levels, on_done=lambda seg: self._on_segmented(layer, seg))

    # ----------------------------------------------------------------- results
    def _on_segmented(self, layer, seg) -> None:
        self.segmentation = seg
        self.segmented_layer = layer.name
        for k, lab in sorted(seg.labels.items()):
            name = labels_name(layer.name, k)
            if name in self.viewer.layers:
                out = self.viewer.layers[name]
                out.data = lab
                out.scale, out.translate = layer.scale, layer.translate
            else:
                out = self.viewer.add_labels(lab, name=name, scale=layer.scale, translate=layer.translate)
                out.mouse_drag_callbacks.append(self._on_labels_click)
        self._fill_tree(seg.labels)
        if self.disk_check.isChecked():
            self.show_disk()
        self._say(f"added {', '.join(labels_name(layer.name, k) for k in sorted(seg.labels))}")

    def _fill_tree(self, labels: dict[int, np.ndarray]) -> None:
        self.tree.clear()
        ks = sorted(labels)
        if not ks:
            return
        tree = level_tree(labels)
        counts = {k: np.bincount(np.asarray(labels[k]).reshape(-1)) for k in ks}

        def item(k: int, label: int) -> QTreeWidgetItem:
            node = QTreeWidgetItem([f"k{k}: {label}", f"{int(counts[k][label]):,}"])
            node.setData(0, _LEVEL_ROLE, k)
            node.setData(0, _LABEL_ROLE, label)
            if k in tree:
                nxt = ks[ks.index(k) + 1]
                for child in tree[k].get(label, []):
                    node.addChild(item(nxt, child))
            return node

        for label in np.flatnonzero(counts[ks[0]] > 0):
            self.tree.addTopLevelItem(item(ks[0], int(label)))
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)

    def _on_tree_click(self, node: QTreeWidgetItem, column: int = 0) -> None:
        """Show that label alone in its layer, and select its children (the finer labels inside it)."""
        k, label = int(node.data(0, _LEVEL_ROLE)), int(node.data(0, _LABEL_ROLE))
        name = labels_name(self.segmented_layer or "", k)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.selected_label = label
            layer.show_selected_label = True
            self.viewer.layers.selection.active = layer
        self.tree.clearSelection()
        node.setSelected(True)
        node.setExpanded(True)
        for i in range(node.childCount()):
            node.child(i).setSelected(True)

    def show_disk(self) -> None:
        """Draw (or redraw) the Poincare-disk dock, coloured like the finest level's Labels layer."""
        seg = self.segmentation
        if seg is None:
            return
        k = max(seg.labels)
        layer = self.viewer.layers[labels_name(self.segmented_layer, k)]
        flat = seg.embedding.reshape(-1, seg.embedding.shape[-1])
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(flat), size=min(len(flat), MAX_DISK_POINTS), replace=False))
        labels = np.asarray(seg.labels[k]).reshape(-1)[idx]
        colours = label_colours(layer, int(labels.max()) + 1)[labels]
        cfg = self.model.cfg
        if self.disk is None:
            self.disk = DiskView()
            self.viewer.window.add_dock_widget(self.disk, name="Poincare disk", area="right")
        self._sample = idx
        self.disk.draw_points(flat[idx], colours, cfg.c if cfg.latent == "hyperbolic" else None,
                              f"{len(idx)} voxels, coloured by {layer.name}")

    def show_voxel(self, voxel) -> np.ndarray | None:
        """Mark voxel ``(d, h, w)``'s embedding in the disk; returns where it is drawn (``None`` outside)."""
        seg = self.segmentation
        if seg is None or self.disk is None or self.disk.project is None:
            return None
        v = tuple(int(i) for i in voxel)
        if len(v) != 3 or any(i < 0 or i >= n for i, n in zip(v, seg.embedding.shape[:3])):
            return None
        return self.disk.mark(seg.embedding[v])

    def _on_labels_click(self, layer, event) -> None:
        voxel = np.round(np.asarray(layer.world_to_data(event.position))[-3:]).astype(int)
        self.show_voxel(voxel)


__all__ = ["DiskView", "HypersegWidget"]
