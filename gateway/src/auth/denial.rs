//! The fixed code of every denial (the contract's `reason`): what the access log says and
//! `authgate_auth_denials_total{provider,reason}` counts. Free text stays in the 401's
//! `error_description`; these codes are what dashboards and alerts are built on.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    Malformed,
    BadSignature,
    AlgNotAllowed,
    UnknownKid,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    ClaimMismatch,
    TypMismatch,
    Revoked,
    Inactive,
    UnknownKey,
    MissingScope,
    DpopInvalid,
    TooManyFailures,
}

impl Denial {
    pub const ALL: [Denial; 16] = [
        Denial::Malformed,
        Denial::BadSignature,
        Denial::AlgNotAllowed,
        Denial::UnknownKid,
        Denial::Expired,
        Denial::NotYetValid,
        Denial::WrongIssuer,
        Denial::WrongAudience,
        Denial::ClaimMismatch,
        Denial::TypMismatch,
        Denial::Revoked,
        Denial::Inactive,
        Denial::UnknownKey,
        Denial::MissingScope,
        Denial::DpopInvalid,
        Denial::TooManyFailures,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Malformed => "malformed",
            Denial::BadSignature => "bad_signature",
            Denial::AlgNotAllowed => "alg_not_allowed",
            Denial::UnknownKid => "unknown_kid",
            Denial::Expired => "expired",
            Denial::NotYetValid => "not_yet_valid",
            Denial::WrongIssuer => "wrong_issuer",
            Denial::WrongAudience => "wrong_audience",
            Denial::ClaimMismatch => "claim_mismatch",
            Denial::TypMismatch => "typ_mismatch",
            Denial::Revoked => "revoked",
            Denial::Inactive => "inactive",
            Denial::UnknownKey => "unknown_key",
            Denial::MissingScope => "missing_scope",
            Denial::DpopInvalid => "dpop_invalid",
            Denial::TooManyFailures => "too_many_failures",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_in_declaration_order() {
        for (i, d) in Denial::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "{d:?}");
        }
        let mut names: Vec<&str> = Denial::ALL.iter().map(|d| d.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Denial::ALL.len());
    }
}
