//! Who is logging in: the user id from `?user=` (dev login) or from a Bearer JWT (HS256).

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use signal_proto::UserId;

use crate::error::LoginError;

/// Default `--jwt-leeway-secs`: clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// What a login JWT must satisfy besides its HS256 signature, `sub` and `exp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRules {
    /// The `aud` it must carry (`None`: `aud` is not checked).
    pub audience: Option<String>,
    /// The `iss` it must carry (`None`: `iss` is not checked).
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Verifies login JWTs: HS256, signed with the application backend's shared secret, `sub` =
/// user id, `exp` required and enforced, `nbf` enforced when present, `aud`/`iss` checked when
/// configured; each refusal says why.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    rules: JwtRules,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("alg", &"HS256")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Longest Authorization header looked at.
const MAX_JWT_BYTES: usize = 8 * 1024;

impl JwtVerifier {
    pub fn new(secret: &[u8], rules: JwtRules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = rules.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        // Without a configured audience an `aud` claim is ignored (jsonwebtoken would refuse
        // every token that has one).
        validation.validate_aud = rules.audience.is_some();
        if let Some(aud) = &rules.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &rules.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            rules,
        }
    }

    /// The user a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<UserId, LoginError> {
        if token.len() > MAX_JWT_BYTES {
            return Err(self.refused("too_long", "token is too long".into()));
        }
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let (reason, message) = match e.kind() {
                ErrorKind::ExpiredSignature => ("expired", "token expired".to_owned()),
                ErrorKind::ImmatureSignature => (
                    "not_yet_valid",
                    "token is not valid yet (`nbf` is in the future)".to_owned(),
                ),
                ErrorKind::InvalidSignature => {
                    ("bad_signature", "token signature is invalid".to_owned())
                }
                ErrorKind::InvalidAlgorithm => (
                    "bad_algorithm",
                    "token must be signed with HS256".to_owned(),
                ),
                ErrorKind::MissingRequiredClaim(c) => {
                    ("missing_claim", format!("token lacks a valid `{c}` claim"))
                }
                ErrorKind::InvalidAudience => (
                    "wrong_audience",
                    format!(
                        "token audience (`aud`) is not {:?}",
                        self.rules.audience.as_deref().unwrap_or_default()
                    ),
                ),
                ErrorKind::InvalidIssuer => (
                    "wrong_issuer",
                    format!(
                        "token issuer (`iss`) is not {:?}",
                        self.rules.issuer.as_deref().unwrap_or_default()
                    ),
                ),
                ErrorKind::InvalidClaimFormat(c) => {
                    ("malformed", format!("token claim `{c}` is malformed"))
                }
                ErrorKind::Json(_) => (
                    "malformed",
                    "token claims are malformed (`sub` must be a string, `exp` a number)"
                        .to_owned(),
                ),
                _ => ("malformed", "token is malformed (not a JWT)".to_owned()),
            };
            self.refused(reason, message)
        })?;
        UserId::new(data.claims.sub)
            .map_err(|e| LoginError::BadUser(format!("the token's `sub` (user id) {e}")))
    }

    fn refused(&self, reason: &'static str, message: String) -> LoginError {
        crate::telemetry::jwt_refused(reason);
        LoginError::Unauthorized(message)
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
    fn audience_issuer_and_leeway() {
        let v = JwtVerifier::new(
            b"k",
            JwtRules {
                audience: Some("signal".into()),
                issuer: Some("https://app.example".into()),
                leeway_secs: 30,
            },
        );
        let now = unix_now();
        let tok = |claims: serde_json::Value| {
            v.verify(&jwt(b"k", Algorithm::HS256, claims))
                .map(|u| u.as_str().to_owned())
                .map_err(|e| e.to_string())
        };
        let good = json!({"sub":"bob","exp":now + 60,"aud":"signal","iss":"https://app.example"});
        assert_eq!(tok(good).unwrap(), "bob");
        let multi = json!({"sub":"bob","exp":now + 60,"aud":["other","signal"],"iss":"https://app.example"});
        assert_eq!(tok(multi).unwrap(), "bob");
        assert_eq!(
            tok(json!({"sub":"bob","exp":now + 60,"aud":"other","iss":"https://app.example"})),
            Err("token audience (`aud`) is not \"signal\"".into())
        );
        assert_eq!(
            tok(json!({"sub":"bob","exp":now + 60,"aud":"signal","iss":"https://evil"})),
            Err("token issuer (`iss`) is not \"https://app.example\"".into())
        );
        assert_eq!(
            tok(json!({"sub":"bob","exp":now + 60,"iss":"https://app.example"})),
            Err("token lacks a valid `aud` claim".into())
        );
        assert_eq!(
            tok(json!({"sub":"bob","exp":now + 60,"aud":"signal"})),
            Err("token lacks a valid `iss` claim".into())
        );
        // Within the leeway an expired token still passes; beyond it, not.
        let base = json!({"sub":"bob","aud":"signal","iss":"https://app.example"});
        let with_exp = |exp: u64| {
            let mut c = base.clone();
            c["exp"] = json!(exp);
            c
        };
        assert!(tok(with_exp(now - 10)).is_ok());
        assert_eq!(tok(with_exp(now - 60)), Err("token expired".into()));
        let mut bad_exp = base.clone();
        bad_exp["exp"] = json!("soon");
        assert_eq!(tok(bad_exp), Err("token lacks a valid `exp` claim".into()));
    }

    #[test]
    fn jwt_login() {
        let v = JwtVerifier::new(
            b"app-secret",
            JwtRules {
                leeway_secs: 5,
                ..JwtRules::default()
            },
        );
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
        let e = a(None, Some(&format!("Bearer {no_exp}"))).unwrap_err();
        assert_eq!(e.to_string(), "token lacks a valid `exp` claim");
        assert_eq!(status(e), 401);
        // Without --jwt-audience an `aud` claim is not looked at.
        let with_aud = jwt(
            b"app-secret",
            Algorithm::HS256,
            json!({"sub":"bob","exp":exp,"aud":"anything"}),
        );
        assert_eq!(
            a(None, Some(&format!("Bearer {with_aud}")))
                .unwrap()
                .as_str(),
            "bob"
        );
        let later = jwt(
            b"app-secret",
            Algorithm::HS256,
            json!({"sub":"bob","exp":exp,"nbf":unix_now() + 120}),
        );
        let e = a(None, Some(&format!("Bearer {later}"))).unwrap_err();
        assert!(e.to_string().contains("not valid yet"), "{e}");
        let e = a(None, Some("Bearer not.a.jwt")).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
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
