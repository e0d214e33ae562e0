//! A client of a Confluent-compatible schema registry. The calls weir
//! makes (docs/pipelines.md, "Avro"):
//!
//! - `GET /schemas/ids/{id}`: a writer schema by the id in a record's
//!   header (cached for the life of the pipeline: ids are immutable);
//! - `GET /subjects/{subject}/versions/latest`: a source's reader schema
//!   when the pipeline names no `.avsc`;
//! - `POST /subjects/{subject}/versions` with `{"schema": …}`: a sink
//!   registers its schema, or is told the id it already has.
//!
//! Requests carry `Accept`/`Content-Type: application/vnd.schemaregistry.v1+json`
//! and, when configured, HTTP basic auth. Blocking (ureq): callers on an
//! async runtime run them with `spawn_blocking`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;

const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the registry could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such schema or subject (HTTP 404).
    #[error("the schema registry at {url} has no {what}")]
    NotFound { url: String, what: String },
    /// Its answer's body is not quoted: the URL is the tenant's to choose,
    /// the body another service's.
    #[error("the schema registry at {url} refused {what}: HTTP {status}")]
    Refused {
        url: String,
        what: String,
        status: u16,
    },
    #[error("the schema registry at {url} cannot be reached for {what}: {message}")]
    Unreachable {
        url: String,
        what: String,
        message: String,
    },
    #[error("the schema registry at {url} answered {what} with {message}")]
    BadAnswer {
        url: String,
        what: String,
        message: String,
    },
}

/// One registry, with the schemas it answered by id.
pub struct Registry {
    url: String,
    /// `url` as errors show it (no password).
    shown: String,
    auth: Option<String>,
    agent: ureq::Agent,
    by_id: Mutex<HashMap<u32, Arc<str>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

impl Registry {
    pub fn new(url: &str, username: Option<&str>, password: Option<&str>) -> Self {
        let auth = username.map(|u| {
            let pair = format!("{u}:{}", password.unwrap_or_default());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The policy allowed this URL, not wherever it redirects.
            .max_redirects(0)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Registry {
            url: url.trim_end_matches('/').to_string(),
            shown: weir_core::secrets::redact_url(url.trim_end_matches('/')),
            auth,
            agent,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// The URL as it may be shown (no password).
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The schema a record's header names; cached.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<str>, RegistryError> {
        if let Some(s) = self.by_id.lock().get(&id) {
            return Ok(s.clone());
        }
        let what = format!("schema id {id}");
        let answer = self.call("GET", &format!("/schemas/ids/{id}"), None, &what)?;
        let schema: Arc<str> = self.schema_of(&answer, &what)?.into();
        self.by_id.lock().insert(id, schema.clone());
        Ok(schema)
    }

    /// Whether `id` was answered before (no request needed).
    pub fn knows(&self, id: u32) -> bool {
        self.by_id.lock().contains_key(&id)
    }

    /// The latest version of `subject`: (id, schema).
    pub fn latest(&self, subject: &str) -> Result<(u32, String), RegistryError> {
        let what = format!("subject `{subject}`");
        let answer = self.call(
            "GET",
            &format!("/subjects/{}/versions/latest", path_segment(subject)),
            None,
            &what,
        )?;
        let id = self.id_of(&answer, &what)?;
        let schema = self.schema_of(&answer, &what)?;
        self.by_id.lock().insert(id, schema.clone().into());
        Ok((id, schema))
    }

    /// Registers `schema` under `subject` (or finds it there): its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let what = format!("registering a schema under subject `{subject}`");
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.call(
            "POST",
            &format!("/subjects/{}/versions", path_segment(subject)),
            Some(&body),
            &what,
        )?;
        let id = self.id_of(&answer, &what)?;
        self.by_id.lock().insert(id, schema.into());
        Ok(id)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{path}", self.url);
        let unreachable = |e: ureq::Error| RegistryError::Unreachable {
            url: self.shown.clone(),
            what: what.to_string(),
            message: e.to_string().replace(&self.url, &self.shown),
        };
        let response = if method == "POST" {
            let mut request = self
                .agent
                .post(&url)
                .header("Accept", MEDIA_TYPE)
                .header("Content-Type", MEDIA_TYPE);
            if let Some(auth) = &self.auth {
                request = request.header("Authorization", auth);
            }
            request.send(body.unwrap_or_default())
        } else {
            let mut request = self.agent.get(&url).header("Accept", MEDIA_TYPE);
            if let Some(auth) = &self.auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(unreachable)?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        match status {
            200..=299 => Ok(answer),
            404 => Err(RegistryError::NotFound {
                url: self.shown.clone(),
                what: what.to_string(),
            }),
            _ => Err(RegistryError::Refused {
                url: self.shown.clone(),
                what: what.to_string(),
                status,
            }),
        }
    }

    fn schema_of(&self, answer: &serde_json::Value, what: &str) -> Result<String, RegistryError> {
        if let Some(kind) = answer.get("schemaType").and_then(|t| t.as_str())
            && kind != "AVRO"
        {
            return Err(self.bad(what, format!("a {kind} schema, not Avro")));
        }
        answer
            .get("schema")
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.bad(what, "no `schema` string".to_string()))
    }

    fn id_of(&self, answer: &serde_json::Value, what: &str) -> Result<u32, RegistryError> {
        answer
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.bad(what, "no numeric `id`".to_string()))
    }

    fn bad(&self, what: &str, message: String) -> RegistryError {
        RegistryError::BadAnswer {
            url: self.shown.clone(),
            what: what.to_string(),
            message,
        }
    }
}

/// A subject as one URL path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot HTTP server answering every request with `response`.
    fn serve(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    /// Issue 27 #3: the URL is the tenant's choice, the body another
    /// service's: an error names the status, never the body.
    #[test]
    fn errors_never_quote_the_answer() {
        let url = serve(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 25\r\nconnection: close\r\n\r\n{\"message\":\"SECRET-BODY\"}",
        );
        let e = Registry::new(&url, None, None).schema_by_id(1).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("HTTP 500") && !text.contains("SECRET"),
            "{text}"
        );
        let url = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 22\r\nconnection: close\r\n\r\n{\"other\":\"SECRET-ANS\"}",
        );
        let text = Registry::new(&url, None, None)
            .schema_by_id(1)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("no `schema`") && !text.contains("SECRET"),
            "{text}"
        );
    }

    /// A redirect is not followed (the policy allowed this URL, not
    /// wherever it points), and a password in the URL is not shown.
    #[test]
    fn redirects_are_not_followed_and_passwords_not_shown() {
        let url = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        let with_password = url.replace("http://", "http://user:hunter2@");
        let e = Registry::new(&with_password, None, None)
            .schema_by_id(1)
            .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, RegistryError::Refused { status: 302, .. }),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
