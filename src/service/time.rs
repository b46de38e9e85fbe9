//! `time`: the datagram time service (PROTOCOL.md, "Datagram services"). A request payload is
//! a strftime format; the reply is the server's local time formatted with it, in the C locale.
//!
//! The format is run by a small interpreter of our own over the fixed list of conversions that
//! PROTOCOL.md allows, not by `chrono::format`: chrono panics on an invalid specifier when it
//! is displayed, and some specifiers (`%#z`) parse but fail only at display time. Here every
//! payload is checked whole before anything is written, the output is built in a buffer that
//! refuses to grow past [`MAX_OUTPUT`], and the work per payload is linear in its length (at
//! most [`MAX_FORMAT`] bytes), so no payload can stop or slow the service.
//!
//! Choices where PROTOCOL.md (or C) leaves room:
//! - `%Z`: the zone *abbreviation* (`CET`, `PDT`) is not available portably from
//!   `chrono::Local`, so `%Z` prints `UTC` when the offset is zero and the offset as `+HH:MM`
//!   otherwise (`+05:30`, `-08:00`). `%z` is C's `+HHMM`. Seconds of an offset are dropped.
//! - `%Y` and `%G` are zero-padded to 4 digits (`0999`), as ISO 8601 and chrono do (glibc
//!   does not pad them); a negative year prints its sign before the digits (`-0044`). `%C` is
//!   two digits (glibc prints `0` for the years 0–99). `%C` and `%y` split the year so that
//!   `%C * 100 + %y` is the year (floor division), whatever its sign. Outside 1000–9999 none
//!   of this can matter to a server reading its own clock, but it must not panic.
//! - `%S` prints `60` during a leap second, as C does.
//! - "Only ASCII white space" means the bytes `u8::is_ascii_whitespace` accepts (space, tab,
//!   LF, FF, CR); a payload of only those (or empty) gets the default format.

use std::fmt;

use chrono::{DateTime, Datelike, Local, Offset, TimeZone, Timelike, Weekday};

/// Longest format accepted, in bytes.
pub const MAX_FORMAT: usize = 256;
/// Longest reply, in bytes (error replies are much shorter).
pub const MAX_OUTPUT: usize = 1024;
/// The format used for an empty payload or one of only ASCII white space.
pub const DEFAULT_FORMAT: &str = "%Y-%m-%d %X";

/// Why a payload gets an `error: ` reply. The `Display` text is the reason sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("format too long: {len} bytes, at most {MAX_FORMAT}")]
    FormatTooLong { len: usize },
    #[error("format is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("NUL byte at offset {offset}")]
    Nul { offset: usize },
    #[error("trailing % at offset {offset}")]
    TrailingPercent { offset: usize },
    #[error("incomplete conversion %{flag} at end of format (offset {offset})")]
    IncompleteFlag { flag: char, offset: usize },
    #[error("unknown conversion %{} at offset {offset}", .spec.escape_debug())]
    Unknown { spec: char, offset: usize },
    #[error("unknown conversion %{flag}{} at offset {offset}", .spec.escape_debug())]
    UnknownFlagged {
        flag: char,
        spec: char,
        offset: usize,
    },
    #[error("flag {flag:?} does not apply to %{spec} (not numeric) at offset {offset}")]
    FlagNotNumeric {
        flag: char,
        spec: char,
        offset: usize,
    },
    #[error("output too long: more than {MAX_OUTPUT} bytes")]
    OutputTooLong,
}

/// Writes the reply to `payload` for the local time `now` into `reply` (cleared first): the
/// formatted time, or `error: ` and a reason.
pub fn answer(payload: &[u8], now: &DateTime<Local>, reply: &mut Vec<u8>) {
    answer_at(payload, now, reply);
}

/// [`answer`] for a time in any zone (tests use fixed offsets).
pub fn answer_at<Tz: TimeZone>(payload: &[u8], now: &DateTime<Tz>, reply: &mut Vec<u8>) {
    reply.clear();
    if let Err(e) = format_into(payload, now, reply) {
        reply.clear();
        // Writing to a Vec cannot fail, and every reason is far shorter than MAX_OUTPUT.
        let _ = fmt::Write::write_fmt(&mut VecWriter(reply), format_args!("error: {e}"));
    }
}

/// Checks `payload` whole, then formats `now` with it into `out` (which may hold a partial
/// result on error).
pub fn format_into<Tz: TimeZone>(
    payload: &[u8],
    now: &DateTime<Tz>,
    out: &mut Vec<u8>,
) -> Result<(), TimeError> {
    let format = check(payload)?;
    let mut w = Bounded {
        out,
        limit: MAX_OUTPUT,
    };
    for item in Items::new(format) {
        // `check` has already parsed the whole format, so an error here cannot happen; it is
        // propagated rather than unwrapped all the same.
        render(&item?, now, &mut w)?;
    }
    Ok(())
}

/// Validates the payload (length, UTF-8, NUL, every conversion) and returns the format to run.
fn check(payload: &[u8]) -> Result<&str, TimeError> {
    if payload.len() > MAX_FORMAT {
        return Err(TimeError::FormatTooLong { len: payload.len() });
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_FORMAT);
    }
    let format = std::str::from_utf8(payload).map_err(|e| TimeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if let Some(offset) = memchr::memchr(0, payload) {
        return Err(TimeError::Nul { offset });
    }
    for item in Items::new(format) {
        item?;
    }
    Ok(format)
}

/// How a numeric conversion is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pad {
    /// The conversion's own default (spaces for `%e %k %l`, zeros for the rest).
    Default,
    /// `-`: no padding.
    None,
    /// `_`: spaces.
    Space,
    /// `0`: zeros.
    Zero,
}

/// One conversion of the allowed list; the names follow the strftime letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    WeekdayAbbr, // %a
    WeekdayFull, // %A
    MonthAbbr,   // %b %h
    MonthFull,   // %B
    DateTime,    // %c
    Century,     // %C
    Day,         // %d
    UsDate,      // %D %x
    DaySpace,    // %e
    IsoDate,     // %F
    IsoYear2,    // %g
    IsoYear,     // %G
    Hour,        // %H
    Hour12,      // %I
    YearDay,     // %j
    HourSpace,   // %k
    Hour12Space, // %l
    Month,       // %m
    Minute,      // %M
    Newline,     // %n
    AmPm,        // %p
    AmPmLower,   // %P
    Time12,      // %r
    HourMinute,  // %R
    Second,      // %S
    Tab,         // %t
    Time,        // %T %X
    WeekdayMon1, // %u
    WeekSun,     // %U
    IsoWeek,     // %V
    WeekdaySun0, // %w
    WeekMon,     // %W
    Year2,       // %y
    Year,        // %Y
    OffsetHhmm,  // %z
    Zone,        // %Z
    Percent,     // %%
}

impl Spec {
    /// The conversion named by the letter after `%`, if it is on the allowed list.
    fn from_char(c: char) -> Option<Spec> {
        use Spec::*;
        Some(match c {
            'a' => WeekdayAbbr,
            'A' => WeekdayFull,
            'b' | 'h' => MonthAbbr,
            'B' => MonthFull,
            'c' => DateTime,
            'C' => Century,
            'd' => Day,
            'D' | 'x' => UsDate,
            'e' => DaySpace,
            'F' => IsoDate,
            'g' => IsoYear2,
            'G' => IsoYear,
            'H' => Hour,
            'I' => Hour12,
            'j' => YearDay,
            'k' => HourSpace,
            'l' => Hour12Space,
            'm' => Month,
            'M' => Minute,
            'n' => Newline,
            'p' => AmPm,
            'P' => AmPmLower,
            'r' => Time12,
            'R' => HourMinute,
            'S' => Second,
            't' => Tab,
            'T' | 'X' => Time,
            'u' => WeekdayMon1,
            'U' => WeekSun,
            'V' => IsoWeek,
            'w' => WeekdaySun0,
            'W' => WeekMon,
            'y' => Year2,
            'Y' => Year,
            'z' => OffsetHhmm,
            'Z' => Zone,
            '%' => Percent,
            _ => return None,
        })
    }

    /// For a numeric conversion: its width and default padding; `None` for the others, which
    /// take no flag.
    fn numeric(self) -> Option<(usize, Pad)> {
        use Spec::*;
        Some(match self {
            Century | Day | IsoYear2 | Hour | Hour12 | Month | Minute | Second | WeekSun
            | IsoWeek | WeekMon | Year2 => (2, Pad::Zero),
            DaySpace | HourSpace | Hour12Space => (2, Pad::Space),
            IsoYear | Year => (4, Pad::Zero),
            YearDay => (3, Pad::Zero),
            WeekdayMon1 | WeekdaySun0 => (1, Pad::Zero),
            _ => return None,
        })
    }

    /// What a composite conversion stands for (C locale), or `None` for a simple one.
    fn expansion(self) -> Option<&'static [Item<'static>]> {
        use Item::{Conv, Lit};
        use Spec::*;
        const D: Pad = Pad::Default;
        Some(match self {
            // %a %b %e %H:%M:%S %Y
            DateTime => &[
                Conv(WeekdayAbbr, D),
                Lit(" "),
                Conv(MonthAbbr, D),
                Lit(" "),
                Conv(DaySpace, D),
                Lit(" "),
                Conv(Hour, D),
                Lit(":"),
                Conv(Minute, D),
                Lit(":"),
                Conv(Second, D),
                Lit(" "),
                Conv(Year, D),
            ],
            // %m/%d/%y
            UsDate => &[
                Conv(Month, D),
                Lit("/"),
                Conv(Day, D),
                Lit("/"),
                Conv(Year2, D),
            ],
            // %Y-%m-%d
            IsoDate => &[
                Conv(Year, D),
                Lit("-"),
                Conv(Month, D),
                Lit("-"),
                Conv(Day, D),
            ],
            // %I:%M:%S %p
            Time12 => &[
                Conv(Hour12, D),
                Lit(":"),
                Conv(Minute, D),
                Lit(":"),
                Conv(Second, D),
                Lit(" "),
                Conv(AmPm, D),
            ],
            // %H:%M
            HourMinute => &[Conv(Hour, D), Lit(":"), Conv(Minute, D)],
            // %H:%M:%S
            Time => &[
                Conv(Hour, D),
                Lit(":"),
                Conv(Minute, D),
                Lit(":"),
                Conv(Second, D),
            ],
            _ => return None,
        })
    }
}

/// A piece of a parsed format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    /// Text copied as it is.
    Lit(&'a str),
    /// A conversion and its padding.
    Conv(Spec, Pad),
}

/// Parses a format into items, one at a time, without allocating.
struct Items<'a> {
    /// The whole format, for slicing literals.
    format: &'a str,
    /// Byte offset of the next unparsed character.
    pos: usize,
}

impl<'a> Items<'a> {
    fn new(format: &'a str) -> Self {
        Items { format, pos: 0 }
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<Item<'a>, TimeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.format.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        if !rest.starts_with('%') {
            let len = rest.find('%').unwrap_or(rest.len());
            self.pos = start.saturating_add(len);
            return rest.get(..len).map(|lit| Ok(Item::Lit(lit)));
        }
        // From here on every path ends the iteration on error, so a bad format yields exactly
        // one error and nothing after it.
        let mut chars = rest.chars().skip(1);
        let result = match chars.next() {
            None => Err(TimeError::TrailingPercent { offset: start }),
            Some(flag @ ('-' | '_' | '0')) => {
                let pad = match flag {
                    '-' => Pad::None,
                    '_' => Pad::Space,
                    _ => Pad::Zero,
                };
                match chars.next() {
                    None => Err(TimeError::IncompleteFlag {
                        flag,
                        offset: start,
                    }),
                    Some(c) => match Spec::from_char(c) {
                        Some(spec) if spec.numeric().is_some() => {
                            Ok((Item::Conv(spec, pad), 2 + c.len_utf8()))
                        }
                        Some(_) => Err(TimeError::FlagNotNumeric {
                            flag,
                            spec: c,
                            offset: start,
                        }),
                        None => Err(TimeError::UnknownFlagged {
                            flag,
                            spec: c,
                            offset: start,
                        }),
                    },
                }
            }
            Some(c) => match Spec::from_char(c) {
                Some(spec) => Ok((Item::Conv(spec, Pad::Default), 1 + c.len_utf8())),
                None => Err(TimeError::Unknown {
                    spec: c,
                    offset: start,
                }),
            },
        };
        match result {
            Ok((item, len)) => {
                self.pos = start.saturating_add(len);
                Some(Ok(item))
            }
            Err(e) => {
                self.pos = self.format.len();
                Some(Err(e))
            }
        }
    }
}

/// An output buffer that refuses to grow past `limit` bytes.
struct Bounded<'a> {
    /// Where the reply is built.
    out: &'a mut Vec<u8>,
    /// Largest length `out` may reach.
    limit: usize,
}

impl Bounded<'_> {
    fn push(&mut self, s: &[u8]) -> Result<(), TimeError> {
        if s.len() > self.limit.saturating_sub(self.out.len()) {
            return Err(TimeError::OutputTooLong);
        }
        self.out.extend_from_slice(s);
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), TimeError> {
        self.push(s.as_bytes())
    }

    /// Writes `value` in decimal, its digits padded to `width` as `pad` says; a minus sign
    /// does not count towards the width (`-0044`), and goes after space padding (`  -44`).
    fn num(&mut self, value: i64, width: usize, pad: Pad) -> Result<(), TimeError> {
        let mut digits = [0u8; 20];
        let mut n = value.unsigned_abs();
        let mut i = digits.len();
        loop {
            i = i.saturating_sub(1);
            if let Some(d) = digits.get_mut(i) {
                // n % 10 < 10, so the cast cannot truncate.
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        let digits = digits.get(i..).unwrap_or(&[]);
        let sign: &[u8] = if value < 0 { b"-" } else { b"" };
        let fill = width.saturating_sub(digits.len());
        match pad {
            Pad::None => {
                self.push(sign)?;
            }
            Pad::Space => {
                self.repeat(b' ', fill)?;
                self.push(sign)?;
            }
            Pad::Zero | Pad::Default => {
                self.push(sign)?;
                self.repeat(b'0', fill)?;
            }
        }
        self.push(digits)
    }

    fn repeat(&mut self, byte: u8, n: usize) -> Result<(), TimeError> {
        // `n` is at most a conversion's width (4), so this is never a long loop.
        for _ in 0..n {
            self.push(&[byte])?;
        }
        Ok(())
    }
}

/// Writes one item for `now`.
fn render<Tz: TimeZone>(item: &Item, now: &DateTime<Tz>, w: &mut Bounded) -> Result<(), TimeError> {
    let (spec, pad) = match *item {
        Item::Lit(s) => return w.str(s),
        Item::Conv(spec, pad) => (spec, pad),
    };
    if let Some(parts) = spec.expansion() {
        // One level deep: expansions contain only simple conversions.
        for part in parts {
            render(part, now, w)?;
        }
        return Ok(());
    }
    if let Some((width, default)) = spec.numeric() {
        let pad = if pad == Pad::Default { default } else { pad };
        return w.num(numeric_value(spec, now), width, pad);
    }
    match spec {
        Spec::WeekdayAbbr => w.str(weekday_name(now.weekday()).get(..3).unwrap_or("")),
        Spec::WeekdayFull => w.str(weekday_name(now.weekday())),
        Spec::MonthAbbr => w.str(month_name(now.month()).get(..3).unwrap_or("")),
        Spec::MonthFull => w.str(month_name(now.month())),
        Spec::Newline => w.str("\n"),
        Spec::Tab => w.str("\t"),
        Spec::AmPm => w.str(if now.hour() < 12 { "AM" } else { "PM" }),
        Spec::AmPmLower => w.str(if now.hour() < 12 { "am" } else { "pm" }),
        Spec::Percent => w.str("%"),
        Spec::OffsetHhmm => {
            let (sign, h, m) = offset_parts(now);
            w.str(sign)?;
            w.num(h, 2, Pad::Zero)?;
            w.num(m, 2, Pad::Zero)
        }
        Spec::Zone => {
            let (sign, h, m) = offset_parts(now);
            if h == 0 && m == 0 {
                return w.str("UTC");
            }
            w.str(sign)?;
            w.num(h, 2, Pad::Zero)?;
            w.str(":")?;
            w.num(m, 2, Pad::Zero)
        }
        // Numeric and composite conversions were handled above.
        _ => Ok(()),
    }
}

/// The value of a numeric conversion.
fn numeric_value<Tz: TimeZone>(spec: Spec, now: &DateTime<Tz>) -> i64 {
    let year = i64::from(now.year());
    let iso = now.iso_week();
    let yday0 = i64::from(now.ordinal0());
    let wday_sun0 = i64::from(now.weekday().num_days_from_sunday());
    let wday_mon0 = i64::from(now.weekday().num_days_from_monday());
    let hour12 = i64::from(now.hour12().1);
    match spec {
        Spec::Century => year.div_euclid(100),
        Spec::Year2 => year.rem_euclid(100),
        Spec::Year => year,
        Spec::IsoYear => i64::from(iso.year()),
        Spec::IsoYear2 => i64::from(iso.year()).rem_euclid(100),
        Spec::IsoWeek => i64::from(iso.week()),
        Spec::Day | Spec::DaySpace => i64::from(now.day()),
        Spec::Month => i64::from(now.month()),
        Spec::YearDay => yday0 + 1,
        Spec::Hour | Spec::HourSpace => i64::from(now.hour()),
        Spec::Hour12 | Spec::Hour12Space => hour12,
        Spec::Minute => i64::from(now.minute()),
        // chrono represents a leap second as second 59 with nanoseconds past one second.
        Spec::Second if now.nanosecond() >= 1_000_000_000 => 60,
        Spec::Second => i64::from(now.second()),
        Spec::WeekdayMon1 => wday_mon0 + 1,
        Spec::WeekdaySun0 => wday_sun0,
        // Weeks start on Sunday (%U) or Monday (%W); days before the first one are week 0.
        Spec::WeekSun => (yday0 + 7 - wday_sun0) / 7,
        Spec::WeekMon => (yday0 + 7 - wday_mon0) / 7,
        _ => 0,
    }
}

/// The UTC offset of `now` as (sign, hours, minutes), seconds dropped.
fn offset_parts<Tz: TimeZone>(now: &DateTime<Tz>) -> (&'static str, i64, i64) {
    let secs = i64::from(now.offset().fix().local_minus_utc());
    let sign = if secs < 0 { "-" } else { "+" };
    let abs = secs.abs();
    (sign, abs / 3600, abs % 3600 / 60)
}

/// The C locale's weekday names.
fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// The C locale's month names (1 = January).
fn month_name(month: u32) -> &'static str {
    match month {
        1 => "January",
        2 => "February",
        3 => "March",
        4 => "April",
        5 => "May",
        6 => "June",
        7 => "July",
        8 => "August",
        9 => "September",
        10 => "October",
        11 => "November",
        12 => "December",
        _ => "???",
    }
}

/// `fmt::Write` over a byte vector, for writing the error reason without a String.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use proptest::prelude::*;

    /// 2024-03-07 (a Thursday, day 67) 09:05:03 at +05:30.
    fn thursday() -> DateTime<FixedOffset> {
        FixedOffset::east_opt(5 * 3600 + 30 * 60)
            .and_then(|tz| tz.with_ymd_and_hms(2024, 3, 7, 9, 5, 3).single())
            .expect("valid date")
    }

    /// 2021-01-03 (a Sunday, ISO week 53 of 2020) 23:59:58 at UTC.
    fn sunday() -> DateTime<FixedOffset> {
        FixedOffset::east_opt(0)
            .and_then(|tz| tz.with_ymd_and_hms(2021, 1, 3, 23, 59, 58).single())
            .expect("valid date")
    }

    fn at(format: &str, now: &DateTime<FixedOffset>) -> String {
        let mut reply = Vec::new();
        answer_at(format.as_bytes(), now, &mut reply);
        String::from_utf8(reply).expect("replies are UTF-8")
    }

    fn t(format: &str) -> String {
        at(format, &thursday())
    }

    fn err(payload: &[u8]) -> String {
        let mut reply = b"stale".to_vec();
        answer_at(payload, &thursday(), &mut reply);
        let reply = String::from_utf8(reply).expect("replies are UTF-8");
        assert!(reply.starts_with("error: "), "{payload:?} gave {reply:?}");
        reply
    }

    #[test]
    fn default_format_for_empty_or_white_space() {
        assert_eq!(t(""), "2024-03-07 09:05:03");
        assert_eq!(t(" \t\r\n"), "2024-03-07 09:05:03");
        // Not only white space: the format is used as it is.
        assert_eq!(t(" x "), " x ");
    }

    #[test]
    fn reply_is_cleared_first() {
        let mut reply = b"old contents".to_vec();
        answer_at(b"%Y", &thursday(), &mut reply);
        assert_eq!(reply, b"2024");
    }

    #[test]
    fn every_conversion() {
        let cases = [
            ("%a", "Thu"),
            ("%A", "Thursday"),
            ("%b", "Mar"),
            ("%B", "March"),
            ("%c", "Thu Mar  7 09:05:03 2024"),
            ("%C", "20"),
            ("%d", "07"),
            ("%D", "03/07/24"),
            ("%e", " 7"),
            ("%F", "2024-03-07"),
            ("%g", "24"),
            ("%G", "2024"),
            ("%h", "Mar"),
            ("%H", "09"),
            ("%I", "09"),
            ("%j", "067"),
            ("%k", " 9"),
            ("%l", " 9"),
            ("%m", "03"),
            ("%M", "05"),
            ("%n", "\n"),
            ("%p", "AM"),
            ("%P", "am"),
            ("%r", "09:05:03 AM"),
            ("%R", "09:05"),
            ("%S", "03"),
            ("%t", "\t"),
            ("%T", "09:05:03"),
            ("%u", "4"),
            ("%U", "09"),
            ("%V", "10"),
            ("%w", "4"),
            ("%W", "10"),
            ("%x", "03/07/24"),
            ("%X", "09:05:03"),
            ("%y", "24"),
            ("%Y", "2024"),
            ("%z", "+0530"),
            ("%Z", "+05:30"),
            ("%%", "%"),
        ];
        for (format, want) in cases {
            assert_eq!(t(format), want, "{format}");
        }
    }

    #[test]
    fn week_numbers_and_pm_around_new_year() {
        let s = sunday();
        assert_eq!(
            at("%a %u %w %U %W %V %G %g %j", &s),
            "Sun 7 0 01 00 53 2020 20 003"
        );
        assert_eq!(at("%I %l %p %P %r", &s), "11 11 PM pm 11:59:58 PM");
        assert_eq!(at("%z %Z", &s), "+0000 UTC");
    }

    #[test]
    fn negative_offset_and_noon_midnight() {
        let tz = FixedOffset::west_opt(8 * 3600).expect("valid offset");
        let noon = tz
            .with_ymd_and_hms(2024, 12, 31, 12, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(at("%z %Z %I %p %j", &noon), "-0800 -08:00 12 PM 366");
        let midnight = tz
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(at("%I %l %p %H %k", &midnight), "12 12 AM 00  0");
    }

    #[test]
    fn flags_change_padding_of_numeric_conversions() {
        let cases = [
            ("%-d %_d %0d", "7  7 07"),
            ("%-e %_e %0e", "7  7 07"),
            ("%-H %_H %0H", "9  9 09"),
            ("%-I %_I %0I", "9  9 09"),
            ("%-k %_k %0k", "9  9 09"),
            ("%-l %_l %0l", "9  9 09"),
            ("%-j %_j %0j", "67  67 067"),
            ("%-m %_m %0m", "3  3 03"),
            ("%-M %_M %0M", "5  5 05"),
            ("%-S %_S %0S", "3  3 03"),
            ("%-u %_u %0u", "4 4 4"),
            ("%-w %_w %0w", "4 4 4"),
            ("%-U %_U %0U", "9  9 09"),
            ("%-V %_V %0V", "10 10 10"),
            ("%-W %_W %0W", "10 10 10"),
            ("%-C %_C %0C", "20 20 20"),
            ("%-y %_y %0y", "24 24 24"),
            ("%-g %_g %0g", "24 24 24"),
            ("%-Y %_Y %0Y", "2024 2024 2024"),
            ("%-G %_G %0G", "2024 2024 2024"),
        ];
        for (format, want) in cases {
            assert_eq!(t(format), want, "{format}");
        }
    }

    #[test]
    fn small_and_negative_years() {
        let tz = FixedOffset::east_opt(0).expect("valid offset");
        let y5 = tz
            .with_ymd_and_hms(5, 6, 1, 0, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(at("%Y %-Y %_Y %C %y", &y5), "0005 5    5 00 05");
        let bc = tz
            .with_ymd_and_hms(-44, 3, 15, 0, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(at("%Y %-Y %C %y", &bc), "-0044 -44 -01 56");
    }

    #[test]
    fn literals_and_non_ascii_text_pass_through() {
        assert_eq!(t("今天是 %A, %e. %B"), "今天是 Thursday,  7. March");
        assert_eq!(t("100%% sure"), "100% sure");
    }

    #[test]
    fn bad_conversions_name_the_conversion_and_its_offset() {
        assert_eq!(err(b"ab%Q"), "error: unknown conversion %Q at offset 2");
        assert_eq!(err(b"%"), "error: trailing % at offset 0");
        assert_eq!(err(b"%Y %"), "error: trailing % at offset 3");
        assert_eq!(
            err(b"%-"),
            "error: incomplete conversion %- at end of format (offset 0)"
        );
        assert_eq!(err(b"%Ec"), "error: unknown conversion %E at offset 0");
        assert_eq!(err(b"%E"), "error: unknown conversion %E at offset 0");
        assert_eq!(err(b"%O"), "error: unknown conversion %O at offset 0");
        assert_eq!(err(b"x%5Y"), "error: unknown conversion %5 at offset 1");
        assert_eq!(err(b"%#z"), "error: unknown conversion %# at offset 0");
        assert_eq!(err(b"%:z"), "error: unknown conversion %: at offset 0");
        assert_eq!(err(b"%+4Y"), "error: unknown conversion %+ at offset 0");
        assert_eq!(err(b"%^a"), "error: unknown conversion %^ at offset 0");
        assert_eq!(
            err(b"%-a"),
            "error: flag '-' does not apply to %a (not numeric) at offset 0"
        );
        assert_eq!(
            err(b"%_Z"),
            "error: flag '_' does not apply to %Z (not numeric) at offset 0"
        );
        assert_eq!(err(b"%--d"), "error: unknown conversion %-- at offset 0");
        assert_eq!(err(b"%0Q"), "error: unknown conversion %0Q at offset 0");
        assert_eq!(
            err("%é".as_bytes()),
            "error: unknown conversion %é at offset 0"
        );
        assert_eq!(err(b"%\n"), "error: unknown conversion %\\n at offset 0");
        // The first bad conversion is reported, even after good ones.
        assert_eq!(
            err(b"%Y-%m-%q-%Q"),
            "error: unknown conversion %q at offset 6"
        );
    }

    #[test]
    fn nul_and_non_utf8_are_refused() {
        assert_eq!(err(b"%Y\0%m"), "error: NUL byte at offset 2");
        assert_eq!(err(b"\0"), "error: NUL byte at offset 0");
        assert_eq!(
            err(b"%Y \xff"),
            "error: format is not UTF-8 (invalid byte at offset 3)"
        );
        // A truncated multi-byte character.
        assert_eq!(
            err(&"é".as_bytes()[..1]),
            "error: format is not UTF-8 (invalid byte at offset 0)"
        );
    }

    #[test]
    fn long_payload_is_refused() {
        let payload = "%c".repeat(5 * 1024);
        assert_eq!(
            err(payload.as_bytes()),
            "error: format too long: 10240 bytes, at most 256"
        );
        // 257 bytes of white space is still too long, not the default format.
        assert!(err(&[b' '; 257]).contains("too long"));
        // Exactly 256 bytes is fine.
        assert_eq!(t(&"x".repeat(256)), "x".repeat(256));
    }

    #[test]
    fn long_output_is_refused() {
        // 128 × 24 bytes = 3072 bytes of output from a 256-byte format.
        let payload = "%c".repeat(128);
        assert_eq!(payload.len(), 256);
        assert_eq!(
            err(payload.as_bytes()),
            "error: output too long: more than 1024 bytes"
        );
        // Exactly 1024 bytes of output is fine: 128 × "Thursday" (8 bytes).
        let payload = "%A".repeat(128);
        let mut reply = Vec::new();
        answer_at(payload.as_bytes(), &thursday(), &mut reply);
        assert_eq!(reply.len(), 1024);
        assert!(reply.starts_with(b"Thursday"));
        let wednesday = FixedOffset::east_opt(0)
            .and_then(|tz| tz.with_ymd_and_hms(2024, 3, 13, 0, 0, 0).single())
            .expect("valid");
        // "Wednesday" is 9 bytes: 114 × 9 = 1026 > 1024.
        let mut reply = Vec::new();
        answer_at("%A".repeat(114).as_bytes(), &wednesday, &mut reply);
        assert!(reply.starts_with(b"error: output too long"));
    }

    #[test]
    fn local_time_entry_point() {
        let now = Local::now();
        let mut reply = Vec::new();
        answer(b"", &now, &mut reply);
        assert_eq!(reply.len(), "2024-03-07 09:05:03".len(), "{reply:?}");
    }

    /// Formats with C's strftime in the C locale, for comparison.
    fn c_strftime(format: &str, now: &DateTime<FixedOffset>) -> String {
        let cformat = std::ffi::CString::new(format).expect("no NUL");
        // SAFETY: an all-zero `tm` is valid (null tm_zone, which %Z is not asked for here).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_sec = now.second() as i32;
        tm.tm_min = now.minute() as i32;
        tm.tm_hour = now.hour() as i32;
        tm.tm_mday = now.day() as i32;
        tm.tm_mon = now.month0() as i32;
        tm.tm_year = now.year() - 1900;
        tm.tm_wday = now.weekday().num_days_from_sunday() as i32;
        tm.tm_yday = now.ordinal0() as i32;
        tm.tm_gmtoff = i64::from(now.offset().local_minus_utc());
        let mut buf = vec![0u8; 4096];
        // SAFETY: buf is writable for its length, cformat is NUL-terminated, tm is initialised.
        let n =
            unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), cformat.as_ptr(), &tm) };
        buf.truncate(n);
        String::from_utf8(buf).expect("C locale output is ASCII")
    }

    /// Valid conversions other than %Z (whose C value is the abbreviation we do not print).
    const COMPARABLE: &[&str] = &[
        "%a", "%A", "%b", "%B", "%c", "%C", "%d", "%D", "%e", "%F", "%g", "%G", "%h", "%H", "%I",
        "%j", "%k", "%l", "%m", "%M", "%n", "%p", "%P", "%r", "%R", "%S", "%t", "%T", "%u", "%U",
        "%V", "%w", "%W", "%x", "%X", "%y", "%Y", "%z", "%%", "%-d", "%_d", "%0e", "%-j", "%_H",
        "%-l", "%0k", "%-U", "%_W", "%-V", "%-m", "%_M", "%-S", "%0C", "%-y", "%_g", "%-G", "x",
        " ", ":",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any bytes at all: a reply of at most MAX_OUTPUT bytes and no panic.
        #[test]
        fn any_payload_is_bounded(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut reply = Vec::new();
            answer_at(&payload, &thursday(), &mut reply);
            prop_assert!(reply.len() <= MAX_OUTPUT);
        }

        /// Formats built from '%' and the characters around it: bounded, no panic.
        #[test]
        fn percent_heavy_payload_is_bounded(payload in "[%a-zA-Z0-9_#:+^ -]{0,300}") {
            let mut reply = Vec::new();
            answer_at(payload.as_bytes(), &sunday(), &mut reply);
            prop_assert!(reply.len() <= MAX_OUTPUT);
        }

        /// Valid formats agree with C's strftime in the C locale, on any date in 1000..=9999.
        #[test]
        fn agrees_with_c_strftime(
            parts in proptest::collection::vec(proptest::sample::select(COMPARABLE), 1..20),
            secs in -30_000_000_000i64..250_000_000_000,
            offset_min in -(14 * 60)..=(14 * 60i32),
        ) {
            let tz = FixedOffset::east_opt(offset_min * 60).expect("in range");
            let now = DateTime::from_timestamp(secs, 0).expect("in range").with_timezone(&tz);
            let format = parts.concat();
            // White space alone means the default format here, not in C.
            prop_assume!(!format.bytes().all(|b| b.is_ascii_whitespace()));
            prop_assert_eq!(at(&format, &now), c_strftime(&format, &now), "{}", format);
        }
    }
}
