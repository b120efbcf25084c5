"""Incremental (nightly) re-curation: an incoming location with a watermark, and drift per batch.

The incoming location is a folder of files (JSONL, JSON, CSV, Parquet; any `load_rows` format)
and/or a DuckDB table. The watermark of a curated dataset `name` is what its committed batches
have consumed:

- folder: the set of (relative path, sha256) of every file already consumed. A new file, or a
  file whose bytes changed (rows appended), is read again; of its rows only those whose content
  (prompt, response) no earlier batch of `name` holds are new, so appended rows are counted once.
  A missing folder, or one that holds no data file at all, is an error (a mount or a path gone
  wrong must not pass as a quiet night); an explicitly empty day is a file named ``*.empty``
  (e.g. ``2026-12-01.empty``) in the folder. A night whose files were all consumed is a no-op.
- table: the largest value of a monotonically increasing column (`watermark_column`, e.g. an
  arrival sequence number or timestamp) already consumed.

A batch is staged (its rows stored as a content-addressed dataset), the pool is re-solved, and
only then is the batch committed in the catalog table `incoming_batches`, in one transaction that
checks no other run committed a batch for the same name in between (optimistic concurrency).
A run that fails part-way therefore leaves the watermark where it was, and the next run picks
the same rows up again; the content-addressed store makes that repeat cheap (nothing is embedded
twice).

Windowing policy (there is no warm start of the OT weights across nights: `solve_push_pull` takes
no initial weights or potentials): the accumulated pool is the base pool followed by every batch in
arrival order, de-duplicated by row id (a later row with the same id replaces the earlier one),
optionally limited to the most recent `window` rows. Costs and weights are recomputed over that
pool each night; embedding, the dominant cost, touches only the new rows.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from sot_core.curate.pipeline import ingest, load_embeddings, require_responses
from sot_core.curate.incoming_table import read_table_rows, rows_from_table
from sot_core.data.loaders import FieldMap, load_rows
from sot_core.data.names import check_name
from sot_core.data.schema import RECORD_FIELD, ROW_SCHEMA, aligned_records
from sot_core.data.store import Store
from sot_core.embed.composite import pool_centred
from sot_core.errors import InputError, StoreError
from sot_core.failpoints import failpoint
from sot_core.io import file_sha256

INCOMING_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
EMPTY_DAY_SUFFIX = ".empty"  # an explicitly empty day: the producer says so instead of sending nothing

BATCHES_SQL = """
CREATE TABLE IF NOT EXISTS incoming_batches (
    batch_id VARCHAR PRIMARY KEY, name VARCHAR, seq INTEGER, dataset_id VARCHAR, n_rows BIGINT,
    files VARCHAR, table_watermark VARCHAR, pool_dataset_id VARCHAR, version VARCHAR,
    n_embedded BIGINT, drift_anchor DOUBLE, drift_harmful DOUBLE,
    created_at TIMESTAMP DEFAULT current_timestamp, UNIQUE (name, seq));
-- the curated version of the base pool this name re-curates from (lineage); added after the table
ALTER TABLE incoming_batches ADD COLUMN IF NOT EXISTS base_version VARCHAR;
-- the batch's estimated contamination (share of its rows the harmful-row budget drops; issue 14)
ALTER TABLE incoming_batches ADD COLUMN IF NOT EXISTS contamination DOUBLE;
-- the batch rows' input records (`Store.put_records`; null for batches committed before records were kept)
ALTER TABLE incoming_batches ADD COLUMN IF NOT EXISTS records_id VARCHAR;
"""


@dataclass
class Watermark:
    """What the committed batches of one curated dataset have consumed."""

    seq: int = 0
    files: dict[str, str] = field(default_factory=dict)
    table_value: object = None
    batch_dataset_ids: list[str] = field(default_factory=list)
    batch_records_ids: list[str | None] = field(default_factory=list)


def ensure_tables(store: Store) -> None:
    with store.catalog() as con:
        con.execute(BATCHES_SQL)


def read_watermark(store: Store, name: str) -> Watermark:
    """The watermark of `name`: consumed files, the table high-water value and batch datasets."""
    ensure_tables(store)
    rows = store.query(
        "SELECT seq, dataset_id, files, table_watermark, records_id FROM incoming_batches WHERE name = ? ORDER BY seq",
        [name])
    mark = Watermark()
    for seq, dataset_id, files, table_value, records_id in rows:
        mark.seq = seq
        mark.batch_dataset_ids.append(dataset_id)
        mark.batch_records_ids.append(records_id)
        mark.files.update(json.loads(files or "{}"))
        value = json.loads(table_value) if table_value else None
        if value is not None:
            mark.table_value = value
    return mark


def new_files(folder: str | Path, mark: Watermark) -> dict[str, str]:
    """Files under `folder` not consumed yet (or changed since), as {relative path: sha256}, sorted.

    Raises
    ------
    InputError
        When `folder` does not exist, is not a folder, or holds neither a data file nor an
        explicit empty-day marker (``*.empty``) and nothing was consumed from it before: a
        missing volume or a wrong path is a failure, never a quiet night.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(str(folder), "the incoming folder does not exist (is its volume mounted?); "
                         f"declare an empty day with a file named *{EMPTY_DAY_SUFFIX} in it")
    if not folder.is_dir():
        raise InputError(str(folder), "the incoming location must be a folder")
    found, seen_any = {}, False
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if path.name.startswith(".") or suffix not in (*INCOMING_SUFFIXES, EMPTY_DAY_SUFFIX):
            continue  # a producer's temp file (not finished yet) or not data
        seen_any = True
        if suffix == EMPTY_DAY_SUFFIX:
            continue
        rel, digest = str(path.relative_to(folder)), file_sha256(path)
        if mark.files.get(rel) != digest:
            found[rel] = digest
    if not seen_any and not mark.files:
        raise InputError(str(folder), f"the incoming folder holds no data file ({', '.join(INCOMING_SUFFIXES)}); "
                         f"declare an empty day with a file named *{EMPTY_DAY_SUFFIX} in it")
    return found


def seen_hashes(store: Store, dataset_ids: list[str]) -> set[str]:
    """Content hashes of every row of the given (batch) datasets, from the catalog's row index."""
    if not dataset_ids:
        return set()
    marks = ", ".join("?" for _ in dataset_ids)
    return {h for (h,) in store.query(f"SELECT DISTINCT content_hash FROM rows WHERE dataset_id IN ({marks})",
                                      list(dataset_ids))}


def only_new_rows(rows: pa.Table, seen: set[str]) -> pa.Table:
    """The rows whose content no earlier batch holds (rows appended to a consumed file, re-sent rows)."""
    if not seen:
        return rows
    return rows.filter(pa.array([h not in seen for h in rows.column("content_hash").to_pylist()], pa.bool_()))


def stage_batch(store: Store, name: str, incoming: str | None, incoming_table: str | None = None,
                watermark_column: str = "seq", fields: FieldMap | None = None) -> dict:
    """Read everything past the watermark, validate it and store it as one batch dataset.

    Returns
    -------
    dict
        ``n_new`` (0 means nothing arrived), and when rows arrived ``dataset_id``, ``files``,
        ``table_watermark``, ``prev_seq`` and ``batch_dataset_ids`` (earlier batches, in order).

    Raises
    ------
    OptionError
        When `name` is not a plain name (it keys the watermark and names the versions' folders).
    """
    check_name(name)
    mark = read_watermark(store, name)
    files = new_files(incoming, mark) if incoming else {}
    tables = [load_rows(str(Path(incoming) / rel), fields=fields) for rel in files]
    for rel, table in zip(files, tables):  # new rows join the pool: fine-tuning data needs responses
        require_responses(str(Path(incoming) / rel), table, "pool")
    table_high = mark.table_value
    if incoming_table:
        records, table_high = read_table_rows(incoming_table, watermark_column, mark.table_value)
        if records:
            tables.append(rows_from_table(records, watermark_column, incoming_table, fields))
    base = {"name": name, "prev_seq": mark.seq, "batch_dataset_ids": mark.batch_dataset_ids,
            "batch_records_ids": mark.batch_records_ids}
    read = dedupe_last(pa.concat_tables(tables)) if tables else None
    rows = only_new_rows(read, seen_hashes(store, mark.batch_dataset_ids)) if read is not None else None
    n_read = read.num_rows if read is not None else 0
    if rows is None or rows.num_rows == 0:
        return {**base, "n_new": 0, "n_read": n_read, "files": {}, "table_watermark": mark.table_value}
    info = ingest(store, f"incoming:{name}#{mark.seq + 1}", rows, "incoming")
    return {**base, "n_new": rows.num_rows, "n_read": n_read, "dataset_id": info["dataset_id"],
            "records_id": info["records_id"], "files": files,
            "table_watermark": table_high, "seconds": info["seconds"]}


def dedupe_last(rows: pa.Table) -> pa.Table:
    """Keep the last row of every id (a re-sent row replaces the earlier one), in arrival order."""
    ids = rows.column("id").to_pylist()
    last = {row_id: i for i, row_id in enumerate(ids)}
    if len(last) == len(ids):
        return rows
    return rows.take(pa.array(sorted(last.values()), pa.int64()))


def accumulate_pool(store: Store, name: str, base_dataset_id: str | None, batch_dataset_ids: list[str],
                    window: int | None = None, base_records_id: str | None = None,
                    batch_records_ids: list[str | None] | None = None) -> dict:
    """Store the accumulated pool (base, then batches in arrival order; see the module docstring), with
    the parts' input records (`base_records_id`, `batch_records_ids`: one per batch, None where a part
    has none) carried row for row, so its curated versions can be handed back as the input held them."""
    parts = ([base_dataset_id] if base_dataset_id else []) + list(batch_dataset_ids)
    if not parts:
        raise StoreError(f"nightly '{name}': nothing to curate (no base pool and no batches)")
    records = ([base_records_id] if base_dataset_id else []) + list(batch_records_ids or [None] * len(batch_dataset_ids))
    rows = dedupe_last(pa.concat_tables([_with_records(store, d, r) for d, r in zip(parts, records)]))
    if window is not None and rows.num_rows > window:
        rows = rows.slice(rows.num_rows - window)
    info = ingest(store, f"accumulated:{name}", rows, "pool")
    return {**info, "parts": parts}


def _with_records(store: Store, dataset_id: str, records_id: str | None) -> pa.Table:
    """A stored dataset's rows with their records (null where the store has none for it)."""
    rows = store.get_rows(dataset_id).select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
    column = aligned_records(store.get_records(records_id) if records_id else None, rows)
    return rows.append_column(RECORD_FIELD, pa.nulls(rows.num_rows, pa.string()) if column is None else column)


def sinkhorn_divergence(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """Debiased entropic OT between uniform clouds of unit vectors under the cosine cost.

    S(a, b) = OT(a, b) - (OT(a, a) + OT(b, b)) / 2: zero when the clouds coincide, so a batch
    that looks like the anchor scores near zero against it (Feydy et al. 2019).
    """
    from sot_core.ot.sinkhorn import sinkhorn_log

    def ot(p, q):
        cost = np.clip(1.0 - p.astype(np.float64) @ q.astype(np.float64).T, 0.0, 2.0)
        return sinkhorn_log(np.full(len(p), 1 / len(p)), np.full(len(q), 1 / len(q)), cost, eps,
                            dtype="float64", device="cpu").value

    return float(ot(x, y) - 0.5 * (ot(x, x) + ot(y, y)))


def batch_drift(store: Store, batch_id: str, anchor_id: str, harmful_id: str, encoder_id: str,
                eps: float = 0.05, max_rows: int = 2000, seed: int = 0, lm_share: float | None = None) -> dict:
    """Drift of one batch: its Sinkhorn divergence to the safe anchor and to the harmful reference.

    Rising distance to the anchor or falling distance to the harmful reference, night over night,
    means the incoming data moves away from the task or towards harmful content. Clouds larger
    than `max_rows` are subsampled with a fixed seed, so the cost stays bounded and repeatable.
    """
    rng = np.random.default_rng(seed)

    def cloud(x):
        return x[np.sort(rng.choice(len(x), max_rows, replace=False))] if len(x) > max_rows else x

    # composite encoders: LM states centred on the batch (`sot_core.embed.composite`), as curation does
    batch, anchor, harmful = pool_centred(encoder_id, *(load_embeddings(store, d, encoder_id)
                                                        for d in (batch_id, anchor_id, harmful_id)), lm_share=lm_share)
    batch = cloud(batch)
    return {"to_anchor": sinkhorn_divergence(batch, cloud(anchor), eps),
            "to_harmful": sinkhorn_divergence(batch, cloud(harmful), eps), "eps": eps,
            "n_batch": int(len(batch))}


def drift_alarm(previous: list[dict], drift: dict, tolerance: float) -> str | None:
    """Why a batch's drift calls for attention, or None.

    With d_h, d_a the batch's Sinkhorn divergences to the harmful reference and the safe anchor and
    m_h, m_a their medians over the `previous` batches (`drift_history` rows): alarm when
    d_h < d_a (the batch is nearer the harmful reference than the anchor), d_h < (1 - tolerance) m_h
    (it moved towards harmful content) or d_a > (1 + tolerance) m_a (it moved away from the task).
    """
    jump = contamination_jump(previous, drift.get("contamination"), tolerance)
    if jump:
        return jump
    d_h, d_a = drift["to_harmful"], drift["to_anchor"]
    if not (math.isfinite(d_h) and math.isfinite(d_a)):
        return None
    if d_h < d_a:
        return f"the batch is nearer the harmful reference ({d_h:.4f}) than the safe anchor ({d_a:.4f})"
    past_h = [r["drift_to_harmful"] for r in previous if r.get("drift_to_harmful") is not None]
    past_a = [r["drift_to_anchor"] for r in previous if r.get("drift_to_anchor") is not None]
    if past_h and d_h < (1 - tolerance) * float(np.median(past_h)):
        return (f"distance to the harmful reference fell to {d_h:.4f} from a median of {np.median(past_h):.4f} "
                f"over {len(past_h)} earlier batches (tolerance {tolerance:.0%})")
    if past_a and d_a > (1 + tolerance) * float(np.median(past_a)):
        return (f"distance to the safe anchor rose to {d_a:.4f} from a median of {np.median(past_a):.4f} "
                f"over {len(past_a)} earlier batches (tolerance {tolerance:.0%})")
    return None


# Absolute rise of a batch's estimated contamination (share of rows) below which no jump is reported:
# a batch of 40 rows moves by 2.5 points with one row.
CONTAMINATION_FLOOR = 0.05


def contamination_jump(previous: list[dict], c: float | None, tolerance: float) -> str | None:
    """Why a batch's estimated contamination c (the harmful-row budget's share of its rows) is a jump, or None.

    With m the median over the `previous` batches (0 for the first batch): alarm when
    c > (1 + tolerance) m + `CONTAMINATION_FLOOR`.
    """
    if c is None or not math.isfinite(c):
        return None
    past = [r["contamination"] for r in previous if r.get("contamination") is not None]
    m = float(np.median(past)) if past else 0.0
    if c > (1 + tolerance) * m + CONTAMINATION_FLOOR:
        return (f"estimated contamination of the batch jumped to {c:.1%} from a median of {m:.1%} over "
                f"{len(past)} earlier batches (tolerance {tolerance:.0%} + {CONTAMINATION_FLOOR:.0%})")
    return None


def batch_contamination(weights_file: str | Path, batch_ids: list[str]) -> float | None:
    """Share of the batch's rows that the harmful-row budget marked harmful-like in a published
    ``weights.parquet`` (None when the budget did not run)."""
    import pyarrow.parquet as pq

    table = pq.read_table(weights_file)
    if "harmful_like" not in table.column_names or not batch_ids:
        return None
    flags = dict(zip(table.column("id").to_pylist(), table.column("harmful_like").to_pylist()))
    hits = [bool(flags[i]) for i in batch_ids if i in flags]
    return float(np.mean(hits)) if hits else None


def commit_batch(store: Store, staged: dict, pool_dataset_id: str, version: str, n_embedded: int,
                 drift: dict | None, base_version: str | None = None) -> dict:
    """Record the batch and so move the watermark; refuses if another run committed meanwhile."""
    ensure_tables(store)
    failpoint("nightly.before_commit")
    seq = staged["prev_seq"] + 1
    batch_id = f"{staged['name']}#{seq}-{uuid.uuid4().hex[:8]}"
    drift = drift or {}
    with store.catalog() as con:
        con.execute("BEGIN")
        try:
            (current,) = con.execute("SELECT coalesce(max(seq), 0) FROM incoming_batches WHERE name = ?",
                                     [staged["name"]]).fetchone()
            if current != staged["prev_seq"]:
                raise StoreError(
                    f"nightly '{staged['name']}': another run committed batch {current} while this run was "
                    f"working from batch {staged['prev_seq']}; this run's version {version} stays in the catalog "
                    "but its rows will be picked up again by the next run")
            con.execute(
                "INSERT INTO incoming_batches (batch_id, name, seq, dataset_id, n_rows, files, table_watermark, "
                "pool_dataset_id, version, n_embedded, drift_anchor, drift_harmful, base_version, contamination, "
                "records_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [batch_id, staged["name"], seq, staged["dataset_id"], staged["n_new"], json.dumps(staged["files"]),
                 json.dumps(staged["table_watermark"]), pool_dataset_id, version, n_embedded,
                 _finite(drift.get("to_anchor")), _finite(drift.get("to_harmful")), base_version,
                 _finite(drift.get("contamination")), staged.get("records_id")])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    failpoint("nightly.after_commit")
    return {"batch_id": batch_id, "seq": seq}


def base_version(store: Store, base_dataset_id: str | None) -> str | None:
    """The latest curated version whose pool is the base pool `base_dataset_id` (None: never curated).

    A nightly dataset re-curates from this version's pool; the nightly versions name it as their base
    (run.json ``inputs.pool.base_version``, ``incoming_batches.base_version``)."""
    if not base_dataset_id:
        return None
    row = store.query("SELECT version FROM curated_versions WHERE pool_dataset_id = ? ORDER BY created_at DESC "
                      "LIMIT 1", [base_dataset_id])
    return row[0][0] if row else None


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None


def drift_history(store: Store, name: str) -> list[dict]:
    """Every committed batch of `name`, oldest first, with its drift figures."""
    ensure_tables(store)
    rows = store.query(
        "SELECT seq, strftime(created_at, '%Y-%m-%d %H:%M:%S'), n_rows, n_embedded, drift_anchor, drift_harmful, "
        "version, contamination FROM incoming_batches WHERE name = ? ORDER BY seq", [name])
    keys = ("batch", "committed_utc", "rows", "embedded", "drift_to_anchor", "drift_to_harmful", "version",
            "contamination")
    return [dict(zip(keys, r)) for r in rows]
