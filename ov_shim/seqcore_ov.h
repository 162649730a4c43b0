/* seqcore_ov.h: the C ABI of seqcore's shim over OpenVINO's public C++ API.
 *
 * The Rust side (src/ov/) dlopens the shim at runtime and resolves every function below with
 * dlsym; the declarations here and the function table in src/ov/ffi.rs must stay in sync.
 *
 * Conventions:
 *  - Every function that can fail returns 0 on success and a nonzero code on failure, and then
 *    copies a NUL-terminated message (truncated to fit) into the caller's `err`/`err_len` buffer.
 *    No C++ exception ever crosses this boundary.
 *  - Handles are owned by the caller and released with the matching *_free function. A request
 *    keeps its compiled model alive and a model keeps its core alive (shared ownership inside the
 *    shim), so the free functions may be called in any order.
 *  - Handles are not thread-safe: use each one (and everything created from it) on one thread.
 */
#ifndef SEQCORE_OV_H
#define SEQCORE_OV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SC_API __attribute__((visibility("default")))

/* Element types, as seen by Rust (src/ov/mod.rs ElemType). Not OpenVINO's numbering. */
enum sc_elem {
    SC_F32 = 0,
    SC_F64 = 1,
    SC_F16 = 2,
    SC_BF16 = 3,
    SC_I8 = 4,
    SC_I16 = 5,
    SC_I32 = 6,
    SC_I64 = 7,
    SC_U8 = 8,
    SC_U16 = 9,
    SC_U32 = 10,
    SC_U64 = 11,
    SC_BOOLEAN = 12
};

/* Port kinds for sc_model_num / sc_model_desc. */
enum sc_kind { SC_INPUT = 0, SC_OUTPUT = 1, SC_STATE = 2 };

/* Compiled-model properties for sc_model_hint, read back once at compile time. */
enum sc_hint {
    /* ov::hint::inference_precision as an element type name: "f32", "bf16", "f16", or "dynamic"
     * (no lowering: ops run in the model's own precision, as under EXECUTION_MODE_HINT=ACCURACY). */
    SC_HINT_INFERENCE_PRECISION = 0,
    /* ov::hint::execution_mode: "PERFORMANCE" or "ACCURACY". */
    SC_HINT_EXECUTION_MODE = 1
};

typedef struct sc_core sc_core;
typedef struct sc_model sc_model;
typedef struct sc_request sc_request;

/* Checks that the loaded runtime's ov::get_openvino_version() is the version these headers
 * describe. Writes the runtime's build number into `ver` (may be NULL) either way. */
SC_API int sc_check_version(char* ver, size_t ver_len, char* err, size_t err_len);

SC_API int sc_core_new(sc_core** out, char* err, size_t err_len);
SC_API void sc_core_free(sc_core* core);

/* Reads `xml_path` (IR; the .bin next to it), optionally applies ov::pass::LowLatency2, for
 * `batch` > 1 reshapes it from batch 1 to `batch` (every input and variable must have dimension
 * 0 equal to 1; each variable's initializer is broadcast to `batch` rows; afterwards every
 * input, output and state has dimension 0 equal to `batch`, else it fails with "model cannot be
 * batched: ..."; 0 or 1 compile the IR as it is), checks that every input/output shape is static
 * and compiles it for CPU with seqcore's defaults (NUM_STREAMS=1, INFERENCE_NUM_THREADS=1,
 * ENABLE_CPU_PINNING=NO) overridden by the `n_cfg` string pairs `cfg_keys[i]` = `cfg_vals[i]`. */
SC_API int sc_compile(sc_core* core, const char* xml_path, int low_latency, size_t batch,
                      const char* const* cfg_keys, const char* const* cfg_vals, size_t n_cfg,
                      sc_model** out, char* err, size_t err_len);
SC_API void sc_model_free(sc_model* model);
/* A second handle to the same compiled model (no copy of its weights), for another thread: the
 * compiled model creates infer requests safely from any thread, and its descriptors are
 * immutable. Each handle is then used by one thread and freed with sc_model_free. NULL when out
 * of memory. */
SC_API sc_model* sc_model_share(const sc_model* model);

SC_API size_t sc_model_num(const sc_model* model, int kind);
/* Describes port/state `i` of `kind`. The returned pointers stay valid while `model` lives. */
SC_API int sc_model_desc(const sc_model* model, int kind, size_t i, const char** name,
                         size_t* name_len, int* elem, const size_t** dims, size_t* rank,
                         size_t* byte_size);
/* The compiled model's effective value of `hint` (enum sc_hint) as a NUL-terminated string,
 * valid while `model` lives; NULL for an unknown `hint`. */
SC_API const char* sc_model_hint(const sc_model* model, int hint);
/* How state `i` is restored: 1 by a copy into the plugin's own memory of the variable (proved
 * equivalent to set_state on a probe request when the model was compiled), 0 by set_state, -1
 * for no such state. */
SC_API int sc_model_state_in_place(const sc_model* model, size_t i);

/* Creates an infer request with its own input/output tensors bound once; their data pointers
 * are stable for the request's lifetime (see sc_request_input / sc_request_output). Its
 * variable states are in the model's state order (sorted by name). */
SC_API int sc_request_new(sc_model* model, sc_request** out, char* err, size_t err_len);
SC_API void sc_request_free(sc_request* req);
SC_API void* sc_request_input(sc_request* req, size_t i);
SC_API void* sc_request_output(sc_request* req, size_t i);

SC_API int sc_request_infer(sc_request* req, char* err, size_t err_len);
SC_API int sc_request_reset_states(sc_request* req, char* err, size_t err_len);
/* Copies state `i` into `dst`; `len` must be the state's byte size. */
SC_API int sc_request_save_state(sc_request* req, size_t i, void* dst, size_t len, char* err,
                                 size_t err_len);
/* Sets state `i` from `src` (copied by OpenVINO; `src` may be reused afterwards). */
SC_API int sc_request_restore_state(sc_request* req, size_t i, const void* src, size_t len,
                                    char* err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* SEQCORE_OV_H */
