//! Kubernetes resource quantities (`20Gi`, `500m`, `1e3`), parsed as apimachinery accepts them, to compare
//! and validate them. Pure: no I/O.

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid quantity {input:?}: use a number with an optional suffix like 500m, 20Gi or 1e3")]
pub struct Error {
    /// The rejected input.
    pub input: String,
}

const BINARY: [(&str, u32); 6] = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50), ("Ei", 60)];
const DECIMAL: [(&str, i32); 8] = [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15)];

/// Parses a quantity into nano-units (1 = 1e-9). Values with more precision than nano-units, or too large for
/// the representation, are rejected.
pub fn parse_nanos(input: &str) -> Result<i128, Error> {
    let err = || Error { input: input.to_owned() };
    let s = input.trim();
    if s.is_empty() || s != input {
        return Err(err());
    }
    let (sign, rest) = match s.as_bytes()[0] {
        b'-' => (-1i128, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err(err());
    }
    let mantissa: i128 = digits.parse().map_err(|_| err())?;
    let mut exp10: i32 = -i32::try_from(frac_part.len()).map_err(|_| err())?;
    let mut binary: u32 = 0;
    if let Some((_, b)) = BINARY.iter().find(|(sfx, _)| *sfx == suffix) {
        binary = *b;
    } else if let Some((_, e)) = DECIMAL.iter().find(|(sfx, _)| *sfx == suffix) {
        exp10 += e;
    } else if suffix == "E" {
        exp10 += 18;
    } else if let Some(exp) = suffix.strip_prefix('e').or_else(|| suffix.strip_prefix('E')) {
        let e: i32 = exp.parse().map_err(|_| err())?;
        if !(-30..=30).contains(&e) {
            return Err(err());
        }
        exp10 += e;
    } else if !suffix.is_empty() {
        return Err(err());
    }
    // Convert to nano-units.
    exp10 += 9;
    let mut value = mantissa;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(exp10.unsigned_abs()).ok_or_else(err)?).ok_or_else(err)?;
    } else {
        let div = 10i128.checked_pow(exp10.unsigned_abs()).ok_or_else(err)?;
        if value % div != 0 {
            return Err(err());
        }
        value /= div;
    }
    value = value.checked_mul(1i128 << binary).ok_or_else(err)?;
    Ok(sign * value)
}

/// Whether two strings are valid quantities of the same amount (`1000m` and `1`, `1Gi` and `1073741824`).
pub fn same_amount(a: &str, b: &str) -> bool {
    matches!((parse_nanos(a), parse_nanos(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_exponent_forms() {
        assert_eq!(parse_nanos("20Gi").unwrap(), 20 * (1 << 30) * 1_000_000_000);
        assert_eq!(parse_nanos("500m").unwrap(), 500_000_000);
        assert_eq!(parse_nanos("1e3").unwrap(), 1000 * 1_000_000_000);
        assert_eq!(parse_nanos("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_nanos("1k").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_nanos("-1").unwrap(), -1_000_000_000);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Gi", "1GB", "1..2", " 1", "1 ", "1e", "abc", "1.2.3", "0.0000000001"] {
            assert!(parse_nanos(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn same_amount_compares_values_not_spelling() {
        assert!(same_amount("1000m", "1"));
        assert!(same_amount("1Gi", "1073741824"));
        assert!(!same_amount("1Gi", "1G"));
        assert!(!same_amount("x", "x"));
    }
}
