//! unicri's source of truth: one SQLite database under the daemon's root, through sqlx.
//!
//! * WAL journal, foreign keys on, a busy timeout; migrations embedded from `migrations/` and
//!   append-only.
//! * Each public method is one transaction. Callers never see SQL.
//! * Images are stored as an opaque JSON record (owned by the image service) plus their names.
//! * The operation journal ([`Store::journal_begin`]) is how multi-step operations survive a crash.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use unicri_sandbox::{Classify, ErrorKind};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or creating the database file failed.
    #[error("open state database {path}: {source}")]
    Open {
        /// Database file.
        path: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("migrate state database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("{op}: {source}")]
    Query {
        /// The operation that failed, e.g. `put image`.
        op: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// How an image name refers to its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `registry/repo:tag`
    Tag,
    /// `registry/repo@sha256:...`
    Digest,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::Tag => "tag",
            NameKind::Digest => "digest",
        }
    }
}

/// One image as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRow {
    /// Image id (`sha256:<config digest>`).
    pub id: String,
    /// The image service's JSON record.
    pub record: String,
    /// Size in bytes as reported to CRI.
    pub size: u64,
    /// Pinned images are never garbage-collected by kubelet.
    pub pinned: bool,
    /// Tag names, sorted.
    pub tags: Vec<String>,
    /// Digest names, sorted.
    pub digests: Vec<String>,
}

/// An operation that began and has not finished.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenOperation {
    /// Journal row id.
    pub id: i64,
    /// Kind, e.g. `run_pod_sandbox`.
    pub kind: String,
    /// The object the operation creates or changes.
    pub object_id: String,
    /// Operation-specific JSON.
    pub payload: String,
}

/// One pod sandbox as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRow {
    /// Sandbox id.
    pub id: String,
    /// CRI metadata name.
    pub name: String,
    /// CRI metadata namespace.
    pub namespace: String,
    /// CRI metadata uid.
    pub uid: String,
    /// CRI metadata attempt.
    pub attempt: u32,
    /// Runtime handler.
    pub handler: String,
    /// `ready` or `notready`.
    pub state: String,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// The CRI `PodSandboxConfig`, protobuf-encoded (opaque here).
    pub config: Vec<u8>,
    /// Backend and network state, JSON (opaque here).
    pub backend_state: String,
}

/// One container as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRow {
    /// Container id.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// CRI metadata name.
    pub name: String,
    /// CRI metadata attempt.
    pub attempt: u32,
    /// Resolved image id.
    pub image_id: String,
    /// `created`, `running`, `exited` or `unknown`.
    pub state: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Nanoseconds since the epoch; 0 if never started.
    pub started_at: i64,
    /// Nanoseconds since the epoch; 0 while not exited.
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// CRI reason (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// CRI message.
    pub message: String,
    /// The CRI `ContainerConfig`, protobuf-encoded (opaque here).
    pub config: Vec<u8>,
    /// Backend state, JSON (opaque here).
    pub backend_state: String,
}

/// The state store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // the state is small: 512 KiB of page cache per connection instead of 2 MiB
            .pragma("cache_size", "-512")
            .statement_cache_capacity(32);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts or updates an image and points `names` at it, moving any name that pointed to
    /// another image.
    pub async fn put_image(
        &self,
        id: &str,
        record: &str,
        size: u64,
        names: &[(String, NameKind)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin put image"))?;
        sqlx::query(
            "INSERT INTO images (id, record, size, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET record = excluded.record, size = excluded.size",
        )
        .bind(id)
        .bind(record)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(now_secs())
        .execute(&mut *tx)
        .await
        .map_err(q("put image"))?;
        for (name, kind) in names {
            sqlx::query(
                "INSERT INTO image_names (name, kind, image_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, image_id = excluded.image_id",
            )
            .bind(name)
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("put image name"))?;
        }
        tx.commit().await.map_err(q("commit put image"))?;
        Ok(())
    }

    async fn names_of(&self, id: &str) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let rows =
            sqlx::query("SELECT name, kind FROM image_names WHERE image_id = ?1 ORDER BY name")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(q("list image names"))?;
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            let kind: String = r.get(1);
            if kind == "tag" {
                tags.push(name);
            } else {
                digests.push(name);
            }
        }
        Ok((tags, digests))
    }

    async fn row_to_image(&self, r: sqlx::sqlite::SqliteRow) -> Result<ImageRow, StoreError> {
        let id: String = r.get(0);
        let (tags, digests) = self.names_of(&id).await?;
        Ok(ImageRow {
            record: r.get(1),
            size: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
            pinned: r.get::<i64, _>(3) != 0,
            id,
            tags,
            digests,
        })
    }

    /// The image with exactly this id.
    pub async fn image_by_id(&self, id: &str) -> Result<Option<ImageRow>, StoreError> {
        let row = sqlx::query("SELECT id, record, size, pinned FROM images WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get image"))?;
        match row {
            Some(r) => Ok(Some(self.row_to_image(r).await?)),
            None => Ok(None),
        }
    }

    /// The image a full tag or digest name points to.
    pub async fn image_by_name(&self, name: &str) -> Result<Option<ImageRow>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT image_id FROM image_names WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("get image by name"))?;
        match id {
            Some(id) => self.image_by_id(&id).await,
            None => Ok(None),
        }
    }

    /// Ids of images whose id starts with `sha256:<prefix>`.
    pub async fn image_ids_with_prefix(&self, hex_prefix: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("sha256:{}%", hex_prefix.replace(['%', '_'], ""));
        sqlx::query_scalar("SELECT id FROM images WHERE id LIKE ?1 ORDER BY id")
            .bind(pattern)
            .fetch_all(&self.pool)
            .await
            .map_err(q("find images by id prefix"))
    }

    /// Every image, ordered by id.
    pub async fn list_images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let rows = sqlx::query("SELECT id, record, size, pinned FROM images ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list images"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.row_to_image(r).await?);
        }
        Ok(out)
    }

    /// Deletes an image and all its names. Returns whether it existed.
    pub async fn delete_image(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM images WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("delete image"))?;
        Ok(res.rows_affected() > 0)
    }

    /// Inserts a pod. A pod with the same (name, namespace, uid, attempt) is `Ok(false)`.
    pub async fn insert_pod(&self, p: &PodRow) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO pods (id, name, namespace, uid, attempt, handler, state, created_at, config, backend_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (name, namespace, uid, attempt) DO NOTHING",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.namespace)
        .bind(&p.uid)
        .bind(i64::from(p.attempt))
        .bind(&p.handler)
        .bind(&p.state)
        .bind(p.created_at)
        .bind(&p.config)
        .bind(&p.backend_state)
        .execute(&self.pool)
        .await
        .map_err(q("insert pod"))?;
        Ok(res.rows_affected() == 1)
    }

    fn pod_from_row(r: &sqlx::sqlite::SqliteRow) -> PodRow {
        PodRow {
            id: r.get(0),
            name: r.get(1),
            namespace: r.get(2),
            uid: r.get(3),
            attempt: u32::try_from(r.get::<i64, _>(4)).unwrap_or(0),
            handler: r.get(5),
            state: r.get(6),
            created_at: r.get(7),
            config: r.get(8),
            backend_state: r.get(9),
        }
    }

    const POD_COLUMNS: &'static str =
        "id, name, namespace, uid, attempt, handler, state, created_at, config, backend_state";

    /// The pod with exactly this id.
    pub async fn pod(&self, id: &str) -> Result<Option<PodRow>, StoreError> {
        let sql = format!("SELECT {} FROM pods WHERE id = ?1", Self::POD_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get pod"))?;
        Ok(row.as_ref().map(Self::pod_from_row))
    }

    /// The pod with this CRI identity.
    pub async fn pod_by_identity(
        &self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
    ) -> Result<Option<PodRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM pods WHERE name = ?1 AND namespace = ?2 AND uid = ?3 AND attempt = ?4",
            Self::POD_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .bind(namespace)
            .bind(uid)
            .bind(i64::from(attempt))
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get pod by identity"))?;
        Ok(row.as_ref().map(Self::pod_from_row))
    }

    /// Ids of pods whose id starts with `prefix`.
    pub async fn pod_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        sqlx::query_scalar("SELECT id FROM pods WHERE id LIKE ?1 ORDER BY id")
            .bind(pattern)
            .fetch_all(&self.pool)
            .await
            .map_err(q("find pods by id prefix"))
    }

    /// Every pod, oldest first.
    pub async fn list_pods(&self) -> Result<Vec<PodRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM pods ORDER BY created_at, id",
            Self::POD_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list pods"))?;
        Ok(rows.iter().map(Self::pod_from_row).collect())
    }

    /// Sets a pod's state and backend state.
    pub async fn update_pod(
        &self,
        id: &str,
        state: &str,
        backend_state: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE pods SET state = ?2, backend_state = ?3 WHERE id = ?1")
            .bind(id)
            .bind(state)
            .bind(backend_state)
            .execute(&self.pool)
            .await
            .map_err(q("update pod"))?;
        Ok(())
    }

    /// Deletes a pod (and, by cascade, its containers' rows). Returns whether it existed.
    pub async fn delete_pod(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM pods WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("delete pod"))?;
        Ok(res.rows_affected() > 0)
    }

    const CONTAINER_COLUMNS: &'static str = "id, pod_id, name, attempt, image_id, state, created_at, started_at, finished_at, exit_code, reason, message, config, backend_state";

    fn container_from_row(r: &sqlx::sqlite::SqliteRow) -> ContainerRow {
        ContainerRow {
            id: r.get(0),
            pod_id: r.get(1),
            name: r.get(2),
            attempt: u32::try_from(r.get::<i64, _>(3)).unwrap_or(0),
            image_id: r.get(4),
            state: r.get(5),
            created_at: r.get(6),
            started_at: r.get(7),
            finished_at: r.get(8),
            exit_code: i32::try_from(r.get::<i64, _>(9)).unwrap_or(-1),
            reason: r.get(10),
            message: r.get(11),
            config: r.get(12),
            backend_state: r.get(13),
        }
    }

    /// Inserts a container; `false` when its (pod, name, attempt) is taken. Fails when the pod
    /// row does not exist.
    pub async fn insert_container(&self, c: &ContainerRow) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "INSERT INTO containers (id, pod_id, name, attempt, image_id, state, created_at, started_at, finished_at, exit_code, reason, message, config, backend_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (pod_id, name, attempt) DO NOTHING",
        )
        .bind(&c.id)
        .bind(&c.pod_id)
        .bind(&c.name)
        .bind(i64::from(c.attempt))
        .bind(&c.image_id)
        .bind(&c.state)
        .bind(c.created_at)
        .bind(c.started_at)
        .bind(c.finished_at)
        .bind(i64::from(c.exit_code))
        .bind(&c.reason)
        .bind(&c.message)
        .bind(&c.config)
        .bind(&c.backend_state)
        .execute(&self.pool)
        .await
        .map_err(q("insert container"))?;
        Ok(res.rows_affected() == 1)
    }

    /// The container with exactly this id.
    pub async fn container(&self, id: &str) -> Result<Option<ContainerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM containers WHERE id = ?1",
            Self::CONTAINER_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get container"))?;
        Ok(row.as_ref().map(Self::container_from_row))
    }

    /// Ids of containers whose id starts with `prefix`.
    pub async fn container_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        sqlx::query_scalar("SELECT id FROM containers WHERE id LIKE ?1 ORDER BY id")
            .bind(pattern)
            .fetch_all(&self.pool)
            .await
            .map_err(q("find containers by id prefix"))
    }

    /// Every container (of one pod when `pod_id` is given), oldest first.
    pub async fn list_containers(
        &self,
        pod_id: Option<&str>,
    ) -> Result<Vec<ContainerRow>, StoreError> {
        let sql = match pod_id {
            Some(_) => format!(
                "SELECT {} FROM containers WHERE pod_id = ?1 ORDER BY created_at, id",
                Self::CONTAINER_COLUMNS
            ),
            None => format!(
                "SELECT {} FROM containers ORDER BY created_at, id",
                Self::CONTAINER_COLUMNS
            ),
        };
        let mut query = sqlx::query(&sql);
        if let Some(p) = pod_id {
            query = query.bind(p);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(q("list containers"))?;
        Ok(rows.iter().map(Self::container_from_row).collect())
    }

    /// Writes a container's mutable fields (state, times, exit, reason, message, backend state).
    pub async fn update_container(&self, c: &ContainerRow) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE containers SET state = ?2, started_at = ?3, finished_at = ?4, exit_code = ?5,
             reason = ?6, message = ?7, backend_state = ?8 WHERE id = ?1",
        )
        .bind(&c.id)
        .bind(&c.state)
        .bind(c.started_at)
        .bind(c.finished_at)
        .bind(i64::from(c.exit_code))
        .bind(&c.reason)
        .bind(&c.message)
        .bind(&c.backend_state)
        .execute(&self.pool)
        .await
        .map_err(q("update container"))?;
        Ok(())
    }

    /// Deletes a container row. Returns whether it existed.
    pub async fn delete_container(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM containers WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("delete container"))?;
        Ok(res.rows_affected() > 0)
    }

    /// Records the start of a multi-step operation; returns its journal id.
    pub async fn journal_begin(
        &self,
        kind: &str,
        object_id: &str,
        payload: &str,
    ) -> Result<i64, StoreError> {
        let res = sqlx::query(
            "INSERT INTO operations (kind, object_id, payload, started_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(kind)
        .bind(object_id)
        .bind(payload)
        .bind(now_secs())
        .execute(&self.pool)
        .await
        .map_err(q("journal begin"))?;
        Ok(res.last_insert_rowid())
    }

    /// Marks a journaled operation finished (completed or rolled back).
    pub async fn journal_finish(&self, op_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE operations SET finished_at = ?2 WHERE id = ?1")
            .bind(op_id)
            .bind(now_secs())
            .execute(&self.pool)
            .await
            .map_err(q("journal finish"))?;
        Ok(())
    }

    /// Operations that began and never finished, oldest first: recovery's work list.
    pub async fn journal_open(&self) -> Result<Vec<OpenOperation>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, object_id, payload FROM operations WHERE finished_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("journal list open"))?;
        Ok(rows
            .into_iter()
            .map(|r| OpenOperation {
                id: r.get(0),
                kind: r.get(1),
                object_id: r.get(2),
                payload: r.get(3),
            })
            .collect())
    }

    /// Deletes finished journal rows older than `max_age_secs`.
    pub async fn journal_prune(&self, max_age_secs: i64) -> Result<u64, StoreError> {
        let res = sqlx::query(
            "DELETE FROM operations WHERE finished_at IS NOT NULL AND finished_at < ?1",
        )
        .bind(now_secs() - max_age_secs)
        .execute(&self.pool)
        .await
        .map_err(q("journal prune"))?;
        Ok(res.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn open_sets_wal_and_foreign_keys() {
        let (_d, s) = store().await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).await.unwrap();
            s.put_image("sha256:aa", "{}", 10, &[("r/x:1".into(), NameKind::Tag)])
                .await
                .unwrap();
            s.close().await;
        }
        let s = Store::open(&path).await.unwrap();
        let img = s.image_by_name("r/x:1").await.unwrap().unwrap();
        assert_eq!(img.id, "sha256:aa");
        assert_eq!(img.size, 10);
    }

    #[tokio::test]
    async fn names_move_between_images_and_cascade_on_delete() {
        let (_d, s) = store().await;
        s.put_image(
            "sha256:aa",
            "{}",
            1,
            &[
                ("r/x:1".into(), NameKind::Tag),
                ("r/x@sha256:m1".into(), NameKind::Digest),
            ],
        )
        .await
        .unwrap();
        s.put_image("sha256:bb", "{}", 2, &[("r/x:1".into(), NameKind::Tag)])
            .await
            .unwrap();
        let a = s.image_by_id("sha256:aa").await.unwrap().unwrap();
        assert!(a.tags.is_empty(), "tag moved away");
        assert_eq!(a.digests, vec!["r/x@sha256:m1".to_string()]);
        let b = s.image_by_name("r/x:1").await.unwrap().unwrap();
        assert_eq!(b.id, "sha256:bb");

        assert!(s.delete_image("sha256:aa").await.unwrap());
        assert!(!s.delete_image("sha256:aa").await.unwrap());
        assert!(s.image_by_name("r/x@sha256:m1").await.unwrap().is_none());
        assert_eq!(s.list_images().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn id_prefix_lookup() {
        let (_d, s) = store().await;
        s.put_image("sha256:abc1", "{}", 1, &[]).await.unwrap();
        s.put_image("sha256:abc2", "{}", 1, &[]).await.unwrap();
        s.put_image("sha256:def", "{}", 1, &[]).await.unwrap();
        assert_eq!(s.image_ids_with_prefix("abc").await.unwrap().len(), 2);
        assert_eq!(
            s.image_ids_with_prefix("abc2").await.unwrap(),
            vec!["sha256:abc2"]
        );
        assert!(s.image_ids_with_prefix("%").await.unwrap().len() <= 3);
    }

    fn pod(id: &str, name: &str) -> PodRow {
        PodRow {
            id: id.into(),
            name: name.into(),
            namespace: "ns".into(),
            uid: "u".into(),
            attempt: 0,
            handler: String::new(),
            state: "ready".into(),
            created_at: 1,
            config: vec![1, 2, 3],
            backend_state: "{}".into(),
        }
    }

    #[tokio::test]
    async fn pods_are_unique_per_identity_and_update_and_delete() {
        let (_d, s) = store().await;
        assert!(s.insert_pod(&pod("p1", "web")).await.unwrap());
        assert!(
            !s.insert_pod(&pod("p2", "web")).await.unwrap(),
            "same identity refused"
        );
        assert!(s.pod("p2").await.unwrap().is_none());
        let got = s
            .pod_by_identity("web", "ns", "u", 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, pod("p1", "web"));
        s.update_pod("p1", "notready", "{\"x\":1}").await.unwrap();
        let got = s.pod("p1").await.unwrap().unwrap();
        assert_eq!(
            (got.state.as_str(), got.backend_state.as_str()),
            ("notready", "{\"x\":1}")
        );
        assert_eq!(
            s.pod_ids_with_prefix("p").await.unwrap(),
            vec!["p1".to_string()]
        );
        assert_eq!(s.list_pods().await.unwrap().len(), 1);
        assert!(s.delete_pod("p1").await.unwrap());
        assert!(!s.delete_pod("p1").await.unwrap());
    }

    #[tokio::test]
    async fn containers_unique_per_pod_name_attempt_update_and_cascade() {
        let (_d, s) = store().await;
        assert!(s.insert_pod(&pod("p1", "web")).await.unwrap());
        let mut c = ContainerRow {
            id: "c1".into(),
            pod_id: "p1".into(),
            name: "app".into(),
            attempt: 0,
            image_id: "sha256:x".into(),
            state: "created".into(),
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            config: vec![1, 2],
            backend_state: "{}".into(),
        };
        assert!(s.insert_container(&c).await.unwrap());
        let dup = ContainerRow {
            id: "c2".into(),
            ..c.clone()
        };
        assert!(!s.insert_container(&dup).await.unwrap());
        let orphan = ContainerRow {
            id: "c3".into(),
            pod_id: "nope".into(),
            ..c.clone()
        };
        assert!(s.insert_container(&orphan).await.is_err());
        c.state = "exited".into();
        c.exit_code = 137;
        c.reason = "OOMKilled".into();
        s.update_container(&c).await.unwrap();
        assert_eq!(s.container("c1").await.unwrap(), Some(c.clone()));
        assert_eq!(
            s.container_ids_with_prefix("c").await.unwrap(),
            vec!["c1".to_string()]
        );
        assert_eq!(s.list_containers(Some("p1")).await.unwrap().len(), 1);
        assert_eq!(s.list_containers(Some("p2")).await.unwrap().len(), 0);
        assert!(s.delete_pod("p1").await.unwrap());
        assert_eq!(s.container("c1").await.unwrap(), None);
        assert!(!s.delete_container("c1").await.unwrap());
    }

    #[tokio::test]
    async fn journal_tracks_open_operations() {
        let (_d, s) = store().await;
        let a = s
            .journal_begin("run_pod_sandbox", "p1", "{}")
            .await
            .unwrap();
        let b = s
            .journal_begin("create_container", "c1", "{\"pod\":\"p1\"}")
            .await
            .unwrap();
        s.journal_finish(a).await.unwrap();
        let open = s.journal_open().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, b);
        assert_eq!(open[0].kind, "create_container");
    }

    #[tokio::test]
    async fn foreign_keys_are_enforced() {
        let (_d, s) = store().await;
        let err = sqlx::query(
            "INSERT INTO containers (id, pod_id, name, attempt, image_id, state, created_at, config)
             VALUES ('c', 'no-such-pod', 'n', 0, 'i', 'created', 0, x'')",
        )
        .execute(&s.pool)
        .await;
        assert!(
            err.is_err(),
            "a container row without its pod must be refused"
        );
    }
}
