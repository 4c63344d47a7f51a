//! HTTP basic authentication against `basic_auth_users` (bcrypt hashes), as Prometheus
//! exporters do it.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so it never runs on the event
//! loop's thread: each check runs on tokio's blocking pool, and a name and password that passed
//! are remembered (by a SHA-256 of name, password and hash, never the password itself) so that
//! a scrape every few seconds costs one hash lookup. An unknown name is checked against a
//! configured hash anyway, so the answer takes as long as for a known one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper::header::HeaderValue;

use super::web_config::WebConfig;

/// Verified credentials kept; past this the memory is cleared and refilled.
const REMEMBERED: usize = 256;

/// Credentials that passed bcrypt, shared by every connection.
#[derive(Default)]
pub struct Verified {
    keys: Mutex<HashSet<[u8; 32]>>,
}

impl Verified {
    fn contains(&self, key: &[u8; 32]) -> bool {
        self.lock().contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut keys = self.lock();
        if keys.len() >= REMEMBERED {
            keys.clear();
        }
        keys.insert(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a request with this `Authorization` header may be answered.
pub async fn allowed(
    config: &WebConfig,
    verified: &Arc<Verified>,
    header: Option<&HeaderValue>,
) -> bool {
    let Some(any_hash) = config.users.values().next() else {
        // No users configured: no authentication.
        return true;
    };
    let Some((user, password)) = header.and_then(basic_credentials) else {
        return false;
    };
    let (hash, known) = match config.users.get(&user) {
        Some(h) => (h.clone(), true),
        None => (any_hash.clone(), false),
    };
    let key = cache_key(&user, &password, &hash);
    if known && verified.contains(&key) {
        return true;
    }
    // Remembered by the blocking task itself: on a slow host a client may give up (its scrape
    // timeout) before bcrypt finishes, and its next attempt must not start over.
    let remember = verified.clone();
    tokio::task::spawn_blocking(move || {
        let ok = bcrypt::verify(password, &hash).unwrap_or(false) && known;
        if ok {
            remember.insert(key);
        }
        ok
    })
    .await
    .unwrap_or(false)
}

/// `Basic base64(user:password)` -> (user, password).
pub fn basic_credentials(h: &HeaderValue) -> Option<(String, String)> {
    let v = h.to_str().ok()?;
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    // Lengths first, so that no two (user, password, hash) triples give the same bytes.
    for part in [user, password, hash] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn header(user: &str, password: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    fn config(users: &[(&str, &str)]) -> WebConfig {
        let mut yaml = String::from("basic_auth_users:\n");
        for (u, p) in users {
            // Cost 4, the lowest: fast tests.
            let h = bcrypt::hash(p, 4).unwrap();
            yaml.push_str(&format!("  {u}: '{h}'\n"));
        }
        WebConfig::parse(Path::new("/etc/web.yml"), &yaml).unwrap()
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_gets_in() {
        let c = config(&[("prometheus", "s3cret:with colon")]);
        let v = Arc::new(Verified::default());
        assert!(allowed(&c, &v, Some(&header("prometheus", "s3cret:with colon"))).await);
        assert!(!allowed(&c, &v, Some(&header("prometheus", "wrong"))).await);
        assert!(!allowed(&c, &v, Some(&header("nobody", "s3cret:with colon"))).await);
        assert!(!allowed(&c, &v, None).await);
        let bearer = HeaderValue::from_static("Bearer abc");
        assert!(!allowed(&c, &v, Some(&bearer)).await);
        // The pass was remembered, and only it.
        assert_eq!(v.lock().len(), 1);
    }

    #[tokio::test]
    async fn no_users_means_no_authentication() {
        let c = WebConfig::parse(Path::new("/etc/web.yml"), "").unwrap();
        assert!(allowed(&c, &Arc::new(Verified::default()), None).await);
    }

    #[test]
    fn credentials_split_at_the_first_colon() {
        assert_eq!(
            basic_credentials(&header("a", "b:c")),
            Some(("a".into(), "b:c".into()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("basic YTpi")),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Basic !!")),
            None
        );
    }
}
