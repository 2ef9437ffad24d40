//! The table provider for user tables: the in-memory buffer plus Parquet files.
//!
//! Files and buffer segments are pruned by the time range the query's filters imply. A
//! point can only be held twice by pieces of different write generations whose time ranges
//! overlap ([`crate::write_buffer::TableData::dedup_groups`]); each such group is
//! deduplicated on its own (see [`super::dedup`]: later generations win field by field,
//! exactly as later writes of the same point do in the buffer), and every other piece is
//! read as it is. The cost of deduplication follows the overlap, not the table size.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::{
    catalog::Session,
    common::{Result as DfResult, ScalarValue},
    datasource::{
        TableProvider, TableType,
        listing::PartitionedFile,
        physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource},
        source::DataSourceExec,
    },
    execution::object_store::ObjectStoreUrl,
    logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown},
    physical_plan::{ExecutionPlan, empty::EmptyExec, limit::GlobalLimitExec, union::UnionExec},
};

use super::dedup;
use crate::{
    catalog::{TIME_COLUMN, TableDef},
    write_buffer::{PieceSource, WriteBuffer},
};

/// Object store URL under which the server's store is registered with DataFusion.
pub const STORE_URL: &str = "weir://store/";

/// A user table.
#[derive(Debug)]
pub struct WeirTable {
    db_id: u32,
    table: Arc<TableDef>,
    buffer: Arc<WriteBuffer>,
}

impl WeirTable {
    /// A provider for `table` of database `db_id`.
    pub fn new(db_id: u32, table: Arc<TableDef>, buffer: Arc<WriteBuffer>) -> Self {
        Self { db_id, table, buffer }
    }
}

#[async_trait]
impl TableProvider for WeirTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters only prune by time; DataFusion still applies them exactly.
        Ok(filters
            .iter()
            .map(|f| {
                if time_bounds(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let range = filters.iter().filter_map(time_bounds).fold(None, |acc: Option<(i64, i64)>, (lo, hi)| match acc {
            None => Some((lo, hi)),
            Some((a, b)) => Some((a.max(lo), b.min(hi))),
        });
        if let Some((lo, hi)) = range
            && lo > hi
        {
            let projected = project(&schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let data = self.buffer.table_data(self.db_id, self.table.id, range);
        let target_partitions = state.config().target_partitions().max(1);
        let groups = data.dedup_groups();
        let mut in_group = vec![false; data.pieces.len()];
        for &i in groups.iter().flatten() {
            in_group[i] = true;
        }

        // Pieces no other generation overlaps are read as they are, projected.
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let (mut files, mut batches) = (Vec::new(), Vec::new());
        for (piece, _) in data.pieces.iter().zip(&in_group).filter(|(_, g)| !**g) {
            match &piece.source {
                PieceSource::File(f) => files.push(f.clone()),
                PieceSource::Batch(b) => batches.push(b.clone()),
            }
        }
        if !files.is_empty() {
            plans.push(parquet_exec(&schema, &files, projection.cloned(), target_partitions)?);
        }
        if !batches.is_empty() {
            plans.push(MemorySourceConfig::try_new_exec(
                &split_partitions(batches, target_partitions),
                Arc::clone(&schema),
                projection.cloned(),
            )?);
        }

        // Each group of overlapping pieces is deduplicated on its own: one source per
        // generation, oldest first, so later writes win.
        for group in &groups {
            let mut generations: Vec<usize> = group.iter().map(|&i| data.pieces[i].generation).collect();
            generations.sort_unstable();
            generations.dedup();
            let mut sources: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
            for g in generations {
                let (mut files, mut batches) = (Vec::new(), Vec::new());
                for piece in group.iter().map(|&i| &data.pieces[i]).filter(|p| p.generation == g) {
                    match &piece.source {
                        PieceSource::File(f) => files.push(f.clone()),
                        PieceSource::Batch(b) => batches.push(b.clone()),
                    }
                }
                if !files.is_empty() {
                    sources.push(parquet_exec(&schema, &files, None, 1)?);
                }
                if !batches.is_empty() {
                    sources.push(MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&schema), None)?);
                }
            }
            let deduped = dedup::plan(&self.table, &schema, sources)?;
            plans.push(dedup::project(deduped, projection)?);
        }

        let plan: Arc<dyn ExecutionPlan> = match plans.len() {
            0 => Arc::new(EmptyExec::new(project(&schema, projection)?)),
            1 => plans.remove(0),
            _ => UnionExec::try_new(plans)?,
        };
        Ok(match limit {
            Some(n) => Arc::new(GlobalLimitExec::new(plan, 0, Some(n))),
            None => plan,
        })
    }
}

fn project(schema: &SchemaRef, projection: Option<&Vec<usize>>) -> DfResult<SchemaRef> {
    Ok(match projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => Arc::clone(schema),
    })
}

/// Spread batches over up to `n` partitions (round robin) so scans use every core.
fn split_partitions(
    batches: Vec<arrow::record_batch::RecordBatch>,
    n: usize,
) -> Vec<Vec<arrow::record_batch::RecordBatch>> {
    let n = n.min(batches.len()).max(1);
    let mut parts: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % n].push(b);
    }
    parts
}

fn parquet_exec(
    schema: &SchemaRef,
    files: &[crate::write_buffer::persist::ParquetFile],
    projection: Option<Vec<usize>>,
    groups: usize,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let url = ObjectStoreUrl::parse(STORE_URL)?;
    let source = Arc::new(ParquetSource::new(Arc::clone(schema)));
    let groups = groups.min(files.len()).max(1);
    let mut file_groups: Vec<Vec<PartitionedFile>> = (0..groups).map(|_| Vec::new()).collect();
    for (i, f) in files.iter().enumerate() {
        file_groups[i % groups].push(PartitionedFile::new(f.path.clone(), f.size_bytes));
    }
    let config = FileScanConfigBuilder::new(url, source)
        .with_file_groups(file_groups.into_iter().map(FileGroup::new).collect())
        .with_projection_indices(projection)?
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// Inclusive `(lo, hi)` ns bounds on `time` implied by one filter, if it is a simple
/// comparison of the time column with a constant (or a conjunction of such).
pub(crate) fn time_bounds(e: &Expr) -> Option<(i64, i64)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                let a = time_bounds(left);
                let b = time_bounds(right);
                return match (a, b) {
                    (Some((a0, a1)), Some((b0, b1))) => Some((a0.max(b0), a1.min(b1))),
                    (Some(x), None) | (None, Some(x)) => Some(x),
                    (None, None) => None,
                };
            }
            let (op, v) = match (is_time(left), is_time(right)) {
                (true, false) => (*op, scalar_ns(right)?),
                (false, true) => (op.swap()?, scalar_ns(left)?),
                _ => return None,
            };
            match op {
                Operator::Eq => Some((v, v)),
                Operator::Gt => Some((v.saturating_add(1), i64::MAX)),
                Operator::GtEq => Some((v, i64::MAX)),
                Operator::Lt => Some((i64::MIN, v.saturating_sub(1))),
                Operator::LtEq => Some((i64::MIN, v)),
                _ => None,
            }
        }
        Expr::Between(b) if !b.negated && is_time(&b.expr) => Some((scalar_ns(&b.low)?, scalar_ns(&b.high)?)),
        _ => None,
    }
}

fn is_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TIME_COLUMN)
}

fn scalar_ns(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000_000),
        _ => None,
    }
}
