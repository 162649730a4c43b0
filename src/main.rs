use seqcore::config::{self, EXIT_USAGE};
use seqcore::plan::{self, PlanRequest};
use seqcore::topology::Machine;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `seqcore tune ...` checks and tunes the machine (src/tune.rs); `seqcore plan ...` prints the
    // placement plan (src/plan.rs); anything else is the server.
    if args.first().is_some_and(|a| a == "tune") {
        std::process::exit(seqcore::tune::main(&args[1..]));
    }
    if args.first().is_some_and(|a| a == "plan") {
        std::process::exit(plan::main(&args[1..]));
    }
    let config = match config::parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seqcore: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    // The affinity mask is read here, before any thread pins itself; a plan that cannot be made
    // is a configuration error (exit 64), before OpenVINO is loaded.
    let machine = match Machine::read() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("seqcore: {e}");
            std::process::exit(1);
        }
    };
    let plan = match plan::plan(&machine, &PlanRequest::from_config(&config)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("seqcore: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Err(e) = config.check_state_dir() {
        eprintln!("seqcore: {e}");
        std::process::exit(EXIT_USAGE);
    }
    if let Err(e) = config.check_shard_ports(plan.shards.len()) {
        eprintln!("seqcore: {e}");
        std::process::exit(EXIT_USAGE);
    }
    // TLS files are read and checked once, here, before any shard starts (exit 64 if unusable).
    let tls = match config.tls.as_ref().map(seqcore::tls::Material::load).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("seqcore: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Err(e) = seqcore::server::run(config, plan, tls) {
        eprintln!("seqcore: {e}");
        std::process::exit(1);
    }
}
