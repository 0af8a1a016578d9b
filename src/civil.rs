//! Calendar date and time (UTC) of a Unix time, without a time-zone database: FAT timestamps
//! and RFC 3339 times in records both need it.

/// A UTC calendar time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: u64,
    pub month: u64,
    pub day: u64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

/// The calendar time of `secs` seconds after 1970-01-01T00:00:00Z (days to civil date by
/// Howard Hinnant's algorithm).
pub fn from_unix(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = (yoe + era * 400) as u64 + u64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
    }
}

impl Civil {
    /// `2026-11-23T17:04:05Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(from_unix(1_700_000_000).rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(from_unix(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(from_unix(315_532_800).rfc3339(), "1980-01-01T00:00:00Z");
        assert_eq!(from_unix(4_354_819_199).rfc3339(), "2107-12-31T23:59:59Z");
    }
}
