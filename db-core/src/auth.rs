//! API tokens.
//!
//! Tokens are random 32-byte secrets shown once (`apiv3_<hex>`); the catalog keeps only
//! their SHA-256. Clients present them as `Authorization: Bearer <t>` or `Token <t>`
//! (v1 clients may also use Basic auth or the `p` query parameter with the token as the
//! password). With `--without-auth` every request is allowed.

use std::{fmt, sync::Arc};

use sha2::{Digest, Sha256};

use crate::{
    catalog::{self, Catalog, TokenInfo},
    time::{SystemTime, TimeProvider},
};

/// Prefix of generated tokens.
pub const TOKEN_PREFIX: &str = "apiv3_";
/// Name of the bootstrap admin token.
pub const ADMIN_TOKEN_NAME: &str = "_admin";

/// Authentication failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials presented.
    #[error("authorization required: send 'Authorization: Bearer <token>'")]
    Missing,
    /// Credentials not recognised.
    #[error("invalid token")]
    Invalid,
    /// The header is malformed.
    #[error("malformed authorization header: expected 'Bearer <token>' or 'Token <token>'")]
    Malformed,
}

/// Hash a token for storage and lookup.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Generate a new random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS random source failing leaves no safe way to mint a secret.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("operating system random source failed");
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Extract the token from an `Authorization` header value.
pub fn token_from_header(value: &str) -> Result<String, AuthError> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(AuthError::Malformed);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Ok(rest.to_string()),
        "basic" => {
            let decoded = base64_decode(rest).ok_or(AuthError::Malformed)?;
            let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
            let (_, password) = text.split_once(':').ok_or(AuthError::Malformed)?;
            Ok(password.to_string())
        }
        _ => Err(AuthError::Malformed),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// The authenticator.
#[derive(Clone)]
pub struct Authenticator {
    catalog: Arc<Catalog>,
    enabled: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("enabled", &self.enabled).finish()
    }
}

impl Authenticator {
    /// An authenticator over the catalog's tokens; `enabled = false` allows everything.
    pub fn new(catalog: Arc<Catalog>, enabled: bool) -> Self {
        Self { catalog, enabled }
    }

    /// Whether authentication is enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Check a presented token (already extracted). `Ok(None)` when auth is off.
    pub fn check_token(&self, token: Option<&str>) -> Result<Option<TokenInfo>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        let token = token.ok_or(AuthError::Missing)?;
        self.catalog.token_by_hash(&hash_token(token)).map(Some).ok_or(AuthError::Invalid)
    }

    /// Check an `Authorization` header value. `Ok(None)` when auth is off.
    pub fn check_header(&self, header: Option<&str>) -> Result<Option<TokenInfo>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        let token = token_from_header(header.ok_or(AuthError::Missing)?)?;
        self.check_token(Some(&token))
    }

    /// Create an admin token named `name` and return its clear text (shown once).
    pub async fn create_admin_token(&self, name: &str) -> catalog::Result<String> {
        let token = generate_token();
        self.catalog.add_token(name, hash_token(&token), true, SystemTime.now_ns()).await?;
        Ok(token)
    }

    /// Register a known clear-text token as the admin token (operator-supplied bootstrap).
    pub async fn register_admin_token(&self, name: &str, token: &str) -> catalog::Result<()> {
        self.catalog.add_token(name, hash_token(token), true, SystemTime.now_ns()).await.map(|_| ())
    }

    /// Whether an admin token exists.
    pub fn has_admin_token(&self) -> bool {
        self.catalog.has_admin_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        assert_eq!(token_from_header("Bearer abc").unwrap(), "abc");
        assert_eq!(token_from_header("Token abc").unwrap(), "abc");
        assert_eq!(token_from_header("bearer   abc ").unwrap(), "abc");
        // "user:apiv3_x" in base64
        assert_eq!(token_from_header("Basic dXNlcjphcGl2M194").unwrap(), "apiv3_x");
        assert_eq!(token_from_header("Bearer"), Err(AuthError::Malformed));
        assert_eq!(token_from_header("Digest abc"), Err(AuthError::Malformed));
        assert_eq!(token_from_header("Basic !!!"), Err(AuthError::Malformed));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
