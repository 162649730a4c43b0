//! Server configuration: OVMS's command-line flags and its `config.json` format (spec §3.1),
//! validated once at startup. Every key is either applied or rejected with a message naming it;
//! nothing is silently ignored.

use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// Exit code for configuration errors (BSD's EX_USAGE, as OVMS uses).
pub const EXIT_USAGE: i32 = 64;

pub const SEQUENCE_TIMEOUT_SECONDS_DEFAULT: u64 = 60;
pub const MAX_SEQUENCE_NUMBER_DEFAULT: u32 = 500;
/// Infer requests per model per shard when `nireq` is 0 or unset. Each one keeps one sequence's
/// state resident, so this is also the size of a shard's resident-state cache.
pub const NIREQ_DEFAULT: u32 = 4;
/// Upper bound for `nireq`: each infer request holds the model's activations.
pub const NIREQ_MAX: u32 = 256;
/// Memory per stateful model per shard for infer requests that keep sequences' state resident
/// (`--resident_memory_mb`). 64 MiB holds ≈ 4 500 states of the demo LSTM (≈ 14.5 KiB per request as
/// estimated, `CompiledModel::request_bytes`), far more than one core can step every 10 ms.
pub const RESIDENT_MEMORY_MB_DEFAULT: u64 = 64;
/// Upper bound for `--resident_memory_mb` (1 TiB).
pub const RESIDENT_MEMORY_MB_MAX: u64 = 1 << 20;
/// Upper bound for `max_batch_size`: steps of this many sequences run as one inference.
pub const MAX_BATCH_SIZE_MAX: u32 = 64;
/// Upper bound for `max_queue_delay_us` (100 ms): a step waits at most this long for company.
pub const MAX_QUEUE_DELAY_US_MAX: u64 = 100_000;
/// How long a shutdown may take by default (`--shutdown_timeout_seconds`), and at most.
pub const SHUTDOWN_TIMEOUT_SECONDS_DEFAULT: u64 = 30;
pub const SHUTDOWN_TIMEOUT_SECONDS_MAX: u64 = 3600;
/// Upper bound for `--spin_before_park_us` (10 ms): longer polling only burns the core.
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 10_000;
/// Upper bound for `num_versions`, for the `versions` of a specific policy and for the version
/// directories scanned under one `base_path`.
pub const VERSIONS_MAX: usize = 1000;
/// Upper bound for `--file_system_poll_wait_seconds` (one day).
pub const FILE_SYSTEM_POLL_WAIT_SECONDS_MAX: u64 = 86_400;

const CLI_STATEFUL_ONLY: &str = "Setting low_latency_transformation, max_sequence_number and \
idle_sequence_cleanup require setting stateful flag for the model.";
const NON_STATEFUL_PARAMETER: &str = "Stateful model config parameter used for non stateful model";
/// OVMS's REQUESTED_MODEL_TYPE_CHANGE.
const MODEL_TYPE_CHANGE: &str = "Model type cannot be changed after it is loaded";

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub base_path: PathBuf,
    pub stateful: bool,
    pub sequence_timeout_seconds: u64,
    pub max_sequence_number: u32,
    pub low_latency_transformation: bool,
    pub idle_sequence_cleanup: bool,
    pub nireq: u32,
    /// Budget for infer requests holding resident states, per shard (`--resident_memory_mb`).
    pub resident_memory_mb: u64,
    /// Steps of up to this many sequences run as one batched inference (1: no batching).
    pub max_batch_size: u32,
    /// How long a step may wait for others to batch with (0: only those already queued).
    pub max_queue_delay_us: u64,
    pub plugin_config: Vec<(String, String)>,
    /// Which of the version directories are served (`model_version_policy`).
    pub version_policy: VersionPolicy,
}

/// OVMS's `model_version_policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(u32),
    All,
    /// These versions (ascending, distinct, each at least 1) where present.
    Specific(Vec<i64>),
}

impl Default for VersionPolicy {
    fn default() -> VersionPolicy {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions this policy serves out of `available` (any order in; ascending out).
    pub fn select(&self, available: &[i64]) -> Vec<i64> {
        let mut v = available.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::Latest(n) => {
                let keep = (*n as usize).min(v.len());
                v.split_off(v.len() - keep)
            }
            VersionPolicy::All => v,
            VersionPolicy::Specific(want) => {
                v.retain(|x| want.contains(x));
                v
            }
        }
    }

    /// OVMS's JSON shape of the policy, for logs and status.
    pub fn to_json(&self) -> Value {
        match self {
            VersionPolicy::Latest(n) => serde_json::json!({"latest": {"num_versions": n}}),
            VersionPolicy::All => serde_json::json!({"all": {}}),
            VersionPolicy::Specific(v) => serde_json::json!({"specific": {"versions": v}}),
        }
    }
}

impl ModelConfig {
    pub fn new(name: String, base_path: PathBuf) -> ModelConfig {
        ModelConfig {
            name,
            base_path,
            stateful: false,
            sequence_timeout_seconds: SEQUENCE_TIMEOUT_SECONDS_DEFAULT,
            max_sequence_number: MAX_SEQUENCE_NUMBER_DEFAULT,
            low_latency_transformation: false,
            idle_sequence_cleanup: true,
            nireq: NIREQ_DEFAULT,
            resident_memory_mb: RESIDENT_MEMORY_MB_DEFAULT,
            max_batch_size: 1,
            max_queue_delay_us: 0,
            plugin_config: Vec::new(),
            version_policy: VersionPolicy::default(),
        }
    }

    /// The idle timeout in force, or None when idle sequences are kept forever.
    pub fn idle_timeout_ms(&self, cleaner_enabled: bool) -> Option<u64> {
        (self.stateful && self.idle_sequence_cleanup && cleaner_enabled)
            .then_some(self.sequence_timeout_seconds.saturating_mul(1000))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub port: u16,
    pub bind_address: String,
    /// REST API port; 0: REST is off (OVMS's default).
    pub rest_port: u16,
    /// REST bind address; defaults to the gRPC bind address.
    pub rest_bind_address: String,
    /// Shard-aware gRPC ports: shard `s` also listens on `base + s` alone, so a client that
    /// computes a sequence's owner (`shard::shard_of`) reaches it without a cross-shard hop.
    pub shard_port_base: Option<u16>,
    /// Shards to run; None: one per CPU the process may use (after `cpuset`).
    pub cores: Option<usize>,
    /// CPUs the shards may be pinned to; None: the process's affinity mask.
    pub cpuset: Option<Vec<usize>>,
    /// NUMA nodes (OS indexes) whose CPUs the shards may use; None: every node (`src/plan.rs`).
    pub numa_nodes: Option<Vec<usize>>,
    /// Whether a physical core's second hyper-thread may hold a shard too (`--smt`).
    pub smt: Smt,
    /// Where models are compiled: per shard (default) or once per NUMA node (`--compile_per`).
    pub compile_per: CompilePer,
    /// OVMS's server-wide cleaner switch: 0 disables idle-sequence removal; any other value
    /// keeps it on (the timeout itself is `sequence_timeout_seconds`).
    pub sequence_cleaner_poll_wait_minutes: u32,
    pub log_level: LogLevel,
    pub grpc_message_bytes_max: usize,
    /// The connection limits of the gRPC and REST listeners (flags `--grpc_max_*`, `--rest_*`).
    pub net: NetLimits,
    /// How long an idle shard polls before it parks its thread (0: park at once). Polling takes
    /// the wake-up (an eventfd write and, in glommio, a membarrier on the way to sleep) off the
    /// latency of the next request and of cross-shard hops, at the cost of a busy core.
    pub spin_before_park_us: u64,
    /// `--config_path` as given; None in single-model mode.
    pub config_path: Option<PathBuf>,
    /// How often the config file and the version directories are re-read (0: never).
    pub file_system_poll_wait_seconds: u64,
    /// `--resident_memory_mb`, applied to every model (also to the models of a reloaded file).
    pub resident_memory_mb: u64,
    /// Where a shutdown writes the live sequences and the next start restores them from.
    pub state_dir: Option<PathBuf>,
    /// How long a shutdown (SIGTERM, SIGINT) may take before the process exits anyway.
    pub shutdown_timeout_seconds: u64,
    /// A REST request must arrive whole within this from its first byte (408 past it).
    pub rest_request_timeout_seconds: u64,
    /// `--ssl_cert`/`--ssl_key` (and `--ssl_client_ca`): every listener serves TLS only.
    pub tls: Option<TlsFiles>,
    pub models: Vec<ModelConfig>,
}

/// TLS for every listener (`src/tls.rs` loads and checks the files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--ssl_cert`: PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// `--ssl_key`: PEM private key of the leaf certificate.
    pub key: PathBuf,
    /// `--ssl_client_ca`: PEM CA certificates; clients must then present a certificate they sign.
    pub client_ca: Option<PathBuf>,
    /// `--ssl_handshake_timeout_seconds`: a handshake not done within this closes its connection.
    pub handshake_timeout_seconds: u64,
}

/// `--ssl_handshake_timeout_seconds` by default.
pub const SSL_HANDSHAKE_TIMEOUT_SECONDS_DEFAULT: u64 = 10;
/// `--ssl_handshake_timeout_seconds` at most.
pub const SSL_HANDSHAKE_TIMEOUT_SECONDS_MAX: u64 = 600;

/// `--mesh_max_forwarded_steps`: its default and range.
pub const MESH_FORWARDED_STEPS_DEFAULT: usize = 1024;
pub const MESH_FORWARDED_STEPS_RANGE: (u64, u64) = (16, 16_384);
/// `--mesh_forward_wait_ms`: its default and maximum.
pub const MESH_FORWARD_WAIT_MS_DEFAULT: u64 = 1000;
pub const MESH_FORWARD_WAIT_MS_MAX: u64 = 60_000;

/// The listeners' limits, per shard and per connection, and the mesh's between shards (README,
/// "Options").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// `--grpc_max_concurrent_streams`: calls open at once per gRPC connection.
    pub grpc_streams: u32,
    /// `--grpc_max_pending_resets`: calls a client reset before the server took them, waiting
    /// per connection; past it GOAWAY ENHANCE_YOUR_CALM (default twice the streams).
    pub grpc_pending_resets: usize,
    /// `--grpc_max_connections`: open gRPC connections per shard and listener.
    pub grpc_connections: usize,
    /// `--grpc_max_header_list_bytes`: request headers per call (431 past it).
    pub grpc_header_list_bytes: u32,
    /// `--rest_max_header_bytes`: a request head (431 past it).
    pub rest_header_bytes: usize,
    /// `--rest_max_body_bytes`: a request body (413 past it, before it is read).
    pub rest_body_bytes: usize,
    /// `--rest_idle_timeout_seconds`: a REST connection that sends nothing this long is closed.
    pub rest_idle_timeout_seconds: u64,
    /// `--rest_max_connections`: open REST connections per shard.
    pub rest_connections: usize,
    /// `--mesh_max_forwarded_steps`: steps one shard may have forwarded to another and not yet
    /// answered; one more waits for room.
    pub mesh_forwarded_steps: usize,
    /// `--mesh_forward_wait_ms`: how long such a step waits before it is refused (0: at once).
    pub mesh_forward_wait_ms: u64,
}

impl Default for NetLimits {
    fn default() -> NetLimits {
        NetLimits {
            grpc_streams: 128,
            grpc_pending_resets: 256,
            grpc_connections: 1024,
            grpc_header_list_bytes: 16 << 10,
            rest_header_bytes: 16 << 10,
            rest_body_bytes: 64 << 20,
            rest_idle_timeout_seconds: 60,
            rest_connections: 4096,
            mesh_forwarded_steps: MESH_FORWARDED_STEPS_DEFAULT,
            mesh_forward_wait_ms: MESH_FORWARD_WAIT_MS_DEFAULT,
        }
    }
}

/// `--compile_per shard` (the default): every shard compiles its own copy of every model;
/// `--compile_per numa_node`: one compile per NUMA node (one CPU stream per shard of the node),
/// shared by the node's shards: one copy of the weights per node, at the price of a lock the
/// node's shards share in every inference (measured in tuning/README.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompilePer {
    #[default]
    Shard,
    NumaNode,
}

/// `--smt off` (the default): one shard per physical core, its sibling hyper-threads left idle;
/// `--smt on`: every hyper-thread may hold a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Smt {
    #[default]
    Off,
    On,
}

impl Smt {
    pub fn as_str(self) -> &'static str {
        match self {
            Smt::Off => "off",
            Smt::On => "on",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    fn parse(s: &str) -> Result<LogLevel, ConfigError> {
        Ok(match s {
            "TRACE" => LogLevel::Trace,
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARNING" => LogLevel::Warning,
            "ERROR" => LogLevel::Error,
            _ => return err(format!("--log_level: expected TRACE|DEBUG|INFO|WARNING|ERROR, got {s:?}")),
        })
    }
}

pub const USAGE: &str = "\
usage: seqcore [options]
       seqcore plan [options]      print the placement plan as JSON and exit (no OpenVINO; the
                                   models are listed when --config_path or --model_* is given)
       seqcore tune ...            check and tune the machine (seqcore tune --help)
  --port N                         gRPC port (default 9000)
  --grpc_bind_address ADDR         gRPC bind address (default 0.0.0.0)
  --rest_port N                    REST API port (default 0: off); must differ from --port
  --rest_bind_address ADDR         REST bind address (default: the gRPC bind address)
  --shard_port_base N              shard s also serves gRPC on port N+s alone (shard-aware
                                   clients; default 0: off)
  --config_path FILE               OVMS-style config.json (exclusive with --model_*)
  --model_name NAME --model_path DIR   serve one model
  --stateful                       the model keeps state between requests
  --sequence_timeout_seconds N     idle sequences are removed after N s (default 60)
  --max_sequence_number N          live sequences per model version (default 500)
  --low_latency_transformation     apply LowLatency2 before compiling
  --idle_sequence_cleanup BOOL     remove idle sequences (default true)
  --sequence_cleaner_poll_wait_minutes N   0 disables idle removal server-wide (default 5)
  --nireq N                        infer requests made per model per shard at start (default 4)
  --resident_memory_mb N           memory per stateful model per shard for infer requests that keep
                                   sequences' state resident; more live sequences are swapped,
                                   least recently stepped first (default 64)
  --max_batch_size N               run steps of up to N sequences as one inference (stateful
                                   models; default 1: off; at most 64)
  --max_queue_delay_us N           a step waits up to N µs for others to batch with (default 0)
  --plugin_config JSON             extra OpenVINO CPU properties, e.g. '{\"PERFORMANCE_HINT\":\"LATENCY\"}'
  --model_version_policy JSON      versions served, e.g. '{\"latest\":{\"num_versions\":2}}', '{\"all\":{}}'
                                   (default: the highest)
  --file_system_poll_wait_seconds N   the config file and version directories are re-read every N s
                                   (default 1; 0: off)
  --cores N                        number of shards: the first N CPUs of the plan (default: all)
  --cpuset LIST                    CPUs to pin shards to, e.g. 0-3,8 (default: the affinity mask)
  --numa_nodes LIST                only the CPUs of these NUMA nodes, e.g. 0 or 0-1
  --smt on|off                     off: one shard per physical core, hyper-thread siblings idle
                                   (default off)
  --compile_per shard|numa_node    a compiled copy of each model per shard (default), or one per
                                   NUMA node shared by its shards (less memory, a shared lock)
  --grpc_max_message_bytes N       largest gRPC message accepted (default 67108864)
  --grpc_max_concurrent_streams N  calls open at once per gRPC connection (default 128)
  --grpc_max_pending_resets N      calls reset by the client before the server took them, per
                                   connection; past it GOAWAY ENHANCE_YOUR_CALM (default 2x streams)
  --grpc_max_connections N         gRPC connections per shard and listener (default 1024)
  --grpc_max_header_list_bytes N   request headers per call (default 16384)
  --rest_max_header_bytes N        REST request head (default 16384)
  --rest_max_body_bytes N          REST request body (default 67108864)
  --rest_idle_timeout_seconds N    a REST connection idle this long is closed (default 60)
  --rest_max_connections N         REST connections per shard (default 4096)
  --mesh_max_forwarded_steps N     steps a shard may have forwarded to another and not yet answered;
                                   one more waits for room (default 1024; 16-16384)
  --mesh_forward_wait_ms N         how long that step waits before it is refused (default 1000;
                                   0: refused at once; at most 60000)
  --spin_before_park_us N          an idle shard polls N µs before parking (default 0)
  --state_dir DIR                  a shutdown (SIGTERM) writes the live sequences here; the next
                                   start restores them (default: none, sequences end with the process)
  --shutdown_timeout_seconds N     a shutdown exits after at most N s (default 30)
  --rest_request_timeout_seconds N a REST request must arrive whole within N s of its first byte
                                   (408 past it; default 30)
  --ssl_cert FILE --ssl_key FILE   serve gRPC and REST over TLS only (PEM chain, leaf first, and
                                   its private key; ALPN h2 on gRPC, http/1.1 on REST; default: off)
  --ssl_client_ca FILE             require client certificates signed by these PEM CAs (needs
                                   --ssl_cert)
  --ssl_handshake_timeout_seconds N   a TLS handshake not done in N s closes its connection
                                   (default 10)
  --log_level LEVEL                TRACE|DEBUG|INFO|WARNING|ERROR (default INFO)
";

impl ServerConfig {
    /// Checks `--shard_port_base` against the shard count (known once the placement plan is
    /// made): the ports `base .. base + shards` must exist and hold neither `--port` nor
    /// `--rest_port`.
    pub fn check_shard_ports(&self, shards: usize) -> Result<(), ConfigError> {
        let Some(base) = self.shard_port_base else { return Ok(()) };
        let last = base as usize + shards.saturating_sub(1);
        if last > u16::MAX as usize {
            return err(format!("--shard_port_base {base}: {shards} shard ports would end past 65535"));
        }
        let range = base as usize..=last;
        for (flag, p) in [("--port", self.port), ("--rest_port", self.rest_port)] {
            if p != 0 && range.contains(&(p as usize)) {
                return err(format!("--shard_port_base {base}: the shard ports {base}-{last} include {flag} {p}"));
            }
        }
        Ok(())
    }
}

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<ServerConfig, ConfigError> {
    parse_command_line(args, true)
}

/// Parses the flags of `seqcore plan` (after `plan`): the server's flags, models optional (none
/// given: `models` is empty).
pub fn parse_plan_args(args: &[String]) -> Result<ServerConfig, ConfigError> {
    parse_command_line(args, false)
}

fn parse_command_line(args: &[String], models_required: bool) -> Result<ServerConfig, ConfigError> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(body) = a.strip_prefix("--") else {
            return err(format!("unexpected argument {a:?}; see --help"));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None if BOOL_FLAGS.contains(&body) || body == "help" => {
                // A bool flag takes an explicit value only when one follows that is a bool.
                match args.get(i + 1).map(String::as_str) {
                    Some(v @ ("true" | "false")) => {
                        i += 1;
                        (body.to_string(), Some(v.to_string()))
                    }
                    _ => (body.to_string(), None),
                }
            }
            None => {
                let Some(v) = args.get(i + 1) else {
                    return err(format!("--{body} needs a value"));
                };
                i += 1;
                (body.to_string(), Some(v.clone()))
            }
        };
        if flags.iter().any(|(n, _)| *n == name) {
            return err(format!("--{name} given twice"));
        }
        flags.push((name, value));
        i += 1;
    }
    Cli { flags }.into_config(models_required)
}

const BOOL_FLAGS: &[&str] = &["stateful", "low_latency_transformation", "idle_sequence_cleanup"];

struct Cli {
    flags: Vec<(String, Option<String>)>,
}

impl Cli {
    fn take(&mut self, name: &str) -> Option<Option<String>> {
        let at = self.flags.iter().position(|(n, _)| n == name)?;
        Some(self.flags.remove(at).1)
    }

    fn take_str(&mut self, name: &str) -> Option<String> {
        self.take(name).map(|v| v.unwrap_or_default())
    }

    fn take_num<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, ConfigError> {
        match self.take_str(name) {
            None => Ok(None),
            Some(v) => match v.parse() {
                Ok(n) => Ok(Some(n)),
                Err(_) => err(format!("--{name}: not a valid number: {v:?}")),
            },
        }
    }

    fn take_bool(&mut self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => match v.as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => err(format!("--{name}: expected true or false, got {v:?}")),
            },
        }
    }

    fn into_config(mut self, models_required: bool) -> Result<ServerConfig, ConfigError> {
        if self.take("help").is_some() {
            return err(USAGE.to_string());
        }
        let port = self.take_num::<u16>("port")?.unwrap_or(9000);
        if port == 0 {
            return err(
                "--port: the gRPC port must not be 0 (seqcore always serves gRPC; REST is added with --rest_port)",
            );
        }
        let rest_port = self.take_num::<u16>("rest_port")?.unwrap_or(0);
        if rest_port == port {
            return err(format!("--port and --rest_port cannot be the same ({port})"));
        }
        let shard_port_base = match self.take_num::<u16>("shard_port_base")? {
            None | Some(0) => None,
            Some(p) => Some(p),
        };
        let bind_address = self.take_str("grpc_bind_address").unwrap_or_else(|| "0.0.0.0".into());
        let rest_bind_address = match self.take_str("rest_bind_address") {
            Some(_) if rest_port == 0 => return err("--rest_bind_address needs --rest_port"),
            Some(a) => a,
            None => bind_address.clone(),
        };
        let cores = self.take_num::<usize>("cores")?;
        if cores == Some(0) {
            return err("--cores: must be at least 1");
        }
        let cpuset = match self.take_str("cpuset") {
            Some(s) => Some(parse_cpuset(&s)?),
            None => None,
        };
        let numa_nodes = match self.take_str("numa_nodes") {
            Some(s) => Some(parse_list("--numa_nodes", &s)?),
            None => None,
        };
        let smt = match self.take_str("smt").as_deref() {
            None | Some("off") => Smt::Off,
            Some("on") => Smt::On,
            Some(v) => return err(format!("--smt: expected on or off, got {v:?}")),
        };
        let compile_per = match self.take_str("compile_per").as_deref() {
            None | Some("shard") => CompilePer::Shard,
            Some("numa_node") => CompilePer::NumaNode,
            Some(v) => return err(format!("--compile_per: expected shard or numa_node, got {v:?}")),
        };
        let sequence_cleaner_poll_wait_minutes =
            self.take_num::<u32>("sequence_cleaner_poll_wait_minutes")?.unwrap_or(5);
        let log_level = match self.take_str("log_level") {
            Some(s) => LogLevel::parse(&s)?,
            None => LogLevel::Info,
        };
        let grpc_message_bytes_max = self.take_num::<usize>("grpc_max_message_bytes")?.unwrap_or(64 << 20);
        let net = self.net_limits()?;
        let spin_before_park_us = self.take_num::<u64>("spin_before_park_us")?.unwrap_or(0);
        if spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
            return err(format!("--spin_before_park_us: at most {SPIN_BEFORE_PARK_US_MAX}"));
        }

        let resident_memory_mb = self.take_num::<u64>("resident_memory_mb")?.unwrap_or(RESIDENT_MEMORY_MB_DEFAULT);
        if resident_memory_mb > RESIDENT_MEMORY_MB_MAX {
            return err(format!("--resident_memory_mb: at most {RESIDENT_MEMORY_MB_MAX}"));
        }

        let file_system_poll_wait_seconds = self.take_num::<u64>("file_system_poll_wait_seconds")?.unwrap_or(1);
        if file_system_poll_wait_seconds > FILE_SYSTEM_POLL_WAIT_SECONDS_MAX {
            return err(format!("--file_system_poll_wait_seconds: at most {FILE_SYSTEM_POLL_WAIT_SECONDS_MAX}"));
        }

        let state_dir = match self.take_str("state_dir") {
            Some(d) if d.is_empty() => return err("--state_dir: give a directory"),
            d => d.map(PathBuf::from),
        };
        let shutdown_timeout_seconds =
            self.take_num::<u64>("shutdown_timeout_seconds")?.unwrap_or(SHUTDOWN_TIMEOUT_SECONDS_DEFAULT);
        if shutdown_timeout_seconds == 0 || shutdown_timeout_seconds > SHUTDOWN_TIMEOUT_SECONDS_MAX {
            return err(format!("--shutdown_timeout_seconds: between 1 and {SHUTDOWN_TIMEOUT_SECONDS_MAX}"));
        }
        let rest_request_timeout_seconds = self.take_num::<u64>("rest_request_timeout_seconds")?.unwrap_or(30);
        if rest_request_timeout_seconds == 0 || rest_request_timeout_seconds > 3600 {
            return err("--rest_request_timeout_seconds: between 1 and 3600");
        }
        let tls = self.tls_files()?;
        let config_path = self.take_str("config_path").map(PathBuf::from);
        let model_name = self.take_str("model_name");
        let model_path = self.take_str("model_path");
        let mut models = match (config_path.as_ref(), model_name, model_path) {
            (Some(path), None, None) => {
                self.reject_model_flags("--config_path")?;
                load_config_file(path)?
            }
            (None, Some(name), Some(path)) => vec![self.single_model(name, PathBuf::from(path))?],
            (Some(_), _, _) => return err("--config_path cannot be combined with --model_name/--model_path"),
            (None, None, None) if !models_required => Vec::new(),
            (None, None, None) => return err("give --config_path, or --model_name and --model_path; see --help"),
            (None, _, _) => return err("--model_name and --model_path go together"),
        };
        if let Some((name, _)) = self.flags.first() {
            return err(format!("unknown flag --{name}; see --help"));
        }
        for m in &mut models {
            m.resident_memory_mb = resident_memory_mb;
        }
        Ok(ServerConfig {
            port,
            bind_address,
            rest_port,
            rest_bind_address,
            shard_port_base,
            cores,
            cpuset,
            numa_nodes,
            smt,
            compile_per,
            sequence_cleaner_poll_wait_minutes,
            log_level,
            grpc_message_bytes_max,
            net,
            spin_before_park_us,
            config_path,
            file_system_poll_wait_seconds,
            resident_memory_mb,
            state_dir,
            shutdown_timeout_seconds,
            rest_request_timeout_seconds,
            tls,
            models,
        })
    }

    /// `--ssl_*`: the file names only (their contents are checked by `tls::Material::load`).
    fn tls_files(&mut self) -> Result<Option<TlsFiles>, ConfigError> {
        let mut file = |flag: &str| match self.take_str(flag) {
            Some(f) if f.is_empty() => err(format!("--{flag}: give a file")),
            f => Ok(f.map(PathBuf::from)),
        };
        let (cert, key, client_ca) = (file("ssl_cert")?, file("ssl_key")?, file("ssl_client_ca")?);
        let timeout = self.take_num::<u64>("ssl_handshake_timeout_seconds")?;
        if timeout.is_some_and(|t| t == 0 || t > SSL_HANDSHAKE_TIMEOUT_SECONDS_MAX) {
            return err(format!("--ssl_handshake_timeout_seconds: between 1 and {SSL_HANDSHAKE_TIMEOUT_SECONDS_MAX}"));
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
                handshake_timeout_seconds: timeout.unwrap_or(SSL_HANDSHAKE_TIMEOUT_SECONDS_DEFAULT),
            })),
            (Some(_), None) => err("--ssl_cert needs --ssl_key (the certificate's private key)"),
            (None, Some(_)) => err("--ssl_key needs --ssl_cert (the certificate it belongs to)"),
            (None, None) if client_ca.is_some() => err("--ssl_client_ca needs --ssl_cert and --ssl_key"),
            (None, None) if timeout.is_some() => err("--ssl_handshake_timeout_seconds needs --ssl_cert and --ssl_key"),
            (None, None) => Ok(None),
        }
    }

    /// The listeners' limits, each flag checked against its range.
    fn net_limits(&mut self) -> Result<NetLimits, ConfigError> {
        let d = NetLimits::default();
        let mut get = |flag: &str, default: u64, lo: u64, hi: u64| -> Result<u64, ConfigError> {
            match self.take_num::<u64>(flag)? {
                None => Ok(default),
                Some(v) if (lo..=hi).contains(&v) => Ok(v),
                Some(v) => err(format!("--{flag}: between {lo} and {hi}, not {v}")),
            }
        };
        let grpc_streams = get("grpc_max_concurrent_streams", d.grpc_streams as u64, 1, 10_000)? as u32;
        Ok(NetLimits {
            grpc_streams,
            grpc_pending_resets: get("grpc_max_pending_resets", 2 * grpc_streams as u64, 1, 1 << 20)? as usize,
            grpc_connections: get("grpc_max_connections", d.grpc_connections as u64, 1, 1 << 20)? as usize,
            grpc_header_list_bytes: get("grpc_max_header_list_bytes", d.grpc_header_list_bytes as u64, 1024, 1 << 20)?
                as u32,
            rest_header_bytes: get("rest_max_header_bytes", d.rest_header_bytes as u64, 1024, 1 << 20)? as usize,
            rest_body_bytes: get("rest_max_body_bytes", d.rest_body_bytes as u64, 1024, 1 << 32)? as usize,
            rest_idle_timeout_seconds: get("rest_idle_timeout_seconds", d.rest_idle_timeout_seconds, 1, 86_400)?,
            rest_connections: get("rest_max_connections", d.rest_connections as u64, 1, 1 << 20)? as usize,
            mesh_forwarded_steps: get(
                "mesh_max_forwarded_steps",
                d.mesh_forwarded_steps as u64,
                MESH_FORWARDED_STEPS_RANGE.0,
                MESH_FORWARDED_STEPS_RANGE.1,
            )? as usize,
            mesh_forward_wait_ms: get("mesh_forward_wait_ms", d.mesh_forward_wait_ms, 0, MESH_FORWARD_WAIT_MS_MAX)?,
        })
    }

    fn reject_model_flags(&self, with: &str) -> Result<(), ConfigError> {
        const MODEL_FLAGS: &[&str] = &[
            "stateful",
            "sequence_timeout_seconds",
            "max_sequence_number",
            "low_latency_transformation",
            "idle_sequence_cleanup",
            "nireq",
            "max_batch_size",
            "max_queue_delay_us",
            "plugin_config",
            "model_version_policy",
        ];
        match self.flags.iter().find(|(n, _)| MODEL_FLAGS.contains(&n.as_str())) {
            Some((n, _)) => err(format!("--{n} cannot be combined with {with}; set it in config.json")),
            None => Ok(()),
        }
    }

    fn single_model(&mut self, name: String, path: PathBuf) -> Result<ModelConfig, ConfigError> {
        let mut m = ModelConfig::new(name, path);
        m.stateful = self.take_bool("stateful")?.unwrap_or(false);
        let timeout = self.take_num::<u64>("sequence_timeout_seconds")?;
        let max = match self.take_str("max_sequence_number") {
            None => None,
            Some(v) => Some(parse_max_sequence_number(v.parse::<u64>().ok())?),
        };
        let low_latency = self.take_bool("low_latency_transformation")?;
        let cleanup = self.take_bool("idle_sequence_cleanup")?;
        if !m.stateful && (timeout.is_some() || max.is_some() || low_latency.is_some() || cleanup.is_some()) {
            return err(CLI_STATEFUL_ONLY);
        }
        m.sequence_timeout_seconds = timeout.unwrap_or(m.sequence_timeout_seconds);
        m.max_sequence_number = max.unwrap_or(m.max_sequence_number);
        m.low_latency_transformation = low_latency.unwrap_or(false);
        m.idle_sequence_cleanup = cleanup.unwrap_or(true);
        m.nireq = parse_nireq(self.take_num::<u64>("nireq")?)?;
        let batch = self.take_num::<u64>("max_batch_size")?;
        let delay = self.take_num::<u64>("max_queue_delay_us")?;
        set_batching(&mut m, batch, delay).map_err(|e| ConfigError(format!("--{e}")))?;
        if let Some(pc) = self.take_str("plugin_config") {
            let v: Value =
                serde_json::from_str(&pc).map_err(|e| ConfigError(format!("--plugin_config: not valid JSON: {e}")))?;
            m.plugin_config = parse_plugin_config(&v, "--plugin_config")?;
        }
        if let Some(p) = self.take_str("model_version_policy") {
            let v: Value = serde_json::from_str(&p)
                .map_err(|e| ConfigError(format!("--model_version_policy: not valid JSON: {e}")))?;
            m.version_policy = parse_version_policy(&v, "--model_version_policy")?;
        }
        Ok(m)
    }
}

/// Applies `max_batch_size` / `max_queue_delay_us`; the error starts with the key's name.
fn set_batching(m: &mut ModelConfig, batch: Option<u64>, delay: Option<u64>) -> Result<(), String> {
    if let Some(b) = batch {
        if b == 0 || b > u64::from(MAX_BATCH_SIZE_MAX) {
            return Err(format!("max_batch_size must be between 1 and {MAX_BATCH_SIZE_MAX}, not {b}"));
        }
        if b > 1 && !m.stateful {
            return Err("max_batch_size batches the steps of sequences; it needs a stateful model".into());
        }
        m.max_batch_size = b as u32;
    }
    if let Some(d) = delay {
        if d > MAX_QUEUE_DELAY_US_MAX {
            return Err(format!("max_queue_delay_us must be at most {MAX_QUEUE_DELAY_US_MAX}, not {d}"));
        }
        if d > 0 && m.max_batch_size < 2 {
            return Err("max_queue_delay_us needs max_batch_size of 2 or more".into());
        }
        m.max_queue_delay_us = d;
    }
    Ok(())
}

fn parse_max_sequence_number(v: Option<u64>) -> Result<u32, ConfigError> {
    match v.and_then(|v| u32::try_from(v).ok()) {
        Some(n) => Ok(n),
        None => err("Sequence max number parameter too high"),
    }
}

fn parse_nireq(v: Option<u64>) -> Result<u32, ConfigError> {
    match v {
        None | Some(0) => Ok(NIREQ_DEFAULT),
        Some(n) if n <= u64::from(NIREQ_MAX) => Ok(n as u32),
        Some(n) => err(format!("nireq {n} is above the limit of {NIREQ_MAX}")),
    }
}

/// Parses a CPU list such as `0-3,8`.
pub fn parse_cpuset(s: &str) -> Result<Vec<usize>, ConfigError> {
    parse_list("--cpuset", s)
}

/// Parses a list of indexes such as `0-3,8` (sorted, without repeats) for `flag`.
pub fn parse_list(flag: &str, s: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = || ConfigError(format!("{flag}: expected a list like 0-3,8, got {s:?}"));
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => {
                (a.trim().parse::<usize>().map_err(|_| bad())?, b.trim().parse::<usize>().map_err(|_| bad())?)
            }
            None => {
                let c = part.trim().parse::<usize>().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi || hi > 4095 {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Why a configuration file could not be re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reread {
    /// The file cannot be read (missing, unreadable).
    Unreadable(String),
    /// The file is not a valid configuration.
    Invalid(String),
}

impl ServerConfig {
    /// Checks `--state_dir` at start: it is created if missing and must be writable (a file is
    /// made and removed), so a shutdown can write its snapshot there.
    pub fn check_state_dir(&self) -> Result<(), ConfigError> {
        let Some(dir) = &self.state_dir else { return Ok(()) };
        let fail = |e: std::io::Error| ConfigError(format!("--state_dir {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let probe = dir.join(".seqcore-write-probe");
        std::fs::write(&probe, b"probe").map_err(fail)?;
        std::fs::remove_file(&probe).map_err(fail)?;
        Ok(())
    }

    /// The models as the configuration says now, for a reload: the file re-read (with the
    /// server-wide `--resident_memory_mb` applied, as at start), or without a file the models of
    /// the command line.
    pub fn reread_models(&self) -> Result<Vec<ModelConfig>, Reread> {
        let Some(path) = &self.config_path else { return Ok(self.models.clone()) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Reread::Unreadable(format!("{}: cannot read: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut models =
            parse_config_json(&text, dir).map_err(|e| Reread::Invalid(format!("{}: {e}", path.display())))?;
        for m in &mut models {
            m.resident_memory_mb = self.resident_memory_mb;
        }
        Ok(models)
    }
}

/// Loads an OVMS-style config.json. Relative `base_path`s resolve against the file's directory.
pub fn load_config_file(path: &Path) -> Result<Vec<ModelConfig>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse_config_json(&text, dir).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

pub fn parse_config_json(text: &str, dir: &Path) -> Result<Vec<ModelConfig>, ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ConfigError(format!("not valid JSON: {e}")))?;
    let root = root.as_object().ok_or_else(|| ConfigError("the top level must be an object".into()))?;
    for key in root.keys() {
        if key != "model_config_list" {
            return err(format!("unsupported key {key:?} at the top level (seqcore serves model_config_list only)"));
        }
    }
    let list = match root.get("model_config_list") {
        Some(Value::Array(a)) => a,
        Some(_) => return err("model_config_list must be an array"),
        None => return err("model_config_list is missing"),
    };
    let mut models: Vec<ModelConfig> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let obj = item.as_object().filter(|o| o.len() == 1 && o.contains_key("config"));
        let Some(Value::Object(cfg)) = obj.and_then(|o| o.get("config")) else {
            return err(format!("model_config_list[{i}] must be {{\"config\": {{...}}}}"));
        };
        let m = parse_model(cfg, dir).map_err(|e| ConfigError(format!("model_config_list[{i}]: {e}")))?;
        if models.iter().any(|o| o.name == m.name) {
            return err(format!("model {:?} is configured twice", m.name));
        }
        models.push(m);
    }
    if models.is_empty() {
        return err("model_config_list is empty");
    }
    Ok(models)
}

fn parse_model(cfg: &Map<String, Value>, dir: &Path) -> Result<ModelConfig, ConfigError> {
    let name = match cfg.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return err("\"name\" (a non-empty string) is required"),
    };
    let ctx = |msg: String| ConfigError(format!("model {name:?}: {msg}"));
    let base = match cfg.get("base_path") {
        Some(Value::String(s)) if !s.is_empty() => dir.join(s),
        _ => return Err(ctx("\"base_path\" (a non-empty string) is required".into())),
    };
    let mut m = ModelConfig::new(name.clone(), base);
    let get_bool = |k: &str| -> Result<Option<bool>, ConfigError> {
        match cfg.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ctx(format!("{k:?} must be a boolean"))),
        }
    };
    let get_u64 = |k: &str| -> Result<Option<u64>, ConfigError> {
        match cfg.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
            Some(_) => Err(ctx(format!("{k:?} must be a non-negative integer"))),
        }
    };
    for key in cfg.keys() {
        match key.as_str() {
            "name"
            | "base_path"
            | "stateful"
            | "sequence_timeout_seconds"
            | "max_sequence_number"
            | "low_latency_transformation"
            | "idle_sequence_cleanup"
            | "nireq"
            | "max_batch_size"
            | "max_queue_delay_us"
            | "plugin_config"
            | "target_device"
            | "batch_size"
            | "shape"
            | "layout"
            | "model_version_policy" => {}
            _ => return Err(ctx(format!("unknown key {key:?}"))),
        }
    }
    m.stateful = get_bool("stateful")?.unwrap_or(false);
    // Stateful-only options on a stateless model: OVMS's INVALID_NON_STATEFUL_MODEL_PARAMETER.
    for key in
        ["sequence_timeout_seconds", "max_sequence_number", "low_latency_transformation", "idle_sequence_cleanup"]
    {
        if !m.stateful && cfg.contains_key(key) {
            return Err(ctx(format!("{NON_STATEFUL_PARAMETER} ({key})")));
        }
    }
    if let Some(t) = get_u64("sequence_timeout_seconds")? {
        if t == 0 {
            return Err(ctx("\"sequence_timeout_seconds\" must be at least 1".into()));
        }
        m.sequence_timeout_seconds = t;
    }
    if cfg.contains_key("max_sequence_number") {
        let v = match cfg.get("max_sequence_number") {
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            _ => return Err(ctx("\"max_sequence_number\" must be a non-negative integer".into())),
        };
        m.max_sequence_number = parse_max_sequence_number(v).map_err(|e| ctx(e.0))?;
    }
    m.low_latency_transformation = get_bool("low_latency_transformation")?.unwrap_or(false);
    m.idle_sequence_cleanup = get_bool("idle_sequence_cleanup")?.unwrap_or(true);
    m.nireq = parse_nireq(get_u64("nireq")?).map_err(|e| ctx(e.0))?;
    let (batch, delay) = (get_u64("max_batch_size")?, get_u64("max_queue_delay_us")?);
    set_batching(&mut m, batch, delay).map_err(|e| ctx(format!("\"{}", e.replacen(' ', "\" ", 1))))?;
    if let Some(pc) = cfg.get("plugin_config") {
        m.plugin_config = parse_plugin_config(pc, "\"plugin_config\"").map_err(|e| ctx(e.0))?;
    }
    match cfg.get("target_device") {
        None => {}
        Some(Value::String(d)) if d == "CPU" => {}
        Some(v) => return Err(ctx(format!("target_device {v}: seqcore serves on CPU only"))),
    }
    for key in ["batch_size", "shape"] {
        match cfg.get(key) {
            None => {}
            Some(Value::String(s)) if s == "auto" && m.stateful => {
                return Err(ctx("Dynamic shape and dynamic batch size are not supported for stateful models".into()));
            }
            Some(v) => {
                return Err(ctx(format!(
                    "{key:?} = {v}: seqcore serves models with the static shapes of their IR; reshape the IR instead"
                )));
            }
        }
    }
    if let Some(v) = cfg.get("layout") {
        return Err(ctx(format!("\"layout\" = {v}: layout changes are not supported; serve the IR's own layout")));
    }
    if let Some(p) = cfg.get("model_version_policy") {
        m.version_policy = parse_version_policy(p, "\"model_version_policy\"").map_err(|e| ctx(e.0))?;
    }
    Ok(m)
}

/// Parses OVMS's `model_version_policy`: exactly one of its three shapes. The error starts with `what`.
fn parse_version_policy(v: &Value, what: &str) -> Result<VersionPolicy, ConfigError> {
    let bad = |why: &str| {
        // A long list of versions is cut short: the message stays one readable line.
        let text = v.to_string();
        let shown = if text.chars().count() > 100 {
            format!("{}...", text.chars().take(100).collect::<String>())
        } else {
            text
        };
        ConfigError(format!(
            "{what} {shown}: {why}; expected {{\"latest\":{{\"num_versions\":N}}}} (N from 1 to {VERSIONS_MAX}), \
             {{\"all\":{{}}}} or {{\"specific\":{{\"versions\":[1,3]}}}} (1 to {VERSIONS_MAX} distinct versions, each at \
             least 1)"
        ))
    };
    let mut entries = v.as_object().into_iter().flatten();
    let (Some((kind, Value::Object(inner))), None) = (entries.next(), entries.next()) else {
        return Err(bad("must be an object with exactly one policy"));
    };
    match kind.as_str() {
        "latest" => {
            let (Some(n), 1) = (inner.get("num_versions"), inner.len()) else {
                return Err(bad("\"latest\" takes exactly {\"num_versions\":N}"));
            };
            match n.as_u64() {
                Some(n) if (1..=VERSIONS_MAX as u64).contains(&n) => Ok(VersionPolicy::Latest(n as u32)),
                _ => Err(bad(&format!("num_versions must be an integer from 1 to {VERSIONS_MAX}"))),
            }
        }
        "all" if inner.is_empty() => Ok(VersionPolicy::All),
        "all" => Err(bad("\"all\" takes no settings")),
        "specific" => {
            let (Some(Value::Array(list)), 1) = (inner.get("versions"), inner.len()) else {
                return Err(bad("\"specific\" takes exactly {\"versions\":[...]}"));
            };
            if list.is_empty() || list.len() > VERSIONS_MAX {
                return Err(bad(&format!("versions must list 1 to {VERSIONS_MAX} versions")));
            }
            let mut versions = Vec::with_capacity(list.len());
            for x in list {
                match x.as_i64() {
                    Some(n) if n >= 1 => versions.push(n),
                    _ => return Err(bad(&format!("version {x} is not an integer of at least 1"))),
                }
            }
            versions.sort_unstable();
            if let Some(twice) = versions.windows(2).find_map(|w| match w {
                [a, b] if a == b => Some(*a),
                _ => None,
            }) {
                return Err(bad(&format!("version {twice} is listed twice")));
            }
            Ok(VersionPolicy::Specific(versions))
        }
        _ => Err(bad(&format!("unknown policy {kind:?}"))),
    }
}

fn parse_plugin_config(v: &Value, what: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(obj) = v.as_object() else {
        return err(format!("{what} must be a JSON object"));
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => return err(format!("{what}: value of {k:?} must be a string, bool or number")),
        };
        check_precision_hint(k, &s, what)?;
        out.push((k.clone(), s));
    }
    Ok(out)
}

/// Values the CPU plugin of OpenVINO 2026.4.1 accepts for `INFERENCE_PRECISION_HINT` (its own
/// list, "bf16, f16, f32, undefined", plus the "dynamic" spelling and the legacy upper-case
/// names it also parses) and for `EXECUTION_MODE_HINT` (case-sensitive).
const INFERENCE_PRECISIONS: &[&str] = &["f32", "bf16", "f16", "undefined", "dynamic", "FP32", "BF16", "FP16"];
const EXECUTION_MODES: &[&str] = &["PERFORMANCE", "ACCURACY"];

/// The two properties that choose the precision are checked here, so a typo is a
/// configuration error (exit 64) naming the accepted values, not a compile failure on every
/// shard. Other properties are left to OpenVINO, which names the key it rejects.
fn check_precision_hint(key: &str, value: &str, what: &str) -> Result<(), ConfigError> {
    let allowed = match key {
        "INFERENCE_PRECISION_HINT" => INFERENCE_PRECISIONS,
        "EXECUTION_MODE_HINT" => EXECUTION_MODES,
        _ => return Ok(()),
    };
    if allowed.contains(&value) {
        return Ok(());
    }
    err(format!("{what}: {key} {value:?} is not one of {}", allowed.join(", ")))
}

/// A model's IR on disk: the highest numeric version directory under `base_path` and the one
/// `.xml` file in it (OVMS's default "latest" policy). A `.xml` path is served as version 1.
pub fn resolve_model_files(base: &Path) -> Result<(i64, PathBuf), ConfigError> {
    let Some(VersionDir { version, xml }) = scan_versions(base)?.pop() else {
        return err(format!("{}: no numeric version directory (e.g. 1/) found", base.display()));
    };
    xml.map(|xml| (version, xml)).map_err(ConfigError)
}

/// One version directory under a model's base_path.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionDir {
    pub version: i64,
    /// The one `.xml` file of the directory, or why not (a one-line message naming the directory).
    pub xml: Result<PathBuf, String>,
}

/// Every numeric version directory (> 0) under `base`, ascending by version; `xml` is the one .xml
/// file in it, or why not (none / more than one). A `.xml` file as base is version 1. Errors only
/// when `base` itself cannot be read, or holds more than VERSIONS_MAX version directories.
pub fn scan_versions(base: &Path) -> Result<Vec<VersionDir>, ConfigError> {
    if base.extension().is_some_and(|e| e == "xml") && base.is_file() {
        return Ok(vec![VersionDir { version: 1, xml: Ok(base.to_path_buf()) }]);
    }
    let entries = std::fs::read_dir(base)
        .map_err(|e| ConfigError(format!("{}: cannot read model directory: {e}", base.display())))?;
    // Names of digits only (as OVMS reads them); `01` is version 1 too.
    let mut dirs: Vec<(i64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(v) = name.parse::<i64>() else { continue };
        if v > 0 && e.path().is_dir() {
            if dirs.len() == VERSIONS_MAX {
                return err(format!("{}: more than {VERSIONS_MAX} version directories", base.display()));
            }
            dirs.push((v, e.path()));
        }
    }
    dirs.sort();
    let mut out: Vec<VersionDir> = Vec::with_capacity(dirs.len());
    for same in dirs.chunk_by(|a, b| a.0 == b.0) {
        let xml = match same {
            [(_, dir)] => find_xml(dir),
            [(_, a), (_, b), ..] => Err(format!("{} and {} name the same version", a.display(), b.display())),
            [] => continue,
        };
        out.extend(same.first().map(|(version, _)| VersionDir { version: *version, xml }));
    }
    Ok(out)
}

/// The one `.xml` file in a version directory.
fn find_xml(dir: &Path) -> Result<PathBuf, String> {
    let mut xmls: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .take(2)
        .collect();
    match (xmls.pop(), xmls.is_empty()) {
        (Some(xml), true) => Ok(xml),
        (None, _) => Err(format!("{}: no OpenVINO IR (.xml) file", dir.display())),
        (Some(_), false) => {
            Err(format!("{}: more than one .xml file; keep one model per version directory", dir.display()))
        }
    }
}

/// What a reload must do for a model present in both the old and the new config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing for this model (the version policy may still change the served versions; that is
    /// decided from the directories).
    Same,
    /// Only settings that apply to live sequences: max_sequence_number, sequence_timeout_seconds,
    /// idle_sequence_cleanup.
    Live,
    /// Settings that need a new compile of every served version: base_path,
    /// low_latency_transformation, nireq, resident_memory_mb, max_batch_size, max_queue_delay_us,
    /// plugin_config. Carries the names of the changed keys, for the log.
    Recompile(Vec<&'static str>),
    /// Refused, with the message: toggling `stateful` (OVMS's REQUESTED_MODEL_TYPE_CHANGE).
    Refused(String),
}

/// Classifies the difference between a model's old and new config (the names are not compared).
/// A refusal wins over a recompile, and a recompile over live settings (the new instances take
/// them anyway).
pub fn compare(old: &ModelConfig, new: &ModelConfig) -> Change {
    // Exhaustive on purpose: a field added to ModelConfig does not compile here until it is
    // classified.
    let ModelConfig {
        name: _,
        base_path,
        stateful,
        sequence_timeout_seconds,
        max_sequence_number,
        low_latency_transformation,
        idle_sequence_cleanup,
        nireq,
        resident_memory_mb,
        max_batch_size,
        max_queue_delay_us,
        plugin_config,
        version_policy: _,
    } = new;
    if old.stateful != *stateful {
        return Change::Refused(format!("{MODEL_TYPE_CHANGE} (stateful {} -> {stateful})", old.stateful));
    }
    let recompile: Vec<&'static str> = [
        ("base_path", old.base_path != *base_path),
        ("low_latency_transformation", old.low_latency_transformation != *low_latency_transformation),
        ("nireq", old.nireq != *nireq),
        ("resident_memory_mb", old.resident_memory_mb != *resident_memory_mb),
        ("max_batch_size", old.max_batch_size != *max_batch_size),
        ("max_queue_delay_us", old.max_queue_delay_us != *max_queue_delay_us),
        ("plugin_config", old.plugin_config != *plugin_config),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    if !recompile.is_empty() {
        return Change::Recompile(recompile);
    }
    if old.sequence_timeout_seconds != *sequence_timeout_seconds
        || old.max_sequence_number != *max_sequence_number
        || old.idle_sequence_cleanup != *idle_sequence_cleanup
    {
        return Change::Live;
    }
    Change::Same
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<ServerConfig, ConfigError> {
        parse_args(&args(s))
    }

    fn json(s: &str) -> Result<Vec<ModelConfig>, ConfigError> {
        parse_config_json(s, Path::new("/m"))
    }

    #[test]
    fn precision_hints_are_checked() {
        for ok in [
            r#"{"INFERENCE_PRECISION_HINT":"f32"}"#,
            r#"{"INFERENCE_PRECISION_HINT":"bf16"}"#,
            r#"{"EXECUTION_MODE_HINT":"ACCURACY"}"#,
            r#"{"EXECUTION_MODE_HINT":"PERFORMANCE"}"#,
        ] {
            let c = parse_args(&[
                "--model_name".into(),
                "m".into(),
                "--model_path".into(),
                "/x".into(),
                "--plugin_config".into(),
                ok.into(),
            ]);
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        let e = json(
            r#"{"model_config_list":[{"config":{"name":"m","base_path":"/m",
            "plugin_config":{"INFERENCE_PRECISION_HINT":"bfloat16"}}}]}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("INFERENCE_PRECISION_HINT \"bfloat16\" is not one of f32, bf16"), "{}", e.0);
        let e = parse_args(&[
            "--model_name".into(),
            "m".into(),
            "--model_path".into(),
            "/x".into(),
            "--plugin_config".into(),
            r#"{"EXECUTION_MODE_HINT":"accuracy"}"#.into(),
        ])
        .unwrap_err();
        assert!(e.0.contains("EXECUTION_MODE_HINT \"accuracy\" is not one of PERFORMANCE, ACCURACY"), "{}", e.0);
    }

    #[test]
    fn defaults_match_ovms() {
        let c = parse("--model_name m --model_path /x").unwrap();
        let m = &c.models[0];
        assert!(!m.stateful && !m.low_latency_transformation && m.idle_sequence_cleanup);
        assert_eq!(m.max_sequence_number, 500);
        assert_eq!(m.sequence_timeout_seconds, 60);
        assert_eq!(c.port, 9000);
        assert_eq!(c.sequence_cleaner_poll_wait_minutes, 5);
    }

    #[test]
    fn cli_stateful_options_need_stateful() {
        for extra in [
            "--max_sequence_number 5",
            "--low_latency_transformation",
            "--idle_sequence_cleanup false",
            "--sequence_timeout_seconds 3",
        ] {
            let e = parse(&format!("--model_name m --model_path /x {extra}")).unwrap_err();
            assert_eq!(e.0, CLI_STATEFUL_ONLY, "{extra}");
        }
        let c = parse("--model_name m --model_path /x --stateful --max_sequence_number 5 --low_latency_transformation")
            .unwrap();
        assert!(c.models[0].stateful && c.models[0].low_latency_transformation);
        assert_eq!(c.models[0].max_sequence_number, 5);
    }

    #[test]
    fn cli_rejects_unknown_and_duplicate_flags() {
        assert!(parse("--model_name m --model_path /x --bogus 1").unwrap_err().0.contains("--bogus"));
        assert!(parse("--model_name m --model_path /x --port 1 --port 2").unwrap_err().0.contains("twice"));
        assert!(parse("--model_name m --model_path /x --stateful --max_sequence_number 5294967295")
            .unwrap_err()
            .0
            .contains("Sequence max number parameter too high"));
    }

    #[test]
    fn rest_port_and_bind_address() {
        let c = parse("--model_name m --model_path /x").unwrap();
        assert_eq!((c.rest_port, c.rest_bind_address.as_str()), (0, "0.0.0.0"));
        let c = parse("--model_name m --model_path /x --rest_port 8000 --grpc_bind_address 127.0.0.1").unwrap();
        assert_eq!((c.rest_port, c.rest_bind_address.as_str()), (8000, "127.0.0.1"));
        let c = parse("--model_name m --model_path /x --rest_port 8000 --rest_bind_address ::1").unwrap();
        assert_eq!((c.rest_bind_address.as_str(), c.bind_address.as_str()), ("::1", "0.0.0.0"));
        let e = parse("--model_name m --model_path /x --port 8000 --rest_port 8000").unwrap_err();
        assert_eq!(e.0, "--port and --rest_port cannot be the same (8000)");
        assert!(parse("--model_name m --model_path /x --rest_bind_address 127.0.0.1")
            .unwrap_err()
            .0
            .contains("--rest_port"));
        assert!(parse("--model_name m --model_path /x --rest_port x").unwrap_err().0.contains("--rest_port"));
    }

    #[test]
    fn placement_flags() {
        let c = parse("--model_name m --model_path /x").unwrap();
        assert_eq!((&c.numa_nodes, c.smt, &c.cpuset, c.cores), (&None, Smt::Off, &None, None));
        let c = parse("--model_name m --model_path /x --numa_nodes 1,0-1,3 --smt on --cpuset 2-5 --cores 2").unwrap();
        assert_eq!((&c.numa_nodes, c.smt), (&Some(vec![0, 1, 3]), Smt::On));
        assert_eq!((&c.cpuset, c.cores), (&Some(vec![2, 3, 4, 5]), Some(2)));
        assert_eq!(parse("--model_name m --model_path /x --smt=off").unwrap().smt, Smt::Off);
        let e = parse("--model_name m --model_path /x --smt yes").unwrap_err();
        assert_eq!(e.0, "--smt: expected on or off, got \"yes\"");
        let e = parse("--model_name m --model_path /x --numa_nodes 1-a").unwrap_err();
        assert_eq!(e.0, "--numa_nodes: expected a list like 0-3,8, got \"1-a\"");
        assert_eq!(parse("--model_name m --model_path /x --smt").unwrap_err().0, "--smt needs a value");
        assert!(USAGE.contains("--numa_nodes LIST") && USAGE.contains("--smt on|off"));
    }

    #[test]
    fn plan_flags_need_no_model() {
        let c = parse_plan_args(&args("--cores 1 --smt on --numa_nodes 0")).unwrap();
        assert!(c.models.is_empty());
        assert_eq!((c.cores, c.smt, c.numa_nodes), (Some(1), Smt::On, Some(vec![0])));
        assert!(parse("--cores 1").unwrap_err().0.contains("give --config_path"));
        assert!(parse_plan_args(&args("--model_name m")).unwrap_err().0.contains("go together"));
        assert!(parse_plan_args(&args("--smt maybe")).unwrap_err().0.contains("--smt"));
        let c = parse_plan_args(&args("--model_name m --model_path /x")).unwrap();
        assert_eq!(c.models[0].name, "m");
    }

    #[test]
    fn cpuset_lists() {
        assert_eq!(parse_cpuset("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpuset("1").unwrap(), vec![1]);
        assert!(parse_cpuset("3-1").is_err());
        assert!(parse_cpuset("a").is_err());
    }

    #[test]
    fn config_json_applies_stateful_options() {
        let m = json(
            r#"{"model_config_list":[{"config":{"name":"s","base_path":"rel","stateful":true,
            "low_latency_transformation":true,"max_sequence_number":1000,"sequence_timeout_seconds":1}}]}"#,
        )
        .unwrap();
        assert_eq!(m[0].base_path, PathBuf::from("/m/rel"));
        assert!(m[0].low_latency_transformation);
        assert_eq!(m[0].max_sequence_number, 1000);
        assert_eq!(m[0].idle_timeout_ms(true), Some(1000));
        assert_eq!(m[0].idle_timeout_ms(false), None);
    }

    #[test]
    fn compile_per_is_shard_or_numa_node() {
        assert_eq!(parse("--model_name m --model_path /x").unwrap().compile_per, CompilePer::Shard);
        let c = parse("--model_name m --model_path /x --compile_per numa_node").unwrap();
        assert_eq!(c.compile_per, CompilePer::NumaNode);
        let e = parse("--model_name m --model_path /x --compile_per socket").unwrap_err();
        assert_eq!(e.0, "--compile_per: expected shard or numa_node, got \"socket\"");
    }

    #[test]
    fn shard_ports_are_checked_against_the_other_ports() {
        let c = parse("--model_name m --model_path /x --port 9000 --shard_port_base 9001").unwrap();
        assert_eq!(c.shard_port_base, Some(9001));
        assert!(c.check_shard_ports(4).is_ok());
        let c = parse("--model_name m --model_path /x --port 9002 --shard_port_base 9001").unwrap();
        let e = c.check_shard_ports(2).unwrap_err();
        assert_eq!(e.0, "--shard_port_base 9001: the shard ports 9001-9002 include --port 9002");
        assert!(c.check_shard_ports(1).is_ok());
        let c = parse("--model_name m --model_path /x --rest_port 8003 --shard_port_base 8000").unwrap();
        assert!(c.check_shard_ports(4).unwrap_err().0.contains("include --rest_port 8003"));
        let c = parse("--model_name m --model_path /x --shard_port_base 65535").unwrap();
        assert!(c.check_shard_ports(2).unwrap_err().0.contains("past 65535"));
        assert_eq!(parse("--model_name m --model_path /x --shard_port_base 0").unwrap().shard_port_base, None);
    }

    #[test]
    fn batching_options_are_checked() {
        let m = json(
            r#"{"model_config_list":[{"config":{"name":"s","base_path":"x","stateful":true,
            "max_batch_size":8,"max_queue_delay_us":500}}]}"#,
        )
        .unwrap();
        assert_eq!((m[0].max_batch_size, m[0].max_queue_delay_us), (8, 500));
        let c = parse("--model_name m --model_path /x --stateful --max_batch_size 4").unwrap();
        assert_eq!((c.models[0].max_batch_size, c.models[0].max_queue_delay_us), (4, 0));
        for (text, msg) in [
            (r#""stateful":true,"max_batch_size":0"#, "\"max_batch_size\" must be between 1 and 64, not 0"),
            (r#""stateful":true,"max_batch_size":65"#, "\"max_batch_size\" must be between 1 and 64"),
            (r#""max_batch_size":4"#, "\"max_batch_size\" batches the steps of sequences; it needs a stateful model"),
            (r#""stateful":true,"max_queue_delay_us":10"#, "\"max_queue_delay_us\" needs max_batch_size of 2"),
            (r#""stateful":true,"max_batch_size":2,"max_queue_delay_us":100001"#, "must be at most 100000"),
            (r#""stateful":true,"max_batch_size":"2""#, "\"max_batch_size\" must be a non-negative integer"),
        ] {
            let e = json(&format!(r#"{{"model_config_list":[{{"config":{{"name":"d","base_path":"x",{text}}}}}]}}"#))
                .unwrap_err();
            assert!(e.0.contains(msg), "{text}: {e}");
        }
        let e = parse("--model_name m --model_path /x --max_batch_size 4").unwrap_err();
        assert!(e.0.contains("--max_batch_size batches the steps of sequences"), "{e}");
    }

    #[test]
    fn config_json_rejects_stateful_options_on_stateless_models() {
        for key in
            [r#""max_sequence_number":5"#, r#""low_latency_transformation":true"#, r#""idle_sequence_cleanup":true"#]
        {
            for stateful in ["", r#""stateful":false,"#] {
                let text =
                    format!(r#"{{"model_config_list":[{{"config":{{"name":"d","base_path":"x",{stateful}{key}}}}}]}}"#);
                let e = json(&text).unwrap_err();
                assert!(e.0.contains(NON_STATEFUL_PARAMETER), "{text}: {e}");
            }
        }
    }

    #[test]
    fn config_json_names_unknown_keys_and_bad_values() {
        let e = json(r#"{"model_config_list":[{"config":{"name":"d","base_path":"x","colour":1}}]}"#).unwrap_err();
        assert!(e.0.contains("\"colour\""), "{e}");
        let e = json(r#"{"model_config_list":[{"config":{"name":"d","base_path":"x","stateful":true,"max_sequence_number":5294967295}}]}"#).unwrap_err();
        assert!(e.0.contains("Sequence max number parameter too high"), "{e}");
        let e =
            json(r#"{"model_config_list":[{"config":{"name":"d","base_path":"x","stateful":true,"shape":"auto"}}]}"#)
                .unwrap_err();
        assert!(e.0.contains("Dynamic shape and dynamic batch size are not supported for stateful models"), "{e}");
        let e = json(r#"{"model_config_list":[],"pipeline_config_list":[]}"#).unwrap_err();
        assert!(e.0.contains("pipeline_config_list"), "{e}");
        let e =
            json(r#"{"model_config_list":[{"config":{"name":"d","base_path":"x","stateful":"yes"}}]}"#).unwrap_err();
        assert!(e.0.contains("boolean"), "{e}");
    }

    #[test]
    fn tls_flags_go_together() {
        let c = parse("--model_name m --model_path /x").unwrap();
        assert_eq!(c.tls, None);
        let c = parse("--model_name m --model_path /x --ssl_cert c.pem --ssl_key k.pem").unwrap();
        let want = TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
            handshake_timeout_seconds: SSL_HANDSHAKE_TIMEOUT_SECONDS_DEFAULT,
        };
        assert_eq!(c.tls.as_ref(), Some(&want));
        let c = parse(
            "--model_name m --model_path /x --ssl_cert c.pem --ssl_key k.pem --ssl_client_ca ca.pem \
             --ssl_handshake_timeout_seconds 3",
        )
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles { client_ca: Some("ca.pem".into()), handshake_timeout_seconds: 3, ..want.clone() })
        );
        for (flags, msg) in [
            ("--ssl_cert c.pem", "--ssl_cert needs --ssl_key"),
            ("--ssl_key k.pem", "--ssl_key needs --ssl_cert"),
            ("--ssl_client_ca ca.pem", "--ssl_client_ca needs --ssl_cert and --ssl_key"),
            ("--ssl_handshake_timeout_seconds 5", "--ssl_handshake_timeout_seconds needs --ssl_cert"),
            ("--ssl_cert c.pem --ssl_key k.pem --ssl_handshake_timeout_seconds 0", "between 1 and 600"),
            ("--ssl_cert c.pem --ssl_key k.pem --ssl_handshake_timeout_seconds 601", "between 1 and 600"),
            ("--ssl_cert= --ssl_key k.pem", "--ssl_cert: give a file"),
        ] {
            let e = parse(&format!("--model_name m --model_path /x {flags}")).unwrap_err();
            assert!(e.0.contains(msg), "{flags}: {e}");
        }
    }

    #[test]
    fn listener_limits_have_flags_and_ranges() {
        let c = parse("--model_name m --model_path /x").unwrap();
        assert_eq!(c.net, NetLimits::default());
        let c =
            parse("--model_name m --model_path /x --grpc_max_concurrent_streams 10 --rest_max_connections 7").unwrap();
        assert_eq!((c.net.grpc_streams, c.net.grpc_pending_resets, c.net.rest_connections), (10, 20, 7));
        let c =
            parse("--model_name m --model_path /x --grpc_max_pending_resets 5 --rest_idle_timeout_seconds 9").unwrap();
        assert_eq!((c.net.grpc_pending_resets, c.net.rest_idle_timeout_seconds), (5, 9));
        let e = parse("--model_name m --model_path /x --grpc_max_concurrent_streams 0").unwrap_err();
        assert_eq!(e.0, "--grpc_max_concurrent_streams: between 1 and 10000, not 0");
        let c = parse("--model_name m --model_path /x --mesh_max_forwarded_steps 64 --mesh_forward_wait_ms 0").unwrap();
        assert_eq!((c.net.mesh_forwarded_steps, c.net.mesh_forward_wait_ms), (64, 0));
        let e = parse("--model_name m --model_path /x --mesh_max_forwarded_steps 8").unwrap_err();
        assert_eq!(e.0, "--mesh_max_forwarded_steps: between 16 and 16384, not 8");
        let e = parse("--model_name m --model_path /x --mesh_forward_wait_ms 60001").unwrap_err();
        assert_eq!(e.0, "--mesh_forward_wait_ms: between 0 and 60000, not 60001");
        let e = parse("--model_name m --model_path /x --rest_max_header_bytes 10").unwrap_err();
        assert!(e.0.starts_with("--rest_max_header_bytes: between 1024"), "{e}");
        let e = parse("--model_name m --model_path /x --rest_request_timeout_seconds 0").unwrap_err();
        assert!(e.0.contains("--rest_request_timeout_seconds"), "{e}");
        for flag in [
            "--grpc_max_connections",
            "--rest_max_body_bytes",
            "--shutdown_timeout_seconds",
            "--state_dir",
            "--mesh_max_forwarded_steps",
            "--mesh_forward_wait_ms",
        ] {
            assert!(USAGE.contains(flag), "{flag} is in --help");
        }
    }

    #[test]
    fn zero_max_sequence_number_is_accepted() {
        let m = json(r#"{"model_config_list":[{"config":{"name":"s","base_path":"x","stateful":true,"max_sequence_number":0}}]}"#).unwrap();
        assert_eq!(m[0].max_sequence_number, 0);
    }

    fn policy(p: &str) -> Result<VersionPolicy, ConfigError> {
        let text = format!(
            r#"{{"model_config_list":[{{"config":{{"name":"d","base_path":"x","model_version_policy":{p}}}}}]}}"#
        );
        json(&text).map(|m| m[0].version_policy.clone())
    }

    #[test]
    fn version_policies_select_versions() {
        let available = [5, 1, 3, 2];
        assert_eq!(
            json(r#"{"model_config_list":[{"config":{"name":"d","base_path":"x"}}]}"#).unwrap()[0].version_policy,
            VersionPolicy::Latest(1)
        );
        let latest = policy(r#"{"latest":{"num_versions":2}}"#).unwrap();
        assert_eq!(latest, VersionPolicy::Latest(2));
        assert_eq!(latest.select(&available), vec![3, 5]);
        assert_eq!(VersionPolicy::Latest(1).select(&available), vec![5]);
        assert_eq!(VersionPolicy::Latest(9).select(&available), vec![1, 2, 3, 5]);
        assert_eq!(VersionPolicy::Latest(1).select(&[]), Vec::<i64>::new());
        let all = policy(r#"{"all":{}}"#).unwrap();
        assert_eq!(all, VersionPolicy::All);
        assert_eq!(all.select(&available), vec![1, 2, 3, 5]);
        let specific = policy(r#"{"specific":{"versions":[4,1]}}"#).unwrap();
        assert_eq!(specific, VersionPolicy::Specific(vec![1, 4]));
        assert_eq!(specific.select(&available), vec![1]);
        assert_eq!(latest.to_json().to_string(), r#"{"latest":{"num_versions":2}}"#);
        assert_eq!(all.to_json().to_string(), r#"{"all":{}}"#);
        assert_eq!(specific.to_json().to_string(), r#"{"specific":{"versions":[1,4]}}"#);
        assert_eq!(policy(&specific.to_json().to_string()).unwrap(), specific);
    }

    #[test]
    fn bad_version_policies_name_the_key() {
        for (p, why) in [
            (r#"{"latest":{}}"#, r#""latest" takes exactly {"num_versions":N}"#),
            (r#"{"latest":{"num_versions":0}}"#, "num_versions must be an integer from 1 to 1000"),
            (r#"{"latest":{"num_versions":1001}}"#, "num_versions must be an integer from 1 to 1000"),
            (r#"{"latest":{"num_versions":"2"}}"#, "num_versions must be an integer from 1 to 1000"),
            (r#"{"latest":{"num_versions":1,"x":1}}"#, r#""latest" takes exactly {"num_versions":N}"#),
            (r#"{"all":{},"latest":{"num_versions":1}}"#, "must be an object with exactly one policy"),
            (r#"{"all":{"x":1}}"#, r#""all" takes no settings"#),
            (r#"{"all":true}"#, "must be an object with exactly one policy"),
            (r#"{}"#, "must be an object with exactly one policy"),
            (r#""all""#, "must be an object with exactly one policy"),
            (r#"{"specific":{"versions":[]}}"#, "versions must list 1 to 1000 versions"),
            (r#"{"specific":{"versions":[0]}}"#, "version 0 is not an integer of at least 1"),
            (r#"{"specific":{"versions":[1.5]}}"#, "version 1.5 is not an integer of at least 1"),
            (r#"{"specific":{"versions":[3,1,3]}}"#, "version 3 is listed twice"),
            (r#"{"specific":{}}"#, r#""specific" takes exactly {"versions":[...]}"#),
            (r#"{"newest":{}}"#, r#"unknown policy "newest""#),
        ] {
            let e = policy(p).unwrap_err();
            assert!(
                e.0.contains(&format!(r#"model "d": "model_version_policy" {p}: {why}; expected {{"latest""#)),
                "{p}: {e}"
            );
            assert!(e.0.contains(r#"{"all":{}} or {"specific":{"versions":[1,3]}}"#) && !e.0.contains('\n'), "{e}");
        }
        let many = format!(
            r#"{{"specific":{{"versions":[{}]}}}}"#,
            (1..=1001).map(|v| v.to_string()).collect::<Vec<_>>().join(",")
        );
        let e = policy(&many).unwrap_err();
        assert!(e.0.contains("...: versions must list 1 to 1000 versions") && e.0.len() < 400, "{e}");
    }

    #[test]
    fn cli_model_version_policy() {
        let c = parse(r#"--model_name m --model_path /x --model_version_policy {"all":{}}"#).unwrap();
        assert_eq!(c.models[0].version_policy, VersionPolicy::All);
        assert_eq!(parse("--model_name m --model_path /x").unwrap().models[0].version_policy, VersionPolicy::Latest(1));
        let e = parse(r#"--model_name m --model_path /x --model_version_policy {"latest":{"num_versions":0}}"#)
            .unwrap_err();
        assert!(
            e.0.starts_with(r#"--model_version_policy {"latest":{"num_versions":0}}: num_versions must be"#),
            "{e}"
        );
        let e = parse("--model_name m --model_path /x --model_version_policy latest").unwrap_err();
        assert!(e.0.starts_with("--model_version_policy: not valid JSON"), "{e}");
        let e = parse_args(&[
            "--config_path".into(),
            "/nonexistent/config.json".into(),
            "--model_version_policy".into(),
            r#"{"all":{}}"#.into(),
        ])
        .unwrap_err();
        assert_eq!(e.0, "--model_version_policy cannot be combined with --config_path; set it in config.json");
        assert!(USAGE.contains("--model_version_policy JSON"));
    }

    #[test]
    fn scan_versions_reads_the_version_directories() {
        let base = std::env::temp_dir().join(format!("seqcore-scan-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for d in ["1", "2", "3", "abc", "0"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        for f in ["1/m.xml", "1/m.bin", "2/a.xml", "2/b.xml", "3/m.bin", "abc/m.xml", "0/m.xml", "4"] {
            std::fs::write(base.join(f), b"").unwrap();
        }
        let found = scan_versions(&base);
        let resolved = resolve_model_files(&base);
        let single = scan_versions(&base.join("1/m.xml"));
        let missing = scan_versions(&base.join("nope"));
        std::fs::create_dir_all(base.join("01")).unwrap();
        let twice = scan_versions(&base);
        let empty = base.join("abc");
        let none = resolve_model_files(&empty);
        std::fs::remove_dir_all(&base).unwrap();

        let found = found.unwrap();
        assert_eq!(found.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(found[0].xml, Ok(base.join("1/m.xml")));
        assert_eq!(
            found[1].xml,
            Err(format!("{}: more than one .xml file; keep one model per version directory", base.join("2").display()))
        );
        assert_eq!(found[2].xml, Err(format!("{}: no OpenVINO IR (.xml) file", base.join("3").display())));
        let e = resolved.unwrap_err();
        assert_eq!(e.0, format!("{}: no OpenVINO IR (.xml) file", base.join("3").display()));
        assert_eq!(single.unwrap(), vec![VersionDir { version: 1, xml: Ok(base.join("1/m.xml")) }]);
        assert!(missing.unwrap_err().0.contains("nope: cannot read model directory"));
        let twice = twice.unwrap();
        assert_eq!(twice.len(), 3);
        assert_eq!(
            twice[0].xml,
            Err(format!("{} and {} name the same version", base.join("01").display(), base.join("1").display()))
        );
        assert_eq!(none.unwrap_err().0, format!("{}: no numeric version directory (e.g. 1/) found", empty.display()));
    }

    #[test]
    fn scan_versions_is_bounded() {
        let base = std::env::temp_dir().join(format!("seqcore-scan-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for v in 1..=VERSIONS_MAX + 1 {
            std::fs::create_dir_all(base.join(v.to_string())).unwrap();
        }
        let e = scan_versions(&base);
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(e.unwrap_err().0, format!("{}: more than 1000 version directories", base.display()));
    }

    #[test]
    fn server_reload_flags() {
        let c = parse("--model_name m --model_path /x").unwrap();
        assert_eq!((c.file_system_poll_wait_seconds, &c.config_path), (1, &None));
        assert_eq!(
            parse("--model_name m --model_path /x --file_system_poll_wait_seconds 0")
                .unwrap()
                .file_system_poll_wait_seconds,
            0
        );
        let e = parse("--model_name m --model_path /x --file_system_poll_wait_seconds 86401").unwrap_err();
        assert_eq!(e.0, "--file_system_poll_wait_seconds: at most 86400");
        let e = parse("--model_name m --model_path /x --file_system_poll_wait_seconds soon").unwrap_err();
        assert_eq!(e.0, "--file_system_poll_wait_seconds: not a valid number: \"soon\"");
        let c = parse_plan_args(&args("--file_system_poll_wait_seconds 7")).unwrap();
        assert_eq!((c.file_system_poll_wait_seconds, c.models.len()), (7, 0));
        assert!(USAGE.contains("--file_system_poll_wait_seconds N"));

        let dir = std::env::temp_dir().join(format!("seqcore-config-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(&file, r#"{"model_config_list":[{"config":{"name":"d","base_path":"m"}}]}"#).unwrap();
        let c = parse_args(&["--config_path".into(), file.display().to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
        let c = c.unwrap();
        assert_eq!((c.config_path, c.models[0].base_path.clone()), (Some(file), dir.join("m")));
    }

    #[test]
    fn compare_classifies_each_field() {
        let mut old = ModelConfig::new("m".into(), "/a".into());
        old.stateful = true;
        assert_eq!(compare(&old, &old.clone()), Change::Same);
        let changed = |f: &dyn Fn(&mut ModelConfig)| {
            let mut new = old.clone();
            f(&mut new);
            compare(&old, &new)
        };
        assert_eq!(changed(&|m| m.version_policy = VersionPolicy::All), Change::Same);
        assert_eq!(changed(&|m| m.max_sequence_number = 7), Change::Live);
        assert_eq!(changed(&|m| m.sequence_timeout_seconds = 7), Change::Live);
        assert_eq!(changed(&|m| m.idle_sequence_cleanup = false), Change::Live);
        assert_eq!(changed(&|m| m.base_path = "/b".into()), Change::Recompile(vec!["base_path"]));
        assert_eq!(
            changed(&|m| m.low_latency_transformation = true),
            Change::Recompile(vec!["low_latency_transformation"])
        );
        assert_eq!(changed(&|m| m.nireq = 8), Change::Recompile(vec!["nireq"]));
        assert_eq!(changed(&|m| m.resident_memory_mb = 8), Change::Recompile(vec!["resident_memory_mb"]));
        assert_eq!(changed(&|m| m.max_batch_size = 8), Change::Recompile(vec!["max_batch_size"]));
        assert_eq!(changed(&|m| m.max_queue_delay_us = 8), Change::Recompile(vec!["max_queue_delay_us"]));
        assert_eq!(
            changed(&|m| m.plugin_config = vec![("NUM_STREAMS".into(), "2".into())]),
            Change::Recompile(vec!["plugin_config"])
        );
        assert_eq!(
            changed(&|m| {
                m.nireq = 8;
                m.max_sequence_number = 7;
                m.base_path = "/b".into();
            }),
            Change::Recompile(vec!["base_path", "nireq"])
        );
        let refused =
            Change::Refused("Model type cannot be changed after it is loaded (stateful true -> false)".into());
        assert_eq!(
            changed(&|m| {
                m.stateful = false;
                m.nireq = 8;
            }),
            refused
        );
        let stateless = ModelConfig::new("m".into(), "/a".into());
        assert!(matches!(compare(&stateless, &old), Change::Refused(e) if e.contains("stateful false -> true")));
    }
}
