"""Tests for keras_slim.data: specs, sources, hold-outs, pipelines, errors.

Offline only: TFDS is exercised through `tfds.testing.mock_data`, folders are
built in `tmp_path` (synthetic PNGs, or a small slice of the shared CIFAR-10
JPEG archive when it is present).
"""

import collections
import hashlib
import json
import pathlib
import tarfile
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_slim import data

ARCHIVE = (
    pathlib.Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "cifar10-jpeg-train.tar.gz"
)


def collect(ds):
    """All (images, labels) of one pass over a batched dataset, as numpy."""
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def hashes(images):
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()
            for im in images]


def digits_reference():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype("float32")[..., None], d.target


def is_pad_crop_flip(augmented, original, pad):
    """Whether `augmented` is a zero-pad + crop (+ maybe flip) of `original`."""
    h, w, _ = original.shape
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            if np.array_equal(crop, augmented):
                return True
            if np.array_equal(crop[:, ::-1], augmented):
                return True
    return False


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(array))


# ---------------------------------------------------------------------------
# parse_spec


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("digits", ("digits", "")),
        (" digits ", ("digits", "")),
        ("tfds:cifar10", ("tfds", "cifar10")),
        ("tfds:mnist:3.0.1", ("tfds", "mnist:3.0.1")),
        ("folder:/data/train", ("folder", "/data/train")),
        ("folder:C:/x", ("folder", "C:/x")),
    ],
)
def test_parse_spec(spec, expected):
    assert data.parse_spec(spec) == expected


# ---------------------------------------------------------------------------
# digits


def test_digits_shapes_ranges_and_info():
    train, val, info = data.load("digits", batch_size=128)
    assert info == data.DatasetInfo(
        name="digits",
        num_classes=10,
        input_shape=(8, 8, 1),
        num_train=1437,
        num_validation=360,
        class_names=tuple(str(i) for i in range(10)),
    )
    x, y = next(iter(train))
    assert x.shape == (128, 8, 8, 1) and x.dtype == tf.float32
    assert y.shape == (128,) and y.dtype == tf.int32
    for ds, n in ((train, 1437), (val, 360)):
        images, labels = collect(ds)
        assert images.shape == (n, 8, 8, 1)
        assert images.min() == 0.0 and images.max() == 1.0
        assert set(labels.tolist()) == set(range(10))


def test_digits_holdout_is_fixed_stratified_and_disjoint():
    ref_images, ref_labels = digits_reference()
    train_a, val_a, _ = data.load("digits", seed=0)
    train_b, val_b, _ = data.load("digits", seed=7, validation_split=0.5)
    xa, ya = collect(train_a)
    va, vya = collect(val_a)
    xb, _ = collect(train_b)
    vb, _ = collect(val_b)

    # Together the splits are exactly the data set, each image once.
    assert collections.Counter(hashes(xa) + hashes(va)) == collections.Counter(
        hashes(ref_images))
    assert not set(hashes(xa)) & set(hashes(va))
    # Labels travel with their images.
    label_of = dict(zip(hashes(ref_images), ref_labels.tolist()))
    assert [label_of[h] for h in hashes(va)] == vya.tolist()
    assert [label_of[h] for h in hashes(xa)] == ya.tolist()
    # Fixed 20% hold-out whatever seed / validation_split, in a fixed order.
    np.testing.assert_array_equal(va, vb)
    assert sorted(hashes(xa)) == sorted(hashes(xb))
    # Stratified: every class has 35..37 of the 360 held-out images.
    counts = np.bincount(vya, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    train_a, _, _ = data.load("digits", seed=3)
    train_b, _, _ = data.load("digits", seed=3)
    train_c, _, _ = data.load("digits", seed=4)
    epoch1_a, labels1_a = collect(train_a)
    epoch2_a, _ = collect(train_a)
    epoch1_b, labels1_b = collect(train_b)
    epoch2_b, _ = collect(train_b)
    epoch1_c, _ = collect(train_c)
    np.testing.assert_array_equal(epoch1_a, epoch1_b)
    np.testing.assert_array_equal(labels1_a, labels1_b)
    np.testing.assert_array_equal(epoch2_a, epoch2_b)
    assert not np.array_equal(epoch1_a, epoch2_a)  # new order per epoch
    assert not np.array_equal(epoch1_a, epoch1_c)  # seed matters
    assert sorted(hashes(epoch1_a)) == sorted(hashes(epoch2_a))
    assert train_a.options().deterministic is True


def test_no_shuffle_keeps_a_fixed_order():
    train, _, _ = data.load("digits", shuffle=False, batch_size=500)
    first, _ = collect(train)
    second, _ = collect(train)
    np.testing.assert_array_equal(first, second)


def test_batching_and_drop_remainder():
    train, val, _ = data.load("digits", batch_size=100, drop_remainder=True)
    sizes = [int(x.shape[0]) for x, _ in train]
    assert sizes == [100] * 14  # 1437 = 14 * 100 + 37 dropped
    assert train.element_spec[0].shape.as_list() == [100, 8, 8, 1]
    # Validation never drops: all 360 images are evaluated.
    assert [int(x.shape[0]) for x, _ in val] == [100, 100, 100, 60]
    train, _, _ = data.load("digits", batch_size=100)
    assert [int(x.shape[0]) for x, _ in train][-1] == 37


def test_image_size_resizes():
    train, val, info = data.load("digits", image_size=(16, 12), batch_size=32)
    assert info.input_shape == (16, 12, 1)
    x, _ = next(iter(train))
    vx, _ = next(iter(val))
    assert x.shape == (32, 16, 12, 1) and vx.shape == (32, 16, 12, 1)
    assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0


# ---------------------------------------------------------------------------
# augmentation


def test_augmentation_is_deterministic_per_seed_and_varies_per_epoch():
    kwargs = dict(batch_size=64, augment=True, seed=11)
    ds_a, _, _ = data.load("digits", **kwargs)
    ds_b, _, _ = data.load("digits", **kwargs)
    ds_c, _, _ = data.load("digits", **dict(kwargs, seed=12))
    first_a, first_b = next(iter(ds_a))[0], next(iter(ds_b))[0]
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(first_a, next(iter(ds_c))[0])
    # Whole epochs match too, and the second epoch draws new augmentations.
    epoch1_a, _ = collect(ds_a)
    epoch1_b, _ = collect(ds_b)
    np.testing.assert_array_equal(epoch1_a, epoch1_b)
    epoch2_a, _ = collect(ds_a)
    assert not np.array_equal(epoch1_a, epoch2_a)


def test_augmentation_is_pad_crop_flip_of_the_original():
    # shuffle=False lines augmented images up with the plain ones.
    plain, _, _ = data.load("digits", batch_size=256, shuffle=False)
    aug, _, info = data.load("digits", batch_size=256, shuffle=False,
                             augment=True)
    x, y = next(iter(plain))
    xa, ya = next(iter(aug))
    assert xa.shape == x.shape == (256, 8, 8, 1)
    np.testing.assert_array_equal(y, ya)
    xa, x = xa.numpy(), x.numpy()
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    changed = [not np.array_equal(a, b) for a, b in zip(xa, x)]
    assert sum(changed) > 128  # 17 of 18 crop/flip draws change an image
    pad = 1  # max(1, 8 // 8)
    assert all(is_pad_crop_flip(a, b, pad) for a, b in zip(xa, x))
    # Same images in the same order, but the next epoch draws new crops.
    xa2 = next(iter(aug))[0].numpy()
    assert not np.array_equal(xa, xa2)
    assert all(is_pad_crop_flip(a, b, pad) for a, b in zip(xa2, x))


def test_augmentation_on_32x32_rgb_uses_4_pixel_padding(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(4):
            write_png(tmp_path / f"c{c}" / f"{i}.png",
                      rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    spec = f"folder:{tmp_path}"
    plain, _, _ = data.load(spec, batch_size=8, shuffle=False,
                            validation_split=0.25)
    aug, _, _ = data.load(spec, batch_size=8, shuffle=False, augment=True,
                          validation_split=0.25)
    x, _ = collect(plain)
    xa, _ = collect(aug)
    assert xa.shape == x.shape == (6, 32, 32, 3)
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    assert all(is_pad_crop_flip(a, b, 4) for a, b in zip(xa, x))
    assert not all(is_pad_crop_flip(a, b, 3) for a, b in zip(xa, x))


# ---------------------------------------------------------------------------
# TFDS (mocked: no network)


@pytest.mark.parametrize(
    "name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))]
)
def test_tfds_mock(name, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        train, val, info = data.load(f"tfds:{name}", batch_size=4)
        x, y = collect(train)
        vx, vy = collect(val)
    assert info.name == f"tfds:{name}"
    assert info.num_classes == 10 and len(info.class_names) == 10
    assert info.input_shape == shape
    # mock_data ignores split slicing: every split yields the 20 examples.
    assert (info.num_train, info.num_validation) == (20, 20)
    assert x.shape == (20, *shape) and vx.shape == (20, *shape)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert ((y >= 0) & (y < 10)).all() and ((vy >= 0) & (vy < 10)).all()


@pytest.fixture(scope="module")
def tiny_tfds_builders():
    """Registers two tiny local TFDS builders (no download step at all).

    Unlike mock_data, real builders honour split names and slicing, so
    they exercise the "test split" and the hold-out branches for real.
    Image i is filled with the value i, so images can be identified.
    """
    import tensorflow_datasets as tfds

    class _Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(6, 6, 3)),
                    "label": tfds.features.ClassLabel(names=["even", "odd"]),
                }),
                supervised_keys=("image", "label"),
            )

        def _generate_examples(self, start, count):
            for i in range(start, start + count):
                yield i, {"image": np.full((6, 6, 3), i, np.uint8),
                          "label": i % 2}

    class KerasSlimTestTinyWithTest(_Tiny):
        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 30),
                    "test": self._generate_examples(100, 10)}

    class KerasSlimTestTinyTrainOnly(_Tiny):
        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 40)}

    return KerasSlimTestTinyWithTest.name, KerasSlimTestTinyTrainOnly.name


def test_tfds_local_builder_uses_test_split(tiny_tfds_builders, tmp_path):
    name, _ = tiny_tfds_builders
    # These builders generate their data locally: "download" needs no
    # network here.
    train, val, info = data.load(f"tfds:{name}", data_dir=str(tmp_path),
                                 batch_size=8, validation_split=0.5,
                                 download=True)
    assert info.class_names == ("even", "odd")
    assert info.input_shape == (6, 6, 3)
    assert (info.num_train, info.num_validation) == (30, 10)
    x, y = collect(train)
    vx, vy = collect(val)
    ids, val_ids = np.rint(x[:, 0, 0, 0] * 255), np.rint(vx[:, 0, 0, 0] * 255)
    assert sorted(ids) == list(range(30))
    assert sorted(val_ids) == list(range(100, 110))
    np.testing.assert_array_equal(y, ids % 2)
    np.testing.assert_array_equal(vy, val_ids % 2)


def test_tfds_local_builder_holds_out_from_train(tiny_tfds_builders,
                                                 tmp_path):
    _, name = tiny_tfds_builders
    train, val, info = data.load(f"tfds:{name}", data_dir=str(tmp_path),
                                 batch_size=8, validation_split=0.25,
                                 download=True)
    assert (info.num_train, info.num_validation) == (30, 10)
    ids = np.rint(collect(train)[0][:, 0, 0, 0] * 255).astype(int)
    val_ids = np.rint(collect(val)[0][:, 0, 0, 0] * 255).astype(int)
    assert len(set(ids)) == 30 and len(set(val_ids)) == 10
    assert sorted(set(ids) | set(val_ids)) == list(range(40))
    # Reloading the now prepared data set gives the same hold-out.
    import tensorflow_datasets as tfds

    assert tfds.builder(name, data_dir=str(tmp_path)).is_prepared()
    _, val2, _ = data.load(f"tfds:{name}", data_dir=str(tmp_path),
                           validation_split=0.25)
    assert sorted(np.rint(collect(val2)[0][:, 0, 0, 0] * 255).astype(int)) \
        == sorted(val_ids)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test at once."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"the test tried to use the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_tfds_not_prepared_fails_fast_with_what_to_do(tmp_path, no_network,
                                                      name):
    # Offline, tfds.load used to retry the network for ~216 s; now an
    # empty data_dir is refused at once, never touching the network.
    start = time.perf_counter()
    with pytest.raises(data.NotPreparedError) as error:
        data.load(f"tfds:{name}", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert f"'{name}' is not prepared in data_dir='{tmp_path}'" in message
    assert str(tmp_path / name) in message  # where it looked
    assert f"tfds build {name} --data_dir=DIR" in message
    assert "--download" in message and "--data_dir=DIR" in message
    assert isinstance(error.value, data.DataError)
    assert list(tmp_path.iterdir()) in ([], [tmp_path / name])


def test_tfds_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline_load(*args, **kwargs):
        assert kwargs["download"] is True
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(tfds, "load", offline_load)
    with pytest.raises(RuntimeError, match=r"'mnist' could not be "
                       r"downloaded and prepared.*ConnectionError"):
        data.load("tfds:mnist", data_dir=str(tmp_path), download=True)


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="Unknown TFDS data set.*no_such_ds"):
        data.load("tfds:no_such_ds")


# ---------------------------------------------------------------------------
# folders


@pytest.fixture
def synthetic_folder(tmp_path):
    """3 classes x 10 constant-colour 12x10 PNGs; the colour names the image."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "frog"]):
        for i in range(10):
            value = 5 * (10 * c + i) + 1
            write_png(root / name / f"{i:02d}.png",
                      np.full((12, 10, 3), value, np.uint8))
    (root / ".hidden").mkdir()  # ignored like in Keras
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def image_ids(images):
    """Recovers the (class, index) id written into each synthetic image."""
    values = np.rint(images[:, 0, 0, 0] * 255).astype(int)
    return (values - 1) // 5


def test_folder_synthetic_pngs(synthetic_folder):
    spec = f"folder:{synthetic_folder}"
    train, val, info = data.load(spec, batch_size=8, validation_split=0.2)
    assert info.name == spec
    assert info.num_classes == 3
    assert info.class_names == ("cat", "dog", "frog")
    assert info.input_shape == (12, 10, 3)
    assert (info.num_train, info.num_validation) == (24, 6)
    x, y = collect(train)
    vx, vy = collect(val)
    assert x.shape == (24, 12, 10, 3) and x.dtype == np.float32
    # Exact /255 scaling, no resize (constant images stay constant).
    ids = image_ids(x)
    np.testing.assert_array_equal(
        x, np.broadcast_to((5 * ids + 1)[:, None, None, None] / 255.0,
                           x.shape).astype(np.float32))
    assert x.max() <= 1.0
    # Labels match the class folder each image came from.
    np.testing.assert_array_equal(y, ids // 10)
    np.testing.assert_array_equal(vy, image_ids(vx) // 10)
    # Disjoint, complete and stratified hold-out (2 images per class).
    assert not set(ids) & set(image_ids(vx))
    assert sorted(set(ids) | set(image_ids(vx))) == list(range(30))
    assert np.bincount(vy).tolist() == [2, 2, 2]
    # Picked by a (fixed) permutation, not simply the first or last files.
    held_out = sorted(image_ids(vx) % 10)
    assert held_out != [0, 0, 0, 1, 1, 1] and held_out != [8, 8, 8, 9, 9, 9]


def test_folder_holdout_is_deterministic_and_seed_independent(
        synthetic_folder):
    spec = f"folder:{synthetic_folder}"
    _, val_a, _ = data.load(spec, seed=0)
    _, val_b, _ = data.load(spec, seed=99)
    train_c, _, _ = data.load(spec, seed=99)
    train_d, _, _ = data.load(spec, seed=99)
    assert image_ids(collect(val_a)[0]).tolist() == image_ids(
        collect(val_b)[0]).tolist()
    np.testing.assert_array_equal(collect(train_c)[0], collect(train_d)[0])


def test_folder_grey_images_and_resize(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            write_png(tmp_path / c / f"{i}.png",
                      np.full((9, 7, 1), 255 if c == "b" else 0, np.uint8))
    train, val, info = data.load(f"folder:{tmp_path}", image_size=4,
                                 batch_size=16, validation_split=0.2)
    assert info.input_shape == (4, 4, 1)
    x, y = collect(train)
    assert x.shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(x[:, 0, 0, 0], (y == 1).astype(np.float32))


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory):
    """First 20 JPEGs of airplane, automobile and bird from the archive."""
    if not ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {ARCHIVE}")
    classes = ("airplane", "automobile", "bird")
    wanted = {f"train/{c}/{i:04d}.jpg" for c in classes for i in range(20)}
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(ARCHIVE) as archive:
        for member in archive:
            if member.name in wanted:
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
                wanted.discard(member.name)
                if not wanted:
                    break  # The archive is grouped by class: stop early.
    assert not wanted, f"missing from archive: {sorted(wanted)[:3]}"
    return root / "train"


def test_folder_real_cifar_jpegs(cifar_slice):
    train, val, info = data.load(f"folder:{cifar_slice}", batch_size=16,
                                 validation_split=0.25, seed=1)
    assert info.class_names == ("airplane", "automobile", "bird")
    assert info.input_shape == (32, 32, 3)
    assert (info.num_train, info.num_validation) == (45, 15)
    x, y = collect(train)
    vx, vy = collect(val)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(vy).tolist() == [5, 5, 5]
    # Every image is the decoded JPEG / 255 with its folder's label, once.
    reference = {}
    for label, name in enumerate(info.class_names):
        for path in sorted((cifar_slice / name).glob("*.jpg")):
            image = tf.io.decode_jpeg(tf.io.read_file(str(path)))
            image = (tf.cast(image, tf.float32) / 255.0).numpy()
            reference[hashes([image])[0]] = label
    seen = hashes(x) + hashes(vx)
    assert sorted(seen) == sorted(reference)
    assert [reference[h] for h in seen] == y.tolist() + vy.tolist()


def test_folder_with_one_class_suggests_the_inner_folder(cifar_slice):
    with pytest.raises(ValueError, match=r"single class sub-folder 'train'.*"
                       r"use 'folder:.*train'"):
        data.load(f"folder:{cifar_slice.parent}")


# ---------------------------------------------------------------------------
# bad image files


def jpeg_bytes(seed=0, size=(16, 16)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
    return tf.io.encode_jpeg(image, quality=90).numpy()


def corrupt_middle(content):
    """A JPEG with garbage inside its scan data but intact start and end:
    its signature and EOI marker look fine, decoding fails."""
    content = bytearray(content)
    start = content.index(b"\xff\xda")  # start of scan
    content[start - 40:start + 40] = bytes(range(80))
    return bytes(content)


@pytest.fixture
def folder_with_bad_files(tmp_path):
    """2 classes x 6 good JPEGs, plus the usual kinds of broken file."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(10 * c + i))
    good_png = tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)).numpy()
    bad = {
        "cat/zeros.jpg": b"\0" * 500,  # a failed copy
        "cat/page.jpg": b"<html><body>404 Not Found</body></html>",
        "cat/empty.png": b"",
        "dog/truncated.jpg": jpeg_bytes(99)[:300],
        "dog/truncated.png": good_png[: len(good_png) // 2],
    }
    for name, content in bad.items():
        (root / name).write_bytes(content)
    # Valid, although its end is unusual: must not be refused.
    (root / "dog" / "trailing.jpg").write_bytes(jpeg_bytes(7) + b"\0" * 64)
    # Corrupt inside: only decoding it tells.
    (root / "dog" / "inside.jpg").write_bytes(corrupt_middle(jpeg_bytes(8)))
    return root, {str(root / name) for name in bad}


def test_bad_image_files_are_named_before_any_training(
        folder_with_bad_files):
    root, bad = folder_with_bad_files
    with pytest.raises(data.BadImageError) as error:
        data.load(f"folder:{root}")
    message = str(error.value)
    assert "5 of the 19 image files" in message
    for path in bad:
        assert path in message
    assert "trailing.jpg" not in message
    assert "inside.jpg" not in message  # the quick check cannot see it
    assert "is an empty file" in message
    assert "is not a JPEG, PNG, GIF or BMP image" in message
    assert "cannot be decoded" in message  # the truncated ones, confirmed
    assert "skip_bad_images=True" in message and "--skip_bad_images" in message
    assert {p for p, _ in error.value.bad} == bad
    assert isinstance(error.value, data.DataError)


def test_skip_bad_images_leaves_them_out_with_a_warning(
        folder_with_bad_files, caplog):
    root, bad = folder_with_bad_files
    with caplog.at_level("WARNING", logger="keras_slim.data"):
        train, val, info = data.load(f"folder:{root}", batch_size=4,
                                     validation_split=0.25,
                                     skip_bad_images=True)
    warning = caplog.text
    # Skipping decodes every file: the one corrupt inside goes too.
    assert "Skipping 6 of the 19 image files" in warning
    assert all(path in warning for path in bad)
    assert str(root / "dog" / "inside.jpg") in warning
    assert info.num_train + info.num_validation == 13
    x, _ = collect(train)
    vx, _ = collect(val)  # every remaining file decodes
    assert len(x) + len(vx) == 13


def test_a_decoding_failure_during_training_is_explained(tmp_path):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            (root / c / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    broken = root / "b" / "inside.jpg"
    broken.write_bytes(corrupt_middle(jpeg_bytes(9)))
    spec = f"folder:{root}"
    train, _, _ = data.load(spec, batch_size=4, validation_split=0.25)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        collect(train)
    assert str(broken) not in str(error.value)  # TensorFlow does not say
    explained = data.explain_decode_error(spec, error.value)
    assert isinstance(explained, data.BadImageError)
    assert [p for p, _ in explained.bad] == [str(broken)]
    assert str(broken) in str(explained)
    assert "--skip_bad_images" in str(explained)
    # Not a decoding failure, or not a folder: nothing to explain.
    other = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")
    assert data.explain_decode_error(spec, other) is None
    assert data.explain_decode_error("digits", error.value) is None


def test_find_bad_images_decode_finds_corruption_inside_a_file(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        (root / "a" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    broken = root / "a" / "inside.jpg"
    broken.write_bytes(corrupt_middle(jpeg_bytes(5)))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(broken.read_bytes())
    assert data.find_bad_images(root) == []  # its start and end look fine
    found = data.find_bad_images(root, decode=True)
    assert [p for p, _ in found] == [str(broken)]
    assert "cannot be decoded" in found[0][1]
    assert "Invalid JPEG data" in found[0][1]


# ---------------------------------------------------------------------------
# errors


def test_bad_spec():
    with pytest.raises(ValueError, match=r"Unknown dataset spec 'foo:bar'\. "
                       r"Allowed: 'digits', 'tfds:NAME'.*'folder:PATH'"):
        data.load("foo:bar")
    with pytest.raises(ValueError, match="Unknown dataset spec 'mnist'"):
        data.load("mnist")
    with pytest.raises(ValueError, match="missing the dataset name"):
        data.load("tfds:")
    with pytest.raises(ValueError, match="must be a string"):
        data.load(None)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"nope' \(spec 'folder:.*\) does "
                       r"not exist\. Expected a directory with one "
                       r"sub-folder per class"):
        data.load(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a directory"):
        data.load(f"folder:{tmp_path / 'file.png'}")


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="has no class sub-folders"):
        data.load(f"folder:{tmp_path}")
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images in them\. Allowed "
                       r"image extensions: \.bmp \.gif \.jpeg \.jpg \.png"):
        data.load(f"folder:{tmp_path}")


def test_split_leaving_no_validation_images(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            write_png(tmp_path / c / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="leaves no validation images"):
        data.load(f"folder:{tmp_path}", validation_split=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), r"`batch_size` must be an integer >= 1, got 0"),
        (dict(batch_size=2.5), r"`batch_size` must be an integer"),
        (dict(validation_split=1.5),
         r"`validation_split` must be a float strictly between 0 and 1 "
         r"\(e\.g\. 0\.1\), got 1\.5"),
        (dict(validation_split=0.0), r"strictly between 0 and 1"),
        (dict(validation_split=1), r"strictly between 0 and 1"),
        (dict(image_size=(0, 8)), r"`image_size` must be None, a positive"),
        (dict(image_size=(8, 8, 3)), r"`image_size` must be None"),
        (dict(seed=-1), r"`seed` must be an integer >= 0"),
        (dict(skip_bad_images="yes"), r"`skip_bad_images` must be True or"),
        (dict(download=1), r"`download` must be True or False"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **kwargs)


# ---------------------------------------------------------------------------
# prepare_image_folder


def make_archive(path, layout, fmt="tar.gz"):
    """An archive of synthetic JPEGs: layout maps 'dir/class' -> count."""
    files = {}
    seed = 0
    for folder, count in layout.items():
        for i in range(count):
            files[f"{folder}/{i:04d}.jpg"] = jpeg_bytes(seed)
            seed += 1
    if fmt == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)
    else:
        import io

        with tarfile.open(path, "w:gz") as archive:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


CIFAR_LIKE = {"train/airplane": 4, "train/bird": 4, "train/cat": 4}


def test_prepare_image_folder_from_an_archive(tmp_path):
    archive = make_archive(tmp_path / "images.tar.gz", CIFAR_LIKE)
    destination = tmp_path / "cache" / "cifar10"
    folder = data.prepare_image_folder(archive, destination)
    assert folder == str(destination / "train")
    assert sorted(p.name for p in (destination / "train").iterdir()) == [
        "airplane", "bird", "cat"]
    marker = json.loads((destination / ".keras_slim_prepared.json")
                        .read_text())
    assert marker["num_images"] == 12 and marker["folder"] == "train"
    _, _, info = data.load(f"folder:{folder}", validation_split=0.25)
    assert info.num_train + info.num_validation == 12
    # Done once: a second call does not read the archive again.
    archive.unlink()
    assert data.prepare_image_folder(archive, destination) == folder
    # No staging folder is left next to it.
    assert sorted(p.name for p in destination.parent.iterdir()
                  if ".partial-" in p.name) == []


def test_prepare_image_folder_from_a_zip_with_classes_at_the_top(tmp_path):
    archive = make_archive(tmp_path / "flowers.zip",
                           {"daisy": 3, "rose": 2}, fmt="zip")
    folder = data.prepare_image_folder(archive, tmp_path / "flowers")
    assert folder == str(tmp_path / "flowers")
    _, _, info = data.load(f"folder:{folder}", validation_split=0.4)
    assert info.class_names == ("daisy", "rose")


def test_interrupted_preparation_leaves_nothing_half_written(
        tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "images.tar.gz", CIFAR_LIKE)
    destination = tmp_path / "cache" / "cifar10"
    from keras_slim.data import prepare as prepare_module

    written = []

    def interrupted(source, target):
        # Part of the archive lands in the staging folder, then Ctrl-C.
        with tarfile.open(source) as tar:
            tar.extractall(target, members=tar.getmembers()[:5],
                           filter="data")
        written.extend(pathlib.Path(target).rglob("*.jpg"))
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_image_folder(archive, destination)
    assert written  # it was interrupted part-way, not before starting
    monkeypatch.undo()
    assert not destination.exists()
    assert not [p for p in destination.parent.iterdir()
                if ".partial-" in p.name]
    # A staging folder left by a killed process (no chance to clean up):
    # invisible at the destination and removed by the next call.
    stale = destination.parent / ".cifar10.partial-killed"
    (stale / "train" / "cat").mkdir(parents=True)
    assert data.prepare_image_folder(archive, destination) == str(
        destination / "train")
    assert not stale.exists()
    marker = json.loads((destination / ".keras_slim_prepared.json")
                        .read_text())
    assert marker["num_images"] == 12


def test_prepare_image_folder_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(FileNotFoundError, match="Archive not found: .*nope"):
        data.prepare_image_folder(tmp_path / "nope.tar.gz", tmp_path / "d")
    flat = make_archive(tmp_path / "flat.tar.gz", {"only_one_class": 3})
    with pytest.raises(ValueError, match="no folder of class sub-folders"):
        data.prepare_image_folder(flat, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(ValueError, match="not a tar or zip archive"):
        data.prepare_image_folder(not_archive, tmp_path / "d")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("my files")
    archive = make_archive(tmp_path / "images.tar.gz", CIFAR_LIKE)
    with pytest.raises(ValueError, match="not empty and was not made by"):
        data.prepare_image_folder(archive, foreign)
    assert (foreign / "keep.txt").read_text() == "my files"


def test_prepare_image_folder_from_tfds(tmp_path, no_network):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        folder = data.prepare_image_folder(
            "tfds:mnist", tmp_path / "mnist", data_dir=str(tmp_path / "tfds"))
    assert folder == str(tmp_path / "mnist" / "train")
    pngs = sorted(pathlib.Path(folder).glob("*/*.png"))
    assert len(pngs) == 12
    assert {p.parent.name for p in pngs} <= {str(i) for i in range(10)}
    image = tf.io.decode_png(pngs[0].read_bytes())
    assert image.shape == (28, 28, 1)
    # Not prepared and no download: refused at once, nothing written.
    with pytest.raises(data.NotPreparedError, match="tfds build mnist"):
        data.prepare_image_folder("tfds:mnist", tmp_path / "real",
                                  data_dir=str(tmp_path / "empty"))
    assert not (tmp_path / "real").exists()


def test_the_command_line_prepares_and_checks(tmp_path, capsys):
    import subprocess
    import sys

    from keras_slim.data import __main__ as cli

    archive = make_archive(tmp_path / "images.tar.gz", CIFAR_LIKE)
    env = dict(__import__("os").environ, TF_CPP_MIN_LOG_LEVEL="2")
    repo = pathlib.Path(__file__).resolve().parents[1]
    # As a user runs it (one subprocess; the rest in-process).
    done = subprocess.run(
        [sys.executable, "-m", "keras_slim.data", "prepare", str(archive),
         str(tmp_path / "out")], cwd=repo, env=env, capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Use --dataset=folder:{tmp_path / 'out' / 'train'}" in done.stdout
    assert cli.main(["check", str(tmp_path / "out" / "train")]) == 0
    assert "0 bad image file(s)" in capsys.readouterr().out
    (tmp_path / "out" / "train" / "cat" / "bad.jpg").write_bytes(b"")
    assert cli.main(["check", str(tmp_path / "out" / "train")]) == 1
    assert "bad.jpg: is an empty file" in capsys.readouterr().out
    assert cli.main(["prepare", str(tmp_path / "missing.tar"),
                     str(tmp_path / "x")]) == 2
    assert "Archive not found" in capsys.readouterr().err


def test_tfds_specs_without_tfds_installed_say_how_to_install(monkeypatch):
    # tensorflow-datasets is an optional dependency ("keras-slim[tfds]").
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name == "tensorflow_datasets":
            raise ImportError("No module named 'tensorflow_datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(data.DataError,
                       match=r"pip install 'keras-slim\[tfds\]'"):
        data.load("tfds:mnist", batch_size=8)
