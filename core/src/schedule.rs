//! Backup schedules: the cron dialect of the Go seed (`cron.ParseStandard` of robfig/cron v3), parsed and
//! evaluated in UTC. Pure: no I/O, no clock; `next_after` takes the time to start from.
//!
//! Accepted forms, as the seed accepted them:
//! - five fields `minute hour day-of-month month day-of-week`, each a list of `*`, `?`, `N`, `N-M`, `*/S`,
//!   `N/S` or `N-M/S`; months may be `jan`..`dec` and days of week `sun`..`sat` (0 = Sunday);
//! - the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`;
//! - `@every <duration>` in Go syntax (`90s`, `1h30m`, `1.5h`), truncated to whole seconds, at least 1s.
//!
//! As in Go's cron, when both day fields are restricted a time matches if **either** day field matches.
//! The seconds field of six-field expressions is not part of this dialect; such expressions are rejected
//! with a message that names the fix. Time zone prefixes (`CRON_TZ=`) are accepted only for UTC.
//!
//! # Flow
//! The expression is parsed field by field with the seed's rules and error messages, then rendered into
//! explicit lists for the `cron` crate (which wants a seconds field and numbers Sunday as 1), which computes
//! the next fire times. `@every` schedules are fixed intervals on a grid through an anchor time.
//!
//! # Guarantees
//! Parsing and `next_after` never panic, for any input. `next_after` is strictly increasing: the time it
//! returns is later than the time given. The `cron` crate stops at the year 2100; later times give `None`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use k8s_openapi::jiff::Timestamp;

/// Why a schedule expression was rejected. Messages are lowercase and name the fix where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is empty.
    #[error("empty spec string")]
    Empty,
    /// A six-field expression: it has a seconds field, which this dialect does not have.
    #[error(
        "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 6: seconds are not \
         supported, drop the first field (for example \"0 */6 * * *\" runs every six hours)"
    )]
    SecondsField,
    /// Neither 5 fields nor a descriptor.
    #[error("expected exactly 5 fields (minute hour day-of-month month day-of-week), found {found}")]
    FieldCount {
        /// How many whitespace-separated fields there were.
        found: usize,
    },
    /// One field is malformed or out of range.
    #[error("{field} field: {reason}")]
    Field {
        /// Which field (`minute`, `hour`, `day-of-month`, `month`, `day-of-week`).
        field: &'static str,
        /// What is wrong with it, in the seed's words.
        reason: String,
    },
    /// An `@...` word that is not a known descriptor.
    #[error(
        "unrecognized descriptor: {descriptor}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, \
         @hourly or @every <duration>"
    )]
    UnknownDescriptor {
        /// The rejected descriptor.
        descriptor: String,
    },
    /// The duration of `@every` is not a Go duration.
    #[error("failed to parse duration {descriptor}: {reason}")]
    EveryDuration {
        /// The whole descriptor.
        descriptor: String,
        /// What is wrong with the duration.
        reason: String,
    },
    /// The duration of `@every` is zero or negative.
    #[error("the interval of {descriptor} must be positive, for example @every 6h")]
    EveryNotPositive {
        /// The whole descriptor.
        descriptor: String,
    },
    /// A `CRON_TZ=`/`TZ=` prefix naming a zone other than UTC.
    #[error(
        "time zone {zone:?} is not supported: schedules are evaluated in UTC; remove the prefix and give the \
         times in UTC"
    )]
    TimeZone {
        /// The zone named in the prefix.
        zone: String,
    },
    /// The fields are valid but select no time at all (for example the 31st of February).
    #[error("schedule never fires: no selected day of the month occurs in the selected months")]
    NeverFires,
    /// The `cron` crate refused the translated expression (a bug in the translation; reported, never hidden).
    #[error("failed to translate the schedule: {reason}")]
    Translate {
        /// The `cron` crate's message.
        reason: String,
    },
}

/// A parsed backup schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Cron fields. `day_of_week` is set when both day fields are restricted: Go's cron then fires when either
    /// matches, so `primary` holds the day-of-month alternative and `day_of_week` the other one.
    Cron { primary: Box<cron::Schedule>, day_of_week: Option<Box<cron::Schedule>> },
    /// `@every`: a fixed interval of whole seconds.
    Every(Duration),
}

/// Parses a schedule in the seed's cron dialect (see the module docs).
pub fn parse_schedule(spec: &str) -> Result<Schedule, ScheduleError> {
    let kind = match parse_parts(spec)? {
        Parts::Every(interval) => Kind::Every(interval),
        Parts::Fields(fields) => fields.into_kind()?,
    };
    Ok(Schedule { source: spec.to_owned(), kind })
}

/// Checks a schedule as [`parse_schedule`] does, with the same errors, without building what computes its runs
/// (validation takes this: building the `cron` schedules costs several times the parse).
pub fn check_schedule(spec: &str) -> Result<(), ScheduleError> {
    parse_parts(spec).map(drop)
}

/// A parsed expression before it is rendered for the `cron` crate.
enum Parts {
    Every(Duration),
    Fields(Fields),
}

/// The five fields of a cron expression, checked.
struct Fields {
    minute: Selection,
    hour: Selection,
    dom: Selection,
    month: Selection,
    dow: Selection,
}

fn parse_parts(spec: &str) -> Result<Parts, ScheduleError> {
    if spec.is_empty() {
        return Err(ScheduleError::Empty);
    }
    let mut rest = spec;
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(after) = rest.strip_prefix(prefix) {
            let (zone, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            if !matches!(zone, "UTC" | "Etc/UTC") {
                return Err(ScheduleError::TimeZone { zone: zone.to_owned() });
            }
            rest = tail.trim_start();
            break;
        }
    }
    if rest.starts_with('@') { parse_descriptor(rest) } else { parse_fields(rest).map(Parts::Fields) }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_schedule(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Schedule {
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The interval of an `@every` schedule; `None` for cron schedules.
    pub fn interval(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every(d) => Some(d),
            Kind::Cron { .. } => None,
        }
    }

    /// The first fire time strictly after `after`. `@every` schedules are anchored at the Unix epoch, so
    /// `@every 6h` fires at 00:00, 06:00, 12:00 and 18:00 UTC whenever the operator started.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next_after_anchored(after, Timestamp::UNIX_EPOCH)
    }

    /// The first fire time strictly after `after`, with `@every` schedules firing at `anchor + k * interval`
    /// for whole numbers `k` (cron schedules ignore `anchor`). `None` when there is no such time that a
    /// [`Timestamp`] or the `cron` crate (up to the year 2100) can represent.
    pub fn next_after_anchored(&self, after: Timestamp, anchor: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(interval) => next_on_grid(after, anchor, *interval),
            Kind::Cron { primary, day_of_week } => {
                // The cron crate computes in chrono's time type; this is the only place the core uses it.
                let after = to_chrono(after)?;
                // The cron crate only knows years up to 2100 and adds a second to `after` unchecked.
                if after.year() > 2100 {
                    return None;
                }
                let first = primary.after(&after).next();
                let second = day_of_week.as_ref().and_then(|s| s.after(&after).next());
                let next = match (first, second) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.and_then(from_chrono)
            }
        }
    }
}

impl Schedule {
    /// The longest time between two consecutive fire times among the first `fires` after `after` (anchored as in
    /// [`Schedule::next_after_anchored`]): how old the last backup may be before one was missed. A weekday
    /// schedule needs `fires` of at least 6 to see its weekend. `None` without two such times.
    pub fn longest_gap(&self, after: Timestamp, anchor: Timestamp, fires: usize) -> Option<Duration> {
        let mut previous = self.next_after_anchored(after, anchor)?;
        let mut longest: Option<Duration> = None;
        for _ in 1..fires.max(2) {
            let Some(next) = self.next_after_anchored(previous, anchor) else { break };
            let gap = between(previous, next)?;
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            previous = next;
        }
        longest
    }
}

/// `t` plus `d`, or the latest representable time when that is beyond it.
pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// How long `earlier` was before `later`; `None` when it was not before.
pub(crate) fn between(earlier: Timestamp, later: Timestamp) -> Option<Duration> {
    Duration::try_from(later.duration_since(earlier)).ok()
}

fn to_chrono(t: Timestamp) -> Option<DateTime<Utc>> {
    let nanos = t.as_nanosecond();
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let subsec = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(secs, subsec)
}

fn from_chrono(t: DateTime<Utc>) -> Option<Timestamp> {
    let nanos = i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos());
    Timestamp::from_nanosecond(nanos).ok()
}

fn next_on_grid(after: Timestamp, anchor: Timestamp, interval: Duration) -> Option<Timestamp> {
    let step = i128::try_from(interval.as_nanos()).ok().filter(|s| *s > 0)?;
    let diff = after.as_nanosecond() - anchor.as_nanosecond();
    let k = diff.div_euclid(step) + 1;
    let next = anchor.as_nanosecond().checked_add(k.checked_mul(step)?)?;
    Timestamp::from_nanosecond(next).ok()
}

fn parse_descriptor(spec: &str) -> Result<Parts, ScheduleError> {
    let fields = match spec {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            let Some(duration) = spec.strip_prefix("@every ") else {
                return Err(ScheduleError::UnknownDescriptor { descriptor: spec.to_owned() });
            };
            let (negative, nanos) = parse_go_duration(duration)
                .map_err(|reason| ScheduleError::EveryDuration { descriptor: spec.to_owned(), reason })?;
            if negative || nanos == 0 {
                return Err(ScheduleError::EveryNotPositive { descriptor: spec.to_owned() });
            }
            // Go's cron truncates to whole seconds and runs at least every second.
            let secs = (nanos / 1_000_000_000).max(1);
            return Ok(Parts::Every(Duration::from_secs(secs)));
        }
    };
    parse_fields(fields).map(Parts::Fields)
}

/// Bounds and names of one cron field.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const DAY_OF_WEEK: FieldSpec =
    FieldSpec { name: "day-of-week", min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

/// The values a field selects, and whether it was written as `*`/`?` (which matters for the day fields).
struct Selection {
    bits: u64,
    star: bool,
}

impl Selection {
    fn values(&self) -> impl Iterator<Item = u32> + '_ {
        (0..64u32).filter(|v| self.bits & (1u64 << v) != 0)
    }

    fn list(&self, offset: u32) -> String {
        self.values().map(|v| (v + offset).to_string()).collect::<Vec<_>>().join(",")
    }
}

fn parse_fields(spec: &str) -> Result<Fields, ScheduleError> {
    let fields: Vec<&str> = spec.split_whitespace().collect();
    match fields.len() {
        5 => {}
        6 => return Err(ScheduleError::SecondsField),
        found => return Err(ScheduleError::FieldCount { found }),
    }
    let minute = parse_field(fields[0], &MINUTE)?;
    let hour = parse_field(fields[1], &HOUR)?;
    let dom = parse_field(fields[2], &DAY_OF_MONTH)?;
    let month = parse_field(fields[3], &MONTH)?;
    let dow = parse_field(fields[4], &DAY_OF_WEEK)?;

    if !dom.star && dow.star && !fires_in_some_month(&dom, &month) {
        return Err(ScheduleError::NeverFires);
    }
    Ok(Fields { minute, hour, dom, month, dow })
}

impl Fields {
    /// Renders the fields for the `cron` crate, which computes the runs.
    fn into_kind(self) -> Result<Kind, ScheduleError> {
        let Self { minute, hour, dom, month, dow } = self;
        // The cron crate wants a seconds field and numbers the days of the week 1 (Sunday) to 7.
        let (m, h, mon) = (minute.list(0), hour.list(0), month.list(0));
        let build = |dom: &str, dow: &str| {
            cron::Schedule::from_str(&format!("0 {m} {h} {dom} {mon} {dow}"))
                .map(Box::new)
                .map_err(|e| ScheduleError::Translate { reason: e.to_string() })
        };
        if !dom.star && !dow.star {
            Ok(Kind::Cron { primary: build(&dom.list(0), "*")?, day_of_week: Some(build("*", &dow.list(1))?) })
        } else {
            Ok(Kind::Cron { primary: build(&dom.list(0), &dow.list(1))?, day_of_week: None })
        }
    }
}

fn fires_in_some_month(dom: &Selection, month: &Selection) -> bool {
    const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    month.values().any(|m| {
        let longest = m.checked_sub(1).and_then(|i| LONGEST.get(i as usize)).copied().unwrap_or(0);
        dom.values().any(|d| d <= longest)
    })
}

fn parse_field(field: &str, spec: &FieldSpec) -> Result<Selection, ScheduleError> {
    let err = |reason: String| ScheduleError::Field { field: spec.name, reason };
    let mut selection = Selection { bits: 0, star: false };
    // Like Go's strings.FieldsFunc: empty list items are skipped.
    for expr in field.split(',').filter(|e| !e.is_empty()) {
        let (bits, star) = parse_range(expr, spec).map_err(err)?;
        selection.bits |= bits;
        selection.star |= star;
    }
    if selection.bits == 0 {
        return Err(err(format!("{field:?} selects no value")));
    }
    Ok(selection)
}

/// One list item of a field, with the seed's rules: `N/S` means `N-max/S`, a step above 1 clears the star.
fn parse_range(expr: &str, spec: &FieldSpec) -> Result<(u64, bool), String> {
    let mut range_and_step = expr.split('/');
    let range = range_and_step.next().unwrap_or_default();
    let step = range_and_step.next();
    if range_and_step.next().is_some() {
        return Err(format!("too many slashes: {expr}"));
    }
    let low_and_high: Vec<&str> = range.split('-').collect();
    let (mut start, mut end, mut star) = if matches!(low_and_high[0], "*" | "?") {
        (spec.min, spec.max, true)
    } else {
        let start = parse_int_or_name(low_and_high[0], spec.names)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => parse_int_or_name(low_and_high[1], spec.names)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        (start, end, false)
    };
    let step = match step {
        None => 1,
        Some(step) => {
            let step = parse_int(step)?;
            if low_and_high.len() == 1 {
                end = spec.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
    };
    if start < spec.min {
        return Err(format!("beginning of range ({start}) below minimum ({}): {expr}", spec.min));
    }
    if end > spec.max {
        return Err(format!("end of range ({end}) above maximum ({}): {expr}", spec.max));
    }
    if start > end {
        return Err(format!("beginning of range ({start}) beyond end of range ({end}): {expr}"));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    let mut bits = 0u64;
    while start <= end {
        bits |= 1u64 << start;
        start = match start.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok((bits, star))
}

fn parse_int_or_name(expr: &str, names: &[&str]) -> Result<u32, String> {
    let lower = expr.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Months are numbered from 1, days of the week from 0.
        let first = u32::from(names.len() == 12);
        return u32::try_from(i).map(|i| i + first).map_err(|e| e.to_string());
    }
    parse_int(expr)
}

/// Go's `strconv.Atoi` restricted to non-negative numbers.
fn parse_int(expr: &str) -> Result<u32, String> {
    let digits = expr.strip_prefix('+').unwrap_or(expr);
    if digits.starts_with('-') && digits.len() > 1 && digits[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("negative number ({digits}) not allowed: {expr}"));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("failed to parse int from {expr}: invalid syntax"));
    }
    // Values beyond u32 are out of every field's range; saturate so the range check reports them.
    Ok(digits.parse::<u32>().unwrap_or(u32::MAX))
}

/// Parses a Go duration (`time.ParseDuration`): `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` with units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`, or `0`. Returns whether it is negative and its magnitude in nanoseconds.
fn parse_go_duration(input: &str) -> Result<(bool, u64), String> {
    let invalid = || format!("time: invalid duration {input:?}");
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok((false, 0));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let limit: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let (crate::terms::Term { int_part, frac_part, unit }, rest) =
            crate::terms::next_term(s).ok_or_else(invalid)?;
        s = rest;
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {input:?}"));
        }
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {input:?}")),
        };
        let int_value: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| invalid())? };
        let mut value = int_value.checked_mul(unit_nanos).filter(|v| *v <= limit).ok_or_else(invalid)?;
        // Like Go, fraction digits beyond what can matter are ignored.
        let frac = &frac_part[..frac_part.len().min(18)];
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| invalid())?);
            value += digits * unit_nanos / scale;
        }
        total = total.checked_add(value).filter(|t| *t <= limit).ok_or_else(invalid)?;
    }
    if !negative && total > limit - 1 {
        return Err(invalid());
    }
    Ok((negative, u64::try_from(total).map_err(|_| invalid())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00Z").parse().unwrap()
    }

    #[test]
    fn five_field_expression_fires_on_its_minutes_and_hours() {
        let s = parse_schedule("0 */6 * * *").unwrap();
        assert_eq!(s.next_after(at(2024, 5, 1, 0, 0)), Some(at(2024, 5, 1, 6, 0)));
        assert_eq!(s.next_after(at(2024, 5, 1, 5, 59)), Some(at(2024, 5, 1, 6, 0)));
        assert_eq!(s.next_after(at(2024, 5, 1, 18, 30)), Some(at(2024, 5, 2, 0, 0)));
        assert_eq!(s.source(), "0 */6 * * *");
        assert_eq!(s.interval(), None);
    }

    #[test]
    fn day_of_week_zero_is_sunday_as_in_go() {
        // 2024-05-05 is a Sunday.
        let s = parse_schedule("30 2 * * 0").unwrap();
        assert_eq!(s.next_after(at(2024, 5, 1, 0, 0)), Some(at(2024, 5, 5, 2, 30)));
        let named = parse_schedule("30 2 * * SUN").unwrap();
        assert_eq!(named.next_after(at(2024, 5, 1, 0, 0)), Some(at(2024, 5, 5, 2, 30)));
        let monday = parse_schedule("0 0 * * mon-fri").unwrap();
        assert_eq!(monday.next_after(at(2024, 5, 4, 0, 0)), Some(at(2024, 5, 6, 0, 0)));
    }

    #[test]
    fn both_day_fields_restricted_fire_when_either_matches() {
        // The 15th of each month or any Monday. 2024-05-06 is a Monday.
        let s = parse_schedule("0 0 15 * 1").unwrap();
        assert_eq!(s.next_after(at(2024, 5, 1, 0, 0)), Some(at(2024, 5, 6, 0, 0)));
        assert_eq!(s.next_after(at(2024, 5, 13, 0, 0)), Some(at(2024, 5, 15, 0, 0)));
    }

    #[test]
    fn descriptors_map_to_their_cron_expressions() {
        let t = at(2024, 5, 1, 10, 17);
        let next = |s: &str| parse_schedule(s).unwrap().next_after(t).unwrap();
        assert_eq!(next("@hourly"), at(2024, 5, 1, 11, 0));
        assert_eq!(next("@daily"), at(2024, 5, 2, 0, 0));
        assert_eq!(next("@midnight"), at(2024, 5, 2, 0, 0));
        assert_eq!(next("@weekly"), at(2024, 5, 5, 0, 0));
        assert_eq!(next("@monthly"), at(2024, 6, 1, 0, 0));
        assert_eq!(next("@yearly"), at(2025, 1, 1, 0, 0));
        assert_eq!(next("@annually"), at(2025, 1, 1, 0, 0));
    }

    #[test]
    fn every_fires_on_a_grid_through_the_anchor() {
        let s = parse_schedule("@every 1h30m").unwrap();
        assert_eq!(s.interval(), Some(Duration::from_mins(90)));
        let anchor = at(2024, 5, 1, 0, 10);
        assert_eq!(s.next_after_anchored(at(2024, 5, 1, 0, 10), anchor), Some(at(2024, 5, 1, 1, 40)));
        assert_eq!(s.next_after_anchored(at(2024, 5, 1, 1, 39), anchor), Some(at(2024, 5, 1, 1, 40)));
        assert_eq!(s.next_after_anchored(at(2024, 5, 1, 0, 0), anchor), Some(at(2024, 5, 1, 0, 10)));
        let six = parse_schedule("@every 6h").unwrap();
        assert_eq!(six.next_after(at(2024, 5, 1, 7, 0)), Some(at(2024, 5, 1, 12, 0)));
    }

    #[test]
    fn every_truncates_to_whole_seconds_with_a_one_second_minimum() {
        assert_eq!(parse_schedule("@every 90.7s").unwrap().interval(), Some(Duration::from_secs(90)));
        assert_eq!(parse_schedule("@every 1.5h").unwrap().interval(), Some(Duration::from_mins(90)));
        assert_eq!(parse_schedule("@every 500ms").unwrap().interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn six_field_expressions_are_rejected_naming_the_fix() {
        let err = parse_schedule("0 0 */6 * * *").unwrap_err();
        assert_eq!(err, ScheduleError::SecondsField);
        assert!(err.to_string().contains("drop the first field"), "{err}");
    }

    #[test]
    fn malformed_expressions_get_the_seed_messages() {
        let cases = [
            ("", "empty spec string"),
            ("* * *", "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 3"),
            ("60 * * * *", "minute field: end of range (60) above maximum (59): 60"),
            ("* * 0 * *", "day-of-month field: beginning of range (0) below minimum (1): 0"),
            ("* 5-2 * * *", "hour field: beginning of range (5) beyond end of range (2): 5-2"),
            ("*/0 * * * *", "minute field: step of range should be a positive number: */0"),
            ("1-2-3 * * * *", "minute field: too many hyphens: 1-2-3"),
            ("1/2/3 * * * *", "minute field: too many slashes: 1/2/3"),
            ("x * * * *", "minute field: failed to parse int from x: invalid syntax"),
            ("* * * * 7", "day-of-week field: end of range (7) above maximum (6): 7"),
            ("* * * foo *", "month field: failed to parse int from foo: invalid syntax"),
            ("0 0 30 2 *", "schedule never fires: no selected day of the month occurs in the selected months"),
            (", * * * *", "minute field: \",\" selects no value"),
            (
                "@often",
                "unrecognized descriptor: @often: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>",
            ),
            ("@every x", "failed to parse duration @every x: time: invalid duration \"x\""),
            ("@every 5", "failed to parse duration @every 5: time: missing unit in duration \"5\""),
            ("@every 5d", "failed to parse duration @every 5d: time: unknown unit \"d\" in duration \"5d\""),
            ("@every -1h", "the interval of @every -1h must be positive, for example @every 6h"),
            ("@every 0", "the interval of @every 0 must be positive, for example @every 6h"),
        ];
        for (spec, message) in cases {
            assert_eq!(parse_schedule(spec).unwrap_err().to_string(), message, "{spec:?}");
        }
    }

    #[test]
    fn the_longest_gap_sees_weekends_and_every_intervals() {
        let weekdays = parse_schedule("0 2 * * 1-5").unwrap();
        // Wednesday 2026-12-02: the next 8 fires run Thu, Fri, Mon... and the weekend gap is 3 days.
        let gap = weekdays.longest_gap(at(2026, 12, 2, 12, 0), Timestamp::UNIX_EPOCH, 8).unwrap();
        assert_eq!(gap, Duration::from_hours(72));
        let daily = parse_schedule("@daily").unwrap();
        assert_eq!(daily.longest_gap(at(2026, 12, 2, 12, 0), Timestamp::UNIX_EPOCH, 8), Some(Duration::from_hours(24)));
        let every = parse_schedule("@every 90m").unwrap();
        assert_eq!(every.longest_gap(at(2026, 12, 2, 12, 0), at(2026, 12, 1, 0, 7), 3), Some(Duration::from_mins(90)));
    }

    #[test]
    fn utc_time_zone_prefix_is_accepted_and_others_rejected() {
        let s = parse_schedule("CRON_TZ=UTC 0 3 * * *").unwrap();
        assert_eq!(s.next_after(at(2024, 5, 1, 0, 0)), Some(at(2024, 5, 1, 3, 0)));
        assert_eq!(
            parse_schedule("TZ=Europe/Berlin 0 3 * * *").unwrap_err(),
            ScheduleError::TimeZone { zone: "Europe/Berlin".into() }
        );
    }

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        assert_eq!(parse_go_duration("1h30m"), Ok((false, 5_400_000_000_000)));
        assert_eq!(parse_go_duration("90s"), Ok((false, 90_000_000_000)));
        assert_eq!(parse_go_duration("1.5h"), Ok((false, 5_400_000_000_000)));
        assert_eq!(parse_go_duration(".5s"), Ok((false, 500_000_000)));
        assert_eq!(parse_go_duration("1h1h"), Ok((false, 7_200_000_000_000)));
        assert_eq!(parse_go_duration("-2m"), Ok((true, 120_000_000_000)));
        assert_eq!(parse_go_duration("3\u{b5}s"), Ok((false, 3_000)));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration(".s").is_err());
        assert!(parse_go_duration("3000000h").is_err());
        assert!(parse_go_duration("9223372036854775808ns").is_err());
        assert_eq!(parse_go_duration("-9223372036854775808ns"), Ok((true, 9_223_372_036_854_775_808)));
    }

    #[test]
    fn times_beyond_the_cron_range_have_no_next_run() {
        let s = parse_schedule("@daily").unwrap();
        assert_eq!(s.next_after(at(2101, 1, 1, 0, 0)), None);
        assert_eq!(s.next_after(Timestamp::MAX), None);
        let every = parse_schedule("@every 1h").unwrap();
        assert_eq!(every.next_after(Timestamp::MAX), None);
        assert!(every.next_after(Timestamp::MIN).is_some());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_schedule(&s);
        }

        /// Validation's check accepts exactly what the parser accepts, with the same error: no expression passes
        /// validation and then fails to translate for the scheduler.
        #[test]
        fn the_check_agrees_with_the_parser(s in "(CRON_TZ=UTC )?(@every [0-9]{1,3}[smh]|@[a-z]{4,8}|[0-9*?/,\\-a-z]{1,8}( [0-9*?/,\\-a-z]{1,8}){4})") {
            prop_assert_eq!(check_schedule(&s), parse_schedule(&s).map(drop));
        }

        #[test]
        fn parsing_cron_like_input_never_panics(s in "[0-9*?/,\\- a-zA-Z@]{0,30}") {
            if let Ok(schedule) = parse_schedule(&s) {
                let _ = schedule.next_after(at(2024, 1, 1, 0, 0));
            }
        }

        #[test]
        fn next_runs_are_strictly_increasing(
            spec in prop::sample::select(vec![
                "0 */6 * * *", "*/5 * * * *", "0 0 15 * 1", "@weekly", "@every 7m", "0 0 29 2 *", "15 3 * jan-mar sat",
            ]),
            start in 0i64..3_000_000_000,
        ) {
            let s = parse_schedule(spec).unwrap();
            let mut t = Timestamp::from_second(start).unwrap();
            for _ in 0..5 {
                let next = s.next_after(t).unwrap();
                prop_assert!(next > t);
                t = next;
            }
        }
    }
}
