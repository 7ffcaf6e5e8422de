//! `vantage-agent`: see [`vantage_agent::cli`].

fn main() -> std::process::ExitCode {
    vantage_agent::cli::main(std::env::args_os(), &vantage_support::env::ProcessEnv)
}
