//! Running the release: the per-(group, person) aggregate executed, its rows gathered
//! into per-group statistics, the rules applied, and the released cells made into the
//! table that takes the aggregate's place.

use super::*;

/// How the grouping id of the per-person aggregate maps back to the release's.
struct Grouping {
    /// Position in the per-person aggregate's grouping expressions of each of the
    /// release's.
    positions: Vec<usize>,
    /// Grouping expressions of the per-person aggregate.
    inner: usize,
}

impl Grouping {
    fn map(&self, inner_id: u64) -> u64 {
        let n = self.positions.len();
        let semantic = self
            .positions
            .iter()
            .enumerate()
            .fold(0u64, |acc, (j, &p)| {
                let absent = (inner_id >> (self.inner - 1 - p)) & 1;
                acc | (absent << (n - 1 - j))
            });
        semantic | ((inner_id >> self.inner) << n)
    }
}

/// How the per-person plan's rows become groups.
enum Sink {
    /// Plain groups: the release's input rows, gathered into a [`PersonTable`].
    Plain {
        groups_at: Vec<usize>,
        person_at: usize,
        inputs: Vec<PartInput>,
    },
    /// Grouping sets: DataFusion's aggregate per (set, group, person), gathered by a
    /// [`Gatherer`], and the grouping ids mapped back to the release's.
    Sets {
        groups_at: Vec<usize>,
        person_at: usize,
        parts: Vec<(usize, Part)>,
        grouping: Grouping,
    },
}

/// A release made ready to run: the per-person plan, made once, and everything that turns
/// its rows into the released cells. Running it again over the same table versions gives
/// the same cells, so a question asked again keeps it and runs a fresh copy of its plan.
pub struct Prepared {
    per_person: Arc<dyn ExecutionPlan>,
    sink: Sink,
    agg: Aggregate,
    controlled: HashMap<String, Controlled>,
    cells: Vec<Cell>,
    terms: Terms,
    max_groups: usize,
    marker: bool,
    /// The released table's schema: the aggregate's columns as `c0`, `c1`, …, then the
    /// marker.
    schema: SchemaRef,
}

pub(super) async fn prepare_release(
    agg: &Aggregate,
    state: &SessionState,
    controlled: &HashMap<String, Controlled>,
    key: &Arc<RecordKey>,
    max_groups: usize,
    marker: bool,
) -> Result<Prepared, QueryError> {
    let refused = |why: String| refuse(controlled, why);
    let q = Rewriter::new(controlled)
        .walk(&agg.input)
        .map_err(refused)?;
    if q.persons.is_empty() {
        return Err(refuse(
            controlled,
            "the aggregate must count the rows of the controlled dataset itself",
        ));
    }
    let input_schema = q.plan.schema().clone();
    let checked = |e: Expr| -> Result<Expr, QueryError> {
        check_ids(&e, &q.ids).map_err(|w| refuse(controlled, w))?;
        safe::total(e, &input_schema).map_err(|w| refuse(controlled, w))
    };
    // The person behind each row, beside every column of the rewritten input.
    let person = {
        let mut cols: Vec<Expr> = q
            .persons
            .iter()
            .map(|n| Expr::Column(Column::new_unqualified(n)))
            .collect();
        if cols.len() == 1 {
            cols.remove(0)
        } else {
            datafusion::functions::expr_fn::coalesce(cols)
        }
    };
    let mut carried: Vec<Expr> = input_schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    carried.push(
        cellkey::RecordKeyFunction::udf(key.clone())
            .call(vec![person])
            .alias(PID),
    );
    let input =
        LogicalPlan::Projection(Projection::try_new(carried, Arc::new(q.plan)).map_err(internal)?);
    let pid = Expr::Column(Column::new_unqualified(PID));
    // Group expressions, each grouping set with the person added.
    let group_expr = agg
        .group_expr
        .iter()
        .map(|g| check_group(g, &checked))
        .collect::<Result<Vec<_>, _>>()?;
    let (inner_group, grouping) = match group_expr.as_slice() {
        [Expr::GroupingSet(set)] => {
            let sets: Vec<Vec<Expr>> = explicit_sets(set)
                .into_iter()
                .map(|mut s| {
                    s.push(pid.clone());
                    s
                })
                .collect();
            let inner = GroupingSet::GroupingSets(sets);
            let inner_distinct: Vec<Expr> = inner.distinct_expr().into_iter().cloned().collect();
            let positions = set
                .distinct_expr()
                .iter()
                .map(|e| inner_distinct.iter().position(|x| x == *e))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| internal("grouping set expressions not found"))?;
            (
                vec![Expr::GroupingSet(inner)],
                Some(Grouping {
                    positions,
                    inner: inner_distinct.len(),
                }),
            )
        }
        plain => {
            let mut g = plain.to_vec();
            g.push(pid.clone());
            (g, None)
        }
    };
    // Each cell as contributions per person.
    let agg_fields: Vec<String> = agg
        .schema
        .fields()
        .iter()
        .skip(agg.schema.fields().len() - agg.aggr_expr.len())
        .map(|f| f.name().clone())
        .collect();
    let mut cells = Vec::with_capacity(agg.aggr_expr.len());
    let mut parts: Vec<(Expr, Part)> = Vec::new();
    let mut part = |e: Expr, p: Part| -> usize {
        match parts.iter().position(|(x, q)| *x == e && *q == p) {
            Some(i) => i,
            None => {
                parts.push((e, p));
                parts.len() - 1
            }
        }
    };
    for (e, name) in agg.aggr_expr.iter().zip(&agg_fields) {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref().clone(),
            other => other.clone(),
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
            return Err(refused(format!("`{name}` is not an aggregate function")));
        };
        let kind = match func.name() {
            "count" => CellKind::Count,
            "sum" => CellKind::Sum,
            "avg" | "mean" => CellKind::Avg,
            "min" | "max" => {
                return Err(refused(format!(
                    "{}() of record values is not released (it is one person's value); COUNT, SUM and AVG are",
                    func.name().to_uppercase()
                )));
            }
            other => {
                return Err(refused(format!(
                    "the aggregate {other}() is not released (order statistics and other functions can single out one person's value); COUNT, SUM and AVG are"
                )));
            }
        };
        if params.distinct {
            return Err(refused(format!(
                "{}(DISTINCT …) is not available; the gateway counts distinct persons itself and withholds small groups",
                func.name().to_uppercase()
            )));
        }
        let args = params
            .args
            .into_iter()
            .map(checked)
            .collect::<Result<Vec<_>, _>>()?;
        let filter = params.filter.map(|f| checked(*f)).transpose()?;
        let arg = args
            .first()
            .cloned()
            .unwrap_or_else(|| datafusion::logical_expr::lit(1i64));
        let count_part =
            || datafusion::functions_aggregate::count::count_udaf().call(vec![arg.clone()]);
        let sum_part = || {
            datafusion::functions_aggregate::sum::sum_udaf().call(vec![Expr::TryCast(
                TryCast::new(Box::new(arg.clone()), DataType::Float64),
            )])
        };
        let with_filter = |e: Expr| -> Expr {
            match (e, &filter) {
                (Expr::AggregateFunction(mut f), Some(cond)) => {
                    f.params.filter = Some(Box::new(cond.clone()));
                    Expr::AggregateFunction(f)
                }
                (e, _) => e,
            }
        };
        let cell = match kind {
            CellKind::Count => Cell {
                name: name.clone(),
                kind,
                first: part(with_filter(count_part()), Part::Count),
                count: None,
            },
            CellKind::Sum => Cell {
                name: name.clone(),
                kind,
                first: part(with_filter(sum_part()), Part::Sum),
                count: None,
            },
            CellKind::Avg => Cell {
                name: name.clone(),
                kind,
                first: part(with_filter(sum_part()), Part::Sum),
                count: Some(part(with_filter(count_part()), Part::Count)),
            },
        };
        cells.push(cell);
    }
    let aggr_expr: Vec<Expr> = parts
        .iter()
        .enumerate()
        .map(|(i, (e, _))| e.clone().alias(format!("__concordat_part_{i}")))
        .collect();
    let unrewritable = |e: datafusion::error::DataFusionError| {
        refused(format!(
            "the query could not be rewritten for disclosure control ({})",
            e.strip_backtrace()
        ))
    };
    let per_person =
        Aggregate::try_new(Arc::new(input), inner_group, aggr_expr).map_err(unrewritable)?;
    let min_count = controlled.values().map(|c| c.min_count).max().unwrap_or(10);
    let round_to = controlled.values().map(|c| c.round_to).max().unwrap_or(5);
    let terms = Terms {
        min_count,
        round_to,
    };
    let (per_person, sink) = match grouping {
        // Plain groups: one pass over the input rows into a table per (group, person).
        None => {
            let plain = &per_person.group_expr;
            let mut exprs: Vec<Expr> = plain[..plain.len().saturating_sub(1)]
                .iter()
                .enumerate()
                .map(|(i, g)| g.clone().unalias().alias(format!("__concordat_group_{i}")))
                .collect();
            let groups_at: Vec<usize> = (0..exprs.len()).collect();
            let person_at = exprs.len();
            exprs.push(pid.clone());
            let mut inputs = Vec::with_capacity(parts.len());
            for (i, (e, p)) in parts.iter().enumerate() {
                let Expr::AggregateFunction(f) = e else {
                    return Err(internal("a part is not an aggregate"));
                };
                let arg = f
                    .params
                    .args
                    .first()
                    .cloned()
                    .ok_or_else(|| internal("a part has no argument"))?;
                exprs.push(arg.alias(format!("__concordat_arg_{i}")));
                let at = exprs.len() - 1;
                let filter = f.params.filter.as_ref().map(|c| {
                    exprs.push(c.as_ref().clone().alias(format!("__concordat_filter_{i}")));
                    exprs.len() - 1
                });
                inputs.push(PartInput {
                    part: *p,
                    arg: at,
                    filter,
                });
            }
            let rows =
                Projection::try_new(exprs, per_person.input.clone()).map_err(unrewritable)?;
            let physical = state
                .create_physical_plan(&LogicalPlan::Projection(rows))
                .await
                .map_err(crate::error::sql_error)?;
            (
                physical,
                Sink::Plain {
                    groups_at,
                    person_at,
                    inputs,
                },
            )
        }
        // Grouping sets: DataFusion's aggregate per (set, group, person), then gathered.
        Some(grouping) => {
            // The aggregate's rows: the release's group columns in its order, then the
            // grouping id, the person and the parts.
            let inner_schema = per_person.schema.clone();
            let at = |name: &str, what: &str| {
                inner_schema
                    .index_of_column_by_name(None, name)
                    .ok_or_else(|| internal(format!("the {what} is missing")))
            };
            let person_at = at(PID, "person column")?;
            let mut groups_at = grouping.positions.clone();
            groups_at.push(at(Aggregate::INTERNAL_GROUPING_ID, "grouping id")?);
            let first_part = inner_schema.fields().len() - parts.len();
            let part_cols: Vec<(usize, Part)> = parts
                .iter()
                .enumerate()
                .map(|(i, (_, p))| (first_part + i, *p))
                .collect();
            let physical = state
                .create_physical_plan(&LogicalPlan::Aggregate(per_person))
                .await
                .map_err(crate::error::sql_error)?;
            (
                physical,
                Sink::Sets {
                    groups_at,
                    person_at,
                    parts: part_cols,
                    grouping,
                },
            )
        }
    };
    // The released table: the aggregate's columns under plain names, then the marker.
    let mut fields: Vec<Field> = agg
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new(MARKER, DataType::Boolean, false));
    Ok(Prepared {
        per_person,
        sink,
        agg: agg.clone(),
        controlled: controlled.clone(),
        cells,
        terms,
        max_groups,
        marker,
        schema: Arc::new(Schema::new(fields)),
    })
}

impl Prepared {
    /// The per-person plan as first made.
    pub fn per_person(&self) -> &Arc<dyn ExecutionPlan> {
        &self.per_person
    }

    /// Runs `per_person` (this release's plan, or a fresh copy of it, made ready by
    /// `session::for_run`) and releases its cells: the released table's one batch, and
    /// what was done.
    pub async fn run(
        &self,
        per_person: Arc<dyn ExecutionPlan>,
        task: &Arc<TaskContext>,
    ) -> Result<(RecordBatch, Disclosure), QueryError> {
        let controlled = &self.controlled;
        let refused = |why: String| refuse(controlled, why);
        let gather_failed = |e: GatherError| match e {
            GatherError::TooManyGroups(n) => refused(format!(
                "the answer would have more than {n} groups; group by fewer or coarser columns"
            )),
            GatherError::DataFusion(e) => crate::error::classify(&e),
            other => internal(other),
        };
        let terms = self.terms;
        let Terms {
            min_count,
            round_to,
        } = terms;
        let (mut group_columns, groups) = match &self.sink {
            Sink::Plain {
                groups_at,
                person_at,
                inputs,
            } => {
                let table = PersonTable::new(
                    &per_person.schema(),
                    groups_at.clone(),
                    *person_at,
                    inputs.clone(),
                    min_count as usize,
                    self.max_groups,
                    task.memory_pool(),
                )
                .map_err(gather_failed)?;
                gather(per_person, task, table, gather_failed).await?
            }
            Sink::Sets {
                groups_at,
                person_at,
                parts,
                ..
            } => {
                let gatherer = Gatherer::new(
                    &per_person.schema(),
                    groups_at.clone(),
                    *person_at,
                    parts.clone(),
                    min_count as usize,
                    self.max_groups,
                )
                .map_err(internal)?;
                gather(per_person, task, gatherer, gather_failed).await?
            }
        };
        let agg = &self.agg;
        let cells = &self.cells;
        let n_group = agg.schema.fields().len() - agg.aggr_expr.len();
        let marker = self.marker;
        if let Sink::Sets { grouping: g, .. } = &self.sink {
            let gid = group_columns
                .pop()
                .ok_or_else(|| internal("the grouping id is missing"))?;
            let ids = arrow::compute::cast(&gid, &DataType::UInt64).map_err(internal)?;
            let mapped: arrow::array::UInt64Array = ids
                .as_primitive::<UInt64Type>()
                .iter()
                .map(|v| v.map(|v| g.map(v)))
                .collect();
            let want = agg.schema.field(n_group - 1).data_type();
            group_columns.push(arrow::compute::cast(&mapped, want).map_err(internal)?);
        }
        let released = Released::build(agg, controlled, cells, group_columns, &groups, terms)?;
        let mut datasets: Vec<String> = controlled.keys().cloned().collect();
        datasets.sort();
        let mut agreements: Vec<String> = controlled
            .values()
            .flat_map(|c| c.agreements.iter().cloned())
            .collect();
        agreements.sort();
        agreements.dedup();
        let shown = released.marker.len();
        let disclosure = Disclosure {
            access: "aggregate",
            datasets,
            agreements,
            min_count,
            round_to,
            groups: shown,
            cells: shown * cells.len(),
            suppressed_cells: released.withheld,
            suppressed: Suppressed {
                threshold: released.withheld,
            },
            rounded_cells: shown * cells.len() - released.withheld,
            rounded_columns: cells.iter().map(|c| c.name.clone()).collect(),
            marker_column: marker.then(|| MARKER.to_owned()),
            perturbation: record::Perturbation::published(min_count, round_to),
            rules: record::rules(min_count, round_to),
        };
        let mut columns = released.columns;
        columns.push(Arc::new(released.marker));
        let out = RecordBatch::try_new(self.schema.clone(), columns).map_err(internal)?;
        Ok((out, disclosure))
    }

    /// The plan that takes the aggregate's place: a scan of the released cells, under
    /// the aggregate's own column names (and the marker where the answer shows it).
    pub fn replacement(&self, released: RecordBatch) -> Result<LogicalPlan, QueryError> {
        let table =
            MemTable::try_new(self.schema.clone(), vec![vec![released]]).map_err(internal)?;
        let mut exprs: Vec<Expr> = self
            .agg
            .schema
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                Expr::Column(Column::new_unqualified(format!("c{i}")))
                    .alias_qualified(q.cloned(), f.name())
            })
            .collect();
        if self.marker {
            exprs.push(col(MARKER));
        }
        LogicalPlanBuilder::scan(
            "concordat_released",
            provider_as_source(Arc::new(table)),
            None,
        )
        .and_then(|b| b.project(exprs))
        .and_then(LogicalPlanBuilder::build)
        .map_err(internal)
    }

    /// Whether `outer`, a plan made over this release, reads its cells in the one way
    /// [`Prepared::rebind`] can give it new ones: one in-memory scan of one batch. (A
    /// plan may not read them at all: `count(*)` over them is answered from their row
    /// count while planning.)
    pub fn rebindable(&self, outer: &Arc<dyn ExecutionPlan>) -> bool {
        let mut scans = Vec::new();
        let _ = outer.apply(|node| {
            if let Some(memory) = self.released_scan(node) {
                scans.push(one_batch(memory).is_some());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        scans == [true]
    }

    /// The bytes of released cells `outer`, a plan made over this release, holds.
    pub fn held_bytes(&self, outer: &Arc<dyn ExecutionPlan>) -> usize {
        let mut bytes = 0;
        let _ = outer.apply(|node| {
            if let Some(memory) = self.released_scan(node) {
                bytes += memory
                    .partitions()
                    .iter()
                    .flatten()
                    .map(RecordBatch::get_array_memory_size)
                    .sum::<usize>();
            }
            Ok(TreeNodeRecursion::Continue)
        });
        bytes
    }

    /// The node's in-memory scan, when it scans this release's cells.
    fn released_scan<'a>(
        &self,
        node: &'a Arc<dyn ExecutionPlan>,
    ) -> Option<&'a datafusion::datasource::memory::MemorySourceConfig> {
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::datasource::source::DataSourceExec;
        node.downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>())
            .filter(|m| Arc::ptr_eq(&m.original_schema(), &self.schema))
    }

    /// A copy of `outer`, a physical plan made over an earlier run of this release, that
    /// reads `released` instead, with every node's running state new. `None` when the
    /// plan does not read the released cells as one in-memory scan of one batch of as
    /// many rows (planning may have used their count): then it must be made again.
    pub fn rebind(
        &self,
        outer: &Arc<dyn ExecutionPlan>,
        released: &RecordBatch,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>, QueryError> {
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::datasource::source::DataSourceExec;
        let mut found = 0;
        let mut unknown = false;
        let swapped = outer
            .clone()
            .transform_up(|node| {
                let Some(memory) = self.released_scan(&node) else {
                    return Ok(Transformed::no(node));
                };
                found += 1;
                if one_batch(memory).map(RecordBatch::num_rows) != Some(released.num_rows()) {
                    unknown = true;
                    return Ok(Transformed::no(node));
                }
                let partitions: Vec<Vec<RecordBatch>> = memory
                    .partitions()
                    .iter()
                    .map(|p| p.iter().map(|_| released.clone()).collect())
                    .collect();
                let source = MemorySourceConfig::try_new(
                    &partitions,
                    self.schema.clone(),
                    memory.projection().clone(),
                )?
                .with_limit(datafusion::datasource::source::DataSource::fetch(memory))
                .with_show_sizes(memory.show_sizes());
                Ok(Transformed::yes(
                    DataSourceExec::from_data_source(source) as Arc<dyn ExecutionPlan>
                ))
            })
            .map_err(internal)?
            .data;
        if found != 1 || unknown {
            return Ok(None);
        }
        datafusion::physical_plan::execution_plan::reset_plan_states(swapped)
            .map(Some)
            .map_err(internal)
    }
}

/// The one batch an in-memory scan of released cells reads, when it reads one and
/// knows no order of its rows (an order planning relied on that new cells may not keep).
fn one_batch(memory: &datafusion::datasource::memory::MemorySourceConfig) -> Option<&RecordBatch> {
    let mut batches = memory.partitions().iter().flatten();
    match (batches.next(), batches.next()) {
        (Some(batch), None) if memory.sort_information().is_empty() => Some(batch),
        _ => None,
    }
}

/// Runs `physical` and reads its batches into `into`.
async fn gather(
    physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    task: &Arc<TaskContext>,
    mut into: impl Gather,
    failed: impl Fn(GatherError) -> QueryError,
) -> Result<(Vec<ArrayRef>, Vec<Group>), QueryError> {
    let mut stream = datafusion::physical_plan::execute_stream(physical, task.clone())
        .map_err(|e| crate::error::classify(&e))?;
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| crate::error::classify(&e))?;
        into.push(&b).map_err(&failed)?;
    }
    into.finish().map_err(failed)
}

/// The released answer of the aggregate: its columns, the marker, and how many cells
/// are shown withheld.
struct Released {
    columns: Vec<ArrayRef>,
    marker: BooleanArray,
    withheld: usize,
}

impl Released {
    fn build(
        agg: &Aggregate,
        controlled: &HashMap<String, Controlled>,
        cells: &[Cell],
        group_columns: Vec<ArrayRef>,
        groups: &[Group],
        terms: Terms,
    ) -> Result<Released, QueryError> {
        let n_group = group_columns.len();
        // Which groups are shown: with a fixed list of values per grouping column, every
        // combination (withheld when small or empty); otherwise only groups whose
        // perturbed persons reach the threshold, since a key alone can disclose.
        let padding = padding_domains(agg, controlled);
        let visible: Vec<bool> = groups
            .iter()
            .map(|g| rules::shown(&g.persons, terms))
            .collect();
        let shown: Vec<u32> = (0..groups.len() as u32)
            .filter(|&g| padding.is_some() || visible[g as usize])
            .collect();
        let shown_idx = arrow::array::UInt32Array::from(shown.clone());
        let mut columns: Vec<ArrayRef> = group_columns
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &shown_idx, None))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let mut values: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(shown.len()); cells.len()];
        for &g in &shown {
            let group = &groups[g as usize];
            let row = if visible[g as usize] {
                release_group(group, cells, terms)
            } else {
                vec![None; cells.len()]
            };
            for (c, v) in row.into_iter().enumerate() {
                values[c].push(v);
            }
        }
        if let Some(domains) = &padding {
            let seen: HashSet<Vec<String>> = (0..shown.len())
                .map(|r| key_text(&columns, r))
                .collect::<Result<_, _>>()?;
            let mut missing: Vec<Vec<String>> = vec![vec![]];
            for values in domains {
                missing = missing
                    .into_iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |v| {
                            let mut k = prefix.clone();
                            k.push(v.clone());
                            k
                        })
                    })
                    .collect();
            }
            missing.retain(|k| !seen.contains(k));
            for (i, column) in columns.iter_mut().enumerate() {
                let text: arrow::array::StringArray =
                    missing.iter().map(|k| Some(k[i].as_str())).collect();
                let extra = arrow::compute::cast(&text, column.data_type()).map_err(internal)?;
                *column =
                    arrow::compute::concat(&[column.as_ref(), extra.as_ref()]).map_err(internal)?;
            }
            for v in values.iter_mut() {
                v.extend(std::iter::repeat_n(None, missing.len()));
            }
        }
        let rows = values
            .first()
            .map_or(columns.first().map_or(0, |c| c.len()), Vec::len);
        let mut withheld = 0;
        let mut marker = vec![false; rows];
        for (c, cell) in cells.iter().enumerate() {
            let want = agg.schema.field(n_group + c).data_type();
            let floats: Float64Array = values[c].iter().copied().collect();
            for (r, v) in values[c].iter().enumerate() {
                if v.is_none() {
                    withheld += 1;
                    marker[r] = true;
                }
            }
            let typed = arrow::compute::cast(&floats, want)
                .map_err(|e| QueryError::Internal(format!("released `{}`: {e}", cell.name)))?;
            columns.push(typed);
        }
        Ok(Released {
            columns,
            marker: BooleanArray::from(marker),
            withheld,
        })
    }
}

fn key_text(columns: &[ArrayRef], row: usize) -> Result<Vec<String>, QueryError> {
    columns
        .iter()
        .map(|c| {
            let v = ScalarValue::try_from_array(c, row).map_err(internal)?;
            Ok(match v {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::Utf8View(Some(s))
                | ScalarValue::LargeUtf8(Some(s)) => s,
                other => other.to_string(),
            })
        })
        .collect()
}

/// The values of each grouping column, when the aggregate groups plain columns that
/// each have a short fixed list of values (so every combination can be shown).
fn padding_domains(
    agg: &Aggregate,
    controlled: &HashMap<String, Controlled>,
) -> Option<Vec<Vec<String>>> {
    const MAX_COMBINATIONS: usize = 10_000;
    if agg.group_expr.is_empty() {
        return None;
    }
    let mut domains = Vec::new();
    let mut combinations = 1usize;
    for g in &agg.group_expr {
        let Expr::Column(c) = g else { return None };
        let values = controlled.values().find_map(|t| t.domains.get(&c.name))?;
        combinations = combinations.saturating_mul(values.len());
        domains.push(values.clone());
    }
    (combinations <= MAX_COMBINATIONS).then_some(domains)
}
