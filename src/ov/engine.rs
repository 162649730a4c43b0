//! OpenVINO as the shards' `Engine`: a compiled model and its infer requests.

use super::{CompiledModel, InferRequest, OvError, PortInfo, StateInfo};
use crate::shard::engine::{Engine, EngineError, EngineRequest};

impl From<OvError> for EngineError {
    fn from(e: OvError) -> EngineError {
        EngineError(e.message().to_string())
    }
}

impl Engine for CompiledModel {
    type Request = InferRequest;

    fn inputs(&self) -> &[PortInfo] {
        CompiledModel::inputs(self)
    }
    fn outputs(&self) -> &[PortInfo] {
        CompiledModel::outputs(self)
    }
    fn states(&self) -> &[StateInfo] {
        CompiledModel::states(self)
    }
    fn inference_precision(&self) -> &str {
        CompiledModel::inference_precision(self)
    }
    fn execution_mode(&self) -> &str {
        CompiledModel::execution_mode(self)
    }
    fn create_request(&self) -> Result<InferRequest, EngineError> {
        Ok(CompiledModel::create_request(self)?)
    }
    fn request_bytes(&self) -> usize {
        CompiledModel::request_bytes(self)
    }
}

impl EngineRequest for InferRequest {
    #[inline]
    fn input_mut(&mut self, i: usize) -> &mut [u8] {
        InferRequest::input_mut(self, i)
    }
    #[inline]
    fn output(&self, i: usize) -> &[u8] {
        InferRequest::output(self, i)
    }
    #[inline]
    fn infer(&mut self) -> Result<(), EngineError> {
        Ok(InferRequest::infer(self)?)
    }
    fn reset_states(&mut self) -> Result<(), EngineError> {
        Ok(InferRequest::reset_states(self)?)
    }
    fn save_state(&mut self, i: usize, dst: &mut [u8]) -> Result<(), EngineError> {
        Ok(InferRequest::save_state(self, i, dst)?)
    }
    fn restore_state(&mut self, i: usize, src: &[u8]) -> Result<(), EngineError> {
        Ok(InferRequest::restore_state(self, i, src)?)
    }
}
