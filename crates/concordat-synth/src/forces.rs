//! Force-level datasets: quarterly performance, yearly resources and context.

use super::*;

impl Synth {
    pub(crate) fn performance(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_performance", i);
        let (pop, settlement) = profile(&force.force_slug);
        let urban = match settlement {
            Settlement::Metropolitan => 1.5,
            Settlement::Mixed => 1.0,
            Settlement::Rural => 0.6,
        };
        let level: Vec<f64> = INDICATORS
            .iter()
            .map(|_| 0.8 + 0.4 * rng.random::<f64>())
            .collect();
        let mut s: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
        let (mut value, mut baseline) = (Float64Builder::new(), Float64Builder::new());
        for q in Self::quarters() {
            let seasonal = [1.0, 0.97, 1.04, 0.99][usize::from(q.q - 1)];
            for (k, (measure, indicator, rate)) in INDICATORS.iter().enumerate() {
                let pct = indicator.ends_with("_pct");
                let years = f64::from(q.year - 2019) + f64::from(q.q) / 4.0;
                let base = if pct {
                    (rate * level[k].sqrt()).min(95.0)
                } else {
                    rate * f64::from(pop) / 100.0 * urban * level[k] * seasonal
                };
                let drift = if pct {
                    1.0 - 0.004 * years
                } else {
                    1.0 - 0.02 * years
                };
                let noise = 0.92 + 0.16 * rng.random::<f64>();
                let v = if pct {
                    (base * drift * (0.97 + 0.06 * rng.random::<f64>())).clamp(0.0, 100.0)
                } else {
                    (base * drift * noise).round().max(0.0)
                };
                s[0].append_value(force.pfa_code.as_str());
                s[1].append_value(q.to_string());
                s[2].append_value(measure);
                s[3].append_value(indicator);
                value.append_value((v * 10.0).round() / 10.0);
                baseline.append_value((base * 10.0).round() / 10.0);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            s[2].finish_arc(),
            s[3].finish_arc(),
            Arc::new(value.finish()),
            Arc::new(baseline.finish()),
        ];
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("quarter", DataType::Utf8, false),
                ("measure", DataType::Utf8, false),
                ("indicator", DataType::Utf8, false),
                ("value", DataType::Float64, false),
                ("baseline_value", DataType::Float64, true),
            ],
            cols,
        )
    }

    pub(crate) fn resources(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_resources", i);
        let (pop, settlement) = profile(&force.force_slug);
        let (spend, officers, crime) = match settlement {
            Settlement::Metropolitan => (290.0, 3.2, 105.0),
            Settlement::Mixed => (215.0, 2.1, 82.0),
            Settlement::Rural => (205.0, 2.0, 62.0),
        };
        let own = 0.9 + 0.2 * rng.random::<f64>();
        let charge_rate = 0.055 + 0.03 * rng.random::<f64>();
        let mut s: Vec<StringBuilder> = (0..2).map(|_| StringBuilder::new()).collect();
        let (mut p, mut rc, mut ch) = (
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
        );
        let mut f: Vec<Float64Builder> = (0..4).map(|_| Float64Builder::new()).collect();
        for year in 2019..=2025 {
            let y = f64::from(year - 2019);
            let population = (f64::from(pop) * 1000.0 * (1.0 + 0.005 * y)).round();
            s[0].append_value(force.pfa_code.as_str());
            s[1].append_value(format!("{year}-{:02}", (year + 1) % 100));
            p.append_value(population as i64);
            f[0].append_value((population * spend * own * (1.0 + 0.04 * y)).round());
            f[1].append_value(
                (population / 1000.0 * officers * own * (1.0 + 0.025 * y) * 10.0).round() / 10.0,
            );
            f[2].append_value((population / 1000.0 * 1.6 * own * 10.0).round() / 10.0);
            f[3].append_value(
                (population / 1000.0 * 0.18 * (1.0 - 0.03 * y) * 10.0).round() / 10.0,
            );
            let crimes = (population / 1000.0 * crime * (0.95 + 0.1 * rng.random::<f64>())).round();
            rc.append_value(crimes as i64);
            ch.append_value(
                (crimes * charge_rate * (0.9 + 0.2 * rng.random::<f64>())).round() as i64,
            );
        }
        let cols: Vec<ArrayRef> = vec![
            s[0].finish_arc(),
            s[1].finish_arc(),
            Arc::new(p.finish()),
            Arc::new(f[0].finish()),
            Arc::new(f[1].finish()),
            Arc::new(f[2].finish()),
            Arc::new(f[3].finish()),
            Arc::new(rc.finish()),
            Arc::new(ch.finish()),
        ];
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("financial_year", DataType::Utf8, false),
                ("population", DataType::Int64, false),
                ("net_revenue_expenditure_gbp", DataType::Float64, false),
                ("officers_fte", DataType::Float64, false),
                ("staff_fte", DataType::Float64, false),
                ("pcso_fte", DataType::Float64, false),
                ("recorded_crime", DataType::Int64, false),
                ("charges_summonses", DataType::Int64, false),
            ],
            cols,
        )
    }

    pub(crate) fn context(&self, i: usize, force: &Force) -> RecordBatch {
        let mut rng = self.rng("force_context", i);
        let (pop, settlement) = profile(&force.force_slug);
        let population = f64::from(pop) * 1000.0;
        let u = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
        let (density, urban, depr, young, single, night) = match settlement {
            Settlement::Metropolitan => (
                u(&mut rng, 1500.0, 5500.0),
                u(&mut rng, 95.0, 99.5),
                u(&mut rng, 24.0, 34.0),
                u(&mut rng, 11.0, 15.0),
                u(&mut rng, 31.0, 38.0),
                u(&mut rng, 2.0, 4.5),
            ),
            Settlement::Mixed => (
                u(&mut rng, 300.0, 900.0),
                u(&mut rng, 72.0, 92.0),
                u(&mut rng, 15.0, 26.0),
                u(&mut rng, 9.5, 12.5),
                u(&mut rng, 27.0, 32.0),
                u(&mut rng, 1.4, 2.6),
            ),
            Settlement::Rural => (
                u(&mut rng, 25.0, 250.0),
                u(&mut rng, 40.0, 70.0),
                u(&mut rng, 13.0, 22.0),
                u(&mut rng, 8.5, 11.0),
                u(&mut rng, 27.0, 31.0),
                u(&mut rng, 1.2, 2.2),
            ),
        };
        let r1 = |v: f64| (v * 10.0).round() / 10.0;
        let mut f: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::new()).collect();
        for (b, v) in f.iter_mut().zip([
            r1(population / density),
            r1(density),
            r1(urban),
            r1(depr),
            r1(young),
            r1(single),
            (night * 100.0).round() / 100.0,
        ]) {
            b.append_value(v);
        }
        let mut s = StringBuilder::new();
        s.append_value(force.pfa_code.as_str());
        let mut p = Int64Builder::new();
        p.append_value(population as i64);
        let mut cols: Vec<ArrayRef> = vec![s.finish_arc(), Arc::new(p.finish())];
        cols.extend(f.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        batch(
            &[
                ("pfa_code", DataType::Utf8, false),
                ("population", DataType::Int64, false),
                ("area_km2", DataType::Float64, false),
                ("density_per_km2", DataType::Float64, false),
                ("urban_pct", DataType::Float64, false),
                ("deprivation_score", DataType::Float64, false),
                ("young_adults_pct", DataType::Float64, false),
                ("single_person_households_pct", DataType::Float64, false),
                ("night_time_economy_index", DataType::Float64, false),
            ],
            cols,
        )
    }
}
