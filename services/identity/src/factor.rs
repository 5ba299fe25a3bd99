//! The MFA factors identity verifies: their names in its tables, errors and events, and the
//! RFC 8176 method (`amr`) each proves.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// An authenticator app's code.
    Totp,
    /// A WebAuthn credential's assertion.
    Passkey,
    /// A one-time recovery code.
    RecoveryCode,
    /// An administrator's enrolment pass (it lets a first method be added; it proves nothing
    /// at sign-in).
    EnrollmentPass,
}

impl Factor {
    pub const ALL: [Self; 4] = [Self::Totp, Self::Passkey, Self::RecoveryCode, Self::EnrollmentPass];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Passkey => "passkey",
            Self::RecoveryCode => "recovery_code",
            Self::EnrollmentPass => "enrollment_pass",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// RFC 8176: `otp` for a code (an app's or a recovery code), `hwk` for a key's proof of
    /// possession (a passkey); none for an enrolment pass, which is no second factor.
    pub const fn amr(self) -> Option<&'static str> {
        match self {
            Self::Totp | Self::RecoveryCode => Some("otp"),
            Self::Passkey => Some("hwk"),
            Self::EnrollmentPass => None,
        }
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_round_trip_only_a_passkey_proves_a_key_and_a_pass_proves_nothing() {
        for factor in Factor::ALL {
            assert_eq!(Factor::parse(factor.as_str()), Some(factor));
            assert_eq!(factor.amr() == Some("hwk"), factor == Factor::Passkey);
        }
        assert_eq!(Factor::EnrollmentPass.amr(), None);
        assert_eq!(Factor::parse("TOTP"), None);
    }
}
