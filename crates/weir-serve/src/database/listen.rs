//! `LISTEN weir_changes` on a connection of its own: every change a node
//! commits (a publish, a deploy, a revocation) reaches every node as a
//! notification within milliseconds. After a lost connection the listener
//! connects again and asks for a full resync, since notifications sent
//! meanwhile are gone.

use std::time::Duration;

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::mpsc::UnboundedSender;

/// The channel every change is announced on.
pub const CHANNEL: &str = "weir_changes";

/// What the listener reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A notification's payload (JSON: `kind`, `tenant`, `name`).
    Notified(String),
    /// Connected (again): anything may have changed meanwhile.
    Resync,
}

/// Starts the listener thread; it ends when `changes` is closed.
pub fn spawn(config: postgres::Config, changes: UnboundedSender<Change>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("weir-db-listen".into())
        .spawn(move || {
            let mut warned = false;
            while !changes.is_closed() {
                let mut client = match config.connect(NoTls) {
                    Ok(c) => c,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                "cluster: cannot listen for changes: {}",
                                super::describe(&e)
                            );
                            warned = true;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    tracing::warn!("cluster: LISTEN failed: {}", super::describe(&e));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                if warned {
                    tracing::info!("cluster: listening for changes again");
                    warned = false;
                }
                if changes.send(Change::Resync).is_err() {
                    return;
                }
                'connected: loop {
                    {
                        let mut notifications = client.notifications();
                        let mut waiting = notifications.timeout_iter(Duration::from_millis(500));
                        loop {
                            match waiting.next() {
                                Ok(None) => break,
                                Ok(Some(n)) => {
                                    if changes
                                        .send(Change::Notified(n.payload().to_string()))
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(
                                        "cluster: lost the change listener: {}",
                                        super::describe(&e)
                                    );
                                    break 'connected;
                                }
                            }
                        }
                    }
                    if client.is_closed() || changes.is_closed() {
                        break;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the change listener: {e}"))
}
