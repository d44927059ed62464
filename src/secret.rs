//! The API token: generated and stored with mode 0600, compared in constant
//! time, never printed by `Debug` or logs.

use std::fmt;
use std::path::Path;

use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::store::{StoreError, write_atomic_mode};

#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// Tokens shorter than this work, with a warning at start-up.
pub const SHORT: usize = 16;

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("token file {path}: {problem}")]
    Invalid { path: String, problem: &'static str },
    #[error(transparent)]
    Write(#[from] StoreError),
}

impl Token {
    /// Accepts a token of 1 to 512 visible ASCII characters (what fits in
    /// an HTTP header). Short ones are accepted, so the original clients'
    /// tokens keep working, but see [`Token::is_short`].
    pub fn parse(raw: &str) -> Result<Token, &'static str> {
        let t = raw.trim();
        if t.is_empty() {
            return Err("the token is empty");
        }
        if t.len() > 512 {
            return Err("the token must be at most 512 characters");
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII characters without spaces");
        }
        Ok(Token(t.to_owned()))
    }

    /// A fresh random token: 32 bytes as hex.
    pub fn generate() -> Token {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Token(hex::encode(bytes))
    }

    /// Shorter than [`SHORT`] characters: easy to guess for anyone who reaches the API.
    pub fn is_short(&self) -> bool {
        self.0.len() < SHORT
    }

    /// Constant-time comparison with what a client presented.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The token text, for sending it (client side) or printing it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token from `path`; if there is none, generates one, stores
    /// it with mode 0600 and returns it with `true`.
    pub fn load_or_generate(path: &Path) -> Result<(Token, bool), TokenError> {
        match std::fs::read_to_string(path) {
            Ok(raw) => {
                warn_if_readable_by_others(path);
                Token::parse(&raw)
                    .map(|t| (t, false))
                    .map_err(|problem| TokenError::Invalid {
                        path: path.display().to_string(),
                        problem,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|error| TokenError::Read {
                        path: dir.display().to_string(),
                        error,
                    })?;
                }
                let t = Token::generate();
                write_atomic_mode(path, format!("{}\n", t.0).as_bytes(), Some(0o600))?;
                Ok((t, true))
            }
            Err(error) => Err(TokenError::Read {
                path: path.display().to_string(),
                error,
            }),
        }
    }

    /// Reads an existing token file (clients).
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let raw = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Token::parse(&raw).map_err(|problem| TokenError::Invalid {
            path: path.display().to_string(),
            problem,
        })
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "token file is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_and_matching_is_exact() {
        let t = Token::parse("0123456789abcdef-secret").unwrap();
        assert_eq!(format!("{t:?}"), "Token(****)");
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches("0123456789abcdef-secret2"));
        assert!(!t.matches(""));
        assert!(Token::parse("short").unwrap().is_short());
        assert!(!t.is_short());
        assert!(Token::parse(" \n").is_err());
        assert!(Token::parse("has a space in the middle").is_err());
    }

    #[test]
    fn generated_once_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/token");
        let (a, new_a) = Token::load_or_generate(&p).unwrap();
        let (b, new_b) = Token::load_or_generate(&p).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
