"""Data loading, models and the plan -> train -> report workflow, on small real data."""

import gzip
import json
import pickle
import struct

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
