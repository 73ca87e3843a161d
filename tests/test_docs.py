"""The README's and docs' Python examples run as written, and the numbers their comments quote hold.

Each ```python block runs in a namespace holding what the surrounding prose assumes (the packages, a
pretrained layer, a model to compress); a block written for a GPU runs on the CPU when there is none.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/generators.md")


def python_blocks(name: str) -> list[str]:
    """The dedented ```python blocks of a Markdown file (indented ones inside list items too)."""
    text = (REPO / name).read_text()
    return [textwrap.dedent(body) for _, body in re.findall(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M)]


def block_with(name: str, needle: str) -> str:
    found = [b for b in python_blocks(name) if needle in b]
    assert len(found) == 1, f"{name}: expected one python block containing {needle!r}, found {len(found)}"
    return found[0]


def namespace() -> dict:
    import adntn
    import kernels
    import tnplan

    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64))
    rows, p, q, r, m, n = 4, 16, 8, 3, 5, 6
    return {
        "adntn": adntn, "kernels": kernels, "tnplan": tnplan, "torch": torch, "nn": nn,
        "pretrained_linear": nn.Linear(256, 128), "model": model,
        "x": torch.randn(rows, 4096),
        "x3": torch.randn(rows, p, q), "a": torch.randn(r, m, p), "b": torch.randn(r, n, q),
    }  # fmt: skip


def run(code: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    if not torch.cuda.is_available():
        code = code.replace(".cuda()", "")
    monkeypatch.chdir(REPO)  # the examples name files relative to the repository (../shared/...)
    ns = namespace()
    exec(compile(code, "<docs>", "exec"), ns)
    return ns


def test_every_python_block_is_checked_here() -> None:
    # A new example must get a test below, not go unrun.
    assert [len(python_blocks(name)) for name in DOCS] == [4, 1]


def test_planner_example(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(block_with("README.md", "tnplan.plan(net)"), monkeypatch)
    plan, same, q = ns["plan"], ns["same"], ns["q"]
    assert plan.optimal is True  # as its comment says
    assert "Contraction plan" in capsys.readouterr().out
    assert same.path == plan.path and same.flops == plan.flops
    torch.testing.assert_close(ns["out"], ns["arrays"][0] @ ns["arrays"][1] @ ns["arrays"][2])
    sizes = ns["big"].size_dict
    assert q.peak_memory("float32") <= 2**30 and q.n_slices == math.prod(sizes[i] for i in q.sliced_indices) > 1


def test_layer_example_and_its_compression_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    code = block_with("README.md", "compression_ratio()")
    ns = run(code, monkeypatch)
    quoted = float(re.search(r"compression_ratio\(\)\s+#\s*([\d.]+)", code).group(1))
    assert round(ns["layer"].compression_ratio(), 1) == quoted
    assert ns["y"].shape == (32, 4096)
    assert math.isfinite(ns["fitted"].fit_error)
    assert isinstance(ns["model"].classifier[1], ns["adntn"].TNLinear)
    assert all(isinstance(ns["model"].features[i], ns["adntn"].TNConv2d) for i in (0, 2))
    assert "classifier.1" in str(ns["report"])


def test_executor_example(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block_with("README.md", 'executor="numba"'), monkeypatch)
    g = ns["g"]
    assert ns["w"].shape == (4096, 4096)
    ns["w"].sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_kron_example(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run(block_with("README.md", 'mode="kron"'), monkeypatch)
    layer = ns["layer"]
    reference = ns["x"] @ layer.weight.T + layer.bias
    torch.testing.assert_close(ns["y"], reference, rtol=1e-4, atol=1e-4)


def test_groups_example(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(block_with("docs/generators.md", "n_factors=4"), monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(ns["g"].groups) >= 2
