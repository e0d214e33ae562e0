//! The bound on a listener's open connections (the PostgreSQL and Flight
//! SQL listeners): each costs a task, a socket and protocol state whoever
//! opens it, before any token is checked. One more is closed at once and
//! logged with the key in force; statements are bounded per tenant by the
//! SQL path's admission.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `max` connections open at once on one listener.
#[derive(Clone)]
pub struct Bound {
    open: Arc<Semaphore>,
    max: usize,
    /// What a closed connection's log line names: the protocol and the key.
    what: &'static str,
    key: &'static str,
}

impl Bound {
    pub fn new(max: usize, what: &'static str, key: &'static str) -> Self {
        let max = max.max(1);
        Bound {
            open: Arc::new(Semaphore::new(max)),
            max,
            what,
            key,
        }
    }

    /// The next connection with a place among the open ones (held until
    /// the permit is dropped); those beyond the bound are closed.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, OwnedSemaphorePermit) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: not a busy loop.
                    tracing::warn!("{} listener: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => return (socket, permit),
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        "a {} connection was closed: {} are open, the most `{}` allows",
                        self.what,
                        self.max,
                        self.key
                    );
                    drop(socket);
                }
            }
        }
    }
}
