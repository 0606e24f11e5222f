//! The release rules, applied to the statistics of one cell.
//!
//! 1. The perturbation `d` comes from the p-table for the cell's persons and cell key.
//! 2. Threshold: the perturbed person count (`persons + d`) below `min_count` withholds
//!    the cell. Nothing else withholds anything: the decision depends only on the query
//!    and on perturbed values, never on earlier answers.
//! 3. Value: the flattened total plus `d` times the largest flattened contribution (for
//!    a count, at least 1), so a count of one row per person is exactly the perturbed
//!    person count, and a magnitude is perturbed in proportion to its largest
//!    contributions.
//! 4. Rounding to the nearest multiple of `round_to`. Averages are the released sum over
//!    the released count.

use super::cellkey::perturbation;
use super::contributions::Stats;

/// The disclosure terms a release applies: those `concordat-policy` decides.
pub use concordat_policy::DisclosureTerms as Terms;

/// Whether a group (its persons) is shown.
pub fn shown(persons: &Stats, terms: Terms) -> bool {
    perturbed_persons(persons) >= terms.min_count as i64
}

/// The persons behind a cell after perturbation.
pub fn perturbed_persons(s: &Stats) -> i64 {
    s.persons as i64 + perturbation(s.persons, s.key)
}

/// The released value of a count (`count = true`) or sum cell, or `None` if withheld.
pub fn value(s: &Stats, count: bool, terms: Terms) -> Option<f64> {
    let d = perturbation(s.persons, s.key);
    if s.persons == 0 || s.persons as i64 + d < terms.min_count as i64 {
        return None;
    }
    let (total, level) = s.flattened();
    let level = if count { level.max(1.0) } else { level };
    Some(round(total + d as f64 * level, terms.round_to))
}

/// The released average: released sum over released count.
pub fn average(sum: &Stats, count: &Stats, terms: Terms) -> Option<f64> {
    let num = value(sum, false, terms)?;
    let den = value(count, true, terms)?;
    (den > 0.0).then(|| num / den)
}

/// Rounds to the nearest multiple of `to`, halves away from zero.
pub fn round(v: f64, to: u64) -> f64 {
    if to <= 1 {
        return v.round();
    }
    let to = to as f64;
    (v / to).round() * to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdc::cellkey::{MAX_PERTURBATION, RecordKey};

    const TERMS: Terms = Terms {
        min_count: 10,
        round_to: 5,
    };

    fn persons(ids: std::ops::Range<u64>, key: &RecordKey, value: f64) -> Stats {
        let mut s = Stats::new(10);
        for i in ids {
            s.add(key.of(&i.to_le_bytes()), value);
        }
        s
    }

    #[test]
    fn rounding() {
        assert_eq!(round(12.0, 5), 10.0);
        assert_eq!(round(12.5, 5), 15.0);
        assert_eq!(round(-12.5, 5), -15.0);
        assert_eq!(round(7.4, 1), 7.0);
    }

    #[test]
    fn counts_stay_within_the_published_bound() {
        let key = RecordKey::from_secret(&[3u8; 32]);
        for n in 1..200u64 {
            for shift in 0..20u64 {
                let s = persons(shift * 1000..shift * 1000 + n, &key, 1.0);
                match value(&s, true, TERMS) {
                    Some(v) => {
                        assert!(n as i64 + MAX_PERTURBATION >= 10, "{n} released");
                        assert!((v - n as f64).abs() <= 5.0, "{n}: {v}");
                        assert_eq!(v % 5.0, 0.0);
                    }
                    None => assert!(n as i64 - MAX_PERTURBATION < 10, "{n} withheld"),
                }
            }
        }
    }

    #[test]
    fn an_empty_cell_and_a_small_one_look_alike() {
        let key = RecordKey::from_secret(&[4u8; 32]);
        assert_eq!(value(&Stats::new(10), true, TERMS), None);
        for n in 1..=6 {
            assert_eq!(value(&persons(0..n, &key, 1.0), true, TERMS), None);
            assert!(!shown(&persons(0..n, &key, 1.0), TERMS));
        }
    }

    #[test]
    fn the_same_persons_give_the_same_answer() {
        let key = RecordKey::from_secret(&[5u8; 32]);
        let a = persons(0..57, &key, 1.0);
        let mut b = Stats::new(10);
        for i in (0..57u64).rev() {
            b.add(key.of(&i.to_le_bytes()), 1.0);
        }
        assert_eq!(value(&a, true, TERMS), value(&b, true, TERMS));
    }

    #[test]
    fn averages_come_from_released_parts() {
        let key = RecordKey::from_secret(&[6u8; 32]);
        let sum = persons(0..40, &key, 3.0);
        let count = persons(0..40, &key, 1.0);
        let avg = average(&sum, &count, TERMS).expect("released");
        let s = value(&sum, false, TERMS).expect("sum");
        let c = value(&count, true, TERMS).expect("count");
        assert_eq!(avg, s / c);
        assert!((avg - 3.0).abs() < 1.0, "{avg}");
    }
}
