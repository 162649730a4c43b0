use seqcore::config::{self, EXIT_USAGE};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `seqcore tune ...` checks and tunes the machine (src/tune.rs); anything else is the server.
    if args.first().is_some_and(|a| a == "tune") {
        std::process::exit(seqcore::tune::main(&args[1..]));
    }
    let config = match config::parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seqcore: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Err(e) = seqcore::server::run(config) {
        eprintln!("seqcore: {e}");
        std::process::exit(1);
    }
}
