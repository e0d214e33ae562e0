//! The one rule for what is secret in a configuration, used wherever a
//! configuration is shown or logged (a deployed pipeline's file, client
//! properties, errors): the value of a key that names a secret, and the
//! user information of a URL (`http://user:pw@host`).

/// What is shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a configuration key names a secret (`sasl.password`,
/// `ssl.key.pem`, `api_token`, …): its value is never shown.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with(".location") || key.ends_with("_env") {
        // A path, or the name of a variable: not the secret itself.
        return false;
    }
    [
        "password",
        "secret",
        "token",
        "key.pem",
        "ssl_key",
        "jaas",
        "credential",
        "oauthbearer.config",
        "private",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `url` without the user information of its authority (`user:pw@` →
/// `<redacted>@`); any other text unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// The value of `key` as it may be shown.
pub fn shown(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        REDACTED.to_string()
    } else {
        redact_url(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_urls() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.pem"));
        assert!(!is_secret_key("ssl.ca.location"));
        assert!(!is_secret_key("password_env"));
        assert!(!is_secret_key("sasl.username"));
        assert_eq!(
            redact_url("http://u:pw@host:8081/x@y"),
            "http://<redacted>@host:8081/x@y"
        );
        assert_eq!(redact_url("http://host/a"), "http://host/a");
        assert_eq!(shown("registry", "https://a:b@r"), "https://<redacted>@r");
        assert_eq!(shown("sasl.password", "pw"), REDACTED);
    }
}
