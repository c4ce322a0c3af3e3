//! The `<number><unit>` sequences Go's `time.ParseDuration` and Prometheus' `units.ParseBase2Bytes` read
//! (`1h30m`, `1.5GB`, `.5s`): one tokenizer, the unit tables stay with each parser. Pure.

/// One `<int>[.<frac>]<unit>` term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term<'a> {
    /// Digits before the point (may be empty when there is a fraction).
    pub int_part: &'a str,
    /// Digits after the point (may be empty).
    pub frac_part: &'a str,
    /// The unit: everything up to the next digit or point (may be empty).
    pub unit: &'a str,
}

/// Splits the next term off `s`; `None` when it has neither integer nor fraction digits.
pub(crate) fn next_term(s: &str) -> Option<(Term<'_>, &str)> {
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, mut rest) = s.split_at(int_len);
    let mut frac_part = "";
    if let Some(after_point) = rest.strip_prefix('.') {
        let frac_len = after_point.bytes().take_while(u8::is_ascii_digit).count();
        (frac_part, rest) = after_point.split_at(frac_len);
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let unit_len = rest.bytes().take_while(|b| *b != b'.' && !b.is_ascii_digit()).count();
    let (unit, rest) = rest.split_at(unit_len);
    Some((Term { int_part, frac_part, unit }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_split_into_integer_fraction_and_unit() {
        let (t, rest) = next_term("1.5h30m").unwrap();
        assert_eq!((t.int_part, t.frac_part, t.unit, rest), ("1", "5", "h", "30m"));
        let (t, rest) = next_term(".5GB").unwrap();
        assert_eq!((t.int_part, t.frac_part, t.unit, rest), ("", "5", "GB", ""));
        assert_eq!(next_term("h"), None);
        assert_eq!(next_term("."), None);
        let (t, _) = next_term("10").unwrap();
        assert_eq!(t.unit, "");
    }
}
