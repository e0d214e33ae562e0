//! The cluster's shared PostgreSQL database (`serve.database`): a few
//! connections, each owned by a thread of its own (the blocking client runs
//! its own runtime, which must not nest in the server's), fed jobs over a
//! channel. A lost connection is opened again on the next job; while the
//! database is unreachable every job fails fast with the reason.

pub mod listen;
pub mod migrate;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::{Client, NoTls};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed attempt, jobs fail at once for this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The longest a caller waits for its job (statements time out at 5 s).
const JOB_TIMEOUT: Duration = Duration::from_secs(8);
/// A connection idle this long is checked before it serves a job.
const CHECK_IDLE: Duration = Duration::from_secs(1);
/// Connections (threads) serving jobs.
const CONNECTIONS: usize = 2;

type Job = Box<dyn FnOnce(Result<&mut Client, String>) + Send>;

/// A handle on the shared database.
pub struct Database {
    jobs: Mutex<mpsc::Sender<Job>>,
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
}

/// The connection settings of `url` (`serve.database`), with the password
/// from `WEIR_DATABASE_PASSWORD` when the URL has none.
pub fn config(url: &str) -> Result<(postgres::Config, String), String> {
    let mut config: postgres::Config = url.parse().map_err(|e| {
        format!(
            "serve.database `{}` is not a PostgreSQL URL: {e}",
            shown(url)
        )
    })?;
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("WEIR_DATABASE_PASSWORD")
    {
        config.password(password);
    }
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("weir")
        .options("-c statement_timeout=5000 -c lock_timeout=5000");
    Ok((config, shown(url)))
}

/// `url` with any password replaced by `***`.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Why a job of [`Database::run`] failed. The kind, not the words, tells
/// a caller whether to retry: the HTTP API answers `503` for
/// [`DatabaseError::Unavailable`] and `500` for [`DatabaseError::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseError {
    /// The database did not answer: unreachable, no answer in time, the
    /// connection lost under the statement, or this node's database
    /// threads gone. Worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// The database answered and the statement failed (a constraint, a
    /// type, a timeout it enforced).
    #[error("{0}")]
    Failed(String),
}

impl DatabaseError {
    /// Whether the database did not answer (rather than refuse).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DatabaseError::Unavailable(_))
    }
}

/// Whether `e` is the connection failing (closed, or an I/O error on its
/// socket) rather than the server refusing the statement.
fn lost(e: &postgres::Error) -> bool {
    e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// A database error in words, with its SQLSTATE detail when the server sent one.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl Database {
    /// Connects (once, to fail at start when the URL is wrong) and applies
    /// the schema migrations.
    pub fn open(url: &str) -> Result<Self, String> {
        let (config, shown) = config(url)?;
        // The blocking client must not run on a thread of the server's runtime.
        let (c, s) = (config.clone(), shown.clone());
        let client = std::thread::spawn(move || {
            let mut client = c
                .connect(NoTls)
                .map_err(|e| format!("cannot connect to serve.database `{s}`: {}", describe(&e)))?;
            migrate::apply(&mut client).map_err(|e| format!("serve.database `{s}`: {e}"))?;
            Ok::<_, String>(client)
        })
        .join()
        .map_err(|_| "the database connection thread failed".to_string())??;
        let mut first = Some(client);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(Mutex::new(queue));
        // The last failed connection attempt of any thread, cleared when one
        // connects: once the database is back (and `/readyz` says so), every
        // thread connects at its next job instead of failing fast on an
        // attempt of its own made while the database was down.
        let failed: std::sync::Arc<Mutex<Option<(Instant, String)>>> = Default::default();
        for i in 0..CONNECTIONS {
            let (queue, config, failed) = (queue.clone(), config.clone(), failed.clone());
            let mut client = if i == 0 { first.take() } else { None };
            std::thread::Builder::new()
                .name(format!("weir-db-{i}"))
                .spawn(move || {
                    let mut used = Instant::now();
                    loop {
                        let job = match queue.lock().recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        // A connection idle for a while may have been closed
                        // by a database restart the client has not noticed.
                        if used.elapsed() >= CHECK_IDLE
                            && client
                                .as_mut()
                                .is_some_and(|c| c.is_valid(CONNECT_TIMEOUT).is_err())
                        {
                            client = None;
                        }
                        used = Instant::now();
                        if client.as_ref().is_none_or(Client::is_closed) {
                            client = None;
                            let recent = failed
                                .lock()
                                .as_ref()
                                .filter(|(at, _)| at.elapsed() < RETRY_AFTER)
                                .map(|(_, e)| e.clone());
                            match recent {
                                Some(e) => {
                                    job(Err(format!("unreachable ({e})")));
                                    continue;
                                }
                                None => match config.connect(NoTls) {
                                    Ok(c) => {
                                        client = Some(c);
                                        *failed.lock() = None;
                                    }
                                    Err(e) => {
                                        let e = describe(&e);
                                        *failed.lock() = Some((Instant::now(), e.clone()));
                                        job(Err(format!("unreachable ({e})")));
                                        continue;
                                    }
                                },
                            }
                        }
                        match client.as_mut() {
                            Some(c) => job(Ok(c)),
                            None => job(Err("unreachable".to_string())),
                        }
                    }
                })
                .map_err(|e| format!("cannot start a database thread: {e}"))?;
        }
        Ok(Database {
            jobs: Mutex::new(jobs),
            config,
            shown,
        })
    }

    /// Runs `f` on a connection and waits for its answer.
    ///
    /// # Errors
    /// [`DatabaseError::Unavailable`] when no connection could be had, the
    /// connection closed under `f`, or no answer came within 8 s;
    /// [`DatabaseError::Failed`] when `f`'s statements failed.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, DatabaseError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let shown = self.shown.clone();
        let job: Job = Box::new(move |client| {
            let answer = match client {
                Err(e) => Err(DatabaseError::Unavailable(format!(
                    "database `{shown}`: {e}"
                ))),
                Ok(c) => f(c).map_err(|e| {
                    let message = format!("database `{shown}`: {}", describe(&e));
                    if lost(&e) {
                        DatabaseError::Unavailable(message)
                    } else {
                        DatabaseError::Failed(message)
                    }
                }),
            };
            let _ = tx.send(answer);
        });
        self.jobs.lock().send(job).map_err(|_| {
            DatabaseError::Unavailable(format!(
                "database `{}`: this node's database threads stopped",
                self.shown
            ))
        })?;
        rx.recv_timeout(JOB_TIMEOUT).map_err(|_| {
            DatabaseError::Unavailable(format!(
                "database `{}` did not answer within {} s",
                self.shown,
                JOB_TIMEOUT.as_secs()
            ))
        })?
    }

    /// The connection settings (for the listener's own connection).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}
