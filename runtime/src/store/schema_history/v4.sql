-- Schema version 4, frozen: the upgrade test starts from this file.
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    retention_max_examples INTEGER,
    retention_max_age_ms INTEGER,
    active_head INTEGER REFERENCES heads(id) ON DELETE SET NULL,
    privacy TEXT
);

CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    label TEXT NOT NULL,
    weight REAL NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (text_hash, task_id, label)
);
CREATE INDEX examples_by_task_label ON examples(task_id, label);
CREATE INDEX examples_by_task_time ON examples(task_id, created_at);

CREATE TABLE label_descriptions (
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (task_id, label)
) WITHOUT ROWID;

CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    text TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (task_id, key)
);
CREATE INDEX documents_by_hash ON documents(text_hash);

CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    query TEXT,
    query_hash BLOB,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    signal TEXT NOT NULL CHECK (signal IN ('impression', 'click', 'skip', 'dwell', 'rating')),
    value REAL NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX feedback_by_task ON feedback(task_id, created_at);
CREATE INDEX feedback_by_document ON feedback(document_id);
CREATE INDEX feedback_by_query_hash ON feedback(query_hash);

CREATE TABLE features (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    text_hash BLOB NOT NULL,
    dim INTEGER NOT NULL,
    encoding INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (text_hash, fingerprint)
);

CREATE TABLE trunk_states (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    layers INTEGER NOT NULL,
    text_hash BLOB NOT NULL,
    tokens INTEGER NOT NULL,
    width INTEGER NOT NULL,
    states BLOB NOT NULL,
    UNIQUE (text_hash, fingerprint, layers)
);

CREATE TABLE heads (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    label_map TEXT NOT NULL,
    weights BLOB NOT NULL,
    report TEXT NOT NULL,
    metrics TEXT NOT NULL,
    trained_through_example INTEGER NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    private_epsilon REAL,
    private_delta REAL,
    origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'shared')),
    UNIQUE (task_id, version)
);

CREATE TABLE privacy_ledger (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    sampling_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
