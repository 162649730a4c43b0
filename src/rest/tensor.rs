//! JSON numbers ⇄ tensor bytes, shared by the TF-Serving and KServe REST front ends: reading
//! nested JSON arrays (TF-Serving's ndarrays, KServe's `data`) into little-endian elements of a
//! given type, and writing tensor bytes back as JSON arrays.
//!
//! Integers are read from JSON without going through `f64` (serde_json keeps u64/i64 exact), so
//! a UINT64 value such as 2^64-1 survives. Floats are written with the shortest representation
//! that reads back as the same `f32`/`f64`; a non-finite value is written as `null`.

use crate::signature::{le_array, ElemType};
use serde_json::Value;

/// Appends one JSON scalar as an element of `elem`; None when it is not a valid value of that
/// type (a string, a fraction for an integer type, out of range, a non-boolean for BOOL, ...).
pub fn push_elem(v: &Value, elem: ElemType, out: &mut Vec<u8>) -> Option<()> {
    macro_rules! int {
        ($t:ty) => {{
            let x: $t = match v {
                Value::Number(n) => match n.as_i64() {
                    Some(i) => <$t>::try_from(i).ok()?,
                    None => <$t>::try_from(n.as_u64()?).ok()?,
                },
                _ => return None,
            };
            out.extend_from_slice(&x.to_le_bytes());
        }};
    }
    match elem {
        ElemType::F32 => out.extend_from_slice(&(v.as_f64()? as f32).to_le_bytes()),
        ElemType::F64 => out.extend_from_slice(&v.as_f64()?.to_le_bytes()),
        ElemType::F16 => out.extend_from_slice(&f32_to_f16(v.as_f64()? as f32).to_le_bytes()),
        ElemType::BF16 => out.extend_from_slice(&f32_to_bf16(v.as_f64()? as f32).to_le_bytes()),
        ElemType::I8 => int!(i8),
        ElemType::I16 => int!(i16),
        ElemType::I32 => int!(i32),
        ElemType::I64 => int!(i64),
        ElemType::U8 => int!(u8),
        ElemType::U16 => int!(u16),
        ElemType::U32 => int!(u32),
        ElemType::U64 => int!(u64),
        ElemType::Boolean => out.push(match v {
            Value::Bool(b) => *b as u8,
            Value::Number(n) if n.as_u64() == Some(0) => 0,
            Value::Number(n) if n.as_u64() == Some(1) => 1,
            _ => return None,
        }),
    }
    Some(())
}

/// Reads a JSON ndarray (a number, or arrays nested to a regular shape) into `out`; returns its
/// shape (`[]` for a scalar). None when ragged, mixed, or an element is not of type `elem`.
pub fn ndarray(v: &Value, elem: ElemType, out: &mut Vec<u8>) -> Option<Vec<i64>> {
    let mut shape = Vec::new();
    let mut node = v;
    while let Value::Array(a) = node {
        shape.push(a.len() as i64);
        match a.first() {
            Some(first) => node = first,
            None => break,
        }
    }
    fill(v, &shape, elem, out)?;
    Some(shape)
}

fn fill(v: &Value, shape: &[i64], elem: ElemType, out: &mut Vec<u8>) -> Option<()> {
    match shape.split_first() {
        None => push_elem(v, elem, out),
        Some((&n, rest)) => {
            let a = v.as_array().filter(|a| a.len() as i64 == n)?;
            a.iter().try_for_each(|x| fill(x, rest, elem, out))
        }
    }
}

/// Reads KServe `data`: flat, or nested (flattened in row-major order); returns the element
/// count. None when an element is not of type `elem`.
pub fn flat(v: &Value, elem: ElemType, out: &mut Vec<u8>) -> Option<usize> {
    match v {
        Value::Array(a) => a.iter().try_fold(0, |n, x| Some(n + flat(x, elem, out)?)),
        x => push_elem(x, elem, out).map(|()| 1),
    }
}

/// Writes one element of `elem` from its little-endian bytes.
pub fn write_elem(out: &mut Vec<u8>, elem: ElemType, b: &[u8]) {
    use std::io::Write;
    // `{:?}` prints the shortest representation that reads back as the same value ("1.0", "0.1").
    fn float(out: &mut Vec<u8>, finite: bool, text: std::fmt::Arguments<'_>) {
        if finite {
            let _ = out.write_fmt(text);
        } else {
            out.extend_from_slice(b"null");
        }
    }
    // `b` is one element's bytes (the callers step by the element width).
    let b1 = || b.first().copied().unwrap_or(0);
    let b2 = || u16::from_le_bytes(le_array(b));
    let b4 = || le_array::<4>(b);
    let b8 = || le_array::<8>(b);
    let _ = match elem {
        ElemType::F32 | ElemType::F16 | ElemType::BF16 => {
            let x = match elem {
                ElemType::F32 => f32::from_le_bytes(b4()),
                ElemType::F16 => f16_to_f32(b2()),
                _ => f32::from_bits((b2() as u32) << 16),
            };
            float(out, x.is_finite(), format_args!("{x:?}"));
            Ok(())
        }
        ElemType::F64 => {
            let x = f64::from_le_bytes(b8());
            float(out, x.is_finite(), format_args!("{x:?}"));
            Ok(())
        }
        ElemType::I8 => write!(out, "{}", b1() as i8),
        ElemType::I16 => write!(out, "{}", b2() as i16),
        ElemType::I32 => write!(out, "{}", i32::from_le_bytes(b4())),
        ElemType::I64 => write!(out, "{}", i64::from_le_bytes(b8())),
        ElemType::U8 => write!(out, "{}", b1()),
        ElemType::U16 => write!(out, "{}", b2()),
        ElemType::U32 => write!(out, "{}", u32::from_le_bytes(b4())),
        ElemType::U64 => write!(out, "{}", u64::from_le_bytes(b8())),
        ElemType::Boolean => out.write_all(if b1() != 0 { b"true" } else { b"false" }),
    };
}

/// Writes `bytes` (elements of `elem`) as JSON arrays nested to `dims` (a scalar for `[]`).
pub fn write_nested(out: &mut Vec<u8>, elem: ElemType, dims: &[usize], bytes: &[u8]) {
    let w = elem.byte_width();
    match dims.split_first() {
        None => write_elem(out, elem, &bytes[..w]),
        Some((&n, rest)) => {
            let step = rest.iter().product::<usize>() * w;
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_nested(out, elem, rest, &bytes[i * step..(i + 1) * step]);
            }
            out.push(b']');
        }
    }
}

/// Writes `bytes` (elements of `elem`) as one flat JSON array.
pub fn write_flat(out: &mut Vec<u8>, elem: ElemType, bytes: &[u8]) {
    out.push(b'[');
    for (i, b) in bytes.chunks_exact(elem.byte_width()).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_elem(out, elem, b);
    }
    out.push(b']');
}

/// A JSON document's bytes. A `Value` (string keys, finite or null numbers) always serializes.
pub fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A JSON document's bytes, indented (TF-Serving's REST answers are).
pub fn to_json_pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

/// Writes a JSON string (escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// IEEE half from f32, rounding to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let rem = man & 0x1fff;
    let mut r = ((e as u32) << 10) | (man >> 13);
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// bf16 from f32, rounding to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ndarrays_have_regular_shapes() {
        let mut out = Vec::new();
        assert_eq!(ndarray(&json!([[1.0, 2], [3, 4.5]]), ElemType::F32, &mut out), Some(vec![2, 2]));
        assert_eq!(out.len(), 16);
        assert_eq!(f32::from_le_bytes(out[12..16].try_into().unwrap()), 4.5);
        assert_eq!(ndarray(&json!(7), ElemType::F32, &mut Vec::new()), Some(vec![]));
        assert_eq!(ndarray(&json!([]), ElemType::F32, &mut Vec::new()), Some(vec![0]));
        assert_eq!(ndarray(&json!([[1], [2, 3]]), ElemType::F32, &mut Vec::new()), None);
        assert_eq!(ndarray(&json!([[1], 2]), ElemType::F32, &mut Vec::new()), None);
        assert_eq!(ndarray(&json!(["a"]), ElemType::F32, &mut Vec::new()), None);
    }

    #[test]
    fn integers_are_exact_and_range_checked() {
        let mut out = Vec::new();
        assert!(push_elem(&json!(u64::MAX), ElemType::U64, &mut out).is_some());
        assert_eq!(out, u64::MAX.to_le_bytes());
        let v: Value = serde_json::from_str("18446744073709551615").unwrap();
        let mut out = Vec::new();
        push_elem(&v, ElemType::U64, &mut out).unwrap();
        assert_eq!(u64::from_le_bytes(out.try_into().unwrap()), u64::MAX);
        assert!(push_elem(&json!(-1), ElemType::U32, &mut Vec::new()).is_none());
        assert!(push_elem(&json!(1.5), ElemType::I32, &mut Vec::new()).is_none());
        assert!(push_elem(&json!(128), ElemType::I8, &mut Vec::new()).is_none());
        assert!(push_elem(&json!(-128), ElemType::I8, &mut Vec::new()).is_some());
        assert!(push_elem(&json!(true), ElemType::Boolean, &mut Vec::new()).is_some());
        assert!(push_elem(&json!(2), ElemType::Boolean, &mut Vec::new()).is_none());
    }

    #[test]
    fn writing_round_trips() {
        let vals = [1.0f32, 3.0, 6.5, 0.1];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        write_nested(&mut out, ElemType::F32, &[2, 2], &bytes);
        assert_eq!(String::from_utf8(out).unwrap(), "[[1.0,3.0],[6.5,0.1]]");
        let mut out = Vec::new();
        write_flat(&mut out, ElemType::U64, &u64::MAX.to_le_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), "[18446744073709551615]");
        let mut out = Vec::new();
        write_nested(&mut out, ElemType::F32, &[], &f32::NAN.to_le_bytes());
        assert_eq!(out, b"null");
    }

    /// Found by fuzzing (fuzz/corpus/rest_tfs/crash-f64-json-read-not-correctly-rounded):
    /// without serde_json's `float_roundtrip`, "1e-130" read as an f64 one ULP off the nearest,
    /// and a number the writer wrote did not read back as itself.
    #[test]
    fn floats_read_correctly_rounded() {
        for text in ["1e-130", "9.999999999999999e-131", "2.2250738585072014e-308", "0.1"] {
            let v: Value = serde_json::from_str(text).unwrap();
            let mut out = Vec::new();
            push_elem(&v, ElemType::F64, &mut out).unwrap();
            assert_eq!(out, text.parse::<f64>().unwrap().to_le_bytes(), "{text}");
            let mut written = Vec::new();
            write_elem(&mut written, ElemType::F64, &out);
            let back: Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(back.as_f64().unwrap().to_le_bytes()[..], out[..], "{text}");
        }
    }

    #[test]
    fn halves() {
        for x in [0.0f32, 1.0, -2.5, 65504.0, 0.000061035156, 1e-7, 3.140625] {
            let h = f32_to_f16(x);
            let back = f16_to_f32(h);
            assert!((back - x).abs() <= x.abs() * 1e-3 + 1e-7, "{x} -> {h:#x} -> {back}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
    }
}
