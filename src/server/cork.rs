//! Corking a plain TCP connection for the length of one message (`TCP_CORK`).
//!
//! Pingora writes an HTTP/1.1 message in several calls: its head on its own (flushed), then
//! each body piece the gateway hands it (a request's part heads, the image as a slice of the
//! upload, the closing delimiter; an answer's literals around the provider's image). On
//! loopback and fast links every `sendto` is a segment the peer is woken for. Corked, the
//! kernel sends only full segments until [`uncork`], which pushes the rest at once: the same
//! bytes in fewer segments and wake-ups, and no copy to join the pieces. Runs around the
//! upstream request of an exchange (`exchange.rs`) and a complete JSON answer
//! (`gateway::send_json`); each corks only after the whole message is ready to go, so nothing
//! waits on the gateway's own work while corked.
//!
//! TLS and HTTP/2 connections, and Unix sockets, are left as they are ([`cork`] returns
//! `false` for them): rustls already writes whole records, and h2 frames share a connection.

use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The TCP socket under `stream`, when it is a plain TCP connection.
fn tcp(stream: &Stream) -> Option<&TcpStream> {
    stream.as_any().downcast_ref::<TcpStream>()
}

/// Sets `TCP_CORK` on `stream`'s socket to `on`; `false` when it is not a plain TCP connection
/// or the option could not be set (the message then goes out as it would have).
fn set(stream: &TcpStream, on: bool) -> bool {
    let raw = stream.as_raw_fd();
    // SAFETY: `raw` is the descriptor owned by `stream`, which stays borrowed (so open, and
    // not reused for another file) for as long as `fd` lives: to the end of this function.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::net::sockopt::set_tcp_cork(fd, on).is_ok()
}

/// Corks `stream` (a session's, `None` for none) before a message is written; `true` when it
/// did, and [`uncork`] must then follow once the message is written, or failed.
pub fn cork(stream: Option<&Stream>) -> bool {
    stream.and_then(tcp).is_some_and(|s| set(s, true))
}

/// Uncorks `stream` after a message [`cork`] corked: what is still held goes out now.
pub fn uncork(stream: Option<&Stream>) {
    if let Some(s) = stream.and_then(tcp) {
        if !set(s, false) {
            log::debug!("could not uncork a connection (TCP_CORK)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corked(stream: &Stream) -> bool {
        let raw = tcp(stream).map(AsRawFd::as_raw_fd).unwrap_or(-1);
        // SAFETY: as in `set`: `stream` owns `raw` and stays borrowed while `fd` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        rustix::net::sockopt::tcp_cork(fd).unwrap_or(false)
    }

    #[tokio::test]
    async fn a_tcp_connection_is_corked_then_uncorked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        let stream: Stream = Box::new(TcpStream::from(client.unwrap()));
        assert!(!corked(&stream));
        assert!(cork(Some(&stream)));
        assert!(corked(&stream));
        uncork(Some(&stream));
        assert!(!corked(&stream));
        // What was written while corked arrives once uncorked.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        assert!(cork(Some(&stream)));
        stream.write_all(b"head ").await.unwrap();
        stream.write_all(b"body").await.unwrap();
        uncork(Some(&stream));
        let mut server = server;
        let mut got = vec![0u8; 9];
        tokio::time::timeout(std::time::Duration::from_secs(5), server.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"head body");
    }

    #[test]
    fn nothing_is_corked_without_a_tcp_connection() {
        assert!(!cork(None));
        uncork(None);
    }
}
