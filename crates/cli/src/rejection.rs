//! What the CCN's rejection codes mean, in words a user can act on.
//!
//! The numbers are the protocol's (the same as the public network's CCN), so a
//! code printed here means the same thing on any node.

/// The meaning of a rejection code, or `None` for a code this CLI does not know.
pub fn meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        -1 => "internal error of the CCN",
        0 => "invalid message format",
        1 => "invalid signature",
        2 => "permission denied",
        3 => "content unavailable",
        4 => "file unavailable",
        5 => "insufficient balance",
        6 => "insufficient credit",
        100 => "POST amend without a target",
        101 => "POST amend target not found",
        102 => "cannot amend an amend",
        200 => "STORE ref not found",
        201 => "cannot update an update (STORE)",
        202 => "invalid payment method",
        300 => "VM reference not found",
        301 => "VM volume not found",
        302 => "VM amend not allowed",
        303 => "cannot update an update (VM)",
        304 => "VM volume too small",
        500 => "FORGET without a target",
        501 => "FORGET target not found",
        502 => "cannot forget a FORGET",
        503 => "FORGET not allowed",
        504 => "target already forgotten",
        _ => return None,
    })
}

/// `code 6 (insufficient credit)`, or `code 9999` for an unknown code.
pub fn describe(code: i64) -> String {
    match meaning(code) {
        Some(meaning) => format!("code {code} ({meaning})"),
        None => format!("code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_carry_their_meaning() {
        assert_eq!(describe(1), "code 1 (invalid signature)");
        assert_eq!(describe(6), "code 6 (insufficient credit)");
        assert_eq!(describe(502), "code 502 (cannot forget a FORGET)");
    }

    #[test]
    fn unknown_codes_are_shown_bare() {
        assert_eq!(meaning(9999), None);
        assert_eq!(describe(9999), "code 9999");
    }
}
