//! Socket authentication: HS256 JWTs (`sub` = user, `tenant`, `exp`) signed with the tenant's
//! secret. The algorithm is pinned, so `alg: none` or an RSA/HMAC confusion never verifies.

use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub exp: u64,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub tenant: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm must be HS256")]
    WrongAlgorithm,
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token user id must be 1 to 128 bytes with no NUL, not beginning with U+0001")]
    BadUser,
}

/// The tenants' secrets, keyed by tenant name.
pub struct Keys {
    tenants: HashMap<String, (EncodingKey, DecodingKey)>,
}

impl Keys {
    pub fn new(secrets: &[(String, String)]) -> Keys {
        let tenants = secrets
            .iter()
            .map(|(t, s)| (t.clone(), (EncodingKey::from_secret(s.as_bytes()), DecodingKey::from_secret(s.as_bytes()))))
            .collect();
        Keys { tenants }
    }

    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Verifies a token. The tenant is read from the unverified claims only to pick the key;
    /// nothing is trusted until the signature checks out with that tenant's secret.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::WrongAlgorithm);
        }
        let tenant = unverified_tenant(token).ok_or(AuthError::Malformed)?;
        let (_, key) = self.tenants.get(&tenant).ok_or_else(|| AuthError::UnknownTenant(tenant.clone()))?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
            _ => AuthError::Malformed,
        })?;
        let c = data.claims;
        if c.tenant != tenant {
            return Err(AuthError::BadSignature);
        }
        if !crate::core::catalogue::valid_user_id(&c.sub) {
            return Err(AuthError::BadUser);
        }
        Ok(Principal { tenant: c.tenant, user: c.sub })
    }

    /// Signs a token for `user` of `tenant`, valid for `ttl_secs` from `now_secs`.
    pub fn mint(&self, tenant: &str, user: &str, now_secs: u64, ttl_secs: u64) -> Option<String> {
        let (key, _) = self.tenants.get(tenant)?;
        mint_with(key, tenant, user, now_secs + ttl_secs)
    }
}

/// The tenants' API keys. A presented key is compared with every tenant's key in constant time
/// (no early exit on the first differing byte, nor on the first matching tenant), so timing
/// tells an attacker nothing about any key. Keys are never logged or printed.
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl ApiKeys {
    pub fn new(keys: &[(String, String)]) -> ApiKeys {
        ApiKeys { keys: keys.iter().map(|(t, k)| (t.clone(), k.as_bytes().to_vec())).collect() }
    }

    /// The tenant whose key this is.
    pub fn tenant_of(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (tenant, key) in &self.keys {
            if constant_time_eq(presented.as_bytes(), key) {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} tenants, keys redacted)", self.keys.len())
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    // `black_box` keeps the compiler from turning the loop back into an early exit.
    std::hint::black_box(diff) == 0
}

/// Signs a token with a raw secret (used by the load generator and tests).
pub fn mint_with_secret(secret: &str, tenant: &str, user: &str, exp: u64) -> String {
    mint_with(&EncodingKey::from_secret(secret.as_bytes()), tenant, user, exp).expect("HS256 signing cannot fail")
}

fn mint_with(key: &EncodingKey, tenant: &str, user: &str, exp: u64) -> Option<String> {
    let claims = Claims { sub: user.to_string(), tenant: tenant.to_string(), exp };
    encode(&Header::new(Algorithm::HS256), &claims, key).ok()
}

fn unverified_tenant(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("tenant")?.as_str().map(str::to_string)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> Keys {
        Keys::new(&[("a".into(), "secret-of-tenant-a".into()), ("b".into(), "secret-of-tenant-b".into())])
    }

    #[test]
    fn api_keys_find_only_their_own_tenant() {
        let k = ApiKeys::new(&[("a".into(), "key-of-tenant-a-123".into()), ("b".into(), "key-of-tenant-b-456".into())]);
        assert_eq!(k.tenant_of("key-of-tenant-a-123"), Some("a"));
        assert_eq!(k.tenant_of("key-of-tenant-b-456"), Some("b"));
        assert_eq!(k.tenant_of("key-of-tenant-a-12"), None, "a prefix is not the key");
        assert_eq!(k.tenant_of("key-of-tenant-a-1234"), None, "nor is a longer string");
        assert_eq!(k.tenant_of(""), None);
        assert!(!format!("{k:?}").contains("key-of"), "keys never reach a log line");
    }

    #[test]
    fn tokens_verify_only_with_their_tenants_secret() {
        let k = keys();
        let now = now_secs();
        let t = k.mint("a", "alice", now, 60).unwrap();
        assert_eq!(k.verify(&t), Ok(Principal { tenant: "a".into(), user: "alice".into() }));
        // Signed with b's secret but claiming tenant a.
        let forged = mint_with_secret("secret-of-tenant-b", "a", "alice", now + 60);
        assert_eq!(k.verify(&forged), Err(AuthError::BadSignature));
        assert_eq!(k.verify(&mint_with_secret("secret-of-tenant-a", "a", "alice", now - 3600)), Err(AuthError::Expired));
        assert_eq!(k.verify(&mint_with_secret("x", "zzz", "alice", now + 60)), Err(AuthError::UnknownTenant("zzz".into())));
        assert_eq!(k.verify("not.a.token"), Err(AuthError::Malformed));
        // alg: none, with the real claims and no signature.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&format!(r#"{{"sub":"alice","tenant":"a","exp":{}}}"#, now + 60)));
        assert!(matches!(k.verify(&none), Err(AuthError::Malformed | AuthError::WrongAlgorithm)));
        let hs512 = format!("{}.{}.c2ln", b64(r#"{"alg":"HS512","typ":"JWT"}"#), b64(&format!(r#"{{"sub":"alice","tenant":"a","exp":{}}}"#, now + 60)));
        assert_eq!(k.verify(&hs512), Err(AuthError::WrongAlgorithm));
    }
}
