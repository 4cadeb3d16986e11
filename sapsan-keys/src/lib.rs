//! MLflow's rules for metric, param and tag keys: the one source of truth of
//! [sapsan](https://docs.rs/sapsan).
//!
//! `sapsan-derive` checks the keys of `#[derive(ModelConfig)]` with these rules at compile time,
//! and `sapsan-core` checks kwargs and user keys with them at run time, so both agree with the
//! server exactly. No dependencies; users reach it as `sapsan::config::keys`.
//!
//! ```
//! use sapsan_keys::{KeyRule, check_key};
//!
//! assert_eq!(check_key("model - lr"), Ok(()));
//! assert_eq!(check_key("acc@1"), Err(KeyRule::BadChar('@')));
//! // `Display` says the rule in words, for error messages.
//! assert!(KeyRule::DoubleSlash.to_string().contains("'//'"));
//! ```
#![warn(missing_docs)]

/// Longest key MLflow accepts, in characters.
pub const MAX_KEY_LEN: usize = 250;
/// Longest param value MLflow stores (longer ones are silently truncated by the server).
pub const MAX_PARAM_VALUE_LEN: usize = 6000;
/// Longest tag value MLflow stores.
pub const MAX_TAG_VALUE_LEN: usize = 8000;

/// Why a key is rejected. `Display` says the rule in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// The key is empty.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    TooLong(usize),
    /// The key contains a character outside letters, digits, `_`, `-`, `.`, ` `, `:` and `/`.
    BadChar(char),
    /// The key starts with `/`.
    LeadingSlash,
    /// The key ends with `/`.
    TrailingSlash,
    /// The key contains `//`.
    DoubleSlash,
    /// A `/`-separated segment is `.` or `..`.
    DotSegment,
}

impl std::error::Error for KeyRule {}

impl std::fmt::Display for KeyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRule::Empty => write!(f, "keys must not be empty"),
            KeyRule::TooLong(n) => {
                write!(
                    f,
                    "keys may have at most {MAX_KEY_LEN} characters, this one has {n}"
                )
            }
            KeyRule::BadChar(c) => write!(
                f,
                "character {c:?} is not allowed; MLflow keys may contain only letters, digits, \
                 '_', '-', '.', ' ', ':' and '/'"
            ),
            KeyRule::LeadingSlash => write!(f, "keys must not start with '/'"),
            KeyRule::TrailingSlash => write!(f, "keys must not end with '/'"),
            KeyRule::DoubleSlash => write!(f, "keys must not contain '//'"),
            KeyRule::DotSegment => {
                write!(
                    f,
                    "keys must not contain '.' or '..' as a '/'-separated part"
                )
            }
        }
    }
}

/// Whether MLflow accepts `c` in a key (the server's regex `^[/\w.\- :]*$`, Unicode `\w`).
pub fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/')
}

/// Checks `key` against every rule the MLflow server applies to metric, param and tag keys.
pub fn check_key(key: &str) -> Result<(), KeyRule> {
    let len = key.chars().count();
    if len == 0 {
        return Err(KeyRule::Empty);
    }
    if len > MAX_KEY_LEN {
        return Err(KeyRule::TooLong(len));
    }
    if let Some(c) = key.chars().find(|c| !is_key_char(*c)) {
        return Err(KeyRule::BadChar(c));
    }
    if key.starts_with('/') {
        return Err(KeyRule::LeadingSlash);
    }
    if key.ends_with('/') {
        return Err(KeyRule::TrailingSlash);
    }
    if key.contains("//") {
        return Err(KeyRule::DoubleSlash);
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(KeyRule::DotSegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sapsan_keys() {
        for k in [
            "model - lr",
            "chkpnt - sample to size",
            "train - loss over mean",
            "a/b",
            "x:y",
            "é",
        ] {
            assert_eq!(check_key(k), Ok(()), "{k}");
        }
    }

    #[test]
    fn rejects_what_the_server_rejects() {
        assert_eq!(check_key(""), Err(KeyRule::Empty));
        assert_eq!(check_key(&"k".repeat(251)), Err(KeyRule::TooLong(251)));
        assert_eq!(check_key(&"k".repeat(250)), Ok(()));
        assert_eq!(check_key("acc@1"), Err(KeyRule::BadChar('@')));
        assert_eq!(check_key("a,b"), Err(KeyRule::BadChar(',')));
        assert_eq!(check_key("x(y)"), Err(KeyRule::BadChar('(')));
        assert_eq!(check_key("/x"), Err(KeyRule::LeadingSlash));
        assert_eq!(check_key("x/"), Err(KeyRule::TrailingSlash));
        assert_eq!(check_key("a//b"), Err(KeyRule::DoubleSlash));
        assert_eq!(check_key("a/../b"), Err(KeyRule::DotSegment));
        assert_eq!(check_key("."), Err(KeyRule::DotSegment));
    }
}
