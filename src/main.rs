//! The `dhcp-hive-mind` command: parses the command line, sets up logging, and calls the
//! library. Failures end in one clean line on stderr and a non-zero exit.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use dhcp_hive_mind::admin::{self, ListFilter};
use dhcp_hive_mind::config::Config;
use dhcp_hive_mind::lease::{self, Filter, ImportOutcome, Pool, RedisStore};
use dhcp_hive_mind::node::Node;
use dhcp_hive_mind::{import, metrics, transport};

/// mimalloc: a node allocates a few short-lived buffers per datagram on every worker thread;
/// glibc's malloc spent ~9 % of a node's CPU on them (perf), mimalloc's thread-local pages less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(Args)]
struct ConfigArg {
    /// The config file.
    #[arg(long, short, env = "HIVE_CONFIG", default_value = "config/config.json")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(ConfigArg),
    /// Validate a config file (and the environment overrides): exit 0 if good, 1 with the
    /// problem if not.
    CheckConfig {
        /// The config file.
        path: PathBuf,
    },
    /// Check a node's readiness over HTTP (for container health checks): exit 0 when ready.
    Probe {
        /// The URL to get.
        #[arg(long, default_value = "http://127.0.0.1:9067/readyz")]
        url: String,
    },
    /// Look at or release leases, reading Redis directly.
    Leases {
        #[command(subcommand)]
        command: LeasesCommand,
    },
    /// Show every subnet with its utilisation.
    Subnets {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LeasesCommand {
    /// List leases in address order.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this subnet (CIDR as configured).
        #[arg(long)]
        subnet: Option<String>,
        /// Only this MAC address.
        #[arg(long)]
        mac: Option<String>,
        /// Only this hostname.
        #[arg(long)]
        hostname: Option<String>,
        /// Only this state: bound, offered or declined.
        #[arg(long)]
        state: Option<String>,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one lease.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        ip: Ipv4Addr,
        #[arg(long)]
        json: bool,
    },
    /// Release a lease, whoever holds it (the address becomes free at once).
    Release {
        #[command(flatten)]
        config: ConfigArg,
        ip: Ipv4Addr,
    },
    /// Import the leases of a Kea server from its memfile lease files (kea-leases4.csv.2, if
    /// there is one, then kea-leases4.csv): each live lease of a configured pool becomes the
    /// hive's, unless Redis has a record of the address already.
    ImportKea(ImportArgs),
    /// Import the leases of an ISC dhcpd server from its lease file, dhcpd.leases (it holds
    /// every lease since dhcpd last rewrote it), as `import-kea` does.
    ImportDhcpd(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The lease files, oldest first (a later entry of an address replaces an earlier one).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Say what would be imported, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { path } => check_config(&path),
        Command::Serve(c) => runtime().and_then(|rt| rt.block_on(serve(&c.config))),
        Command::Probe { url } => runtime().and_then(|rt| rt.block_on(probe(&url))),
        Command::Leases { command } => runtime().and_then(|rt| rt.block_on(leases(command))),
        Command::Subnets { config, json } => {
            runtime().and_then(|rt| rt.block_on(subnets(&config.config, json)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `head` closed the pipe: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dhcp-hive-mind: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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

fn load(path: &Path) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    config.apply_env(|k| std::env::var(k).ok())?;
    Ok(config)
}

fn check_config(path: &Path) -> anyhow::Result<()> {
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

async fn serve(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let recorder = admin::install_recorder()?;
    let interface = transport::resolve_interface(&config.interface)
        .with_context(|| format!("{}: interface", config.file.display()))?;
    let node_name = config.node_name();
    let store = lease::connect(&config, &node_name)
        .with_context(|| format!("{}: redis", config.file.display()))?;
    let port = config.port;
    let http = config.http_listen;
    let socket = transport::bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        Some(&interface.name),
    )?;
    let node = Arc::new(Node::new(config, store, Some(&interface))?);
    let recv_buffer = transport::recv_buffer(&socket);
    if recv_buffer < transport::RECV_BUFFER {
        // A short buffer overflows in a burst (a power cut that brings a building back at
        // once), and the kernel drops what does not fit before the node sees it.
        warn!(
            recv_buffer,
            wanted = transport::RECV_BUFFER,
            "UDP receive buffer capped by the kernel: raise net.core.rmem_max (sysctl) or grant \
             CAP_NET_ADMIN, or bursts are dropped"
        );
    }
    let rt = node.runtime();
    info!(
        node = %node_name,
        interface = %interface.name,
        addresses = ?interface.addrs,
        port,
        server_id = %rt.server_id,
        redis = %redact(&rt.config.redis),
        http = ?http,
        recv_buffer,
        authoritative = rt.config.authoritative,
        offer_time = rt.config.offer_time,
        "node starting"
    );
    for s in &rt.config.subnets {
        info!(
            subnet = %s.net,
            pool = %format!("{}-{}", s.dyn_start, s.dyn_end),
            lease_time = s.lease_time,
            reservations = s.reservations.len(),
            "subnet"
        );
    }
    drop(rt);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = http {
        let router = admin::router(Arc::clone(&node), Some(recorder));
        let listener = admin::bind(addr).await?;
        tasks.spawn(admin::serve(listener, router, shutdown.clone()));
    }
    tokio::spawn(admin::pool_gauges(Arc::clone(&node), shutdown.clone()));
    tokio::spawn(watch_signals(
        Arc::clone(&node),
        path.to_owned(),
        shutdown.clone(),
    ));
    Arc::clone(&node).run(vec![socket], shutdown).await;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            warn!(error = %e, "admin HTTP");
        }
    }
    node.store().quit().await;
    info!("node stopped");
    Ok(())
}

/// SIGHUP reloads the config; SIGTERM or SIGINT starts a graceful stop, and a second one exits
/// at once.
async fn watch_signals(node: Arc<Node<RedisStore>>, path: PathBuf, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&node, &path).await,
        }
    }
    info!("stopping: finishing messages in flight");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    warn!("second signal: exiting now");
    std::process::exit(1);
}

async fn reload(node: &Node<RedisStore>, path: &Path) {
    let outcome = match load(path) {
        Ok(config) => node.reload(config).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    metrics::config_reload(outcome.is_ok());
    if let Err(e) = outcome {
        error!(error = %format!("{e:#}"), version = node.runtime().version, "reload refused; the running config stays");
    }
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("probe: only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let fetch = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let text = tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .context("probe: timed out")?
        .with_context(|| format!("probe: {url}"))?;
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        bail!("probe: {url}: HTTP {status} {body}")
    }
}

/// A store and the pools of `path`'s config, for the CLI; waits for Redis up to 5 s.
async fn open(path: &Path) -> anyhow::Result<(Config, RedisStore, Vec<Pool>)> {
    let config = load(path)?;
    let store = lease::connect(&config, &format!("cli-{}", std::process::id()))?;
    if !store.wait_connected(Duration::from_secs(5)).await {
        bail!("cannot reach Redis at {}", redact(&config.redis));
    }
    store.load_scripts().await?;
    let pools = config
        .subnets
        .iter()
        .map(|s| Pool::new(&config, s))
        .collect();
    Ok((config, store, pools))
}

async fn leases(command: LeasesCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        LeasesCommand::List {
            config,
            subnet,
            mac,
            hostname,
            state,
            json,
        } => {
            let (_, store, pools) = open(&config.config).await?;
            let mut q = ListFilter {
                subnet,
                filter: Filter {
                    state,
                    mac: mac.map(|m| m.to_ascii_lowercase().replace('-', ":")),
                    hostname,
                },
                cursor: None,
                limit: 1000,
            };
            if json {
                write!(out, "[")?;
            } else {
                writeln!(
                    out,
                    "{:<15} {:<17} {:<8} {:>8} {:<18} {:<10} hostname",
                    "client_ip", "client_mac", "state", "left_s", "subnet", "node"
                )?;
            }
            let mut first = true;
            loop {
                let (rows, next) = admin::list(&store, &pools, &q).await?;
                for r in rows {
                    if json {
                        write!(
                            out,
                            "{}{}",
                            if first { "" } else { "," },
                            serde_json::to_string(&r)?
                        )?;
                    } else {
                        writeln!(
                            out,
                            "{:<15} {:<17} {:<8} {:>8} {:<18} {:<10} {}",
                            r.client_ip,
                            r.client_mac,
                            r.state,
                            r.lease_time,
                            r.subnet,
                            r.node,
                            r.hostname
                        )?;
                    }
                    first = false;
                }
                match next {
                    Some(c) => q.cursor = Some(c),
                    None => break,
                }
            }
            if json {
                writeln!(out, "]")?;
            }
        }
        LeasesCommand::Show { config, ip, json } => {
            let (config, store, pools) = open(&config.config).await?;
            let pool = admin::pool_for(&pools, &config.subnets, ip)
                .with_context(|| format!("{ip} is in no configured subnet"))?;
            let Some(r) = store.lease(pool, ip).await? else {
                bail!("no lease for {ip}");
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for (k, v) in serde_json::to_value(&r)?.as_object().into_iter().flatten() {
                    writeln!(
                        out,
                        "{k:<12} {}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    )?;
                }
            }
        }
        LeasesCommand::Release { config, ip } => {
            let (config, store, pools) = open(&config.config).await?;
            let pool = admin::pool_for(&pools, &config.subnets, ip)
                .with_context(|| format!("{ip} is in no configured subnet"))?;
            if !store.force_release(pool, ip).await? {
                bail!("no lease for {ip}");
            }
            writeln!(out, "released {ip}")?;
        }
        LeasesCommand::ImportKea(args) => import_leases(&args, import::read_kea_csv).await?,
        LeasesCommand::ImportDhcpd(args) => {
            import_leases(&args, import::read_dhcpd_leases).await?;
        }
    }
    Ok(())
}

/// `leases import-kea` and `import-dhcpd`: the lease files read by `read` (all of them before
/// anything is written), then one line for each live lease not imported, and a count of each
/// outcome. `--dry-run`: the same report, with nothing written.
async fn import_leases(
    args: &ImportArgs,
    read: fn(&str, u64) -> Result<import::Leases, String>,
) -> anyhow::Result<()> {
    let dry_run = args.dry_run;
    let now = lease::unix_ms(std::time::SystemTime::now());
    let mut leases = import::Leases::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        // A later file's entry of an address replaces an earlier one's, as within a file.
        leases.extend(read(&text, now).map_err(|e| anyhow!("{}: {e}", file.display()))?);
    }
    let (config, store, pools) = open(&args.config.config).await?;
    let mut out = std::io::stdout().lock();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (ip, lease) in &leases {
        let what = match lease {
            Err(skip) => skip.as_str(),
            Ok(lease) => {
                let what = match admin::pool_for(&pools, &config.subnets, *ip) {
                    None => "outside every subnet",
                    Some(pool) if !pool.serves(*ip) => "outside the pool",
                    Some(pool) => match store.import(pool, lease, dry_run).await? {
                        ImportOutcome::Imported => "imported",
                        ImportOutcome::Held => "held already",
                        ImportOutcome::Taken(Some(state)) if state == "declined" => {
                            "declined in the hive"
                        }
                        ImportOutcome::Taken(Some(_)) => "held by another client",
                        ImportOutcome::Taken(None) => "reserved for another client",
                    },
                };
                if what != "imported" && what != "held already" {
                    writeln!(out, "{ip} {} not imported: {what}", lease.mac)?;
                }
                what
            }
        };
        *counts.entry(what).or_default() += 1;
    }
    let rest: Vec<String> = counts
        .iter()
        .filter(|(what, _)| **what != "imported")
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    writeln!(
        out,
        "{} {} of {} leases{}{}",
        if dry_run { "would import" } else { "imported" },
        counts.get("imported").copied().unwrap_or(0),
        leases.len(),
        if rest.is_empty() { "" } else { "; " },
        rest.join(", ")
    )?;
    Ok(())
}

async fn subnets(path: &Path, json: bool) -> anyhow::Result<()> {
    let (config, store, pools) = open(path).await?;
    let views = admin::subnet_views(&store, &pools, &config.subnets, &config.classes).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<31} {:>7} {:>7} {:>7} {:>8} {:>6}  network",
        "subnet", "pool", "size", "in_use", "offered", "declined", "used%"
    )?;
    for v in views {
        writeln!(
            out,
            "{:<18} {:<31} {:>7} {:>7} {:>7} {:>8} {:>5.1}%  {}",
            v.subnet,
            format!("{}-{}", v.dyn_start, v.dyn_end),
            v.stats.size,
            v.stats.in_use,
            v.stats.offered,
            v.stats.declined,
            v.utilisation * 100.0,
            v.shared_network.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
