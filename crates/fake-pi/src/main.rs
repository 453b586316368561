//! The `fake-pi` executable: [`fake_pi::run`] on the process's stdio, exiting with its code.
//!
//! The program name is ignored, so a symlink named `pi` works as a drop-in for `pi --mode rpc …`.

fn main() {
    let opts = fake_pi::Options::from_args(std::env::args().skip(1));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-pi: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(fake_pi::run(
        tokio::io::stdin(),
        tokio::io::stdout(),
        tokio::io::stderr(),
        opts,
    ));
    std::process::exit(code);
}
