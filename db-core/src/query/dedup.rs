//! Query-time deduplication of points that several sources hold.
//!
//! A point is its series (tag values) plus its timestamp. When sources may overlap, every
//! source gets an `__order` column (its position in write order), the union is sorted by
//! (tags, time, `__order`), and [`DedupExec`] folds each run of equal keys into one row:
//! for every field, the value of the *last* row in the run that has one. That is the same
//! field-by-field "later write wins" rule the buffer applies on write.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arrow::{
    array::{ArrayRef, RecordBatch, UInt32Array},
    compute::{concat_batches, take},
    datatypes::{DataType, Field, Schema, SchemaRef},
    row::{RowConverter, SortField},
};
use datafusion::{
    common::{Result as DfResult, ScalarValue, tree_node::TreeNodeRecursion},
    execution::{SendableRecordBatchStream, TaskContext},
    physical_expr::{
        EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr, PhysicalSortExpr,
        expressions::{Column, Literal},
    },
    physical_plan::{
        DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, RecordBatchStream,
        coalesce_partitions::CoalescePartitionsExec,
        execution_plan::{Boundedness, EmissionType},
        projection::ProjectionExec,
        sorts::sort::SortExec,
        union::UnionExec,
    },
};
use futures::{Stream, StreamExt};

use crate::catalog::{ColumnKind, TIME_COLUMN, TableDef};

/// Name of the helper column carrying a source's write order.
pub const ORDER_COLUMN: &str = "__weir_order";

/// Build `DedupExec(Sort(Union(sources + __order)))`. Every source must produce the full
/// table `schema`, oldest source first.
pub fn plan(
    table: &TableDef,
    schema: &SchemaRef,
    sources: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let mut ordered: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(sources.len());
    for (i, source) in sources.into_iter().enumerate() {
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| (Arc::new(Column::new(f.name(), j)) as Arc<dyn PhysicalExpr>, f.name().to_string()))
            .collect();
        exprs.push((Arc::new(Literal::new(ScalarValue::UInt64(Some(i as u64)))), ORDER_COLUMN.to_string()));
        ordered.push(Arc::new(ProjectionExec::try_new(exprs, source)?));
    }
    let input: Arc<dyn ExecutionPlan> = match ordered.len() {
        1 => ordered.remove(0),
        _ => UnionExec::try_new(ordered)?,
    };
    let input: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(input));
    let with_order = input.schema();
    let mut sort = Vec::new();
    for id in table.tag_ids_sorted() {
        let name = table.columns[id].name.as_ref();
        let idx = with_order.index_of(name)?;
        sort.push(PhysicalSortExpr::new_default(Arc::new(Column::new(name, idx))));
    }
    let time_idx = with_order.index_of(TIME_COLUMN)?;
    sort.push(PhysicalSortExpr::new_default(Arc::new(Column::new(TIME_COLUMN, time_idx))));
    let order_idx = with_order.index_of(ORDER_COLUMN)?;
    sort.push(PhysicalSortExpr::new_default(Arc::new(Column::new(ORDER_COLUMN, order_idx))));
    let ordering = LexOrdering::new(sort)
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("empty dedup ordering".to_string()))?;
    let sorted: Arc<dyn ExecutionPlan> = Arc::new(SortExec::new(ordering.clone(), input));
    Ok(Arc::new(DedupExec::try_new(table, Arc::clone(schema), sorted, ordering)?))
}

/// Apply a scan projection on top of a deduplicated plan.
pub fn project(plan: Arc<dyn ExecutionPlan>, projection: Option<&Vec<usize>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let Some(p) = projection else { return Ok(plan) };
    let schema = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = p
        .iter()
        .map(|&i| {
            let f = schema.field(i);
            (Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>, f.name().to_string())
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Folds runs of equal (tags, time) keys into one row; input sorted by key and `__order`.
#[derive(Debug)]
pub struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    /// Indices (in the input) of the key columns: tags then time.
    key: Vec<usize>,
    /// Indices (in the input) of the field columns.
    fields: Vec<usize>,
    /// The input order this operator relies on (tags, time, `__order`); declared as a
    /// requirement so the optimizer never drops the sort below.
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
}

impl DedupExec {
    fn try_new(
        table: &TableDef,
        schema: SchemaRef,
        input: Arc<dyn ExecutionPlan>,
        ordering: LexOrdering,
    ) -> DfResult<Self> {
        let in_schema = input.schema();
        let mut key = Vec::new();
        for id in table.tag_ids_sorted() {
            key.push(in_schema.index_of(&table.columns[id].name)?);
        }
        key.push(in_schema.index_of(TIME_COLUMN)?);
        let mut fields = Vec::new();
        for f in schema.fields() {
            if matches!(table.column(f.name()).map(|c| c.kind), Some(ColumnKind::Field(_))) {
                fields.push(in_schema.index_of(f.name())?);
            }
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self { input, schema, key, fields, ordering, properties })
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DedupExec: key_columns={}", self.key.len())
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &'static str {
        "DedupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal("DedupExec takes one child".to_string()));
        }
        Ok(Arc::new(Self {
            input: children.remove(0),
            schema: Arc::clone(&self.schema),
            key: self.key.clone(),
            fields: self.fields.clone(),
            ordering: self.ordering.clone(),
            properties: Arc::clone(&self.properties),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let in_schema = self.input.schema();
        let sort_fields = self.key.iter().map(|&i| SortField::new(in_schema.field(i).data_type().clone())).collect();
        Ok(Box::pin(DedupStream {
            input,
            schema: Arc::clone(&self.schema),
            in_schema,
            key: self.key.clone(),
            fields: self.fields.clone(),
            converter: RowConverter::new(sort_fields)?,
            carry: None,
            done: false,
        }))
    }
}

struct DedupStream {
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    in_schema: SchemaRef,
    key: Vec<usize>,
    fields: Vec<usize>,
    converter: RowConverter,
    /// Rows of the last, possibly unfinished, run.
    carry: Option<RecordBatch>,
    done: bool,
}

impl DedupStream {
    /// Start offsets of the runs of equal keys in `batch`.
    fn run_starts(&self, batch: &RecordBatch) -> DfResult<Vec<usize>> {
        let cols: Vec<ArrayRef> = self.key.iter().map(|&i| Arc::clone(batch.column(i))).collect();
        let rows = self.converter.convert_columns(&cols)?;
        let mut starts = Vec::new();
        for i in 0..batch.num_rows() {
            if i == 0 || rows.row(i) != rows.row(i - 1) {
                starts.push(i);
            }
        }
        Ok(starts)
    }

    /// Fold the complete runs `starts` (ending at `end`) of `batch` into one row each.
    fn fold_runs(&self, batch: &RecordBatch, starts: &[usize], end: usize) -> DfResult<RecordBatch> {
        let n = starts.len();
        let firsts = UInt32Array::from_iter_values(starts.iter().map(|&s| s as u32));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let i = self.in_schema.index_of(f.name())?;
            let col = batch.column(i);
            if self.fields.contains(&i) {
                let mut idx = Vec::with_capacity(n);
                for (g, &s) in starts.iter().enumerate() {
                    let e = starts.get(g + 1).copied().unwrap_or(end);
                    let pick = (s..e).rev().find(|&r| col.is_valid(r)).unwrap_or(s);
                    idx.push(pick as u32);
                }
                columns.push(take(col.as_ref(), &UInt32Array::from(idx), None)?);
            } else {
                columns.push(take(col.as_ref(), &firsts, None)?);
            }
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    fn process(&mut self, batch: RecordBatch) -> DfResult<Option<RecordBatch>> {
        let batch = match self.carry.take() {
            Some(c) => concat_batches(&self.in_schema, [&c, &batch])?,
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let starts = self.run_starts(&batch)?;
        let last = *starts.last().unwrap_or(&0);
        self.carry = Some(batch.slice(last, batch.num_rows() - last));
        if last == 0 {
            return Ok(None);
        }
        Ok(Some(self.fold_runs(&batch, &starts[..starts.len() - 1], last)?))
    }

    fn finish(&mut self) -> DfResult<Option<RecordBatch>> {
        let Some(c) = self.carry.take() else { return Ok(None) };
        if c.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(self.fold_runs(&c, &[0], c.num_rows())?))
    }
}

impl Stream for DedupStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.input.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(batch))) => match self.process(batch) {
                    Ok(Some(out)) => return Poll::Ready(Some(Ok(out))),
                    Ok(None) => continue,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(self.finish().transpose());
                }
            }
        }
    }
}

impl RecordBatchStream for DedupStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// The schema of a source with the order column appended (used by tests).
pub fn with_order_column(schema: &Schema) -> Schema {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ORDER_COLUMN, DataType::UInt64, false));
    Schema::new(fields)
}
