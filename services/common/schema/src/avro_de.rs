//! Avro binary straight into a serde type, driven by the writer's schema: the schema-aware
//! read path. apache-avro's `from_avro_datum` builds a generic `Value` tree (a `String` per
//! field name, a `Vec` per record, a `Box` per union) that `from_value` then walks into the
//! type; that tree was a third of the validator's samples (BENCHMARKS.md, issue 20). Here the
//! bytes are read as the type asks for them, so the only allocations are the type's own.
//!
//! Used only when the writer's schema is the reader's own (no resolution to do) and holds no
//! named references (`usable`); everything else takes apache-avro's path. `tests/agree.rs`
//! holds the two paths to the same answer for every schema on generated values.

use apache_avro::schema::{RecordField, Schema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::fmt;

#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn eof() -> Error {
    Error("unexpected end of the datum".into())
}

/// Whether this path can read `schema`: every kind it meets is one it knows, and no named
/// reference (those need the names table; none of posflow's schemas has one today).
pub fn usable(schema: &Schema) -> bool {
    match schema {
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::Bytes
        | Schema::String
        | Schema::Uuid
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::Enum(_)
        | Schema::Fixed(_) => true,
        Schema::Array(a) => usable(&a.items),
        Schema::Map(m) => usable(&m.types),
        Schema::Union(u) => u.variants().iter().all(usable),
        Schema::Record(r) => r.fields.iter().all(|f| usable(&f.schema)),
        _ => false,
    }
}

/// `T` from the Avro binary `bytes` written with `schema` (which [`usable`] accepts).
pub fn from_slice<'de, T: de::Deserialize<'de>>(
    schema: &Schema,
    bytes: &'de [u8],
) -> Result<T, Error> {
    let mut input = bytes;
    T::deserialize(Reader {
        schema,
        input: &mut input,
    })
}

/// One value of `schema` at the front of `input`.
struct Reader<'s, 'i, 'de> {
    schema: &'s Schema,
    input: &'i mut &'de [u8],
}

impl<'de> Reader<'_, '_, 'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        if self.input.len() < n {
            return Err(eof());
        }
        let (head, rest) = self.input.split_at(n);
        *self.input = rest;
        Ok(head)
    }

    /// A zig-zag varint (Avro's int and long).
    fn long(&mut self) -> Result<i64, Error> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err(Error("varint longer than 10 bytes".into()))
    }

    fn int(&mut self) -> Result<i32, Error> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| Error(format!("int out of range: {n}")))
    }

    fn len(&mut self) -> Result<usize, Error> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| Error(format!("negative length {n}")))
    }

    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'de str, Error> {
        std::str::from_utf8(self.bytes()?).map_err(|e| Error(e.to_string()))
    }

    fn at<'s2>(&mut self, schema: &'s2 Schema) -> Reader<'s2, '_, 'de> {
        Reader {
            schema,
            input: self.input,
        }
    }

    /// An enum's symbol.
    fn symbol<'e>(&mut self, symbols: &'e [String]) -> Result<&'e str, Error> {
        let i = self.int()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| symbols.get(i))
            .map(String::as_str)
            .ok_or_else(|| Error(format!("enum index {i} of {}", symbols.len())))
    }

    /// A union's branch.
    fn branch<'u>(&mut self, variants: &'u [Schema]) -> Result<&'u Schema, Error> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| variants.get(i))
            .ok_or_else(|| Error(format!("union branch {i} of {}", variants.len())))
    }
}

impl<'de> de::Deserializer<'de> for Reader<'_, '_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        match self.schema {
            Schema::Null => v.visit_unit(),
            Schema::Boolean => match self.take(1)?[0] {
                0 => v.visit_bool(false),
                1 => v.visit_bool(true),
                b => Err(Error(format!("boolean byte {b}"))),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => v.visit_i32(self.int()?),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros => v.visit_i64(self.long()?),
            Schema::Float => {
                let b = self.take(4)?;
                v.visit_f32(f32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            Schema::Double => {
                let b = self.take(8)?;
                v.visit_f64(f64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            Schema::Bytes => v.visit_borrowed_bytes(self.bytes()?),
            Schema::Fixed(f) => v.visit_borrowed_bytes(self.take(f.size)?),
            Schema::String | Schema::Uuid => v.visit_borrowed_str(self.str()?),
            Schema::Enum(e) => v.visit_str(self.symbol(&e.symbols)?),
            Schema::Array(a) => v.visit_seq(Blocks::new(self.input, &a.items)),
            Schema::Map(m) => v.visit_map(Blocks::new(self.input, &m.types)),
            Schema::Union(u) => {
                let branch = self.branch(u.variants())?;
                self.at(branch).deserialize_any(v)
            }
            Schema::Record(r) => v.visit_map(Fields {
                fields: r.fields.iter(),
                value: None,
                input: self.input,
            }),
            other => Err(Error(format!("schema kind {other:?} is not read here"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        match self.schema {
            Schema::Null => v.visit_none(),
            Schema::Union(u) => match self.branch(u.variants())? {
                Schema::Null => v.visit_none(),
                branch => v.visit_some(self.at(branch)),
            },
            _ => v.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.schema {
            Schema::Enum(e) => v.visit_enum(self.symbol(&e.symbols)?.into_deserializer()),
            Schema::String => v.visit_enum(self.str()?.into_deserializer()),
            other => Err(Error(format!("an enum from schema kind {other:?}"))),
        }
    }

    /// `Vec<u8>` asks for a sequence: bytes and fixed give their bytes one by one.
    fn deserialize_seq<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        match self.schema {
            Schema::Bytes => v.visit_seq(byte_seq(self.bytes()?)),
            Schema::Fixed(f) => v.visit_seq(byte_seq(self.take(f.size)?)),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

fn byte_seq(
    b: &[u8],
) -> de::value::SeqDeserializer<std::iter::Copied<std::slice::Iter<'_, u8>>, Error> {
    de::value::SeqDeserializer::new(b.iter().copied())
}

/// A record's fields, in the schema's order, as a map keyed by field name.
struct Fields<'s, 'i, 'de> {
    fields: std::slice::Iter<'s, RecordField>,
    value: Option<&'s Schema>,
    input: &'i mut &'de [u8],
}

impl<'de> de::MapAccess<'de> for Fields<'_, '_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(f) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(&f.schema);
        seed.deserialize(f.name.as_str().into_deserializer())
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let schema = self
            .value
            .take()
            .ok_or_else(|| Error("value before key".into()))?;
        seed.deserialize(Reader {
            schema,
            input: self.input,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// An array's items or a map's entries, in Avro's blocks (a count, negative when the block's
/// size in bytes follows; a zero count ends).
struct Blocks<'s, 'i, 'de> {
    items: &'s Schema,
    left: usize,
    done: bool,
    input: &'i mut &'de [u8],
}

impl<'s, 'i, 'de> Blocks<'s, 'i, 'de> {
    fn new(input: &'i mut &'de [u8], items: &'s Schema) -> Self {
        Blocks {
            items,
            left: 0,
            done: false,
            input,
        }
    }

    /// Whether another item follows, reading the next block's header when one ends.
    fn more(&mut self) -> Result<bool, Error> {
        while self.left == 0 && !self.done {
            let mut r = Reader {
                schema: self.items,
                input: self.input,
            };
            let count = r.long()?;
            if count < 0 {
                r.long()?; // the block's size in bytes: not needed to read it
            }
            self.left = usize::try_from(count.unsigned_abs()).map_err(|_| eof())?;
            self.done = count == 0;
        }
        if self.done {
            return Ok(false);
        }
        self.left -= 1;
        Ok(true)
    }

    fn item(&mut self) -> Reader<'s, '_, 'de> {
        Reader {
            schema: self.items,
            input: self.input,
        }
    }
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, '_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(self.item()).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Blocks<'_, '_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(Reader {
            schema: &Schema::String,
            input: self.input,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.item())
    }
}
