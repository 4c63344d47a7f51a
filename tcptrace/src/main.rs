//! The `tcptrace` binary: parse the command line, run the command, report errors plainly.

use clap::Parser;
use tcptrace::{
    app,
    cli::{Cli, Command},
};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Trace(a) => app::trace::run(a).await,
            Command::Top(a) => app::top::run(a).await,
            Command::Report(a) => app::report::run(a).await,
            Command::Record(a) => app::record::run(a).await,
            Command::Serve(a) => app::serve::run(a).await,
            Command::Diagnose(a) => app::diagnose::run(a).await,
        }
    });
    if let Err(e) = result {
        // A closed pipe (`tcptrace trace | head`) is how a reader says "enough".
        if e.downcast_ref::<std::io::Error>().map(|io| io.kind())
            == Some(std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(0);
        }
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("tcptrace: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::exit(1);
}
