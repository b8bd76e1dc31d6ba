//! The `dhcp-hive-mind` command: parses the command line, sets up logging, and calls the
//! library. Failures end in one clean line on stderr and a non-zero exit.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use dhcp_hive_mind::config::Config;
use dhcp_hive_mind::node::Node;
use dhcp_hive_mind::{lease, metrics, transport};

#[derive(Parser)]
#[command(
    name = "dhcp-hive-mind",
    version,
    about = "A DHCPv4 server of many stateless nodes sharing Redis"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "HIVE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// The config file.
        #[arg(long, short, env = "HIVE_CONFIG", default_value = "config/config.json")]
        config: PathBuf,
    },
    /// Validate a config file (and the environment overrides): exit 0 if good, 1 with the
    /// problem if not.
    CheckConfig {
        /// The config file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { path } => check_config(&path),
        Command::Serve { config } => serve(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dhcp-hive-mind: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    config.apply_env(|k| std::env::var(k).ok())?;
    Ok(config)
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    println!(
        "{}: ok ({} subnet{}, port {}, redis {})",
        path.display(),
        config.subnets.len(),
        if config.subnets.len() == 1 { "" } else { "s" },
        config.port,
        redact(&config.redis)
    );
    Ok(())
}

/// The Redis URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    metrics::describe();
    let interface = transport::resolve_interface(&config.interface)
        .with_context(|| format!("{}: interface", config.file.display()))?;
    let node_name = config.node_name();
    let store = lease::connect(&config.redis, &node_name)
        .with_context(|| format!("{}: redis", config.file.display()))?;
    let port = config.port;
    let socket = transport::bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        Some(&interface.name),
    )?;
    let node = Arc::new(Node::new(config, store, Some(&interface))?);
    info!(
        node = %node_name,
        interface = %interface.name,
        port,
        server_id = %node.server_id(),
        subnets = node.config().subnets.len(),
        redis = %redact(&node.config().redis),
        recv_buffer = transport::recv_buffer(&socket),
        "node starting"
    );
    for s in &node.config().subnets {
        info!(subnet = %s.net, pool = %format!("{}-{}", s.dyn_start, s.dyn_end), lease_time = s.lease_time, "subnet");
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    Arc::clone(&node).run(vec![socket], shutdown).await;
    signals.abort();
    node.store().quit().await;
    info!("node stopped");
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful stop; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("stopping: finishing messages in flight");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    warn!("second signal: exiting now");
    std::process::exit(1);
}
