//! Record-level datasets: one row per person in a reoffending cohort, one per court case.

use super::*;

impl Synth {
    pub(crate) fn reoffending(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("reoffending_cohort", i);
        let n = self.rows_for(1_000_000.0, &force.force_slug);
        let quarters = Self::quarters();
        let pool = (n as u64 * 2 / 5).max(1);
        // Normalise so the expected proportion reoffending is about 27%.
        let mean = |t: &[(&str, f64, f64)]| {
            t.iter().map(|x| x.1 * x.2).sum::<f64>() / t.iter().map(|x| x.1).sum::<f64>()
        };
        let base = 0.27 / (mean(&AGE_BANDS) * mean(&PREVIOUS) * mean(&DISPOSALS));
        let (_, settlement) = profile(&force.force_slug);
        let local = match settlement {
            Settlement::Metropolitan => 1.06,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.93,
        } * (0.95 + 0.1 * rng.random::<f64>());
        let mut b = RowBuilders::new(n);
        let days = Exp::new(1.0 / 110.0).ok();
        for k in 0..n {
            let q = quarters[k * quarters.len() / n.max(1)];
            let person = pseudonym(
                self.seed,
                "person",
                &force.force_slug,
                rng.random_range(0..pool),
            );
            let (age, fa) = pick3(&mut rng, &AGE_BANDS);
            let (prev, fp) = pick3(&mut rng, &PREVIOUS);
            let (disp, fd) = pick3(&mut rng, &DISPOSALS);
            let trend = 1.0 - 0.01 * f64::from(q.year - 2019);
            let p = (base * fa * fp * fd * local * trend).min(0.95);
            let reoffended = rng.random::<f64>() < p;
            let reoffences = if reoffended {
                1 + Poisson::new(0.6 + 1.2 * fp)
                    .map(|d| d.sample(&mut rng) as i32)
                    .unwrap_or(0)
            } else {
                0
            };
            b.s[0].append_value(&person);
            b.s[1].append_value(q.to_string());
            b.s[2].append_value(force.pfa_code.as_str());
            b.s[3].append_value(&force.probation_region_code);
            b.s[4].append_value(if matches!(age, "10-14" | "15-17") {
                "juvenile"
            } else {
                "adult"
            });
            b.s[5].append_value(pick(&mut rng, &SEXES));
            b.s[6].append_value(age);
            b.s[7].append_value(pick(&mut rng, &OFFENCES));
            b.s[8].append_value(disp);
            b.s[9].append_value(prev);
            b.b.append_value(reoffended);
            b.i[0].append_value(reoffences);
            if reoffended {
                let d: f64 = days
                    .map_or(100.0, |d: Exp<f64>| d.sample(&mut rng))
                    .min(365.0);
                b.i[1].append_value(d as i32);
            } else {
                b.i[1].append_null();
            }
        }
        let cols: Vec<ArrayRef> = vec![
            b.s[0].finish_arc(),
            b.s[1].finish_arc(),
            b.s[2].finish_arc(),
            b.s[3].finish_arc(),
            b.s[4].finish_arc(),
            b.s[5].finish_arc(),
            b.s[6].finish_arc(),
            b.s[7].finish_arc(),
            b.s[8].finish_arc(),
            b.s[9].finish_arc(),
            Arc::new(b.b.finish()),
            Arc::new(b.i[0].finish()),
            Arc::new(b.i[1].finish()),
        ];
        batch(
            &[
                ("person_id", DataType::Utf8, false),
                ("cohort_quarter", DataType::Utf8, false),
                ("pfa_code", DataType::Utf8, false),
                ("probation_region_code", DataType::Utf8, false),
                ("adult_juvenile", DataType::Utf8, false),
                ("sex", DataType::Utf8, false),
                ("age_band", DataType::Utf8, false),
                ("index_offence_group", DataType::Utf8, false),
                ("index_disposal", DataType::Utf8, false),
                ("previous_offences_band", DataType::Utf8, false),
                ("reoffended", DataType::Boolean, false),
                ("reoffences", DataType::Int32, false),
                ("days_to_first_reoffence", DataType::Int32, true),
            ],
            cols,
        )
    }

    pub(crate) fn court(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("court_timeliness", i);
        let n = self.rows_for(1_000_000.0, &force.force_slug);
        let quarters = Self::quarters();
        // Persons drawn from the same pool as the reoffending cohorts, so the two join.
        let pool = (self.rows_for(1_000_000.0, &force.force_slug) as u64 * 2 / 5).max(1);
        let (_, settlement) = profile(&force.force_slug);
        let slow = match settlement {
            Settlement::Metropolitan => 1.2,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.9,
        } * (0.85 + 0.3 * rng.random::<f64>());
        let ln = |median: f64, sigma: f64| LogNormal::new(median.ln(), sigma).ok();
        let (to_charge_m, to_charge_c) = (ln(25.0 * slow, 1.3), ln(80.0 * slow, 1.1));
        let to_listing = ln(21.0 * slow, 0.6);
        let (to_complete_m, to_complete_c) = (ln(45.0 * slow, 0.9), ln(260.0 * slow, 0.7));
        let draw = |d: &Option<LogNormal<f64>>, rng: &mut ChaCha8Rng| {
            d.as_ref().map_or(30.0, |d| d.sample(rng)).min(3000.0) as i32
        };
        let cut = epoch_days(as_of());
        let mut s: Vec<StringBuilder> = (0..8)
            .map(|_| StringBuilder::with_capacity(n, n * 16))
            .collect();
        let mut d: Vec<Date32Builder> = (0..4).map(|_| Date32Builder::with_capacity(n)).collect();
        for k in 0..n {
            let q = quarters[k * quarters.len() / n.max(1)];
            let start = NaiveDate::from_ymd_opt(q.year, q.first_month(), 1)
                .map(epoch_days)
                .unwrap_or(0);
            let listing = start + rng.random_range(0..90);
            let crown = rng.random::<f64>() < 0.15;
            let charge = listing - draw(&to_listing, &mut rng);
            let offence = charge - draw(if crown { &to_charge_c } else { &to_charge_m }, &mut rng);
            let guilty_early = !crown && rng.random::<f64>() < 0.4;
            let completion = listing
                + if guilty_early {
                    0
                } else {
                    draw(
                        if crown {
                            &to_complete_c
                        } else {
                            &to_complete_m
                        },
                        &mut rng,
                    )
                };
            let outstanding = completion > cut;
            let outcome = if outstanding {
                "outstanding"
            } else if guilty_early {
                "convicted"
            } else {
                pick(&mut rng, &OUTCOMES)
            };
            let plea = match outcome {
                "convicted" if guilty_early || rng.random::<f64>() < 0.7 => "guilty",
                "convicted" | "acquitted" | "outstanding" => "not_guilty",
                _ => "none",
            };
            s[0].append_value(pseudonym(self.seed, "case", &force.force_slug, k as u64));
            s[1].append_value(pseudonym(
                self.seed,
                "person",
                &force.force_slug,
                rng.random_range(0..pool),
            ));
            s[2].append_value(q.to_string());
            s[3].append_value(force.pfa_code.as_str());
            s[4].append_value(if crown { "crown" } else { "magistrates" });
            s[5].append_value(pick(&mut rng, &OFFENCES));
            s[6].append_value(outcome);
            s[7].append_value(plea);
            d[0].append_value(offence);
            d[1].append_value(charge);
            d[2].append_value(listing);
            if outstanding {
                d[3].append_null();
            } else {
                d[3].append_value(completion);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            s[2].finish_arc(),
            s[3].finish_arc(),
            s[4].finish_arc(),
            s[5].finish_arc(),
            Arc::new(d[0].finish()),
            Arc::new(d[1].finish()),
            Arc::new(d[2].finish()),
            Arc::new(d[3].finish()),
            s[6].finish_arc(),
            s[7].finish_arc(),
        ];
        batch(
            &[
                ("case_id", DataType::Utf8, false),
                ("person_id", DataType::Utf8, false),
                ("quarter", DataType::Utf8, false),
                ("pfa_code", DataType::Utf8, false),
                ("court_type", DataType::Utf8, false),
                ("offence_group", DataType::Utf8, false),
                ("offence_date", DataType::Date32, false),
                ("charge_date", DataType::Date32, false),
                ("first_listing_date", DataType::Date32, false),
                ("completion_date", DataType::Date32, true),
                ("outcome", DataType::Utf8, false),
                ("plea", DataType::Utf8, false),
            ],
            cols,
        )
    }
}
