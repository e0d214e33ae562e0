//! String UDFs: PII masking and case folding.

/// `ada.lovelace@example.com` → `a***@example.com`; non-emails are masked whole.
#[weir_udf::scalar]
fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        _ => "*".repeat(email.chars().count().min(16)),
    }
}

/// Replaces every ASCII digit with `#` (card numbers, phone numbers).
#[weir_udf::scalar]
fn redact_digits(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// Unicode upper case (same result as SQL `upper`).
#[weir_udf::scalar]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

/// Byte length of a binary value; NULL stays NULL.
#[weir_udf::scalar]
fn byte_len(data: &[u8]) -> u64 {
    data.len() as u64
}
