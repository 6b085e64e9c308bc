"""Data sources: packaged sample, ImageFolder, cifar-10-batches-py, .npz; selection by seed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import armetrics as am
from armetrics.errors import ConfigError, DataError


def test_packaged_sample_is_balanced_cifar10():
    d = am.load_data("cifar10-sample", seed=None)
    assert d.n == 1000 and d.num_classes == 10
    ys = np.concatenate([y.numpy() for _, y in d])
    assert np.bincount(ys).tolist() == [100] * 10
    x, _ = next(iter(d))
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert d.info.classes[0] == "airplane" and d.info.classes[-1] == "truck"


def test_seed_selects_and_orders():
    a = am.load_data(n=50, seed=1, batch_size=16)
    b = am.load_data(n=50, seed=1, batch_size=7)
    c = am.load_data(n=50, seed=2)
    cat = lambda d: torch.cat([x for x, _ in d])  # noqa: E731
    assert torch.equal(cat(a), cat(b))
    assert not torch.equal(cat(a), cat(c))
    assert len(a) == 4 and a.n == 50


def test_npz_uint8_nhwc_and_float_nchw(tmp_path):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x=x8, y=y)
    np.savez(tmp_path / "b.npz", x=x8.transpose(0, 3, 1, 2).astype(np.float32) / 255, y=y)
    da = am.load_data(tmp_path / "a.npz", seed=None)
    db = am.load_data(tmp_path / "b.npz", seed=None)
    xa, ya = next(iter(da))
    xb, _ = next(iter(db))
    assert xa.shape == (6, 3, 5, 4)
    assert torch.allclose(xa, xb)
    assert torch.allclose(xa[2, 1], torch.from_numpy(x8[2, :, :, 1]).float() / 255)
    assert ya.tolist() == y.tolist() and da.num_classes == 3


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / name / f"{i}.png")
            arrays[(c, i)] = arr
    d = am.load_data(tmp_path, seed=None, batch_size=4)
    xs, ys = zip(*d)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and d.info.classes == ["cat", "dog"]
    assert torch.allclose(x[4], torch.from_numpy(arrays[(1, 1)]).permute(2, 0, 1).float() / 255)


def test_cifar_batches_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 7]}, f)
    d = am.load_data(root, seed=None)
    x, y = next(iter(d))
    assert y.tolist() == [3, 7] and x.shape == (2, 3, 32, 32)
    assert torch.allclose(x[1].flatten(), torch.from_numpy(data[1]).float() / 255)


def test_cifar_batch_with_payload_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [1]}, f)
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch"):
        am.load_data(root)
    assert not target.exists()


@pytest.mark.parametrize("make,match", [
    (lambda p: p.mkdir(), "no images"),
    (lambda p: np.savez(p, x=np.zeros((2, 4, 4, 3), np.uint8)), "needs arrays 'x' and 'y'"),
    (lambda p: np.savez(p, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, -1])), "out of range"),
    (lambda p: np.savez(p, x=np.full((2, 3, 4, 4), 3.0, np.float32), y=np.array([0, 1])), r"must lie in \[0, 1\]"),
    (lambda p: np.savez(p, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0.5, 1])), "integers"),
    (lambda p: p.write_bytes(b"garbage"), "not a readable .npz"),
])
def test_bad_sources(tmp_path, make, match):
    p = tmp_path / ("d" if "mkdir" in make.__code__.co_names else "d.npz")
    make(p)
    with pytest.raises(DataError, match=match):
        am.load_data(p)


def test_corrupt_image_named(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):  # its header is read by load_data, before any pass
        list(am.load_data(tmp_path, seed=None))


def test_bad_n():
    with pytest.raises(ConfigError, match="-n must be an integer of at least 1, got 0"):
        am.load_data(n=0)
    with pytest.raises(DataError, match="does not exist"):
        am.load_data("/no/such/dir")


def test_cifar_batches_dir_with_preprocess(tmp_path):
    """CIFAR-10's test_batch goes through --preprocess too (issue 17): Res224 of each image
    equals PIL's bilinear resize of it."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.random.default_rng(1).integers(0, 256, (2, 3072), dtype=np.uint8)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 7]}, f)
    d = am.load_data(root, seed=None, preprocess="Res224")
    x, y = next(iter(d))
    assert y.tolist() == [3, 7] and x.shape == (2, 3, 224, 224) and d.info.preprocessing == "Res224"
    hwc = data.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1)
    expected = np.stack([np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR)) for im in hwc])
    np.testing.assert_array_equal(x.numpy(), expected.transpose(0, 3, 1, 2).astype(np.float32) / 255)


def test_plain_sources_keep_the_report_data_section():
    """The data section of a plain source has exactly the fields it had before issue 17."""
    assert set(am.load_data(n=2).info.to_dict()) == {"source", "n", "seed", "num_classes", "classes"}
