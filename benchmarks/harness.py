"""What the benchmark scripts share: command-line parsing, worker processes and guarded result files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

ARCHS = ("ttn", "attn", "mera")
RESULTS = Path(__file__).resolve().parent / "results"


def time_after_neighbour(
    steps: dict[str, Callable[[], Any]], neighbour: Callable[[], Any], reps: int
) -> dict[str, list[float]]:
    """Seconds of ``reps`` calls of each step, the steps taking turns call by call (the order rotating)
    and each timed call following an untimed ``neighbour()`` (a neighbouring layer in a model).

    Taking turns alone is biased: with three modes and seven rounds one mode followed a given other 5
    times in 7, and a small batch's step after a materialising step ran up to 1.5x slower. The
    neighbour gives every step the same starting caches and heap.
    """
    names = list(steps)
    neighbour()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for k in range(reps):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            neighbour()
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def parse_shape(text: str) -> tuple[int, int]:
    """``"25088x4096"`` -> ``(in_features, out_features)``; an argparse-style ``ArgumentTypeError`` otherwise."""
    try:
        a, b = text.lower().split("x")
        shape = (int(a), int(b))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use INxOUT, e.g. 25088x4096") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: sizes must be positive")
    return shape


def shape_list(text: str) -> list[tuple[int, int]]:
    """argparse type: a non-empty comma list of shapes (``"4096x4096,25088x4096"``)."""
    shapes = [parse_shape(s.strip()) for s in text.split(",") if s.strip()]
    if not shapes:
        raise argparse.ArgumentTypeError("the list is empty: give at least one INxOUT shape")
    return shapes


def shape_name(shape: tuple[int, int] | list[int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def parse_bonds(text: str | None) -> dict[str, list[int]]:
    """argparse type: ``"ttn:8,12;mera:4"`` -> ``{"ttn": [8, 12], "mera": [4]}``."""
    out: dict[str, list[int]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        arch, _, values = part.partition(":")
        arch = arch.strip().lower()
        if arch not in ARCHS or not values.strip():
            raise argparse.ArgumentTypeError(
                f"bad --bonds entry {part!r}: use ARCH:B1,B2 with ARCH in {', '.join(ARCHS)}"
            )
        try:
            out[arch] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad --bonds entry {part!r}: bond dims are integers") from None
        if any(b < 1 for b in out[arch]):
            raise argparse.ArgumentTypeError(f"bad --bonds entry {part!r}: bond dims must be >= 1")
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


# ------------------------------------------------------------------------------- argument types and errors


def fail(message: str) -> NoReturn:
    """Stop with a one-line error and exit status 2 (a usage error, as argparse's own)."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def budget_list(text: str) -> list[float]:
    """argparse type: a non-empty comma list of budgets, each a finite number of seconds > 0 (``"1,5"``)."""
    values = [positive_float(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """argparse type: a non-empty comma list of integers, each >= ``minimum`` (``"1,32,256"``)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= {minimum}")
        return values

    return parse


def name_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """argparse type: a non-empty comma list of names from ``choices`` (``"ttn,mera"``)."""

    def parse(text: str) -> list[str]:
        names = [v.strip().lower() for v in text.split(",") if v.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"the list is empty: choose from {', '.join(choices)}")
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown))}: choose from {', '.join(choices)}"
            )
        return names

    return parse


def number_range(text: str) -> tuple[float, float]:
    """argparse type: ``"LO,HI"`` with ``0 < LO <= HI`` (a compression range)."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI, e.g. 2000,77000") from None
    if not 0 < lo <= hi < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LO <= HI")
    return lo, hi


def output_dir(out: Path | None, quick: bool, prefix: str) -> Path:
    """Where a run writes: ``out``, else ``benchmarks/results``; a ``--quick`` (smoke) run never writes into
    ``benchmarks/results``, whose committed files it would replace, and defaults to a fresh temporary folder."""
    if not quick:
        return out or RESULTS
    if out is not None and out.resolve() == RESULTS.resolve():
        fail("--quick never writes to benchmarks/results; pick another --out")
    return out or Path(tempfile.mkdtemp(prefix=prefix))


def check_output_dir(folder: Path) -> Path:
    """Stop with a one-line error unless ``folder`` is (or can be made) a folder this process can write in,
    before anything is measured: a run that finds out at its end loses what it measured."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        fail(f"cannot write results to {folder} ({one_line(exc)}); pick another output folder")
    return folder


def width_cli(
    doc: str, name: str, quick_help: str, render: Callable[[dict], str], argv: list[str] | None
) -> tuple[argparse.Namespace, Path, str] | None:
    """The command line of a one-process CPU benchmark over layers of one width: ``--width``, ``--quick``
    (``quick_help``), ``--results`` and ``--report-only``. Returns the arguments, the folder to write
    and the files' stem (``name``, ``name-quick``, and ``-wN`` after either at a width other than the
    default), or ``None`` once ``--report-only`` has re-rendered the Markdown from the JSON with ``render``."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--width", type=positive_int, default=None, help="layer width (default 4096; 512 with --quick)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--results", type=Path, default=None, help="output dir (default benchmarks/results; quick: temp)")
    p.add_argument("--report-only", action="store_true", help="re-render the Markdown from the JSON")
    args = p.parse_args(argv)
    default_width = 512 if args.quick else 4096
    stem = f"{name}-quick" if args.quick else name
    # Another width measures other layers: under the default name it would replace the committed results.
    if args.width is not None and args.width != default_width:
        stem += f"-w{args.width}"
    args.width = args.width or default_width
    results = output_dir(args.results, args.quick, f"{name}-quick-")
    if args.report_only:
        write_atomic(results / f"{stem}.md", render(read_results(results / f"{stem}.json", ("rows",))))
        return None
    check_output_dir(results)
    return args, results, stem


# ------------------------------------------------------------------------------------------- result files


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of its own: two runs writing to one folder must not share one.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_report(folder: Path, stem: str, result: dict[str, Any], render: Callable[[dict], str]) -> None:
    """``result`` as ``stem.json`` and its rendering as ``stem.md`` in ``folder``, each replaced atomically."""
    text = render(result)  # first: a result that cannot be rendered replaces nothing
    write_atomic(folder / f"{stem}.json", json.dumps(result, indent=1))
    write_atomic(folder / f"{stem}.md", text)


def partial_stem(stem: str) -> str:
    """The files' stem while a run is under way (``stem.partial``): the files named ``stem`` are replaced only
    by a complete run, and an interrupted one keeps what it measured beside them."""
    return f"{stem}.partial"


def finish_report(folder: Path, stem: str, result: dict[str, Any], render: Callable[[dict], str]) -> None:
    """A complete run's results under their own name (:func:`write_report`), its partial files removed."""
    write_report(folder, stem, result, render)
    for suffix in (".json", ".md"):
        (folder / f"{partial_stem(stem)}{suffix}").unlink(missing_ok=True)


def interrupted(folder: Path, stem: str, measured: int) -> int:
    """After Ctrl-C: say in one line what was kept, and return the exit status 130 (as the shell's)."""
    kept = (
        f"the {measured} measured so far are in {folder / partial_stem(stem)}.json"
        if measured
        else "nothing was measured"
    )
    print(f"interrupted: {kept}; {folder / stem}.json was left as it is", file=sys.stderr)
    return 130


def render_results(path: Path, keys: tuple[str, ...], render: Callable[[dict], str]) -> tuple[str, str]:
    """A results file's text and its rendering, both checked before anything is written: a file that is not
    this benchmark's results stops with a one-line error."""
    data = read_results(path)
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        fail(f"{path} is not this benchmark's results (no {', '.join(map(repr, missing))}); nothing was written")
    try:
        rendered = render(data)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        fail(f"{path} is not this benchmark's results ({one_line(exc)}); nothing was written")
    return path.read_text(encoding="utf-8"), rendered


def copy_report(source: Path, folder: Path, stem: str, keys: tuple[str, ...], render: Callable[[dict], str]) -> Path:
    """Re-render ``source`` (a results JSON) as ``folder/stem.md`` and put its text, unchanged, at
    ``folder/stem.json`` (untouched when that is ``source`` itself); written only once the rendering
    succeeded. Returns the Markdown's path."""
    text, rendered = render_results(source, keys, render)
    check_output_dir(folder)
    target = folder / f"{stem}.json"
    if not (target.exists() and target.samefile(source)):
        write_atomic(target, text)
    write_atomic(folder / f"{stem}.md", rendered)
    return folder / f"{stem}.md"


def read_results(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results JSON file to re-render or resume, which must exist, parse, and hold ``keys``; anything else
    stops with a one-line error and leaves the file as it is."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{path} does not exist: run the benchmark first (or pass the --out it used)")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"{path} is damaged ({one_line(exc)}); it was left as it is")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        fail(f"{path} is damaged (no {', '.join(repr(k) for k in missing)}); it was left as it is")
    return data


def save_runs(result: dict[str, Any], json_path: Path, md_path: Path, render: Callable[[dict], str]) -> bool:
    """Write ``result`` (its ``runs`` so far) to ``json_path`` and ``md_path``, atomically, once one of its
    runs has succeeded; until then (every worker failed so far) the files there are left as they are, so a
    broken run never replaces good results. Returns whether it wrote."""
    if all("error" in run for run in result["runs"]):
        return False
    text = render(result)  # first: a result that cannot be rendered replaces nothing
    write_atomic(json_path, json.dumps(result, indent=1))
    write_atomic(md_path, text)
    return True
