"""Data for every RobustBench dataset, none of it downloaded (issue 17): CIFAR-100's python
archive, ImageNet folders (any subset of the 1000 WordNet-id classes), the zoo's
preprocessings, the corruption tracks (CIFAR-10-C / CIFAR-100-C .npy files, ImageNet-C
folders) and what to pass for datasets with no packaged sample.

Every source is built here in tmp_path in its real format; values are checked against
ground truth computed directly (the pixels written, the packaged wnid list, torchvision's
Resize / CenterCrop / ToTensor applied by hand)."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import armetrics as am
from armetrics import corruptions, imagenet, preprocess
from armetrics.errors import ConfigError, DataError
from armetrics_testkit import TINY_ARCH, make_tiny_net

RNG = np.random.default_rng(17)


def batches(data) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*data)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def tv(name: str | None):
    """RobustBench's ``PREPROCESSINGS[name]``, written out with torchvision (the ground truth)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode("bicubic")
    return {
        "Res256Crop224": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]),
        "BicubicRes256Crop224": T.Compose([T.Resize(256, interpolation=bicubic), T.CenterCrop(224), T.ToTensor()]),
        "Res224": T.Compose([T.Resize([224, 224]), T.ToTensor()]),
        "Crop288": T.Compose([T.CenterCrop(288), T.ToTensor()]),
        None: T.Compose([T.ToTensor()]),
    }[name]


# --------------------------------------------------------------------------- the wnid list
def test_packaged_wnids_are_the_1000_sorted_ilsvrc_ids():
    ids = imagenet.wnids()
    assert len(ids) == 1000 and len(set(ids)) == 1000 and list(ids) == sorted(ids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in ids)
    assert ids[0] == "n01440764" and ids[999] == "n15075141"
    raw = json.loads((importlib.resources.files("armetrics") / "_data" / "imagenet_wnids.json").read_text())
    assert tuple(raw) == ids
    # the same list as the installed packages' own copies (read as files, nothing imported)
    timm_dir = Path(importlib.util.find_spec("timm").submodule_search_locations[0])
    assert (timm_dir / "data" / "_info" / "imagenet_synsets.txt").read_text().split() == list(ids)
    rb_dir = Path(importlib.util.find_spec("robustbench").submodule_search_locations[0])
    rb_map = json.loads((rb_dir / "helper_files" / "imagenet_class_to_id_map.json").read_text())
    assert rb_map == {w: i for i, w in enumerate(ids)}


# ------------------------------------------------------------------------------ CIFAR-100
def write_cifar100(root: Path, n: int = 12, names=None, protocol: int = 2, overrides=None) -> tuple[np.ndarray, list]:
    """A cifar-100-python directory as the archive holds it: ``test`` and ``meta`` pickles
    with bytes keys (written by Python 2, read with encoding='bytes')."""
    root.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    fine = [int(v) for v in RNG.integers(0, 100, n)]
    fine[:3] = [0, 99, 42]
    test = {b"filenames": [b"img%d.png" % i for i in range(n)], b"batch_label": b"testing batch 1 of 1",
            b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine], b"data": x, **(overrides or {})}
    (root / "test").write_bytes(pickle.dumps(test, protocol=protocol))
    names = [f"class_{i:02d}".encode() for i in range(100)] if names is None else names
    meta = {b"fine_label_names": names, b"coarse_label_names": [b"super_%d" % i for i in range(20)]}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return x, fine


def test_cifar100_python_dir(tmp_path):
    x, fine = write_cifar100(tmp_path / "cifar-100-python")
    d = am.load_data(tmp_path / "cifar-100-python", seed=None, batch_size=5)
    xs, ys = batches(d)
    assert d.num_classes == 100 and d.info.classes[:2] == ["class_00", "class_01"] and len(d.info.classes) == 100
    assert ys.tolist() == fine
    np.testing.assert_array_equal(xs, x.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    # the seeded selection picks and orders the same images
    s = am.load_data(tmp_path / "cifar-100-python", n=5, seed=3)
    sx, sy = batches(s)
    np.testing.assert_array_equal(sx, xs[s.order])
    np.testing.assert_array_equal(sy, ys[s.order])


def test_cifar100_found_by_its_files_and_fingerprinted(tmp_path):
    write_cifar100(tmp_path / "renamed")  # not named cifar-100-python: test + meta identify it
    d = am.load_data(tmp_path / "renamed")
    assert d.num_classes == 100
    write_cifar100(tmp_path / "other")
    assert am.load_data(tmp_path / "other").fingerprint() != d.fingerprint()


def test_cifar100_hostile_files(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    write_cifar100(tmp_path / "a", overrides={b"data": Payload()})
    with pytest.raises(DataError, match="is not a readable CIFAR-100 file .*refusing to unpickle posix.system"):
        am.load_data(tmp_path / "a")
    assert not (tmp_path / "pwned").exists()
    write_cifar100(tmp_path / "b", names=[b"x"] * 99)
    with pytest.raises(DataError, match=r"meta is not a readable CIFAR-100 meta file \(its fine_label_names are 99"):
        am.load_data(tmp_path / "b")
    write_cifar100(tmp_path / "c", overrides={b"fine_labels": [1, 2]})
    with pytest.raises(DataError, match="holds 12 images but 2 labels"):
        am.load_data(tmp_path / "c")
    write_cifar100(tmp_path / "d", overrides={b"fine_labels": [100] * 12})
    with pytest.raises(DataError, match="label 100 out of range for 100 classes"):
        am.load_data(tmp_path / "d")
    write_cifar100(tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match="has no meta .*point --data at the extracted cifar-100-python"):
        am.load_data(tmp_path / "cifar-100-python")
    os.mkfifo(tmp_path / "cifar-100-python" / "meta")  # refused unopened, never blocks
    with pytest.raises(DataError, match="is a FIFO"):
        am.load_data(tmp_path / "cifar-100-python")


# ------------------------------------------------------------------------------- ImageNet
def write_folder(root: Path, classes, sizes, ext: str = ".png") -> dict[str, list[Path]]:
    """``root/<class>/<i>.<ext>``: one random RGB image per (w, h) in ``sizes``, per class."""
    files = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        files[c] = []
        for i, (w, h) in enumerate(sizes):
            f = root / c / f"{i}{ext}"
            Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f)
            files[c].append(f)
    return files


def test_imagenet_subset_gets_the_1000_class_indices(tmp_path):
    ids = imagenet.wnids()
    chosen = [ids[999], ids[0], ids[417]]
    write_folder(tmp_path / "val", chosen, [(12, 10), (12, 10)], ext=".JPEG")
    d = am.load_data(tmp_path / "val", seed=None)
    _, ys = batches(d)
    assert d.num_classes == 1000 and d.info.classes == list(ids)
    assert ys.tolist() == [0, 0, 417, 417, 999, 999]  # folders in sorted order, each its wnid's index
    assert ys.tolist() == [ids.index(w) for w in sorted(chosen) for _ in range(2)]


def test_imagenet_class_check_passes_for_1000_outputs_only(tmp_path):
    ids = imagenet.wnids()
    write_folder(tmp_path / "val", [ids[1], ids[2]], [(8, 8)] * 2)
    report = am.analyze(make_tiny_net(1000).eval(), am.load_data(tmp_path / "val"), ["accuracy"])
    assert report.data["data"]["num_classes"] == 1000 and report.data["data"]["n"] == 4
    with pytest.raises(DataError, match="the model outputs 10 classes but the data has 1000"):
        am.analyze(make_tiny_net(10).eval(), am.load_data(tmp_path / "val"), ["accuracy"])


def test_wnid_folders_mixed_or_beyond_1k(tmp_path):
    ids = imagenet.wnids()
    write_folder(tmp_path / "mixed", [ids[5], "junk"], [(8, 8)])
    with pytest.raises(DataError, match=r"mixes ImageNet class folders \(n\d{8}, \.\.\.\) with other folders \(junk\)"):
        am.load_data(tmp_path / "mixed")
    # ImageNet-21k ids that are not ILSVRC-2012 classes: a plain ImageFolder, labels in folder order
    write_folder(tmp_path / "in21k", [ids[5], "n00004475"], [(8, 8)])
    d = am.load_data(tmp_path / "in21k", seed=None)
    assert d.num_classes == 2 and batches(d)[1].tolist() == [0, 1]


def test_full_size_images_need_a_preprocessing(tmp_path):
    ids = imagenet.wnids()
    write_folder(tmp_path / "val", [ids[3]], [(50, 40), (40, 60)])
    with pytest.raises(DataError, match=r"resize it or remove it \(or pass --preprocess, e\.g\. Res256Crop224"):
        am.load_data(tmp_path / "val")


# -------------------------------------------------------------------------- preprocessing
SIZES = [(300, 240), (240, 300), (333, 500), (200, 150), (290, 290), (257, 255)]


@pytest.mark.parametrize("name", ["Res256Crop224", "BicubicRes256Crop224", "Res224", "Crop288"])
def test_preprocessing_equals_torchvision(tmp_path, name):
    ids = imagenet.wnids()
    files = write_folder(tmp_path / "val", [ids[7], ids[8]], SIZES)
    d = am.load_data(tmp_path / "val", seed=None, batch_size=4, preprocess=name)
    xs, ys = batches(d)
    expected = torch.stack([tv(name)(Image.open(f).convert("RGB")) for c in sorted(files) for f in files[c]])
    assert xs.dtype == np.float32 and xs.shape == tuple(expected.shape)
    np.testing.assert_array_equal(xs, expected.numpy())  # exact: same resampling, rounding and offsets
    assert ys.tolist() == [7] * len(SIZES) + [8] * len(SIZES)
    assert d.info.preprocessing == name and 0 <= xs.min() and xs.max() <= 1


def test_preprocessing_of_arrays_equals_torchvision(tmp_path):
    x = RNG.integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(3))
    xs, _ = batches(am.load_data(tmp_path / "d.npz", seed=None, preprocess="Res256Crop224"))
    expected = torch.stack([tv("Res256Crop224")(Image.fromarray(im)) for im in x])
    np.testing.assert_array_equal(xs, expected.numpy())
    # float images: each channel as a PIL "F" image, then clipped to [0, 1]
    from torchvision import transforms as T

    xf = RNG.random((2, 3, 20, 26), dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=xf, y=np.arange(2))
    xs, _ = batches(am.load_data(tmp_path / "f.npz", seed=None, preprocess="BicubicRes256Crop224"))
    steps = T.Compose([T.Resize(256, interpolation=T.InterpolationMode("bicubic")), T.CenterCrop(224)])
    expected = np.clip([[np.asarray(steps(Image.fromarray(p, "F"))) for p in im] for im in xf], 0, 1)
    np.testing.assert_array_equal(xs, expected.astype(np.float32))


def test_preprocessing_names():
    assert preprocess.resolve("res256crop224").name == "Res256Crop224"
    assert preprocess.resolve("none") is None and preprocess.resolve(None) is None
    assert preprocess.resolve("BicubicRes248Crop224") == preprocess.Preprocessing("BicubicRes248Crop224", 248, 224, True)
    with pytest.raises(ConfigError, match=r"--preprocess 'Res256Crp224' is not a preprocessing \(did you mean "
                                          r"Res256Crop224\?\): use one of none, Res256Crop224"):
        preprocess.resolve("Res256Crp224")
    for bad, match in [("Bicubic", "is not a preprocessing"), ("Crop0", "sizes must be 1..4096"),
                       ("Res100000", "is not a preprocessing"), (5, "must be a preprocessing name")]:
        with pytest.raises(ConfigError, match=match):
            am.load_data(preprocess=bad)


def test_preprocessing_recorded_in_report_and_fingerprint(tmp_path):
    plain = am.load_data(n=4)
    crop = am.load_data(n=4, preprocess="Crop288")
    assert "preprocessing" not in plain.info.to_dict()  # reports of plain sources keep their shape
    assert crop.info.to_dict()["preprocessing"] == "Crop288" and crop.sample_shape() == (3, 288, 288)
    assert crop.fingerprint() != plain.fingerprint()
    report = am.analyze(make_tiny_net(10).eval(), crop, ["accuracy"])
    report.save(tmp_path / "r.json")
    assert am.Report.load(tmp_path / "r.json").data["data"]["preprocessing"] == "Crop288"


def test_elongated_image_cannot_explode_through_the_resize(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (60_000, 1)).save(tmp_path / "a" / "thin.png")  # 60 kpx: within every cap
    with pytest.raises(DataError, match=r"thin.png \(60000x1 px\) would be 15360000x256 \(3932.2 MP\) after the "
                                        r"resize of Res256Crop224, more than the 64 MP"):
        am.load_data(tmp_path, preprocess="Res256Crop224")


# ------------------------------------------------------------------------- corruptions
def write_cifar_c(root: Path, block: int = 6, names=("fog", "snow"), labels_per: str = "file", classes: int = 10):
    """A CIFAR-10-C style directory: ``<corruption>.npy`` uint8 (5*block, 8, 8, 3), severities
    in turn, and ``labels.npy`` (one label per row of the file, or of one block)."""
    root.mkdir(parents=True, exist_ok=True)
    xs = {}
    for c in names:
        xs[c] = RNG.integers(0, 256, (5 * block, 8, 8, 3), dtype=np.uint8)
        np.save(root / f"{c}.npy", xs[c])
    y = RNG.integers(0, classes, block).astype(np.uint8)
    np.save(root / "labels.npy", np.tile(y, 5) if labels_per == "file" else y)
    return xs, y


@pytest.mark.parametrize("labels_per", ["file", "block"])
def test_cifar_c_severity_rows(tmp_path, labels_per):
    xs, y = write_cifar_c(tmp_path / "CIFAR-10-C", labels_per=labels_per)
    for severity in (1, 3, 5):
        d = am.load_data(tmp_path / "CIFAR-10-C", corruption="fog", severity=severity, seed=None)
        x, labels = batches(d)
        block = xs["fog"][(severity - 1) * 6:severity * 6]
        np.testing.assert_array_equal(x, block.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        assert labels.tolist() == y.tolist() and d.num_classes == 10 and d.info.classes[0] == "airplane"
        assert (d.info.corruption, d.info.severity) == ("fog", severity)
    d = am.load_data(tmp_path / "CIFAR-10-C", corruption="snow", severity=2, n=4, seed=1)
    x, labels = batches(d)
    np.testing.assert_array_equal(x, xs["snow"][6 + d.order].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert labels.tolist() == y[d.order].tolist()
    info = d.info.to_dict()
    assert info["corruption"] == "snow" and info["severity"] == 2
    other = am.load_data(tmp_path / "CIFAR-10-C", corruption="snow", severity=3, n=4, seed=1)
    assert other.fingerprint() != d.fingerprint()


def test_cifar100_c_classes(tmp_path):
    write_cifar_c(tmp_path / "CIFAR-100-C", classes=3)  # named so: 100 classes even if labels are low
    d = am.load_data(tmp_path / "CIFAR-100-C", corruption="fog", severity=1)
    assert d.num_classes == 100 and d.info.classes[:2] == ["apple", "aquarium_fish"]
    assert d.info.classes == sorted(d.info.classes) and len(set(d.info.classes)) == 100
    write_cifar_c(tmp_path / "c100", classes=100)  # labels above 9: CIFAR-100-C too
    assert am.load_data(tmp_path / "c100", corruption="fog", severity=1).num_classes == 100


def test_cifar_c_reads_only_the_selected_rows(tmp_path, monkeypatch):
    write_cifar_c(tmp_path / "c", block=2000)  # 10,000 rows of 192 bytes
    reads = []
    real = corruptions._read_rows
    monkeypatch.setattr(corruptions, "_read_rows", lambda p, m, rows: reads.append((p.name, len(rows))) or real(p, m, rows))
    d = am.load_data(tmp_path / "c", corruption="fog", severity=4, n=3, seed=0)
    assert d.n == 3 and reads == [("labels.npy", 2000), ("fog.npy", 3)]


def test_corruption_options_are_checked():
    for severity in (0, 6, -1, "5", True, 2.5):
        with pytest.raises(ConfigError, match=r"--severity must be an integer 1\.\.5"):
            am.load_data("cifar10-sample", corruption="fog", severity=severity)
    with pytest.raises(ConfigError, match=r"unknown corruption 'fgo' \(did you mean fog\?\): use one of brightness"):
        am.load_data(corruption="fgo", severity=1)
    with pytest.raises(ConfigError, match="unknown corruption '../../etc/passwd'"):
        am.load_data(corruption="../../etc/passwd", severity=1)
    with pytest.raises(ConfigError, match="--corruption fog needs --severity 1..5"):
        am.load_data(corruption="fog")
    with pytest.raises(ConfigError, match="--severity needs --corruption NAME"):
        am.load_data(severity=3)
    with pytest.raises(DataError, match="the packaged cifar10-sample has no corruptions: pass --data path/to/CIFAR-10-C"):
        am.load_data(corruption="fog", severity=3)


def test_corruption_dirs_misused(tmp_path, tiny_npz):
    write_cifar_c(tmp_path / "C")
    with pytest.raises(DataError, match="is a CIFAR-10-C / CIFAR-100-C directory .*pass --corruption NAME --severity"):
        am.load_data(tmp_path / "C")
    with pytest.raises(DataError, match=r"has no frost.npy \(it holds fog, snow\)"):
        am.load_data(tmp_path / "C", corruption="frost", severity=1)
    with pytest.raises(DataError, match="--corruption fog needs a CIFAR-10-C, CIFAR-100-C or ImageNet-C directory"):
        am.load_data(tiny_npz, corruption="fog", severity=1)
    with pytest.raises(DataError, match="is not a corruption dataset with fog"):
        am.load_data(tmp_path, corruption="fog", severity=1)


def test_hostile_npy_files(tmp_path):
    write_cifar_c(tmp_path / "C")
    c = tmp_path / "C"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    np.save(c / "fog.npy", np.array([Payload()] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"fog.npy holds Python objects \(dtype object\), which armetrics never unpickles"):
        am.load_data(c, corruption="fog", severity=1)
    assert not (tmp_path / "pwned").exists()
    # headers declaring millions of images in a file of a few bytes: refused before any allocation
    for rows, match in [(1_000_000_000, "declares 1,000,000,000 images, more than the 10,000,000 armetrics reads"),
                        (5_000_000, r"declares shape \(5000000, 8, 8, 3\) \(915.5 MiB\) but holds 64 bytes: the file is "
                                    r"truncated")]:
        header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({rows}, 8, 8, 3), }}"
        (c / "snow.npy").write_bytes(b"\x93NUMPY\x01\x00\x76\x00" + (header.ljust(117) + "\n").encode() + b"\0" * 64)
        with pytest.raises(DataError, match=match):
            am.load_data(c, corruption="snow", severity=1)
    np.save(c / "snow.npy", np.zeros((30, 8, 8, 3), np.uint8), allow_pickle=False)
    np.save(c / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"labels.npy holds 7 labels but snow.npy holds 30 images \(5 severities of 6\)"):
        am.load_data(c, corruption="snow", severity=2)


@pytest.mark.parametrize("array, match", [
    (np.zeros((29, 8, 8, 3), np.uint8), "holds 29 images, not 5 severities of equal size"),
    (np.zeros((30, 8, 8), np.uint8), "x must be 4-D"),
    (np.zeros((30, 8, 8, 3), [("a", "u1")]), "structured dtype"),
    (np.asfortranarray(np.zeros((30, 8, 8, 3), np.uint8)), "stored column-major"),
    (np.full((30, 8, 8, 3), 2.0, np.float32), r"float images must lie in \[0, 1\]"),
])
def test_bad_corruption_arrays(tmp_path, array, match):
    write_cifar_c(tmp_path / "C")
    np.save(tmp_path / "C" / "fog.npy", array)
    with pytest.raises(DataError, match=match) as exc:
        am.load_data(tmp_path / "C", corruption="fog", severity=1)
    one_line(exc)


def test_truncated_and_bad_labels(tmp_path):
    write_cifar_c(tmp_path / "C")
    raw = (tmp_path / "C" / "fog.npy").read_bytes()
    (tmp_path / "C" / "fog.npy").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="the file is truncated"):
        am.load_data(tmp_path / "C", corruption="fog", severity=5)
    write_cifar_c(tmp_path / "D")
    np.save(tmp_path / "D" / "labels.npy", np.full(30, 200, np.int64))
    with pytest.raises(DataError, match="label 200 out of range for 100 classes"):
        am.load_data(tmp_path / "D", corruption="fog", severity=1)
    (tmp_path / "D" / "labels.npy").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"labels.npy is not a readable .npy file"):
        am.load_data(tmp_path / "D", corruption="fog", severity=1)


def test_imagenet_c_tree(tmp_path):
    ids = imagenet.wnids()
    root = tmp_path / "ImageNet-C"
    files = write_folder(root / "fog" / "3", [ids[10], ids[20]], [(230, 224), (224, 224)], ext=".JPEG")
    write_folder(root / "snow" / "1", [ids[10]], [(8, 8)])
    d = am.load_data(root, corruption="fog", severity=3, preprocess="Res256Crop224", seed=None)
    xs, ys = batches(d)
    assert ys.tolist() == [10, 10, 20, 20] and d.num_classes == 1000
    expected = torch.stack([tv("Res256Crop224")(Image.open(f).convert("RGB")) for c in sorted(files) for f in files[c]])
    np.testing.assert_array_equal(xs, expected.numpy())
    assert (d.info.corruption, d.info.severity, d.info.preprocessing) == ("fog", 3, "Res256Crop224")
    with pytest.raises(DataError, match="is an ImageNet-C directory .*pass --corruption NAME --severity 1..5"):
        am.load_data(root)
    with pytest.raises(DataError, match=r"snow has no folder 4 \(severity 4\)"):
        am.load_data(root, corruption="snow", severity=4)


# ------------------------------------------------------------------- no packaged sample
@pytest.mark.parametrize("name, message", [
    ("cifar100", "cifar100 has no packaged sample: pass --data path/to/cifar-100-python (from "
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted)"),
    ("cifar100-sample", "cifar100 has no packaged sample: pass --data path/to/cifar-100-python"),
    ("imagenet-sample", "imagenet has no packaged sample: pass --data path/to/imagenet/val"),
    ("CIFAR-10-C", "CIFAR-10-C has no packaged sample: pass --data path/to/CIFAR-10-C --corruption NAME --severity"),
    ("imagenet_c", "ImageNet-C has no packaged sample: pass --data path/to/ImageNet-C --corruption NAME"),
    ("cifar10", "pass --data cifar10-sample (packaged"),
])
def test_no_packaged_sample_says_what_to_pass(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)  # the names are not paths here
    with pytest.raises(DataError) as exc:
        am.load_data(name)
    assert message in one_line(exc)


# --------------------------------------------------------------------------------- the CLI
def assert_error(proc, match: str, code: int = 1):
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stderr)
    assert match in lines[0] and "Traceback" not in proc.stderr, lines[0]


@pytest.fixture
def zoo_stub(monkeypatch):
    """``load_model`` returns a 1000-class tiny net recording ``preprocessing`` as the zoo
    loader does; the order of model and data loads is recorded."""
    import armetrics.data
    import armetrics.loading

    calls = []
    real_load_data = armetrics.data.load_data

    def load_model(source, **kwargs):
        calls.append("model")
        net = make_tiny_net(1000).eval()
        net.armetrics_info = armetrics.loading.ModelInfo(source=source, name=source, format="robustbench")
        net.armetrics_info.preprocessing = "Res256Crop224"
        return net

    def load_data(*args, **kwargs):
        calls.append("data")
        return real_load_data(*args, **kwargs)

    monkeypatch.setattr(armetrics.loading, "load_model", load_model)
    monkeypatch.setattr(armetrics.loading, "model_files", lambda *a, **k: [])
    monkeypatch.setattr(armetrics.data, "load_data", load_data)
    return calls


def test_cli_uses_the_zoo_models_preprocessing(cli_inproc, zoo_stub, tmp_path):
    ids = imagenet.wnids()
    write_folder(tmp_path / "val", [ids[0], ids[1]], [(300, 260), (260, 300)])
    out = tmp_path / "r.json"
    proc = cli_inproc("analyze", "robustbench:imagenet/Linf/Fake", "--data", str(tmp_path / "val"), "--probes",
                      "accuracy", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert zoo_stub == ["model", "data"]  # the model first: its preprocessing chooses the data's
    data = am.Report.load(out).data["data"]
    assert data["preprocessing"] == "Res256Crop224" and data["num_classes"] == 1000 and data["n"] == 4
    zoo_stub.clear()
    proc = cli_inproc("analyze", "robustbench:imagenet/Linf/Fake", "--data", str(tmp_path / "val"), "--probes",
                      "accuracy", "--preprocess", "none", "--quiet")
    assert_error(proc, "resize them or remove them (or pass --preprocess")  # an explicit none is kept
    assert zoo_stub == ["data"]


def test_cli_default_data_for_a_cifar100_zoo_model(cli_inproc, zoo_stub):
    proc = cli_inproc("analyze", "robustbench:cifar100/Linf/Fake", "--probes", "accuracy")
    assert_error(proc, "error: cifar100 has no packaged sample: pass --data path/to/cifar-100-python (from "
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted)")
    proc = cli_inproc("analyze", "robustbench:Fake", "--dataset", "imagenet", "--probes", "accuracy")
    assert_error(proc, "imagenet has no packaged sample")
    assert zoo_stub == []  # refused before loading anything


def test_sweep_gives_each_zoo_model_its_preprocessing(cli_inproc, zoo_stub, tmp_path):
    """A sweep of ImageNet entries recording different preprocessings: each report's data
    went through its model's own (read from the zoo's tables), each distinct one loaded once."""
    from armetrics import _robustbench as rbm

    ids = imagenet.wnids()
    write_folder(tmp_path / "val", [ids[0], ids[1]], [(300, 260), (260, 300)])
    names = ["Salman2020Do_R18", "Engstrom2019Robustness", "Debenedetti2022Light_XCiT-S12"]
    want = {n: rbm.preprocessing(n, "imagenet", "Linf") for n in names}
    assert want == {"Salman2020Do_R18": "Res256Crop224", "Engstrom2019Robustness": "Res256Crop224",
                    "Debenedetti2022Light_XCiT-S12": "BicubicRes224Crop224"}
    proc = cli_inproc("analyze", *(f"robustbench:imagenet/Linf/{n}" for n in names), "--data", str(tmp_path / "val"),
                      "--probes", "accuracy", "--out-dir", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert zoo_stub.count("data") == 2 and zoo_stub.count("model") == 3
    for n in names:
        (report,) = (tmp_path / "out").glob(f"*{n}*.json")
        assert am.Report.load(report).data["data"]["preprocessing"] == want[n], n
    zoo_stub.clear()  # an explicit --preprocess is every model's
    proc = cli_inproc("analyze", *(f"robustbench:imagenet/Linf/{n}" for n in names), "--data", str(tmp_path / "val"),
                      "--probes", "accuracy", "--out-dir", str(tmp_path / "out2"), "--quiet", "--preprocess", "Res224")
    assert proc.returncode == 0, proc.stderr
    assert zoo_stub.count("data") == 1
    assert {am.Report.load(r).data["data"]["preprocessing"] for r in (tmp_path / "out2").glob("*.json")} == {"Res224"}


def test_cli_corruption_track(cli_inproc, tmp_path):
    xs, y = write_cifar_c(tmp_path / "CIFAR-10-C")
    torch.save(make_tiny_net().state_dict(), tmp_path / "m.pt")
    out = tmp_path / "r.json"
    args = ("analyze", str(tmp_path / "m.pt"), "--arch", TINY_ARCH, "--data", str(tmp_path / "CIFAR-10-C"),
            "--probes", "accuracy", "--quiet")
    proc = cli_inproc(*args, "--corruption", "fog", "--severity", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = am.Report.load(out).data["data"]
    assert (data["corruption"], data["severity"], data["n"], data["num_classes"]) == ("fog", 5, 6, 10)
    assert_error(cli_inproc(*args, "--corruption", "fog", "--severity", "7"), "--severity must be an integer 1..5")
    assert_error(cli_inproc(*args, "--corruption", "fogg", "--severity", "1"), "did you mean fog?")
    assert_error(cli_inproc(*args), "pass --corruption NAME --severity 1..5")
    assert_error(cli_inproc(*args, "--preprocess", "Res999Crop"), "is not a preprocessing")
    assert cli_inproc(*args, "--severity", "x").returncode == 2


def test_folders_named_like_corruptions_are_still_classes(tmp_path):
    """A weather classifier's ImageFolder (fog/, snow/ holding images) is no ImageNet-C root."""
    write_folder(tmp_path / "weather", ["fog", "snow"], [(8, 8)])
    np.save(tmp_path / "weather" / "labels.npy", np.zeros(2, np.uint8))  # a stray file, no <corruption>.npy
    d = am.load_data(tmp_path / "weather", seed=None)
    assert d.info.classes == ["fog", "snow"] and batches(d)[1].tolist() == [0, 1]
