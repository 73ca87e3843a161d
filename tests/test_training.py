"""Data loading, models and the plan -> train -> report workflow, on small real data."""

import gzip
import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
import torch

from adntn import AdntnError
from adntn.cli import main as adntn_main
from adntn.data import load_dataset, load_idx_split, pad_to, read_idx
from adntn.models import alexnet, build_model, vgg16
from adntn.train import TrainConfig, build, parse_compress, train


def _write_idx(path, array, *, gz=False, magic=None):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = (magic or header) + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(data)


def _idx_dir(tmp_path, n_train=40, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), gz=gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_as_scaled_images(tmp_path, gz):
    split = load_dataset("mnist", "train", _idx_dir(tmp_path, gz=gz))
    assert split.images.shape == (40, 1, 28, 28) and split.images.dtype == torch.float32
    assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
    raw = read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else "")))
    assert split.labels.tolist() == raw.tolist()
    assert pad_to(split.images).shape == (40, 1, 32, 32)


def test_corrupt_and_mismatched_idx_files_raise_clear_errors(tmp_path):
    _idx_dir(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(AdntnError, match="not an IDX file"):
        load_idx_split(tmp_path, "train")
    _write_idx(bad, np.zeros((40, 28, 28)))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(AdntnError, match="header promises"):
        load_idx_split(tmp_path, "train")
    _write_idx(bad, np.zeros((39, 28, 28)))
    with pytest.raises(AdntnError, match=r"has 39 images but .* has 40 labels"):
        load_idx_split(tmp_path, "train")


def test_cifar_pickles_load_and_bad_batches_fail(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (6, 3072)).astype(np.uint8), b"labels": list(rng.integers(0, 10, 6))}
        (root / name).write_bytes(pickle.dumps(batch))
    train_split = load_dataset("cifar10", "train", tmp_path)
    assert train_split.images.shape == (30, 3, 32, 32)
    assert len(load_dataset("cifar10", "test", tmp_path)) == 6
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10))}))
    with pytest.raises(AdntnError, match="is not a CIFAR-10 batch"):
        load_dataset("cifar10", "test", tmp_path)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ADNTN_DATA", str(tmp_path))
    monkeypatch.setattr("adntn.data.SYSTEM_DIRS", {"fashion-mnist": tmp_path / "nope", "mnist": tmp_path / "nope"})
    with pytest.raises(AdntnError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", download=False)
    with pytest.raises(AdntnError, match="does not exist"):
        load_dataset("mnist", "train", tmp_path / "missing")
    with pytest.raises(AdntnError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", "train")


def test_digits_are_embedded_and_split_deterministically():
    a, b = load_dataset("digits", "train"), load_dataset("digits", "train")
    assert torch.equal(a.labels, b.labels) and len(a) + len(load_dataset("digits", "test")) == 1797
    assert pad_to(a.images).shape[-2:] == (32, 32)


def test_models_name_their_layers_and_keep_the_classic_classifier():
    net = alexnet(1, 10)
    assert net.fc6.in_features == 256 * 36 and net.fc7.weight.shape == (4096, 4096)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    small = vgg16(3, 7, width=0.125, fc_dim=32)
    assert small.fc6.in_features == 64 * 49 and small.conv5_3.out_channels == 64
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(AdntnError, match="unknown model 'resnet'"):
        build_model("resnet", 1, 10)


def test_compress_flag_parsing():
    assert parse_compress("fc6=ttn:bond=8,fc7=mera:bond=4") == {"fc6": "ttn:bond=8", "fc7": "mera:bond=4"}
    with pytest.raises(AdntnError, match="bad --compress entry 'fc6'"):
        parse_compress("fc6")


def _config(**kw):
    base = {
        "model": "alexnet",
        "dataset": "digits",
        "compress": {"fc6": "ttn:bond=2", "fc7": "mera:bond=2"},
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "width": 0.125,
        "fc_dim": 64,
        "train_limit": 192,
        "dropout": 0.0,
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_training_resumes_exactly_and_plans_once(tmp_path):
    cache = str(tmp_path / "plans.sqlite")
    cfg = _config(cache=cache)
    full = train(cfg, tmp_path / "full", progress=False)
    assert full["epochs_done"] == 2 and full["plan_searches"] > 0
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert not list((tmp_path / "full").glob("*.tmp"))
    by_layer = {r["layer"]: r for r in full["layers"]}
    assert by_layer["fc7"]["compression"] == pytest.approx(64 * 64 / by_layer["fc7"]["generator_params"])

    part = train(cfg, tmp_path / "part", progress=False, stop_after=1)  # an interrupted job
    assert part["plan_searches"] == 0  # the second identical build is all cache hits
    assert part["epochs_done"] == 1
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed["epochs_done"] == 2
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert (tmp_path / "part" / "metrics.jsonl").read_text().count("\n") == 2  # nothing repeated
    with pytest.raises(AdntnError, match="already holds a run"):
        train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(AdntnError, match="different configuration"):
        train(_config(cache=cache, lr=0.1), tmp_path / "part", resume=True, progress=False)


def test_cli_train_report_and_errors(tmp_path, capsys):
    cache = str(tmp_path / "plans.sqlite")
    flags = [
        "--model",
        "alexnet",
        "--dataset",
        "digits",
        "--width",
        "0.125",
        "--fc-dim",
        "32",
        "--epochs",
        "1",
        "--train-limit",
        "96",
        "--cache",
        cache,
        "--quiet",
    ]
    assert adntn_main(["plan", *flags[:-1], "--compress", "fc7=ttn:bond=2", "--export", str(tmp_path / "p.json")]) == 0
    assert "exported" in capsys.readouterr().out
    assert (
        adntn_main(["train", *flags, "--compress", "fc7=ttn:bond=2", "--cache-only", "--out", str(tmp_path / "a")]) == 0
    )
    assert adntn_main(["train", *flags, "--out", str(tmp_path / "b")]) == 0
    assert adntn_main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| a | alexnet | digits |" in md and "| b | fc7 | dense |" in md
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()
    capsys.readouterr()
    empty = str(tmp_path / "empty.sqlite")
    code = adntn_main(
        [
            "train",
            *flags[:-3],
            "--cache",
            empty,
            "--compress",
            "fc7=ttn:bond=3",
            "--cache-only",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no cached plan" in err
    assert adntn_main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2


def test_torchrun_two_process_job_matches_the_single_process_run(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    cache = str(tmp_path / "plans.sqlite")
    config = tmp_path / "ddp.json"
    # No batch norm and no dropout: those are per-process by design; everything else must agree.
    settings = {
        "model": "alexnet",
        "dataset": "digits",
        "width": 0.125,
        "fc_dim": 32,
        "epochs": 2,
        "batch_size": 32,
        "train_limit": 128,
        "dropout": 0.0,
        "batch_norm": False,
        "compress": {"fc7": "ttn:bond=2"},
        "cache": cache,
    }
    config.write_text(json.dumps(settings))
    single = train(TrainConfig.load(config), tmp_path / "single", progress=False)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun is not None
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "adntn.cli",
        "train",
        str(config),
        "--quiet",
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    sm = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    dm = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    for s, d in zip(sm, dm, strict=True):
        assert abs(s["train_loss"] - d["train_loss"]) < 1e-4 and abs(s["test_acc"] - d["test_acc"]) < 1.0


def test_clip_grad_caps_every_update(tmp_path):
    with pytest.raises(AdntnError, match="clip_grad must be a positive"):
        _config(clip_grad=0)
    moved = {}
    for clip in (None, 1e-9):
        cfg = _config(epochs=1, clip_grad=clip, weight_decay=0.0, cache=str(tmp_path / "plans.sqlite"))
        model = build(cfg, 1, 10)[0]  # build seeds itself: the same init train() starts from
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        train(cfg, tmp_path / f"run-{clip}", progress=False)
        end = torch.load(tmp_path / f"run-{clip}" / "checkpoint.pt", weights_only=False)["model"]
        moved[clip] = max(float((end[name] - p).abs().max()) for name, p in start.items())
    # An epoch of SGD at lr 0.05 moves the weights; with every gradient scaled to norm 1e-9 they stay put.
    assert moved[None] > 1e-2 and moved[1e-9] < 1e-6


def test_bf16_autocast_trains_like_float32(tmp_path):
    with pytest.raises(AdntnError, match="amp must be bf16 or omitted"):
        _config(amp="fp16")
    losses = {}
    for amp in (None, "bf16"):
        cfg = _config(compress={}, epochs=3, amp=amp)
        # A caller's region around train() keeps autocast's weight cache alive across the steps.
        with torch.autocast("cpu", enabled=False):
            train(cfg, tmp_path / f"run-{amp}", progress=False)
        rows = [json.loads(x) for x in (tmp_path / f"run-{amp}" / "metrics.jsonl").read_text().splitlines()]
        losses[amp] = [r["train_loss"] for r in rows]
    # Autocast caches the bf16 copy of each weight until its outermost region ends; stale copies kept
    # the first step's weights and the loss stayed at ln(10) ~ 2.30. Fresh weights every step learn.
    assert losses[None][-1] < 1.9
    assert losses["bf16"][-1] < 1.9 and abs(losses["bf16"][-1] - losses[None][-1]) < 0.25


def test_cli_amp_flag_sets_and_clears_autocast(tmp_path):
    from adntn.cli import _config as cli_config
    from adntn.cli import build_parser

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"amp": "bf16"}))
    args = build_parser().parse_args(["train", str(config), "--amp", "off", "--out", str(tmp_path / "r")])
    assert cli_config(args).amp is None
    args = build_parser().parse_args(["train", "--amp", "bf16", "--out", str(tmp_path / "r")])
    assert cli_config(args).amp == "bf16"


def test_damaged_data_files_raise_their_own_error(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    _idx_dir(system, gz=True)
    monkeypatch.setenv("ADNTN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("adntn.data.SYSTEM_DIRS", {"mnist": system})
    images = system / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(images.read_bytes())
    raw[30:60] = bytes(30)  # damages the deflate stream, not the gzip header: zlib.error inside read()
    images.write_bytes(bytes(raw))
    with pytest.raises(AdntnError, match=r"cannot read IDX file .*t10k-images-idx3-ubyte\.gz"):
        read_idx(images)
    # Present but damaged is not "not found ... downloads are off": the message names the bad file.
    with pytest.raises(AdntnError, match="cannot read IDX file"):
        load_dataset("mnist", "test", download=False)
    _write_idx(images, np.zeros((10, 28, 28)), gz=True)
    _write_idx(system / "t10k-labels-idx1-ubyte.gz", np.full(10, 12), gz=True)
    with pytest.raises(AdntnError, match=r"labels must lie in 0..9, got values from 12 to 12"):
        load_dataset("mnist", "test", download=False)


def test_a_damaged_cached_copy_is_downloaded_again(tmp_path, monkeypatch):
    # An interrupted download used to leave such a file, and the next run repaired it by downloading.
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    _idx_dir(cache, gz=True)
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    monkeypatch.setenv("ADNTN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("adntn.data.SYSTEM_DIRS", {"mnist": tmp_path / "none"})
    fetched = []

    def download(name, target):
        fetched.append(name)
        _idx_dir(target, gz=True)

    monkeypatch.setattr("adntn.data._download", download)
    with pytest.raises(AdntnError, match=r"cannot read IDX file.*downloads are off"):
        load_dataset("mnist", "test", download=False)
    assert fetched == []
    split = load_dataset("mnist", "test")
    assert fetched == ["mnist"] and len(split.labels) > 0


def test_cifar_batches_check_pixel_and_label_ranges_and_take_str_keys(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = np.arange(2 * 3072).reshape(2, 3072) % 256
    (root / "test_batch").write_bytes(pickle.dumps({"data": good.astype(np.uint8), "labels": [1, 2]}))
    split = load_dataset("cifar10", "test", tmp_path)  # re-pickled under Python 3: str keys
    assert split.labels.tolist() == [1, 2] and float(split.images[0, 0, 0, 1]) == pytest.approx(1 / 255)
    for data, labels, message in [
        (good + 300, [1, 2], r"pixels are whole numbers in 0..255, got int64 values from 300"),
        (good.astype(np.float64) + 0.5, [1, 2], "pixels are whole numbers in 0..255"),
        (good, [1, 10], r"labels must lie in 0..9"),
        (good, [[1], [2]], r"expected \(N, 3072\) data and N labels"),  # a column: failed inside the loss
        (good, [1.7, 2.0], "labels are whole numbers"),  # was truncated to 1
        (good, 3, r"expected \(N, 3072\) data and N labels"),
    ]:
        (root / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
        with pytest.raises(AdntnError, match=message):
            load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": "0.1"}, "config key lr must be a number, got str '0.1'"),
        ({"compress": "fc6=ttn"}, "config key compress must be a table, got str 'fc6=ttn'"),
        ({"compress": {"fc6": 8}}, "config key compress.fc6 must be a spec string"),
        ({"batch_norm": "yes"}, "config key batch_norm must be true or false"),
        ({"epochs": 2.5}, "config key epochs must be an integer"),
        ({"clip_grad": True}, "config key clip_grad must be a number or omitted"),
        ({"train_limit": -32}, "train_limit must be >= 0"),
        ({"width": 0}, "width must be a positive channel multiplier"),
    ],
)
def test_config_types_and_values_are_checked(settings, message):
    with pytest.raises(AdntnError, match=message):
        TrainConfig.from_dict(settings)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    bad_lr = tmp_path / "lr.toml"
    bad_lr.write_text('lr = "0.1"\n')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"width": 0.125, "fc_dim": 32, "epochs": 1, "train_limit": 32}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    cases = [
        (["plan", str(bad_lr)], "config key lr must be a number"),
        (["plan", str(listed)], "must hold a table of settings, got a list"),
        (["train", str(small), "--device", device, "--out", str(tmp_path / "r1")], f"device '{device}'"),
        (["train", str(small), "--stop-after", "0", "--out", str(tmp_path / "r2")], "stop_after must be a positive"),
        (["train", str(small), "--resume", "--quiet", "--out", str(run)], "cannot read checkpoint"),
    ]
    for argv, message in cases:
        assert adntn_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_cli_empty_compress_flag_clears_the_configs_rules(tmp_path):
    from adntn.cli import _config as cli_config
    from adntn.cli import build_parser

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"compress": {"fc6": "ttn:bond=2"}}))
    args = build_parser().parse_args(["train", str(config), "--out", str(tmp_path / "r")])
    assert cli_config(args).compress == {"fc6": "ttn:bond=2"}
    args = build_parser().parse_args(["train", str(config), "--compress", "", "--out", str(tmp_path / "r")])
    assert cli_config(args).compress == {}


def test_a_resumed_runs_summary_covers_the_whole_run(tmp_path):
    cfg = _config(cache=str(tmp_path / "fresh.sqlite"), compress={"fc7": "ttn:bond=2"}, train_limit=64, fc_dim=32)
    part = train(cfg, tmp_path / "run", progress=False, stop_after=1)
    assert part["plan_searches"] > 0  # a fresh cache: the first call plans
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["wall_time_s"]
    done = train(cfg, tmp_path / "run", resume=True, progress=False)
    # The resumed call finds every plan cached; the run as a whole searched in its first call.
    assert done["epochs_done"] == 2 and done["plan_searches"] == part["plan_searches"]
    assert done["wall_time_s"] > before > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["plan_searches"] == part["plan_searches"]


def test_report_copes_with_a_run_without_finished_epochs(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    summary = {
        "config": {"model": "alexnet", "dataset": "digits"},
        "layers": [],
        "total_params": 10,
        "test_acc": None,
        "best_test_acc": None,
        "epochs_done": 0,
        "wall_time_s": 1.5,
        "planned_networks": 0,
        "plan_searches": 0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("")
    assert adntn_main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "| empty | alexnet | digits | 0 | 10 | 1x | - | - | 1.5 |" in (tmp_path / "rep" / "report.md").read_text()


def _report_run(path, *, epochs=1, done=1, metrics=None):
    """A run folder as ``adntn train`` leaves it (the fields the report reads)."""
    path.mkdir(parents=True)
    summary = {
        "config": {"model": "alexnet", "dataset": "digits", "epochs": epochs},
        "layers": [{"layer": "fc7", "arch": "ttn", "dense_params": 64, "generator_params": 8, "compression": 8.0}],
        "total_params": 10,
        "test_acc": 50.0,
        "best_test_acc": 50.0,
        "epochs_done": done,
        "wall_time_s": 1.5,
        "planned_networks": 1,
        "plan_searches": 0,
    }
    rows = metrics if metrics is not None else [{"epoch": e + 1, "test_acc": 50.0} for e in range(done)]
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rows))
    return path


@pytest.mark.parametrize(
    "summary,metrics,why",
    [
        ("{}", None, "no 'config'"),
        ("[]", None, "a JSON list"),
        (None, '{"epoch": 1}\n', "metrics.jsonl line 1: no 'test_acc'"),
        (None, "[1, 50.0]\n", "metrics.jsonl line 1: a JSON list"),
        # Readable, but impossible or disagreeing (a hand edit, a full disk between the two writes).
        (None, "", "summary.json reports 2 epoch(s) but metrics.jsonl holds 0"),
        (None, '{"epoch": 1, "test_acc": NaN}\n{"epoch": 2, "test_acc": 50}\n', "'test_acc' is nan"),
        ("edit:epochs_done=7", None, "epochs_done 7 exceeds the config's 2 epochs"),
        ("edit:test_acc=Infinity", None, "'test_acc' is inf"),
        ("edit:compression=-5", None, "'compression' is -5"),
    ],
)
def test_report_refuses_a_malformed_run_and_keeps_the_old_report(tmp_path, capsys, summary, metrics, why):
    run = _report_run(tmp_path / "run", epochs=2, done=2)
    if summary is not None and summary.startswith("edit:"):
        key, value = summary[5:].split("=")
        data = json.loads((run / "summary.json").read_text())
        target = data["layers"][0] if key == "compression" else data
        target[key] = json.loads(value) if value != "Infinity" else float("inf")
        (run / "summary.json").write_text(json.dumps(data))
    elif summary is not None:
        (run / "summary.json").write_text(summary)
    if metrics is not None:
        (run / "metrics.jsonl").write_text(metrics)
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("old md")
    (rep / "report.html").write_text("old html")
    assert adntn_main(["report", str(run), "--out", str(rep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run} is not an adntn run" in err and why in err, err
    assert (rep / "report.md").read_text() == "old md" and (rep / "report.html").read_text() == "old html"


def test_report_names_runs_by_enough_of_their_path_and_marks_partial_ones(tmp_path):
    ttn = _report_run(tmp_path / "e2e" / "ttn" / "seed0", epochs=3, done=1)
    mera = _report_run(tmp_path / "e2e" / "mera" / "seed0")
    assert adntn_main(["report", str(ttn), str(mera), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ttn/seed0 | alexnet | digits | 1/3 (partial) | 10 |" in md
    assert "| mera/seed0 | alexnet | digits | 1 | 10 |" in md
    assert "| mera/seed0 | fc7 | ttn |" in md
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.html", "report.md"]


def test_config_takes_paths_and_numpy_numbers_as_plain_values(tmp_path):
    cfg = TrainConfig.from_dict({"data_dir": tmp_path, "lr": np.float32(0.05), "epochs": np.int64(2)})
    assert cfg.data_dir == str(tmp_path) and type(cfg.lr) is float and type(cfg.epochs) is int
    json.dumps(asdict(cfg))  # written with every run


def test_a_run_directory_takes_one_training_at_a_time(tmp_path):
    import fcntl
    import os

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # as the other training holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(AdntnError, match="another training is writing to"):
            train(_config(), out, progress=False)
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []


def test_a_run_stopped_any_way_has_a_summary_of_its_finished_epochs(tmp_path, monkeypatch):
    import adntn.train as training

    calls = []
    real = training.evaluate

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a job killed during its second epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate_then_die)
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["test_acc"] is not None


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch):
    import adntn.train as training

    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    out = tmp_path / "run"
    train(cfg, out, progress=False, stop_after=1)
    before = (out / "checkpoint.pt").read_bytes()

    def full_disk(obj, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 56384 vs 56284\nmore")

    monkeypatch.setattr(training.torch, "save", full_disk)
    with pytest.raises(AdntnError, match=r"cannot write .*checkpoint.pt \(\[enforce fail.*--resume continues"):
        train(cfg, out, resume=True, progress=False)
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "checkpoint.pt.tmp").exists()


def test_resume_allows_runtime_settings_and_names_what_differs(tmp_path):
    cache = str(tmp_path / "plans.sqlite")
    out = tmp_path / "run"
    train(_config(cache=cache, train_limit=64), out, progress=False, stop_after=1)
    with pytest.raises(AdntnError, match=r"different configuration \(lr 0.05 -> 0.1\)"):
        train(_config(cache=cache, train_limit=64, lr=0.1), out, resume=True, progress=False)
    with pytest.warns(UserWarning, match="resuming with threads 2 .* will not match an uninterrupted one bit"):
        done = train(_config(cache=cache, train_limit=64, cache_only=True, threads=2), out, resume=True, progress=False)
    assert done["epochs_done"] == 2  # --cache-only and another thread count: the same run goes on


def test_a_run_resumed_where_auto_would_pick_other_modes_keeps_the_runs_picks(tmp_path, monkeypatch):
    # mode="auto" decides from this machine's cached timings: resumed on a machine whose timings pick
    # other modes, the run went on in them and its numbers drifted from the uninterrupted run's.
    from adntn.layers import TNLinear

    cfg = _config(cache=str(tmp_path / "plans.sqlite"))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=1)
    decide = TNLinear._decide

    def elsewhere(self):
        flip = {"materialize": "stream"} if self.generator.streamable else {}
        return {kind: {k: flip.get(m, "materialize") for k, m in picks.items()} for kind, picks in decide(self).items()}

    monkeypatch.setattr(TNLinear, "_decide", elsewhere)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert a["auto_modes"] == b["auto_modes"] and a["auto_modes"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_resume_into_a_folder_with_run_files_but_no_checkpoint_changes_nothing(tmp_path):
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "metrics.jsonl").write_text("keep\n")
    with pytest.raises(AdntnError, match=r"holds run files but no checkpoint\.pt"):
        train(_config(), out, resume=True, progress=False, stop_after=1)
    assert (out / "config.json").read_text() == '{"my": "settings"}' and (out / "metrics.jsonl").read_text() == "keep\n"


def test_resume_restarts_a_run_killed_in_its_first_epoch(tmp_path):
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(asdict(cfg)))  # what such a run leaves
    (out / "metrics.jsonl").write_text("")
    done = train(cfg, out, resume=True, progress=False, stop_after=1)
    assert done["epochs_done"] == 1


def test_an_empty_test_set_is_an_error(tmp_path):
    (tmp_path / "data").mkdir()
    data = _idx_dir(tmp_path / "data", n_test=0, gz=False)
    with pytest.raises(AdntnError, match="test set of mnist is empty"):
        train(_config(dataset="mnist", data_dir=str(data), compress={}), tmp_path / "run", progress=False)


def test_a_fresh_download_replaces_a_damaged_uncompressed_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    _idx_dir(cache, gz=False)
    (cache / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    (tmp_path / "source").mkdir()
    source = _idx_dir(tmp_path / "source", gz=True)
    monkeypatch.setenv("ADNTN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("adntn.data.SYSTEM_DIRS", {"mnist": tmp_path / "none"})
    fetched = []

    def fetch(url, path):
        fetched.append(path.name)
        path.write_bytes((source / path.name).read_bytes())

    monkeypatch.setattr("adntn.data._fetch", fetch)
    assert len(load_dataset("mnist", "train").labels) == 40
    assert len(fetched) == 4
    assert len(load_dataset("mnist", "train").labels) == 40 and len(fetched) == 4  # repaired for good


def test_report_explains_a_run_without_a_finished_epoch_and_names_the_bad_line(tmp_path):
    from adntn.runreport import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(AdntnError, match=r"has no summary\.json: no epoch has finished yet"):
        load_run(run)
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    train(cfg, tmp_path / "done", progress=False, stop_after=1)
    with open(tmp_path / "done" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')
    with pytest.raises(AdntnError, match=r"metrics\.jsonl line 2"):
        load_run(tmp_path / "done")


def test_a_file_system_without_flock_trains_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    with pytest.warns(UserWarning, match="training without the lock"):
        done = train(cfg, tmp_path / "run", progress=False, stop_after=1)
    assert done["epochs_done"] == 1


def test_a_resumed_run_does_not_keep_the_checkpoints_weights(tmp_path, monkeypatch):
    import adntn.train as training

    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    loaded = []
    real = training._load_checkpoint
    monkeypatch.setattr(training, "_load_checkpoint", lambda *a: loaded.append(real(*a)) or loaded[-1])
    train(cfg, tmp_path / "run", resume=True, progress=False)
    # The caller's reference to the checkpoint held a second copy of the model for the whole run.
    assert len(loaded) == 1 and not {"model", "optimizer", "scheduler"} & loaded[0].keys()


def test_an_idx_header_too_big_for_int64_states_its_true_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**21, 2**21, 2**22))  # promises 2**64 bytes, has none
    # np.prod wrapped around to 0 bytes, which matched, and reshaping then failed naming no file.
    with pytest.raises(AdntnError, match=rf"{path.name} holds 0 data bytes but its header promises {2**64} "):
        read_idx(path)


def test_cifar_batches_unpickle_only_arrays_and_name_the_file_on_any_failure(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    path = root / "test_batch"
    batch = {b"data": (np.arange(2 * 3072).reshape(2, 3072) % 256).astype(np.uint8), b"labels": [3, 4]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        assert load_dataset("cifar10", "test", tmp_path).labels.tolist() == [3, 4], protocol
    # numpy 1 keeps its array functions in numpy.core, numpy 2 in numpy._core: a batch from either loads.
    text = pickle.dumps(batch, protocol=2)
    for module in (b"numpy.core.", b"numpy._core."):
        path.write_bytes(re.sub(rb"numpy\._?core\.", module, text))
        assert load_dataset("cifar10", "test", tmp_path).labels.tolist() == [3, 4], module

    sentinel = tmp_path / "keep-me"
    sentinel.write_text("")

    class Deleter:
        def __reduce__(self):
            return os.remove, (str(sentinel),)

    # The first and third escaped as ModuleNotFoundError and LookupError; the second ran os.remove.
    for blob, message in [
        (text.replace(b"multiarray", b"multiarrax"), r"asks for numpy\._?core\.multiarrax\._reconstruct"),
        (pickle.dumps({b"data": Deleter(), b"labels": []}), r"asks for \w+\.remove, which CIFAR-10 batches never"),
        (b"c_codecs\nencode\n(Vx\nVno-such-codec\ntR.", r"is not a CIFAR-10 batch \(LookupError"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62), "is not a CIFAR-10 batch"),  # 4 EiB of bytes: a MemoryError
    ]:
        path.write_bytes(blob)
        with pytest.raises(AdntnError, match=rf"^{re.escape(str(path))} .*{message}"):
            load_dataset("cifar10", "test", tmp_path)
    assert sentinel.exists()
    path = root / "data_batch_1"  # the first file training reads
    path.write_bytes(text.replace(b"multiarray", b"multiarrax"))
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]
    assert adntn_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} is not a CIFAR-10 batch" in err, err


def test_a_checkpoint_with_flipped_bytes_is_refused_and_a_legacy_one_resumes(tmp_path):
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64)
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    shutil.copytree(tmp_path / "run", tmp_path / "flipped")
    ckpt = tmp_path / "flipped" / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = raw.find(archive.read(member)) + member.file_size // 2
    assert member.file_size > 1000 and start > member.file_size // 2
    raw[start : start + 64] = bytes(b ^ 255 for b in raw[start : start + 64])
    ckpt.write_bytes(raw)
    # torch.load checks no CRCs: this resumed with wrong weights.
    bad_crc = rf"damaged or truncated \(Bad CRC-32 for file '{re.escape(member.filename)}'\)"
    with pytest.raises(AdntnError, match=bad_crc):
        train(cfg, tmp_path / "flipped", resume=True, progress=False)
    assert ckpt.read_bytes() == raw

    # Saved without checksums (torch.serialization.set_crc32_options(False)): every CRC is 0, and it resumes.
    nocrc = tmp_path / "nocrc"
    shutil.copytree(tmp_path / "run", nocrc)
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(torch.load(nocrc / "checkpoint.pt", weights_only=False), nocrc / "checkpoint.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert train(cfg, nocrc, resume=True, progress=False)["epochs_done"] == 2

    # torch's legacy (non-zip) format has no checksums to check, and resumes as before.
    legacy = tmp_path / "run" / "checkpoint.pt"
    torch.save(torch.load(legacy, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:4] != b"PK\x03\x04"
    assert train(cfg, tmp_path / "run", resume=True, progress=False)["epochs_done"] == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", float("inf"), "lr must be a finite number > 0"),
        ("momentum", -0.5, "momentum must be a finite number >= 0"),
        ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0"),
        ("seed", 2**63, "seed must be an integer from 0 to 2\\*\\*63 - 1"),
    ],
)
def test_config_values_torch_would_refuse_late_are_refused_up_front(key, value, message):
    with pytest.raises(AdntnError, match=message):
        _config(**{key: value}).check()


def test_a_large_seed_orders_the_data():
    # seed * 100_003 + epoch overflowed the generator's seed at the first epoch (3e15 here).
    from adntn.train import epoch_order

    order = epoch_order(10, 3 * 10**15, 1)
    assert sorted(order.tolist()) == list(range(10))
    small = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100_003 + 1))
    assert torch.equal(epoch_order(10, 7, 1), small)  # small seeds keep their order


def test_digits_refuses_a_data_directory_it_would_ignore(tmp_path):
    from adntn.data import load_dataset

    with pytest.raises(AdntnError, match="digits is embedded in scikit-learn and reads no files"):
        load_dataset("digits", "train", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdntnError, match="is a file, not a directory"):
        load_dataset("mnist", "train", tmp_path / "file")


def test_a_batch_larger_than_the_training_set_is_warned(tmp_path):
    cfg = _config(cache=str(tmp_path / "plans.sqlite"), train_limit=64, batch_size=1000, epochs=1)
    with pytest.warns(UserWarning, match="batch_size 1000 exceeds the 64 training images"):
        train(cfg, tmp_path / "run", progress=False)
