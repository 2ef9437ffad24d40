//! API tokens and what they may do.
//!
//! Tokens are random 32-byte secrets shown once (`apiv3_<hex>`). The catalog keeps, per
//! token, a random salt and the SHA-256 of salt and secret (tokens from before salting
//! keep an unsalted SHA-256 and still work); a verified token is remembered in memory by
//! its plain digest so a request costs one hash. Clients present tokens as
//! `Authorization: Bearer <t>` or `Token <t>` (v1 clients may also use Basic auth or the
//! `p` query parameter with the token as the password).
//!
//! An admin token may do everything. A resource token carries [`Permission`]s
//! (`db:NAMES:read,write`, `system:metrics:read`) and may expire; an expired or deleted
//! token is refused on its next request. With `--without-auth` every request is allowed
//! ([`Principal::Open`]), except token management, which always needs an admin token once
//! one exists.

mod permission;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use parking_lot::Mutex;
pub use permission::{Action, Permission, ResourceType, SYSTEM_RESOURCES};
use sha2::{Digest, Sha256};

use crate::{
    catalog::{self, Catalog, TokenInfo},
    time::{SystemTime, TimeProvider},
};

/// Prefix of generated tokens.
pub const TOKEN_PREFIX: &str = "apiv3_";
/// Name of the bootstrap admin token (the one `create token --admin --regenerate` renews).
pub const ADMIN_TOKEN_NAME: &str = "_admin";
/// Longest token name accepted.
pub const MAX_TOKEN_NAME_LEN: usize = 256;

/// Authentication and authorization failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials presented.
    #[error("authorization required: send 'Authorization: Bearer <token>'")]
    Missing,
    /// Credentials not recognised (never issued, deleted, or regenerated).
    #[error("invalid token")]
    Invalid,
    /// The header is malformed.
    #[error("malformed authorization header: expected 'Bearer <token>' or 'Token <token>'")]
    Malformed,
    /// The token's expiry has passed.
    #[error("token {name:?} expired at {at}")]
    Expired {
        /// Token name.
        name: String,
        /// Expiry, RFC 3339.
        at: String,
    },
    /// A valid token without the permission this request needs.
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    /// Whether this is a permission failure (HTTP 403) rather than an identity one (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden(_))
    }
}

/// Plain SHA-256 of a token: the in-memory lookup key, and the stored hash of tokens
/// created before salting.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The stored hash of a token with its salt.
pub fn salted_hash(salt: &str, token: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The OS random source failing leaves no safe way to mint a secret.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("operating system random source failed");
    hex::encode(bytes)
}

/// Generate a new random token.
pub fn generate_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(32))
}

/// Whether `token` is the secret of `info`.
fn matches(info: &TokenInfo, token: &str) -> bool {
    let computed = match &info.salt {
        Some(salt) => salted_hash(salt, token),
        None => hash_token(token),
    };
    constant_time_eq(computed.as_bytes(), info.hash.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is making a request, and so what it may do.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Authentication is off (`--without-auth`): everything is allowed.
    Open,
    /// A verified, unexpired token.
    Token(Arc<TokenInfo>),
}

impl Principal {
    /// Whether this principal may do everything.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Open => true,
            Self::Token(t) => t.admin,
        }
    }

    fn forbidden(&self, what: &str) -> AuthError {
        match self {
            Self::Open => AuthError::Forbidden(format!("{what} is not allowed")),
            Self::Token(t) => {
                let has = if t.permissions.is_empty() {
                    "no permissions".to_string()
                } else {
                    t.permissions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                };
                AuthError::Forbidden(format!("token {:?} may not {what} (it has {has})", t.name))
            }
        }
    }

    /// Refuse unless admin; `what` names the operation ("create a database").
    pub fn require_admin(&self, what: &str) -> Result<(), AuthError> {
        if self.is_admin() { Ok(()) } else { Err(self.forbidden(&format!("{what}: that needs an admin token"))) }
    }

    /// Whether this principal may do `action` on database `db`.
    pub fn allows_db(&self, db: &str, action: Action) -> bool {
        match self {
            Self::Open => true,
            Self::Token(t) => t.admin || t.permissions.iter().any(|p| p.allows(ResourceType::Db, db, action)),
        }
    }

    /// Refuse unless this principal may do `action` on database `db`.
    pub fn require_db(&self, db: &str, action: Action) -> Result<(), AuthError> {
        if self.allows_db(db, action) { Ok(()) } else { Err(self.forbidden(&format!("{action} database {db:?}"))) }
    }

    /// Whether this principal holds any permission on database `db` (to see it listed).
    pub fn sees_db(&self, db: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Token(t) => t.admin || t.permissions.iter().any(|p| p.covers(ResourceType::Db, db)),
        }
    }

    /// Refuse unless this principal may read the system resource `name` (`metrics`).
    pub fn require_system(&self, name: &str) -> Result<(), AuthError> {
        let ok = match self {
            Self::Open => true,
            Self::Token(t) => {
                t.admin || t.permissions.iter().any(|p| p.allows(ResourceType::System, name, Action::Read))
            }
        };
        if ok { Ok(()) } else { Err(self.forbidden(&format!("read {name}"))) }
    }
}

/// A token to create.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Unique name.
    pub name: String,
    /// Admin (everything) rather than resource permissions.
    pub admin: bool,
    /// Resource permissions (empty for an admin token).
    pub permissions: Vec<Permission>,
    /// Lifetime; `None` never expires.
    pub expiry: Option<Duration>,
}

/// A token as listed: everything but its secret and hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenSummary {
    /// Token id.
    pub id: u32,
    /// Token name.
    pub name: String,
    /// Whether it is an admin token.
    pub admin: bool,
    /// Permissions, `db:NAMES:ACTIONS`.
    pub permissions: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339, if any.
    pub expiry: Option<String>,
    /// Whether the expiry has passed.
    pub expired: bool,
}

/// The authenticator.
#[derive(Clone)]
pub struct Authenticator {
    catalog: Arc<Catalog>,
    enabled: bool,
    time: Arc<dyn TimeProvider>,
    /// Plain token digest → (token id, stored hash when verified). A hit is trusted only
    /// while the catalog still holds that id with that hash, so a deleted or regenerated
    /// token misses and is checked afresh.
    verified: Arc<Mutex<HashMap<String, (u32, String)>>>,
    /// Plain digest of the recovery secret that may regenerate the admin token.
    recovery: Arc<Mutex<Option<String>>>,
}

/// Most verified tokens remembered; past this the memory starts afresh.
const VERIFIED_CACHE_LIMIT: usize = 4096;

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("enabled", &self.enabled).finish()
    }
}

impl Authenticator {
    /// An authenticator over the catalog's tokens; `enabled = false` allows everything.
    pub fn new(catalog: Arc<Catalog>, enabled: bool) -> Self {
        Self::with_time(catalog, enabled, Arc::new(SystemTime))
    }

    /// As [`Authenticator::new`] with a clock (expiry tests).
    pub fn with_time(catalog: Arc<Catalog>, enabled: bool, time: Arc<dyn TimeProvider>) -> Self {
        Self {
            catalog,
            enabled,
            time,
            verified: Arc::new(Mutex::new(HashMap::new())),
            recovery: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether authentication is enforced.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents `token` (already extracted from the request). With auth off, anyone is
    /// [`Principal::Open`].
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal::Open);
        }
        self.verify(token.ok_or(AuthError::Missing)?).map(Principal::Token)
    }

    /// Verify a token against the catalog whether or not auth is enforced (token
    /// management needs a real admin token even on a server without auth).
    pub fn verify(&self, token: &str) -> Result<Arc<TokenInfo>, AuthError> {
        let digest = hash_token(token);
        let cached = self.verified.lock().get(&digest).cloned();
        let info = match cached.and_then(|(id, hash)| self.catalog.token_by_id(id).filter(|t| t.hash == hash)) {
            Some(info) => info,
            None => {
                let info = self.catalog.tokens().into_iter().find(|t| matches(t, token)).ok_or(AuthError::Invalid)?;
                let mut verified = self.verified.lock();
                if verified.len() >= VERIFIED_CACHE_LIMIT {
                    verified.clear();
                }
                verified.insert(digest, (info.id, info.hash.clone()));
                info
            }
        };
        if let Some(at) = info.expires_at
            && self.time.now_ns() >= at
        {
            return Err(AuthError::Expired { name: info.name.clone(), at: crate::time::format_rfc3339(at) });
        }
        Ok(Arc::new(info))
    }

    /// Check an `Authorization` header value.
    pub fn check_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal::Open);
        }
        let token = token_from_header(header.ok_or(AuthError::Missing)?)?;
        self.authenticate(Some(&token))
    }

    /// Token management (create, list, delete): needs an admin token once one exists, even
    /// with `--without-auth`, so a development server cannot mint credentials for anyone.
    /// A server without auth and without admin tokens lets anyone manage tokens.
    pub fn require_token_admin(&self, token: Option<&str>, what: &str) -> Result<(), AuthError> {
        if !self.enabled && !self.has_admin_token() {
            return Ok(());
        }
        let info = self.verify(token.ok_or(AuthError::Missing)?)?;
        Principal::Token(info).require_admin(what)
    }

    /// Create a token and return it with its clear text (shown once).
    pub async fn create_token(&self, new: NewToken) -> catalog::Result<(TokenInfo, String)> {
        validate_token_name(&new.name)?;
        if new.admin && !new.permissions.is_empty() {
            return Err(catalog::Error::InvalidToken(
                "an admin token may do everything: give --admin or --permission, not both".to_string(),
            ));
        }
        if !new.admin && new.name == ADMIN_TOKEN_NAME {
            return Err(catalog::Error::InvalidToken(format!("the name {ADMIN_TOKEN_NAME:?} is the admin token's")));
        }
        if !new.admin && new.permissions.is_empty() {
            return Err(catalog::Error::InvalidToken(
                "a token needs --admin or at least one --permission (e.g. db:sensors:read,write)".to_string(),
            ));
        }
        let now = self.time.now_ns();
        let expires_at = match new.expiry {
            None => None,
            Some(d) if d.is_zero() => {
                return Err(catalog::Error::InvalidToken("an expiry must be longer than zero".to_string()));
            }
            Some(d) => Some(
                i64::try_from(d.as_nanos())
                    .ok()
                    .and_then(|d| now.checked_add(d))
                    .ok_or_else(|| catalog::Error::InvalidToken(format!("expiry {d:?} is too far away")))?,
            ),
        };
        let token = generate_token();
        let info = self.salted(new.name, &token, new.admin, new.permissions, expires_at);
        let info = self.catalog.add_token(info).await?;
        Ok((info, token))
    }

    /// Create an admin token named `name` and return its clear text (shown once).
    pub async fn create_admin_token(&self, name: &str) -> catalog::Result<String> {
        self.create_token(NewToken { name: name.to_string(), admin: true, ..NewToken::default() })
            .await
            .map(|(_, token)| token)
    }

    /// Register a known clear-text token as an admin token (operator-supplied bootstrap).
    pub async fn register_admin_token(&self, name: &str, token: &str) -> catalog::Result<()> {
        let info = self.salted(name.to_string(), token, true, Vec::new(), None);
        self.catalog.add_token(info).await.map(|_| ())
    }

    /// A new token record for `token` with a fresh salt (its id is assigned by the catalog).
    fn salted(
        &self,
        name: String,
        token: &str,
        admin: bool,
        permissions: Vec<Permission>,
        expires_at: Option<i64>,
    ) -> TokenInfo {
        let salt = random_hex(16);
        TokenInfo {
            id: 0,
            name,
            hash: salted_hash(&salt, token),
            salt: Some(salt),
            created_at: self.time.now_ns(),
            admin,
            permissions,
            expires_at,
        }
    }

    /// Give the bootstrap admin token ([`ADMIN_TOKEN_NAME`]) a new secret (creating it if
    /// it is gone); the old secret stops working at once.
    pub async fn regenerate_admin_token(&self) -> catalog::Result<(TokenInfo, String)> {
        let token = generate_token();
        let info = self.salted(ADMIN_TOKEN_NAME.to_string(), &token, true, Vec::new(), None);
        let salt = info.salt.clone().unwrap_or_default();
        match self.catalog.replace_token_secret(ADMIN_TOKEN_NAME, salt, info.hash.clone()).await {
            Ok(info) => Ok((info, token)),
            Err(catalog::Error::TokenNotFound(_)) => Ok((self.catalog.add_token(info).await?, token)),
            Err(e) => Err(e),
        }
    }

    /// Delete a token by name; it is refused from its next request on. The bootstrap admin
    /// token cannot be deleted (regenerate it instead), so a server always has a way in.
    pub async fn delete_token(&self, name: &str) -> catalog::Result<TokenInfo> {
        if name == ADMIN_TOKEN_NAME {
            return Err(catalog::Error::InvalidToken(format!(
                "the admin token {ADMIN_TOKEN_NAME:?} cannot be deleted;                  renew its secret with `weir create token --admin --regenerate`"
            )));
        }
        let info = self.catalog.delete_token(name).await?;
        self.verified.lock().retain(|_, (id, _)| *id != info.id);
        Ok(info)
    }

    /// Every token, by name, without secrets.
    pub fn list_tokens(&self) -> Vec<TokenSummary> {
        let now = self.time.now_ns();
        let mut out: Vec<TokenSummary> = self
            .catalog
            .tokens()
            .into_iter()
            .map(|t| TokenSummary {
                id: t.id,
                name: t.name,
                admin: t.admin,
                permissions: t.permissions.iter().map(ToString::to_string).collect(),
                created_at: crate::time::format_rfc3339(t.created_at),
                expiry: t.expires_at.map(crate::time::format_rfc3339),
                expired: t.expires_at.is_some_and(|e| now >= e),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether an admin token exists.
    pub fn has_admin_token(&self) -> bool {
        self.catalog.has_admin_token()
    }

    /// Make a fresh recovery secret: whoever can read it (the server writes it to a file
    /// only its user can read) may regenerate the admin token without knowing it.
    pub fn new_recovery_secret(&self) -> String {
        let secret = format!("weir-recovery_{}", random_hex(32));
        *self.recovery.lock() = Some(hash_token(&secret));
        secret
    }

    /// Whether `secret` is the current recovery secret.
    pub fn check_recovery_secret(&self, secret: &str) -> bool {
        let want = self.recovery.lock().clone();
        want.is_some_and(|w| constant_time_eq(w.as_bytes(), hash_token(secret.trim()).as_bytes()))
    }
}

fn validate_token_name(name: &str) -> catalog::Result<()> {
    let bad = |why: &str| Err(catalog::Error::InvalidToken(format!("invalid token name {name:?}: {why}")));
    if name.trim().is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_TOKEN_NAME_LEN {
        return bad(&format!("longer than {MAX_TOKEN_NAME_LEN} bytes"));
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    Ok(())
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

    async fn authenticator() -> (Authenticator, Arc<crate::time::MockTime>, Arc<Catalog>) {
        let catalog = Arc::new(Catalog::load(crate::storage::Storage::in_memory()).await.unwrap());
        let time = Arc::new(crate::time::MockTime::new(1_000_000_000_000));
        let auth = Authenticator::with_time(Arc::clone(&catalog), true, time.clone());
        (auth, time, catalog)
    }

    #[tokio::test]
    async fn tokens_are_stored_salted_and_verified() {
        let (auth, _, catalog) = authenticator().await;
        let a = auth.create_admin_token("a").await.unwrap();
        let stored = catalog.tokens();
        let salt = stored[0].salt.clone().unwrap();
        assert_eq!(stored[0].hash, salted_hash(&salt, &a));
        assert_ne!(stored[0].hash, hash_token(&a), "the plain digest must not be stored");
        // Verified twice: once by scanning, once from memory.
        for _ in 0..2 {
            assert!(auth.authenticate(Some(&a)).unwrap().is_admin());
        }
        assert_eq!(auth.authenticate(Some("apiv3_nope")).unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
    }

    #[tokio::test]
    async fn unsalted_tokens_from_older_catalogs_still_work() {
        let (auth, _, catalog) = authenticator().await;
        let old = "apiv3_legacy";
        catalog
            .add_token(TokenInfo {
                id: 0,
                name: "legacy".into(),
                hash: hash_token(old),
                salt: None,
                created_at: 0,
                admin: true,
                permissions: vec![],
                expires_at: None,
            })
            .await
            .unwrap();
        assert!(auth.authenticate(Some(old)).unwrap().is_admin());
    }

    #[tokio::test]
    async fn resource_tokens_get_exactly_their_permissions() {
        let (auth, _, _) = authenticator().await;
        let (_, t) = auth
            .create_token(NewToken {
                name: "sensors-rw".into(),
                permissions: vec!["db:sensors:read,write".parse().unwrap(), "db:fleet:read".parse().unwrap()],
                ..NewToken::default()
            })
            .await
            .unwrap();
        let p = auth.authenticate(Some(&t)).unwrap();
        assert!(!p.is_admin());
        assert!(p.allows_db("sensors", Action::Write));
        assert!(p.allows_db("fleet", Action::Read));
        assert!(!p.allows_db("fleet", Action::Write));
        assert!(!p.allows_db("other", Action::Read));
        assert!(p.sees_db("fleet") && !p.sees_db("other"));
        let e = p.require_admin("create a database").unwrap_err();
        assert!(e.is_forbidden());
        assert!(e.to_string().contains("sensors-rw") && e.to_string().contains("db:fleet:read"), "{e}");
        assert!(p.require_system("metrics").is_err());
        let (_, sys) = auth
            .create_token(NewToken {
                name: "prom".into(),
                permissions: vec!["system:metrics:read".parse().unwrap()],
                ..NewToken::default()
            })
            .await
            .unwrap();
        let p = auth.authenticate(Some(&sys)).unwrap();
        assert!(p.require_system("metrics").is_ok());
        assert!(!p.allows_db("sensors", Action::Read));
    }

    #[tokio::test]
    async fn expired_deleted_and_regenerated_tokens_are_refused_at_once() {
        let (auth, time, _) = authenticator().await;
        let admin = auth.create_admin_token(ADMIN_TOKEN_NAME).await.unwrap();
        let (_, short) = auth
            .create_token(NewToken {
                name: "short".into(),
                permissions: vec!["db:*:read".parse().unwrap()],
                expiry: Some(Duration::from_secs(60)),
                ..NewToken::default()
            })
            .await
            .unwrap();
        let (_, doomed) = auth
            .create_token(NewToken {
                name: "doomed".into(),
                permissions: vec!["db:*:read".parse().unwrap()],
                ..NewToken::default()
            })
            .await
            .unwrap();
        assert!(auth.authenticate(Some(&short)).is_ok());
        assert!(auth.authenticate(Some(&doomed)).is_ok());
        time.set(1_000_000_000_000 + 60_000_000_000);
        assert!(matches!(auth.authenticate(Some(&short)), Err(AuthError::Expired { .. })));
        assert!(auth.list_tokens().iter().any(|t| t.name == "short" && t.expired));
        auth.delete_token("doomed").await.unwrap();
        assert_eq!(auth.authenticate(Some(&doomed)).unwrap_err(), AuthError::Invalid);
        assert!(auth.delete_token(ADMIN_TOKEN_NAME).await.is_err(), "the bootstrap admin token stays");
        let (_, renewed) = auth.regenerate_admin_token().await.unwrap();
        assert_eq!(auth.authenticate(Some(&admin)).unwrap_err(), AuthError::Invalid);
        assert!(auth.authenticate(Some(&renewed)).unwrap().is_admin());
    }

    #[tokio::test]
    async fn bad_token_requests_are_refused() {
        let (auth, _, _) = authenticator().await;
        let perm: Permission = "db:a:read".parse().unwrap();
        for (new, says) in [
            (NewToken { name: "".into(), admin: true, ..NewToken::default() }, "empty"),
            (NewToken { name: "x".into(), ..NewToken::default() }, "at least one --permission"),
            (
                NewToken { name: ADMIN_TOKEN_NAME.into(), permissions: vec![perm.clone()], ..NewToken::default() },
                "the admin token's",
            ),
            (
                NewToken { name: "x".into(), admin: true, permissions: vec![perm.clone()], ..NewToken::default() },
                "not both",
            ),
            (
                NewToken {
                    name: "x".into(),
                    permissions: vec![perm],
                    expiry: Some(Duration::ZERO),
                    ..NewToken::default()
                },
                "longer than zero",
            ),
        ] {
            let e = auth.create_token(new).await.unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        auth.create_admin_token("dup").await.unwrap();
        assert!(auth.create_admin_token("dup").await.unwrap_err().to_string().contains("already exists"));
    }

    #[tokio::test]
    async fn recovery_secret_is_checked() {
        let (auth, _, _) = authenticator().await;
        assert!(!auth.check_recovery_secret("anything"));
        let s = auth.new_recovery_secret();
        assert!(auth.check_recovery_secret(&s));
        assert!(auth.check_recovery_secret(&format!("{s}\n")));
        assert!(!auth.check_recovery_secret("weir-recovery_0"));
        let s2 = auth.new_recovery_secret();
        assert!(!auth.check_recovery_secret(&s), "a new secret replaces the old");
        assert!(auth.check_recovery_secret(&s2));
    }
}
