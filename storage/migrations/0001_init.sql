-- unicri state, version 1. Migrations are append-only: never edit a released file, add a new one.

-- Images: one row per image id (the config digest). `record` is the image service's JSON record.
CREATE TABLE images (
    id          TEXT PRIMARY KEY NOT NULL,
    record      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    pinned      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

-- Names of images: full normalized tag references ("docker.io/library/busybox:latest") and digest
-- references ("docker.io/library/busybox@sha256:..."). A name points to exactly one image; pulling
-- a tag again moves it.
CREATE TABLE image_names (
    name      TEXT PRIMARY KEY NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX image_names_by_image ON image_names(image_id);

-- Pod sandboxes. (name, namespace, uid, attempt) is the CRI identity kubelet retries with.
CREATE TABLE pods (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    namespace      TEXT NOT NULL,
    uid            TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    handler        TEXT NOT NULL,
    state          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    config         BLOB NOT NULL,
    backend_state  TEXT NOT NULL DEFAULT '{}',
    UNIQUE (name, namespace, uid, attempt)
);

-- Containers, owned by a pod; removing the pod row removes its containers' rows.
CREATE TABLE containers (
    id             TEXT PRIMARY KEY NOT NULL,
    pod_id         TEXT NOT NULL REFERENCES pods(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    image_id       TEXT NOT NULL,
    state          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER NOT NULL DEFAULT 0,
    finished_at    INTEGER NOT NULL DEFAULT 0,
    exit_code      INTEGER NOT NULL DEFAULT 0,
    reason         TEXT NOT NULL DEFAULT '',
    message        TEXT NOT NULL DEFAULT '',
    config         BLOB NOT NULL,
    backend_state  TEXT NOT NULL DEFAULT '{}',
    UNIQUE (pod_id, name, attempt)
);
CREATE INDEX containers_by_pod ON containers(pod_id);

-- Operation journal: a multi-step operation (run pod, create container, pull) writes `begin`
-- before its first side effect and `finish` after its last; recovery on start-up completes or
-- rolls back every operation still open.
CREATE TABLE operations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    payload     TEXT NOT NULL DEFAULT '{}',
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX operations_open ON operations(finished_at) WHERE finished_at IS NULL;
