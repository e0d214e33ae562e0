//! The Flight SQL listener's connections as tonic takes them, each
//! holding its place among the open ones (`serve.flight_sql_max_connections`,
//! [`crate::connections::Bound`]) until it closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connections::Bound;

/// An accepted connection holding its place among the open ones until it
/// is dropped.
pub struct Bounded {
    io: TcpStream,
    _open: OwnedSemaphorePermit,
}

/// The connections `listener` accepts, within `bound`.
pub fn accept(listener: TcpListener, bound: Bound) -> impl Stream<Item = io::Result<Bounded>> {
    futures::stream::unfold((listener, bound), |(listener, bound)| async move {
        let (io, permit) = bound.accept(&listener).await;
        // Small answers (a handshake, a schema) are not held back.
        let _ = io.set_nodelay(true);
        let bounded = Bounded { io, _open: permit };
        Some((Ok(bounded), (listener, bound)))
    })
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
