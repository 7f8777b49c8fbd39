//! Credentials: API tokens, passwords and password logins (rate-limited). Who an
//! operation runs for is `context::Ctx`, built from these by each interface.

use hostel_store::{Timestamp, TokenRecord, UserRecord};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a request without a token is refused.
pub const NO_TOKEN: &str =
    "missing or wrong API token: send `Authorization: Bearer TOKEN` (the CLI \
                            reads it from its client config)";

/// A token as given to its owner: `hostel-<id>.<secret>`. Only the secret's SHA-256 is
/// stored.
pub fn format_token(id: &str, secret: &str) -> String {
    format!("hostel-{id}.{secret}")
}

pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("hostel-")?;
    let (id, secret) = rest.split_once('.')?;
    if id.is_empty() || secret.len() < 32 {
        return None;
    }
    Some((id, secret))
}

pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the OS gives random bytes");
    hex::encode(b)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison, so a secret cannot be guessed byte by byte from timings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first two fields of an OpenSSH public key line: type and base64 body (what
/// identifies a key, whatever its comment).
pub fn ssh_key_id(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A browser session ends this long after it was last used...
pub const SESSION_IDLE: time::Duration = time::Duration::hours(1);
/// ...and this long after its login, whatever its use.
pub const SESSION_LIFETIME: time::Duration = time::Duration::hours(12);

/// Why a token is not accepted, said plainly (never echoing the token).
pub fn check_token(t: &TokenRecord, secret: &str, now: Timestamp) -> Result<(), &'static str> {
    if !same(hash_secret(secret).as_bytes(), t.secret_hash.as_bytes()) {
        return Err("wrong API token");
    }
    token_live(t, now)
}

/// Why a token (whatever its secret) no longer holds: revoked, expired, or a browser
/// session idle too long. What opened with it (an event stream, a console) asks this
/// again as it goes on.
pub fn token_live(t: &TokenRecord, now: Timestamp) -> Result<(), &'static str> {
    if t.session.is_some() {
        if t.revoked_at.is_some() {
            return Err("this session was ended (logged out or revoked): log in again");
        }
        if t.expires_at.is_some_and(|e| e <= now) {
            return Err("this session has reached its 12-hour limit: log in again");
        }
        let last = t.last_used_at.unwrap_or(t.created_at);
        if last + SESSION_IDLE <= now {
            return Err("this session was idle for an hour and has ended: log in again");
        }
    }
    if t.revoked_at.is_some() {
        return Err("this API token was revoked: make a new one with `hostel login`");
    }
    if t.expires_at.is_some_and(|e| e <= now) {
        return Err("this API token has expired: make a new one with `hostel login`");
    }
    Ok(())
}

pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(user: &UserRecord, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Some(h) = &user.password_hash else {
        return false;
    };
    let Ok(parsed) = PasswordHash::new(h) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// As long as a real check, for names that have no user.
pub fn burn_password_check(password: &str) {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let h = DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default());
    if let Ok(parsed) = PasswordHash::new(h) {
        let _ = argon2::Argon2::default().verify_password(password.as_bytes(), &parsed);
    }
}

/// The longest password there can be: 1,024 characters of up to 4 bytes each.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// Checks a new password: long enough, not all one character, not the user's name.
pub fn check_password(user: &str, password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.chars().count() < 10 {
        return Err("the password is too weak: use at least 10 characters".into());
    }
    let first = password.chars().next().unwrap_or(' ');
    if password.chars().all(|c| c == first) || password.eq_ignore_ascii_case(user) {
        return Err(
            "the password is too weak: it is one repeated character or the user's name".into(),
        );
    }
    if password.chars().count() > 1024 || password.contains(['\n', '\r', '\0']) {
        return Err("the password must be one line of at most 1024 bytes".into());
    }
    Ok(())
}

/// Failed logins per account and per source address: after `MAX_FAILURES` within
/// `WINDOW`, further attempts are refused until the window has passed.
///
/// Bounded: at most `MAX_KEYS` accounts and addresses, each with its last
/// `MAX_FAILURES` failures; a key's text is cut to a name's length. When full, expired
/// entries go first, then the one whose last failure is oldest. Evicting a locked-out
/// account early would take `MAX_KEYS` other failed logins within its window, and the
/// request throttle (`throttle.rs`) lets through far fewer than that in `WINDOW`
/// (by default 5 a second for all addresses: 1,500 in 300 s), so a lock-out lasts its
/// whole window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(300);
pub const MAX_KEYS: usize = 10_000;

impl LoginLimiter {
    /// Seconds to wait if `key` is locked out.
    pub fn locked(&self, key: &str) -> Option<u64> {
        let m = self.failures.lock().unwrap();
        let recent: Vec<&Instant> = m
            .get(&crate::audit::short(key))?
            .iter()
            .filter(|t| t.elapsed() < WINDOW)
            .collect();
        if recent.len() >= MAX_FAILURES {
            let oldest = recent
                .into_iter()
                .min()
                .copied()
                .unwrap_or_else(Instant::now);
            Some(WINDOW.saturating_sub(oldest.elapsed()).as_secs().max(1))
        } else {
            None
        }
    }

    pub fn fail(&self, key: &str) {
        let key = crate::audit::short(key);
        let mut m = self.failures.lock().unwrap();
        if !m.contains_key(&key) && m.len() >= MAX_KEYS {
            m.retain(|_, v| v.back().is_some_and(|t| t.elapsed() < WINDOW));
            if m.len() >= MAX_KEYS {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, v)| v.back().copied())
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
        }
        let v = m.entry(key).or_default();
        v.push_back(Instant::now());
        while v.len() > MAX_FAILURES {
            v.pop_front();
        }
    }

    pub fn clear(&self, key: &str) {
        self.failures
            .lock()
            .unwrap()
            .remove(&crate::audit::short(key));
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let secret = new_secret();
        let t = format_token("tok-1", &secret);
        assert_eq!(parse_token(&t), Some(("tok-1", secret.as_str())));
        assert_eq!(parse_token("nonsense"), None);
        assert_eq!(parse_token("hostel-tok-1.short"), None);
        let mut rec = TokenRecord {
            id: "tok-1".into(),
            user_id: "u".into(),
            name: "n".into(),
            secret_hash: hash_secret(&secret),
            read_only: false,
            expires_at: Some(at("2030-01-01T00:00:00Z")),
            revoked_at: None,
            created_at: at("2026-01-01T00:00:00Z"),
            last_used_at: None,
            session: None,
        };
        assert!(check_token(&rec, &secret, at("2026-01-01T00:00:00Z")).is_ok());
        assert!(check_token(&rec, &new_secret(), at("2026-01-01T00:00:00Z"))
            .unwrap_err()
            .contains("wrong"));
        assert!(check_token(&rec, &secret, at("2031-01-01T00:00:00Z"))
            .unwrap_err()
            .contains("expired"));
        rec.revoked_at = Some(at("2026-01-01T00:00:00Z"));
        assert!(check_token(&rec, &secret, at("2026-01-01T00:00:00Z"))
            .unwrap_err()
            .contains("revoked"));
    }

    #[test]
    fn passwords_hash_verify_and_weak_ones_are_refused() {
        let h = hash_password("a long passphrase").unwrap();
        assert!(h.starts_with("$argon2"));
        let u = UserRecord {
            id: "u".into(),
            name: "alice".into(),
            password_hash: Some(h),
            is_admin: false,
            created_at: at("2026-01-01T00:00:00Z"),
        };
        assert!(verify_password(&u, "a long passphrase"));
        assert!(!verify_password(&u, "a long passphrasE"));
        for weak in ["", "short", "aaaaaaaaaaaa", "alicealice"] {
            assert!(check_password("alicealice", weak).is_err(), "{weak}");
        }
        assert!(check_password("alice", "correct horse battery").is_ok());
    }

    #[test]
    fn the_limiter_locks_after_five_failures() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES - 1 {
            l.fail("user:alice");
        }
        assert_eq!(l.locked("user:alice"), None);
        l.fail("user:alice");
        assert!(l.locked("user:alice").unwrap() > 0);
        assert_eq!(l.locked("user:bob"), None);
        l.clear("user:alice");
        assert_eq!(l.locked("user:alice"), None);
    }

    #[test]
    fn the_limiter_s_memory_is_bounded_and_still_locks_out() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES {
            l.fail("user:alice");
        }
        // A long name is kept at a name's length.
        l.fail(&format!("user:{}", "x".repeat(2_000_000)));
        for i in 0..MAX_KEYS + 100 {
            l.fail(&format!("user:guess-{i}"));
        }
        assert!(l.keys() <= MAX_KEYS);
        // The newest lock-outs are there (the oldest entries went first).
        for _ in 0..MAX_FAILURES {
            l.fail("user:bob");
        }
        assert!(l.locked("user:bob").is_some());
        assert!(l.keys() <= MAX_KEYS);
    }
}
