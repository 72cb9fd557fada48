"""run.py on the user's own data: an event dataset end to end (model.T linked to the frames,
event queries in the audit), imagefolder through the parser, and their one-line errors."""

import json

import pytest

import run
from training.cli import cli_main
from writers import write_image_folder, write_nmnist


def test_fit_and_audit_on_event_data_snn_target_ann_references(tmp_path, fast_trainer_args, capsys):
    data, rd = tmp_path / "nmnist", tmp_path / "run"
    # 220 samples: the population's minimum of 100, and 120 audited
    write_nmnist(data, per_class=(12, 10), events=60)
    base = ["--run_dir", str(rd), "--data.dataset", "nmnist", "--data.root", str(data), "--model.T", "2",
            "--data.num_references", "2", "--data.population", "100", "--model.width", "0.25"]
    fit = ["fit", *base, "--references", "{kind: ann}", "--trainer.max_epochs", "1", *fast_trainer_args,
           "--trainer.callbacks.queries", '[plain, "event_drop:p=0.2,n=2"]']
    assert run.main(fit) == 0
    done = json.loads((rd / "model_0" / "done.json").read_text())
    assert done["hparams"]["input_frames"] == 2 and done["T"] == 2
    assert json.loads((rd / "model_1" / "done.json").read_text())["kind"] == "ann"
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert "rmia_offline@event_drop_p0.2_n2" in report["attacks"]
    assert report["settings"]["plan"]["dataset_identity"]["files"] == 220
    assert run.main(["audit", *base, "--queries", '["dropout:p=0.1,n=2"]']) == 2  # an image strategy
    assert "do(es) not apply to event frames" in capsys.readouterr().err.strip().splitlines()[-1]
    other_t = [("3" if a == "2" and base[i - 1] == "--model.T" else a) for i, a in enumerate(base)]
    assert run.main(["audit", *other_t]) == 2  # frames of another T than the models were trained on
    assert "run it with --model.T 2" in capsys.readouterr().err.strip().splitlines()[-1]
    audit = ["audit", *base, "--queries", '[plain, "event_jitter:sigma=0.5,n=2"]', "--latencies", "[1, 2]",
             "--report_dir", str(tmp_path / "latency")]
    assert run.main(audit) == 0
    attacks = json.loads((tmp_path / "latency" / "report.json").read_text())["attacks"]
    assert {"rmia_offline@event_jitter_s0.5_n2", "rmia_offline@event_jitter_s0.5_n2,T1", "rmia_offline@T1"} <= set(attacks)


def test_model_t_sets_the_frames_and_the_model_learns_they_are_frames(tmp_path):
    write_nmnist(tmp_path / "data")
    cli = cli_main(["--data.dataset", "nmnist", "--data.root", str(tmp_path / "data"), "--model.T", "3",
                    "--run_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu"], run=False)
    assert cli.datamodule.T == 3 and cli.datamodule.input_frames == 3
    assert cli.model.input_frames == 3 and cli.model.hparams.input_shape == (2, 34, 34)


def test_imagefolder_classes_reach_the_model(tmp_path):
    write_image_folder(tmp_path / "data", {"train": {"a": 2, "b": 2, "c": 1}, "val": {"a": 1, "b": 1, "c": 1}})
    cli = cli_main(["--data.dataset", "imagefolder", "--data.root", str(tmp_path / "data"), "--data.image_size", "24",
                    "--run_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu"], run=False)
    assert cli.model.hparams.num_classes == 3 and tuple(cli.model.hparams.input_shape) == (3, 24, 24)
    assert cli.model.input_frames is None


@pytest.mark.parametrize("flags, key", [
    (["--data.dataset", "imagefolder", "--data.root", "{tmp}/none"], "data.root="),
    (["--data.dataset", "nmnist", "--data.root", "{tmp}/none"], "data.dataset='nmnist' expects root/Train"),
    (["--data.dataset", "cifar10", "--data.image_size", "64"], "data.image_size=64 is not allowed"),
    (["--data.dataset", "nmnist", "--data.root", "{tmp}/nmnist", "--references", "{T: 1}"],
     "model.T=1 is not allowed: the event data hold 4 frames"),
    (["--data.dataset", "nmnist", "--data.root", "{tmp}/nmnist", "--trainer.callbacks.queries",
      '[plain, "dropout:p=0.1,n=2"]'], "dropout_p0.1_n2 do(es) not apply to event frames; allowed for this dataset: "
                                       'plain, flip, "event_drop'),
    (["--trainer.callbacks.queries", '["event_jitter:sigma=1,n=2"]'], "event_jitter_s1.0_n2 do(es) not apply to images"),
])
def test_bad_user_data_settings_end_in_one_line(tmp_path, capsys, fast_trainer_args, flags, key):
    write_nmnist(tmp_path / "nmnist", per_class=(8, 7))  # 150 recordings: enough for a plan
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert run.main(["fit", "--run_dir", str(tmp_path / "r"), "--data.num_references", "2", *flags,
                     *fast_trainer_args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last


def test_data_t_is_not_a_flag_of_its_own(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["fit", "--run_dir", str(tmp_path / "r"), "--data.T", "3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.T" in err[0]


def test_submit_checks_user_data_by_listing_it_not_decoding_it(tmp_path, monkeypatch):
    from cluster.slurm import SlurmError, check_data
    from datamodules import events, imagefolder

    write_nmnist(tmp_path / "nmnist")
    write_image_folder(tmp_path / "images", {"": {"a": 1, "b": 1}})

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(events, "_read", no_decoding)
    monkeypatch.setattr(imagefolder, "load_imagefolder", no_decoding)
    check_data({"dataset": "nmnist", "root": "nmnist"}, tmp_path)  # relative roots resolve in the workdir
    check_data({"dataset": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16}, tmp_path)
    (tmp_path / "nmnist" / "Test" / "7" / "00000.bin").unlink()
    with pytest.raises(SlurmError, match=r"Test/7 holds no \*.bin file"):
        check_data({"dataset": "nmnist", "root": "nmnist"}, tmp_path)
