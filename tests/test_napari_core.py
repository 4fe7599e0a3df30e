"""The napari plugin's pieces that need no viewer (and no display): names, levels, the tree, the manifest."""
import numpy as np
import pytest

from hyperseg.napari._core import labels_name, level_tree, parse_levels

pytestmark = pytest.mark.napari


def test_layer_names_levels_and_the_tree():
    assert labels_name("image", 3) == "image_k3"
    assert parse_levels("2, 3 3 4") == [2, 3, 4]
    with pytest.raises(ValueError, match="at least 2"):
        parse_levels("1 2")
    coarse = np.array([0, 0, 1, 1, 1, 1])
    fine = np.array([0, 0, 1, 1, 2, 2])
    assert level_tree({2: coarse, 3: fine}) == {2: {0: [0], 1: [1, 2]}}


def test_the_manifest_names_the_widget():
    npe2 = pytest.importorskip("npe2")
    pytest.importorskip("qtpy")
    from importlib.resources import files

    manifest = npe2.PluginManifest.from_file(files("hyperseg.napari") / "napari.yaml")
    (widget,) = manifest.contributions.widgets
    (command,) = manifest.contributions.commands
    assert widget.command == command.id and command.python_name == "hyperseg.napari._widget:HypersegWidget"
    from hyperseg.napari._widget import HypersegWidget  # what napari imports when the widget is opened

    assert HypersegWidget.__name__ == "HypersegWidget"
    # the installed package announces it (entry point napari.manifest), as napari discovers plugins
    installed = npe2.PluginManifest.from_distribution("hyperseg")
    assert installed.name == "hyperseg" and installed.contributions.widgets[0].display_name == "hyperseg"
