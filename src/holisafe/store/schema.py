"""Every table of a holisafe store, as numbered migrations.

Opening a store (`holisafe.store.connect`) runs, in one transaction, the migrations it has not
had yet, and records the number of the last one in `PRAGMA user_version`. A released migration
is never edited: a change to the schema is a new migration at the end of MIGRATIONS.

Stores written before the migrations have user_version 0 and the first migration's tables,
with any of the second's that they happened to need. Their `schema_version` table, whose one
row has always held SCHEMA_VERSION, marks a file as a holisafe store; it stays, so that those
releases still open and report the stores written since (migrations only add to what they read;
adding a new benchmark to such a store needs this release), and any other value in it is refused.
"""

SCHEMA_VERSION = 1

# The tables of the first release: the benchmark's samples, the runs, their responses and
# their verdicts.
_RUNS = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE benches (
    fingerprint TEXT PRIMARY KEY,
    samples INTEGER NOT NULL,
    source TEXT
);
CREATE TABLE samples (
    bench TEXT NOT NULL REFERENCES benches(fingerprint),
    sample_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    query TEXT NOT NULL,
    image TEXT NOT NULL,
    type TEXT,
    category TEXT,
    subcategory TEXT,
    image_safety_label INTEGER,
    PRIMARY KEY (bench, sample_id)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    bench TEXT NOT NULL REFERENCES benches(fingerprint),
    settings TEXT NOT NULL,
    package_version TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    UNIQUE (model, bench, settings)
);
CREATE TABLE responses (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    sample_id TEXT NOT NULL,
    text TEXT,
    latency_s REAL NOT NULL,
    error TEXT,
    extra TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE verdicts (
    run_id INTEGER NOT NULL,
    judge TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    followed INTEGER,
    raw TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, judge, sample_id),
    FOREIGN KEY (run_id, sample_id) REFERENCES responses(run_id, sample_id) ON DELETE CASCADE
)
"""

# The tables that releases before the migrations created when they first needed them (hence
# IF NOT EXISTS):
# - comparisons: pairwise comparisons of two runs' responses (`holisafe compare`). `a_first` is
#   1 when run A's response was shown first; `winner` is the judge's answer by position: `A`
#   (shown first), `B` or `TIE`.
# - claims: the samples a worker is answering (task '') or judging (task: the judge id), each
#   under a lease (see LEASE_KEYS and `holisafe.run.workers`).
# - judge_batches: the batches sent to a provider's batch API, kept before anything else
#   happens so that a stopped process collects them later; judge_batch_keepers: the lease of
#   the one process that keeps a judge's batches in a run (see `holisafe.run.judge_batch`).
# - provenance: what produced a run, one JSON record per process that worked on it.
# - build_replies: every usable model reply of `holisafe data build`, by attempt.
_FIRST_USE = """
CREATE TABLE IF NOT EXISTS comparisons (
    run_a INTEGER NOT NULL,
    run_b INTEGER NOT NULL,
    judge TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    a_first INTEGER NOT NULL,
    winner TEXT,
    raw TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_a, run_b, judge, sample_id, a_first),
    FOREIGN KEY (run_a, sample_id) REFERENCES responses(run_id, sample_id) ON DELETE CASCADE,
    FOREIGN KEY (run_b, sample_id) REFERENCES responses(run_id, sample_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS claims (
    run_id INTEGER NOT NULL,
    task TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (run_id, task, sample_id)
);
CREATE TABLE IF NOT EXISTS judge_batches (
    run_id INTEGER NOT NULL,
    judge TEXT NOT NULL,
    batch_id TEXT NOT NULL PRIMARY KEY,
    sample_ids TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS judge_batch_keepers (
    run_id INTEGER NOT NULL,
    judge TEXT NOT NULL,
    worker TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (run_id, judge)
);
CREATE TABLE IF NOT EXISTS provenance (
    run_id INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS build_replies (
    stage TEXT NOT NULL,
    job TEXT NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (stage, job, key, attempt)
)
"""

# The benchmark a bench is (`holisafe`, or a name of the `holisafe.data.benchmarks` registry),
# recorded beside it rather than read out of its sample ids; NULL in stores written before.
_BENCHMARK_NAME = """
ALTER TABLE benches ADD COLUMN benchmark TEXT
"""

# The images of audited requests (`holisafe serve --audit-images`), by SHA-256 of their bytes,
# each kept once however many requests sent it; a served request's sample names its image
# `sha256:<hex>` whether or not the bytes are kept. An audit run's samples are the requests a
# server answered (see `Store.open_audit_run`): their rows and responses are the first three
# migrations' own; only the images needed a table, and the index finds the images that the
# retention (`--audit-days`) left without a request.
_AUDIT_IMAGES = """
CREATE TABLE audit_images (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX samples_by_image ON samples (image)
"""

# Migration n is MIGRATIONS[n - 1]: SQL statements separated by semicolons.
MIGRATIONS = (_RUNS, _FIRST_USE, _BENCHMARK_NAME, _AUDIT_IMAGES)

# The lease tables, each with the columns that name what one of its leases holds; every lease
# table also has `worker` (the holder) and `expires_at` (seconds since the epoch).
LEASE_KEYS = {
    "claims": ("run_id", "task", "sample_id"),
    "judge_batch_keepers": ("run_id", "judge"),
}
