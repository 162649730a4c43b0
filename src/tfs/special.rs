//! OVMS's special inputs (`sequence_id`, `sequence_control_input`) read from TF-Serving
//! `TensorProto`s, with OVMS's checks in OVMS's order (spec §2.2 step 1).
//!
//! Beyond OVMS, a value may also come as `tensor_content` of exactly the right width (8 bytes for
//! the id, 4 for the control), or as a scalar (a shape with no dimensions) holding one value:
//! common TF-Serving client libraries encode numpy arrays and scalars that way.

use crate::error::Result;
use crate::proto::tensorflow::TensorProto;
use crate::request::SequenceSpec;
use crate::sequence::{self, Special};
use crate::signature::le_array;
use std::collections::HashMap;

pub use sequence::{SEQUENCE_CONTROL_INPUT, SEQUENCE_ID};

/// Reads both special inputs; the result has been checked for a valid control and a non-zero id
/// where the control needs one. The checks themselves are `crate::sequence`'s, shared by every
/// front end; this only says where a `TensorProto` keeps the value (OVMS reads only
/// `uint64_val`/`uint32_val`; we also take `tensor_content` of exactly the value's width). The
/// `dtype` is not checked, as in OVMS.
pub fn extract(inputs: &HashMap<String, TensorProto>) -> Result<SequenceSpec> {
    let id = inputs.get(SEQUENCE_ID).map(|t| {
        let v = read_value(
            t,
            8,
            |t| (t.uint64_val.len() == 1).then(|| t.uint64_val[0]),
            |b| u64::from_le_bytes(le_array(b)),
        );
        (shape_of(t), v)
    });
    let control = inputs.get(SEQUENCE_CONTROL_INPUT).map(|t| {
        let v = read_value(
            t,
            4,
            |t| (t.uint32_val.len() == 1).then(|| t.uint32_val[0] as u64),
            |b| u32::from_le_bytes(le_array(b)) as u64,
        );
        (shape_of(t), v)
    });
    sequence::from_special(special(&id), special(&control))
}

type Read = Option<(Option<Vec<i64>>, Option<u64>)>;

fn special(x: &Read) -> Option<Special<'_>> {
    x.as_ref().map(|(shape, value)| Special { shape: shape.as_deref(), datatype: None, value: *value })
}

fn shape_of(t: &TensorProto) -> Option<Vec<i64>> {
    t.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect())
}

fn read_value(
    t: &TensorProto,
    width: usize,
    typed: impl Fn(&TensorProto) -> Option<u64>,
    from_le: impl Fn(&[u8]) -> u64,
) -> Option<u64> {
    let content = &t.tensor_content;
    match typed(t) {
        Some(v) if content.is_empty() => Some(v),
        None if content.len() == width && no_typed_values(t) => Some(from_le(content)),
        _ => None,
    }
}

fn no_typed_values(t: &TensorProto) -> bool {
    t.uint64_val.is_empty()
        && t.uint32_val.is_empty()
        && t.int64_val.is_empty()
        && t.int_val.is_empty()
        && t.float_val.is_empty()
        && t.double_val.is_empty()
        && t.half_val.is_empty()
        && t.bool_val.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::proto::tensorflow::{tensor_shape_proto::Dim, TensorShapeProto};
    use crate::request::{Control, SequenceId};

    fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
        Some(TensorShapeProto {
            dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        })
    }

    fn id(vals: &[u64], dims: &[i64]) -> TensorProto {
        TensorProto { dtype: 23, tensor_shape: shape(dims), uint64_val: vals.to_vec(), ..Default::default() }
    }

    fn ctl(vals: &[u32], dims: &[i64]) -> TensorProto {
        TensorProto { dtype: 22, tensor_shape: shape(dims), uint32_val: vals.to_vec(), ..Default::default() }
    }

    fn check(inputs: Vec<(&str, TensorProto)>) -> std::result::Result<(Control, u64), String> {
        let map: HashMap<String, TensorProto> = inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        extract(&map)
            .map(|s| match s.id {
                SequenceId::Num(n) => (s.control, n),
                SequenceId::Str(_) => panic!("TF-Serving ids are numbers"),
            })
            .map_err(|e| e.to_string())
    }

    const NOT_PROVIDED: &str = "Sequence ID has not been provided in request inputs";

    #[test]
    fn valid_combinations() {
        assert_eq!(
            check(vec![("sequence_id", id(&[7], &[1])), ("sequence_control_input", ctl(&[1], &[1]))]),
            Ok((Control::Start, 7))
        );
        assert_eq!(
            check(vec![("sequence_id", id(&[7], &[1])), ("sequence_control_input", ctl(&[2], &[1]))]),
            Ok((Control::End, 7))
        );
        assert_eq!(
            check(vec![("sequence_id", id(&[7], &[1])), ("sequence_control_input", ctl(&[0], &[1]))]),
            Ok((Control::None, 7))
        );
        assert_eq!(check(vec![("sequence_id", id(&[7], &[1]))]), Ok((Control::None, 7)));
        assert_eq!(check(vec![("sequence_control_input", ctl(&[1], &[1]))]), Ok((Control::Start, 0)));
        assert_eq!(check(vec![("sequence_id", id(&[5_000_000_000], &[1]))]), Ok((Control::None, 5_000_000_000)));
    }

    #[test]
    fn missing_id() {
        assert_eq!(check(vec![("sequence_control_input", ctl(&[2], &[1]))]).unwrap_err(), NOT_PROVIDED);
        assert_eq!(
            check(vec![("sequence_id", id(&[0], &[1])), ("sequence_control_input", ctl(&[2], &[1]))]).unwrap_err(),
            NOT_PROVIDED
        );
        assert_eq!(check(vec![("sequence_id", id(&[0], &[1]))]).unwrap_err(), NOT_PROVIDED);
        assert_eq!(check(vec![]).unwrap_err(), NOT_PROVIDED);
        assert_eq!(check(vec![("sequenceid", id(&[3], &[1]))]).unwrap_err(), NOT_PROVIDED);
    }

    #[test]
    fn bad_control_wins_over_missing_id() {
        for v in [99, 999, 3] {
            assert_eq!(
                check(vec![("sequence_control_input", ctl(&[v], &[1]))]).unwrap_err(),
                "Unexpected value of sequence control input"
            );
        }
    }

    #[test]
    fn bad_types() {
        let in_u32 = TensorProto { tensor_shape: shape(&[1]), uint32_val: vec![1], ..Default::default() };
        assert_eq!(check(vec![("sequence_id", in_u32)]).unwrap_err(), Kind::SequenceIdBadType.message());
        assert_eq!(check(vec![("sequence_id", id(&[1, 2], &[1]))]).unwrap_err(), Kind::SequenceIdBadType.message());
        let in_u64 = TensorProto { tensor_shape: shape(&[1]), uint64_val: vec![1], ..Default::default() };
        assert_eq!(
            check(vec![("sequence_id", id(&[1], &[1])), ("sequence_control_input", in_u64)]).unwrap_err(),
            Kind::SequenceControlInputBadType.message()
        );
        assert_eq!(
            check(vec![("sequence_id", id(&[1], &[1])), ("sequence_control_input", ctl(&[1, 1], &[1]))]).unwrap_err(),
            Kind::SequenceControlInputBadType.message()
        );
        // Content of the wrong width is still a bad type.
        let short =
            TensorProto { tensor_shape: shape(&[1]), tensor_content: vec![1u8, 0, 0, 0].into(), ..Default::default() };
        assert_eq!(check(vec![("sequence_id", short)]).unwrap_err(), Kind::SequenceIdBadType.message());
    }

    #[test]
    fn shapes() {
        for name in ["sequence_id", "sequence_control_input"] {
            let make = |dims: &[i64]| if name == "sequence_id" { id(&[1], dims) } else { ctl(&[1], dims) };
            let mut no_shape = make(&[1]);
            no_shape.tensor_shape = None;
            assert_eq!(
                check(vec![(name, no_shape)]).unwrap_err(),
                "Special input proto does not contain tensor shape information"
            );
            assert_eq!(
                check(vec![(name, make(&[1, 1]))]).unwrap_err(),
                format!("Invalid number of shape dimensions - Required shape for {name} is: (1)")
            );
            assert_eq!(
                check(vec![(name, make(&[2]))]).unwrap_err(),
                format!("Invalid input shape - Required shape for {name} is: (1)")
            );
        }
    }

    #[test]
    fn tensor_content_and_scalars_beyond_ovms() {
        let content_id = TensorProto {
            dtype: 23,
            tensor_shape: shape(&[1]),
            tensor_content: 42u64.to_le_bytes().to_vec().into(),
            ..Default::default()
        };
        let content_ctl = TensorProto {
            dtype: 22,
            tensor_shape: shape(&[1]),
            tensor_content: 1u32.to_le_bytes().to_vec().into(),
            ..Default::default()
        };
        assert_eq!(
            check(vec![("sequence_id", content_id), ("sequence_control_input", content_ctl)]),
            Ok((Control::Start, 42))
        );
        assert_eq!(check(vec![("sequence_id", id(&[9], &[]))]), Ok((Control::None, 9)));
        // A scalar without a value keeps OVMS's error.
        assert_eq!(check(vec![("sequence_id", id(&[], &[]))]).unwrap_err(), Kind::SpecialInputNoTensorShape.message());
    }
}
