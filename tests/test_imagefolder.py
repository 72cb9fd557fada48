"""data.dataset=imagefolder on small folders the tests write (PNG and JPEG), read by
torchvision's ImageFolder: layouts, sizes, the pool, the plan's identity, bad input."""

import json

import pytest
import torch

from core.errors import ConfigError
from datamodules import MembershipDataModule, load_pool, make_plan, save_plan
from writers import write_image_folder

SPLIT_LAYOUT = {"train": {"cat": 3, "dog": 2, "eel": 2}, "val": {"cat": 1, "dog": 1, "eel": 1}}
# A folder large enough for a plan: 155 images, the default population of 100 (the minimum) and
# an audit set of 55 (at least 50: datamodules/plan.py).
PLAN_LAYOUT = {"train": {"cat": 52, "dog": 50, "eel": 50}, "val": {"cat": 1, "dog": 1, "eel": 1}}


def test_train_and_val_are_read_into_one_pool_train_first(tmp_path):
    written = write_image_folder(tmp_path, SPLIT_LAYOUT)
    pool = load_pool("imagefolder", tmp_path, image_size=12)
    assert pool.images.shape == (10, 3, 12, 12) and pool.images.dtype == torch.uint8
    assert not pool.counts
    # the order of the files written: train's classes, then val's
    assert [str(p).split("/")[0] for p, _ in written] == ["train"] * 7 + ["val"] * 3
    for i, (_, colour) in enumerate(written):  # solid colours survive resize and crop exactly
        assert pool.images[i, :, 6, 6].tolist() == list(colour)
    assert pool.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 0, 1, 2]
    ident = pool.identity
    assert ident["classes"] == ["cat", "dog", "eel"] and ident["class_samples"] == [4, 3, 3]
    assert ident["files"] == 10 and ident["image_size"] == 12 and ident["resize"] == 12


def test_one_folder_of_classes_and_jpeg(tmp_path):
    write_image_folder(tmp_path, {"": {"a": 2, "b": 3}}, fmt="JPEG")
    pool = load_pool("imagefolder", tmp_path, image_size=8)
    assert pool.images.shape == (5, 3, 8, 8) and pool.labels.tolist() == [0, 0, 1, 1, 1]


def test_resize_then_centre_crop(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        img = Image.new("RGB", (60, 20), (255, 0, 0))  # 60 wide, 20 high: red | green | blue thirds
        img.paste((0, 255, 0), (20, 0, 40, 20))
        img.paste((0, 0, 255), (40, 0, 60, 20))
        img.save(tmp_path / cls / "x.png")
    # shorter side 20 -> 10 (30 x 10), centre crop 10 x 10: the green third only
    pool = load_pool("imagefolder", tmp_path, image_size=10)
    x = pool.images[0].int()
    assert (x[1, :, 2:8] > 200).all() and (x[0, :, 2:8] < 50).all() and (x[2, :, 2:8] < 50).all()
    # resize 20 (no resize), crop 10: still the green middle
    pool = load_pool("imagefolder", tmp_path, image_size=10, resize=20)
    assert (pool.images[0, 1].int() > 200).all()
    # resize 10, crop 10 at the default: equals the first
    assert torch.equal(load_pool("imagefolder", tmp_path, image_size=10, resize=10).images[0], x.to(torch.uint8))


def test_parallel_decoding_gives_the_same_pool(tmp_path):
    write_image_folder(tmp_path, SPLIT_LAYOUT, fmt="JPEG")
    one = load_pool("imagefolder", tmp_path, image_size=16)
    two = load_pool("imagefolder", tmp_path, image_size=16, num_workers=2)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    assert one.identity == two.identity


def test_datamodule_gives_images_in_0_1_and_links_classes(tmp_path):
    write_image_folder(tmp_path / "data", PLAN_LAYOUT)
    dm = MembershipDataModule(dataset="imagefolder", root=str(tmp_path / "data"), image_size=16, num_references=2,
                              run_dir=str(tmp_path / "run"))
    assert dm.num_classes == 3 and dm.input_shape == (3, 16, 16) and dm.input_frames is None and dm.augment
    dm.setup("fit")
    x, y, i = next(iter(dm.audit_dataloader()))
    assert x.shape == (55, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    train = next(iter(dm.train_dataloader()))[0]
    assert train.shape[1:] == (3, 16, 16)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["dataset_identity"]["classes"] == ["cat", "dog", "eel"]


@pytest.mark.parametrize("change, message", [
    (lambda root: write_image_folder(root, {"val": {"cat": 2}}), r"files: 155 \(.*\) in the plan, 156"),
    (lambda root: (root / "train" / "eel" / "img_000.png").unlink(), r"class 'eel': 51 samples in the plan, 50 now"),
    (lambda root: (root / "val" / "dog" / "img_000.png").rename(root / "val" / "dog" / "renamed.png"),
     r"other names or sizes"),
])
def test_a_changed_folder_is_refused_saying_what_changed(tmp_path, change, message):
    root, run = tmp_path / "data", str(tmp_path / "run")
    write_image_folder(root, PLAN_LAYOUT)
    MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()
    change(root)
    with pytest.raises(ConfigError, match=message) as err:
        MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()
    assert "the dataset under data.root changed" in str(err.value) and "\n" not in str(err.value)


def test_other_image_size_or_a_new_class_is_refused(tmp_path):
    root, run = tmp_path / "data", str(tmp_path / "run")
    write_image_folder(root, PLAN_LAYOUT)
    MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()
    with pytest.raises(ConfigError, match="image_size: plan has 8, config gives 12"):
        MembershipDataModule(dataset="imagefolder", root=str(root), image_size=12, run_dir=run).setup()
    write_image_folder(root, {"train": {"fox": 1}, "val": {"fox": 1}})
    with pytest.raises(ConfigError, match=r"classes: 3 in the plan, 4 now \(new 'fox'\)"):
        MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()


def test_the_same_folder_elsewhere_matches_the_plan(tmp_path):
    write_image_folder(tmp_path / "a", PLAN_LAYOUT)
    write_image_folder(tmp_path / "b", PLAN_LAYOUT)  # a copy under another root
    run = str(tmp_path / "run")
    dm = MembershipDataModule(dataset="imagefolder", root=str(tmp_path / "a"), image_size=8, run_dir=run)
    dm.setup()
    again = MembershipDataModule(dataset="imagefolder", root=str(tmp_path / "b"), image_size=8, run_dir=run)
    again.setup()
    assert torch.equal(again.membership, dm.membership)


def test_an_existing_plan_of_a_built_in_dataset_still_loads(tmp_path):
    """A plan.json as this tool wrote it before datasets had an identity (plan_version 1,
    these keys exactly): the digits default, and so its checkpoints and caches, still match."""
    from core.rundir import tensors_sha256
    from datamodules.plan import plan_tensors

    plan = make_plan(dataset="digits", pool_size=1797, num_references=4, seed=0)
    save_plan(plan, tmp_path)
    old = {"plan_version": 1, "dataset": "digits", "pool_size": 1797, "seed": 0, "num_references": 4,
           "population": None, "population_size": 180, "audit_size": 1617}
    record = {**old, "content_sha256": tensors_sha256(plan_tensors(plan))}
    (tmp_path / "plan.json").write_text(json.dumps(record, indent=2) + "\n")
    dm = MembershipDataModule(run_dir=str(tmp_path))
    dm.setup()
    assert dm.plan.fingerprint == old and torch.equal(dm.membership, plan.membership)
    assert plan.fingerprint == old  # a new digits plan has the same fingerprint, no identity


@pytest.mark.parametrize("make, kwargs, key", [
    (None, {"root": "{tmp}/absent"}, "data.root"),
    ({"train": {"a": 2, "b": 0}, "val": {"a": 1, "b": 1}}, {}, "no valid file for the classes b"),
    ({"train": {"a": 2, "b": 1}, "val": {"a": 1, "c": 1}}, {}, r"every split needs the same class folders"),
    ({"": {"a": 2}}, {}, "needs at least 2"),
    ({"": {"a": 1, "b": 1}}, {"image_size": 0}, "data.image_size=0"),
    ({"": {"a": 1, "b": 1}}, {"image_size": 32, "resize": 16}, r"data.resize=16 .* >= data.image_size=32"),
    ({"": {"a": 1, "b": 1}}, {"download": True}, "data.download=True is not allowed with data.dataset='imagefolder'"),
])
def test_bad_folders_and_values_are_one_line_errors(tmp_path, make, kwargs, key):
    if make is not None:
        write_image_folder(tmp_path, make)
        for split, classes in make.items():  # a class folder with no image
            for cls, n in classes.items():
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
    kwargs = {"root": str(tmp_path), **{k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                                        for k, v in kwargs.items()}}
    with pytest.raises(ConfigError, match=key) as err:
        load_pool("imagefolder", **kwargs)
    assert "\n" not in str(err.value)


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    write_image_folder(tmp_path, {"": {"a": 2, "b": 2}})
    (tmp_path / "b" / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConfigError, match=r"b/img_001.png") as err:
        load_pool("imagefolder", tmp_path, num_workers=1)
    assert "\n" not in str(err.value)


def test_unknown_dataset_and_sizes_of_built_in_datasets_are_refused():
    with pytest.raises(ConfigError, match="data.dataset='imagenet' is not allowed; choose one of: .*imagefolder, "
                                          "nmnist, dvs128_gesture, cifar10_dvs"):
        MembershipDataModule(dataset="imagenet")
    with pytest.raises(ConfigError, match="data.image_size=16 is not allowed with data.dataset='digits'"):
        MembershipDataModule(image_size=16)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_two_same_size_images_swapped_between_classes_are_another_dataset(tmp_path, keep_mtime):
    import os

    root, run = tmp_path / "data", str(tmp_path / "run")
    write_image_folder(root, PLAN_LAYOUT)
    a, b = root / "train" / "cat" / "img_000.png", root / "train" / "dog" / "img_000.png"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b) and data_a != data_b  # names and sizes cannot tell them apart
    MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()
    times = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (a, b)}
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    if keep_mtime:  # the cache must not trust a modification time set back by hand
        for p, t in times.items():
            os.utime(p, ns=t)
    with pytest.raises(ConfigError, match="other contents") as err:
        MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=run).setup()
    assert "the dataset under data.root changed" in str(err.value) and "\n" not in str(err.value)


def test_a_rerun_reads_only_the_files_that_changed(tmp_path, monkeypatch):
    import builtins

    from datamodules import identity

    write_image_folder(tmp_path, SPLIT_LAYOUT)
    first = load_pool("imagefolder", tmp_path, image_size=8).identity
    opened = []

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(identity, "open", counting_open, raising=False)
    assert load_pool("imagefolder", tmp_path, image_size=8).identity == first
    assert opened == []  # every hash came from the cache
    (tmp_path / "val" / "eel" / "img_000.png").write_bytes((tmp_path / "val" / "cat" / "img_000.png").read_bytes())
    changed = load_pool("imagefolder", tmp_path, image_size=8).identity
    assert opened == [str(tmp_path / "val" / "eel" / "img_000.png")]
    assert changed["contents_sha256"] != first["contents_sha256"] and changed["files_sha256"] == first["files_sha256"]


def test_a_plan_drawn_before_contents_were_hashed_still_matches(tmp_path):
    root, run = tmp_path / "data", tmp_path / "run"
    write_image_folder(root, PLAN_LAYOUT)
    dm = MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=str(run))
    dm.setup()
    from core.rundir import tensors_sha256
    from datamodules.plan import plan_tensors

    record = json.loads((run / "plan.json").read_text())
    del record["dataset_identity"]["contents_sha256"]  # what this tool wrote before
    (run / "plan.json").write_text(json.dumps(record, indent=2) + "\n")
    assert record["content_sha256"] == tensors_sha256(plan_tensors(dm.plan))
    again = MembershipDataModule(dataset="imagefolder", root=str(root), image_size=8, run_dir=str(run))
    again.setup()
    assert torch.equal(again.membership, dm.membership)
