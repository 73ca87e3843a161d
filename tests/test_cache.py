"""The plan cache: keys, mapping back, verification, improvement, damage, concurrency, export/import."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tnplan
from tnplan.cache import CacheOptions, CacheWarning, PlanCache
from tnplan.canonical import canonical, match
from tnplan.cli import main
from tnplan.cost import ssa_to_linear
from tnplan.examples import lattice_2d, mera, random_regular, scrambled, ttn

REPO = Path(__file__).resolve().parents[1]


def assert_isomorphism(a: tnplan.Network, b: tnplan.Network, found: tuple | None) -> None:
    """``found`` from ``match(a, b)`` really maps every tensor's index multiset onto its image's."""
    assert found is not None
    tensor_map, index_map = found
    ids_a, ids_b = a.label_ids, b.label_ids
    for t, term in enumerate(a.inputs):
        image = sorted(int(index_map[ids_a[x]]) for x in term)
        assert image == sorted(ids_b[x] for x in b.inputs[int(tensor_map[t])])


def chain(order: str, sizes: dict[str, int]) -> tnplan.Network:
    pairs = [tuple(order[k : k + 2]) for k in range(len(order) - 1)]
    return tnplan.Network(tuple(pairs), (order[0], order[-1]), sizes)


NETWORKS = {
    "ttn": lambda: ttn(16, 3),
    "mera": lambda: mera(8, 2),
    "lattice": lambda: lattice_2d(3, 4, bond=3),
    "regular": lambda: random_regular(24, 3, 2, seed=3),
    "hyper": lambda: tnplan.Network.from_einsum(
        "abx,bcx,cdx,dax,xe->e", (2, 3, 4), (3, 5, 4), (5, 2, 4), (2, 2, 4), (4, 6)
    ),
    "trace": lambda: tnplan.Network.from_einsum("aab,bc,cdd,de->ae", (3, 3, 4), (4, 5), (5, 2, 2), (2, 6)),
}


# ---------------------------------------------------------------------------- keys


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_key_is_invariant_to_order_and_names(name: str) -> None:
    net = NETWORKS[name]()
    for seed in range(3):
        other = scrambled(net, seed)
        assert canonical(other).key == canonical(net).key
        assert_isomorphism(net, other, match(net, other))


def test_key_sees_sizes_hyperedges_and_open_indices() -> None:
    base = tnplan.Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 5))
    keys = {
        canonical(base).key,
        canonical(tnplan.Network.from_einsum("ab,bc,cd->ad", (2, 3), (3, 4), (4, 6))).key,  # one size
        canonical(tnplan.Network.from_einsum("ab,bc,cd->abd", (2, 3), (3, 4), (4, 5))).key,  # b open
        canonical(tnplan.Network.from_einsum("ab,bc,cb->a", (2, 3), (3, 4), (4, 3))).key,  # b a hyperedge
        canonical(tnplan.Network.from_einsum("ab,bc,cd->a", (2, 3), (3, 4), (4, 5))).key,  # d closed
    }
    assert len(keys) == 5


def test_near_collision_chains_get_their_own_plans(tmp_path: Path) -> None:
    # The pair: same shapes up to transposition, different best orders. They are mirror
    # images (a<->d), so the second may reuse the first's plan -- but only mapped through that
    # mirror, which reverses the order of the steps. (plan() enumerates 3 tensors without the
    # cache, so the cache is driven directly here.)
    sizes = {"a": 2, "b": 100, "c": 3, "d": 2}
    first, second = chain("abcd", sizes), chain("acbd", sizes)
    p, fresh = tnplan.plan(first), tnplan.plan(second)
    assert p.cache_status == "off" and p.path == [(0, 1), (0, 1)] and fresh.path == [(1, 2), (0, 1)]
    cache = PlanCache(tmp_path / "c.sqlite")
    assert cache.put(p, CacheOptions())
    q = PlanCache(cache.path).get(second, CacheOptions())
    assert q is not None and q.path == fresh.path and q.flops == fresh.flops
    # Same multiset of shapes, not mirror images: different keys, separate entries.
    five = {"a": 2, "b": 100, "c": 3, "d": 5, "e": 2}
    r = tnplan.plan(chain("abcde", five))
    s = tnplan.plan(chain("acbde", five))
    assert canonical(chain("abcde", five)).key != canonical(chain("acbde", five)).key
    assert (r.cache_status, s.cache_status) == ("miss", "miss")
    assert s.flops == tnplan.plan(chain("acbde", five), cache=False).flops
    assert len(PlanCache().entries()) == 2


def test_three_tensors_bypass_the_cache() -> None:
    net = tnplan.Network.from_einsum("ab,bc,cd->ad", (2, 64), (64, 64), (64, 2))
    assert tnplan.plan(net).cache_status == "off"
    assert not PlanCache().path.exists()


def test_options_are_part_of_the_key() -> None:
    net = random_regular(14, 3, 4, seed=1)
    tnplan.plan(net)
    assert tnplan.plan(net, minimize="size").cache_status == "miss"
    assert tnplan.plan(net, seed=3).cache_status == "miss"
    assert tnplan.plan(net, max_size=64).cache_status == "miss"
    assert tnplan.plan(net, dtype="float32").cache_status == "hit"  # dtype only matters with a memory limit
    assert len(PlanCache().entries()) == 4


# ---------------------------------------------------------------------------- hits


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_hit_is_mapped_back_to_the_callers_numbering(name: str) -> None:
    net = NETWORKS[name]()
    stored = tnplan.plan(net)
    other = scrambled(net, 7)
    hit = tnplan.plan(other)
    assert hit.cache_status == "hit" and hit.network is other
    assert hit.flops == stored.flops and hit.peak_size == stored.peak_size
    rng = np.random.default_rng(0)
    arrays = [rng.random(s) for s in other.shapes]
    reference = tnplan.plan(other, cache=False).contract(*arrays)  # an independent search
    np.testing.assert_allclose(hit.contract(*arrays), reference, rtol=1e-10)


def test_sliced_plan_maps_its_sliced_indices() -> None:
    net = lattice_2d(4, 4, bond=4)
    stored = tnplan.plan(net, max_size=4**3)
    assert stored.sliced
    other = scrambled(net, 2)
    hit = tnplan.plan(other, max_size=4**3)
    assert hit.cache_status == "hit" and hit.n_slices == stored.n_slices and hit.flops == stored.flops
    assert all(lab in other.size_dict for lab in hit.sliced_indices)
    rng = np.random.default_rng(1)
    arrays = [rng.random(s) for s in other.shapes]
    reference = tnplan.plan(other, cache=False).contract(*arrays)
    np.testing.assert_allclose(hit.contract(*arrays), reference, rtol=1e-9)


def test_fresh_cache_object_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = mera(8, 2)
    p = tnplan.plan(net, cache=path)
    reader = PlanCache(path)  # new object: no in-process memo
    q = tnplan.plan(scrambled(net, 1), cache=reader)
    assert q.cache_status == "hit" and q.flops == p.flops
    reader.close()  # hit counts are written on close (or at exit), never on the hit itself
    assert PlanCache(path).stats()["hits"] == 1


def test_cache_off_and_json_field(capsys: pytest.CaptureFixture[str]) -> None:
    net = ttn(8, 2)
    assert tnplan.plan(net, cache=False).cache_status == "off"
    assert not PlanCache().path.exists()
    for expected in ("miss", "hit"):
        assert main(["plan", "--eq", "ab,bc,cd,de->ae", "--shapes", "2x9,9x9,9x9,9x2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["cache"] == expected
    assert main(["plan", "--eq", "ab,bc,cd,de->ae", "--shapes", "2x9,9x9,9x9,9x2", "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "off"
    assert main(["plan", "--eq", "ab,bc,cd,de->ae", "--shapes", "2x9,9x9,9x9,9x2"]) == 0
    assert "plan cache: hit" in capsys.readouterr().out  # the table says it too


# ---------------------------------------------------------------------------- never a wrong plan


def _tamper(path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def test_tampered_cost_is_caught_dropped_and_replanned(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = random_regular(16, 3, 3, seed=2)
    good = tnplan.plan(net, cache=path)
    _tamper(path, "UPDATE plans SET flops = '12345'")
    with pytest.warns(CacheWarning, match="failed verification"):
        again = tnplan.plan(net, cache=PlanCache(path))
    assert again.cache_status == "miss" and again.flops == good.flops


def test_tampered_path_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = random_regular(16, 3, 3, seed=2)
    good = tnplan.plan(net, cache=path)
    row = sqlite3.connect(path).execute("SELECT plan FROM plans").fetchone()[0]
    data = json.loads(row)
    # A valid but different tree (contract in input order): same length, other cost.
    n = net.num_tensors
    data["ssa_path"] = [[0, 1]] + [[n + k, k + 2] for k in range(n - 2)]
    _tamper(path, "UPDATE plans SET plan = ?", json.dumps(data))
    with pytest.warns(CacheWarning, match="failed verification"):
        again = tnplan.plan(net, cache=PlanCache(path))
    assert again.flops == good.flops


def test_undecodable_row_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = ttn(8, 2)
    tnplan.plan(net, cache=path)
    _tamper(path, "UPDATE plans SET plan = '{not json'")
    with pytest.warns(CacheWarning, match="cannot be decoded"):
        again = tnplan.plan(net, cache=PlanCache(path))
    assert again.cache_status == "miss"
    assert len(PlanCache(path).entries()) == 1  # re-planned and stored again


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_file_is_moved_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "c.sqlite"
    nets = [random_regular(12, 3, 2, seed=s) for s in range(6)]
    for net in nets:
        tnplan.plan(net, cache=path)
    PlanCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = path.read_bytes()
    # Garbage keeps SQLite's 100-byte file header (damaged pages, not some other file put there).
    garbage = raw[:100] + np.random.default_rng(0).bytes(len(raw) - 100)
    path.write_bytes(garbage if damage == "garbage" else raw[: len(raw) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plans = [tnplan.plan(net, cache=PlanCache(path)) for net in nets]
    fresh = [tnplan.plan(net, cache=False) for net in nets]
    assert [p.flops for p in plans] == [p.flops for p in fresh]  # never a wrong plan
    if damage == "garbage":
        assert any(issubclass(w.category, CacheWarning) for w in caught)
        assert list(tmp_path.glob("c.sqlite.corrupt-*"))  # kept for inspection, not deleted
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _foreign_sqlite(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


FOREIGN = {
    "json": lambda path: path.write_text('{"format": "tnplan.cache/1", "entries": []}'),
    "text": lambda path: path.write_text("hello\n"),
    "binary": lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
    "sqlite-meta": lambda path: _foreign_sqlite(
        path, "CREATE TABLE meta (k TEXT, v TEXT)", "INSERT INTO meta VALUES ('schema', 'app/3')"
    ),
    "sqlite-plans": lambda path: _foreign_sqlite(
        path, "CREATE TABLE plans (id INTEGER PRIMARY KEY, what TEXT)", "INSERT INTO plans VALUES (1, 'holiday')"
    ),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_file_that_is_not_a_cache_is_refused_and_left_untouched(tmp_path: Path, kind: str) -> None:
    # Such a file was moved aside as "unreadable" and replaced by a new cache (JSON, text, another
    # program's meta table), or had tnplan's tables written into it (another program's plans table).
    path = tmp_path / "plans.json"
    FOREIGN[kind](path)
    before = path.read_bytes()
    with pytest.raises(tnplan.PlanError, match=r"plans\.json is not a tnplan plan cache.*give another cache path"):
        tnplan.plan(ttn(8, 2), cache=path)
    with pytest.raises(tnplan.PlanError, match="not a tnplan plan cache"):
        PlanCache(path).entries()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plans.json"]


def test_cache_ls_on_an_export_file_points_to_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exported, _ = _two_plan_export(tmp_path)
    before = exported.read_bytes()
    assert main(["cache", "ls", "--cache", str(exported)]) == 2
    err = capsys.readouterr().err
    assert f"{exported} is not a tnplan plan cache but JSON" in err and f"tnplan cache import {exported}" in err
    assert len(err.strip().splitlines()) == 1 and "warning" not in err
    assert exported.read_bytes() == before
    assert not list(tmp_path.glob("plans.json.corrupt-*"))


def test_a_file_that_is_not_a_cache_at_the_default_path_is_left_untouched(tmp_path: Path) -> None:
    path = PlanCache().path
    path.parent.mkdir(parents=True)
    path.write_text("my notes\n")
    with pytest.warns(CacheWarning, match="not a tnplan plan cache.*set TNPLAN_CACHE_DIR to another folder"):
        p = tnplan.plan(ttn(8, 2))
    assert p.cache_status == "off" and path.read_text() == "my notes\n"
    assert [q.name for q in path.parent.iterdir()] == ["plans.sqlite"]


def test_an_empty_file_becomes_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    path.touch()
    assert tnplan.plan(ttn(8, 2), cache=path).cache_status == "miss"
    assert tnplan.plan(ttn(8, 2), cache=PlanCache(path)).cache_status == "hit"


def test_another_versions_plans_are_kept(tmp_path: Path) -> None:
    # Two environments with different tnplan versions share a cache folder: opening the file used
    # to delete every row of the other version, so each wiped the other's plans.
    path = tmp_path / "c.sqlite"
    tnplan.plan(mera(8, 2), cache=path)
    # The file as format 1 left it: its own schema row, no aliases table, a row under its own key.
    _foreign_sqlite(
        path,
        "DROP TABLE aliases",
        "DELETE FROM meta",
        "INSERT INTO meta VALUES ('schema', 'tnplan.cache.v1.k1')",
        "UPDATE plans SET key = 'f1-' || key",
    )
    old = sqlite3.connect(path).execute("SELECT * FROM plans").fetchall()
    assert tnplan.plan(mera(8, 2), cache=PlanCache(path)).cache_status == "miss"  # its key never matches ours
    assert tnplan.plan(scrambled(mera(8, 2), 1), cache=PlanCache(path)).cache_status == "hit"
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM plans WHERE key LIKE 'f1-%'").fetchall() == old  # untouched
    assert conn.execute("SELECT COUNT(*) FROM plans").fetchone()[0] == 2
    # Its schema row stays as it was (that version empties a file whose schema is not its own).
    assert dict(conn.execute("SELECT name, value FROM meta")) == {"schema": "tnplan.cache.v1.k1", "layout": "1"}
    conn.close()


def test_a_cache_of_another_table_layout_is_refused_not_emptied(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "plans.sqlite"
    tnplan.plan(ttn(8, 2), cache=path)
    _tamper(path, "UPDATE meta SET value = '2' WHERE name = 'layout'")
    before = path.read_bytes()
    with pytest.raises(tnplan.PlanError, match=r"table layout '2' of another tnplan version.*another cache path"):
        tnplan.plan(ttn(8, 2), cache=PlanCache(path))
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path))  # the default cache: planned without it
    with pytest.warns(CacheWarning, match="planning without the default plan cache.*table layout '2'"):
        assert tnplan.plan(ttn(8, 2)).cache_status == "off"
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------- improvement and effort


def test_better_plan_replaces_worse_never_the_reverse(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "c.sqlite")
    net = random_regular(20, 3, 4, seed=5)
    best = tnplan.plan(net, cache=False)
    n = net.num_tensors
    worse = tnplan.from_path(net, [(0, 1)] * (n - 1))
    assert worse.flops > best.flops
    options = CacheOptions()
    assert cache.put(worse, options)
    assert cache.put(best, options)
    assert not cache.put(worse, options)
    assert PlanCache(cache.path).get(net, options).flops == best.flops


def test_effort_and_refine(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = random_regular(50, 3, 2, seed=9)
    short = tnplan.plan(net, max_time=0.3, cache=path)
    assert tnplan.plan(net, max_time=0.2, cache=path).cache_status == "hit"  # less effort asked
    longer = tnplan.plan(net, max_time=1.0, cache=path)
    assert longer.cache_status == "miss" and longer.flops <= short.flops
    refined = tnplan.plan(net, max_time=0.5, cache=path, refine=True)
    assert refined.cache_status == "miss" and refined.flops <= longer.flops
    assert tnplan.plan(net, max_time=1.0, cache=path).cache_status == "hit"
    assert PlanCache(path).entries()[0].effort == 1.0


# ---------------------------------------------------------------------------- export, import, cache_only


def test_export_import_and_cache_only_in_a_fresh_process(tmp_path: Path) -> None:
    source = PlanCache(tmp_path / "a.sqlite")
    nets = {"mera": mera(8, 2), "lattice": lattice_2d(3, 3, bond=2)}
    plans = {k: tnplan.plan(v, cache=source) for k, v in nets.items()}
    exported = tmp_path / "plans.json"
    assert main(["cache", "export", str(exported), "--cache", str(source.path)]) == 0
    target = tmp_path / "b.sqlite"
    assert main(["cache", "import", str(exported), "--cache", str(target)]) == 0
    for k, net in nets.items():
        (tmp_path / f"{k}.json").write_text(scrambled(net, 4).to_json())
    code = (
        "import json, sys, tnplan\n"
        "out = {}\n"
        "for name in ('mera', 'lattice'):\n"
        f"    net = tnplan.Network.from_json({str(tmp_path)!r} + '/' + name + '.json')\n"
        f"    p = tnplan.plan(net, cache={str(target)!r}, cache_only=True)\n"
        "    out[name] = [p.flops, p.cache_status]\n"
        "out['searched'] = [m for m in ('kahypar', 'tnplan.partition', 'tnplan.optimal') if m in sys.modules]\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["searched"] == []  # a hit needs neither kahypar nor the search code
    for k, p in plans.items():
        assert out[k] == [p.flops, "hit"]


def test_the_default_cache_follows_tnplan_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The in-process memo answered before the path was looked at: after TNPLAN_CACHE_DIR moved,
    # the old folder's plans still came back as hits (cache_only too).
    net, other = ttn(8, 2), scrambled(ttn(8, 2), 3)
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "a"))
    assert tnplan.plan(net).cache_status == "miss"
    reader = PlanCache()  # a second default-path cache, with a hit count pending for folder a
    assert tnplan.plan(other, cache=reader).cache_status == "hit"
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "b"))
    with pytest.raises(tnplan.PlanError, match="no cached plan"):
        tnplan.plan(net, cache_only=True)
    assert tnplan.plan(net).cache_status == "miss"
    assert tnplan.plan(other, cache=reader).cache_status == "hit"  # b's own plan now
    reader.close()
    # Each hit counted in the file it came from (a's was pending when the folder moved).
    assert PlanCache(tmp_path / "a" / "plans.sqlite").stats()["hits"] == 1
    assert PlanCache(tmp_path / "b" / "plans.sqlite").stats()["hits"] == 1
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "a"))
    assert tnplan.plan(other, cache=reader).cache_status == "hit"


def test_cache_only_miss_is_a_clear_error() -> None:
    with pytest.raises(tnplan.PlanError, match=r"no cached plan.*tnplan cache export"):
        tnplan.plan(ttn(8, 2), cache_only=True)
    with pytest.raises(tnplan.PlanError, match="needs a plan cache"):
        tnplan.plan(ttn(8, 2), cache=False, cache_only=True)
    with pytest.raises(tnplan.PlanError, match="cache must be"):
        tnplan.plan(ttn(8, 2), cache=3)  # type: ignore[arg-type]


def _two_plan_export(tmp_path: Path) -> tuple[Path, dict]:
    """An export file of two plans, and its parsed JSON to alter."""
    source = PlanCache(tmp_path / "a.sqlite")
    tnplan.plan(ttn(8, 2), cache=source)
    tnplan.plan(mera(8, 2), cache=source)
    exported = tmp_path / "plans.json"
    source.export(exported)
    return exported, json.loads(exported.read_text())


def test_import_rejects_bad_files(tmp_path: Path) -> None:
    exported, data = _two_plan_export(tmp_path)
    target = PlanCache(tmp_path / "b.sqlite")
    (tmp_path / "junk.json").write_text("hello")
    with pytest.raises(tnplan.PlanError, match="not a tnplan cache export"):
        target.import_(tmp_path / "junk.json")
    data["entries"] = None
    exported.write_text(json.dumps(data))
    with pytest.raises(tnplan.PlanError, match="'entries' must be a list"):
        target.import_(exported)
    assert main(["cache", "import", str(tmp_path / "missing.json"), "--cache", str(target.path)]) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flops": "7"}, "re-scores to"),
        ({"effort": float("nan")}, "effort must be a finite number"),
        ({"effort": -1}, "effort must be a finite number"),
        ({"options": 5}, "options must be a string"),
        ({"options": "junk|mem=None|item=0|max_size=None|seed=0"}, "unknown objective 'junk'"),
    ],
)
def test_a_bad_import_entry_is_skipped_and_the_cache_keeps_its_plans(tmp_path: Path, change, message) -> None:
    # A NaN effort used to hit the schema's NOT NULL, which was taken for damage: the healthy
    # file was moved aside and every plan in it dropped out of use.
    exported, data = _two_plan_export(tmp_path)
    data["entries"][0].update(change)
    exported.write_text(json.dumps(data))
    target = PlanCache(tmp_path / "b.sqlite")
    tnplan.plan(random_regular(10, 3, 2, seed=1), cache=target)
    with pytest.warns(CacheWarning, match=f"entry 0 skipped.*{message}"):
        counts = target.import_(exported)
    assert counts == {"added": 1, "kept": 0, "skipped": 1}
    assert len(target.entries()) == 2
    assert not list(tmp_path.glob("b.sqlite.corrupt-*"))


def test_cache_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.sqlite"
    tnplan.plan(mera(8, 2), cache=path)
    assert main(["cache", "ls", "--cache", str(path)]) == 0
    out = capsys.readouterr().out
    key = PlanCache(path).entries()[0].key
    assert key[:12] in out and "1 plan(s)" in out
    assert main(["cache", "show", key[:8], "--cache", str(path)]) == 0
    assert "Contraction plan" in capsys.readouterr().out
    assert main(["cache", "show", "zzzz", "--cache", str(path)]) == 2
    assert "no cached plan" in capsys.readouterr().err
    assert main(["cache", "stats", "--cache", str(path)]) == 0
    assert "plans: 1" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(path)]) == 0
    assert PlanCache(path).entries() == []


# ---------------------------------------------------------------------------- concurrency

_HAMMER = """
import json, sys, tnplan
from tnplan.examples import random_regular, ttn
worker, path = int(sys.argv[1]), sys.argv[2]
flops = {}
for round_ in range(3):
    for s in range(6):
        # Networks 0-2 are shared by every worker, 3-5 are this worker's own.
        seed = s if s < 3 else 100 * (worker + 1) + s
        net = random_regular(12, 3, 3, seed=seed)
        p = tnplan.plan(net, cache=tnplan.PlanCache(path), max_repeats=2 + round_)
        flops[seed] = p.flops
print(json.dumps(flops))
"""


def test_many_processes_share_one_cache(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(w), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for w in range(5)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "Warning" not in err, err
        results.append({int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    cache = PlanCache(path)
    seeds = sorted({s for r in results for s in r})
    assert len(seeds) == 3 + 5 * 3
    # Small cubic graphs repeat: isomorphic networks share one entry, so count classes.
    classes: list[tnplan.Network] = []
    for s in seeds:
        net = random_regular(12, 3, 3, seed=s)
        if not any(match(c, net) is not None for c in classes):
            classes.append(net)
    assert len(cache.entries()) == len(classes)  # no plan lost, no duplicate rows
    for s in seeds:
        stored = cache.get(random_regular(12, 3, 3, seed=s), CacheOptions())
        assert stored is not None
        assert stored.flops == min(r[s] for r in results if s in r)  # the best plan any worker saw


def test_repeat_presentation_hits_without_the_canonical_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.sqlite"
    net = random_regular(20, 3, 2, seed=4)
    stored = tnplan.plan(net, cache=path)
    net.to_json(tmp_path / "net.json")
    same = tnplan.Network.from_json(tmp_path / "net.json")  # a new object, as another process would build it

    def no_key(_network: object) -> None:
        raise AssertionError("the canonical key was computed")

    monkeypatch.setattr("tnplan.cache.canonical", no_key)
    hit = tnplan.plan(same, cache=PlanCache(path))
    assert hit.cache_status == "hit" and hit.path == stored.path


def test_scrambled_caller_is_remembered_and_a_bad_alias_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    net = lattice_2d(3, 4, bond=3)
    tnplan.plan(net, cache=path)
    other = scrambled(net, 5)
    assert tnplan.plan(other, cache=PlanCache(path)).cache_status == "hit"
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM aliases").fetchone()[0] == 2  # both presentations known
    # Corrupt one presentation's tensor map (a valid permutation, the wrong one).
    exact, tensors = conn.execute("SELECT exact, tensors FROM aliases").fetchall()[-1]
    perm = json.loads(tensors)
    conn.execute("UPDATE aliases SET tensors = ? WHERE exact = ?", (json.dumps(perm[1:] + perm[:1]), exact))
    conn.commit()
    conn.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = [tnplan.plan(n, cache=PlanCache(path)) for n in (net, other)]
    fresh = tnplan.plan(net, cache=False)
    assert [p.flops for p in again] == [fresh.flops, fresh.flops]  # never a wrong plan
    assert any("failed verification" in str(w.message) for w in caught)


INSTANCES = REPO.parent / "shared" / "bench" / "instances"


@pytest.mark.parametrize("file", sorted(INSTANCES.glob("*/*.json")), ids=lambda p: p.stem[:28])
def test_every_public_instance_is_matched_when_scrambled(file: Path) -> None:
    # Includes qucirc_rrzz (every tensor rank 2, every index on 3 tensors: refinement alone splits
    # nothing) and random regular graphs, where the isomorphism needs individualisation.
    net = tnplan.Network.from_json(file)
    other = scrambled(net, 11)
    assert_isomorphism(net, other, match(net, other))


def test_a_quick_plan_never_answers_a_request_without_max_time(tmp_path: Path) -> None:
    # A fixed-effort request used to accept any stored plan (effort 0 asked), so one max_time=0.05
    # call fixed a worse plan for every later default call sharing the cache.
    from tnplan.planner import default_time_cap

    path = tmp_path / "c.sqlite"
    net = random_regular(46, 3, 2, seed=5)
    quick = tnplan.plan(net, max_time=0.01, cache=path)
    fixed = tnplan.plan(net, cache=path)
    assert fixed.cache_status == "miss" and fixed.flops <= quick.flops
    assert fixed.flops == tnplan.plan(net, cache=False).flops  # the stored quick plan did not make it worse
    assert PlanCache(path).entries()[0].effort == pytest.approx(default_time_cap(46))
    assert tnplan.plan(net, cache=path).cache_status == "hit"
    assert tnplan.plan(net, max_time=1.0, cache=path).cache_status == "hit"  # 1 s <= the nominal 2.3 s


def test_a_plan_searched_without_the_exact_kernel_is_stored_as_the_least_effort(tmp_path, monkeypatch) -> None:
    import tnplan.optimal

    path = tmp_path / "c.sqlite"
    net = random_regular(14, 3, 2, seed=3)
    # A compilation that failed for good: plans are stored with their effort (else none would ever hit).
    monkeypatch.setattr(tnplan.optimal, "kernel_ready", lambda block=False: False)
    monkeypatch.setattr(tnplan.optimal, "compiling", lambda: False)
    failed = tnplan.plan(net, max_time=0.3, cache=tmp_path / "failed.sqlite")
    assert not failed.optimal and PlanCache(tmp_path / "failed.sqlite").entries()[0].effort == 0.3
    monkeypatch.setattr(tnplan.optimal, "compiling", lambda: True)  # still compiling in the background
    first = tnplan.plan(net, max_time=0.3, cache=path)
    assert not first.optimal and PlanCache(path).entries()[0].effort == 0
    monkeypatch.undo()
    again = tnplan.plan(net, max_time=0.3, cache=path)
    assert again.cache_status == "miss" and again.optimal and again.flops <= first.flops
    assert tnplan.plan(net, max_time=0.3, cache=path).cache_status == "hit"


def test_an_unusable_default_cache_plans_without_it_and_a_named_one_fails(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(blocker / "cache"))
    net = random_regular(12, 3, 2, seed=1)
    with pytest.warns(CacheWarning, match="planning without the default plan cache"):
        p = tnplan.plan(net, max_time=0.2)
    assert p.cache_status == "off" and p.optimal
    with pytest.raises(tnplan.PlanError, match="cannot create the plan cache folder"):
        tnplan.plan(net, max_time=0.2, cache=blocker / "cache" / "plans.sqlite")
    with pytest.raises(tnplan.PlanError, match="cannot create the plan cache folder"):
        tnplan.plan(net, max_time=0.2, cache_only=True)


def test_a_cheaper_stored_plan_is_kept_over_a_dearer_proven_one(tmp_path: Path) -> None:
    # Under a cap, "optimal" means optimal among unsliced trees; a sliced plan can have a smaller peak.
    path = tmp_path / "c.sqlite"
    net = random_regular(12, 3, 4, seed=1)
    exact = tnplan.plan(net, minimize="size", cache=False)
    sliced = tnplan.plan(net, minimize="size", max_size=exact.peak_size // 4, max_time=0.5, cache=False)
    assert sliced.peak_size < exact.peak_size
    PlanCache(path).put(sliced, CacheOptions(minimize="size", max_size=exact.peak_size), effort=0.0)
    for _ in range(2):  # searched again (effort 0 stored), then a hit: the same plan both times
        again = tnplan.plan(net, minimize="size", max_size=exact.peak_size, max_time=0.3, cache=path)
        assert again.peak_size == sliced.peak_size and again.ssa_path == sliced.ssa_path


def test_a_stored_plan_over_its_limits_is_dropped_and_planned_again(tmp_path: Path) -> None:
    # Rows stored when inputs with traces were counted at their deduplicated size can exceed the limit.
    path = tmp_path / "c.sqlite"
    net = lattice_2d(3, 3, bond=4)
    free = tnplan.plan(net, cache=False)
    limit = free.peak_memory() - 8
    PlanCache(path).put(free, CacheOptions(memory_limit=limit), effort=100.0)
    PlanCache(path).put(free, CacheOptions(max_size=free.peak_size - 1), effort=100.0)
    with pytest.warns(CacheWarning, match="over the limit"):
        fitted = tnplan.plan(net, memory_limit=limit, max_time=0.5, cache=path)
    assert fitted.cache_status == "miss" and fitted.peak_memory() <= limit
    with pytest.warns(CacheWarning, match="over max_size"):
        capped = tnplan.plan(net, max_size=free.peak_size - 1, max_time=0.5, cache=path)
    assert capped.cache_status == "miss" and capped.peak_size < free.peak_size


def test_under_minimize_size_equal_peaks_keep_the_plan_with_fewer_flops(tmp_path: Path) -> None:
    net = random_regular(10, 3, 2, seed=3)
    n = net.num_tensors
    rng = np.random.default_rng(0)
    by_peak: dict[int, list] = {}
    for _ in range(200):
        order = [int(i) for i in rng.permutation(n)]
        ssa, last = [], order[0]  # absorb the tensors one by one, in a random order
        for k, t in enumerate(order[1:]):
            ssa.append((last, t))
            last = n + k
        p = tnplan.from_path(net, ssa_to_linear(ssa, n))
        by_peak.setdefault(p.peak_size, []).append(p)
    peak, plans = next((k, v) for k, v in by_peak.items() if len({p.flops for p in v}) > 1)
    cheap, dear = min(plans, key=lambda p: p.flops), max(plans, key=lambda p: p.flops)
    assert cheap.peak_size == dear.peak_size == peak and cheap.flops < dear.flops
    cache, options = PlanCache(tmp_path / "c.sqlite"), CacheOptions(minimize="size")
    assert cache.put(dear, options)
    assert cache.put(cheap, options)
    assert not cache.put(dear, options)
    assert PlanCache(cache.path).get(net, options).flops == cheap.flops


def test_pending_hits_go_to_their_file_and_create_nothing_at_a_moved_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # flush() reconnected to the new default path: it created a cache file in a folder never used.
    net, other = ttn(8, 2), scrambled(ttn(8, 2), 3)
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "a"))
    tnplan.plan(net)
    reader = PlanCache()
    assert tnplan.plan(other, cache=reader).cache_status == "hit"
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "b"))
    reader.flush()
    assert not (tmp_path / "b").exists()
    assert PlanCache(tmp_path / "a" / "plans.sqlite").stats()["hits"] == 1


def test_an_older_versions_cache_on_read_only_storage_is_read(tmp_path: Path) -> None:
    # Opening it wanted to record the layout first, and failed with "attempt to write a readonly database".
    path = tmp_path / "plans.sqlite"
    net = ttn(8, 2)
    tnplan.plan(net, cache=PlanCache(path))
    with sqlite3.connect(path) as conn:  # as a version before the layout row left it
        conn.execute("DELETE FROM meta WHERE name = 'layout'")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', 'tnplan.cache.v2.k1')")
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    PlanCache(path)._init(read_only, path)  # no error, nothing written
    assert dict(read_only.execute("SELECT name, value FROM meta")) == {"schema": "tnplan.cache.v2.k1"}
    read_only.close()
