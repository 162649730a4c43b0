use seqcore::config::{self, EXIT_USAGE};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
