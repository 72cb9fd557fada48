"""Event datasets on small files the tests write in each dataset's own format (N-MNIST .bin,
DVS128 Gesture AEDAT 3.1 + labels CSV, CIFAR10-DVS AEDAT 2), read by spikingjelly's readers
and integrated into T frames."""

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from datamodules import MembershipDataModule, load_pool
from writers import (expected_frames, nmnist_bytes, random_events, write_cifar10_dvs, write_gesture, write_nmnist)


def test_nmnist_train_then_test_into_t_frames_of_counts(tmp_path):
    written = write_nmnist(tmp_path, per_class=(2, 1), events=31)
    pool = load_pool("nmnist", tmp_path, T=3)
    assert pool.images.shape == (30, 3, 2, 34, 34) and pool.images.dtype == torch.uint8 and pool.counts
    assert pool.labels.tolist() == [d for d in range(10) for _ in range(2)] + list(range(10))
    for i, events in enumerate(written.values()):  # written in pool order: Train/0..9, then Test/0..9
        assert np.array_equal(pool.images[i].numpy(), expected_frames(events, 3, 34, 34))
    # equal event counts per frame: 31 events -> 10, 10, 11
    assert pool.images[0].sum((1, 2, 3)).tolist() == [10, 10, 11]
    ident = pool.identity
    assert ident["classes"] == [str(d) for d in range(10)] and ident["class_samples"] == [3] * 10
    assert ident["files"] == 30 and ident["image_size"] == 34 and "T" not in ident


def test_nmnist_overflow_records_are_not_events_and_bins_sum_pixels(tmp_path):
    write_nmnist(tmp_path, per_class=(1, 0))
    events = [(3, 5, 1, 10), (4, 5, 0, 20), (3, 4, 1, 30), (33, 33, 0, 40)]
    overflow = [(0, 240, 0, 0)]  # the format's time-stamp overflow marker
    (tmp_path / "Train" / "0" / "00000.bin").write_bytes(nmnist_bytes(events[:2] + overflow + events[2:]))
    pool = load_pool("nmnist", tmp_path, T=1, image_size=17)
    frame = pool.images[0, 0]
    assert frame.sum() == 4 and frame.shape == (2, 17, 17)
    # x * 17 // 34 = x // 2: ON events at (3, 5) and (3, 4) share binned pixel x 1, y 2;
    # the OFF event at (4, 5) is at x 2, y 2; (33, 33) at (16, 16)
    assert frame[1, 2, 1] == 2 and frame[0, 2, 2] == 1 and frame[0, 16, 16] == 1


def test_dvs128_gesture_samples_are_the_labelled_slices(tmp_path):
    rng = np.random.default_rng(1)
    a, b = random_events(rng, 120, 128, 1000), random_events(rng, 60, 128, 1000)
    write_gesture(tmp_path, {"user01_fluorescent": ("train", a, [(1, 0, 400), (4, 400, 1000)]),
                             "user02_led": ("test", b, [(11, 100, 900)])})
    pool = load_pool("dvs128_gesture", tmp_path, T=2)
    assert pool.images.shape == (3, 2, 2, 128, 128) and pool.labels.tolist() == [0, 3, 10]
    slices = [[e for e in a if 0 <= e[3] < 400], [e for e in a if 400 <= e[3] < 1000],
              [e for e in b if 100 <= e[3] < 900]]
    for i, events in enumerate(slices):
        assert np.array_equal(pool.images[i].numpy(), expected_frames(events, 2, 128, 128))
    assert pool.identity["class_samples"] == [1, 0, 0, 1] + [0] * 6 + [1]
    assert pool.identity["files"] == 6  # two trial lists, two recordings, two labels files


def test_cifar10_dvs_aedat2(tmp_path):
    written = write_cifar10_dvs(tmp_path, per_class=1, events=45)
    pool = load_pool("cifar10_dvs", tmp_path, T=4, image_size=32)
    assert pool.images.shape == (10, 4, 2, 32, 32) and pool.labels.tolist() == list(range(10))
    for i, events in enumerate(written.values()):
        assert np.array_equal(pool.images[i].numpy(), expected_frames(events, 4, 32, 128))


def test_counts_above_255_widen_the_pool(tmp_path):
    write_nmnist(tmp_path, per_class=(1, 0))
    hot = [(7, 9, 1, t) for t in range(300)]  # one pixel, 300 events, one frame
    (tmp_path / "Train" / "5" / "00000.bin").write_bytes(nmnist_bytes(hot))
    pool = load_pool("nmnist", tmp_path, T=1)
    assert pool.images.dtype == torch.int16 and pool.images[5, 0, 1, 9, 7] == 300
    assert pool.images[0].sum() == 30  # samples decoded before the widening kept their counts


def test_parallel_decoding_gives_the_same_pool(tmp_path):
    write_nmnist(tmp_path)
    one, two = load_pool("nmnist", tmp_path, T=2), load_pool("nmnist", tmp_path, T=2, num_workers=2)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)


def test_datamodule_gives_counts_as_floats_and_frames_to_the_model(tmp_path):
    write_nmnist(tmp_path / "data", per_class=(10, 6))  # 160: the default population of 100, 60 to audit
    dm = MembershipDataModule(dataset="nmnist", root=str(tmp_path / "data"), T=3, num_references=2,
                              run_dir=str(tmp_path / "run"))
    assert dm.input_shape == (2, 34, 34) and dm.num_classes == 10 and dm.input_frames == 3 and not dm.augment
    assert dm.normalization == ([0.0, 0.0], [1.0, 1.0])
    dm.setup("fit")
    x, y, i = next(iter(dm.audit_dataloader()))
    assert x.shape == (60, 3, 2, 34, 34) and x.dtype == torch.float32
    assert torch.equal(x, dm.pool.images[dm.audit_indices].float())  # counts, not scaled by 1/255


def test_t_is_not_part_of_the_plan_so_latencies_share_one(tmp_path):
    """An SNN at T = 1, 2, 4 on one plan (a study's latency axis): the frames change with T,
    the samples do not."""
    write_nmnist(tmp_path / "data", per_class=(10, 5))  # 150: the smallest pool that can be audited
    run = str(tmp_path / "run")
    plans = []
    for T in (1, 2, 4):
        dm = MembershipDataModule(dataset="nmnist", root=str(tmp_path / "data"), T=T, run_dir=run)
        dm.setup()
        plans.append(dm.plan.fingerprint)
    assert plans[0] == plans[1] == plans[2]


def test_a_changed_event_folder_is_refused(tmp_path):
    write_nmnist(tmp_path / "data", per_class=(7, 8))
    run = str(tmp_path / "run")
    MembershipDataModule(dataset="nmnist", root=str(tmp_path / "data"), run_dir=run).setup()
    # the same files, one moved from Test/ to Train/: same classes, counts and sizes, other order
    (tmp_path / "data" / "Test" / "4" / "00007.bin").rename(tmp_path / "data" / "Train" / "4" / "00007.bin")
    with pytest.raises(ConfigError, match=r"the dataset under data.root changed \(.*other names or sizes"):
        MembershipDataModule(dataset="nmnist", root=str(tmp_path / "data"), run_dir=run).setup()


def _empty_class(root):
    write_nmnist(root)
    (root / "Test" / "3" / "00000.bin").unlink()


def _no_labels(root):
    write_gesture(root, {"user01_fluorescent": ("train", [(1, 1, 1, 1)], [(1, 0, 10)])})
    (root / "DvsGesture" / "user01_fluorescent_labels.csv").unlink()


def _bad_labels(root):
    write_gesture(root, {"user01_fluorescent": ("train", [(1, 1, 1, 1)], [(12, 0, 10)])})


def _odd_aedat(root):
    write_cifar10_dvs(root)
    path = root / "dog" / "cifar10_dog_0.aedat"
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00\x01")  # half an event


@pytest.mark.parametrize("name, make, kwargs, match", [
    ("nmnist", None, {}, r"data.root='.*absent': not a folder; data.dataset='nmnist' expects root/Train/<digit>"),
    ("nmnist", lambda r: r.mkdir(), {}, r"no Train/ or Test/ folder"),
    ("nmnist", _empty_class, {}, r"Test/3 holds no \*.bin file"),
    ("dvs128_gesture", lambda r: r.mkdir(), {}, r"no trials_to_train.txt"),
    ("dvs128_gesture", _no_labels, {}, r"lists user01_fluorescent.aedat, but user01_fluorescent_labels.csv is missing"),
    ("dvs128_gesture", _bad_labels, {}, r"is not a DVS128 Gesture labels file"),
    ("cifar10_dvs", _odd_aedat, {}, r"could not read a cifar10_dvs file \(.*cifar10_dog_0.aedat: odd number"),
    ("cifar10_dvs", write_cifar10_dvs, {"image_size": 129}, r"data.image_size=129 .* \[1, 128\]"),
    ("cifar10_dvs", write_cifar10_dvs, {"resize": 64}, r"data.resize=64 .* imagefolder only"),
    ("nmnist", write_nmnist, {"T": 0}, r"data.T=0"),
])
def test_bad_event_folders_and_values_are_one_line_errors(tmp_path, name, make, kwargs, match):
    root = tmp_path / ("absent" if make is None else "data")
    if make is not None:
        make(root)
    with pytest.raises(ConfigError, match=match) as err:
        load_pool(name, root, **kwargs)
    assert "\n" not in str(err.value)
