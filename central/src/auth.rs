//! Who is logging in: the user id from `?user=` (dev login) or from a Bearer JWT (HS256).

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use signal_proto::UserId;

use crate::error::LoginError;

/// Seconds of clock skew tolerated on `exp`.
pub const JWT_LEEWAY_SECS: u64 = 5;

/// Verifies login JWTs: HS256, signed with the application backend's shared secret, `sub` =
/// user id, `exp` required and enforced.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier(HS256)")
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Longest Authorization header looked at.
const MAX_JWT_BYTES: usize = 8 * 1024;

impl JwtVerifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The user a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<UserId, LoginError> {
        if token.len() > MAX_JWT_BYTES {
            return Err(LoginError::Unauthorized("token is too long".into()));
        }
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            LoginError::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".to_owned(),
                ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                ErrorKind::InvalidAlgorithm => "token must be signed with HS256".to_owned(),
                ErrorKind::MissingRequiredClaim(c) => format!("token lacks the `{c}` claim"),
                _ => format!("token is invalid: {e}"),
            })
        })?;
        UserId::new(data.claims.sub)
            .map_err(|e| LoginError::BadUser(format!("the token's `sub` (user id) {e}")))
    }
}

/// The user logging in. With a verifier (JWT mode) the Bearer token decides and a `user`
/// parameter, if any, must name the same user; without one, `user` is the user id.
pub fn authenticate(
    jwt: Option<&JwtVerifier>,
    user_param: Option<&str>,
    authorization: Option<&str>,
) -> Result<UserId, LoginError> {
    let Some(jwt) = jwt else {
        let user = user_param
            .ok_or_else(|| LoginError::BadUser("missing query parameter `user`".into()))?;
        return UserId::new(user).map_err(|e| LoginError::BadUser(format!("user id {e}")));
    };
    let header = authorization.ok_or_else(|| {
        LoginError::Unauthorized("missing `Authorization: Bearer <JWT>` header".into())
    })?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            LoginError::Unauthorized("Authorization header must be `Bearer <JWT>`".into())
        })?;
    let user = jwt.verify(token)?;
    if let Some(p) = user_param {
        if p != user.as_str() {
            return Err(LoginError::Unauthorized(
                "the `user` parameter does not match the token's subject".into(),
            ));
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use signal_proto::ticket::unix_now;

    fn jwt(secret: &[u8], alg: Algorithm, claims: serde_json::Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn status(e: LoginError) -> u16 {
        e.status().as_u16()
    }

    #[test]
    fn dev_login_takes_the_user_parameter() {
        assert_eq!(
            authenticate(None, Some("alice"), None).unwrap().as_str(),
            "alice"
        );
        assert_eq!(status(authenticate(None, None, None).unwrap_err()), 400);
        assert_eq!(status(authenticate(None, Some(""), None).unwrap_err()), 400);
        assert_eq!(
            status(authenticate(None, Some("a b"), None).unwrap_err()),
            400
        );
        let long = "x".repeat(129);
        assert_eq!(
            status(authenticate(None, Some(&long), None).unwrap_err()),
            400
        );
    }

    #[test]
    fn jwt_login() {
        let v = JwtVerifier::new(b"app-secret");
        let exp = unix_now() + 300;
        let good = format!(
            "Bearer {}",
            jwt(
                b"app-secret",
                Algorithm::HS256,
                json!({"sub":"bob","exp":exp})
            )
        );
        let a = |user: Option<&str>, auth: Option<&str>| authenticate(Some(&v), user, auth);
        assert_eq!(a(None, Some(&good)).unwrap().as_str(), "bob");
        assert_eq!(a(Some("bob"), Some(&good)).unwrap().as_str(), "bob");
        assert_eq!(status(a(Some("eve"), Some(&good)).unwrap_err()), 401);
        // Without a token the user parameter is not enough.
        assert_eq!(status(a(Some("bob"), None).unwrap_err()), 401);
        assert_eq!(status(a(None, Some("Basic abc")).unwrap_err()), 401);
        assert_eq!(status(a(None, Some("Bearer ")).unwrap_err()), 401);
        assert_eq!(status(a(None, Some("Bearer not.a.jwt")).unwrap_err()), 401);
        let expired = jwt(
            b"app-secret",
            Algorithm::HS256,
            json!({"sub":"bob","exp":unix_now() - 120}),
        );
        let e = a(None, Some(&format!("Bearer {expired}"))).unwrap_err();
        assert_eq!(e.to_string(), "token expired");
        assert_eq!(status(e), 401);
        let forged = jwt(b"other", Algorithm::HS256, json!({"sub":"bob","exp":exp}));
        let e = a(None, Some(&format!("Bearer {forged}"))).unwrap_err();
        assert_eq!(e.to_string(), "token signature is invalid");
        let no_exp = jwt(b"app-secret", Algorithm::HS256, json!({"sub":"bob"}));
        assert_eq!(
            status(a(None, Some(&format!("Bearer {no_exp}"))).unwrap_err()),
            401
        );
        let hs512 = jwt(
            b"app-secret",
            Algorithm::HS512,
            json!({"sub":"bob","exp":exp}),
        );
        assert_eq!(
            status(a(None, Some(&format!("Bearer {hs512}"))).unwrap_err()),
            401
        );
        let bad_sub = jwt(
            b"app-secret",
            Algorithm::HS256,
            json!({"sub":"a b","exp":exp}),
        );
        assert_eq!(
            status(a(None, Some(&format!("Bearer {bad_sub}"))).unwrap_err()),
            400
        );
    }
}
