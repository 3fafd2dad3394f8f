//! The `portico` command line.

use clap::{Args, Parser, Subcommand};
use portico::server::StartMode;
use portico::{control, demo, observe, runtime, server};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/portico/portico.yaml";

/// Portico, an API gateway on Cloudflare's Pingora.
///
/// Routes HTTP requests by host, path, method and headers to pools of upstream services,
/// balancing them and checking their health; authenticates, rate-limits, caches and
/// transforms on the way, all from one YAML file.
#[derive(Parser, Debug)]
#[command(name = "portico", version, args_conflicts_with_subcommands = true)]
#[command(
    after_help = "Start here: `portico demo`, then `portico check -c FILE` on your own config."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, portico runs the gateway with these options.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate a config exactly as `run` would build it; print OK or every fault.
    ///
    /// Faults are printed one per line as FILE:LINE: YAML.PATH: message. Exit status is 0
    /// when the config is good and 1 when it is not.
    Check(ConfigArg),
    /// Start three example services and the gateway in front of them, then print commands
    /// to try.
    Demo(DemoArgs),
    /// Check the config, then tell the running gateway to reload it (SIGHUP). If this
    /// binary's file was replaced since the gateway started, upgrade it instead: this is
    /// what systemd's ExecReload runs.
    Reload(ControlArgs),
    /// Check the config, then replace the running gateway with a new process of this
    /// binary without closing a listener (Pingora's socket hand-over); the old process
    /// drains its in-flight requests.
    Upgrade(ControlArgs),
    /// Make a new API key (or take one) and print the SHA-256 digest that goes under
    /// `consumers[].api_keys`; the config never holds keys themselves.
    HashKey(HashKeyArgs),
    /// Check the config, then list the routes it makes (hand-written and from OpenAPI
    /// documents): name, methods, hosts, path, upstream, policies.
    Routes(ConfigArg),
    /// Check the config, then show what the gateway would do with a request, without
    /// sending anything anywhere: its canonical form, every route and why it matches or
    /// not, the chosen route, the policies that would run and what each needs, the
    /// upstream and target, the cache key.
    Explain(ExplainArgs),
    /// Print the JSON Schema of the config file (the one shipped as
    /// conf/portico.schema.json), for editors that complete and check YAML with it.
    Schema,
}

#[derive(Args, Debug)]
struct ExplainArgs {
    /// The YAML config file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    conf: PathBuf,
    /// The request: `METHOD URL`, e.g. 'GET https://api.example.com/v1/users/7'.
    request: String,
    /// A request header, `Name: value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// The client's address, for address rules and hash keys.
    #[arg(long, default_value = "127.0.0.1")]
    client: std::net::IpAddr,
    /// Print JSON (as the admin's POST /explain answers) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct HashKeyArgs {
    /// An existing key to hash; `-` reads it from standard input. Without it a new random
    /// key is made.
    key: Option<String>,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// The YAML config file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    conf: PathBuf,
    /// The running gateway's pid (default: read from server.pid_file).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Args, Debug)]
struct ConfigArg {
    /// The YAML config file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    conf: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The YAML config file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    conf: PathBuf,
    /// Fork into the background (writes server.pid_file).
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running portico through server.upgrade_sock,
    /// for a binary upgrade without downtime: start the new binary with -u, then send
    /// SIGQUIT to the old one.
    #[arg(short, long)]
    upgrade: bool,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Use this config instead of the built-in conf/demo.yaml.
    #[arg(short, long, value_name = "FILE")]
    conf: Option<PathBuf>,
    /// Listen on ports the OS has free instead of those in the config (8080, 9101-9105).
    #[arg(long)]
    free_ports: bool,
}

fn run(args: RunArgs) -> ExitCode {
    let rt = match runtime::load(&args.conf) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = observe::logger::init(&rt.server.log_level, rt.server.error_log.as_deref()) {
        eprintln!("cannot open the error log: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(target) = &rt.access_log {
        if let Err(e) = observe::access_log::LazyAccessLog::check(target) {
            eprintln!("cannot open the access log {target}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mode = StartMode {
        upgrade: args.upgrade,
        daemon: args.daemon,
    };
    log::info!(
        "portico {} starting: {} routes, {} upstreams, listening on {:?}",
        env!("CARGO_PKG_VERSION"),
        rt.routes.len(),
        rt.upstreams.len(),
        rt.listeners()
    );
    for w in rt.warnings() {
        log::warn!("{w}");
    }
    server::build(rt, Some(args.conf.clone()), mode, Vec::new()).run()
}

fn check(args: ConfigArg) -> ExitCode {
    match runtime::load(&args.conf) {
        Ok(rt) => {
            println!(
                "OK: {} routes, {} upstreams, {} listeners",
                rt.routes.len(),
                rt.upstreams.len(),
                rt.listener_specs.len()
            );
            for w in rt.warnings() {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    let (file, text) = match &args.conf {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => (path.display().to_string(), t),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => ("conf/demo.yaml".to_string(), demo::DEMO_YAML.to_string()),
    };
    let d = match demo::prepare(&file, &text, args.free_ports) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = observe::logger::init(&d.runtime.server.log_level, None) {
        eprintln!("cannot start logging: {e}");
    }
    // A closed stdout (`portico demo | head`) must not stop the demo.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        demo::instructions(
            &d.gateway,
            d.https.as_deref(),
            d.admin.as_ref(),
            d.tokens.as_ref()
        )
    );
    server::build(d.runtime, None, StartMode::default(), d.services).run()
}

fn control(args: ControlArgs, force_upgrade: bool) -> ExitCode {
    let rt = match runtime::load(&args.conf) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}\nnothing changed: the running gateway keeps its config");
            return ExitCode::FAILURE;
        }
    };
    let result = control::running_pid(args.pid, &rt).and_then(|pid| {
        if force_upgrade || control::runs_older_binary(pid) {
            control::upgrade(&args.conf, pid, &rt)
                .map(|new| format!("upgraded: process {new} serves; {pid} drains and exits"))
        } else {
            control::reload(pid).map(|()| format!("reload requested from process {pid}"))
        }
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key(args: HashKeyArgs) -> ExitCode {
    let key = match args.key.as_deref() {
        Some("-") => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("cannot read the key from stdin: {e}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        Some(k) => k.to_string(),
        None => {
            let mut bytes = [0u8; 24];
            if let Err(e) = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            {
                eprintln!("cannot read random bytes: {e}");
                return ExitCode::FAILURE;
            }
            format!("pk_{}", hex::encode(bytes))
        }
    };
    if key.is_empty() {
        eprintln!("the key is empty");
        return ExitCode::FAILURE;
    }
    if args.key.is_none() {
        println!("key:    {key}");
    }
    println!("sha256: {}", portico::policy::auth::api_key::hash_key(&key));
    ExitCode::SUCCESS
}

fn routes(args: ConfigArg) -> ExitCode {
    // Only a config that builds has a route table worth reading.
    if let Err(e) = runtime::load(&args.conf) {
        println!("{e}");
        return ExitCode::FAILURE;
    }
    let file = args.conf.display().to_string();
    let parsed = std::fs::read_to_string(&args.conf)
        .map_err(|e| e.to_string())
        .and_then(|text| portico::config::parse(&file, &text).map_err(|e| e.to_string()));
    match parsed {
        Ok(p) => {
            let generated = portico::route::openapi::expand(&p.config, &mut Vec::new());
            print!("{}", portico::route::listing::table(&p.config, &generated));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    let rt = match runtime::load(&args.conf) {
        Ok(rt) => rt,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let req = match portico::explain::request(&args.request, &args.headers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let e = portico::explain::explain(&rt, req, Some(args.client));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).unwrap_or_else(|e| e.to_string())
        );
    } else {
        print!("{}", portico::explain::render(&e));
    }
    ExitCode::SUCCESS
}

fn schema() -> ExitCode {
    match serde_json::to_string_pretty(&portico::config::json_schema::document()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the schema: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(a)) => run(a),
        Some(Command::Check(a)) => check(a),
        Some(Command::Demo(a)) => demo(a),
        Some(Command::Reload(a)) => control(a, false),
        Some(Command::Upgrade(a)) => control(a, true),
        Some(Command::HashKey(a)) => hash_key(a),
        Some(Command::Schema) => schema(),
        Some(Command::Routes(a)) => routes(a),
        Some(Command::Explain(a)) => explain(a),
    }
}

/// jemalloc: it returns freed memory to the OS (glibc kept nearly all the memory of closed
/// connections) and costs less per allocation; measured in benches/load/run.sh.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread hands freed pages back to
/// the OS within about a second, even while the gateway is idle (by default jemalloc only
/// purges when it is allocating).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
