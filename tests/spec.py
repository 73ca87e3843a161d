"""Facts the tests check against that come from the issues, and the one way tests run the CLI."""

from __future__ import annotations

import pytest

from tnplan.cli import main

# The keys `tnplan plan --json` (and Plan.summary()) must provide at least.
SUMMARY_KEYS = {
    "path",
    "flops",
    "log10_flops",
    "contraction_cost",
    "peak_size",
    "log2_size",
    "write",
    "sliced_indices",
    "n_slices",
    "optimal",
    "planning_time_s",
}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; argparse errors exit through SystemExit, the rest return a status."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_program_matches_einsum(prog, equation: str, arrays, rtol: float = 1e-10) -> None:
    """``prog`` agrees with ``einsum`` on numpy ``arrays``, and in torch's gradients of the sum."""
    import numpy as np
    import torch

    np.testing.assert_allclose(prog(*arrays), np.einsum(equation, *arrays), rtol=rtol, atol=1e-12)
    ts = [torch.tensor(x, requires_grad=True) for x in arrays]
    prog(*ts).sum().backward()
    ref = [torch.tensor(x, requires_grad=True) for x in arrays]
    torch.einsum(equation, *ref).sum().backward()
    for a, b in zip(ts, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
