//! When the next scheduled backup is due: a cron expression or a fixed interval, plus a random
//! delay so that many Pods sharing one schedule do not hit the object store at the same instant.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};
use rand::Rng;

use crate::{Error, Result};

/// The backup schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// No schedule: backups run only when requested over HTTP.
    Manual,
    /// A cron expression (5 fields, or 6 with seconds first), evaluated in local time.
    Cron(Box<croner::Cron>),
    /// A fixed interval, the first run one interval after start.
    Every(Duration),
}

impl Schedule {
    /// Parses a cron expression.
    pub fn cron(expr: &str) -> Result<Schedule> {
        let cron = croner::Cron::from_str(expr.trim()).map_err(|e| Error::Cron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        // Catch expressions that can never fire ("0 0 30 2 *") now, not at the first wait.
        cron.find_next_occurrence(&Local::now(), false)
            .map_err(|_| Error::NoOccurrence(expr.to_string()))?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// An interval schedule; a zero interval is refused.
    pub fn every(interval: Duration) -> Result<Schedule> {
        if interval.is_zero() {
            return Err(Error::Duration {
                text: "0s".into(),
                reason: "the interval must be positive".into(),
            });
        }
        Ok(Schedule::Every(interval))
    }

    /// How long after `now` the next run is due (without jitter); `None` for [`Schedule::Manual`].
    pub fn next_delay(&self, now: DateTime<Local>) -> Result<Option<Duration>> {
        match self {
            Schedule::Manual => Ok(None),
            Schedule::Every(d) => Ok(Some(*d)),
            Schedule::Cron(cron) => {
                let next = cron
                    .find_next_occurrence(&now, false)
                    .map_err(|_| Error::NoOccurrence(cron.as_str().to_string()))?;
                Ok(Some((next - now).to_std().unwrap_or(Duration::ZERO)))
            }
        }
    }

    /// The longest gap between two runs over the next 32 occurrences (zero for
    /// [`Schedule::Manual`]): what the stale-backup alert compares the snapshot age with.
    pub fn max_gap(&self, now: DateTime<Local>) -> Duration {
        match self {
            Schedule::Manual => Duration::ZERO,
            Schedule::Every(d) => *d,
            Schedule::Cron(cron) => {
                let mut gap = Duration::ZERO;
                let mut prev = match cron.find_next_occurrence(&now, false) {
                    Ok(t) => t,
                    Err(_) => return gap,
                };
                for _ in 0..32 {
                    let Ok(next) = cron.find_next_occurrence(&prev, false) else {
                        break;
                    };
                    gap = gap.max((next - prev).to_std().unwrap_or(Duration::ZERO));
                    prev = next;
                }
                gap
            }
        }
    }

    /// A human description for the startup log.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Manual => "manual (POST /backup only)".into(),
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => format!("cron {:?} ({})", c.as_str(), c.describe()),
        }
    }
}

/// A uniformly random delay in `[0, max]`.
pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_five_fields_next_occurrence() {
        let s = Schedule::cron("30 2 * * *").unwrap();
        let now = Local.with_ymd_and_hms(2024, 3, 1, 1, 0, 0).unwrap();
        assert_eq!(
            s.next_delay(now).unwrap(),
            Some(Duration::from_secs(90 * 60))
        );
        // Just after the occurrence: the next day.
        let now = Local.with_ymd_and_hms(2024, 3, 1, 2, 30, 0).unwrap();
        let d = s.next_delay(now).unwrap().unwrap();
        assert!(d > Duration::from_secs(23 * 3600), "{d:?}");
    }

    #[test]
    fn max_gap_is_the_longest_interval() {
        let now = Local.with_ymd_and_hms(2024, 3, 1, 1, 0, 0).unwrap();
        let s = Schedule::cron("0 */6 * * *").unwrap();
        assert_eq!(s.max_gap(now), Duration::from_secs(6 * 3600));
        // Weekdays only: the weekend gap counts.
        let s = Schedule::cron("0 2 * * 1-5").unwrap();
        assert_eq!(s.max_gap(now), Duration::from_secs(3 * 24 * 3600));
        assert_eq!(Schedule::Manual.max_gap(now), Duration::ZERO);
        let s = Schedule::every(Duration::from_secs(90)).unwrap();
        assert_eq!(s.max_gap(now), Duration::from_secs(90));
    }

    #[test]
    fn cron_errors_are_typed() {
        assert!(matches!(
            Schedule::cron("not a cron"),
            Err(Error::Cron { .. })
        ));
        assert!(matches!(
            Schedule::cron("61 * * * *"),
            Err(Error::Cron { .. })
        ));
    }

    #[test]
    fn interval_and_jitter() {
        assert!(Schedule::every(Duration::ZERO).is_err());
        let s = Schedule::every(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            s.next_delay(Local::now()).unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(Schedule::Manual.next_delay(Local::now()).unwrap(), None);
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(5)) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            crate::parse_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(crate::parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(crate::parse_duration("soon").is_err());
    }
}
