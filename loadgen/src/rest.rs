//! The REST protocols over [`crate::http1`]: TF-Serving's `:predict` (column format, OVMS's
//! special inputs as one-element arrays) and KServe v2's `/infer` (Triton sequence parameters,
//! JSON `data`). Both learn the model's inputs from KServe's `GET /v2/models/{name}` (served on
//! the same REST port). Input values are rendered to JSON once per data variant.

use crate::grpc::CallError;
use crate::http1::{Answer, Pool};
use crate::protocol::{Control, InputDesc, ModelInputs, Protocol, Reply, Step};
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

const SEQUENCE_ID: &str = "sequence_id";
const SEQUENCE_CONTROL: &str = "sequence_control_input";

fn model_path(prefix: &str, model: &str, version: i64) -> String {
    if version > 0 {
        format!("{prefix}/{model}/versions/{version}")
    } else {
        format!("{prefix}/{model}")
    }
}

fn http_error(a: &Answer) -> CallError {
    let message = serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).into_owned());
    CallError::Http { status: a.status, message }
}

fn json_body(a: &Answer) -> Result<Value, CallError> {
    if a.status != 200 {
        return Err(http_error(a));
    }
    serde_json::from_slice(&a.body).map_err(|e| CallError::Protocol(format!("answer is not JSON: {e}")))
}

/// The model's inputs from KServe REST metadata (`GET /v2/models/{name}`).
pub async fn fetch_inputs(pool: &Pool, model: &str, version: i64, timeout: Duration) -> Result<ModelInputs, String> {
    let path = model_path("/v2/models", model, version);
    let a = pool.request("GET", &path, b"", timeout).await.map_err(|e| format!("GET {path}: {e}"))?;
    let v = json_body(&a).map_err(|e| format!("GET {path}: {e}"))?;
    let mut inputs = Vec::new();
    for t in v["inputs"].as_array().ok_or_else(|| format!("GET {path}: no inputs in {v}"))? {
        let name = t["name"].as_str().unwrap_or_default().to_string();
        if name == SEQUENCE_ID || name == SEQUENCE_CONTROL {
            continue;
        }
        let datatype = t["datatype"].as_str().unwrap_or_default();
        let (elem, elem_bytes) = crate::kserve::elem_of(datatype)
            .ok_or_else(|| format!("input {name:?}: datatype {datatype} not supported by the loadgen"))?;
        let mut dims = Vec::new();
        for d in t["shape"].as_array().ok_or_else(|| format!("input {name:?} has no shape"))? {
            match d.as_i64() {
                Some(d) if d >= 0 => dims.push(d as usize),
                _ => return Err(format!("input {name:?} has a dynamic dimension; only static shapes are supported")),
            }
        }
        inputs.push(InputDesc { name, elem, elem_bytes, dims });
    }
    let outputs = v["outputs"]
        .as_array()
        .map(|o| o.iter().filter_map(|t| t["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Ok(ModelInputs { inputs, outputs })
}

/// JSON numbers of one data variant (little-endian bytes of `d`'s type), flat.
fn json_values(d: &InputDesc, bytes: &[u8]) -> Vec<String> {
    match d.elem {
        "f32" => bytes.chunks_exact(4).map(|c| format!("{}", f32::from_le_bytes(c.try_into().unwrap()))).collect(),
        "boolean" => bytes.iter().map(|&b| (b != 0).to_string()).collect(),
        _ => vec!["0".to_string(); d.elements()],
    }
}

/// Nests flat values into arrays of `dims` (row-major).
fn nested(values: &[String], dims: &[usize]) -> String {
    match dims.split_first() {
        None => values.first().cloned().unwrap_or_else(|| "0".into()),
        Some((&n, rest)) => {
            let inner: usize = rest.iter().product();
            let parts: Vec<String> = (0..n).map(|i| nested(&values[i * inner..(i + 1) * inner], rest)).collect();
            format!("[{}]", parts.join(","))
        }
    }
}

struct InputJson {
    desc: InputDesc,
    /// Rendered variants: nested arrays (TFS) or flat `[..]` (KServe).
    variants: Vec<String>,
    verified: bool,
}

fn plans(
    inputs: &ModelInputs,
    pool: Vec<Vec<bytes::Bytes>>,
    verify: Option<(&str, &str)>,
    flat: bool,
) -> Result<Vec<InputJson>, String> {
    if let Some((i, o)) = verify {
        match inputs.inputs.iter().find(|d| d.name == i) {
            Some(d) if d.elem == "f32" && d.elements() > 0 => {}
            Some(_) => return Err(format!("--verify: input {i:?} must be f32")),
            None => return Err(format!("--verify: model has no input {i:?}")),
        }
        if !inputs.outputs.iter().any(|n| n == o) {
            return Err(format!("--verify: model has no output {o:?} (outputs: {:?})", inputs.outputs));
        }
    }
    Ok(inputs
        .inputs
        .iter()
        .zip(pool)
        .map(|(d, pool)| InputJson {
            variants: pool
                .iter()
                .map(|b| {
                    let v = json_values(d, b);
                    if flat {
                        format!("[{}]", v.join(","))
                    } else {
                        nested(&v, &d.dims)
                    }
                })
                .collect(),
            verified: verify.is_some_and(|(i, _)| i == d.name),
            desc: d.clone(),
        })
        .collect())
}

impl InputJson {
    fn render(&self, step: &Step, flat: bool) -> String {
        match (self.verified, step.verify_value) {
            (true, Some(v)) => {
                let values = vec![format!("{v}"); self.desc.elements()];
                if flat {
                    format!("[{}]", values.join(","))
                } else {
                    nested(&values, &self.desc.dims)
                }
            }
            _ => self.variants[step.variant % self.variants.len()].clone(),
        }
    }
}

/// The first number inside a JSON value (a nested array or a number).
fn first_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Array(a) => a.first().and_then(first_number),
        _ => None,
    }
}

fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        Value::Array(a) => a.first().and_then(id_of),
        _ => None,
    }
}

/// TF-Serving REST `POST /v1/models/{name}:predict`, column format.
pub struct TfsRest {
    path: String,
    inputs: Vec<InputJson>,
    verify_output: Option<String>,
}

impl TfsRest {
    pub fn new(
        model: &str,
        version: i64,
        inputs: &ModelInputs,
        pool: Vec<Vec<bytes::Bytes>>,
        verify: Option<(&str, &str)>,
    ) -> Result<TfsRest, String> {
        Ok(TfsRest {
            path: format!("{}:predict", model_path("/v1/models", model, version)),
            inputs: plans(inputs, pool, verify, false)?,
            verify_output: verify.map(|(_, o)| o.to_string()),
        })
    }

    pub fn body(&self, step: &Step) -> String {
        let mut b = String::with_capacity(256);
        b.push_str("{\"inputs\":{");
        for p in &self.inputs {
            let _ = write!(b, "{}:{},", Value::from(p.desc.name.as_str()), p.render(step, false));
        }
        if step.seq_id != 0 {
            let _ = write!(b, "\"{SEQUENCE_ID}\":[{}],", step.seq_id);
        }
        let _ = write!(b, "\"{SEQUENCE_CONTROL}\":[{}]}}}}", step.control as u32);
        b
    }

    pub fn reply(&self, v: &Value, step: &Step) -> Reply {
        let outputs = &v["outputs"];
        let mut r = Reply::default();
        if step.want_id {
            r.seq_id = id_of(&outputs[SEQUENCE_ID]);
        }
        if let (Some(name), Some(_)) = (&self.verify_output, step.verify_value) {
            let o = if outputs.is_object() { &outputs[name.as_str()] } else { outputs };
            r.verify_value = first_number(o).map(|x| x as f32);
        }
        r
    }
}

/// KServe v2 REST `POST /v2/models/{name}/infer` with Triton sequence parameters.
pub struct KServeRest {
    path: String,
    inputs: Vec<InputJson>,
    verify_output: Option<String>,
}

impl KServeRest {
    pub fn new(
        model: &str,
        version: i64,
        inputs: &ModelInputs,
        pool: Vec<Vec<bytes::Bytes>>,
        verify: Option<(&str, &str)>,
    ) -> Result<KServeRest, String> {
        Ok(KServeRest {
            path: format!("{}/infer", model_path("/v2/models", model, version)),
            inputs: plans(inputs, pool, verify, true)?,
            verify_output: verify.map(|(_, o)| o.to_string()),
        })
    }

    pub fn body(&self, step: &Step) -> String {
        let mut params = Vec::new();
        if step.seq_id != 0 {
            params.push(format!("\"{SEQUENCE_ID}\":{}", step.seq_id));
        }
        match step.control {
            Control::Start => params.push("\"sequence_start\":true".into()),
            Control::End => params.push("\"sequence_end\":true".into()),
            Control::None => {}
        }
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|p| {
                format!(
                    "{{\"name\":{},\"shape\":{:?},\"datatype\":\"{}\",\"data\":{}}}",
                    Value::from(p.desc.name.as_str()),
                    p.desc.dims,
                    crate::kserve::datatype_of(p.desc.elem),
                    p.render(step, true)
                )
            })
            .collect();
        format!("{{\"parameters\":{{{}}},\"inputs\":[{}]}}", params.join(","), inputs.join(","))
    }

    pub fn reply(&self, v: &Value, step: &Step) -> Reply {
        let mut r = Reply::default();
        let output =
            |name: &str| v["outputs"].as_array().and_then(|o| o.iter().find(|t| t["name"] == name)).map(|t| &t["data"]);
        if step.want_id {
            r.seq_id = id_of(&v["parameters"][SEQUENCE_ID]).or_else(|| output(SEQUENCE_ID).and_then(id_of));
        }
        if let (Some(name), Some(_)) = (&self.verify_output, step.verify_value) {
            r.verify_value = output(name).and_then(first_number).map(|x| x as f32);
        }
        r
    }
}

/// The two JSON-over-HTTP/1.1 protocols differ only in path, body and answer; one `Protocol`
/// implementation serves both.
pub trait JsonRest: 'static {
    fn path(&self) -> &str;
    fn body(&self, step: &Step) -> String;
    fn reply(&self, v: &Value, step: &Step) -> Reply;
}

impl JsonRest for TfsRest {
    fn path(&self) -> &str {
        &self.path
    }
    fn body(&self, step: &Step) -> String {
        TfsRest::body(self, step)
    }
    fn reply(&self, v: &Value, step: &Step) -> Reply {
        TfsRest::reply(self, v, step)
    }
}

impl JsonRest for KServeRest {
    fn path(&self) -> &str {
        &self.path
    }
    fn body(&self, step: &Step) -> String {
        KServeRest::body(self, step)
    }
    fn reply(&self, v: &Value, step: &Step) -> Reply {
        KServeRest::reply(self, v, step)
    }
}

impl<P: JsonRest> Protocol for P {
    type Conn = Pool;
    type Session = ();

    fn new_conn(&self, addr: &str) -> Pool {
        Pool::new(addr)
    }

    async fn connect(&self, conn: &Pool) -> Result<(), CallError> {
        conn.connect().await
    }

    async fn call(&self, conn: &Pool, _session: &mut (), step: &Step, timeout: Duration) -> Result<Reply, CallError> {
        let a = conn.request("POST", self.path(), self.body(step).as_bytes(), timeout).await?;
        if a.status != 200 {
            return Err(http_error(&a));
        }
        if !step.want_id && step.verify_value.is_none() {
            return Ok(Reply::default());
        }
        Ok(self.reply(&json_body(&a)?, step))
    }

    fn disconnect(&self, conn: &Pool) {
        conn.close_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data_pool;
    use serde_json::json;

    fn summator() -> ModelInputs {
        ModelInputs {
            inputs: vec![InputDesc { name: "input".into(), elem: "f32", elem_bytes: 4, dims: vec![1, 1] }],
            outputs: vec!["add_sum".into()],
        }
    }

    #[test]
    fn nesting_follows_the_shape() {
        let v: Vec<String> = (0..6).map(|i| i.to_string()).collect();
        assert_eq!(nested(&v, &[2, 3]), "[[0,1,2],[3,4,5]]");
        assert_eq!(nested(&v[..1], &[1, 1]), "[[0]]");
    }

    #[test]
    fn tfs_body_and_reply() {
        let m = summator();
        let p = TfsRest::new("summator", 0, &m, data_pool(&m.inputs, 1), Some(("input", "add_sum"))).unwrap();
        assert_eq!(p.path, "/v1/models/summator:predict");
        let step = Step { seq_id: 42, control: Control::Start, variant: 0, verify_value: Some(-3.5), want_id: true };
        let body: Value = serde_json::from_str(&p.body(&step)).unwrap();
        assert_eq!(body, json!({"inputs": {"input": [[-3.5]], "sequence_id": [42], "sequence_control_input": [1]}}));
        let r = p.reply(&json!({"outputs": {"add_sum": [[6.5]], "sequence_id": [42]}}), &step);
        assert_eq!(r, Reply { seq_id: Some(42), verify_value: Some(6.5) });
    }

    #[test]
    fn kserve_body_and_reply() {
        let m = summator();
        let p = KServeRest::new("summator", 2, &m, data_pool(&m.inputs, 1), Some(("input", "add_sum"))).unwrap();
        assert_eq!(p.path, "/v2/models/summator/versions/2/infer");
        let step = Step { seq_id: 0, control: Control::Start, variant: 0, verify_value: Some(2.5), want_id: true };
        let body: Value = serde_json::from_str(&p.body(&step)).unwrap();
        assert_eq!(
            body,
            json!({"parameters": {"sequence_start": true},
            "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [2.5]}]})
        );
        let r =
            p.reply(&json!({"parameters": {"sequence_id": 7}, "outputs": [{"name": "add_sum", "data": [2.0]}]}), &step);
        assert_eq!(r, Reply { seq_id: Some(7), verify_value: Some(2.0) });
    }
}
