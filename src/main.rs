fn main() -> std::process::ExitCode {
    repocrypt::cli::main()
}
