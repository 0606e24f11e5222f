//! Most similar groups (MSG): for each force, the peers whose demographic, social and
//! economic characteristics are nearest its own.
//!
//! The distance is documented so that an inspector can reproduce it:
//! 1. Each characteristic is put on a comparable footing: population and density are
//!    log-transformed (they span three orders of magnitude), then every characteristic
//!    is standardised to z-scores over the forces given (mean 0, population standard
//!    deviation 1; a characteristic with no spread contributes nothing).
//! 2. The distance between two forces is the Euclidean distance between their z-score
//!    vectors, every characteristic weighted equally.
//! 3. A force's group is its `k` nearest other forces (seven by default), ties broken by
//!    force code so that the result never depends on input order.
//!
//! Units therefore do not matter (scaling a characteristic changes nothing), and one
//! extreme force (the Metropolitan Police) does not dominate through its raw size.

use std::collections::BTreeMap;

/// Peers in a most similar group, as in HMICFRS practice.
pub const DEFAULT_GROUP_SIZE: usize = 7;

/// How a characteristic enters the distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// As it is.
    Identity,
    /// Natural logarithm (for positive, heavily skewed quantities).
    Log,
}

/// The characteristics of `force_context` used, and their transforms.
pub const CHARACTERISTICS: [(&str, Transform); 7] = [
    ("population", Transform::Log),
    ("density_per_km2", Transform::Log),
    ("urban_pct", Transform::Identity),
    ("deprivation_score", Transform::Identity),
    ("young_adults_pct", Transform::Identity),
    ("single_person_households_pct", Transform::Identity),
    ("night_time_economy_index", Transform::Identity),
];

/// One force's characteristics, in the order of [`CHARACTERISTICS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Characteristics {
    /// Force area code.
    pub pfa_code: String,
    /// Values, one per characteristic.
    pub values: Vec<f64>,
}

/// A peer and its distance.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Force area code of the peer.
    pub pfa_code: String,
    /// Distance in standardised units.
    pub distance: f64,
}

fn transformed(forces: &[Characteristics], transforms: &[Transform]) -> Vec<Vec<f64>> {
    forces
        .iter()
        .map(|f| {
            f.values
                .iter()
                .zip(transforms)
                .map(|(v, t)| match t {
                    Transform::Identity => *v,
                    Transform::Log => v.max(f64::MIN_POSITIVE).ln(),
                })
                .collect()
        })
        .collect()
}

fn standardised(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = rows.len() as f64;
    let width = rows.first().map_or(0, Vec::len);
    let mut out = rows.to_vec();
    for j in 0..width {
        let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
        let sd = (rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n).sqrt();
        for (i, r) in rows.iter().enumerate() {
            out[i][j] = if sd > 0.0 { (r[j] - mean) / sd } else { 0.0 };
        }
    }
    out
}

/// Each force's `k` nearest peers, nearest first, under the given transforms (one per
/// value). Forces with a missing (non-finite) value are left out of every group.
pub fn most_similar_groups(
    forces: &[Characteristics],
    transforms: &[Transform],
    k: usize,
) -> BTreeMap<String, Vec<Peer>> {
    let usable: Vec<Characteristics> = forces
        .iter()
        .filter(|f| f.values.len() == transforms.len() && f.values.iter().all(|v| v.is_finite()))
        .cloned()
        .collect();
    let z = standardised(&transformed(&usable, transforms));
    let mut groups = BTreeMap::new();
    for (i, f) in usable.iter().enumerate() {
        let mut peers: Vec<Peer> = usable
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, g)| Peer {
                pfa_code: g.pfa_code.clone(),
                distance: z[i]
                    .iter()
                    .zip(&z[j])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt(),
            })
            .collect();
        peers.sort_by(|a, b| {
            a.distance
                .total_cmp(&b.distance)
                .then_with(|| a.pfa_code.cmp(&b.pfa_code))
        });
        peers.truncate(k);
        groups.insert(f.pfa_code.clone(), peers);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn force(code: &str, values: &[f64]) -> Characteristics {
        Characteristics {
            pfa_code: code.into(),
            values: values.to_vec(),
        }
    }

    fn codes(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|p| p.pfa_code.as_str()).collect()
    }

    const ID2: [Transform; 2] = [Transform::Identity, Transform::Identity];

    #[test]
    fn neighbours_on_a_known_layout() {
        // Points on a line at 0, 1, 3, 7, 15 (second characteristic constant): the
        // nearest of 3 are 1 then 0 (distance 2 from 3 and 3 from 0 after scaling alike).
        let forces = [
            force("A", &[0.0, 5.0]),
            force("B", &[1.0, 5.0]),
            force("C", &[3.0, 5.0]),
            force("D", &[7.0, 5.0]),
            force("E", &[15.0, 5.0]),
        ];
        let g = most_similar_groups(&forces, &ID2, 2);
        assert_eq!(codes(&g["C"]), ["B", "A"]);
        assert_eq!(codes(&g["E"]), ["D", "C"]);
        assert_eq!(codes(&g["A"]), ["B", "C"]);
        assert!(g["C"][0].distance < g["C"][1].distance);
    }

    #[test]
    fn units_do_not_matter_and_order_of_input_does_not_either() {
        let forces = vec![
            force("A", &[1.0, 10.0]),
            force("B", &[2.0, 30.0]),
            force("C", &[4.0, 20.0]),
            force("D", &[8.0, 50.0]),
        ];
        let scaled: Vec<Characteristics> = forces
            .iter()
            .map(|f| force(&f.pfa_code, &[f.values[0] * 1000.0, f.values[1]]))
            .collect();
        let mut reversed = forces.clone();
        reversed.reverse();
        let base = most_similar_groups(&forces, &ID2, 2);
        assert_eq!(
            base.keys().collect::<Vec<_>>(),
            most_similar_groups(&scaled, &ID2, 2)
                .keys()
                .collect::<Vec<_>>()
        );
        for (k, v) in &base {
            assert_eq!(
                codes(v),
                codes(&most_similar_groups(&scaled, &ID2, 2)[k]),
                "{k}"
            );
            assert_eq!(
                codes(v),
                codes(&most_similar_groups(&reversed, &ID2, 2)[k]),
                "{k}"
            );
        }
    }

    #[test]
    fn ties_break_by_code_missing_values_are_left_out_and_small_sets_give_everyone() {
        let forces = [
            force("B", &[1.0, 0.0]),
            force("A", &[-1.0, 0.0]),
            force("C", &[0.0, 0.0]),
            force("X", &[f64::NAN, 0.0]),
        ];
        let g = most_similar_groups(&forces, &ID2, 7);
        assert_eq!(codes(&g["C"]), ["A", "B"], "A and B are equally far from C");
        assert!(!g.contains_key("X") && g.values().all(|p| p.iter().all(|x| x.pfa_code != "X")));
    }

    #[test]
    fn the_log_transform_stops_one_huge_force_dominating() {
        // Population spans 10k to 9M: on a log scale the mid-sized forces group together.
        let log = [Transform::Log, Transform::Identity];
        let forces = [
            force("CITY", &[10_000.0, 1.0]),
            force("S1", &[500_000.0, 1.0]),
            force("S2", &[700_000.0, 1.0]),
            force("L1", &[2_000_000.0, 1.0]),
            force("MET", &[9_000_000.0, 1.0]),
        ];
        let g = most_similar_groups(&forces, &log, 1);
        assert_eq!(codes(&g["S1"]), ["S2"]);
        assert_eq!(
            codes(&g["L1"]),
            ["S2"],
            "on a log scale 2M is nearer 700k than 9M"
        );
    }
}
