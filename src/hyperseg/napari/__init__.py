"""The napari plugin: a dock widget that trains hyperseg on the open image (or loads a run) and segments it.

``napari.yaml`` (npe2 manifest, entry point ``napari.manifest`` in
``pyproject.toml``) contributes :class:`~hyperseg.napari._widget.HypersegWidget`
as *Plugins > hyperseg*. Install with ``pip install "hyperseg[napari]"`` and a
Qt binding (e.g. ``pyqt5``). The Qt-free pieces (layer names, the level tree,
the work done in the background) are in :mod:`hyperseg.napari._core`; nothing
here imports Qt or napari until the widget is created.
"""
