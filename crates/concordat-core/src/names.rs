//! Validated names. Each is parsed once at the edge and trusted afterwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::CoreError;

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(s).map_err(|reason| CoreError::InvalidName {
                    what: $what,
                    value: s.chars().take(80).collect(),
                    reason,
                })?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn slug(s: &str, sep: char) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == sep)
    {
        return Err("may contain only lowercase letters, digits and the separator");
    }
    Ok(())
}

string_newtype!(
    /// A dataset, which is also its table name in SQL: `reoffending_cohort`.
    DatasetName,
    "dataset name",
    |s| slug(s, '_')
);
string_newtype!(
    /// A partner id from `partners.toml`: `pcc-kent`, `probation`.
    PartnerId,
    "partner id",
    |s| slug(s, '-')
);
string_newtype!(
    /// A purpose for which data is shared: `reducing-reoffending`.
    Purpose,
    "purpose",
    |s| slug(s, '-')
);
string_newtype!(
    /// An ONS police force area code: `E23000032`.
    PfaCode,
    "police force area code",
    |s| {
        let b = s.as_bytes();
        if b.len() == 9 && (b[0] == b'E' || b[0] == b'W') && b[1..].iter().all(u8::is_ascii_digit) {
            Ok(())
        } else {
            Err("must be E or W followed by eight digits")
        }
    }
);

string_newtype!(
    /// An agreement: the name of its file without `.toml`
    /// (`probation-pcc-reoffending-mou`).
    AgreementId,
    "agreement id",
    |s| {
        if s.is_empty() || s.len() > 128 {
            return Err("must be 1 to 128 characters");
        }
        if s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Ok(())
        } else {
            Err("may contain only letters, digits, `-`, `_` and `.`")
        }
    }
);

impl Purpose {
    /// A purpose agreements can name, or why not.
    pub fn known(s: &str) -> Result<Purpose, CoreError> {
        if Self::KNOWN.contains(&s) {
            s.parse()
        } else {
            Err(CoreError::InvalidName {
                what: "purpose",
                value: s.chars().take(64).collect(),
                reason: "not one of the purposes agreements can name",
            })
        }
    }

    /// The purposes agreements may name.
    pub const KNOWN: [&'static str; 5] = [
        "reducing-reoffending",
        "performance-scrutiny",
        "efficiency-comparison",
        "inspection",
        "audit",
    ];
}

/// A calendar quarter, written `YYYYQn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quarter {
    /// Calendar year.
    pub year: i32,
    /// 1 to 4.
    pub q: u8,
}

impl Quarter {
    /// Parses `YYYYQn` with a year from 1990 to 2100; `None` for anything else.
    pub fn parse(s: &str) -> Option<Quarter> {
        let b = s.as_bytes();
        if b.len() != 6 || b[4] != b'Q' || !b[..4].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let year: i32 = s[..4].parse().ok()?;
        let q = b[5].wrapping_sub(b'0');
        ((1990..=2100).contains(&year) && (1..=4).contains(&q)).then_some(Quarter { year, q })
    }

    /// The next quarter.
    pub fn next(self) -> Quarter {
        if self.q == 4 {
            Quarter {
                year: self.year + 1,
                q: 1,
            }
        } else {
            Quarter {
                year: self.year,
                q: self.q + 1,
            }
        }
    }

    /// First month (1-12) of the quarter.
    pub fn first_month(self) -> u32 {
        u32::from(self.q - 1) * 3 + 1
    }

    /// The financial year (April to March) the quarter falls in.
    pub fn financial_year(self) -> FinancialYear {
        FinancialYear {
            start: if self.q == 1 {
                self.year - 1
            } else {
                self.year
            },
        }
    }
}

impl fmt::Display for Quarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Q{}", self.year, self.q)
    }
}

/// A financial year, April to March, written `YYYY-YY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FinancialYear {
    /// The calendar year in which it starts.
    pub start: i32,
}

impl FinancialYear {
    /// Parses `YYYY-YY` where the second part is the year after the first.
    pub fn parse(s: &str) -> Option<FinancialYear> {
        let b = s.as_bytes();
        if b.len() != 7 || b[4] != b'-' {
            return None;
        }
        if !b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit) {
            return None;
        }
        let start: i32 = s[..4].parse().ok()?;
        let end: i32 = s[5..].parse().ok()?;
        ((1990..=2100).contains(&start) && (start + 1) % 100 == end)
            .then_some(FinancialYear { start })
    }
}

impl fmt::Display for FinancialYear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02}", self.start, (self.start + 1) % 100)
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $(#[doc = $text] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written in files and tokens.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(CoreError::InvalidName {
                        what: $what,
                        value: s.chars().take(80).collect(),
                        reason: concat!("must be one of: ", $($text, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum!(
    /// What sort of body a partner is.
    PartnerKind, "partner kind" {
        Pcc => "pcc",
        PoliceForce => "police_force",
        PoliceCrimePanel => "police_crime_panel",
        Probation => "probation",
        Cps => "cps",
        Hmcts => "hmcts",
        Inspectorate => "inspectorate",
        HomeOffice => "home_office",
        Operator => "operator",
    }
);

string_enum!(
    /// What a token's holder may do, within its partner's agreements.
    Role, "role" {
        Analyst => "analyst",
        Uploader => "uploader",
        Inspector => "inspector",
        Auditor => "auditor",
        Admin => "admin",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarters_parse_and_order() {
        let q = Quarter::parse("2024Q4").expect("valid");
        assert_eq!(q.next().to_string(), "2025Q1");
        assert_eq!(q.financial_year().to_string(), "2024-25");
        assert_eq!(
            Quarter::parse("2025Q1").map(|q| q.financial_year().to_string()),
            Some("2024-25".into())
        );
        for bad in [
            "2024Q5", "2024Q0", "2024-Q1", "24Q1", "1800Q1", "2024q1", "",
        ] {
            assert_eq!(Quarter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn financial_years_parse() {
        assert_eq!(FinancialYear::parse("2023-24").map(|f| f.start), Some(2023));
        assert_eq!(FinancialYear::parse("1999-00").map(|f| f.start), Some(1999));
        for bad in ["2023-25", "2023/24", "202324", "2023-2024"] {
            assert_eq!(FinancialYear::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!("pcc-kent".parse::<PartnerId>().is_ok());
        assert!("PCC-kent".parse::<PartnerId>().is_err());
        assert!("reoffending_cohort".parse::<DatasetName>().is_ok());
        assert!("../etc".parse::<DatasetName>().is_err());
        assert!("E23000032".parse::<PfaCode>().is_ok());
        assert!("X23000032".parse::<PfaCode>().is_err());
        assert_eq!("uploader".parse::<Role>().ok(), Some(Role::Uploader));
        assert!("root".parse::<Role>().is_err());
    }
}
