//! Corking a plain TCP connection for the length of one message (`TCP_CORK`).
//!
//! Pingora writes an HTTP/1.1 answer in several calls: its head on its own, then each body
//! piece the gateway hands it (the literals around the provider's image, the image as a slice
//! of the provider's answer). On loopback and fast links every `sendto` is a segment the peer
//! is woken for. Corked, the kernel sends only full segments until [`uncork`], which pushes the
//! rest at once: the same bytes in fewer segments and wake-ups, and no copy to join the pieces.
//! Runs around a complete JSON answer (`gateway::send_json`), corked only once the whole
//! answer is ready to go, so nothing waits on the gateway's own work while corked. (Upstream
//! requests need no cork: the exchange writes each one itself, gathered into vectored writes,
//! see `exchange::send`.)
//!
//! TLS and HTTP/2 connections, and Unix sockets, are left as they are: rustls already writes
//! whole records, and h2 frames share a connection.

use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The TCP socket under `stream`, when it is a plain TCP connection.
fn tcp(stream: &Stream) -> Option<&TcpStream> {
    stream.as_any().downcast_ref::<TcpStream>()
}

/// The descriptor of `stream`'s socket, borrowed for as long as `stream` is.
fn socket(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `stream` and stays open (so never -1, and not reused
    // for another file) while `stream` is borrowed, which the returned lifetime ties it to.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// Sets `TCP_CORK` on `stream`'s socket to `on`, when it is a plain TCP connection. A failure
/// only means the message goes out as it would have uncorked.
fn set(stream: Option<&Stream>, on: bool) {
    if let Some(s) = stream.and_then(tcp) {
        if let Err(e) = rustix::net::sockopt::set_tcp_cork(socket(s), on) {
            log::debug!("TCP_CORK {on} on a connection: {e}");
        }
    }
}

/// Corks `stream` (a session's, `None` for none) before a message is written; [`uncork`] must
/// follow once the message is written, unless the write failed and the connection is closed.
pub fn cork(stream: Option<&Stream>) {
    set(stream, true);
}

/// Uncorks `stream` after its message was written: what is still held goes out now.
pub fn uncork(stream: Option<&Stream>) {
    set(stream, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next `n` bytes `peer` receives (within 5 s).
    async fn received<R: tokio::io::AsyncRead + Unpin>(peer: &mut R, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; n];
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    fn corked(stream: &Stream) -> bool {
        let tcp = tcp(stream).expect("a TCP connection");
        rustix::net::sockopt::tcp_cork(socket(tcp)).expect("TCP_CORK readable")
    }

    #[tokio::test]
    async fn a_tcp_connection_is_corked_then_uncorked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        let stream: Stream = Box::new(TcpStream::from(client.unwrap()));
        assert!(!corked(&stream));
        cork(Some(&stream));
        assert!(corked(&stream));
        uncork(Some(&stream));
        assert!(!corked(&stream));
        // What was written while corked arrives once uncorked.
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        cork(Some(&stream));
        assert!(corked(&stream));
        stream.write_all(b"head ").await.unwrap();
        stream.write_all(b"body").await.unwrap();
        uncork(Some(&stream));
        let mut server = server;
        assert_eq!(received(&mut server, 9).await, b"head body");
    }

    /// A connection that is not plain TCP (here a Unix socket) is left as it is, and what is
    /// written between `cork` and `uncork` arrives as usual.
    #[tokio::test]
    async fn other_connections_are_left_as_they_are() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut stream: Stream = Box::new(ours);
        assert!(tcp(&stream).is_none());
        cork(Some(&stream));
        stream.write_all(b"message").await.unwrap();
        uncork(Some(&stream));
        cork(None);
        uncork(None);
        assert_eq!(received(&mut theirs, 7).await, b"message");
    }
}
