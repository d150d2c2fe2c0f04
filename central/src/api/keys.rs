//! The server API's keys (`--api-key`, comma-separated so that a new key can be added before
//! the old one is removed): a `Bearer` token is checked against every key in constant time.

use subtle::ConstantTimeEq;

/// Why a request's credentials are refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("missing Authorization: Bearer <api key>")]
    Missing,
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    #[error("unknown api key")]
    Wrong,
}

/// The accepted keys. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// Parses `--api-key`: comma-separated, surrounding blanks ignored. `None` when empty.
    pub fn parse(list: &str) -> Result<Option<ApiKeys>, String> {
        let keys: Vec<Vec<u8>> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.iter().any(|k| k.len() < 16) {
            return Err("every key must be at least 16 characters long".into());
        }
        Ok((!keys.is_empty()).then_some(ApiKeys(keys)))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `Authorization` header value. Every key is compared (no early exit), each in
    /// constant time, so the timing tells nothing about which key or how much of it matched.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), KeyError> {
        let value = authorization.ok_or(KeyError::Missing)?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(KeyError::NotBearer)?;
        let mut found = subtle::Choice::from(0u8);
        for k in &self.0 {
            found |= k.as_slice().ct_eq(token);
        }
        if bool::from(found) {
            Ok(())
        } else {
            Err(KeyError::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rotation_and_refusals() {
        let keys = ApiKeys::parse(" old-key-0123456789 , new-key-0123456789,")
            .unwrap()
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.check(Some(b"Bearer old-key-0123456789")).is_ok());
        assert!(keys.check(Some(b"Bearer new-key-0123456789")).is_ok());
        assert_eq!(
            keys.check(Some(b"Bearer new-key-012345678")),
            Err(KeyError::Wrong)
        );
        assert_eq!(
            keys.check(Some(b"Basic new-key-0123456789")),
            Err(KeyError::NotBearer)
        );
        assert_eq!(keys.check(None), Err(KeyError::Missing));
        assert!(ApiKeys::parse("short").is_err());
        assert_eq!(ApiKeys::parse(" , ").unwrap(), None);
    }
}
