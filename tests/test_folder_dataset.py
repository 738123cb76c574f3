import numpy as np
import pytest
from PIL import Image

from ovbench.data.folder import FolderDataset, FolderDatasetSpec
from ovbench.errors import DataError


def make_spec(**kw):
    base = dict(name="tiny", image_dir="img", mask_dir="ann", vocabulary=["road", "tree"], ignore_index=255)
    base.update(kw)
    return FolderDatasetSpec(**base)


def write_pair(root, stem, size=(12, 10), mask_size=None, image_suffix=".png"):
    (root / "img").mkdir(exist_ok=True)
    (root / "ann").mkdir(exist_ok=True)
    rng = np.random.default_rng(abs(hash(stem)) % 2**32)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    mw, mh = mask_size or size
    mask = rng.choice(np.array([0, 1, 255], dtype=np.uint8), (mh, mw))
    Image.fromarray(image).save(root / "img" / f"{stem}{image_suffix}")
    Image.fromarray(mask).save(root / "ann" / f"{stem}.png")
    return image, mask


def test_pairs_by_stem_and_reads_exact_values(tmp_path):
    image, mask = write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ann" / "orphan.png")
    ds = FolderDataset(make_spec(), tmp_path)
    assert len(ds) == 2 and ds.unpaired_masks == ["orphan"]
    sample = ds[0]
    assert sample["name"] == "a"
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (10, 12, 3)
    np.testing.assert_array_equal(sample["image"], image)
    assert sample["mask"].dtype == np.int64
    np.testing.assert_array_equal(sample["mask"], mask)
    assert ds.class_names == ["road", "tree"] and ds.ignore_index == 255


def test_jpeg_images(tmp_path):
    write_pair(tmp_path, "a", image_suffix=".jpg")
    ds = FolderDataset(make_spec(image_suffix=".jpg"), tmp_path)
    assert ds[0]["image"].shape == (10, 12, 3)


def test_missing_folder_names_the_expected_path(tmp_path):
    with pytest.raises(DataError, match=r"image folder not found: .*img"):
        FolderDataset(make_spec(), tmp_path)


def test_no_pairs(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        FolderDataset(make_spec(), tmp_path)


def test_corrupt_image_is_one_clear_error(tmp_path):
    write_pair(tmp_path, "a")
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    ds = FolderDataset(make_spec(), tmp_path)
    with pytest.raises(DataError, match=r"a\.png: cannot decode image"):
        ds[0]


def test_truncated_image(tmp_path):
    write_pair(tmp_path, "a", size=(64, 64))
    path = tmp_path / "img" / "a.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot decode image"):
        FolderDataset(make_spec(), tmp_path)[0]


def test_mask_size_mismatch(tmp_path):
    write_pair(tmp_path, "a", size=(12, 10), mask_size=(11, 10))
    with pytest.raises(DataError, match=r"mask is 11x10 but its image a\.png is 12x10"):
        FolderDataset(make_spec(), tmp_path)[0]


def test_rgb_mask_rejected(tmp_path):
    write_pair(tmp_path, "a")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "ann" / "a.png")
    with pytest.raises(DataError, match="single-channel"):
        FolderDataset(make_spec(), tmp_path)[0]
