//! A Linux tap device for virtio-net: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet
//! header (`virtio_net_hdr_v1`) in front of every frame, no offloads, non-blocking.
//!
//! The ioctls (`TUNSETIFF`, `TUNGETIFF`, `TUNSETVNETHDRSZ`, `TUNSETOFFLOAD`) and `fcntl` are
//! the only `unsafe` code of the net device, so the exception is this module.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The vnet header length the tap is configured with (`virtio_net_hdr_v1`, which is also
/// `virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;

/// The flags a usable tap has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// An `ifreq` with `name` and `flags`.
fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses and
    // pointers) for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(ifr)
}

/// The name in an `ifreq` the kernel filled in.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

impl Tap {
    /// Creates the tap `name`, or attaches to it if it exists (persistent, or made by someone
    /// else with the same flags), and configures it (see [`Tap::from_fd`]).
    ///
    /// A tap this call creates disappears when the last descriptor on it closes.
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut ifr = ifreq(name, TAP_FLAGS)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        // SAFETY: `file` is an open /dev/net/tun descriptor and TUNSETIFF reads and writes a
        // `struct ifreq`, which `ifr` is and which outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        check(ret, &format!("TUNSETIFF {name}"))?;
        let name = ifreq_name(&ifr);
        Tap::configure(file, name)
    }

    /// Takes over an already attached tap descriptor (e.g. made in a pod's network namespace
    /// and handed over): it must have `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. Sets the vnet header
    /// size to 12, turns offloads off (none are offered to the guest) and makes it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let file = File::from(fd);
        // SAFETY: all-zero bytes are a valid `ifreq` (see `ifreq`).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `ifr`, which outlives the call; on a
        // descriptor that is not a tun device it fails without touching memory.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        check(ret, "TUNGETIFF (not an attached tap?)")?;
        // SAFETY: TUNGETIFF filled `ifru_flags`; every bit pattern is a valid c_short.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        if flags & TAP_FLAGS != TAP_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap flags {flags:#x} lack IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"),
            ));
        }
        // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        check(fl, "F_GETFL")?;
        // SAFETY: F_SETFL with an integer argument on a descriptor we own.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
        check(ret, "F_SETFL O_NONBLOCK")?;
        let name = ifreq_name(&ifr);
        Tap::configure(file, name)
    }

    fn configure(file: File, name: String) -> io::Result<Tap> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        check(ret, "TUNSETVNETHDRSZ")?;
        let no_offloads: libc::c_ulong = 0;
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no offloads); no memory.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, no_offloads) };
        check(ret, "TUNSETOFFLOAD")?;
        Ok(Tap { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (vnet header first); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (vnet header first) in one `write`.
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
