//! `--supply-drop CITY:FRACTION:START:END`: a share of one city's drivers goes offline for a
//! while (a storm, an app outage), the supply side of SPEC §5 that `--surge` is to demand.
//!
//! The flag is parsed here; [`super::world`] applies it. START and END are durations from
//! the start of the run, written like `--surge`'s (`90s`, `2m`, `1h 30m` or plain seconds),
//! so one scenario reads the same on both flags.

use std::time::Duration;

use super::world::parse_duration;

/// A temporary loss of drivers in one city.
#[derive(Clone, Debug, PartialEq)]
pub struct SupplyDrop {
    /// The city.
    pub city: String,
    /// Share of the city's drivers that go offline, in (0, 1].
    pub fraction: f64,
    /// When it begins, from the start of the run.
    pub start: Duration,
    /// When it ends, from the start of the run.
    pub end: Duration,
}

impl SupplyDrop {
    /// Parses `CITY:FRACTION:START:END`; FRACTION is a share (`0.6`) or a percentage
    /// (`60%`), e.g. `bratislava:0.6:2m:6m`.
    pub fn parse(text: &str) -> Result<SupplyDrop, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [city, fraction, start, end] = parts[..] else {
            return Err(format!(
                "--supply-drop `{text}`: expected CITY:FRACTION:START:END, e.g. bratislava:0.6:2m:6m"
            ));
        };
        let city = city.trim();
        if city.is_empty() {
            return Err(format!("--supply-drop `{text}`: CITY is empty"));
        }
        let share = match fraction.trim().strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
            None => fraction.trim().parse::<f64>(),
        };
        let fraction = share
            .ok()
            .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1.0)
            .ok_or_else(|| {
                format!(
                    "--supply-drop `{text}`: FRACTION `{fraction}` must be a share in (0, 1] \
                     such as 0.6, or a percentage such as 60%"
                )
            })?;
        let duration = |what: &str, value: &str| {
            parse_duration(value)
                .map_err(|e| format!("--supply-drop `{text}`: {what} `{value}`: {e}"))
        };
        let (start, end) = (duration("START", start)?, duration("END", end)?);
        if end <= start {
            return Err(format!("--supply-drop `{text}`: END must be after START"));
        }
        Ok(SupplyDrop {
            city: city.to_string(),
            fraction,
            start,
            end,
        })
    }

    /// Whether the drop is on at `offset_ms` after the start of the run.
    pub fn active_at(&self, offset_ms: i64) -> bool {
        offset_ms >= self.start.as_millis() as i64 && offset_ms < self.end.as_millis() as i64
    }

    /// Whether the `k`-th driver of a city is among the ones that go offline: of its `n`
    /// drivers exactly `floor(n · fraction)`, spread evenly over the fleet.
    pub fn takes(&self, k: usize) -> bool {
        ((k + 1) as f64 * self.fraction).floor() > (k as f64 * self.fraction).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shares_percentages_and_durations() {
        let d = SupplyDrop::parse("bratislava:0.6:2m:6m").unwrap();
        assert_eq!(
            d,
            SupplyDrop {
                city: "bratislava".into(),
                fraction: 0.6,
                start: Duration::from_secs(120),
                end: Duration::from_secs(360),
            }
        );
        let d = SupplyDrop::parse("paris:50%:90:1h").unwrap();
        assert_eq!(
            (d.fraction, d.start, d.end),
            (0.5, Duration::from_secs(90), Duration::from_secs(3600))
        );
        assert_eq!(SupplyDrop::parse("x:1:0:1s").unwrap().fraction, 1.0);
    }

    #[test]
    fn rejects_what_it_cannot_mean_naming_the_flag() {
        for (text, part) in [
            ("bratislava:0.5:2m", "CITY:FRACTION:START:END"),
            ("bratislava:0.5:2m:4m:5m", "CITY:FRACTION:START:END"),
            (":0.5:1m:2m", "CITY is empty"),
            ("x:0:1m:2m", "FRACTION `0`"),
            ("x:1.5:1m:2m", "FRACTION `1.5`"),
            ("x:150%:1m:2m", "FRACTION `150%`"),
            ("x:half:1m:2m", "FRACTION `half`"),
            ("x:NaN:1m:2m", "FRACTION `NaN`"),
            ("x:0.5:soon:2m", "START `soon`"),
            ("x:0.5:1m:later", "END `later`"),
            ("x:0.5:5m:1m", "END must be after START"),
            ("x:0.5:1m:1m", "END must be after START"),
        ] {
            let error = SupplyDrop::parse(text).unwrap_err();
            assert!(error.starts_with("--supply-drop"), "{text}: {error}");
            assert!(error.contains(part), "{text}: {error}");
        }
    }

    #[test]
    fn takes_exactly_the_share_spread_over_the_fleet() {
        let d = SupplyDrop::parse("x:0.3:0:1").unwrap();
        let taken: Vec<usize> = (0..100).filter(|&k| d.takes(k)).collect();
        assert_eq!(taken.len(), 30);
        // Spread: never more than one in any three consecutive drivers.
        assert!(taken.windows(2).all(|w| w[1] - w[0] >= 3), "{taken:?}");
        let all = SupplyDrop::parse("x:1:0:1").unwrap();
        assert!((0..10).all(|k| all.takes(k)));
        assert!(d.active_at(0) && !d.active_at(1000));
    }
}
