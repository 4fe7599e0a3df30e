"""Make the README's two screenshots: the napari widget after segmenting, and the HTML report in Chromium.

    xvfb-run -a python docs/make_screenshots.py --run RUN      # a run folder from `hyperseg train`
    xvfb-run -a python docs/make_screenshots.py --minutes 3    # or train one here first

The volume is a synthetic one (``hyperseg.data.synthetic.generate_volume``, seed 0, 50^3) with its
three ground-truth levels, so the HTML report shows the matched colours and the Dice table. Writes
``docs/napari_widget.png`` and ``docs/report_html_example.png`` (``--out`` to change the folder).
Needs the napari extra, a display (xvfb-run) and chromium.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder to segment with (default: train one)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time when --run is not given")
    parser.add_argument("--levels", default="2 4 6")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    import warnings

    import napari
    from qtpy.QtWidgets import QApplication

    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")  # no toast in the picture

    from hyperseg.data.synthetic import generate_volume
    from hyperseg.napari._widget import HypersegWidget
    from hyperseg.report_html import save_html_report

    image, truth = generate_volume(np.random.default_rng(0), (50, 50, 50))
    viewer = napari.Viewer(title="hyperseg in napari")
    viewer.window.resize(1500, 1000)
    viewer.add_image(image, name="image")
    widget = HypersegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="hyperseg", area="right")
    app = QApplication.instance()

    def wait() -> None:
        while widget.busy:
            app.processEvents()
            time.sleep(0.05)
        if widget.error:
            raise SystemExit(widget.error)

    if args.run is not None:
        widget.load(args.run)
    else:
        widget.minutes.setValue(args.minutes)
        widget.train_button.click()
        wait()
    widget.levels_edit.setText(args.levels)
    widget.segment_button.click()
    wait()
    for layer in list(viewer.layers)[1:-1]:
        layer.visible = False  # the finest level over the image; the others are a click away
    widget.show_voxel((25, 25, 25))
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # napari's notice that its PyQt5 support is deprecated
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from matplotlib import image as mpimg

    args.out.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(args.out / "napari_widget.png", shot)
    print(f"wrote {args.out / 'napari_widget.png'}")

    seg, cfg = widget.segmentation, widget.model.cfg
    with tempfile.TemporaryDirectory() as tmp:
        page = save_html_report(Path(tmp) / "case_report.html", image, seg.labels, seg.embedding,
                                c=cfg.c if cfg.latent == "hyperbolic" else None, title="synthetic volume (seed 0)",
                                truth={level: np.asarray(t) for level, t in truth.items()})
        browser = next(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b))
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", f"--user-data-dir={tmp}/profile", "--hide-scrollbars",
                        "--window-size=1280,760", f"--screenshot={args.out / 'report_html_example.png'}",
                        page.as_uri()], check=True, capture_output=True)
    print(f"wrote {args.out / 'report_html_example.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
