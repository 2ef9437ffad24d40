//! Schedule trigger specifications: `every:<duration>` and `cron:<expr>`.
//!
//! - `every:<d>` (humantime: `10s`, `1m 30s`, `250ms`) fires at every multiple of `d`
//!   since the Unix epoch, so `every:1h` fires on the hour whenever the server started.
//!   Durations below 1 ms are refused.
//! - `cron:<expr>` takes 6 fields (seconds first, as InfluxDB 3) or the classic 5 (the
//!   seconds are then 0), evaluated in UTC.

use std::{str::FromStr as _, time::Duration};

use chrono::{DateTime, Utc};

/// The shortest `every:` interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A parsed schedule, with the text it was parsed from (two schedules are equal when
/// their texts are).
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `every:<d>`, in ns.
    Every(i64),
    /// `cron:<expr>`.
    Cron(Box<croner::Cron>),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Schedule {}

impl Schedule {
    /// Parse `every:<d>` or `cron:<expr>`; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        Ok(Self { text: spec.to_string(), kind: Kind::parse(spec)? })
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Refuse a cron expression that can never fire (`0 0 30 2 *`): checked when a trigger
    /// is created or a dry run asks for one, not when a stored one is loaded.
    pub fn check_fires(&self) -> Result<(), String> {
        match &self.kind {
            Kind::Cron(cron) if cron.find_next_occurrence(&Utc::now(), false).is_err() => {
                let expr = self.text.strip_prefix("cron:").unwrap_or(&self.text);
                Err(format!("cron expression {expr:?} never fires"))
            }
            _ => Ok(()),
        }
    }

    /// The first fire time strictly after `t` (ns since the epoch).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        self.kind.next_after(t)
    }

    /// Fire times in `(after, until]`: how many, and the latest (bounded work for cron).
    pub fn due(&self, after: i64, until: i64) -> (u64, Option<i64>) {
        self.kind.due(after, until)
    }
}

impl Kind {
    fn parse(spec: &str) -> Result<Self, String> {
        if let Some(d) = spec.strip_prefix("every:") {
            let d = d.trim();
            let interval = humantime::parse_duration(d).map_err(|e| {
                format!("invalid duration {d:?} in {spec:?}: {e} (examples: every:10s, every:1m, every:250ms)")
            })?;
            if interval < MIN_INTERVAL {
                return Err(format!("{spec:?} is shorter than the minimum schedule interval of 1ms"));
            }
            let ns = i64::try_from(interval.as_nanos()).map_err(|_| format!("{spec:?} is too long"))?;
            return Ok(Self::Every(ns));
        }
        if let Some(expr) = spec.strip_prefix("cron:") {
            let fields = expr.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(format!(
                    "invalid cron expression {expr:?}: expected 6 fields (second minute hour day-of-month month day-of-week) or 5 (without seconds), got {fields}"
                ));
            }
            let cron = croner::Cron::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
            return Ok(Self::Cron(Box::new(cron)));
        }
        Err(format!("{spec:?} is not a schedule (every:<duration> or cron:<expr>)"))
    }

    fn next_after(&self, t: i64) -> Option<i64> {
        match self {
            Self::Every(d) => t.div_euclid(*d).checked_add(1)?.checked_mul(*d),
            Self::Cron(cron) => {
                let at = DateTime::<Utc>::from_timestamp_nanos(t);
                let next = cron.find_next_occurrence(&at, false).ok()?;
                next.timestamp_nanos_opt()
            }
        }
    }

    fn due(&self, after: i64, until: i64) -> (u64, Option<i64>) {
        if until <= after {
            return (0, None);
        }
        match self {
            Self::Every(d) => {
                let first = after.div_euclid(*d) + 1;
                let last = until.div_euclid(*d);
                if last < first { (0, None) } else { ((last - first + 1) as u64, Some(last * d)) }
            }
            Self::Cron(_) => {
                let (mut n, mut latest, mut t) = (0u64, None, after);
                while let Some(next) = self.next_after(t).filter(|n| *n <= until) {
                    n += 1;
                    latest = Some(next);
                    t = next;
                    if n >= 100_000 {
                        break;
                    }
                }
                (n, latest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = Schedule::parse("every:10s").unwrap();
        assert_eq!(s.next_after(0), Some(10 * S));
        assert_eq!(s.next_after(123 * S + 5), Some(130 * S));
        assert_eq!(s.next_after(130 * S), Some(140 * S));
        assert_eq!(s.due(100 * S, 135 * S), (3, Some(130 * S)));
        assert_eq!(s.due(100 * S, 105 * S), (0, None));
        let ms = Schedule::parse("every:250ms").unwrap();
        assert_eq!(ms.next_after(S + 1), Some(S + 250_000_000));
    }

    #[test]
    fn bad_schedules_say_why() {
        for (spec, want) in [
            ("every:500us", "minimum schedule interval of 1ms"),
            ("every:0s", "minimum"),
            ("every:soon", "invalid duration"),
            ("cron:* * *", "expected 6 fields"),
            ("cron:61 * * * * *", "invalid cron expression"),
            ("cron:0 0 0 30 2 *", "never fires"),
        ] {
            let e = Schedule::parse(spec).and_then(|s| s.check_fires()).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn cron_takes_six_fields_or_five_in_utc() {
        // 2024-01-01T00:00:00Z
        let t0 = 1_704_067_200 * S;
        let six = Schedule::parse("cron:*/15 * * * * *").unwrap();
        assert_eq!(six.next_after(t0), Some(t0 + 15 * S));
        assert_eq!(six.due(t0, t0 + 60 * S), (4, Some(t0 + 60 * S)));
        let five = Schedule::parse("cron:30 2 * * *").unwrap();
        assert_eq!(five.next_after(t0), Some(t0 + (2 * 3600 + 30 * 60) * S));
    }
}
