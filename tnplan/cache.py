"""``tnplan.PlanCache``: plans stored once, found again for any relabelling or reordering.

Plans live in one SQLite file (``$TNPLAN_CACHE_DIR/plans.sqlite``, else the platform cache
directory). A row is keyed by the network's canonical key (:mod:`tnplan.canonical`) and every
option that changes the plan; it holds the network renumbered canonically and the plan in that
numbering, so any isomorphic caller can have it mapped back to its own tensor order and labels.

Rules that make it safe to share between processes and machines:

* never a wrong plan — every hit is mapped, re-scored on the caller's network and compared with
  the stored flops and contraction cost; a mismatch warns, drops the row and plans again;
* never a lost plan — writes are short ``BEGIN IMMEDIATE`` transactions, and a better plan
  replaces a worse one but never the reverse;
* never a crash on damage — a damaged cache file is moved aside (``*.corrupt-<time>``) and rebuilt,
  an undecodable row is dropped, each with a :class:`CacheWarning`;
* never another program's file — a path holding anything but a tnplan cache (JSON, text, another
  program's SQLite database) is left untouched and refused with a :class:`PlanError`;
* never another version's plans — every version's keys differ, so their rows share one file.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import marshal
import math
import os
import sqlite3
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tnplan.canonical import KEY_VERSION, canonical, match
from tnplan.cost import OBJECTIVES, rank_key, score_path
from tnplan.errors import PlanError, TnplanError
from tnplan.network import Network

# Bump when what a row stores or the cost model changes: old rows then simply never match (the
# row keys and presentations include it and KEY_VERSION), while staying in the file for the
# version that wrote them.
FORMAT_VERSION = 2
EXPORT_FORMAT = "tnplan.cache/1"
_SCHEMA = f"tnplan.cache.v{FORMAT_VERSION}.k{KEY_VERSION}"
# The tables' shape, shared by every FORMAT_VERSION and KEY_VERSION so far (format 1 lacked only the
# aliases table, which is created when missing). A file of another layout is refused, never
# converted or emptied: it holds another version's plans. Bump it only for a change older code
# cannot read, and give the default file a new name with it, so that versions sharing one cache
# folder each keep their own file rather than refusing each other's.
_LAYOUT = "1"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class CacheWarning(UserWarning):
    """A cache file or row was damaged or stale and has been repaired; planning goes on."""


def default_cache_path() -> Path:
    """``$TNPLAN_CACHE_DIR/plans.sqlite``, else the platform's user cache directory."""
    env = os.environ.get("TNPLAN_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "plans.sqlite"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "tnplan" / "Cache" / "plans.sqlite"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tnplan" / "plans.sqlite"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tnplan" / "plans.sqlite"


@dataclass(frozen=True)
class CacheOptions:
    """The planning options that change which plan is right (part of every key)."""

    minimize: str = "flops"
    memory_limit: int | None = None
    max_size: int | None = None
    itemsize: int = 8
    seed: int = 0

    def text(self) -> str:
        # The element size only matters through the memory limit.
        item = self.itemsize if self.memory_limit is not None else 0
        return f"{self.minimize}|mem={self.memory_limit}|item={item}|max_size={self.max_size}|seed={self.seed}"


@dataclass(frozen=True)
class Entry:
    """One stored plan, as listed by :meth:`PlanCache.entries`."""

    key: str
    form: str
    options: str
    tensors: int
    flops: int
    contraction_cost: int
    cost: float
    method: str
    optimal: bool
    effort: float
    hits: int
    created: float
    updated: float

    @property
    def log10_flops(self) -> float:
        return math.log10(self.flops) if self.flops > 0 else 0.0


_COLUMNS = "key, form, options, tensors, flops, contraction_cost, cost, method, optimal, effort, hits, created, updated"


def _entry(row: tuple) -> Entry:
    k, form, options, tensors, flops, ccost, cost, method, optimal, effort, hits, created, updated = row
    return Entry(
        k, form, options, int(tensors), int(flops), int(ccost), float(cost), method, bool(optimal),
        float(effort), int(hits), float(created), float(updated),
    )  # fmt: skip


class PlanCache:
    """A persistent, process-safe store of plans in one SQLite file.

    Args:
        path: The database file; ``None`` uses :func:`default_cache_path` (read on every use, so
            ``TNPLAN_CACHE_DIR`` may be set or changed after import).

    Examples:
        >>> cache = PlanCache("/tmp/plans.sqlite")  # doctest: +SKIP
        >>> p = tnplan.plan(net, cache=cache)  # doctest: +SKIP
        >>> p.cache_status  # doctest: +SKIP
        'miss'
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._given = None if path is None else Path(path).expanduser()
        self._default: tuple[str | None, Path] | None = None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_path: Path | None = None
        self._conn_pid = -1
        # In-process memo: exact network -> plan, and key -> decoded rows (canonical memo).
        self._memo: dict[tuple[Network, str], Any] = {}
        self._rows: dict[str, list[_Row]] = {}
        self._hits: dict[tuple[str, str], int] = {}
        _OPEN.add(self)

    @property
    def path(self) -> Path:
        if self._given is not None:
            return self._given
        # Resolving the default costs ~0.1 ms of Path work; redo it only when the variable changes.
        env = os.environ.get("TNPLAN_CACHE_DIR")
        if self._default is None or self._default[0] != env:
            self._default = (env, default_cache_path())
        return self._default[1]

    def __repr__(self) -> str:
        return f"PlanCache({str(self.path)!r})"

    # ------------------------------------------------------------------ connection and repair

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        if self._conn is not None and self._conn_path == path and self._conn_pid == os.getpid():
            return self._conn
        # A connection must not cross a fork, and the default path may have moved (env var).
        if self._conn is not None and self._conn_pid == os.getpid():
            # Hit counts belong to the file they were counted in: write them there before moving on.
            self._write_hits(self._conn)
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        self._memo.clear()
        self._rows.clear()
        for attempt in range(2):
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
                self._init(conn, path)
                break
            except sqlite3.OperationalError as exc:
                _close(conn)
                if "locked" in str(exc) or "busy" in str(exc):
                    raise PlanError(f"plan cache {path} stayed locked for 60 s: {exc}") from None
                if "unable to open" in str(exc):
                    # Usually a folder that does not exist yet (checked only now: a stat per open costs).
                    if attempt == 0 and not path.parent.is_dir():
                        try:
                            path.parent.mkdir(parents=True, exist_ok=True)
                        except OSError as err:
                            raise PlanError(
                                f"cannot create the plan cache folder {path.parent}: {err.strerror or err}"
                            ) from None
                        continue
                    raise PlanError(
                        f"cannot open the plan cache {path}: {exc}; check its permissions or set TNPLAN_CACHE_DIR"
                    ) from None
                # SQLite reports damage as DatabaseError; this is the disk, permissions or a full
                # file system, which moving the file aside would not mend.
                raise PlanError(f"cannot open the plan cache {path}: {exc}") from None
            except sqlite3.DatabaseError as exc:
                _close(conn)
                if attempt or not self._quarantine(path, exc):
                    raise PlanError(f"cannot open the plan cache {path}: {exc}") from None
            except BaseException:
                _close(conn)
                raise
        assert conn is not None
        self._conn, self._conn_path, self._conn_pid = conn, path, os.getpid()
        return conn

    def _init(self, conn: sqlite3.Connection, path: Path) -> None:
        """Check that ``conn`` is a tnplan cache of this layout (or a new file) and create what it lacks.

        Raises:
            PlanError: If the file is another program's database or has another table layout; it
                is left as it was.
        """
        # connect(timeout=60) already installs the busy handler; nothing else to set for a reader.
        meta = _read_meta(conn)
        if meta is not None and (
            meta.get("layout") == _LAYOUT or ("layout" not in meta and meta.get("schema") == _SCHEMA)
        ):
            return  # the common case: an existing cache of this layout, read without writing
        # Whose file this is, decided before anything is written (even the journal mode below would
        # change another program's database), in one read transaction: another tnplan process may
        # be creating the tables right now.
        conn.execute("BEGIN")
        try:
            tables = sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            meta = _read_meta(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if tables and not _is_tnplan(meta):
            names = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise PlanError(
                f"{path} is not a tnplan plan cache (an SQLite database with tables {names}), left untouched; "
                f"{self._elsewhere()}"
            )
        self._check_layout(meta, path)
        # A rollback journal, not WAL: a reader's first query then costs ~0.25 ms instead of ~0.8 ms
        # (no -shm mapping), which is most of a fresh process's hit; writes are short either way.
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()
        if mode is None:
            raise sqlite3.DatabaseError("journal mode query returned nothing")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Again under the write lock: another process may have set the file up meanwhile.
            self._check_layout(_read_meta(conn), path)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS plans ("
                " key TEXT NOT NULL, form TEXT NOT NULL, options TEXT NOT NULL, tensors INTEGER NOT NULL,"
                " flops TEXT NOT NULL, contraction_cost TEXT NOT NULL, cost REAL NOT NULL, method TEXT NOT NULL,"
                " optimal INTEGER NOT NULL, effort REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0,"
                " created REAL NOT NULL, updated REAL NOT NULL, network TEXT NOT NULL, plan TEXT NOT NULL,"
                " PRIMARY KEY (key, form))"
            )
            # A presentation (the network exactly as some caller wrote it) -> the row and the map
            # from the row's canonical numbering to that caller's numbering: a repeat caller's
            # hit needs no canonical key and no numpy at all.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS aliases (exact TEXT PRIMARY KEY, key TEXT NOT NULL, form TEXT NOT NULL,"
                " tensors TEXT NOT NULL, indices TEXT NOT NULL)"
            )
            # Only the layout is recorded. A 'schema' row is neither written nor changed: tnplan
            # versions before this one emptied any file whose 'schema' was not their own, and they
            # leave one without it alone.
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('layout', ?)", (_LAYOUT,))
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            complete = {"meta", "plans", "aliases"} <= set(tables)
            if complete and "readonly" in str(exc).replace(" ", "").lower():
                return  # an older version's cache on read-only storage: the tables are ours; read it as it is
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_layout(self, meta: dict[str, str] | None, path: Path) -> None:
        """Refuse a tnplan cache whose tables another version shaped (before any write to it)."""
        layout = None if meta is None else meta.get("layout")
        if layout is not None and layout != _LAYOUT:
            raise PlanError(
                f"plan cache {path} has table layout {layout!r} of another tnplan version (this one reads "
                f"{_LAYOUT!r}), left untouched; use that version with it, or {self._elsewhere()}"
            )

    def _elsewhere(self) -> str:
        """How to choose another file: the default one moves with TNPLAN_CACHE_DIR, a named one by its path."""
        if self._given is None:
            return "move it away or set TNPLAN_CACHE_DIR to another folder"
        return "give another cache path"

    def _refuse_foreign(self, path: Path) -> None:
        """Raise unless ``path`` is missing, empty or an SQLite file (only those may be moved aside)."""
        try:
            with path.open("rb") as f:
                head = f.read(64)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PlanError(f"cannot read the plan cache {path}: {exc.strerror or exc}") from None
        if not head or head.startswith(_SQLITE_MAGIC):
            return
        # from None: the SQLite error that led here says less than this.
        if head.lstrip()[:1] in (b"{", b"["):
            if self._given is None:  # importing it where it lies would import it into itself
                hint = "move it away (if it is an export, `tnplan cache import FILE` then loads it)"
                hint += " or set TNPLAN_CACHE_DIR to another folder"
            else:
                hint = f"if it is an export, `tnplan cache import {path}` loads it; give another cache path"
            raise PlanError(f"{path} is not a tnplan plan cache but JSON, left untouched; {hint}") from None
        raise PlanError(
            f"{path} is not a tnplan plan cache (not an SQLite file), left untouched; {self._elsewhere()}"
        ) from None

    def _quarantine(self, path: Path, exc: Exception) -> bool:
        """Move a damaged database aside (kept for inspection, never deleted) and start afresh.

        Raises:
            PlanError: If the file is not SQLite at all: that is someone's data, not a damaged cache.
        """
        self._refuse_foreign(path)
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            if path.exists():
                path.replace(aside)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.replace(aside.with_name(aside.name + suffix))
        except OSError:
            return False
        warnings.warn(
            f"plan cache {path} is unreadable ({exc}); moved it to {aside.name} and started a new one",
            CacheWarning,
            stacklevel=4,
        )
        self._memo.clear()
        self._rows.clear()
        return True

    def _run(self, fn, *args):
        """Run ``fn(conn, *args)``; damage found mid-use quarantines the file once and retries."""
        with self._lock:
            for attempt in range(2):
                conn = self._connect()
                try:
                    return fn(conn, *args)
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise PlanError(f"plan cache {self.path} stayed locked for 60 s: {exc}") from None
                    raise PlanError(f"plan cache {self.path}: {exc}") from None
                except sqlite3.IntegrityError as exc:
                    # A row the schema refuses is the row's fault, not damage: the file stays in use.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise PlanError(f"plan cache {self.path} refused a row ({exc}); nothing was written") from None
                except sqlite3.DatabaseError as exc:
                    self._conn = None
                    _close(conn)
                    if attempt or not self._quarantine(self.path, exc):
                        raise PlanError(f"plan cache {self.path} is damaged and cannot be rebuilt: {exc}") from None
        raise PlanError(f"plan cache {self.path} could not be repaired")

    def close(self) -> None:
        """Write pending hit counts and close the connection (it reopens on next use)."""
        self.flush()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ lookup

    def get(self, network: Network, options: CacheOptions, *, min_effort: float = 0.0) -> Any:
        """The stored plan for ``network`` mapped to its tensor order and labels, or None.

        Plans found with less search effort than ``min_effort`` seconds are not returned (the
        caller searches longer and offers the result back). Every plan returned has been verified
        against ``network``.
        """
        found = self.lookup(network, options, min_effort=min_effort)
        return found[0] if found is not None and found[1] else None

    def lookup(self, network: Network, options: CacheOptions, *, min_effort: float = 0.0) -> tuple[Any, bool] | None:
        """``(plan, enough)``: the stored plan whatever its effort, and whether it has ``min_effort``.

        One lookup serves both a caller that wants a good-enough plan and one that searches on
        from the stored tree. None when nothing is stored for ``network``.
        """
        opt = options.text()
        # The memo holds what the open file said; TNPLAN_CACHE_DIR may have moved the default since.
        memo = self._memo.get((network, opt)) if self._conn_path == self.path else None
        if memo is not None and memo[1] >= min_effort:
            return memo[0], True
        exact = _presentation(network, opt)
        alias = self._run(self._fetch_alias, exact)
        if alias is not None:
            key, row, tensors, indices = alias
            if len(tensors) == network.num_tensors:
                index_of = {j: indices[j] for j in row.data["sliced"] if 0 <= j < len(indices)}
                plan = self._mapped(network, options, key, row.form, row.data, tensors, index_of)
                if plan is not None:
                    return self._found(network, opt, key, row, plan, min_effort)
        key = self._key(network, opt)
        rows = self._rows.get(key)
        if rows is None:
            rows = self._run(self._fetch, key)
            self._rows[key] = rows
        if not rows:
            return None
        canon = canonical(network)
        # Same canonical form first (no search), then an explicit isomorphism per candidate.
        for row in sorted(rows, key=lambda r: r.form != canon.form):
            data = row.data
            if row.tensors != network.num_tensors:
                continue
            if row.form == canon.form:
                tensor_map = canon.tensor_order
                index_map = canon.index_order
            else:
                stored_net = self._stored_network(key, row)
                found = None if stored_net is None else match(stored_net, network)
                if found is None:
                    continue
                tensor_map = found[0]
                index_map = found[1][[stored_net.label_ids[j] for j in range(stored_net.num_indices)]]
            index_of = {j: int(index_map[j]) for j in data["sliced"] if 0 <= j < len(index_map)}
            plan = self._mapped(network, options, key, row.form, data, tensor_map, index_of)
            if plan is not None:
                self._remember(exact, key, row.form, tensor_map, index_map)
                return self._found(network, opt, key, row, plan, min_effort)
        return None

    def _found(self, network: Network, opt: str, key: str, row: _Row, plan: Any, min_effort: float):
        effort = row.data["effort"]
        self._memo[(network, opt)] = (plan, effort)
        self._hits[(key, row.form)] = self._hits.get((key, row.form), 0) + 1
        return plan, effort >= min_effort

    def _fetch_alias(self, conn: sqlite3.Connection, exact: str) -> tuple[str, _Row, list[int], list[int]] | None:
        try:
            found = conn.execute(
                "SELECT p.key, p.form, p.tensors, p.network, p.plan, p.flops, p.contraction_cost, p.effort, p.cost,"
                " a.tensors, a.indices FROM aliases a JOIN plans p ON p.key = a.key AND p.form = a.form"
                " WHERE a.exact = ?",
                (exact,),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # a cache nobody has written to yet
            raise
        if found is None:
            return None
        key, form, tensors, net_text, plan_text, flops, ccost, effort, cost, t_map, i_map = found
        try:
            data = _row_data(plan_text, tensors, flops, ccost, effort, cost)
            return key, _Row(form, int(tensors), net_text, data), json.loads(t_map), json.loads(i_map)
        except (ValueError, TypeError, KeyError, AttributeError):
            # A damaged alias or row: forget the alias; the canonical path decides about the row.
            conn.execute("DELETE FROM aliases WHERE exact = ?", (exact,))
            return None

    def _remember(self, exact: str, key: str, form: str, tensor_map, index_map) -> None:
        """Record a new presentation of a stored network (best effort: it only speeds up later hits)."""
        values = (exact, key, form, json.dumps([int(x) for x in tensor_map]), json.dumps([int(x) for x in index_map]))

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO aliases VALUES (?,?,?,?,?)", values)

        with contextlib.suppress(PlanError, sqlite3.Error):
            self._run(run)

    def _key(self, network: Network, opt: str) -> str:
        return hashlib.blake2b(f"{canonical(network).key}|{opt}|f{FORMAT_VERSION}".encode(), digest_size=16).hexdigest()

    def _fetch(self, conn: sqlite3.Connection, key: str) -> list[_Row]:
        out = []
        try:
            found = conn.execute(
                "SELECT form, tensors, network, plan, flops, contraction_cost, effort, cost FROM plans WHERE key = ?",
                (key,),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return out
            raise
        for form, tensors, net_text, plan_text, flops, ccost, effort, cost in found:
            try:
                data = _row_data(plan_text, tensors, flops, ccost, effort, cost)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                warnings.warn(f"plan cache row {key[:12]} cannot be decoded ({exc}); dropped it", CacheWarning, 3)
                conn.execute("DELETE FROM plans WHERE key = ? AND form = ?", (key, form))
                continue
            out.append(_Row(form, int(tensors), net_text, data))
        return out

    def _stored_network(self, key: str, row: _Row) -> Network | None:
        """The row's canonical network, decoded on first need (only an isomorphism search needs it)."""
        if row.network is None:
            try:
                row.network = _decode_network(row.net_text)
            except (ValueError, TypeError, KeyError, TnplanError) as exc:
                warnings.warn(f"plan cache row {key[:12]} cannot be decoded ({exc}); dropped it", CacheWarning, 4)
                self._drop(key, row.form)
                return None
        return row.network

    def flush(self) -> None:
        """Write pending hit counts (kept in memory so that a hit never waits for a write)."""
        if not self._hits:
            return  # and no file opened for nothing (this runs at exit for every cache object)
        if self._conn is not None and self._conn_pid == os.getpid():
            # The counts belong to the open file, even where the default path has moved since: write
            # them there, and open (or create) nothing at the new path.
            self._write_hits(self._conn)
            return
        with contextlib.suppress(PlanError, sqlite3.Error):  # a hit counter is not worth failing for
            self._run(self._write_hits)

    def _write_hits(self, conn: sqlite3.Connection) -> None:
        """Add the pending hit counts to ``conn``'s file (best effort, as in :meth:`flush`)."""
        pending, self._hits = self._hits, {}
        if pending:
            with contextlib.suppress(sqlite3.Error):
                conn.executemany(
                    "UPDATE plans SET hits = hits + ? WHERE key = ? AND form = ?",
                    [(n, k, f) for (k, f), n in pending.items()],
                )

    def _mapped(self, network, options, key, form, data, tensor_map, index_of) -> Any:
        """The stored plan in the caller's numbering, verified; None (row dropped) on mismatch."""

        n = network.num_tensors
        try:
            # Leaves map to the caller's tensor numbers; intermediates keep their SSA ids.
            where = [*map(int, tensor_map), *range(n, 2 * n - 1)]
            ssa = tuple((where[a], where[b]) for a, b in data["ssa_path"])
            sliced = tuple(sorted(index_of[j] for j in data["sliced"]))
            costs = score_path(network, ssa, sliced)
            ok = costs.flops == data["flops"] and costs.contraction_cost == data["contraction_cost"]
            reason = "" if ok else f"re-scores to {costs.flops} flops, stored {data['flops']}"
            # The limits too: a row stored by a version that counted memory otherwise may not fit.
            limit = options.memory_limit
            if ok and limit is not None and costs.peak_elements * options.itemsize > limit:
                ok, reason = False, f"needs {costs.peak_elements * options.itemsize} bytes, over the limit"
            if ok and options.max_size is not None and costs.peak_size > options.max_size:
                ok, reason = False, f"an intermediate of {costs.peak_size} elements, over max_size"
        except (TnplanError, KeyError, IndexError, TypeError, ValueError) as exc:
            ok, reason = False, str(exc)
        if not ok:
            warnings.warn(
                f"cached plan {key[:12]} failed verification on this network ({reason}); dropped it and re-planning",
                CacheWarning,
                stacklevel=4,
            )
            self._drop(key, form)
            return None
        # The element type only shaped the plan through a memory limit; plan() sets the caller's.
        dtype = str(data.get("dtype", "float64")) if options.memory_limit is not None else "float64"
        return _plan_from_data(network, ssa, sliced, costs, options.minimize, data, dtype=dtype, cache_status="hit")

    def _drop(self, key: str, form: str) -> None:
        self._rows.pop(key, None)
        self._memo.clear()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM plans WHERE key = ? AND form = ?", (key, form))
            conn.execute("DELETE FROM aliases WHERE key = ? AND form = ?", (key, form))

        self._run(run)

    # ------------------------------------------------------------------ storing

    def put(self, plan: Any, options: CacheOptions, *, effort: float = 0.0) -> bool:
        """Offer ``plan`` for its network; returns True when it was stored (new or better).

        A stored plan is only replaced by a strictly cheaper one (on the options' objective), or by
        one of the same cost proven optimal where it was not; the effort recorded is the largest
        search budget seen for that network.
        """
        network = plan.network
        opt = options.text()
        key = self._key(network, opt)
        canon = canonical(network)
        t_rank, i_rank = canon.tensor_rank, canon.index_rank
        n = network.num_tensors
        data = {
            "ssa_path": [[int(t_rank[a]) if a < n else a, int(t_rank[b]) if b < n else b] for a, b in plan.ssa_path],
            "sliced": sorted(int(i_rank[i]) for i in plan.sliced),
            "optimal": bool(plan.optimal),
            "planning_time": float(plan.planning_time),
            "method": plan.method,
            "dtype": plan.dtype,
            "unsliced_flops": plan.unsliced_flops,
        }
        net_text = _encode_network(network, canon.tensor_order, i_rank)
        cost = plan.costs.objective(options.minimize)
        alias = (
            _presentation(network, opt),
            json.dumps(canon.tensor_order.tolist()),
            json.dumps(canon.index_order.tolist()),
        )
        stored = self._run(
            self._store, key, canon.form, network, opt, net_text, data, plan, cost, options.minimize, effort, alias
        )
        self._rows.pop(key, None)
        if stored:
            self._memo[(network, opt)] = (replace(plan, cache_status="hit"), effort)
        return stored

    def _store(self, conn, key, form, network, opt, net_text, data, plan, cost, minimize, effort, alias) -> bool:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            same = None
            for row_form, row_net, row_cost, row_flops, row_effort, row_optimal in conn.execute(
                "SELECT form, network, cost, flops, effort, optimal FROM plans WHERE key = ?", (key,)
            ).fetchall():
                try:
                    found = row_form == form or match(_decode_network(row_net), network) is not None
                except (ValueError, TypeError, KeyError, TnplanError):
                    continue
                if found:
                    same = (row_form, rank_key(row_cost, int(row_flops), minimize), row_effort, row_optimal)
                    break
            # A plan proven optimal also replaces an unproven one of the same cost.
            rank = rank_key(cost, plan.flops, minimize)
            if same is not None and not (rank < same[1] or (rank == same[1] and plan.optimal and not same[3])):
                if effort > same[2]:
                    conn.execute("UPDATE plans SET effort = ? WHERE key = ? AND form = ?", (effort, key, same[0]))
                conn.execute("COMMIT")
                return False
            if same is not None:
                # The old row's numbering goes with it, so do the presentations that map into it.
                conn.execute("DELETE FROM plans WHERE key = ? AND form = ?", (key, same[0]))
                conn.execute("DELETE FROM aliases WHERE key = ? AND form = ?", (key, same[0]))
                effort = max(effort, same[2])
            conn.execute(
                f"INSERT INTO plans ({_COLUMNS}, network, plan) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key, form, opt, network.num_tensors, str(plan.flops), str(plan.contraction_cost), cost,
                    plan.method, int(plan.optimal), effort, 0, now, now, net_text, json.dumps(data),
                ),
            )  # fmt: skip
            conn.execute("INSERT OR REPLACE INTO aliases VALUES (?,?,?,?,?)", (alias[0], key, form, *alias[1:]))
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ management

    def entries(self) -> list[Entry]:
        """Every stored plan, most recently updated first."""
        return self._run(
            lambda conn: [_entry(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM plans ORDER BY updated DESC")]
        )

    def find(self, prefix: str) -> list[Entry]:
        """Entries whose key starts with ``prefix``."""
        return [e for e in self.entries() if e.key.startswith(prefix)]

    def load(self, entry: Entry) -> Any:
        """The stored plan of ``entry`` on its canonical network (labels are canonical index numbers)."""

        def run(conn: sqlite3.Connection):
            return conn.execute(
                "SELECT network, plan FROM plans WHERE key = ? AND form = ?", (entry.key, entry.form)
            ).fetchone()

        row = self._run(run)
        if row is None:
            raise PlanError(f"no cached plan with key {entry.key}")
        return _stored_plan(row[0], row[1], _parse_options(entry.options).minimize, cache_status="hit")

    def stats(self) -> dict[str, Any]:
        """Path, file size, number of plans and total hits."""
        self.flush()

        def run(conn: sqlite3.Connection) -> tuple[int, int, int]:
            n, hits = conn.execute("SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM plans").fetchone()
            keys = conn.execute("SELECT COUNT(DISTINCT key) FROM plans").fetchone()[0]
            return int(n), int(hits), int(keys)

        n, hits, keys = self._run(run)
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if "corrupt" not in p.name)
        return {"path": str(self.path), "plans": n, "keys": keys, "hits": hits, "bytes": size}

    def clear(self) -> int:
        """Delete every stored plan; returns how many there were."""

        def run(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM aliases")
            return conn.execute("DELETE FROM plans").rowcount

        n = self._run(run)
        self._memo.clear()
        self._rows.clear()
        return int(n)

    def export(self, file: str | Path) -> int:
        """Write every stored plan to a JSON file (for a machine without kahypar); returns the count."""

        def run(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(f"SELECT {_COLUMNS}, network, plan FROM plans ORDER BY key, form").fetchall()

        rows = self._run(run)
        names = [c.strip() for c in _COLUMNS.split(",")] + ["network", "plan"]
        entries = [dict(zip(names, r, strict=True)) for r in rows]
        text = json.dumps({"format": EXPORT_FORMAT, "schema": _SCHEMA, "entries": entries}, ensure_ascii=False)
        target = Path(file)
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)  # never leave a half-written export behind
        except OSError as exc:
            raise PlanError(f"cannot write {target}: {exc.strerror or exc}") from None
        return len(entries)

    def import_(self, file: str | Path) -> dict[str, int]:
        """Merge plans from an :meth:`export` file; a better plan wins, bad entries are skipped.

        Returns:
            Counts ``{"added": ..., "kept": ..., "skipped": ...}`` (kept: the stored plan was as good).
        """
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PlanError(f"cannot read {file}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{file} is not a tnplan cache export (not JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise PlanError(f"{file} is not a tnplan cache export (expected format {EXPORT_FORMAT!r})")
        if data.get("schema") != _SCHEMA:
            raise PlanError(
                f"{file} was exported by another cache version ({data.get('schema')!r}, this is {_SCHEMA!r}); "
                "re-export it with this version of tnplan"
            )
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise PlanError(f"{file} is not a tnplan cache export ('entries' must be a list)")
        counts = {"added": 0, "kept": 0, "skipped": 0}
        for k, item in enumerate(entries):
            try:
                plan, options, effort = _plan_from_export(item)
            except (ValueError, TypeError, KeyError, AttributeError, TnplanError) as exc:
                warnings.warn(f"{file}: entry {k} skipped ({exc})", CacheWarning, stacklevel=2)
                counts["skipped"] += 1
                continue
            counts["added" if self.put(plan, options, effort=effort) else "kept"] += 1
        return counts


@dataclass
class _Row:
    """A stored plan as fetched: its canonical network stays text until an isomorphism search needs it."""

    form: str
    tensors: int
    net_text: str
    data: dict[str, Any]
    network: Network | None = None


def _close(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _read_meta(conn: sqlite3.Connection) -> dict[str, str] | None:
    """The ``meta`` table's rows; None where there is no such table (a new file, or another program's)."""
    try:
        return {str(name): str(value) for name, value in conn.execute("SELECT name, value FROM meta")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc) or "no such column" in str(exc):
            return None
        raise


def _is_tnplan(meta: dict[str, str] | None) -> bool:
    """Whether ``meta`` is a tnplan cache's: a layout row, or the schema row of versions before it."""
    return meta is not None and ("layout" in meta or meta.get("schema", "").startswith("tnplan.cache."))


# Caches with hit counts to write when the process ends.
_OPEN: weakref.WeakSet[PlanCache] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for cache in list(_OPEN):
        cache.flush()


def _presentation(network: Network, opt: str) -> str:
    """Digest of the network exactly as given (tensor order, labels, sizes) plus the options.

    Serialised with ``marshal`` format 2 (C speed, and no back-references, so equal values give
    equal bytes however their objects are shared); labels marshal cannot write go through ``repr``,
    and one without a stable repr (an object's address) just never matches in another process: the
    lookup then falls back to the canonical key.
    """
    blob = network.__dict__.get("_presentation")
    if blob is None:
        sizes = tuple(map(network.size_dict.__getitem__, network.labels))
        value = (network.inputs, network.output, sizes)
        try:
            blob = b"m" + marshal.dumps(value, 2)
        except ValueError:
            blob = b"r" + repr(value).encode("utf-8", "surrogatepass")
        network.__dict__["_presentation"] = blob
    tag = f"|{opt}|f{FORMAT_VERSION}|k{KEY_VERSION}".encode()
    return hashlib.blake2b(blob + tag, digest_size=16).hexdigest()


def _encode_network(network: Network, tensor_order: np.ndarray, i_rank: np.ndarray) -> str:
    ids = network.label_ids
    sizes = network.int_sizes
    inputs = [[int(i_rank[ids[lab]]) for lab in network.inputs[t]] for t in tensor_order]
    canon_sizes = [0] * network.num_indices
    for i, s in enumerate(sizes):
        canon_sizes[int(i_rank[i])] = s
    out = sorted(int(i_rank[i]) for i in network.int_output)
    return json.dumps({"inputs": inputs, "output": out, "sizes": canon_sizes}, separators=(",", ":"))


def _decode_network(text: str) -> Network:
    d = json.loads(text)
    sizes = d["sizes"]
    return Network(tuple(tuple(t) for t in d["inputs"]), tuple(d["output"]), dict(enumerate(sizes)))


def _check_plan_data(data: dict[str, Any], tensors: int) -> None:
    if len(data["ssa_path"]) != tensors - 1:
        raise ValueError(f"path has {len(data['ssa_path'])} steps for {tensors} tensors")
    if not all(isinstance(j, int) and j >= 0 for j in data["sliced"]):
        raise ValueError("sliced indices must be canonical index numbers")
    if len(set(data["sliced"])) != len(data["sliced"]):
        raise ValueError("a sliced index is listed twice")
    for name in ("optimal", "planning_time", "method"):
        if name not in data:
            raise KeyError(name)


def _row_data(plan_text: str, tensors: Any, flops: Any, ccost: Any, effort: Any, cost: Any) -> dict[str, Any]:
    """A row's plan JSON with its indexed columns folded in, checked against its tensor count."""
    data = json.loads(plan_text)
    data.update(flops=int(flops), contraction_cost=int(ccost), effort=float(effort), cost=float(cost))
    _check_plan_data(data, int(tensors))
    return data


def _plan_from_data(
    network: Network, ssa, sliced, costs, minimize: str, data: dict[str, Any], *, dtype: str | None = None,
    cache_status: str = "off",
) -> Any:  # fmt: skip
    from tnplan.plan import Plan

    return Plan(
        network=network, ssa_path=ssa, sliced=sliced, costs=costs, minimize=minimize,
        optimal=bool(data["optimal"]), planning_time=float(data["planning_time"]), method=str(data["method"]),
        dtype=dtype or str(data.get("dtype", "float64")), unsliced_flops=data.get("unsliced_flops"),
        cache_status=cache_status,
    )  # fmt: skip


def _stored_plan(net_text: str, plan_text: str, minimize: str, cache_status: str = "off") -> Any:
    """A stored plan on its own canonical network (labels are canonical index numbers), re-scored."""
    net = _decode_network(net_text)
    data = json.loads(plan_text)
    _check_plan_data(data, net.num_tensors)
    ids = net.label_ids
    ssa = tuple((int(a), int(b)) for a, b in data["ssa_path"])
    sliced = tuple(sorted(ids[j] for j in data["sliced"]))
    return _plan_from_data(net, ssa, sliced, score_path(net, ssa, sliced), minimize, data, cache_status=cache_status)


def _plan_from_export(item: dict[str, Any]) -> tuple[Any, CacheOptions, float]:
    options = _parse_options(item["options"])
    plan = _stored_plan(item["network"], item["plan"], options.minimize)
    if plan.flops != int(item["flops"]):
        raise ValueError(f"re-scores to {plan.flops} flops, export says {item['flops']}")
    effort = float(item.get("effort", 0.0))
    if not (math.isfinite(effort) and effort >= 0):
        raise ValueError(f"effort must be a finite number of seconds >= 0, got {item.get('effort')!r}")
    return plan, options, effort


def _parse_options(text: str) -> CacheOptions:
    """The options a row or an export entry was planned with (``CacheOptions.text`` read back).

    Raises:
        ValueError: If ``text`` is not such a string or names an unknown objective or a bad number.
    """
    if not isinstance(text, str):
        raise ValueError(f"options must be a string like {CacheOptions().text()!r}, got {type(text).__name__}")
    minimize, *rest = text.split("|")
    if minimize not in OBJECTIVES:
        raise ValueError(f"unknown objective {minimize!r} in options")
    fields = dict(part.split("=", 1) for part in rest)

    def opt_int(v: str) -> int | None:
        if v == "None":
            return None
        if int(v) < 1:
            raise ValueError(f"options {text!r}: limits must be positive")
        return int(v)

    return CacheOptions(
        minimize=minimize,
        memory_limit=opt_int(fields["mem"]),
        max_size=opt_int(fields["max_size"]),
        itemsize=int(fields["item"]) or 8,
        seed=int(fields["seed"]),
    )


_DEFAULT: PlanCache | None = None


def default_cache() -> PlanCache:
    """The process-wide cache at :func:`default_cache_path` (follows ``TNPLAN_CACHE_DIR``)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PlanCache()
    return _DEFAULT


def resolve(cache: Any) -> PlanCache | None:
    """``plan(cache=...)`` argument to a cache: True/None -> default, False -> off, path -> that file.

    Raises:
        PlanError: On any other value.
    """
    if cache is True or cache is None:
        return default_cache()
    if cache is False:
        return None
    if isinstance(cache, PlanCache):
        return cache
    if isinstance(cache, str | os.PathLike):
        return PlanCache(cache)
    raise PlanError(f"cache must be True, False, a path or a tnplan.PlanCache, got {type(cache).__name__}")


__all__ = ["CacheOptions", "CacheWarning", "Entry", "PlanCache", "default_cache", "default_cache_path", "resolve"]
