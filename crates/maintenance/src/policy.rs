//! Keep policies with restic's exact semantics (restic 0.14 `ExpirePolicy` / `ApplyPolicy`).
//!
//! Snapshots are walked newest to oldest. Each counted rule (last, hourly, daily, weekly,
//! monthly, yearly) maps a snapshot to a bucket value and keeps it when that value differs from
//! the value of the last snapshot that rule kept, until the rule's count is used up. Rules count
//! independently; a snapshot kept by any rule (or by `--keep-tag` / `--keep-within`) is kept.
//!
//! Buckets use the wall clock of the time as stored in the snapshot (restic parses the stored
//! offset and uses it), ISO weeks as Go's `ISOWeek`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, TimeZone, Timelike};
use snapback_repo::file::SnapshotFile;
use snapback_repo::Id;

use crate::{Error, Result};

/// A set of tags that must all be present (`--keep-tag a,b`, `--tag a,b`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagList(pub Vec<String>);

impl FromStr for TagList {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(TagList(
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
}

impl fmt::Display for TagList {
    /// As Go prints a `[]string`: `[a b]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.join(" "))
    }
}

impl TagList {
    /// Whether `snapshot` has every tag of this list (restic's `HasTags`; an empty list matches
    /// every snapshot).
    pub fn matches(&self, snapshot: &SnapshotFile) -> bool {
        self.0.iter().all(|t| snapshot.tags.contains(t))
    }
}

/// A calendar duration for `--keep-within`: `1y2m3d4h` (any parts, in this order of units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    /// Years.
    pub years: i32,
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Hours.
    pub hours: i32,
}

impl FromStr for KeepDuration {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidOption {
            what: "duration",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let mut d = KeepDuration::default();
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i32 = num
                .parse()
                .map_err(|_| bad("expected a number before each unit"))?;
            num.clear();
            match c {
                'y' => d.years = n,
                'm' => d.months = n,
                'd' => d.days = n,
                'h' => d.hours = n,
                _ => return Err(bad("units are y, m, d and h (e.g. 1y2m3d4h)")),
            }
        }
        if !num.is_empty() {
            return Err(bad("a number without unit (use y, m, d or h)"));
        }
        Ok(d)
    }
}

impl fmt::Display for KeepDuration {
    /// restic's form: the non-zero parts, e.g. `2d4h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl KeepDuration {
    /// Whether every part is zero (the option is off).
    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }

    /// `t` minus this duration, normalising out-of-range dates as Go's `AddDate` does
    /// (March 31 minus one month is March 3 or 2, not February 28).
    pub fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let months = i64::from(t.year()) * 12 + i64::from(t.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month = u32::try_from(months.rem_euclid(12)).ok()? + 1;
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let day = first.checked_add_signed(Duration::days(
            i64::from(t.day()) - 1 - i64::from(self.days),
        ))?;
        let local = day.and_time(t.time());
        let shifted = t.offset().from_local_datetime(&local).single()?;
        shifted.checked_sub_signed(Duration::hours(i64::from(self.hours)))
    }
}

/// Which snapshots to keep; all zero/empty means "keep everything" (restic: empty policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpirePolicy {
    /// Keep the newest N snapshots.
    pub last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
    /// Keep every snapshot newer than the newest snapshot minus this duration.
    pub within: Option<KeepDuration>,
    /// Keep snapshots having all tags of any of these lists.
    pub tags: Vec<TagList>,
}

impl ExpirePolicy {
    /// No rule set: nothing would be removed.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none_or(|w| w.is_zero())
            && self.tags.is_empty()
    }
}

impl fmt::Display for ExpirePolicy {
    /// restic's "Applying Policy: ..." text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.last, "latest"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if let Some(w) = self.within.filter(|w| !w.is_zero()) {
            parts.push(format!("all within {w}"));
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|t| t.0.join(",")).collect();
            parts.push(format!("all with tags {}", tags.join(" ")));
        }
        if parts.is_empty() {
            return f.write_str("keep all snapshots");
        }
        write!(f, "keep {} snapshots", parts.join(", "))
    }
}

/// Keep or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The snapshot stays.
    Keep,
    /// The snapshot's file is deleted.
    Remove,
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: Id,
    /// Keep or remove.
    pub action: Action,
    /// Why it is kept (restic's wording: "last snapshot", "daily snapshot", ...); empty when
    /// removed.
    pub reasons: Vec<String>,
}

type Bucker = fn(&DateTime<FixedOffset>, usize) -> i64;

fn last(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}
fn hour(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    day(t, 0) * 100 + i64::from(t.hour())
}
fn day(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    month(t, 0) * 100 + i64::from(t.day())
}
fn week(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    year(t, 0) * 100 + i64::from(t.month())
}
fn year(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    i64::from(t.year())
}

/// Decides for every snapshot of one group whether `policy` keeps it. Returns the decisions
/// newest first (ties by time are ordered by id, which restic leaves unspecified).
pub fn apply_policy(snapshots: &[(Id, SnapshotFile)], policy: &ExpirePolicy) -> Vec<Decision> {
    let mut list: Vec<&(Id, SnapshotFile)> = snapshots.iter().collect();
    list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
    if policy.is_empty() {
        return list
            .iter()
            .map(|(id, _)| Decision {
                id: *id,
                action: Action::Keep,
                reasons: vec!["policy is empty".into()],
            })
            .collect();
    }
    struct Rule {
        count: u32,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let mut rules = [
        (policy.last, last as Bucker, "last snapshot"),
        (policy.hourly, hour, "hourly snapshot"),
        (policy.daily, day, "daily snapshot"),
        (policy.weekly, week, "weekly snapshot"),
        (policy.monthly, month, "monthly snapshot"),
        (policy.yearly, year, "yearly snapshot"),
    ]
    .map(|(count, bucker, reason)| Rule {
        count,
        bucker,
        last: None,
        reason,
    });
    let within_limit = match (policy.within, list.first()) {
        (Some(w), Some((_, newest))) if !w.is_zero() => w.before(newest.time),
        _ => None,
    };
    let mut out = Vec::with_capacity(list.len());
    for (nr, (id, snap)) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        // Tags and age are not counted.
        for tags in &policy.tags {
            if tags.matches(snap) {
                reasons.push(format!("has tags {tags}"));
            }
        }
        if let (Some(limit), Some(w)) = (within_limit, policy.within) {
            if snap.time > limit {
                reasons.push(format!("within {w}"));
            }
        }
        for rule in rules.iter_mut().filter(|r| r.count > 0) {
            let value = (rule.bucker)(&snap.time, nr);
            if rule.last != Some(value) {
                rule.last = Some(value);
                rule.count -= 1;
                reasons.push(rule.reason.to_string());
            }
        }
        out.push(Decision {
            id: *id,
            action: if reasons.is_empty() {
                Action::Remove
            } else {
                Action::Keep
            },
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, tags: &[&str]) -> (Id, SnapshotFile) {
        let time = DateTime::parse_from_rfc3339(time).unwrap();
        let file = SnapshotFile {
            time,
            parent: None,
            tree: Id::hash(b"tree"),
            paths: vec!["/data".into()],
            hostname: "h".into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            original: None,
            program_version: None,
        };
        (Id::hash(time.to_rfc3339().as_bytes()), file)
    }

    fn kept_times(snaps: &[(Id, SnapshotFile)], policy: &ExpirePolicy) -> Vec<String> {
        apply_policy(snaps, policy)
            .into_iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| {
                let s = snaps.iter().find(|(id, _)| *id == d.id).unwrap();
                s.1.time.format("%Y-%m-%d %H:%M").to_string()
            })
            .collect()
    }

    /// A backup every 6 hours from 2024-01-01 through 2024-03-31 (UTC).
    fn series() -> Vec<(Id, SnapshotFile)> {
        let start = DateTime::parse_from_rfc3339("2024-01-01T00:30:00Z").unwrap();
        (0..91 * 4)
            .map(|i| {
                let t = start + Duration::hours(6 * i);
                snap(&t.to_rfc3339(), &[])
            })
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let s = series();
        let p = ExpirePolicy {
            last: 3,
            ..Default::default()
        };
        assert_eq!(
            kept_times(&s, &p),
            ["2024-03-31 18:30", "2024-03-31 12:30", "2024-03-31 06:30"]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_rules_count_independently() {
        let s = series();
        // restic's documented example: --keep-daily 2 --keep-last 1 keeps the newest snapshot
        // (which is also the newest of its day: both rules count it) and the newest of the day
        // before.
        let p = ExpirePolicy {
            last: 1,
            daily: 2,
            ..Default::default()
        };
        let d = apply_policy(&s, &p);
        assert_eq!(d[0].reasons, ["last snapshot", "daily snapshot"]);
        assert_eq!(kept_times(&s, &p), ["2024-03-31 18:30", "2024-03-30 18:30"]);
        let p = ExpirePolicy {
            last: 2,
            daily: 2,
            ..Default::default()
        };
        assert_eq!(
            kept_times(&s, &p),
            ["2024-03-31 18:30", "2024-03-31 12:30", "2024-03-30 18:30"]
        );
    }

    #[test]
    fn weekly_uses_iso_weeks_and_monthly_calendar_months() {
        let s = series();
        let p = ExpirePolicy {
            weekly: 3,
            ..Default::default()
        };
        // 2024-03-31 is a Sunday (ISO week 13); the week before ends on Sunday 03-24.
        assert_eq!(
            kept_times(&s, &p),
            ["2024-03-31 18:30", "2024-03-24 18:30", "2024-03-17 18:30"]
        );
        let p = ExpirePolicy {
            monthly: 5,
            ..Default::default()
        };
        // Only three months have snapshots: a count larger than the history keeps one each.
        assert_eq!(
            kept_times(&s, &p),
            ["2024-03-31 18:30", "2024-02-29 18:30", "2024-01-31 18:30"]
        );
        let p = ExpirePolicy {
            yearly: 1,
            hourly: 2,
            ..Default::default()
        };
        assert_eq!(kept_times(&s, &p), ["2024-03-31 18:30", "2024-03-31 12:30"]);
    }

    #[test]
    fn iso_week_belongs_to_the_iso_year() {
        // 2020-12-31 and 2021-01-01 are both in ISO week 2020-53: one weekly bucket.
        let s = vec![
            snap("2021-01-01T10:00:00Z", &[]),
            snap("2020-12-31T10:00:00Z", &[]),
            snap("2020-12-27T10:00:00Z", &[]),
        ];
        let p = ExpirePolicy {
            weekly: 2,
            ..Default::default()
        };
        assert_eq!(kept_times(&s, &p), ["2021-01-01 10:00", "2020-12-27 10:00"]);
    }

    #[test]
    fn buckets_use_the_stored_offset() {
        // 23:30 at +02:00 is 21:30 UTC on the same day; 00:30 at +02:00 is the previous day in
        // UTC but its own day on the stored wall clock.
        let s = vec![
            snap("2024-05-02T00:30:00+02:00", &[]),
            snap("2024-05-01T23:30:00+02:00", &[]),
        ];
        let p = ExpirePolicy {
            daily: 10,
            ..Default::default()
        };
        assert_eq!(kept_times(&s, &p).len(), 2);
    }

    #[test]
    fn tags_and_within_keep_without_counting() {
        let mut s = series();
        s.push(snap("2023-06-01T00:00:00Z", &["monthly", "keep"]));
        s.push(snap("2023-05-01T00:00:00Z", &["monthly"]));
        let p = ExpirePolicy {
            last: 1,
            tags: vec!["monthly,keep".parse().unwrap()],
            ..Default::default()
        };
        let kept = kept_times(&s, &p);
        assert_eq!(kept, ["2024-03-31 18:30", "2023-06-01 00:00"]);
        let d = apply_policy(&s, &p);
        let tagged = d
            .iter()
            .find(|d| d.reasons.iter().any(|r| r.contains("tags")));
        assert_eq!(tagged.unwrap().reasons, ["has tags [monthly keep]"]);

        let p = ExpirePolicy {
            within: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        // Strictly after newest minus one day: 2024-03-30 18:30 itself is not kept.
        assert_eq!(
            kept_times(&s, &p),
            [
                "2024-03-31 18:30",
                "2024-03-31 12:30",
                "2024-03-31 06:30",
                "2024-03-31 00:30"
            ]
        );
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let s = series();
        let d = apply_policy(&s, &ExpirePolicy::default());
        assert!(d.iter().all(|d| d.action == Action::Keep));
        assert_eq!(d[0].reasons, ["policy is empty"]);
    }

    #[test]
    fn durations_parse_print_and_subtract_like_go() {
        let d: KeepDuration = "1y2m3d4h".parse().unwrap();
        assert_eq!(
            d,
            KeepDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!(d.to_string(), "1y2m3d4h");
        assert!("3x".parse::<KeepDuration>().is_err());
        assert!("12".parse::<KeepDuration>().is_err());
        assert!("d".parse::<KeepDuration>().is_err());
        // Go: time.Date(2024, 3, 31).AddDate(0, -1, 0) = 2024-03-02 (February 31 normalised).
        let t = DateTime::parse_from_rfc3339("2024-03-31T12:00:00+01:00").unwrap();
        let m: KeepDuration = "1m".parse().unwrap();
        assert_eq!(
            m.before(t).unwrap().to_rfc3339(),
            "2024-03-02T12:00:00+01:00"
        );
        let h: KeepDuration = "1d2h".parse().unwrap();
        assert_eq!(
            h.before(t).unwrap().to_rfc3339(),
            "2024-03-30T10:00:00+01:00"
        );
    }
}
