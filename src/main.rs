//! The `refract` command: run the gateway, or check a config file.

use clap::{Parser, Subcommand};

/// mimalloc keeps freed memory for reuse: per-request buffers of a few hundred KiB do not go
/// back to the kernel (and fault in again) on every request, as they do with glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

/// refract: an image-edit AI gateway (OpenAI/Bifrost-compatible /v1/images/edits) on Pingora.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The gateway's YAML config file (reference: conf/refract.yaml).
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// Take over the listening sockets of a running refract (graceful upgrade: start the new
    /// binary with --upgrade, then send SIGQUIT to the old one). Needs server.upgrade_sock.
    #[arg(short = 'u', long)]
    upgrade: bool,

    /// Run in the background (needs server.pid_file).
    #[arg(short = 'd', long)]
    daemon: bool,

    /// Also reload the config file when its content changes, checked every MS milliseconds
    /// (default 1000); SIGHUP reloads it either way.
    #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "1000")]
    watch: Option<u64>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file: prints every problem with its YAML path and exits 1 if there
    /// is any, or prints "ok" and exits 0.
    Check {
        /// Print the config as it will run instead of "ok": YAML with every default filled in
        /// and every secret redacted (`env.NAME` secrets as `<redacted: env.NAME>`).
        #[arg(long)]
        print: bool,
    },
    /// Without -c: print what each provider kind and model family supports, as a Markdown
    /// table (docs/providers.md's table is this output). With -c FILE: print the providers that
    /// file configures (name, kind, base URL, models, key count, fallbacks...; never a key).
    Providers {
        /// Print JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Off until the config says whether the simulator runs here (see the function's docs).
    refract::server::transparent_huge_pages(false);
    let cli = Cli::parse();
    if let (Some(Command::Providers { json }), None) = (&cli.command, &cli.config) {
        return if *json {
            write_stdout(&format!("{:#}\n", refract::providers::capabilities::json_rows()))
        } else {
            write_stdout(&refract::providers::capabilities::markdown_table())
        };
    }
    let Some(path) = cli.config else {
        eprintln!("refract: a config file is required: refract -c FILE (see conf/refract.yaml), or refract --help");
        return ExitCode::from(2);
    };
    let (config, hash) = match refract::config::load_path_hashed(&path) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.0.len());
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            return ExitCode::from(1);
        }
    };
    if let Some(Command::Providers { json }) = cli.command {
        return if json {
            write_stdout(&format!("{:#}\n", refract::config::providers_summary(&config)))
        } else {
            write_stdout(&refract::config::providers_table(&config))
        };
    }
    if let Some(Command::Check { print }) = cli.command {
        if print {
            return print_effective(&path, &config);
        }
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    refract::server::transparent_huge_pages(config.simulator.is_none());
    let telemetry = match refract::telemetry::init(&config.log, config.tracing.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("refract: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.daemon && config.tracing.is_some() {
        log::warn!("tracing: spans are not exported with --daemon (the exporter's threads do not survive the fork); run in the foreground (systemd) to export them");
    }
    refract::telemetry::Summary::of(&config).log();
    let opt = pingora::server::configuration::Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Default::default()
    };
    // SIGHUP (and with --watch, a change) reloads the file (see refract::server::reload).
    let file = refract::server::ConfigFile {
        path,
        sha256: hash,
        watch: cli.watch.map(|ms| std::time::Duration::from_millis(ms.max(10))),
    };
    let code = match refract::server::build_from_file(config, file, Some(opt)) {
        Ok(server) => {
            refract::server::run(server);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refract: {e}");
            ExitCode::from(1)
        }
    };
    // The spans not exported yet go out before the process exits.
    telemetry.shutdown();
    code
}

/// `refract check --print`: the config as it will run, secrets redacted, on stdout.
fn print_effective(path: &std::path::Path, config: &refract::config::Config) -> ExitCode {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match refract::config::effective_yaml(config, &text) {
        Ok(yaml) => write_stdout(&yaml),
        Err(e) => {
            eprintln!("refract: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes a command's output to stdout. A reader that went away (`refract providers | head`)
/// is not an error; any other write error is reported and exits 1 (where `print!` panics).
fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refract: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}
