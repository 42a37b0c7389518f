//! The kernel side of a coap listener's socket: its receive buffer (`receive_buffer`), and the datagrams the kernel
//! dropped because that buffer was full (`mqttlb_udp_receive_queue_dropped_datagrams_total`).
//!
//! A datagram that arrives while the socket's receive queue is full is dropped by the kernel before mqtt-lb can see
//! it: a flood, or more devices than the datagram task keeps up with. Linux counts these drops per socket (the
//! `drops` column of `/proc/net/udp`). With `SO_RXQ_OVFL` set, every datagram received carries that count as a
//! control message, so the datagram task reads it with no extra system call and no file to scan: `recvmsg` instead
//! of `recvfrom`, through `nix` (no unsafe code of ours). The alternative, reading `/proc/net/udp{,6}` for the
//! socket's inode, costs a scan of every UDP socket of the host (each flow holds one) per reading. The count is
//! read with the next datagram received after the drops, which under overload is at once; drops followed by
//! silence show when the next datagram comes.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel for `bytes` of receive buffer and returns what it granted, as `SO_RCVBUF` reads back: Linux
/// doubles the value asked for (room for its bookkeeping) after capping it at `net.core.rmem_max`, so a reading
/// below twice `bytes` means the cap applied.
pub fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> io::Result<usize> {
    socket::setsockopt(socket, sockopt::RcvBuf, &bytes)?;
    receive_buffer(socket)
}

/// The socket's receive buffer as the kernel accounts it (`SO_RCVBUF`).
pub fn receive_buffer(socket: &UdpSocket) -> io::Result<usize> {
    Ok(socket::getsockopt(socket, sockopt::RcvBuf)?)
}

/// `net.core.rmem_max`, the most a socket may ask for, when readable.
pub fn rmem_max() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?.trim().parse().ok()
}

/// Has the kernel attach its drop count to every datagram received on `socket`.
pub fn count_drops(socket: &UdpSocket) -> io::Result<()> {
    Ok(socket::setsockopt(socket, sockopt::RxqOvfl, &1)?)
}

/// One datagram received: its length, its sender, and the socket's drop count when the kernel attached it (it
/// does once the count is above zero).
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub drops: Option<u32>,
}

/// Room for the `SO_RXQ_OVFL` control message.
pub fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(u32)
}

/// Receives one datagram into `buf` (truncated to its length, as `recv_from` does), with the drop count.
pub async fn recv(socket: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Received> {
    socket.async_io(Interest::READABLE, || recv_now(socket, buf, control)).await
}

/// [`recv`] if a datagram is queued now; `WouldBlock` if not.
pub fn try_recv(socket: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Received> {
    socket.try_io(Interest::READABLE, || recv_now(socket, buf, control))
}

fn recv_now(socket: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Received> {
    use std::os::fd::AsRawFd;
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(control), MsgFlags::empty())?;
    let from = msg.address.as_ref().and_then(socket_addr).ok_or_else(|| io::Error::other("no source"))?;
    let drops = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::RxqOvfl(n) => Some(n),
            _ => None,
        })
    });
    Ok(Received { len: msg.bytes, from, drops })
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    storage.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Turns the kernel's running drop count (a `u32` that wraps) into increments for a counter.
#[derive(Debug, Default)]
pub struct DropCount {
    last: u32,
}

impl DropCount {
    /// The drops since the last reading.
    pub fn advance(&mut self, now: u32) -> u64 {
        let new = now.wrapping_sub(self.last);
        // Counts may come out of order between datagrams queued before and after a drop: never count backwards.
        if new > u32::MAX / 2 {
            return 0;
        }
        self.last = now;
        u64::from(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_count_advances_and_wraps() {
        let mut c = DropCount::default();
        assert_eq!(c.advance(0), 0);
        assert_eq!(c.advance(5), 5);
        assert_eq!(c.advance(5), 0);
        assert_eq!(c.advance(3), 0, "an older reading counts nothing");
        assert_eq!(c.advance(9), 4);
        let mut c = DropCount { last: u32::MAX - 1 };
        assert_eq!(c.advance(2), 4, "across the wrap");
    }

    #[tokio::test]
    async fn receives_with_the_sender_and_sets_the_buffer() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        count_drops(&socket).unwrap();
        let granted = set_receive_buffer(&socket, 64 * 1024).unwrap();
        assert!(granted >= 64 * 1024 || rmem_max().is_some_and(|m| m < 64 * 1024), "{granted}");
        // More than net.core.rmem_max: capped, which shows as less than twice the size asked for.
        if let Some(max) = rmem_max() {
            let granted = set_receive_buffer(&socket, max * 2).unwrap();
            assert!(granted < max * 4 && granted >= max, "{granted} for {} with rmem_max {max}", max * 2);
        }
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sender.send_to(b"hello", socket.local_addr().unwrap()).await.unwrap();
        let (mut buf, mut control) = (vec![0u8; 64], control_buffer());
        let got = recv(&socket, &mut buf, &mut control).await.unwrap();
        assert_eq!((&buf[..got.len], got.from), (&b"hello"[..], sender.local_addr().unwrap()));
        assert_eq!(got.drops, None, "nothing dropped yet");
    }
}
