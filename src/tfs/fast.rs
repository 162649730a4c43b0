//! The fast path of `Predict`: reads a `PredictRequest` straight from its wire bytes, borrowing
//! names and tensor contents, for the request every client sends step after step: a model spec,
//! a handful of inputs whose values come as `tensor_content`, and the special inputs as
//! `uint64_val`/`uint32_val` (or content of their exact width).
//!
//! It decides nothing on its own. It returns a job only for a request that the full path
//! (`decode_predict` + `resolve` + `predict_job`, over prost's types) accepts and turns into the
//! same job; for anything else — an error of any kind, typed value lists, a field given twice, more
//! than `INPUTS_MAX` inputs or `DIMS_MAX` dimensions — it returns `None` and the caller takes the
//! full path, which also writes every error message. So the two paths cannot disagree on a
//! status, and the unit tests check that they agree on the job.
//!
//! Why: prost's `map<string, TensorProto>` costs a `HashMap`, a `String` per key and a `Vec` per
//! shape and per value list, about a dozen allocations per step (see docs/profile.md); here a
//! step makes one (the job's input list).

use super::{dtype_of, special};
use crate::catalog::{Catalog, ModelMeta};
use crate::request::{InferJob, ModelIdx};
use crate::sequence::{self, Special};
use bytes::Bytes;
use std::ops::Range;
use std::rc::Rc;

/// Most inputs (model inputs and special inputs together) the fast path reads.
pub const INPUTS_MAX: usize = 8;
/// Most dimensions per tensor the fast path reads.
pub const DIMS_MAX: usize = 8;

/// Builds the job for `message` if it is a plain request that the full path accepts.
pub fn predict_job(message: &Bytes, catalog: &Catalog) -> Option<(ModelIdx, Rc<ModelMeta>, InferJob)> {
    let req = read_request(message)?;
    let (idx, meta) = catalog.resolve(req.model_name?, req.version).ok()?;
    let inputs = &req.inputs[..req.n_inputs];
    let find = |name: &str| inputs.iter().find(|t| t.name == name);
    let (sequence, specials) = if meta.stateful {
        let id = find(special::SEQUENCE_ID);
        let control = find(special::SEQUENCE_CONTROL_INPUT);
        let spec = sequence::from_special(id.map(|t| t.special(8)), control.map(|t| t.special(4))).ok()?;
        (Some(spec), id.is_some() as usize + control.is_some() as usize)
    } else {
        (None, 0)
    };
    if inputs.len() != meta.inputs.len() + specials {
        return None;
    }
    let mut out = Vec::with_capacity(meta.inputs.len());
    for port in &meta.inputs {
        let t = find(&port.name)?;
        let dims = t.dims();
        let content = t.content.clone()?;
        let fits = t.dtype == dtype_of(port.elem) as i32
            && dims.len() == port.dims.len()
            && dims.iter().zip(&port.dims).all(|(&a, &b)| a == b as i64)
            && content.len() == port.byte_size
            && !content.is_empty();
        if !fits {
            return None;
        }
        out.push(message.slice(content));
    }
    let any_version = req.version.is_none_or(|v| v == 0);
    Some((idx, meta, InferJob { model: idx, any_version, sequence, inputs: out }))
}

#[derive(Default)]
struct Request<'a> {
    model_name: Option<&'a str>,
    version: Option<i64>,
    inputs: [Tensor<'a>; INPUTS_MAX],
    n_inputs: usize,
}

#[derive(Default, Clone)]
struct Tensor<'a> {
    name: &'a str,
    dtype: i32,
    has_shape: bool,
    dims: [i64; DIMS_MAX],
    n_dims: usize,
    /// Byte range of a non-empty `tensor_content` in the message.
    content: Option<Range<usize>>,
    content_bytes: &'a [u8],
    u64_vals: Values,
    u32_vals: Values,
}

/// A repeated scalar field as the special inputs need it: how many values, and the first.
#[derive(Default, Clone, Copy)]
struct Values {
    count: usize,
    first: u64,
}

impl Values {
    fn push(&mut self, v: u64) {
        if self.count == 0 {
            self.first = v;
        }
        self.count += 1;
    }
}

impl<'a> Tensor<'a> {
    fn dims(&self) -> &[i64] {
        &self.dims[..self.n_dims]
    }

    /// The special input as `crate::sequence` checks it, read as `tfs::special::extract` reads
    /// it from a `TensorProto` (typed value, or content of exactly `width` bytes with no typed
    /// values).
    fn special(&self, width: usize) -> Special<'_> {
        let values = if width == 8 { self.u64_vals } else { self.u32_vals };
        let typed = (values.count == 1).then_some(values.first);
        let content = self.content_bytes;
        let value = match typed {
            Some(v) if content.is_empty() => Some(v),
            None if content.len() == width && self.u64_vals.count == 0 && self.u32_vals.count == 0 => {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(content);
                Some(u64::from_le_bytes(le))
            }
            _ => None,
        };
        Special { shape: self.has_shape.then(|| self.dims()), datatype: None, value }
    }
}

// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A cursor over protobuf wire bytes; `base` is the offset of `buf` in the whole message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Option<(u32, u8)> {
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).ok().filter(|&f| f != 0)?;
        Some((field, (k & 7) as u8))
    }

    /// A length-delimited payload: its bytes and their offset in the whole message.
    fn bytes(&mut self) -> Option<(&'a [u8], usize)> {
        let len = usize::try_from(self.varint()?).ok()?;
        let start = self.pos;
        let end = start.checked_add(len).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some((&self.buf[start..end], self.base + start))
    }

    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?.0).ok()
    }

    /// Skips a field of an unknown number (prost ignores those too); groups are not read here.
    fn skip(&mut self, wire: u8) -> Option<()> {
        let n = match wire {
            VARINT => return self.varint().map(drop),
            LEN => return self.bytes().map(drop),
            I64 => 8,
            I32 => 4,
            _ => return None,
        };
        self.pos = self.pos.checked_add(n).filter(|&p| p <= self.buf.len())?;
        Some(())
    }
}

fn read_request(message: &[u8]) -> Option<Request<'_>> {
    let mut req = Request::default();
    let mut r = Reader::new(message, 0);
    let mut seen_spec = false;
    while !r.done() {
        match r.key()? {
            (1, LEN) if !seen_spec => {
                seen_spec = true;
                let (spec, at) = r.bytes()?;
                read_model_spec(spec, at, &mut req)?;
            }
            (2, LEN) => {
                let (entry, at) = r.bytes()?;
                if req.n_inputs == INPUTS_MAX {
                    return None;
                }
                let t = read_entry(entry, at)?;
                if req.inputs[..req.n_inputs].iter().any(|u| u.name == t.name) {
                    return None;
                }
                req.inputs[req.n_inputs] = t;
                req.n_inputs += 1;
            }
            (3, LEN) => {
                r.string()?;
            }
            (1..=3, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(req)
}

fn read_model_spec<'a>(buf: &'a [u8], base: usize, req: &mut Request<'a>) -> Option<()> {
    let mut r = Reader::new(buf, base);
    while !r.done() {
        match r.key()? {
            (1, LEN) if req.model_name.is_none() => req.model_name = Some(r.string()?),
            (2, LEN) if req.version.is_none() => {
                let (wrapper, at) = r.bytes()?;
                let mut w = Reader::new(wrapper, at);
                let mut value = 0i64;
                while !w.done() {
                    match w.key()? {
                        (1, VARINT) => value = w.varint()? as i64,
                        (1, _) => return None,
                        (_, wire) => w.skip(wire)?,
                    }
                }
                req.version = Some(value);
            }
            (3, LEN) => {
                r.string()?;
            }
            // A version label (not served) or anything given twice: the full path decides.
            (1..=4, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(())
}

/// One `inputs` map entry: key 1 (the name), value 2 (the tensor).
fn read_entry(buf: &[u8], base: usize) -> Option<Tensor<'_>> {
    let mut r = Reader::new(buf, base);
    let mut name = None;
    let mut tensor = None;
    while !r.done() {
        match r.key()? {
            (1, LEN) if name.is_none() => name = Some(r.string()?),
            (2, LEN) if tensor.is_none() => {
                let (t, at) = r.bytes()?;
                tensor = Some(read_tensor(t, at)?);
            }
            (1 | 2, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    let mut t: Tensor = tensor?;
    t.name = name?;
    Some(t)
}

fn read_tensor(buf: &[u8], base: usize) -> Option<Tensor<'_>> {
    let mut t = Tensor::default();
    let (mut seen_dtype, mut seen_content) = (false, false);
    let mut r = Reader::new(buf, base);
    while !r.done() {
        match r.key()? {
            (1, VARINT) if !seen_dtype => {
                seen_dtype = true;
                t.dtype = r.varint()? as i32;
            }
            (2, LEN) if !t.has_shape => {
                t.has_shape = true;
                let (shape, at) = r.bytes()?;
                read_shape(shape, at, &mut t)?;
            }
            (3, VARINT) => {
                r.varint()?;
            }
            (4, LEN) if !seen_content => {
                seen_content = true;
                let (content, at) = r.bytes()?;
                t.content_bytes = content;
                t.content = (!content.is_empty()).then(|| at..at + content.len());
            }
            // uint32_val (prost truncates each varint to 32 bits) and uint64_val, packed or not.
            (field @ (16 | 17), wire @ (VARINT | LEN)) => {
                let values = if field == 16 { &mut t.u32_vals } else { &mut t.u64_vals };
                let width_mask = if field == 16 { u32::MAX as u64 } else { u64::MAX };
                if wire == VARINT {
                    values.push(r.varint()? & width_mask);
                } else {
                    let (packed, at) = r.bytes()?;
                    let mut p = Reader::new(packed, at);
                    while !p.done() {
                        values.push(p.varint()? & width_mask);
                    }
                }
            }
            // Typed value lists of other kinds, repeated fields, wrong wire types: full path.
            (1..=17, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(t)
}

fn read_shape<'a>(buf: &'a [u8], base: usize, t: &mut Tensor<'a>) -> Option<()> {
    let mut r = Reader::new(buf, base);
    while !r.done() {
        match r.key()? {
            (2, LEN) => {
                if t.n_dims == DIMS_MAX {
                    return None;
                }
                let (dim, at) = r.bytes()?;
                let mut d = Reader::new(dim, at);
                let mut size = 0i64;
                let mut seen_size = false;
                while !d.done() {
                    match d.key()? {
                        (1, VARINT) if !seen_size => {
                            seen_size = true;
                            size = d.varint()? as i64;
                        }
                        (2, LEN) => {
                            d.string()?;
                        }
                        (1 | 2, _) => return None,
                        (_, wire) => d.skip(wire)?,
                    }
                }
                t.dims[t.n_dims] = size;
                t.n_dims += 1;
            }
            (3, VARINT) => {
                r.varint()?;
            }
            (2 | 3, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use crate::proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest};
    use crate::proto::tensorflow::{tensor_shape_proto::Dim, TensorProto, TensorShapeProto};
    use crate::signature::PortInfo;
    use prost::Message;

    use crate::signature::test_port_f32 as port;

    fn catalog() -> Catalog {
        let model = |name: &str, stateful: bool, inputs: Vec<PortInfo>| ModelMeta {
            name: name.into(),
            version: 1,
            stateful,
            inputs,
            outputs: vec![port("out", &[1, 1])],
            precision: "f32".into(),
            execution_mode: "PERFORMANCE".into(),
        };
        Catalog::of([
            model("summator", true, vec![port("input", &[1, 1])]),
            model("two", true, vec![port("a", &[1, 3]), port("b", &[2])]),
            model("plain", false, vec![port("x", &[1, 2])]),
        ])
    }

    fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
        Some(TensorShapeProto {
            dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
            ..Default::default()
        })
    }

    fn f32s(dims: &[i64], n: usize) -> TensorProto {
        let content: Vec<u8> = (0..n).flat_map(|i| (i as f32 + 0.5).to_le_bytes()).collect();
        TensorProto { dtype: 1, tensor_shape: shape(dims), tensor_content: content.into(), ..Default::default() }
    }

    fn id(v: u64) -> TensorProto {
        TensorProto { dtype: 23, tensor_shape: shape(&[1]), uint64_val: vec![v], ..Default::default() }
    }

    fn ctl(v: u32) -> TensorProto {
        TensorProto { dtype: 22, tensor_shape: shape(&[1]), uint32_val: vec![v], ..Default::default() }
    }

    fn request(model: &str, version: Option<i64>, inputs: Vec<(&str, TensorProto)>) -> PredictRequest {
        PredictRequest {
            model_spec: Some(ModelSpec {
                name: model.into(),
                version_choice: version.map(VersionChoice::Version),
                ..Default::default()
            }),
            inputs: inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        }
    }

    /// The full path: prost decode, resolve, validate.
    fn slow(catalog: &Catalog, bytes: &Bytes) -> Result<(ModelIdx, InferJob)> {
        let req = super::super::decode_predict(bytes.clone())?;
        let (idx, meta) = super::super::resolve(catalog, req.model_spec.as_ref())?;
        Ok((idx, super::super::predict_job(idx, &meta, &req)?))
    }

    /// Runs both paths; the fast one must either step aside or agree exactly with the full one.
    fn both(bytes: Bytes) -> Option<InferJob> {
        let catalog = catalog();
        let fast = predict_job(&bytes, &catalog);
        let full = slow(&catalog, &bytes);
        match (fast, full) {
            (None, _) => None,
            (Some((idx, _, job)), Ok((sidx, sjob))) => {
                assert_eq!(idx, sidx);
                assert_eq!(job.model, sjob.model);
                assert_eq!(job.sequence, sjob.sequence);
                assert_eq!(job.inputs, sjob.inputs);
                Some(job)
            }
            (Some(_), Err(e)) => panic!("fast path accepted what the full path refuses: {e}"),
        }
    }

    fn encode(req: &PredictRequest) -> Bytes {
        Bytes::from(req.encode_to_vec())
    }

    #[test]
    fn takes_the_plain_requests() {
        for inputs in [
            vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7)), ("sequence_control_input", ctl(1))],
            vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7))],
            vec![("input", f32s(&[1, 1], 1)), ("sequence_control_input", ctl(1))],
            vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(u64::MAX)), ("sequence_control_input", ctl(2))],
        ] {
            for version in [None, Some(0), Some(1)] {
                let job = both(encode(&request("summator", version, inputs.clone()))).expect("fast path");
                assert_eq!(job.inputs.len(), 1);
            }
        }
        let two = request(
            "two",
            None,
            vec![
                ("b", f32s(&[2], 2)),
                ("sequence_id", id(3)),
                ("a", f32s(&[1, 3], 3)),
                ("sequence_control_input", ctl(0)),
            ],
        );
        let job = both(encode(&two)).expect("fast path");
        assert_eq!(job.inputs[0].len(), 12);
        assert_eq!(job.inputs[1].len(), 8);
        assert!(both(encode(&request("plain", None, vec![("x", f32s(&[1, 2], 2))]))).is_some());
        // Content of the exact width for the special inputs (beyond OVMS, as in the full path).
        let content_id = TensorProto {
            dtype: 23,
            tensor_shape: shape(&[1]),
            tensor_content: 9u64.to_le_bytes().to_vec().into(),
            ..Default::default()
        };
        assert!(both(encode(&request(
            "summator",
            None,
            vec![("input", f32s(&[1, 1], 1)), ("sequence_id", content_id)]
        )))
        .is_some());
    }

    #[test]
    fn steps_aside_for_errors_and_unusual_encodings() {
        let good = || vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7))];
        let mut cases = vec![
            request("nope", None, good()),
            request("summator", Some(5), good()),
            request("summator", None, vec![("input", f32s(&[1, 1], 1))]),
            request("summator", None, vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(0))]),
            request(
                "summator",
                None,
                vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(1)), ("sequence_control_input", ctl(9))],
            ),
            request("summator", None, vec![("input", f32s(&[1, 2], 2)), ("sequence_id", id(7))]),
            request("summator", None, vec![("input", f32s(&[1], 1)), ("sequence_id", id(7))]),
            request("summator", None, vec![("input", f32s(&[1, 1], 2)), ("sequence_id", id(7))]),
            request("summator", None, vec![("inputx", f32s(&[1, 1], 1)), ("sequence_id", id(7))]),
            request(
                "summator",
                None,
                vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7)), ("extra", f32s(&[1], 1))],
            ),
            request("plain", None, vec![("x", f32s(&[1, 2], 2)), ("sequence_id", id(7))]),
        ];
        let mut typed = request("summator", None, good());
        typed.inputs.insert(
            "input".into(),
            TensorProto { dtype: 1, tensor_shape: shape(&[1, 1]), float_val: vec![1.0], ..Default::default() },
        );
        cases.push(typed);
        let mut wrong_dtype = request("summator", None, good());
        wrong_dtype.inputs.get_mut("input").unwrap().dtype = 2;
        cases.push(wrong_dtype);
        let mut no_shape = request("summator", None, good());
        no_shape.inputs.get_mut("sequence_id").unwrap().tensor_shape = None;
        cases.push(no_shape);
        let mut two_ids = request("summator", None, good());
        two_ids.inputs.get_mut("sequence_id").unwrap().uint64_val.push(8);
        cases.push(two_ids);
        let mut label = request("summator", None, good());
        label.model_spec.as_mut().unwrap().version_choice = Some(VersionChoice::VersionLabel("stable".into()));
        cases.push(label);
        let mut no_spec = request("summator", None, good());
        no_spec.model_spec = None;
        cases.push(no_spec);
        for (i, req) in cases.iter().enumerate() {
            assert!(both(encode(req)).is_none(), "case {i} should take the full path");
        }
    }

    #[test]
    fn wire_level_oddities() {
        let req = request("summator", None, vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7))]);
        let bytes = req.encode_to_vec();
        // Truncations at every length: never a panic, never an acceptance the full path refuses.
        for n in 0..bytes.len() {
            both(Bytes::copy_from_slice(&bytes[..n]));
        }
        // An unknown field (number 9, varint) is skipped, as prost does.
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[9 << 3, 1]);
        assert!(both(Bytes::from(extra)).is_some());
        // The same input given twice: the full path decides (prost keeps the last).
        let mut dup = bytes.clone();
        let entry = request("x", None, vec![("input", f32s(&[1, 1], 1))]).encode_to_vec();
        let start = entry.iter().position(|&b| b == (2 << 3 | 2)).unwrap();
        dup.extend_from_slice(&entry[start..]);
        assert!(both(Bytes::from(dup)).is_none());
        // Unpacked uint64_val (wire type 0) is read too.
        let unpacked = {
            let mut t = Vec::new();
            t.extend_from_slice(&[1 << 3, 23]); // dtype
            t.extend_from_slice(&[2 << 3 | 2, 4, 2 << 3 | 2, 2, 1 << 3, 1]); // shape [1]
            t.extend_from_slice(&[0x88, 0x01, 11]); // field 17, varint 11
            let mut e = vec![1 << 3 | 2, 11];
            e.extend_from_slice(b"sequence_id");
            e.push(2 << 3 | 2);
            e.push(t.len() as u8);
            e.extend_from_slice(&t);
            let mut m = request("summator", None, vec![("input", f32s(&[1, 1], 1))]).encode_to_vec();
            m.push(2 << 3 | 2);
            m.push(e.len() as u8);
            m.extend_from_slice(&e);
            m
        };
        let job = both(Bytes::from(unpacked)).expect("fast path");
        assert_eq!(job.sequence.unwrap().id, crate::request::SequenceId::Num(11));
    }

    #[test]
    fn borrows_the_content() {
        let bytes = encode(&request("summator", None, vec![("input", f32s(&[1, 1], 1)), ("sequence_id", id(7))]));
        let (_, _, job) = predict_job(&bytes, &catalog()).unwrap();
        let within = bytes.as_ptr_range();
        assert!(within.contains(&job.inputs[0].as_ptr()));
    }
}
