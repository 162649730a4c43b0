//! Protocol-neutral sequence parsing: KServe v2 requests (gRPC and REST/JSON alike) and the OVMS
//! special-input checks shared with the TF-Serving front ends. No protobuf, no JSON: it sits below
//! every front end, so they share one set of checks and messages without importing each other.
//!
//! A KServe request can name its sequence in one of two ways:
//!
//! - **OVMS's special inputs**: input tensors `sequence_id` (UINT64, shape `[1]`) and
//!   `sequence_control_input` (UINT32, shape `[1]`, 0 none / 1 start / 2 end), with OVMS's checks
//!   in OVMS's order (spec §2.2 step 1). The answer carries an output tensor `sequence_id`.
//! - **Triton's sequence extension**: request parameters `sequence_id` (int64, uint64 or string),
//!   `sequence_start` (bool), `sequence_end` (bool). Start and end together is a one-step sequence
//!   (`Control::StartEnd`). The answer carries the parameter `sequence_id` (see [`Echo`]).
//!
//! # How a front end calls this
//!
//! ```ignore
//! use seqcore::sequence::{self, ParamValue, Special, Echo};
//! // 1. A lookup into the request's `parameters` (JSON: the "parameters" object). Map JSON
//! //    `true/false` to Bool, non-negative integers to UInt (negative to Int), strings to Str,
//! //    anything else to Other. Return None when the key is absent.
//! let get = |key: &str| -> Option<ParamValue<'_>> { /* ... */ };
//! // 2. The special input tensors, if present among the request's inputs (by name
//! //    sequence::SEQUENCE_ID / sequence::SEQUENCE_CONTROL_INPUT). `value` is Some only when the
//! //    tensor holds exactly one value (typed data or 8/4 raw bytes); `datatype` is the KServe
//! //    datatype string as sent ("UINT64"), or None if the protocol has none.
//! let id = Special { shape: Some(&[1]), datatype: Some("UINT64"), value: Some(10) };
//! // 3. One call. Ok(parsed.spec) is the job's `sequence` (None for stateless models).
//! let parsed = sequence::parse(meta.stateful, get, Some(id), None)?;
//! // 4. Validate the model inputs, excluding the special inputs (only when
//! //    `parsed.echo == Echo::Tensor`: for a stateless model or the Triton convention they are
//! //    ordinary, unexpected inputs), run the job, then answer:
//! match parsed.echo {
//!     Echo::None => {}
//!     Echo::Tensor => { /* add output "sequence_id", UINT64, shape [1], value from outcome */ }
//!     Echo::Param(ty) => { /* add response parameter "sequence_id": sequence::echo_param(ty, &id) */ }
//! }
//! ```
//!
//! Errors are `crate::error::Error`s with OVMS's messages and the usual gRPC/HTTP mapping.
//! Every function here is pure: nothing touches a sequence.

use crate::error::{Error, Kind, Result};
use crate::request::{Control, SequenceId, SequenceSpec};

/// Name of OVMS's id input (and of the Triton parameter).
pub const SEQUENCE_ID: &str = "sequence_id";
/// Name of OVMS's control input.
pub const SEQUENCE_CONTROL_INPUT: &str = "sequence_control_input";
/// Triton parameter names.
pub const SEQUENCE_START: &str = "sequence_start";
pub const SEQUENCE_END: &str = "sequence_end";

/// One request parameter's value, whatever the wire form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Str(&'a str),
    /// A double or anything else: never valid for the sequence parameters.
    Other,
}

/// How the client's sequence id was typed in the Triton parameter; the answer uses the same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdType {
    Int,
    UInt,
    Str,
}

/// What the answer must carry so the client learns the sequence id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Stateless model: nothing.
    None,
    /// OVMS convention: an output tensor `sequence_id`, UINT64, shape `[1]`.
    Tensor,
    /// Triton convention: a response parameter `sequence_id` of this type (a server-assigned id
    /// is always `UInt`).
    Param(IdType),
}

/// The result of [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The job's `sequence`: Some for stateful models, None for stateless ones.
    pub spec: Option<SequenceSpec>,
    pub echo: Echo,
}

/// One OVMS special input as a front end sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Special<'a> {
    /// The tensor's shape; None when the protocol's tensor carries no shape at all (TF-Serving's
    /// optional `tensor_shape`). An empty slice is a scalar.
    pub shape: Option<&'a [i64]>,
    /// The declared datatype (KServe names, e.g. "UINT64"); None when the protocol has no
    /// datatype to check (OVMS does not check TF-Serving's `dtype`).
    pub datatype: Option<&'a str>,
    /// The value, when the tensor holds exactly one value where the protocol expects it.
    pub value: Option<u64>,
}

/// Reads a request's sequence in either convention (see the module doc). Order of checks:
/// 1. both conventions present → INVALID_ARGUMENT;
/// 2. stateless model with Triton sequence parameters → INVALID_ARGUMENT (special inputs on a
///    stateless model are left to input validation: they are unexpected inputs, as in OVMS);
/// 3. the Triton parameters, or else OVMS's special inputs with OVMS's rules (so a stateful
///    request with neither gives SEQUENCE_ID_NOT_PROVIDED, as in OVMS).
pub fn parse<'a>(
    stateful: bool,
    get: impl Fn(&str) -> Option<ParamValue<'a>>,
    id: Option<Special<'_>>,
    control: Option<Special<'_>>,
) -> Result<Parsed> {
    let triton = [SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END].iter().any(|k| get(k).is_some());
    let special = id.is_some() || control.is_some();
    if triton && special {
        return Err(Error::with(
            Kind::InvalidSequenceParameters,
            "the request has both sequence parameters (sequence_id/sequence_start/sequence_end) \
             and the special inputs sequence_id/sequence_control_input; use one convention",
        ));
    }
    if !stateful {
        if triton {
            return Err(Error::with(
                Kind::InvalidSequenceParameters,
                "the model is stateless; sequence_id/sequence_start/sequence_end are not accepted",
            ));
        }
        return Ok(Parsed { spec: None, echo: Echo::None });
    }
    if triton {
        let (spec, ty) = from_triton_params(get)?;
        return Ok(Parsed { spec: Some(spec), echo: Echo::Param(ty) });
    }
    Ok(Parsed { spec: Some(from_special(id, control)?), echo: Echo::Tensor })
}

/// Triton's parameters alone (call [`parse`] unless you know the request uses them). The id
/// type is `UInt` when no id was given (server-assigned).
pub fn from_triton_params<'a>(get: impl Fn(&str) -> Option<ParamValue<'a>>) -> Result<(SequenceSpec, IdType)> {
    let (id, ty) = match get(SEQUENCE_ID) {
        None => (SequenceId::NONE, IdType::UInt),
        Some(ParamValue::UInt(n)) => (SequenceId::Num(n), IdType::UInt),
        Some(ParamValue::Int(n)) if n >= 0 => (SequenceId::Num(n as u64), IdType::Int),
        Some(ParamValue::Int(n)) => {
            return Err(Error::with(
                Kind::InvalidSequenceParameters,
                format!("sequence_id must not be negative; Actual: {n}"),
            ))
        }
        Some(ParamValue::Str("")) => (SequenceId::NONE, IdType::Str),
        Some(ParamValue::Str(s)) => (SequenceId::Str(s.into()), IdType::Str),
        Some(ParamValue::Bool(_) | ParamValue::Other) => {
            return Err(Error::with(
                Kind::InvalidSequenceParameters,
                "sequence_id must be an int64, uint64 or string parameter",
            ))
        }
    };
    let flag = |name: &str| match get(name) {
        None => Ok(false),
        Some(ParamValue::Bool(b)) => Ok(b),
        Some(_) => Err(Error::with(Kind::InvalidSequenceParameters, format!("{name} must be a bool parameter"))),
    };
    let start = flag(SEQUENCE_START)?;
    let end = flag(SEQUENCE_END)?;
    let control = match (start, end) {
        (true, true) => Control::StartEnd,
        (true, false) => Control::Start,
        (false, true) => Control::End,
        (false, false) => Control::None,
    };
    if !control.starts() && !id.is_given() {
        return Err(Kind::SequenceIdNotProvided.into());
    }
    // A server-assigned id is numeric whatever the (empty) given id's type was.
    let ty = if id.is_given() { ty } else { IdType::UInt };
    Ok((SequenceSpec { control, id }, ty))
}

/// OVMS's special inputs alone, with OVMS's checks in OVMS's order (spec §2.2 step 1): the id's
/// shape and type, the control's shape and type, the control's value, then the id's presence.
pub fn from_special(id: Option<Special<'_>>, control: Option<Special<'_>>) -> Result<SequenceSpec> {
    let id = match id {
        Some(s) => special_value(SEQUENCE_ID, s)?,
        None => 0,
    };
    let control = match control {
        Some(s) => special_value(SEQUENCE_CONTROL_INPUT, s)?,
        None => 0,
    };
    let control = u32::try_from(control).ok().and_then(Control::from_u32).ok_or(Kind::InvalidSequenceControlInput)?;
    if control != Control::Start && id == 0 {
        return Err(Kind::SequenceIdNotProvided.into());
    }
    Ok(SequenceSpec { control, id: SequenceId::Num(id) })
}

/// Checks one special input (`name` is [`SEQUENCE_ID`] or [`SEQUENCE_CONTROL_INPUT`]): shape
/// present, one dimension, of size 1 (a scalar holding one value is accepted beyond OVMS), then
/// the datatype if the protocol has one, then exactly one value.
pub fn special_value(name: &str, s: Special<'_>) -> Result<u64> {
    let (bad_type, datatype) = if name == SEQUENCE_ID {
        (Kind::SequenceIdBadType, "UINT64")
    } else {
        (Kind::SequenceControlInputBadType, "UINT32")
    };
    let shape = s.shape.ok_or(Kind::SpecialInputNoTensorShape)?;
    let required = || format!("Required shape for {name} is: (1)");
    match shape.len() {
        0 if s.value.is_none() => return Err(Kind::SpecialInputNoTensorShape.into()),
        0 => {}
        1 if shape[0] != 1 => return Err(Error::with(Kind::InvalidShape, required())),
        1 => {}
        _ => return Err(Error::with(Kind::InvalidNoOfShapeDimensions, required())),
    }
    if let Some(dt) = s.datatype {
        if dt != datatype {
            return Err(Error::with(
                bad_type,
                format!("Expected datatype: {datatype}; Actual: {dt}; input name: {name}"),
            ));
        }
    }
    s.value.ok_or_else(|| bad_type.into())
}

/// The value to put in the answer's `sequence_id` parameter for [`Echo::Param`].
pub fn echo_param(ty: IdType, id: &SequenceId) -> ParamValue<'_> {
    match (ty, id) {
        (_, SequenceId::Str(s)) => ParamValue::Str(s),
        (IdType::Int, SequenceId::Num(n)) if *n <= i64::MAX as u64 => ParamValue::Int(*n as i64),
        (_, SequenceId::Num(n)) => ParamValue::UInt(*n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(list: &'a [(&'a str, ParamValue<'a>)]) -> impl Fn(&str) -> Option<ParamValue<'a>> + 'a {
        move |k| list.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    fn sp(value: u64) -> Special<'static> {
        Special { shape: Some(&[1]), datatype: None, value: Some(value) }
    }

    fn spec(control: Control, id: SequenceId) -> Option<SequenceSpec> {
        Some(SequenceSpec { control, id })
    }

    #[test]
    fn triton_conventions() {
        use ParamValue::*;
        let p = parse(true, params(&[("sequence_id", UInt(5)), ("sequence_start", Bool(true))]), None, None).unwrap();
        assert_eq!(p, Parsed { spec: spec(Control::Start, SequenceId::Num(5)), echo: Echo::Param(IdType::UInt) });
        let p = parse(true, params(&[("sequence_id", Int(5)), ("sequence_end", Bool(true))]), None, None).unwrap();
        assert_eq!(p, Parsed { spec: spec(Control::End, SequenceId::Num(5)), echo: Echo::Param(IdType::Int) });
        let p = parse(
            true,
            params(&[("sequence_id", Str("abc")), ("sequence_start", Bool(true)), ("sequence_end", Bool(true))]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            p,
            Parsed { spec: spec(Control::StartEnd, SequenceId::Str("abc".into())), echo: Echo::Param(IdType::Str) }
        );
        let p = parse(
            true,
            params(&[("sequence_id", Str("abc")), ("sequence_start", Bool(false)), ("sequence_end", Bool(false))]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.spec, spec(Control::None, SequenceId::Str("abc".into())));
        // No id with start: server-assigned, numeric.
        let p = parse(true, params(&[("sequence_id", Str("")), ("sequence_start", Bool(true))]), None, None).unwrap();
        assert_eq!(p, Parsed { spec: spec(Control::Start, SequenceId::NONE), echo: Echo::Param(IdType::UInt) });
        let p = parse(true, params(&[("sequence_start", Bool(true))]), None, None).unwrap();
        assert_eq!(p.spec, spec(Control::Start, SequenceId::NONE));
    }

    #[test]
    fn triton_errors() {
        use ParamValue::*;
        let err = |list: &[(&str, ParamValue)]| parse(true, params(list), None, None).unwrap_err().to_string();
        assert_eq!(err(&[("sequence_end", Bool(true))]), "Sequence ID has not been provided in request inputs");
        assert_eq!(err(&[("sequence_id", UInt(0))]), "Sequence ID has not been provided in request inputs");
        assert_eq!(
            err(&[("sequence_id", Str("")), ("sequence_end", Bool(true))]),
            "Sequence ID has not been provided in request inputs"
        );
        assert!(err(&[("sequence_id", Int(-1))]).contains("must not be negative"));
        assert!(err(&[("sequence_id", Other)]).contains("int64, uint64 or string"));
        assert!(err(&[("sequence_id", UInt(1)), ("sequence_start", Int(1))]).contains("sequence_start must be a bool"));
        let e = parse(true, params(&[("sequence_id", UInt(1))]), Some(sp(1)), None).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidSequenceParameters);
        assert!(e.to_string().contains("use one convention"));
        let e = parse(false, params(&[("sequence_id", UInt(1))]), None, None).unwrap_err();
        assert!(e.to_string().contains("stateless"));
        assert_eq!(e.kind.grpc_code() as i32, 3);
    }

    #[test]
    fn unrelated_parameters_and_stateless() {
        let p = parse(false, params(&[("priority", ParamValue::Int(1))]), None, None).unwrap();
        assert_eq!(p, Parsed { spec: None, echo: Echo::None });
        // Special inputs on a stateless model are left to input validation.
        let p = parse(false, params(&[]), Some(sp(1)), None).unwrap();
        assert_eq!(p.echo, Echo::None);
        let e = parse(true, params(&[("priority", ParamValue::Int(1))]), None, None).unwrap_err();
        assert_eq!(e.kind, Kind::SequenceIdNotProvided);
    }

    #[test]
    fn ovms_special_inputs() {
        let p = parse(true, params(&[]), Some(sp(7)), Some(sp(1))).unwrap();
        assert_eq!(p, Parsed { spec: spec(Control::Start, SequenceId::Num(7)), echo: Echo::Tensor });
        assert_eq!(from_special(None, Some(sp(1))).unwrap().id, SequenceId::NONE);
        assert_eq!(from_special(Some(sp(7)), Some(sp(2))).unwrap().control, Control::End);
        assert_eq!(from_special(None, Some(sp(99))).unwrap_err().kind, Kind::InvalidSequenceControlInput);
        assert_eq!(from_special(None, Some(sp(1 << 33))).unwrap_err().kind, Kind::InvalidSequenceControlInput);
        assert_eq!(from_special(Some(sp(0)), None).unwrap_err().kind, Kind::SequenceIdNotProvided);
        let typed = |dt: &'static str| Special { shape: Some(&[1]), datatype: Some(dt), value: Some(1) };
        assert_eq!(
            from_special(Some(typed("UINT64")), Some(typed("UINT32"))).unwrap(),
            SequenceSpec { control: Control::Start, id: SequenceId::Num(1) }
        );
        let e = from_special(Some(typed("INT64")), None).unwrap_err();
        assert_eq!(e.to_string(), "Could not find sequence id in expected tensor proto field uint64_val - Expected datatype: UINT64; Actual: INT64; input name: sequence_id");
        let e = from_special(Some(typed("UINT64")), Some(typed("INT32"))).unwrap_err();
        assert_eq!(e.kind, Kind::SequenceControlInputBadType);
    }

    #[test]
    fn special_shapes_in_ovms_order() {
        let s = |shape: Option<&'static [i64]>, value| Special { shape, datatype: Some("INT8"), value };
        let msg = |r: Result<u64>| r.unwrap_err().to_string();
        assert_eq!(
            msg(special_value(SEQUENCE_ID, s(None, Some(1)))),
            "Special input proto does not contain tensor shape information"
        );
        assert_eq!(
            msg(special_value(SEQUENCE_ID, s(Some(&[]), None))),
            "Special input proto does not contain tensor shape information"
        );
        assert_eq!(
            msg(special_value(SEQUENCE_ID, s(Some(&[1, 1]), Some(1)))),
            "Invalid number of shape dimensions - Required shape for sequence_id is: (1)"
        );
        assert_eq!(
            msg(special_value(SEQUENCE_CONTROL_INPUT, s(Some(&[2]), Some(1)))),
            "Invalid input shape - Required shape for sequence_control_input is: (1)"
        );
        // Shape errors come before datatype errors.
        assert!(msg(special_value(SEQUENCE_ID, s(Some(&[1]), Some(1)))).starts_with("Could not find sequence id"));
        let no_dt = Special { shape: Some(&[]), datatype: None, value: Some(4) };
        assert_eq!(special_value(SEQUENCE_ID, no_dt).unwrap(), 4);
        let missing = Special { shape: Some(&[1]), datatype: None, value: None };
        assert_eq!(special_value(SEQUENCE_CONTROL_INPUT, missing).unwrap_err().kind, Kind::SequenceControlInputBadType);
    }

    #[test]
    fn echo_keeps_the_type() {
        assert_eq!(echo_param(IdType::Int, &SequenceId::Num(5)), ParamValue::Int(5));
        assert_eq!(echo_param(IdType::UInt, &SequenceId::Num(5)), ParamValue::UInt(5));
        assert_eq!(echo_param(IdType::Str, &SequenceId::Str("x".into())), ParamValue::Str("x"));
        assert_eq!(echo_param(IdType::Int, &SequenceId::Num(u64::MAX)), ParamValue::UInt(u64::MAX));
    }
}
