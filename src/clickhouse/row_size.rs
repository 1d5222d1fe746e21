//! The size in bytes of a row's RowBinary encoding, for `ridepulse_writer_bytes_total`.
//!
//! The `clickhouse` crate encodes rows into its request buffer privately and reports no
//! sizes, so the writer counts them itself: [`row_binary_size`] walks the same `Serialize`
//! implementation the crate encodes with, through a serializer that only adds up how many
//! bytes each value takes in RowBinary (fixed-width numbers, LEB128-prefixed strings and
//! arrays, one null-flag byte before a `Nullable` value). It allocates nothing and writes
//! nothing. Only the shapes the writer's rows use are supported (numbers, strings, options,
//! sequences, structs); anything else is an error, never a guess.

use serde::ser::{self, Impossible, Serialize};

/// Why a row's size could not be counted: it holds a shape RowBinary rows here never hold.
#[derive(Debug, thiserror::Error)]
#[error("cannot size this row as RowBinary: {0}")]
pub struct SizeError(String);

impl ser::Error for SizeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SizeError(msg.to_string())
    }
}

/// The bytes `row` takes in RowBinary (without any names-and-types header).
pub fn row_binary_size<R: Serialize + ?Sized>(row: &R) -> Result<u64, SizeError> {
    let mut counter = SizeCounter { bytes: 0 };
    row.serialize(&mut counter)?;
    Ok(counter.bytes)
}

/// Bytes of `n` as unsigned LEB128 (the length prefix of strings and arrays).
fn leb128_len(mut n: u64) -> u64 {
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes
}

/// Adds up the encoded size of what is serialized into it.
struct SizeCounter {
    bytes: u64,
}

impl SizeCounter {
    fn add(&mut self, bytes: u64) -> Result<(), SizeError> {
        self.bytes += bytes;
        Ok(())
    }

    fn unsupported(what: &str) -> SizeError {
        SizeError(format!("{what} has no RowBinary encoding in this writer"))
    }
}

impl ser::Serializer for &mut SizeCounter {
    type Ok = ();
    type Error = SizeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Impossible<(), SizeError>;
    type SerializeMap = Impossible<(), SizeError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), SizeError>;

    fn serialize_bool(self, _: bool) -> Result<(), SizeError> {
        self.add(1)
    }
    fn serialize_i8(self, _: i8) -> Result<(), SizeError> {
        self.add(1)
    }
    fn serialize_i16(self, _: i16) -> Result<(), SizeError> {
        self.add(2)
    }
    fn serialize_i32(self, _: i32) -> Result<(), SizeError> {
        self.add(4)
    }
    fn serialize_i64(self, _: i64) -> Result<(), SizeError> {
        self.add(8)
    }
    fn serialize_i128(self, _: i128) -> Result<(), SizeError> {
        self.add(16)
    }
    fn serialize_u8(self, _: u8) -> Result<(), SizeError> {
        self.add(1)
    }
    fn serialize_u16(self, _: u16) -> Result<(), SizeError> {
        self.add(2)
    }
    fn serialize_u32(self, _: u32) -> Result<(), SizeError> {
        self.add(4)
    }
    fn serialize_u64(self, _: u64) -> Result<(), SizeError> {
        self.add(8)
    }
    fn serialize_u128(self, _: u128) -> Result<(), SizeError> {
        self.add(16)
    }
    fn serialize_f32(self, _: f32) -> Result<(), SizeError> {
        self.add(4)
    }
    fn serialize_f64(self, _: f64) -> Result<(), SizeError> {
        self.add(8)
    }
    fn serialize_char(self, _: char) -> Result<(), SizeError> {
        Err(SizeCounter::unsupported("a char"))
    }
    fn serialize_str(self, v: &str) -> Result<(), SizeError> {
        self.add(leb128_len(v.len() as u64) + v.len() as u64)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), SizeError> {
        self.add(leb128_len(v.len() as u64) + v.len() as u64)
    }
    fn serialize_none(self) -> Result<(), SizeError> {
        // Nullable: the null flag alone.
        self.add(1)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), SizeError> {
        self.add(1)?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), SizeError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), SizeError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), SizeError> {
        Err(SizeCounter::unsupported("an enum variant"))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), SizeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), SizeError> {
        Err(SizeCounter::unsupported("an enum variant"))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, SizeError> {
        let len = len.ok_or_else(|| SizeCounter::unsupported("a sequence of unknown length"))?;
        self.add(leb128_len(len as u64))?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, SizeError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, SizeError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SizeError> {
        Err(SizeCounter::unsupported("an enum variant"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SizeError> {
        Err(SizeCounter::unsupported("a map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, SizeError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SizeError> {
        Err(SizeCounter::unsupported("an enum variant"))
    }
}

impl ser::SerializeSeq for &mut SizeCounter {
    type Ok = ();
    type Error = SizeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), SizeError> {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut SizeCounter {
    type Ok = ();
    type Error = SizeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), SizeError> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut SizeCounter {
    type Ok = ();
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SizeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), SizeError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut SizeCounter {
    type Ok = ();
    type Error = SizeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), SizeError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), SizeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Row {
        name: String,
        count: u64,
        small: u8,
        when: u32,
        fare: Option<f64>,
        driver: Option<String>,
        tags: Vec<String>,
    }

    #[test]
    fn sizes_follow_row_binary_rules() {
        let row = Row {
            name: "x".repeat(200),
            count: 7,
            small: 1,
            when: 5,
            fare: None,
            driver: Some("driver-1".into()),
            tags: vec!["a".into(), "bc".into()],
        };
        // 200 bytes behind a two-byte LEB128 length; 8 + 1 + 4; a null flag; a flag, a
        // length byte and 8 bytes; one length byte for the array, then 1+1 and 1+2.
        let want = (2 + 200) + 8 + 1 + 4 + 1 + (1 + 1 + 8) + (1 + 2 + 3);
        assert_eq!(row_binary_size(&row).unwrap(), want);
        assert_eq!(row_binary_size("").unwrap(), 1);
        assert_eq!(row_binary_size(&"é").unwrap(), 3, "bytes, not characters");
        assert_eq!(leb128_len(127), 1);
        assert_eq!(leb128_len(128), 2);
        assert_eq!(leb128_len(16_384), 3);
    }

    #[test]
    fn a_checkpoint_row_sizes_by_its_fields() {
        let row = crate::clickhouse::rows::CheckpointRecord {
            consumer_group: "g".into(),
            topic: "ride-events".into(),
            kafka_partition: 3,
            next_offset: 10,
            max_event_ms: Some(1),
            written_to: 9,
            finalized_through: 0,
            written_at_us: 0,
        };
        assert_eq!(
            row_binary_size(&row).unwrap(),
            (1 + 1) + (1 + 11) + 4 + 8 + (1 + 8) + 8 + 8 + 8
        );
    }

    #[test]
    fn shapes_without_an_encoding_here_are_refused() {
        let map: std::collections::BTreeMap<u8, u8> = [(1, 2)].into();
        assert!(row_binary_size(&map).is_err());
        assert!(row_binary_size(&'c').is_err());
    }
}
