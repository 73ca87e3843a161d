"""What the layer and kernel benchmarks share: their command-line parsing and worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

ARCHS = ("ttn", "attn", "mera")


def parse_shape(text: str) -> tuple[int, int]:
    """``"25088x4096"`` -> ``(in_features, out_features)``."""
    try:
        a, b = text.lower().split("x")
        shape = (int(a), int(b))
    except ValueError:
        raise SystemExit(f"bad shape {text!r}: use INxOUT, e.g. 25088x4096") from None
    if min(shape) < 1:
        raise SystemExit(f"bad shape {text!r}: sizes must be positive")
    return shape


def shape_name(shape: tuple[int, int] | list[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def parse_bonds(text: str | None) -> dict[str, list[int]]:
    """``"ttn:8,12;mera:4"`` -> ``{"ttn": [8, 12], "mera": [4]}``."""
    out: dict[str, list[int]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        arch, _, values = part.partition(":")
        arch = arch.strip().lower()
        if arch not in ARCHS or not values.strip():
            raise SystemExit(f"bad --bonds entry {part!r}: use ARCH:B1,B2 with ARCH in {', '.join(ARCHS)}")
        try:
            out[arch] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"bad --bonds entry {part!r}: bond dims are integers") from None
        if any(b < 1 for b in out[arch]):
            raise SystemExit(f"bad --bonds entry {part!r}: bond dims must be >= 1")
    return out


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 300 characters)."""
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= 300 else msg[:297] + "..."


def worker_main(run_worker: Callable[[dict], dict], spec_text: str, mark: str) -> int:
    """The worker side of :func:`spawn_worker`: run one spec, print its result (or its failure) after ``mark``."""
    try:
        result = run_worker(json.loads(spec_text))
    except Exception as exc:  # reported to the parent, which records the failure
        tail = traceback.format_exc().splitlines()[-6:]
        print(mark + json.dumps({"error": one_line(exc), "traceback": tail}), flush=True)
        return 1
    print(mark + json.dumps(result), flush=True)
    return 0


def spawn_worker(script: Path, spec: dict, env: dict[str, str], timeout: float, mark: str) -> dict:
    """Run ``script --worker SPEC`` in a fresh process; its result is the last stdout line starting with ``mark``."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            return {**spec, **json.loads(line[len(mark) :])}
    why = f"worker exited with {proc.returncode}"
    if proc.returncode < 0:
        why += f" (signal {-proc.returncode}{', out of memory?' if proc.returncode == -9 else ''})"
    return {**spec, "error": why}
