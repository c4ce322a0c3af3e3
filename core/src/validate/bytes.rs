//! Byte sizes as Prometheus' `--storage.tsdb.retention.size` accepts them (`units.ParseBase2Bytes`): `512MB`,
//! `50GB`, `1.5TB`, `1GB512MB`; the units `B KB MB GB TB PB EB` and `KiB MiB GiB TiB PiB EiB` are all powers
//! of 1024. Pure: no I/O.

/// Why a byte size was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not `<number><unit>...`, or an unknown unit.
    #[error("must be a size like 512MB, 50GB or 1TB (units B, KB, MB, GB, TB, PB, EB; powers of 1024)")]
    Syntax,
    /// A minus sign.
    #[error("must not be negative")]
    Negative,
    /// More than Prometheus can hold (an int64 of bytes).
    #[error("is too large: the largest size is 8EB")]
    Overflow,
}

const UNITS: [(&str, &str, u32); 7] = [
    ("B", "B", 0),
    ("KB", "KiB", 10),
    ("MB", "MiB", 20),
    ("GB", "GiB", 30),
    ("TB", "TiB", 40),
    ("PB", "PiB", 50),
    ("EB", "EiB", 60),
];

/// Parses a size into bytes; fractions of a byte are dropped, as Prometheus does.
pub fn parse_base2_bytes(input: &str) -> Result<u64, Error> {
    if let Some(rest) = input.strip_prefix('-') {
        if rest.starts_with(['-', '+']) {
            return Err(Error::Syntax);
        }
        return match parse_base2_bytes(rest)? {
            0 => Ok(0),
            _ => Err(Error::Negative),
        };
    }
    let mut s = input.strip_prefix('+').unwrap_or(input);
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(Error::Syntax);
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let (crate::terms::Term { int_part, frac_part, unit }, rest) =
            crate::terms::next_term(s).ok_or(Error::Syntax)?;
        s = rest;
        let shift =
            UNITS.iter().find(|(short, long, _)| unit == *short || unit == *long).map(|u| u.2).ok_or(Error::Syntax)?;
        // Digits only, so parsing fails only when the number is too large.
        let int_value: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| Error::Overflow)? };
        if int_value > u128::from(u64::MAX) {
            return Err(Error::Overflow);
        }
        let mut value = int_value << shift;
        let frac = &frac_part[..frac_part.len().min(18)];
        let mut frac_bytes: u128 = 0;
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| Error::Syntax)?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| Error::Syntax)?);
            frac_bytes = (digits << shift) / scale;
        }
        value += frac_bytes;
        total = total.checked_add(value).ok_or(Error::Overflow)?;
        if total > i64::MAX as u128 {
            return Err(Error::Overflow);
        }
    }
    u64::try_from(total).map_err(|_| Error::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024() {
        assert_eq!(parse_base2_bytes("512MB"), Ok(512 << 20));
        assert_eq!(parse_base2_bytes("50GB"), Ok(50 << 30));
        assert_eq!(parse_base2_bytes("1TB"), Ok(1 << 40));
        assert_eq!(parse_base2_bytes("1TiB"), Ok(1 << 40));
        assert_eq!(parse_base2_bytes("100B"), Ok(100));
        assert_eq!(parse_base2_bytes("1PB"), Ok(1 << 50));
        assert_eq!(parse_base2_bytes("7EB"), Ok(7 << 60));
        assert_eq!(parse_base2_bytes("0"), Ok(0));
    }

    #[test]
    fn fractions_and_sums_are_accepted() {
        assert_eq!(parse_base2_bytes("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_base2_bytes("1GB512MB"), Ok((1 << 30) + (512 << 20)));
        assert_eq!(parse_base2_bytes(".5KB"), Ok(512));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for bad in ["", "GB", "10", "10gb", "10 GB", "10G", "1.2.3GB", "10kB", "-", "+", "1GB "] {
            assert_eq!(parse_base2_bytes(bad), Err(Error::Syntax), "{bad:?}");
        }
        assert_eq!(parse_base2_bytes("-1GB"), Err(Error::Negative));
        assert_eq!(parse_base2_bytes("8EB"), Err(Error::Overflow));
        assert_eq!(parse_base2_bytes("99999999999999999999999999999999999999999B"), Err(Error::Overflow));
    }
}
