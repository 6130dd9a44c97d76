//! The retention policy: which points of a volume to keep. Pure: points and their
//! creation times in, a decision per point out.
//!
//! The semantics are restic's (`forget`) and Proxmox Backup Server's (`prune`):
//!
//! - `--keep-last N` keeps the N newest points;
//! - `--keep-hourly/-daily/-weekly/-monthly/-yearly N` walk the points newest first
//!   and keep the newest point of each hour, day, ISO week (Monday to Sunday, weeks of
//!   ISO 8601 week-numbering years), month or year, until N such periods have a kept
//!   point; periods without points are not counted (3 daily points may span a week);
//! - `--keep-within DURATION` keeps every point created within DURATION (e.g. `7d`,
//!   `1y6m`, `36h`) before the newest point (not before now: an idle volume keeps its
//!   history);
//! - the options add up: a point is kept if any of them keeps it, and the newest point
//!   is always kept.
//!
//! Periods are in UTC, from the archive header's `created` time. A policy without any
//! option would keep only the newest point and is refused.
//!
//! **Time is not order.** The sequence numbers order the points: the highest seq is
//! the newest point, whatever the clocks of the hosts that wrote them said. A writer
//! whose clock was behind gives a point an older `created` than its parent's, so the
//! rules use an *effective time* that never goes backwards along the sequence: the
//! latest `created` of the point and every point before it
//! ([`effective_times`]). "Newest" and `--keep-last` go by seq; a frozen clock puts
//! every point in one period, whose newest by seq is kept.

use chrono::{DateTime, Datelike, Months, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// How many points to keep, by rule. `None` = the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N points.
    pub last: Option<u32>,
    /// Keep the newest point of each of the newest N hours with points.
    pub hourly: Option<u32>,
    /// ... of each of the newest N days with points.
    pub daily: Option<u32>,
    /// ... of each of the newest N ISO weeks with points.
    pub weekly: Option<u32>,
    /// ... of each of the newest N months with points.
    pub monthly: Option<u32>,
    /// ... of each of the newest N years with points.
    pub yearly: Option<u32>,
    /// Keep every point created within this span before the newest point.
    pub within: Option<Within>,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No rule keeps anything.
    #[error(
        "the policy keeps nothing but the newest point: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within"
    )]
    Empty,
    /// A `--keep-within` span that cannot be parsed.
    #[error("invalid duration {0:?}: use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)")]
    BadDuration(String),
    /// A count of 0.
    #[error("--keep-{0} must be at least 1 (leave the option out to not use it)")]
    ZeroCount(&'static str),
    /// A `--max-chain-length` of 0.
    #[error("--max-chain-length must be at least 1 (leave the option out to not use it)")]
    ZeroChainLength,
}

/// A retention as the user writes it: `prune`'s `--keep-*` and `--max-chain-length`
/// options, or a config's `retention` table (the same names with `_`). Both become a
/// [`Retention`] through [`RetentionSpec::check`], with the same messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// `--keep-last`.
    pub keep_last: Option<u32>,
    /// `--keep-hourly`.
    pub keep_hourly: Option<u32>,
    /// `--keep-daily`.
    pub keep_daily: Option<u32>,
    /// `--keep-weekly`.
    pub keep_weekly: Option<u32>,
    /// `--keep-monthly`.
    pub keep_monthly: Option<u32>,
    /// `--keep-yearly`.
    pub keep_yearly: Option<u32>,
    /// `--keep-within`, as written (`7d`, `1y6m`).
    pub keep_within: Option<String>,
    /// `--max-chain-length`.
    pub max_chain_length: Option<u32>,
}

/// A checked retention: what to keep, and how long a chain may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// What to keep.
    pub policy: RetentionPolicy,
    /// Consolidate a chain longer than this.
    pub max_chain_length: Option<u32>,
}

impl RetentionSpec {
    /// The retention, checked: a `keep_within` span that parses, no count of 0, at
    /// least one rule.
    ///
    /// # Errors
    /// [`PolicyError`] naming the option.
    pub fn check(&self) -> Result<Retention, PolicyError> {
        let policy = RetentionPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.as_deref().map(Within::parse).transpose()?,
        };
        policy.check()?;
        if self.max_chain_length == Some(0) {
            return Err(PolicyError::ZeroChainLength);
        }
        Ok(Retention {
            policy,
            max_chain_length: self.max_chain_length,
        })
    }
}

/// A calendar span for `--keep-within`: years and months are calendar months, days are
/// calendar days (as restic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    /// Months (a year is 12).
    pub months: u32,
    /// Days (a week is 7).
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

impl Within {
    /// Parses `1y2m3w4d5h`-style spans: one or more numbers, each followed by a unit.
    ///
    /// # Errors
    /// [`PolicyError::BadDuration`].
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadDuration(s.to_string());
        let mut w = Within::default();
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().map_err(|_| bad())?;
            num.clear();
            let add = |field: &mut u32, k: u32| {
                *field = n
                    .checked_mul(k)
                    .and_then(|v| field.checked_add(v))
                    .ok_or_else(bad)?;
                Ok::<(), PolicyError>(())
            };
            match c {
                'y' => add(&mut w.months, 12)?,
                'm' => add(&mut w.months, 1)?,
                'w' => add(&mut w.days, 7)?,
                'd' => add(&mut w.days, 1)?,
                'h' => add(&mut w.hours, 1)?,
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || w == Within::default() {
            return Err(bad());
        }
        Ok(w)
    }

    /// `t` minus this span (saturating at the earliest time).
    fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t.checked_sub_months(Months::new(self.months))
            .and_then(|t| t.checked_sub_days(chrono::Days::new(u64::from(self.days))))
            .and_then(|t| t.checked_sub_signed(chrono::TimeDelta::hours(i64::from(self.hours))))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl std::fmt::Display for Within {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m) = (self.months / 12, self.months % 12);
        for (n, unit) in [(y, 'y'), (m, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// A point as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointTime {
    /// Sequence number.
    pub seq: u64,
    /// Creation time.
    pub created: DateTime<Utc>,
}

/// The decision for one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Sequence number.
    pub seq: u64,
    /// Whether the point is kept.
    pub keep: bool,
    /// The rules keeping it, with their period (`daily 2026-11-22`, `last`,
    /// `newest`); empty for a dropped point.
    pub reasons: Vec<String>,
}

impl RetentionPolicy {
    /// Checks that the policy keeps something besides the newest point.
    ///
    /// # Errors
    /// [`PolicyError`].
    pub fn check(&self) -> Result<(), PolicyError> {
        for (name, n) in self.counts() {
            if n == Some(0) {
                return Err(PolicyError::ZeroCount(name));
            }
        }
        if self.counts().iter().all(|(_, n)| n.is_none()) && self.within.is_none() {
            return Err(PolicyError::Empty);
        }
        Ok(())
    }

    fn counts(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }

    /// Decides for each of `points` (any order) whether it is kept; the result is in
    /// the order of `points`.
    ///
    /// # Errors
    /// [`PolicyError`] if the policy is empty or has a count of 0.
    pub fn apply(&self, points: &[PointTime]) -> Result<Vec<Decision>, PolicyError> {
        self.check()?;
        let time = effective_times(points);
        // Newest first: by seq, never by a clock.
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(points[i].seq));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); points.len()];
        if let Some(&newest) = order.first() {
            reasons[newest].push("newest".into());
            if let Some(w) = &self.within {
                let since = w.before(time[newest]);
                for &i in &order {
                    if time[i] >= since {
                        reasons[i].push(format!("within {w}"));
                    }
                }
            }
        }
        type Period = fn(DateTime<Utc>) -> String;
        let rules: [(&str, Option<u32>, Period); 6] = [
            ("last", self.last, |_| String::new()),
            ("hourly", self.hourly, |t| {
                format!("{}T{:02}", t.date_naive(), t.hour())
            }),
            ("daily", self.daily, |t| t.date_naive().to_string()),
            ("weekly", self.weekly, |t| {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }),
            ("monthly", self.monthly, |t| {
                format!("{}-{:02}", t.year(), t.month())
            }),
            ("yearly", self.yearly, |t| t.year().to_string()),
        ];
        for (name, count, period) in rules {
            let Some(count) = count else { continue };
            let mut kept = 0;
            let mut last: Option<String> = None;
            for &i in &order {
                if kept == count {
                    break;
                }
                // `last` counts every point; the others each new period.
                let p = if name == "last" {
                    points[i].seq.to_string()
                } else {
                    period(time[i])
                };
                if last.as_ref() != Some(&p) {
                    reasons[i].push(if name == "last" {
                        "last".to_string()
                    } else {
                        format!("{name} {p}")
                    });
                    kept += 1;
                    last = Some(p);
                }
            }
        }
        Ok(points
            .iter()
            .zip(reasons)
            .map(|(p, reasons)| Decision {
                seq: p.seq,
                keep: !reasons.is_empty(),
                reasons,
            })
            .collect())
    }
}

/// The effective time of each of `points` (any order; the result is in their
/// order): the latest `created` among the point and every point of a lower seq, so
/// that time never goes backwards along the sequence.
pub fn effective_times(points: &[PointTime]) -> Vec<DateTime<Utc>> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| points[i].seq);
    let mut out = vec![DateTime::<Utc>::MIN_UTC; points.len()];
    let mut latest = DateTime::<Utc>::MIN_UTC;
    for i in order {
        latest = latest.max(points[i].created);
        out[i] = latest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn points(times: &[&str]) -> Vec<PointTime> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| PointTime {
                seq: i as u64 + 1,
                created: at(t),
            })
            .collect()
    }

    fn kept(policy: &RetentionPolicy, pts: &[PointTime]) -> Vec<u64> {
        policy
            .apply(pts)
            .unwrap()
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.seq)
            .collect()
    }

    /// Two points a day at 01:00 and 13:00 from 2026-11-01 (a Sunday) to 2026-11-30.
    fn twice_daily() -> Vec<PointTime> {
        let mut v = Vec::new();
        for day in 1..=30 {
            for hour in [1, 13] {
                v.push(format!("2026-11-{day:02}T{hour:02}:00:00Z"));
            }
        }
        points(&v.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn one_check_for_every_retention_spec() {
        let spec = |f: fn(&mut RetentionSpec)| {
            let mut s = RetentionSpec::default();
            f(&mut s);
            s.check().map_err(|e| e.to_string())
        };
        assert_eq!(
            spec(|s| s.max_chain_length = Some(3)),
            Err(PolicyError::Empty.to_string())
        );
        assert_eq!(
            spec(|s| s.keep_within = Some("7x".into())),
            Err("invalid duration \"7x\": use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)".into())
        );
        for (f, option) in [
            (
                (|s: &mut RetentionSpec| s.keep_last = Some(0)) as fn(&mut RetentionSpec),
                "--keep-last",
            ),
            (|s| s.keep_hourly = Some(0), "--keep-hourly"),
            (|s| s.keep_daily = Some(0), "--keep-daily"),
            (|s| s.keep_weekly = Some(0), "--keep-weekly"),
            (|s| s.keep_monthly = Some(0), "--keep-monthly"),
            (|s| s.keep_yearly = Some(0), "--keep-yearly"),
            (
                |s| {
                    s.keep_last = Some(1);
                    s.max_chain_length = Some(0);
                },
                "--max-chain-length",
            ),
        ] {
            assert_eq!(
                spec(f),
                Err(format!(
                    "{option} must be at least 1 (leave the option out to not use it)"
                ))
            );
        }
        let r = spec(|s| {
            s.keep_daily = Some(7);
            s.keep_within = Some("1y6m".into());
            s.max_chain_length = Some(60);
        })
        .unwrap();
        assert_eq!(r.policy.daily, Some(7));
        assert_eq!(r.policy.within.unwrap().to_string(), "1y6m");
        assert_eq!(r.max_chain_length, Some(60));
    }

    #[test]
    fn empty_and_zero_policies_are_refused() {
        let pts = points(&["2026-11-01T00:00:00Z"]);
        assert_eq!(
            RetentionPolicy::default().apply(&pts),
            Err(PolicyError::Empty)
        );
        let zero = RetentionPolicy {
            daily: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.apply(&pts), Err(PolicyError::ZeroCount("daily")));
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let p = RetentionPolicy {
            last: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&p, &twice_daily()), vec![58, 59, 60]);
    }

    #[test]
    fn daily_keeps_the_newest_point_of_each_day() {
        let p = RetentionPolicy {
            daily: Some(3),
            ..Default::default()
        };
        // 13:00 of Nov 28, 29, 30 (seqs 56, 58, 60).
        let d = p.apply(&twice_daily()).unwrap();
        assert_eq!(
            d.iter()
                .filter(|d| d.keep)
                .map(|d| d.seq)
                .collect::<Vec<_>>(),
            vec![56, 58, 60]
        );
        assert_eq!(d[55].reasons, vec!["daily 2026-11-28"]);
        assert_eq!(d[59].reasons, vec!["newest", "daily 2026-11-30"]);
        assert!(d[56].reasons.is_empty());
    }

    #[test]
    fn weekly_uses_iso_weeks_and_empty_periods_do_not_count() {
        // Sunday 2026-11-01 is in ISO week 44; Mon 2026-11-02 starts week 45. No points
        // in weeks 46 and 47.
        let pts = points(&[
            "2026-10-31T10:00:00Z", // Sat, W44
            "2026-11-01T23:00:00Z", // Sun, W44 (newest of W44)
            "2026-11-02T00:30:00Z", // Mon, W45
            "2026-11-05T00:30:00Z", // Thu, W45 (newest of W45)
            "2026-11-23T08:00:00Z", // Mon, W48
        ]);
        let p = RetentionPolicy {
            weekly: Some(3),
            ..Default::default()
        };
        let d = p.apply(&pts).unwrap();
        assert_eq!(
            d.iter()
                .filter(|d| d.keep)
                .map(|d| d.seq)
                .collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
        assert_eq!(d[1].reasons, vec!["weekly 2026-W44"]);
        assert_eq!(d[3].reasons, vec!["weekly 2026-W45"]);
    }

    #[test]
    fn iso_week_years_cross_calendar_years() {
        // 2027-01-01 is a Friday of ISO week 2026-W53; 2027-01-04 is 2027-W01.
        let pts = points(&[
            "2026-12-28T00:00:00Z",
            "2027-01-01T00:00:00Z",
            "2027-01-04T00:00:00Z",
        ]);
        let p = RetentionPolicy {
            weekly: Some(5),
            ..Default::default()
        };
        let d = p.apply(&pts).unwrap();
        assert_eq!(kept(&p, &pts), vec![2, 3]);
        assert_eq!(d[1].reasons, vec!["weekly 2026-W53"]);
        assert_eq!(d[2].reasons, vec!["newest", "weekly 2027-W01"]);
    }

    #[test]
    fn hourly_monthly_yearly_and_combined_rules() {
        let pts = points(&[
            "2024-06-01T00:00:00Z",
            "2025-03-01T00:00:00Z",
            "2025-12-31T23:59:59Z",
            "2026-01-15T10:10:00Z",
            "2026-01-15T10:50:00Z",
            "2026-01-15T11:05:00Z",
            "2026-02-01T00:00:00Z",
        ]);
        let hourly = RetentionPolicy {
            hourly: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&hourly, &pts), vec![5, 6, 7]);
        let monthly = RetentionPolicy {
            monthly: Some(3),
            ..Default::default()
        };
        assert_eq!(kept(&monthly, &pts), vec![3, 6, 7]);
        let yearly = RetentionPolicy {
            yearly: Some(10),
            ..Default::default()
        };
        assert_eq!(kept(&yearly, &pts), vec![1, 3, 7]);
        let both = RetentionPolicy {
            last: Some(1),
            yearly: Some(2),
            hourly: Some(2),
            ..Default::default()
        };
        let d = both.apply(&pts).unwrap();
        assert_eq!(kept(&both, &pts), vec![3, 6, 7]);
        assert_eq!(
            d[6].reasons,
            vec!["newest", "last", "hourly 2026-02-01T00", "yearly 2026"]
        );
        assert_eq!(d[2].reasons, vec!["yearly 2025"]);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_point() {
        let pts = points(&[
            "2026-10-30T11:59:59Z",
            "2026-11-23T11:59:59Z",
            "2026-11-23T12:00:00Z",
            "2026-11-30T12:00:00Z",
        ]);
        let p = RetentionPolicy {
            within: Some(Within::parse("1w").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &pts), vec![3, 4]);
        let p = RetentionPolicy {
            within: Some(Within::parse("1m").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &pts), vec![2, 3, 4]);
        assert_eq!(p.apply(&pts).unwrap()[2].reasons, vec!["within 1m"]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            Within::parse("1y2m3w4d5h").unwrap(),
            Within {
                months: 14,
                days: 25,
                hours: 5
            }
        );
        assert_eq!(Within::parse("36h").unwrap().to_string(), "36h");
        assert_eq!(Within::parse("18m").unwrap().to_string(), "1y6m");
        for bad in ["", "7", "d", "7x", "1.5d", "-1d", "0d", "99999999999d"] {
            assert_eq!(
                Within::parse(bad),
                Err(PolicyError::BadDuration(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_newest_point_is_always_kept() {
        let pts = points(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        let p = RetentionPolicy {
            within: Some(Within::parse("1h").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &pts), vec![2]);
        assert_eq!(kept(&p, &[]), Vec::<u64>::new());
    }

    /// Every kind of rule, each with a count of 1 (and keep-within 1h).
    fn every_rule() -> Vec<RetentionPolicy> {
        let one = Some(1);
        vec![
            RetentionPolicy {
                last: one,
                ..Default::default()
            },
            RetentionPolicy {
                hourly: one,
                ..Default::default()
            },
            RetentionPolicy {
                daily: one,
                ..Default::default()
            },
            RetentionPolicy {
                weekly: one,
                ..Default::default()
            },
            RetentionPolicy {
                monthly: one,
                ..Default::default()
            },
            RetentionPolicy {
                yearly: one,
                ..Default::default()
            },
            RetentionPolicy {
                within: Some(Within::parse("1h").unwrap()),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn time_is_not_order_every_rule_keeps_the_tip() {
        let skews: [(&str, Vec<&str>); 4] = [
            // The tip's writer was 3 h behind: it looks older than its parent.
            (
                "clock behind",
                vec![
                    "2026-11-29T23:00:00Z",
                    "2026-11-30T01:00:00Z",
                    "2026-11-29T22:00:00Z",
                ],
            ),
            // One writer was 2 days ahead, the tip's clock is right again.
            (
                "clock ahead",
                vec![
                    "2026-11-28T01:00:00Z",
                    "2026-11-30T23:00:00Z",
                    "2026-11-28T02:00:00Z",
                ],
            ),
            // A frozen clock: every point at the same instant.
            ("frozen", vec!["2026-01-01T00:00:00Z"; 3]),
            // The clock jumped back a year (a dead RTC battery).
            (
                "jump back a year",
                vec![
                    "2026-11-28T01:00:00Z",
                    "2026-11-29T01:00:00Z",
                    "2025-11-29T01:00:00Z",
                ],
            ),
        ];
        for (what, times) in skews {
            let pts = points(&times);
            for p in every_rule() {
                let d = p.apply(&pts).unwrap();
                assert!(d[2].keep, "{what}, {p:?}: {d:?}");
                assert_eq!(d[2].reasons[0], "newest", "{what}, {p:?}");
                // Counts of 1 keep the tip only, whatever the clocks said.
                if p.within.is_none() {
                    assert!(!d[0].keep && !d[1].keep, "{what}, {p:?}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn effective_times_never_go_backwards_along_the_seqs() {
        let pts = points(&[
            "2026-11-30T01:00:00Z",
            "2026-11-29T22:00:00Z",
            "2026-11-30T02:00:00Z",
        ]);
        // Any input order; the result follows it.
        let reversed: Vec<PointTime> = pts.iter().rev().copied().collect();
        assert_eq!(
            effective_times(&reversed),
            [
                at("2026-11-30T02:00:00Z"),
                at("2026-11-30T01:00:00Z"),
                at("2026-11-30T01:00:00Z")
            ]
        );
        // keep-within counts back from the tip's effective time: the point written
        // with a slow clock is within an hour of its successor.
        let p = RetentionPolicy {
            within: Some(Within::parse("1h").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &pts), vec![1, 2, 3]);
        // Daily periods by effective time: seq 2 counts on Nov 30, not Nov 29.
        let p = RetentionPolicy {
            daily: Some(2),
            ..Default::default()
        };
        assert_eq!(kept(&p, &pts), vec![3]);
    }
}
