//! The `sfu-server` binary: `run` (the default) serves; `token` mints a join
//! token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use sfu_server::auth::{self, Grants};
use sfu_server::config::{Config, LogFormat, Overrides};

/// Voice SFU server.
///
/// Settings come from built-in defaults, then the --config TOML file, then
/// SFU_* environment variables, then these flags.
#[derive(Parser)]
#[command(name = "sfu-server", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Mint a join token (a JWT signed with HS256) and print it.
    Token(TokenArgs),
    /// List a fleet's nodes (region, role, load, addresses) and which node
    /// is each channel's core, from the fleet's Redis.
    Fleet(FleetArgs),
}

#[derive(Args)]
struct FleetArgs {
    /// The fleet's Redis (redis://host:port/db).
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "SFU_REDIS_URL",
        hide_env_values = true
    )]
    redis_url: String,
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// UDP media address (default 127.0.0.1:0, any free port); worker w
    /// binds its port + w.
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// Media workers, each an OS thread with its own engine and UDP port
    /// (default: one per core; one on a core or edge node).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Pin worker w to core w.
    #[arg(long)]
    pin_workers: bool,
    /// HS256 secret for join tokens; without one the server runs in
    /// development mode (loopback clients only). Prefer SFU_AUTH_SECRET or
    /// the config file: command lines are visible to other local users.
    #[arg(long, value_name = "S")]
    auth_secret: Option<String>,
    /// Allow binding beyond loopback without an auth secret.
    #[arg(long)]
    insecure: bool,
    /// Receive slots per listener (1 to 32, default 3).
    #[arg(long, value_name = "N")]
    slots: Option<usize>,
    /// Hall mode: listeners get 40 ms packets (half the packets, ~30%
    /// fewer bytes, +20 ms latency).
    #[arg(long)]
    hall_mode: bool,
    /// A channel spreads over the workers once its first worker carries
    /// this many of its members (0, the default: never).
    #[arg(long, value_name = "N")]
    spread_after: Option<usize>,
    /// Log filter (tracing EnvFilter directive, default "info"); RUST_LOG
    /// wins when set.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log lines as text (default) or JSON, one object per line.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// PEM certificate chain: serve HTTPS and WSS on the HTTP address
    /// (with --tls-key; SIGHUP re-reads both files).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Check a configuration file (with the SFU_* environment) and exit:
    /// prints "ok" (exit 0) or the key at fault and why (exit 2).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Place in a cluster: standalone (default), core or edge.
    #[arg(long, value_name = "ROLE")]
    role: Option<sfu_server::config::NodeRole>,
    /// This node's number in its cluster, 0 to 4095, distinct for every
    /// node (required for core and edge).
    #[arg(long, value_name = "N")]
    node_id: Option<u16>,
    /// (core) QUIC address edges dial (default 127.0.0.1:7000).
    #[arg(long, value_name = "ADDR")]
    cluster_listen: Option<SocketAddr>,
    /// (edge) a core to dial; repeat for standbys, primary first.
    #[arg(long = "cluster-core", value_name = "ADDR")]
    cluster_cores: Vec<SocketAddr>,
    /// Secret shared by the nodes of a cluster. Prefer SFU_CLUSTER_SECRET.
    #[arg(long, value_name = "S")]
    cluster_secret: Option<String>,
    /// The fleet's Redis (redis://host:port/db): register this node there.
    /// A password in the URL: prefer SFU_REDIS_URL.
    #[arg(long = "redis", value_name = "URL")]
    redis_url: Option<String>,
    /// This node's region in the fleet (default "default").
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// (fleet) Past this many members at its core, a channel's joiners
    /// from other regions go to an edge in theirs (0: never, the default).
    #[arg(long, value_name = "N")]
    edge_after: Option<usize>,
    /// A request header a trusted load balancer sets to the client's
    /// region (e.g. X-Region).
    #[arg(long, value_name = "NAME")]
    region_header: Option<String>,
    /// Hybrid channels: small groups talk peer-to-peer, larger ones
    /// through the SFU (docs/HYBRID.md).
    #[arg(long)]
    hybrid: bool,
    /// (hybrid) Most members of a peer-to-peer channel (default 7).
    #[arg(long, value_name = "N")]
    p2p_max: Option<usize>,
}

#[derive(Args)]
struct TokenArgs {
    /// The server's auth secret.
    #[arg(
        long,
        value_name = "S",
        env = "SFU_AUTH_SECRET",
        hide_env_values = true
    )]
    secret: String,
    /// Identity of the member (the `sub` claim).
    #[arg(long, value_name = "ID")]
    identity: String,
    /// The channel the token admits to (`*` = any).
    #[arg(long, value_name = "CH")]
    channel: String,
    /// May join as speaker / WHIP-publish.
    #[arg(long)]
    publish: bool,
    /// May hear others / WHEP-listen.
    #[arg(long)]
    subscribe: bool,
    /// May server-mute others and change their role.
    #[arg(long)]
    moderate: bool,
    /// Lifetime in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    ttl: u64,
    /// The member's region (a fleet places by it; wins over the load
    /// balancer's header).
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// (hybrid) Keep the member on the SFU: its channel is never
    /// peer-to-peer while it is in it (the claim `p2p: false`).
    #[arg(long)]
    no_p2p: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Fleet(args)) => fleet_status(args),
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
    }
}

/// Prints an error and returns exit code 2 (usage / configuration error).
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sfu-server: {message}");
    ExitCode::from(2)
}

fn fleet_status(args: FleetArgs) -> ExitCode {
    use sfu_server::fleet::{Keys, RedisFleet};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage_error(e),
    };
    let read = rt.block_on(async {
        let fleet = RedisFleet::connect(
            &args.redis_url,
            Keys::new(sfu_server::server::FLEET_KEYS),
            std::time::Duration::from_secs(5),
        )
        .await?;
        Ok::<_, sfu_server::fleet::FleetError>((fleet.nodes().await?, fleet.leases().await?))
    });
    let (nodes, leases) = match read {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sfu-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{:>5}  {:<12} {:<9} {:>8} {:>8} {:>6}  {:<8} url / media / cluster",
        "node", "region", "role", "members", "channels", "cpu", "state"
    );
    for n in &nodes {
        let role = match (n.core, n.edge) {
            (true, true) => "core+edge",
            (true, false) => "core",
            (false, true) => "edge",
            (false, false) => "-",
        };
        let media: Vec<String> = n.media.iter().map(ToString::to_string).collect();
        let cluster = n.cluster.map(|c| format!(" {c}")).unwrap_or_default();
        println!(
            "{:>5}  {:<12} {:<9} {:>8} {:>8} {:>6.2}  {:<8} {} {}{cluster}",
            n.id,
            n.region,
            role,
            n.members,
            n.channels,
            n.cpu,
            if n.draining { "draining" } else { "serving" },
            n.url,
            media.join(",")
        );
    }
    println!(
        "{} node(s); {} channel(s) with a core:",
        nodes.len(),
        leases.len()
    );
    for (channel, lease) in &leases {
        println!("  {channel}: node {} (epoch {})", lease.node, lease.epoch);
    }
    ExitCode::SUCCESS
}

fn token(args: TokenArgs) -> ExitCode {
    if args.secret.is_empty() {
        return usage_error("the secret is empty (--secret or SFU_AUTH_SECRET)");
    }
    if args.secret.len() < sfu_server::config::MIN_SECRET_BYTES {
        return usage_error(format_args!(
            "the secret is {} bytes; the server refuses auth secrets shorter than {} bytes: \
             generate one with `head -c 32 /dev/urandom | base64`",
            args.secret.len(),
            sfu_server::config::MIN_SECRET_BYTES
        ));
    }
    if args.identity.is_empty() {
        return usage_error("--identity is empty");
    }
    if args.channel.is_empty() {
        return usage_error("--channel is empty");
    }
    if args.ttl == 0 {
        return usage_error("--ttl must be at least 1 second");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let grants = Grants {
        sub: args.identity,
        channel: args.channel,
        can_publish: args.publish,
        can_subscribe: args.subscribe,
        can_moderate: args.moderate,
        exp: now.saturating_add(args.ttl),
        jti: None,
        region: args.region,
        p2p: args.no_p2p.then_some(false),
    };
    if grants
        .region
        .as_deref()
        .is_some_and(|r| !sfu_server::config::is_region(r))
    {
        return usage_error("--region: 1 to 64 letters, digits, '-', '_' or '.'");
    }
    println!("{}", auth::mint(args.secret.as_bytes(), &grants));
    ExitCode::SUCCESS
}

fn run(args: RunArgs) -> ExitCode {
    if let Some(file) = &args.check_config {
        return match sfu_server::config_check::check(file, &|k| std::env::var(k).ok()) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(problem) => usage_error(format_args!("{}: {problem}", file.display())),
        };
    }
    let overrides = Overrides {
        http: args.http,
        udp: args.udp,
        workers: args.workers,
        pin_workers: args.pin_workers,
        auth_secret: args.auth_secret,
        insecure: args.insecure,
        slots: args.slots,
        hall_mode: args.hall_mode,
        spread_after: args.spread_after,
        log: args.log,
        role: args.role,
        node_id: args.node_id,
        cluster_listen: args.cluster_listen,
        cluster_cores: args.cluster_cores,
        cluster_secret: args.cluster_secret,
        redis_url: args.redis_url,
        region: args.region,
        edge_after: args.edge_after,
        region_header: args.region_header,
        hybrid: args.hybrid,
        p2p_max: args.p2p_max,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        log_format: args.log_format,
    };
    let config = match Config::load(
        args.config.as_deref(),
        &|k| std::env::var(k).ok(),
        &overrides,
    ) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = config.validate() {
        return usage_error(e);
    }

    let rust_log = std::env::var("RUST_LOG").ok();
    match sfu_server::logging::filter(rust_log.as_deref(), &config.log) {
        Ok(filter) => sfu_server::logging::init(filter, config.log_format),
        Err(message) => return usage_error(message),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sfu-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP: the same file, environment and flags, loaded again.
    let file = args.config.clone();
    let reload: sfu_server::server::Reload =
        Box::new(move || Config::load(file.as_deref(), &|k| std::env::var(k).ok(), &overrides));
    let result = runtime.block_on(sfu_server::server::serve_with_reload(config, Some(reload)));
    // The drain has finished: nothing left is worth waiting for (idle HTTP
    // keep-alive connections would otherwise hold the exit).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("sfu-server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default() {
        let cli =
            Cli::try_parse_from(["sfu-server", "--http", "127.0.0.1:1", "--insecure"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.http, Some("127.0.0.1:1".parse().unwrap()));
        assert!(cli.run.insecure);
        let cli = Cli::try_parse_from(["sfu-server", "run", "--slots", "4"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Run(args)) if args.slots == Some(4)
        ));
    }
}
