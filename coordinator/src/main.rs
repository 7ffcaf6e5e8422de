//! `vantage`: see [`vantage::cli`].

fn main() -> std::process::ExitCode {
    vantage::cli::main(std::env::args_os(), &vantage_support::env::ProcessEnv)
}
