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
