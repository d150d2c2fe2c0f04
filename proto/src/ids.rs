//! Validated identifier newtypes: user ids, node ids, room ids and session ids.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest user or node id, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 128;
/// Longest session id, in bytes of UTF-8.
pub const MAX_SESSION_BYTES: usize = 256;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("contains whitespace or a control character")]
    BadChar,
}

fn check_id(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $max:expr, $check:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                ($check)(&s, $max)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(|e| serde::de::Error::custom(format_args!("{} {e}", stringify!($name))))
            }
        }
    };
}

id_type!(
    /// A user id: 1 to 128 bytes of UTF-8, no whitespace, no control characters.
    UserId,
    MAX_ID_BYTES,
    check_id
);
id_type!(
    /// A signal node id, same rules as a user id.
    NodeId,
    MAX_ID_BYTES,
    check_id
);
id_type!(
    /// A room id (contract section 8), same rules as a user id.
    RoomId,
    MAX_ID_BYTES,
    check_id
);
id_type!(
    /// A ROAP session id: 1 to 256 bytes, no control characters (spaces allowed).
    SessionId,
    MAX_SESSION_BYTES,
    |s: &str, max: usize| {
        if s.is_empty() {
            Err(IdError::Empty)
        } else if s.len() > max {
            Err(IdError::TooLong { max })
        } else if s.chars().any(char::is_control) {
            Err(IdError::BadChar)
        } else {
            Ok(())
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("ünïcödé-用户").is_ok());
        assert_eq!(UserId::new(""), Err(IdError::Empty));
        assert_eq!(UserId::new("a b"), Err(IdError::BadChar));
        assert_eq!(UserId::new("a\tb"), Err(IdError::BadChar));
        assert_eq!(UserId::new("a\u{7}b"), Err(IdError::BadChar));
        assert_eq!(UserId::new("a\u{a0}b"), Err(IdError::BadChar));
        assert!(UserId::new("x".repeat(128)).is_ok());
        assert_eq!(
            UserId::new("x".repeat(129)),
            Err(IdError::TooLong { max: 128 })
        );
        // 128 bytes, not 128 characters.
        assert!(UserId::new("é".repeat(65)).is_err());
    }

    #[test]
    fn session_id_allows_spaces_not_controls() {
        assert!(SessionId::new("s 1").is_ok());
        assert!(SessionId::new("s\n1").is_err());
        assert!(SessionId::new("").is_err());
    }
}
