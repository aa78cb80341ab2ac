//! Rows of a [`Table`] as one Parquet file, with parquet's low-level column writers (no Arrow:
//! the lean build is the point, docs/lake.md).

use crate::table::{Kind, Table, Value};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{BoolType, ByteArrayType, DataType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::parser::parse_message_type;
use std::sync::Arc;

/// How files are encoded.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// Rows per row group, at most: a reader's unit of parallelism and of skipping.
    pub row_group_rows: usize,
    /// zstd level (1..=22).
    pub zstd_level: i32,
}

impl Default for Format {
    fn default() -> Self {
        Format {
            row_group_rows: 128 * 1024,
            zstd_level: 3,
        }
    }
}

/// The table's Parquet schema, in parquet's message syntax.
pub fn message_type(table: Table) -> String {
    let mut s = format!("message {table:?} {{\n");
    for c in table.columns() {
        let rep = if c.optional { "optional" } else { "required" };
        let ty = match c.kind {
            Kind::Text => "binary",
            Kind::Int64 | Kind::Timestamp => "int64",
            Kind::Int32 => "int32",
            Kind::Double => "double",
            Kind::Boolean => "boolean",
        };
        let logical = match c.kind {
            Kind::Text => " (STRING)",
            Kind::Timestamp => " (TIMESTAMP(MILLIS,true))",
            _ => "",
        };
        s.push_str(&format!("  {rep} {ty} {}{logical};\n", c.name));
    }
    s.push('}');
    s
}

/// Writes `rows` (each in the order of `table.columns()`) to `out` as one Parquet file.
pub fn write<W: std::io::Write + Send>(
    table: Table,
    rows: &[&[Value]],
    format: Format,
    out: W,
) -> parquet::errors::Result<()> {
    let schema = Arc::new(parse_message_type(&message_type(table))?);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(format.zstd_level)?))
        .set_max_row_group_size(format.row_group_rows)
        .set_created_by(format!("posflow-lake {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(out, schema, Arc::new(props))?;
    for group in rows.chunks(format.row_group_rows.max(1)) {
        let mut rg = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = rg.next_column()? {
            let c = table.columns()[index];
            let cells = group.iter().map(|r| &r[index]);
            // Definition levels: 1 for a value, 0 for a null; none for a required column.
            let defs: Option<Vec<i16>> = c.optional.then(|| {
                cells
                    .clone()
                    .map(|v| i16::from(*v != Value::Null))
                    .collect()
            });
            let defs = defs.as_deref();
            match c.kind {
                Kind::Text => put::<ByteArrayType>(&mut column, cells, defs, |v| match v {
                    // A reference-counted clone of the record's bytes, not a copy.
                    Value::Text(s) => Some(s.clone()),
                    _ => None,
                })?,
                Kind::Int64 | Kind::Timestamp => {
                    put::<Int64Type>(&mut column, cells, defs, |v| match v {
                        Value::Int64(n) => Some(*n),
                        _ => None,
                    })?
                }
                Kind::Int32 => put::<Int32Type>(&mut column, cells, defs, |v| match v {
                    Value::Int32(n) => Some(*n),
                    _ => None,
                })?,
                Kind::Double => put::<DoubleType>(&mut column, cells, defs, |v| match v {
                    Value::Double(n) => Some(*n),
                    _ => None,
                })?,
                Kind::Boolean => put::<BoolType>(&mut column, cells, defs, |v| match v {
                    Value::Boolean(b) => Some(*b),
                    _ => None,
                })?,
            }
            column.close()?;
            index += 1;
        }
        rg.close()?;
    }
    writer.close()?;
    Ok(())
}

/// One column chunk: the cells' non-null values of parquet type `T`, with `defs`.
fn put<'a, T: DataType>(
    column: &mut SerializedColumnWriter<'_>,
    cells: impl Iterator<Item = &'a Value>,
    defs: Option<&[i16]>,
    value: impl Fn(&Value) -> Option<T::T>,
) -> parquet::errors::Result<()> {
    let values: Vec<T::T> = cells.filter_map(value).collect();
    column.typed::<T>().write_batch(&values, defs, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    /// Every table's rows read back from the bytes as written: same count, same values, nulls
    /// where the record had none, across more than one row group.
    #[test]
    fn rows_read_back_equal() {
        let records = crate::sample::records(7);
        for table in Table::ALL {
            let rows: Vec<Vec<Value>> = records
                .iter()
                .filter(|r| r.table() == table)
                .enumerate()
                .map(|(i, r)| r.clone().into_row(2, i as i64))
                .collect();
            let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
            let mut bytes = Vec::new();
            let format = Format {
                row_group_rows: 3,
                zstd_level: 3,
            };
            write(table, &refs, format, &mut bytes).unwrap();
            let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
            assert_eq!(reader.metadata().num_row_groups(), 3, "{table:?}");
            let read: Vec<Vec<Value>> = reader
                .get_row_iter(None)
                .unwrap()
                .map(|row| {
                    row.unwrap()
                        .get_column_iter()
                        .map(|(_, f)| match f {
                            Field::Null => Value::Null,
                            Field::Str(s) => Value::from(s.as_str()),
                            Field::Long(n) => Value::Int64(*n),
                            Field::TimestampMillis(n) => Value::Int64(*n),
                            Field::Int(n) => Value::Int32(*n),
                            Field::Double(n) => Value::Double(*n),
                            Field::Bool(b) => Value::Boolean(*b),
                            other => panic!("unexpected {other:?}"),
                        })
                        .collect()
                })
                .collect();
            assert_eq!(read, rows, "{table:?}");
        }
    }

    /// By hand, for docs/lake.md's choice of row groups and zstd level: 10⁶ validated rows
    /// written under each candidate format into `$POSFLOW_LAKE_FORMATS_DIR`, for
    /// tests/analysts/lake_formats.py to time DuckDB over.
    #[test]
    #[ignore = "by hand: POSFLOW_LAKE_FORMATS_DIR=dir cargo test -p posflow-lake -- --ignored"]
    fn write_format_candidates() {
        let dir = std::path::PathBuf::from(std::env::var("POSFLOW_LAKE_FORMATS_DIR").unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let rows: Vec<Vec<Value>> = (0..1_000_000)
            .map(|i| {
                // Closer to a real day than the unit tests' sample: 500 merchants, 5,000
                // terminals, 43-character tokens that do not compress, varied amounts.
                let mut t = crate::sample::transaction(i);
                let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                t.merchant_id = format!("M{:04}", h % 500);
                t.terminal_id = format!("T{:05}", (h >> 16) % 5000);
                t.amount_minor = (h >> 24) as i64 % 100_000;
                t.transaction_time = 1_764_547_200_000 + i as i64 * 86;
                if let Some(c) = t.card.as_mut() {
                    c.token = format!("{h:016x}{:016x}{:011x}", h.rotate_left(17), h >> 20);
                }
                crate::table::Record::Validated(posflow_schema::TransactionValidated {
                    envelope: posflow_schema::Envelope {
                        received_at: t.transaction_time + 150,
                        mqtt_topic: String::new(),
                        bridge_id: "bridge-0".into(),
                        payload_version: 1,
                    },
                    validated_at: t.transaction_time + 200,
                    transaction: t,
                })
                .into_row(0, i as i64)
            })
            .collect();
        let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
        for (row_group_rows, zstd_level) in [
            (128 * 1024, 1),
            (128 * 1024, 3),
            (128 * 1024, 9),
            (1 << 20, 3),
            (16 * 1024, 3),
        ] {
            let name = format!("rg{row_group_rows}-zstd{zstd_level}.parquet");
            let f = std::fs::File::create(dir.join(&name)).unwrap();
            let started = std::time::Instant::now();
            let format = Format {
                row_group_rows,
                zstd_level,
            };
            write(Table::Validated, &refs, format, std::io::BufWriter::new(f)).unwrap();
            println!("{name}: written in {:?} (debug build)", started.elapsed());
        }
    }
}
