//! Points in time as records carry them: compared as times, kept and shown as RFC 3339
//! UTC text (what the database always held, so existing rows read as they are).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A point in time. `Display` gives its RFC 3339 UTC text, as stored in the database and
/// shown by the API (`2026-01-01T00:00:00.5Z`: fractions only when there are some).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Reads RFC 3339 text (any offset; the time is kept in UTC, in years 0 to 9999).
    pub fn parse(s: &str) -> anyhow::Result<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339)?;
        match t.checked_to_offset(UtcOffset::UTC) {
            Some(utc) if (0..=9999).contains(&utc.year()) => Ok(Timestamp(utc)),
            _ => anyhow::bail!("the year is out of range in UTC"),
        }
    }

    pub fn get(self) -> OffsetDateTime {
        self.0
    }

    /// Text that sorts at or after the stored text of every time up to `self`, for a
    /// coarse `column <= bound` in SQL (the exact test is then made on the times): the
    /// second `self` is in, without a fraction. Stored text that sorts after it is of a
    /// later second; text of the same second sorts before it (`.` < `Z`).
    pub(crate) fn upper_bound_text(self) -> String {
        let whole = self.0.replace_nanosecond(0).unwrap_or(self.0);
        Timestamp(whole).to_string()
    }
}

impl std::ops::Add<time::Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: time::Duration) -> Timestamp {
        Timestamp(self.0 + d)
    }
}

impl std::ops::Sub for Timestamp {
    type Output = time::Duration;
    fn sub(self, other: Timestamp) -> time::Duration {
        self.0 - other.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            // Only years past 9999, which `parse` refuses and no clock gives.
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_times_compare_as_times() {
        for s in [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T12:34:56.123456789Z",
        ] {
            assert_eq!(Timestamp::parse(s).unwrap().to_string(), s);
        }
        // As text, "...:00Z" sorts after "...:00.5Z"; as times it is before.
        let whole = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let half = Timestamp::parse("2026-01-01T00:00:00.5Z").unwrap();
        assert!(whole < half);
        assert!(half.upper_bound_text().as_str() >= half.to_string().as_str());
        // Offsets are read, and kept in UTC.
        let paris = Timestamp::parse("2026-01-01T01:00:00+01:00").unwrap();
        assert_eq!(
            (paris, paris.to_string().as_str()),
            (whole, "2026-01-01T00:00:00Z")
        );
        assert!(Timestamp::parse("2026-01-01").is_err());
        assert!(Timestamp::parse("9999-12-31T23:00:00-05:00").is_err());
    }
}
