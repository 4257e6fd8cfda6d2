//! `strftime_now(fmt)`: the current date for templates that print it
//! (Llama 3.x's "Today Date"), as HF's helper does with Python's strftime.
//!
//! Time is UTC (tern has no time-zone database, and a prompt that depends on
//! the host's zone is not reproducible). Only the directives real templates
//! use are supported; an unknown one is copied through as Python does on
//! glibc for unknown directives it cannot expand.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tm {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    hour: u32,
    min: u32,
    sec: u32,
    weekday: u32, // 0 = Monday
    yday: u32,    // 1..=366
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl Tm {
    /// Seconds since the Unix epoch to UTC.
    pub(crate) fn from_unix(secs: i64) -> Tm {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[(month - 1) as usize] + day + u32::from(month > 2 && is_leap(year));
        Tm {
            year,
            month,
            day,
            hour: rem / 3600,
            min: rem / 60 % 60,
            sec: rem % 60,
            // 1970-01-01 was a Thursday (3).
            weekday: (days + 3).rem_euclid(7) as u32,
            yday,
        }
    }

    /// Now, in UTC.
    pub(crate) fn now() -> Tm {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Tm::from_unix(secs)
    }

    /// Python's `strftime` for the common directives.
    pub(crate) fn format(&self, fmt: &str) -> String {
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(d) = chars.next() else {
                out.push('%');
                break;
            };
            let month = MONTHS[(self.month - 1) as usize];
            let day = DAYS[self.weekday as usize];
            let h12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            match d {
                'Y' => out.push_str(&self.year.to_string()),
                'y' => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                'm' => out.push_str(&format!("{:02}", self.month)),
                'd' => out.push_str(&format!("{:02}", self.day)),
                'e' => out.push_str(&format!("{:2}", self.day)),
                '-' => match chars.next() {
                    // glibc's no-padding flag: %-d, %-m, %-H.
                    Some('d') => out.push_str(&self.day.to_string()),
                    Some('m') => out.push_str(&self.month.to_string()),
                    Some('H') => out.push_str(&self.hour.to_string()),
                    Some('I') => out.push_str(&h12.to_string()),
                    Some(o) => {
                        out.push_str("%-");
                        out.push(o)
                    }
                    None => out.push_str("%-"),
                },
                'B' => out.push_str(month),
                'b' | 'h' => out.push_str(&month[..3]),
                'A' => out.push_str(day),
                'a' => out.push_str(&day[..3]),
                'H' => out.push_str(&format!("{:02}", self.hour)),
                'I' => out.push_str(&format!("{h12:02}")),
                'M' => out.push_str(&format!("{:02}", self.min)),
                'S' => out.push_str(&format!("{:02}", self.sec)),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'j' => out.push_str(&format!("{:03}", self.yday)),
                'u' => out.push_str(&(self.weekday + 1).to_string()),
                'w' => out.push_str(&((self.weekday + 1) % 7).to_string()),
                'F' => out.push_str(&format!("{}-{:02}-{:02}", self.year, self.month, self.day)),
                'T' => out.push_str(&format!("{:02}:{:02}:{:02}", self.hour, self.min, self.sec)),
                'Z' => out.push_str("UTC"),
                'z' => out.push_str("+0000"),
                '%' => out.push('%'),
                o => {
                    out.push('%');
                    out.push(o)
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = Tm::from_unix(1_722_001_509);
        assert_eq!(
            t.format("%d %B %Y %H:%M:%S %a %A %b %j %-d %y %%"),
            "26 July 2024 13:45:09 Fri Friday Jul 208 26 24 %"
        );
        assert_eq!(
            Tm::from_unix(0).format("%F %T %A"),
            "1970-01-01 00:00:00 Thursday"
        );
        assert_eq!(Tm::from_unix(951_782_400).format("%F %j"), "2000-02-29 060");
    }
}
