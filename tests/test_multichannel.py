"""A four-channel case in the nnU-Net layout trains and segments through the command line."""
import nibabel as nib
import numpy as np
from conftest import tiny_yaml

from hyperseg.cli import main

TINY_CONFIG = tiny_yaml(checkpoint_every=2)


def write_case(folder, name, seed, affine):
    """Four modalities of one tiny 'scan': a box whose contrast differs per channel, in zero background."""
    rng = np.random.default_rng(seed)
    shape = (16, 14, 12)
    box = np.zeros(shape, bool)
    box[3:13, 2:12, 2:10] = True
    for c, contrast in enumerate((1.0, -0.5, 2.0, 0.3)):
        img = np.where(box, 10 + contrast * 5 + rng.standard_normal(shape), 0).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), str(folder / f"{name}_{c:04d}.nii.gz"))


def test_four_channel_nnunet_case_trains_and_segments(tmp_path):
    data = tmp_path / "imagesTr"
    data.mkdir()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-5, 3, 7]
    for i in range(2):
        write_case(data, f"case{i}", seed=i, affine=affine)
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    run, out = tmp_path / "run", tmp_path / "seg"
    assert main(["train", "-i", str(data), "-o", str(run), "--config", str(tmp_path / "tiny.yaml"),
                 "--steps", "2", "-q"]) == 0
    assert "in_channels: 4" in (run / "config.yaml").read_text()
    assert main(["segment", "-m", str(run), "-i", str(data), "-o", str(out), "--levels", "2", "3", "-q"]) == 0
    for i in range(2):
        for k in (2, 3):
            img = nib.load(str(out / f"case{i}_k{k}.nii.gz"))
            assert img.shape == (16, 14, 12) and np.allclose(img.affine, affine)
            assert np.asarray(img.dataobj).max() < k
    assert not list(out.glob("*_0000_k2*"))  # channel files are not segmented one by one
