//! `Logs`: stream a container's guest log file from an offset, following it as it grows (like
//! `tail -c +N -f`), until the file was removed and everything was sent.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// How often a follower looks for new bytes.
pub const POLL: Duration = Duration::from_millis(50);

/// Whether the file at `path` is no longer the one with inode `ino` (removed or replaced).
fn gone(path: &Path, ino: u64) -> bool {
    match std::fs::metadata(path) {
        Ok(md) => md.ino() != ino,
        Err(_) => true,
    }
}

/// Copy `path` from `offset` to `out`, following growth. Waits for the file to appear unless
/// `removed()` says its container is gone already. Ends (Ok) once the file was removed (or
/// replaced) and drained.
pub async fn follow<W: AsyncWrite + Unpin>(
    path: &Path,
    offset: u64,
    out: &mut W,
    removed: impl Fn() -> bool,
    poll: Duration,
) -> std::io::Result<()> {
    let mut file = loop {
        match tokio::fs::File::open(path).await {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if removed() {
                    return Ok(());
                }
                tokio::time::sleep(poll).await;
            }
            Err(e) => return Err(e),
        }
    };
    let ino = file.metadata().await?.ino();
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            out.write_all(&buf[..n]).await?;
            continue;
        }
        out.flush().await?;
        if gone(path, ino) {
            // drain what was written before the removal
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).await?;
            }
            out.flush().await?;
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[tokio::test]
    async fn follows_growth_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let p2 = path.clone();
        let writer = tokio::spawn(async move {
            // the file appears late
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut f = std::fs::File::create(&p2).unwrap();
            f.write_all(b"0123first\n").unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            f.write_all(b"second\n").unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            std::fs::remove_file(&p2).unwrap();
            // written after the unlink, still through the open file: must be sent too
            f.write_all(b"last\n").unwrap();
        });
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            follow(&path, 4, &mut out, || false, Duration::from_millis(10)),
        )
        .await
        .unwrap()
        .unwrap();
        writer.await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("first\nsecond\n"), "{text:?}");
    }

    #[tokio::test]
    async fn ends_when_the_container_is_removed_before_its_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            follow(
                &dir.path().join("never.log"),
                0,
                &mut out,
                || true,
                Duration::from_millis(10),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(out.is_empty());
    }
}
