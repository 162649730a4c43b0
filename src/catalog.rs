//! What the front ends know about the served models: names, versions, and input/output
//! signatures. Each shard builds its own copy from its own compiled models (no sharing across
//! cores); the lists are identical on every shard and in config order, so a `ModelIdx` means the
//! same model everywhere.

use crate::error::{Error, Kind, Result};
use crate::request::ModelIdx;
use crate::signature::PortInfo;

#[derive(Clone, Debug)]
pub struct ModelMeta {
    pub name: String,
    pub version: i64,
    pub stateful: bool,
    pub inputs: Vec<PortInfo>,
    pub outputs: Vec<PortInfo>,
    /// The compiled model's effective inference precision as OpenVINO reports it ("f32",
    /// "bf16", ...; see `ov::CompiledModel::inference_precision`).
    pub precision: String,
    /// The compiled model's effective execution mode ("PERFORMANCE" or "ACCURACY").
    pub execution_mode: String,
}

impl ModelMeta {
    pub fn outputs_bytes(&self) -> usize {
        self.outputs.iter().map(|p| p.byte_size).sum()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub models: Vec<ModelMeta>,
}

impl Catalog {
    /// Finds a model by name and optional version (None: the served, latest version).
    pub fn resolve(&self, name: &str, version: Option<i64>) -> Result<(ModelIdx, &ModelMeta)> {
        let (i, m) = self
            .models
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == name)
            .ok_or_else(|| Error::new(Kind::ModelNameMissing))?;
        match version {
            Some(v) if v != 0 && v != m.version => Err(Kind::ModelVersionMissing.into()),
            _ => Ok((ModelIdx(i as u16), m)),
        }
    }

    pub fn get(&self, idx: ModelIdx) -> &ModelMeta {
        &self.models[idx.0 as usize]
    }
}

/// The `summator` model as the front ends' unit tests see it (f32[1,1] `input` → `add_sum`).
#[cfg(test)]
pub fn test_summator() -> ModelMeta {
    use crate::signature::test_port_f32 as port;
    ModelMeta {
        name: "summator".into(),
        version: 1,
        stateful: true,
        inputs: vec![port("input", &[1, 1])],
        outputs: vec![port("add_sum", &[1, 1])],
        precision: "f32".into(),
        execution_mode: "PERFORMANCE".into(),
    }
}
