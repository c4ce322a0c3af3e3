//! Prometheus duration strings (`1h30m`, `15d`, `500ms`), parsed exactly as Prometheus' `model.ParseDuration`
//! does: units `y w d h m s ms` in that order, each at most once, integers only, `y` = 365 days.
//! Pure: no I/O.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The string is empty.
    #[error("empty duration string")]
    Empty,
    /// The string does not follow the `<int><unit>...` syntax.
    #[error("not a valid duration string {input:?}: use units y, w, d, h, m, s, ms in that order, like 1h30m")]
    Syntax {
        /// The rejected input.
        input: String,
    },
    /// The value does not fit into a duration.
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The rejected input.
        input: String,
    },
}

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a Prometheus duration. `"0"` is accepted as zero, as Prometheus does.
pub fn parse(input: &str) -> Result<Duration, Error> {
    if input.is_empty() {
        return Err(Error::Empty);
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let syntax = || Error::Syntax { input: input.to_owned() };
    let overflow = || Error::Overflow { input: input.to_owned() };
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut next_unit = 0;
    let mut total_ms: u64 = 0;
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if start == pos {
            return Err(syntax());
        }
        let value: u64 = input[start..pos].parse().map_err(|_| overflow())?;
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = &input[unit_start..pos];
        let idx = UNITS.iter().position(|(u, _)| *u == unit).ok_or_else(syntax)?;
        if idx < next_unit {
            return Err(syntax());
        }
        next_unit = idx + 1;
        let ms = value.checked_mul(UNITS[idx].1).ok_or_else(overflow)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(overflow)?;
    }
    // Prometheus keeps durations in an int64 of nanoseconds.
    if total_ms > (i64::MAX as u64) / 1_000_000 {
        return Err(overflow());
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way Prometheus prints it (`1h30m`, `15d`, `0s`).
pub fn format(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        if ms >= size {
            out.push_str(&(ms / size).to_string());
            out.push_str(unit);
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit_in_order() {
        assert_eq!(
            parse("1y2w3d4h5m6s7ms").unwrap().as_millis(),
            ((((365 + 14 + 3) * 24 + 4) * 60 + 5) * 60 + 6) * 1000 + 7
        );
        assert_eq!(parse("15d").unwrap(), Duration::from_hours(15 * 24));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_wrong_order_repeats_fractions_and_signs() {
        for bad in ["", "1m1h", "1h1h", "1.5h", "-1h", "h", "1", "1x", " 1h", "1h "] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(parse("99999999999999999999y"), Err(Error::Overflow { .. })));
        assert!(matches!(parse("300y"), Err(Error::Overflow { .. })));
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0u64..(100 * 365 * 86_400_000)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = parse(&s);
        }
    }
}
