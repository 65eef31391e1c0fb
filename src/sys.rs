//! The few raw file-descriptor operations the socket layer needs: passing the
//! arena descriptors with SCM_RIGHTS, waking connections at shutdown, and
//! reading a peer's user and groups (`--writers-group`, `--readers-group`).
//! Kept in one file so `unsafe` stays fenced.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Sends `bytes` with `fds` attached (SCM_RIGHTS) in one `sendmsg`. Returns the
/// number of bytes sent; the descriptors travel with the first byte.
pub fn send_with_fds(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for the control buffer",
        ));
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Receives into `buf` and collects descriptors passed with SCM_RIGHTS.
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(msg.bytes)
}

/// Shuts down the read side of a registered connection's socket.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: callers pass descriptors of registered connections while holding
    // the registry lock; a connection unregisters (under that lock) before its
    // socket is closed, so `fd` is open and still names that socket here.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Read);
}

/// The user of the process at the other end of a Unix socket and every group
/// it was in when it connected: `SO_PEERCRED` (uid, primary gid) and
/// `SO_PEERGROUPS` (supplementary groups, Linux 4.13+; where it is missing,
/// only the primary group counts).
pub fn peer_user_and_groups(socket: impl AsFd) -> std::io::Result<(u32, Vec<u32>)> {
    let fd = socket.as_fd();
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    let uid = cred.uid.as_raw();
    let mut groups = vec![cred.gid.as_raw()];
    let mut buf = vec![0u32; 64];
    loop {
        let mut len = (buf.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `buf` has room for `len` bytes of gid_t (u32) values and
        // outlives the call; the kernel writes at most `len` bytes and sets
        // `len` to what it wrote (or what it needs, with ERANGE).
        let r = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            let n = len as usize / std::mem::size_of::<u32>();
            groups.extend_from_slice(&buf[..n.min(buf.len())]);
            return Ok((uid, groups));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 65536 => {
                let need = (len as usize / std::mem::size_of::<u32>()).max(buf.len() * 2);
                buf.resize(need, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok((uid, groups)),
            _ => return Err(e),
        }
    }
}
