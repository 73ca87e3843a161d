"""Tests of ``tnplan report``: the report's numbers, its three documents, its errors and its command line."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
from spec import run_cli

import tnplan
from tnplan import anchors
from tnplan.describe import render_markdown_table, render_table
from tnplan.examples import random_regular, ttn
from tnplan.report import Report, add_parser, build_report, parse_methods, run, tree_layout, write_report

METHODS = ("tnplan", "opt_einsum-greedy", "cotengra")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chain() -> tnplan.Network:
    return tnplan.Network.from_einsum("ab,bc,cd,de->ae", (4, 16), (16, 32), (32, 16), (16, 4))


def _regular() -> tnplan.Network:
    # Unsliced, opt_einsum's greedy path keeps 28 KiB of float64 alive; tnplan's best 14 KiB.
    return random_regular(12, 3, 4, 0)


@pytest.fixture(scope="module")
def network_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("networks")
    files = [folder / "chain.json", folder / "ttn8.json"]
    _chain().to_json(files[0])
    ttn(8, 2, closed=True).to_json(files[1])
    return files


@pytest.fixture(scope="module")
def written(network_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, dict[str, Path]]:
    report = build_report(network_files, methods=",".join(METHODS), max_time=0.2, progress=False)
    return report, write_report(report, tmp_path_factory.mktemp("out") / "nested" / "report")


def _load_json(paths: dict[str, Path]) -> dict[str, Any]:
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------------------------------------- documents


def test_three_documents_and_figures(written: tuple[Report, dict[str, Path]]) -> None:
    _, paths = written
    for key in ("markdown", "html", "json"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    pngs = sorted(paths["figures"].glob("*.png"))
    # One cost-vs-time figure, then a step profile and a tree per network.
    assert [p.name for p in pngs] == [
        "01_chain_profile.png",
        "01_chain_tree.png",
        "02_ttn8_profile.png",
        "02_ttn8_tree.png",
        "cost_vs_time.png",
    ]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    md = paths["markdown"].read_text(encoding="utf-8")
    for p in pngs:
        assert f"](figures/{p.name})" in md


def test_html_is_self_contained(written: tuple[Report, dict[str, Path]]) -> None:
    _, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert 'src="http' not in page and "href=" not in page and "<link" not in page
    assert "<script" not in page
    # The embedded images are the PNGs written next to the Markdown.
    embedded = {s.split(",", 1)[1] for s in sources}
    import base64

    assert {base64.b64encode(p.read_bytes()).decode() for p in paths["figures"].glob("*.png")} == embedded
    assert page.count("<tr>") == 2 + 2 + 2 * len(METHODS)  # two table headers, summary rows, result rows


def test_json_matches_rescoring(written: tuple[Report, dict[str, Path]], network_files: list[Path]) -> None:
    _, paths = written
    data = _load_json(paths)
    assert data["format"] == "tnplan.report/1"
    assert data["methods"] == list(METHODS)
    assert data["options"] == {"max_time": 0.2, "memory_limit": None, "dtype": "float64", "seed": 0}
    assert [n["name"] for n in data["networks"]] == ["chain", "ttn8"]
    for entry, file in zip(data["networks"], network_files, strict=True):
        net = tnplan.Network.from_json(entry["file"])
        assert Path(entry["file"]) == file and entry["tensors"] == net.num_tensors
        assert set(entry["results"]) == set(METHODS)
        for method, res in entry["results"].items():
            assert "error" not in res, (method, res)
            sliced = [net.label_ids[lab] for lab in res["sliced_indices"]]
            costs = tnplan.score_linear_path(net, res["path"], sliced)
            assert res["flops"] == costs.flops
            assert res["log10_flops"] == pytest.approx(costs.log10_flops, abs=1e-12)
            assert res["peak_size"] == costs.peak_size
            assert res["log2_size"] == pytest.approx(costs.log2_size, abs=1e-12)
            assert res["peak_memory"] == costs.peak_memory("float64")
            assert res["write"] == costs.write
            assert res["n_slices"] == costs.n_slices == 1
            assert res["planning_time_s"] >= 0
            assert res["fits"] is None and res["ignores_memory_limit"] is False


def test_ratio_to_best(written: tuple[Report, dict[str, Path]]) -> None:
    report, paths = written
    for entry in _load_json(paths)["networks"]:
        results = entry["results"]
        ratios = {m: r["ratio_to_best"] for m, r in results.items()}
        assert min(ratios.values()) == 1.0
        assert all(r >= 1.0 for r in ratios.values())
        fewest = min(r["flops"] for r in results.values())
        assert results[entry["best"]]["flops"] == fewest and ratios[entry["best"]] == 1.0
        for r in results.values():
            assert r["ratio_to_best"] == pytest.approx(r["flops"] / fewest)
    # tnplan is exact on these small networks, so it is never beaten.
    assert all(e.results["tnplan"].ratio_to_best == 1.0 for e in report.networks)


def test_markdown_has_a_row_per_network_and_method(written: tuple[Report, dict[str, Path]]) -> None:
    report, paths = written
    md = paths["markdown"].read_text(encoding="utf-8")
    for entry in report.networks:
        for method, res in entry.results.items():
            assert res.plan is not None
            rows = [line for line in md.splitlines() if line.startswith(f"| {entry.name} | {method} |")]
            assert len(rows) == 1, (entry.name, method)
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert cells[2] == f"{res.plan.log10_flops:.3f}"
            assert cells[8] == f"{res.ratio_to_best:.3f}"
        assert f"| {entry.name} | {entry.network.num_tensors} | " in md  # the summary table
    assert "fits limit" not in md  # no memory limit, no fits column


# ---------------------------------------------------------------------------------------------- memory limit


def test_memory_limit_marks_methods_that_cannot_slice(tmp_path: Path) -> None:
    limit = 10_000  # bytes: the inputs hold 6 KiB, so intermediates must shrink to fit
    report = build_report(
        [("rr", _regular())], methods="tnplan,oe-greedy", max_time=0.2, memory_limit=limit, progress=False
    )
    paths = write_report(report, tmp_path)
    res = _load_json(paths)["networks"][0]["results"]
    ours, greedy = res["tnplan"], res["opt_einsum-greedy"]
    assert greedy["peak_memory"] > limit and greedy["n_slices"] == 1  # precondition: unsliced does not fit
    assert greedy["ignores_memory_limit"] is True and greedy["fits"] is False
    assert ours["ignores_memory_limit"] is False and ours["fits"] is True
    assert ours["peak_memory"] <= limit and ours["n_slices"] > 1 and ours["sliced_indices"]
    # The best plan must fit, even though the unsliced greedy plan has fewer flops.
    assert report.networks[0].best == "tnplan" and ours["ratio_to_best"] == 1.0
    assert greedy["ratio_to_best"] == pytest.approx(greedy["flops"] / ours["flops"]) and greedy["ratio_to_best"] < 1
    md = paths["markdown"].read_text(encoding="utf-8")
    (greedy_row,) = [line for line in md.splitlines() if line.startswith("| rr | opt_einsum-greedy |")]
    (ours_row,) = [line for line in md.splitlines() if line.startswith("| rr | tnplan |")]
    assert greedy_row.rstrip(" |").endswith("no (unsliced; ignores limit)")
    assert ours_row.rstrip(" |").endswith("yes")
    assert "opt_einsum-greedy cannot slice" in md


def test_cotengra_slices_under_a_memory_limit() -> None:
    net = _regular()
    plan = anchors.run_method("cotengra", net, max_time=0.2, memory_limit=10_000)
    target = anchors.cotengra_target_size(net, 10_000)
    assert plan.n_slices > 1 and plan.peak_size <= target
    with pytest.raises(tnplan.TnplanError, match="input tensors alone hold 6144 bytes"):
        anchors.cotengra_target_size(net, 6144)


def test_dtype_scales_peak_memory() -> None:
    report = build_report([_chain()], methods=["oe-greedy"], dtype="float32", progress=False)
    res = report.to_dict()["networks"][0]["results"]["opt_einsum-greedy"]
    costs = tnplan.score_linear_path(_chain(), res["path"])
    assert res["peak_memory"] == costs.peak_elements * 4
    assert report.options["dtype"] == "float32"
    assert report.networks[0].name == "network1"


# ---------------------------------------------------------------------------------------------- failures


def test_failing_method_is_recorded_and_report_still_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(network: tnplan.Network, max_time: float, seed: int) -> list:
        raise RuntimeError("boom\non purpose")

    monkeypatch.setitem(anchors._RUNNERS, "opt_einsum-greedy", boom)
    report = build_report([("a", _chain()), ("b", _regular())], methods="opt_einsum-greedy,tnplan", max_time=0.1)
    err = capsys.readouterr().err
    assert err.count("opt_einsum-greedy failed: RuntimeError: boom on purpose") == 2
    paths = write_report(report, tmp_path)
    for entry in _load_json(paths)["networks"]:
        assert entry["results"]["opt_einsum-greedy"] == {"error": "RuntimeError: boom on purpose"}
        assert entry["best"] == "tnplan" and entry["results"]["tnplan"]["ratio_to_best"] == 1.0
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md.count("| opt_einsum-greedy | error: RuntimeError: boom on purpose |") == 2
    assert "boom" in paths["html"].read_text(encoding="utf-8")


def test_every_method_failing_still_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(network: tnplan.Network, max_time: float, seed: int) -> list:
        raise ValueError("nope")

    monkeypatch.setitem(anchors._RUNNERS, "opt_einsum-greedy", boom)
    report = build_report([_chain()], methods="oe-greedy", progress=False)
    paths = write_report(report, tmp_path)
    assert _load_json(paths)["networks"][0]["best"] is None
    assert "all failed" in paths["markdown"].read_text(encoding="utf-8")
    assert not list(paths["figures"].glob("*.png"))


def test_unknown_method(network_files: list[Path]) -> None:
    with pytest.raises(tnplan.TnplanError) as info:
        build_report(network_files, methods="tnplan,nope,oe-greedy,cotengra-fast", progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("unknown method(s) 'nope', 'cotengra-fast'; choose from tnplan, cotengra, ")
    assert "opt_einsum-auto-hq" in msg and "oe-greedy=opt_einsum-greedy" in msg
    with pytest.raises(tnplan.TnplanError, match="no methods given"):
        build_report(network_files, methods=" , ", progress=False)


def test_bad_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(tnplan.TnplanError, match=r"missing\.json: no such file"):
        build_report([missing], methods="oe-greedy", progress=False)
    broken = tmp_path / "broken.json"
    broken.write_text('{"inputs": [', encoding="utf-8")
    with pytest.raises(tnplan.TnplanError, match=r"broken\.json: malformed JSON at line 1"):
        build_report([broken], methods="oe-greedy", progress=False)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(tnplan.TnplanError, match=r"wrong\.json: unrecognised network JSON"):
        build_report([wrong], methods="oe-greedy", progress=False)
    with pytest.raises(tnplan.TnplanError, match="no network files given"):
        build_report([], methods="oe-greedy", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(tnplan.TnplanError, match="empty: folder holds no network JSON files"):
        build_report([empty], methods="oe-greedy", progress=False)
    with pytest.raises(tnplan.TnplanError, match="unknown dtype 'float99'"):
        build_report([_chain()], methods="oe-greedy", dtype="float99", progress=False)


def test_out_must_be_a_folder(tmp_path: Path) -> None:
    report = build_report([_chain()], methods="oe-greedy", progress=False)
    afile = tmp_path / "taken"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(tnplan.TnplanError, match="taken: exists and is not a folder"):
        write_report(report, afile)
    assert afile.read_text(encoding="utf-8") == "x"


# ---------------------------------------------------------------------------------------------- command line


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["report", *argv], capsys)


def test_quiet_prints_nothing(network_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(network_files[0]), "--max-time", "0.1", "--out"]
    code, out, err = _cli([*argv, str(tmp_path / "quiet"), "--methods", "oe-greedy,tnplan", "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "quiet" / "report.html").is_file()
    # Without --quiet a run shows its progress on stderr and the table on stdout.
    code, out, err = _cli([*argv, str(tmp_path / "loud"), "--methods", "oe-greedy,oe-dp"], capsys)
    assert code == 0 and "1/2" in err and "2/2" in err
    assert "| opt_einsum-dp" not in out and "opt_einsum-dp" in out
    assert f"wrote {tmp_path / 'loud' / 'report.md'}" in out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = tmp_path / "n.json"
    _chain().to_json(net)
    taken = tmp_path / "taken"
    taken.write_text("x", encoding="utf-8")
    cases = [
        ([str(net), "--methods", "nope", "--out", str(tmp_path / "o")], "unknown method(s) 'nope'"),
        (["--out", str(tmp_path / "o")], "no network files given"),
        ([str(tmp_path / "gone.json"), "--out", str(tmp_path / "o")], "gone.json: no such file"),
        ([str(net), "--out", str(taken)], "taken: exists and is not a folder"),
        ([str(net), "--max-time", "0", "--out", str(tmp_path / "o")], "expected a positive number"),
        ([str(net), "--seed", "-1", "--out", str(tmp_path / "o")], "expected an integer >= 0"),
    ]
    for argv, expected in cases:
        code, out, err = _cli(argv, capsys)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith(("tnplan: error: ", "tnplan report: error: ")), err
        assert expected in err
    assert not (tmp_path / "o").exists()


def test_add_parser_registers_report(network_files: list[Path], tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tnplan")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["report", str(network_files[0]), "--methods", "oe-dp", "--quiet", "--out", str(tmp_path)])
    assert args.command == "report" and args.max_time == 1.0 and args.memory_limit is None
    assert run(args) == 0
    assert _load_json({"json": tmp_path / "report.json"})["methods"] == ["opt_einsum-dp"]


# ---------------------------------------------------------------------------------------------- pieces


def test_method_names_and_aliases() -> None:
    assert parse_methods("oe-greedy, opt_einsum-greedy,ctg-default,cotengra,ctg-optimal") == (
        "opt_einsum-greedy",
        "cotengra",
        "cotengra-optimal",
    )
    # ``tnplan compare`` validates against METHODS: the old short names stay valid there.
    for name in ("tnplan", "oe-greedy", "oe-auto", "oe-auto-hq", "oe-dp", "ctg-default", "ctg-optimal"):
        assert name in anchors.METHODS
    assert set(anchors.METHOD_NAMES) <= set(anchors.METHODS)
    net = _chain()
    short = anchors.run_method("oe-greedy", net)
    long = anchors.run_method("opt_einsum-greedy", net)
    assert short.path == long.path and short.method == "oe-greedy"
    with pytest.raises(tnplan.PlanError, match="unknown method 'oe-fast'"):
        anchors.run_method("oe-fast", net)


def test_markdown_table_renderer() -> None:
    header = ("name", "value")
    rows = [("a|b", "1"), ("c\nd", "22")]
    assert render_markdown_table(header, rows, ("l", "r")) == (
        "| name | value |\n| :-- | --: |\n| a\\|b | 1 |\n| c d | 22 |"
    )
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        render_markdown_table(header, [("x",)])
    # The fixed-width renderer Plan.describe uses is unchanged.
    assert render_table(header, [("a", "1"), ("bbbbbb", "22")]) == (
        "name    value\n-------------\na       1    \nbbbbbb  22   "
    )


def test_tree_layout_puts_leaves_at_the_bottom() -> None:
    plan = tnplan.plan(_regular(), max_time=0.1)
    n = plan.network.num_tensors
    x, y = tree_layout(n, plan.ssa_path)
    assert sorted(x[:n]) == [float(i) for i in range(n)] and y[:n] == [0] * n
    for k, (a, b) in enumerate(plan.ssa_path):
        v = n + k
        assert y[v] == 1 + max(y[a], y[b]) and min(x[a], x[b]) <= x[v] <= max(x[a], x[b])
    assert tree_layout(1, []) == ([0.0], [0])


def test_inputs_and_names(network_files: list[Path]) -> None:
    chain = _chain()
    report = build_report([("a", chain), ("a", chain), chain], methods="oe-greedy", progress=False)
    assert [e.name for e in report.networks] == ["a", "a-2", "network3"]
    # A tuple of files is a list of inputs, not one (name, Network) pair; a folder gives its JSON files.
    report = build_report(tuple(network_files), methods="oe-greedy", progress=False)
    assert [e.name for e in report.networks] == ["chain", "ttn8"]
    report = build_report(network_files[0].parent, methods="oe-greedy", memory_limit=2e6, progress=False)
    assert [e.file for e in report.networks] == [str(f) for f in network_files]
    assert report.memory_limit == 2_000_000 and report.networks[0].results["opt_einsum-greedy"].fits is True


def test_a_bad_seed_is_refused_before_any_search() -> None:
    with pytest.raises(tnplan.TnplanError, match="seed must be an integer >= 0"):
        build_report([_chain()], methods="tnplan", seed=-1, progress=False)


def test_a_report_written_inside_its_input_folder_is_not_read_back(tmp_path: Path) -> None:
    # Folders are read recursively: the second run used to fail on the first run's report.json.
    _chain().to_json(tmp_path / "chain.json")
    for _ in range(2):
        report = build_report([tmp_path], methods="opt_einsum-greedy", progress=False)
        write_report(report, tmp_path / "rep")
        assert [e.name for e in report.networks] == ["chain"]


def test_an_earlier_reports_figures_are_replaced_and_other_files_kept(tmp_path: Path) -> None:
    two = build_report([("a", _chain()), ("b", _regular())], methods="opt_einsum-greedy", progress=False)
    figures = write_report(two, tmp_path)["figures"]
    (figures / "mine.png").write_bytes(PNG_MAGIC)
    one = build_report([("a", _chain())], methods="opt_einsum-greedy", progress=False)
    write_report(one, tmp_path)
    left = sorted(p.name for p in figures.glob("*.png"))
    assert not [name for name in left if name.startswith("02_")]
    assert "mine.png" in left and any(name.startswith("01_") for name in left)


def test_the_report_skips_exhaustive_anchors_past_their_size() -> None:
    # They have no time limit: on 200 tensors tnplan report used to wait on opt_einsum's dp for good.
    # Called directly they still run whatever the size (a long chain is easy for them).
    big = random_regular(anchors.EXACT_MAX_TENSORS + 2, 3, 2, 0)
    report = build_report([("big", big)], methods="oe-greedy,oe-dp,ctg-optimal", progress=False)
    results = report.networks[0].results
    assert results["opt_einsum-greedy"].plan is not None
    for method in ("opt_einsum-dp", "cotengra-optimal"):
        assert results[method].plan is None and "skipped: exhaustive" in results[method].error
    chain = tnplan.Network.from_opt_einsum([[k, k + 1] for k in range(60)], [0, 60], dict.fromkeys(range(61), 2))
    assert anchors.run_method("oe-dp", chain).flops > 0
