//! Which flows a request asks for: `--since`, `--until`, `--first`,
//! `--last`, `--all` and `--follow` into the request's fields, with the
//! defaults, exclusions and time formats of `hubble observe`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// How many flows when nothing says: the newest 20, as hubble.
pub const DEFAULT_LAST: u64 = 20;

/// The flags, as given.
#[derive(Debug, Clone, Default)]
pub struct WindowArgs {
    pub since: Option<String>,
    pub until: Option<String>,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub all: bool,
    pub follow: bool,
}

/// The request's fields they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub number: u64,
    pub first: bool,
    pub follow: bool,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl WindowArgs {
    /// The window at `now`. `--until` is ignored while following (the
    /// stream has no end), and the default count applies only when no
    /// time bound, count or follow is given.
    pub fn window(&self, now: SystemTime) -> Result<Window> {
        let first = self.first.filter(|n| *n > 0);
        let last = self.last.filter(|n| *n > 0);
        if first.is_some() && last.is_some() {
            bail!("cannot set both --first and --last");
        }
        if first.is_some() && self.all {
            bail!("cannot set both --first and --all");
        }
        if first.is_some() && self.follow {
            bail!("cannot set both --first and --follow");
        }
        if last.is_some() && self.all {
            bail!("cannot set both --last and --all");
        }
        let since = self
            .since
            .as_deref()
            .map(|s| parse_time(s, now).with_context(|| format!("failed to parse the since time {s:?}")))
            .transpose()?;
        let until = match (&self.until, self.follow) {
            (Some(u), false) => {
                Some(parse_time(u, now).with_context(|| format!("failed to parse the until time {u:?}"))?)
            }
            _ => None,
        };
        let mut number = first.or(last).unwrap_or(0);
        if since.is_none() && until.is_none() && first.is_none() {
            if self.all {
                number = u64::MAX;
            } else if last.is_none() && !self.follow {
                number = DEFAULT_LAST;
            }
        }
        Ok(Window {
            number,
            first: first.is_some(),
            follow: self.follow,
            since,
            until,
        })
    }
}

/// A time given on the command line: a duration ago (Go's syntax: `5m`,
/// `1h30m`, `1.5h`, `300ms`; `d` for days too), a date (`2026-12-01`,
/// midnight UTC), a date and hour or minute with a zone
/// (`2026-12-01T13Z`, `2026-12-01T13:05+01:00`), RFC 3339 (fractions
/// allowed) or RFC 1123 with a numeric zone (`Tue, 01 Dec 2026 13:00:00
/// +0000`).
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime> {
    if let Some(ago) = parse_duration(s) {
        return Ok(match ago {
            Ago::Past(d) => now.checked_sub(d).context("before 1970")?,
            Ago::Future(d) => now + d,
        });
    }
    if let Some(t) = parse_rfc1123z(s) {
        return t;
    }
    parse_date_time(s).with_context(|| {
        format!("failed to convert {s} to time (expected 5m, 2026-12-01, 2026-12-01T13:00:00Z or RFC 1123)")
    })
}

enum Ago {
    Past(Duration),
    Future(Duration),
}

/// Go's duration syntax: an optional sign, then `<decimal><unit>` pairs.
fn parse_duration(s: &str) -> Option<Ago> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    let d = Duration::try_from_secs_f64(total).ok()?;
    Some(if negative { Ago::Future(d) } else { Ago::Past(d) })
}

/// `2026-12-01`, `2026-12-01T13Z`, `2026-12-01T13:05Z`,
/// `2026-12-01T13:05:07.5+01:00` (also with a space for `T`).
fn parse_date_time(s: &str) -> Result<SystemTime> {
    let (date, rest) = match s.split_once(['T', ' ']) {
        Some((d, r)) => (d, Some(r)),
        None => (s, None),
    };
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>()?;
    let [y, mo, da] = d[..] else { bail!("date is y-m-d") };
    let Some(rest) = rest else {
        return civil(y, mo, da, 0, 0, 0, 0, 0);
    };
    let (time, offset) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, o) = rest.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':').context("offset is +hh:mm")?;
        (t, sign * (oh.parse::<i64>()? * 3600 + om.parse::<i64>()? * 60))
    } else {
        bail!("no time zone (Z or +hh:mm)")
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
    let (h, mi, se) = match t[..] {
        [h] => (h, 0, 0),
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => bail!("time is h[:m[:s]]"),
    };
    let nanos: u32 = format!("{frac:0<9}")[..9].parse()?;
    civil(y, mo, da, h, mi, se, nanos, offset)
}

/// `Tue, 01 Dec 2026 13:00:00 +0000`.
fn parse_rfc1123z(s: &str) -> Option<Result<SystemTime>> {
    let (_, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, zone] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mo = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    Some((|| {
        let t: Vec<i64> = time.split(':').map(str::parse).collect::<Result<_, _>>()?;
        let [h, mi, se] = t[..] else { bail!("time is h:m:s") };
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let z: i64 = zone[1..].parse()?;
        let offset = sign * ((z / 100) * 3600 + (z % 100) * 60);
        civil(year.parse()?, mo, day.parse()?, h, mi, se, 0, offset)
    })())
}

/// Seconds since the epoch of a civil date and time at a UTC offset.
#[allow(clippy::too_many_arguments)]
fn civil(y: i64, mo: i64, da: i64, h: i64, mi: i64, se: i64, nanos: u32, offset: i64) -> Result<SystemTime> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        bail!("out of range");
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se - offset;
    if secs < 0 {
        bail!("before 1970");
    }
    Ok(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn counts_and_bounds_make_the_requests_hubble_makes() {
        let now = at(1_000_000);
        let w = |a: WindowArgs| a.window(now).unwrap();
        let base = WindowArgs::default();
        assert_eq!(w(base.clone()).number, 20, "the newest 20 by default");
        assert_eq!(
            w(WindowArgs {
                first: Some(5),
                ..base.clone()
            }),
            Window {
                number: 5,
                first: true,
                follow: false,
                since: None,
                until: None
            }
        );
        assert_eq!(
            w(WindowArgs {
                all: true,
                ..base.clone()
            })
            .number,
            u64::MAX
        );
        assert_eq!(
            w(WindowArgs {
                follow: true,
                ..base.clone()
            })
            .number,
            0,
            "following: only new flows"
        );
        let since = w(WindowArgs {
            since: Some("5m".into()),
            all: true,
            ..base.clone()
        });
        assert_eq!((since.number, since.since), (0, Some(at(1_000_000 - 300))));
        let followed = w(WindowArgs {
            since: Some("5m".into()),
            until: Some("1m".into()),
            follow: true,
            ..base.clone()
        });
        assert_eq!(followed.until, None, "--until is ignored while following");
        for (bad, why) in [
            (
                WindowArgs {
                    first: Some(1),
                    last: Some(1),
                    ..base.clone()
                },
                "cannot set both --first and --last",
            ),
            (
                WindowArgs {
                    first: Some(1),
                    follow: true,
                    ..base.clone()
                },
                "cannot set both --first and --follow",
            ),
            (
                WindowArgs {
                    last: Some(1),
                    all: true,
                    ..base.clone()
                },
                "cannot set both --last and --all",
            ),
        ] {
            assert_eq!(bad.window(now).unwrap_err().to_string(), why);
        }
    }

    #[test]
    fn times_are_read_in_hubbles_formats() {
        let now = at(1_000_000);
        let t = |s: &str| parse_time(s, now).unwrap();
        assert_eq!(t("1h30m"), at(1_000_000 - 5400));
        assert_eq!(t("1.5h"), at(1_000_000 - 5400));
        assert_eq!(t("300ms"), now - Duration::from_millis(300));
        assert_eq!(t("2d"), at(1_000_000 - 172_800));
        assert_eq!(t("1970-01-02"), at(86_400));
        assert_eq!(t("1970-01-02T01Z"), at(90_000));
        assert_eq!(t("1970-01-02T01:01+01:00"), at(86_460));
        assert_eq!(t("1970-01-02T00:00:01.5Z"), at(86_401) + Duration::from_millis(500));
        assert_eq!(t("Fri, 02 Jan 1970 00:00:01 +0000"), at(86_401));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5x", now).is_err());
    }
}
