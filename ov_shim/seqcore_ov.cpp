// seqcore_ov.cpp: a small `extern "C"` shim over OpenVINO's public C++ API (see seqcore_ov.h).
//
// Why a shim: OpenVINO's C API has no variable-state functions and no LowLatency2, and seqcore
// needs both. Everything here uses only the public C++ API (ov::Core, ov::CompiledModel,
// ov::InferRequest, ov::VariableState, ov::pass::LowLatency2), never internal layouts.
//
// Hot-path design (measured, see ARCHITECTURE.md "OpenVINO runtime"):
//  - input/output tensors are allocated once per request and bound with set_tensor at creation;
//    callers copy bytes in/out through their stable data pointers;
//  - variable-state handles are queried once per request and cached in the model's state order;
//    save copies get_state() into the caller's buffer;
//  - restore writes in place when it can: where the plugin's get_state() hands out the variable's
//    own memory (the CPU plugin does when the variable's layout and precision are the model's),
//    the caller's bytes are copied straight into it, which costs a memcpy instead of set_state's
//    descriptor building and reorder. Whether that holds is proven per model at compile time on
//    a probe request (probe_in_place: the same inference after an in-place write and after
//    set_state must agree bit for bit), and it is used only on a request whose variables have
//    been through an inference since their last reset (a reset variable ignores its memory until
//    the next inference commits it). Everywhere else restore is set_state.

#include "seqcore_ov.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <openvino/core/version.hpp>
#include <openvino/op/broadcast.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/util/read_value_base.hpp>
#include <openvino/op/util/variable.hpp>
#include <openvino/openvino.hpp>
#include <openvino/pass/low_latency.hpp>
#include <openvino/pass/manager.hpp>

namespace {

#define SC_STR2(x) #x
#define SC_STR(x) SC_STR2(x)
constexpr const char* kCompiledVersion =
    SC_STR(OPENVINO_VERSION_MAJOR) "." SC_STR(OPENVINO_VERSION_MINOR) "." SC_STR(OPENVINO_VERSION_PATCH);

void put(char* buf, size_t len, const std::string& msg) {
    if (buf == nullptr || len == 0) return;
    size_t n = std::min(msg.size(), len - 1);
    std::memcpy(buf, msg.data(), n);
    buf[n] = '\0';
}

// OpenVINO's exception messages carry a source-location prefix ("Exception from src/...:95:\n")
// and sometimes "Check '...' failed at ..." lines; keep the informative part, on one line.
std::string tidy(const char* what) {
    std::string s(what ? what : "unknown error");
    std::vector<std::string> keep;
    std::istringstream in(s);
    std::string line;
    while (std::getline(in, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (line.empty()) continue;
        if (line.rfind("Exception from ", 0) == 0) continue;
        if (line.rfind("Check '", 0) == 0 && line.find(" failed at ") != std::string::npos) continue;
        keep.push_back(line);
    }
    if (keep.empty()) return s;
    std::string out;
    for (auto& k : keep) {
        if (!out.empty()) out += ' ';
        out += k;
    }
    return out;
}

// Runs `f`, turning any exception into a nonzero return and a message "<what>: <error>" in
// `err`. `what` is a `const char*` on hot paths, so that nothing is allocated unless f throws.
template <class W, class F>
int guarded(char* err, size_t err_len, const W& what, F&& f) {
    try {
        f();
        return 0;
    } catch (const std::exception& e) {
        put(err, err_len, std::string(what) + ": " + tidy(e.what()));
    } catch (...) {
        put(err, err_len, std::string(what) + ": unknown C++ exception");
    }
    return 1;
}

struct Fail : std::exception {
    std::string msg;
    explicit Fail(std::string m) : msg(std::move(m)) {}
    const char* what() const noexcept override { return msg.c_str(); }
};

int elem_code(const ov::element::Type& t) {
    switch (t) {
        case ov::element::Type_t::f32: return SC_F32;
        case ov::element::Type_t::f64: return SC_F64;
        case ov::element::Type_t::f16: return SC_F16;
        case ov::element::Type_t::bf16: return SC_BF16;
        case ov::element::Type_t::i8: return SC_I8;
        case ov::element::Type_t::i16: return SC_I16;
        case ov::element::Type_t::i32: return SC_I32;
        case ov::element::Type_t::i64: return SC_I64;
        case ov::element::Type_t::u8: return SC_U8;
        case ov::element::Type_t::u16: return SC_U16;
        case ov::element::Type_t::u32: return SC_U32;
        case ov::element::Type_t::u64: return SC_U64;
        case ov::element::Type_t::boolean: return SC_BOOLEAN;
        default: return -1;
    }
}

struct Desc {
    std::string name;
    ov::element::Type type;
    ov::Shape shape;
    int elem = -1;
    std::vector<size_t> dims;
    size_t byte_size = 0;
};

std::string port_name(const ov::Output<const ov::Node>& p) {
    if (!p.get_names().empty()) return p.get_any_name();
    return p.get_node()->get_friendly_name();
}

std::string port_name(const ov::Output<ov::Node>& p) {
    if (!p.get_names().empty()) return p.get_any_name();
    return p.get_node()->get_friendly_name();
}

Desc describe(const std::string& what, const std::string& name, const ov::element::Type& type,
              const ov::Shape& shape) {
    Desc d;
    d.name = name;
    d.type = type;
    d.shape = shape;
    d.elem = elem_code(type);
    if (d.elem < 0)
        throw Fail(what + " '" + name + "' has element type " + type.get_type_name() +
                   ", which seqcore does not support");
    d.dims.assign(shape.begin(), shape.end());
    d.byte_size = ov::shape_size(shape) * type.size();
    return d;
}

// Whether `s` has a static rank >= 1 and a static dimension 0 equal to `n`.
bool batch_dim_is(const ov::PartialShape& s, int64_t n) {
    return s.rank().is_static() && s.rank().get_length() >= 1 && s[0].is_static() && s[0].get_length() == n;
}

[[noreturn]] void cannot_batch(const std::string& why) { throw Fail("model cannot be batched: " + why); }

// Reshapes a model whose inputs and variables all have a batch (dimension 0) of 1 to batch
// `batch`, states included. Tried on the demo LSTM (docs/batching.md, "Compiled shapes"):
//  - reshape alone fails: the cell's shape inference meets the variables' fixed [1, ...], and a
//    static [batch, ...] data_shape is refused by ReadValue while its initializer is [1, ...];
//    so each variable's dimension 0 is first made dynamic;
//  - each ReadValue's initializer is broadcast from [1, ...] to [batch, ...]: without it the
//    model compiles and runs but reads uninitialised memory for the other rows (Broadcast and
//    Tile give the same numbers);
//  - after reshaping the inputs, each variable's data_shape is pinned to the static
//    [batch, ...], so that the compiled graph has no dynamic shape left.
void reshape_to_batch(const std::shared_ptr<ov::Model>& model, size_t batch) {
    const auto b = static_cast<int64_t>(batch);
    std::map<ov::Output<ov::Node>, ov::PartialShape> shapes;
    for (const auto& p : model->inputs()) {
        ov::PartialShape s = p.get_partial_shape();
        if (!batch_dim_is(s, 1))
            cannot_batch("input '" + port_name(p) + "' has shape " + s.to_string() +
                         "; batching needs dimension 0 to be 1");
        s[0] = b;
        shapes[p] = s;
    }

    // Each variable once (several ReadValues may share one), with its batched data_shape.
    std::vector<std::pair<std::shared_ptr<ov::op::util::Variable>, ov::PartialShape>> vars;
    std::unordered_set<const ov::op::util::Variable*> seen;
    for (const auto& op : model->get_ops()) {
        auto rv = ov::as_type_ptr<ov::op::util::ReadValueBase>(op);
        if (!rv) continue;
        std::shared_ptr<ov::op::util::Variable> var = rv->get_variable();
        if (!var) cannot_batch("ReadValue '" + rv->get_friendly_name() + "' has no variable");
        ov::op::util::VariableInfo info = var->get_info();
        if (seen.insert(var.get()).second) {
            if (!batch_dim_is(info.data_shape, 1))
                cannot_batch("variable '" + info.variable_id + "' has shape " + info.data_shape.to_string() +
                             "; batching needs dimension 0 to be 1");
            ov::PartialShape batched = info.data_shape;
            batched[0] = b;
            vars.emplace_back(var, batched);
            info.data_shape[0] = ov::Dimension::dynamic();
            var->update(info);
        }
        if (rv->get_input_size() == 0) continue;
        ov::Output<ov::Node> init = rv->input_value(0);
        const ov::PartialShape& s = init.get_partial_shape();
        if (s.is_dynamic() || !batch_dim_is(s, 1))
            cannot_batch("the initializer of variable '" + info.variable_id + "' has shape " + s.to_string() +
                         "; batching needs a static shape with dimension 0 equal to 1");
        ov::Shape target = s.to_shape();
        target[0] = batch;
        auto dims = ov::op::v0::Constant::create(ov::element::i64, ov::Shape{target.size()}, target);
        auto wide = std::make_shared<ov::op::v3::Broadcast>(init, dims);
        wide->set_friendly_name(rv->get_friendly_name() + "/seqcore_batch");
        rv->input(0).replace_source_output(wide);
    }

    model->reshape(shapes);

    for (auto& [var, batched] : vars) {
        ov::op::util::VariableInfo info = var->get_info();
        info.data_shape = batched;
        var->update(info);
    }
    model->validate_nodes_and_infer_types();
}

// Throws unless every port of `descs` has dimension 0 equal to `batch`.
void check_batched(const char* what, const std::vector<Desc>& descs, size_t batch) {
    for (const Desc& d : descs)
        if (d.dims.empty() || d.dims[0] != batch)
            cannot_batch(std::string(what) + " '" + d.name + "' has shape " + ov::PartialShape(d.shape).to_string() +
                         " at batch " + std::to_string(batch) + "; batching needs dimension 0 to be " +
                         std::to_string(batch));
}

}  // namespace

struct sc_core {
    ov::Core core;
};

struct ModelImpl {
    std::shared_ptr<sc_core> core;  // keeps the plugin's core alive as long as the model
    ov::CompiledModel compiled;
    std::vector<Desc> inputs, outputs, states;
    // What the plugin chose, read back after compiling: the default depends on the CPU (bf16
    // where it has native bf16, f32 elsewhere), so the caller must not assume it.
    std::string inference_precision, execution_mode;
    // Per state (sorted order): restore may write into get_state()'s memory (probe_in_place).
    std::vector<char> in_place;
};

struct sc_model {
    std::shared_ptr<ModelImpl> impl;
};

struct sc_request {
    std::shared_ptr<ModelImpl> model;  // a request never outlives its compiled model
    ov::InferRequest req;
    std::vector<ov::Tensor> inputs, outputs;
    std::vector<ov::VariableState> states;  // in model->states order
    // Per state: an inference (or set_state) has run since the last reset, so the plugin reads
    // the variable's memory on the next inference and an in-place write takes effect.
    std::vector<char> committed;
};

namespace {

// The probe request's states in `descs` order (sorted by name).
std::vector<ov::VariableState> states_in_order(ov::InferRequest& req, const std::vector<Desc>& descs) {
    std::vector<ov::VariableState> all = req.query_state(), out;
    for (const Desc& d : descs)
        for (auto& v : all)
            if (v.get_name() == d.name) out.push_back(v);
    if (out.size() != descs.size()) throw Fail("probe request lost a variable state");
    return out;
}

std::vector<char> snapshot(ov::InferRequest& req, std::vector<ov::VariableState>& vs, size_t n_outputs) {
    std::vector<char> bytes;
    auto add = [&](const ov::Tensor& t) {
        const char* p = static_cast<const char*>(t.data());
        bytes.insert(bytes.end(), p, p + t.get_byte_size());
    };
    for (size_t i = 0; i < n_outputs; i++) add(req.get_output_tensor(i));
    for (auto& v : vs) add(v.get_state());
    return bytes;
}

// Whether restoring state i by writing into get_state()'s memory is the same as set_state, for
// this compiled model: get_state() must hand out the same continuous memory twice, and one
// inference from a state written in place must give the same outputs and next state, bit for
// bit, as from the same state set with set_state. Only f32 states are tried (the probe perturbs
// them so that a write that did not take effect shows); any failure means "no" (set_state).
std::vector<char> probe_in_place(ov::InferRequest& req, const std::vector<Desc>& descs, size_t n_outputs,
                                 size_t n_inputs) {
    std::vector<char> ok(descs.size(), 0);
    if (descs.empty()) return ok;
    try {
        for (size_t i = 0; i < n_inputs; i++) {
            ov::Tensor t = req.get_input_tensor(i);
            std::memset(t.data(), 0, t.get_byte_size());
        }
        std::vector<ov::VariableState> vs = states_in_order(req, descs);
        req.infer();  // commits every variable (no reset flag left)
        std::vector<std::vector<float>> target(descs.size());
        std::vector<char> same(descs.size(), 0);
        for (size_t i = 0; i < descs.size(); i++) {
            const Desc& d = descs[i];
            ov::Tensor a = vs[i].get_state(), b = vs[i].get_state();
            same[i] = d.type == ov::element::f32 && a.data() == b.data() && a.is_continuous() &&
                      a.get_byte_size() == d.byte_size;
            if (!same[i]) continue;
            const float* p = static_cast<const float*>(a.data());
            target[i].assign(p, p + d.byte_size / sizeof(float));
            for (size_t k = 0; k < target[i].size(); k++) target[i][k] += 0.5f + 0.25f * float(k % 7);
        }
        for (size_t i = 0; i < descs.size(); i++)
            if (same[i]) vs[i].set_state(ov::Tensor(descs[i].type, descs[i].shape, target[i].data()));
        req.infer();
        std::vector<char> by_set_state = snapshot(req, vs, n_outputs);
        req.infer();  // moves every state on
        for (size_t i = 0; i < descs.size(); i++)
            if (same[i]) std::memcpy(vs[i].get_state().data(), target[i].data(), descs[i].byte_size);
        req.infer();
        if (snapshot(req, vs, n_outputs) == by_set_state) ok = same;
    } catch (...) {
        std::fill(ok.begin(), ok.end(), 0);
    }
    return ok;
}

}  // namespace

// The core handle given to Rust owns one reference; models own others.
struct CoreHandle {
    std::shared_ptr<sc_core> core;
};

namespace {

std::vector<Desc> query_states(ov::InferRequest& req, std::vector<ov::VariableState>* out) {
    std::vector<ov::VariableState> vs = req.query_state();
    std::vector<Desc> descs;
    descs.reserve(vs.size());
    for (auto& v : vs) {
        ov::Tensor t = v.get_state();
        descs.push_back(describe("variable state", v.get_name(), t.get_element_type(), t.get_shape()));
    }
    if (out) *out = std::move(vs);
    return descs;
}

}  // namespace

extern "C" {

SC_API int sc_check_version(char* ver, size_t ver_len, char* err, size_t err_len) {
    return guarded(err, err_len, "OpenVINO version check", [&] {
        const ov::Version v = ov::get_openvino_version();
        std::string build = v.buildNumber ? v.buildNumber : "";
        put(ver, ver_len, build);
        std::string want = kCompiledVersion;
        bool ok = build.compare(0, want.size(), want) == 0 &&
                  (build.size() == want.size() || build[want.size()] == '-');
        if (!ok)
            throw Fail("the loaded OpenVINO runtime is " + build + " but seqcore's shim was built against " +
                       want + "; run 'make setup' to install openvino==" + want);
    });
}

SC_API int sc_core_new(sc_core** out, char* err, size_t err_len) {
    *out = nullptr;
    return guarded(err, err_len, "creating ov::Core", [&] {
        auto* h = new CoreHandle{std::make_shared<sc_core>()};
        *out = reinterpret_cast<sc_core*>(h);
    });
}

SC_API void sc_core_free(sc_core* core) {
    try {
        delete reinterpret_cast<CoreHandle*>(core);
    } catch (...) {
    }
}

SC_API int sc_compile(sc_core* core_handle, const char* xml_path, int low_latency, size_t batch,
                      const char* const* cfg_keys, const char* const* cfg_vals, size_t n_cfg,
                      sc_model** out, char* err, size_t err_len) {
    *out = nullptr;
    std::string path = xml_path ? xml_path : "";
    return guarded(err, err_len, "compiling " + path, [&] {
        std::shared_ptr<sc_core> core = reinterpret_cast<CoreHandle*>(core_handle)->core;
        std::shared_ptr<ov::Model> model = core->core.read_model(path);

        if (low_latency) {
            ov::pass::Manager manager;
            manager.register_pass<ov::pass::LowLatency2>();
            manager.run_passes(model);
        }

        const bool batched = batch > 1;
        if (batched) {
            try {
                reshape_to_batch(model, batch);
            } catch (const Fail&) {
                throw;
            } catch (const std::exception& e) {
                cannot_batch("reshaping to batch " + std::to_string(batch) + " failed: " + tidy(e.what()));
            }
        }

        for (const auto& p : model->inputs())
            if (p.get_partial_shape().is_dynamic())
                throw Fail("input '" + port_name(p) + "' has dynamic shape " +
                           p.get_partial_shape().to_string() + "; seqcore supports only static shapes");
        for (const auto& p : model->outputs())
            if (p.get_partial_shape().is_dynamic())
                throw Fail("output '" + port_name(p) + "' has dynamic shape " +
                           p.get_partial_shape().to_string() + "; seqcore supports only static shapes");

        // Our defaults make a synchronous infer() run entirely on the calling (pinned) thread.
        ov::AnyMap config{
            ov::num_streams(1),
            ov::inference_num_threads(1),
            ov::hint::enable_cpu_pinning(false),
        };
        for (size_t i = 0; i < n_cfg; i++) config[cfg_keys[i]] = std::string(cfg_vals[i]);

        auto impl = std::make_shared<ModelImpl>();
        impl->core = core;
        impl->compiled = core->core.compile_model(model, "CPU", config);
        impl->inference_precision = impl->compiled.get_property(ov::hint::inference_precision).get_type_name();
        std::ostringstream mode;
        mode << impl->compiled.get_property(ov::hint::execution_mode);
        impl->execution_mode = mode.str();

        for (const auto& p : impl->compiled.inputs())
            impl->inputs.push_back(describe("input", port_name(p), p.get_element_type(), p.get_shape()));
        for (const auto& p : impl->compiled.outputs())
            impl->outputs.push_back(describe("output", port_name(p), p.get_element_type(), p.get_shape()));

        // States are only visible through an infer request; probe one and fix a stable order.
        ov::InferRequest probe = impl->compiled.create_infer_request();
        impl->states = query_states(probe, nullptr);
        std::sort(impl->states.begin(), impl->states.end(),
                  [](const Desc& a, const Desc& b) { return a.name < b.name; });
        for (size_t i = 1; i < impl->states.size(); i++)
            if (impl->states[i].name == impl->states[i - 1].name)
                throw Fail("two variable states are both named '" + impl->states[i].name + "'");
        if (batched) {
            check_batched("input", impl->inputs, batch);
            check_batched("output", impl->outputs, batch);
            check_batched("variable state", impl->states, batch);
            // A batched graph that compiles may still fail to run (or read uninitialised state
            // rows, which the broadcast initializers rule out): run it once before serving it.
            try {
                for (size_t i = 0; i < impl->inputs.size(); i++) {
                    ov::Tensor t = probe.get_input_tensor(i);
                    std::memset(t.data(), 0, t.get_byte_size());
                }
                probe.infer();
                probe.reset_state();
            } catch (const std::exception& e) {
                cannot_batch("inference at batch " + std::to_string(batch) + " fails: " + tidy(e.what()));
            }
        }
        impl->in_place = probe_in_place(probe, impl->states, impl->outputs.size(), impl->inputs.size());

        *out = new sc_model{std::move(impl)};
    });
}

SC_API void sc_model_free(sc_model* model) {
    try {
        delete model;
    } catch (...) {
    }
}

SC_API sc_model* sc_model_share(const sc_model* model) {
    try {
        return new sc_model{model->impl};
    } catch (...) {
        return nullptr;
    }
}

SC_API size_t sc_model_num(const sc_model* model, int kind) {
    switch (kind) {
        case SC_INPUT: return model->impl->inputs.size();
        case SC_OUTPUT: return model->impl->outputs.size();
        case SC_STATE: return model->impl->states.size();
        default: return 0;
    }
}

SC_API int sc_model_desc(const sc_model* model, int kind, size_t i, const char** name,
                         size_t* name_len, int* elem, const size_t** dims, size_t* rank,
                         size_t* byte_size) {
    const std::vector<Desc>* v = nullptr;
    switch (kind) {
        case SC_INPUT: v = &model->impl->inputs; break;
        case SC_OUTPUT: v = &model->impl->outputs; break;
        case SC_STATE: v = &model->impl->states; break;
        default: return 1;
    }
    if (i >= v->size()) return 1;
    const Desc& d = (*v)[i];
    *name = d.name.data();
    *name_len = d.name.size();
    *elem = d.elem;
    *dims = d.dims.data();
    *rank = d.dims.size();
    *byte_size = d.byte_size;
    return 0;
}

SC_API const char* sc_model_hint(const sc_model* model, int hint) {
    switch (hint) {
        case SC_HINT_INFERENCE_PRECISION: return model->impl->inference_precision.c_str();
        case SC_HINT_EXECUTION_MODE: return model->impl->execution_mode.c_str();
        default: return nullptr;
    }
}

SC_API int sc_model_state_in_place(const sc_model* model, size_t i) {
    if (i >= model->impl->in_place.size()) return -1;
    return model->impl->in_place[i] ? 1 : 0;
}

SC_API int sc_request_new(sc_model* model, sc_request** out, char* err, size_t err_len) {
    *out = nullptr;
    return guarded(err, err_len, "creating an infer request", [&] {
        auto r = std::make_unique<sc_request>();
        r->model = model->impl;
        ModelImpl& m = *r->model;
        r->req = m.compiled.create_infer_request();
        for (size_t i = 0; i < m.inputs.size(); i++) {
            r->inputs.emplace_back(m.inputs[i].type, m.inputs[i].shape);
            if (m.inputs[i].byte_size) std::memset(r->inputs.back().data(), 0, m.inputs[i].byte_size);
            r->req.set_input_tensor(i, r->inputs.back());
        }
        for (size_t i = 0; i < m.outputs.size(); i++) {
            r->outputs.emplace_back(m.outputs[i].type, m.outputs[i].shape);
            r->req.set_output_tensor(i, r->outputs.back());
        }
        std::vector<ov::VariableState> vs;
        std::vector<Desc> descs = query_states(r->req, &vs);
        if (descs.size() != m.states.size())
            throw Fail("request has " + std::to_string(descs.size()) + " variable states, model probe had " +
                       std::to_string(m.states.size()));
        std::unordered_map<std::string, size_t> by_name;
        for (size_t i = 0; i < descs.size(); i++) by_name[descs[i].name] = i;
        for (const Desc& want : m.states) {
            auto it = by_name.find(want.name);
            if (it == by_name.end()) throw Fail("request lacks variable state '" + want.name + "'");
            const Desc& got = descs[it->second];
            if (got.type != want.type || got.shape != want.shape)
                throw Fail("variable state '" + want.name + "' differs between requests");
            r->states.push_back(vs[it->second]);
        }
        r->committed.assign(r->states.size(), 0);
        *out = r.release();
    });
}

SC_API void sc_request_free(sc_request* req) {
    try {
        delete req;
    } catch (...) {
    }
}

SC_API void* sc_request_input(sc_request* req, size_t i) {
    return i < req->inputs.size() ? req->inputs[i].data() : nullptr;
}

SC_API void* sc_request_output(sc_request* req, size_t i) {
    return i < req->outputs.size() ? req->outputs[i].data() : nullptr;
}

SC_API int sc_request_infer(sc_request* req, char* err, size_t err_len) {
    std::fill(req->committed.begin(), req->committed.end(), 0);
    int rc = guarded(err, err_len, "inference", [&] { req->req.infer(); });
    if (rc == 0) std::fill(req->committed.begin(), req->committed.end(), 1);
    return rc;
}

SC_API int sc_request_reset_states(sc_request* req, char* err, size_t err_len) {
    return guarded(err, err_len, "resetting states", [&] {
        std::fill(req->committed.begin(), req->committed.end(), 0);
        for (auto& s : req->states) s.reset();
    });
}

SC_API int sc_request_save_state(sc_request* req, size_t i, void* dst, size_t len, char* err,
                                 size_t err_len) {
    return guarded(err, err_len, "saving a variable state", [&] {
        if (i >= req->states.size()) throw Fail("no variable state #" + std::to_string(i));
        const Desc& d = req->model->states[i];
        if (len != d.byte_size)
            throw Fail("state '" + d.name + "' is " + std::to_string(d.byte_size) + " bytes, buffer is " +
                       std::to_string(len));
        ov::Tensor t = req->states[i].get_state();
        if (t.get_byte_size() != len)
            throw Fail("state '" + d.name + "' is now " + std::to_string(t.get_byte_size()) + " bytes, expected " +
                       std::to_string(len));
        if (t.is_continuous()) {
            std::memcpy(dst, t.data(), len);
        } else {
            ov::Tensor wrap(d.type, d.shape, dst);
            t.copy_to(wrap);
        }
    });
}

SC_API int sc_request_restore_state(sc_request* req, size_t i, const void* src, size_t len,
                                    char* err, size_t err_len) {
    return guarded(err, err_len, "restoring a variable state", [&] {
        if (i >= req->states.size()) throw Fail("no variable state #" + std::to_string(i));
        const Desc& d = req->model->states[i];
        if (len != d.byte_size)
            throw Fail("state '" + d.name + "' is " + std::to_string(d.byte_size) + " bytes, buffer is " +
                       std::to_string(len));
        if (req->committed[i] && req->model->in_place[i]) {
            ov::Tensor t = req->states[i].get_state();
            if (t.get_byte_size() != len || !t.is_continuous())
                throw Fail("state '" + d.name + "' changed its layout");
            std::memcpy(t.data(), src, len);
            return;
        }
        // set_state copies the data; the wrapper never writes through the pointer.
        req->states[i].set_state(ov::Tensor(d.type, d.shape, const_cast<void*>(src)));
        req->committed[i] = 1;
    });
}

}  // extern "C"
