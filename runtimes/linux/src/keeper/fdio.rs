//! Async I/O on raw descriptors the keeper holds (pipes and terminal masters), receiving a
//! terminal master over a console socket, and terminal sizes.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;

/// A non-blocking descriptor read and written through the runtime's reactor.
pub struct FdIo {
    fd: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for FdIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FdIo({})", self.fd.get_ref().as_raw_fd())
    }
}

impl FdIo {
    /// Takes `fd` over (switching it to non-blocking).
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
        // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`: it stays open and names the
        // same file description until the `AsyncFd` is dropped, and `as_raw_fd` of an `OwnedFd`
        // always returns that descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// The raw descriptor (for ioctls).
    pub fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Reads some bytes; 0 at the end. A terminal master whose slave is closed everywhere reads
    /// `EIO`: that is the end too.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref().as_fd(), data).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// Receives the one descriptor sent with `SCM_RIGHTS` on the connected unix socket `sock`
/// (libcontainer's console socket protocol: the message names the terminal, the fd is its
/// master).
pub fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let cmsgs = msg.cmsgs().map_err(std::io::Error::from)?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in this process for this message; nothing
            // else owns it, and any further fds of the message are closed below.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            for &extra in &fds[1..] {
                // SAFETY: as above; these are not used.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            return Ok(owned);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "console socket message carried no descriptor",
    ))
}

/// A unix socket the keeper listens on for one terminal master (libcontainer's console socket
/// protocol), in the keeper directory; its file is removed when it is dropped.
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
}

impl ConsoleSocket {
    /// Binds a fresh socket in `dir`.
    pub fn bind(dir: &std::path::Path) -> Result<Self, String> {
        let path = dir.join(format!("console-{}.sock", super::now_ns()));
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("bind console socket {}: {e}", path.display()))?;
        Ok(Self { listener, path })
    }

    /// The socket's path (for libcontainer's `with_console_socket`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Accepts libcontainer's connection and receives the terminal master.
    pub async fn receive(&self) -> Result<OwnedFd, String> {
        const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        let (sock, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .map_err(|_| "the terminal never arrived on the console socket".to_string())?
            .map_err(|e| format!("accept on console socket: {e}"))?;
        loop {
            tokio::time::timeout(WAIT, sock.readable())
                .await
                .map_err(|_| "the terminal never arrived".to_string())?
                .map_err(|e| format!("console socket: {e}"))?;
            match recv_fd(sock.as_raw_fd()) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("receive the terminal: {e}")),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets the size of the terminal whose master is `fd`.
pub fn set_winsize(fd: RawFd, width: u16, height: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call;
    // `fd` is a descriptor the caller owns.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
