//! The `baker-mq` binary: parses the command line and runs the chosen role.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use baker_mq::cli::{Cli, Command, LogFormat};
use baker_mq::config::Config;
use baker_mq::{adapters::AdapterRegistry, demo, directory, shutdown, sidecar, status};
use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

// The message path allocates small, short-lived buffers at a high rate;
// mimalloc serves those faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let (filter, format) = config.logging();
    let quiet_demo = matches!(cli.command, Some(Command::Demo { .. })) && !config.log_given();
    init_logging(if quiet_demo { "error" } else { &filter }, format)?;
    match &cli.command {
        None => {
            let settings = sidecar_settings(&config)?;
            let prometheus = install_metrics()?;
            sidecar::run(settings, Some(prometheus)).await?;
        }
        Some(Command::Directory { .. }) => {
            let settings = config.resolve(&AdapterRegistry::builtin())?;
            let shutdown = shutdown::Shutdown::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                shutdown::signal().await;
                stop.trigger();
            });
            directory::server::bind_and_serve(settings.listen, settings.directory_rules, shutdown)
                .await
                .with_context(|| format!("serving the directory on {}", settings.listen))?;
        }
        Some(Command::Drain {
            instance,
            admin,
            timeout_secs,
        }) => {
            let addr = admin.unwrap_or_else(|| config.admin());
            let token = config.admin_token()?;
            baker_mq::drain::run(
                addr,
                instance.as_deref(),
                std::time::Duration::from_secs(*timeout_secs),
                token.as_ref(),
            )
            .await?;
        }
        Some(Command::Status { admin, json }) => {
            let addr = admin.unwrap_or_else(|| config.admin());
            let doc = status::fetch(addr).await?;
            if *json {
                print_out(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
            } else {
                print_out(&status::render(&doc))?;
            }
        }
        Some(Command::Demo {
            rate,
            phase_secs,
            adapter,
            broker,
        }) => {
            install_metrics()?;
            let phase = std::time::Duration::try_from_secs_f64(*phase_secs)
                .ok()
                .filter(|p| (0.2..=60.0).contains(&p.as_secs_f64()))
                .context("--phase-secs must be between 0.2 and 60")?;
            demo::run(demo::DemoOptions {
                rate: *rate,
                phase,
                adapter: adapter.clone(),
                broker: broker.clone(),
            })
            .await?;
        }
        Some(Command::Token {
            name,
            services,
            no_read,
        }) => {
            let token = baker_mq::directory::auth::new_secret()?;
            let grant = baker_mq::directory::auth::TokenGrant {
                name: name.clone(),
                sha256: baker_mq::directory::auth::digest_hex(&token),
                services: services.clone(),
                read: !no_read,
            };
            baker_mq::directory::auth::DirectoryAuth::new(std::slice::from_ref(&grant), false)
                .map_err(|reason| anyhow::anyhow!("{reason}"))?;
            println!("{token}");
            eprintln!(
                "# the directory's entry (config file of baker-mq directory):\n{}",
                grant.to_toml()
            );
        }
        Some(Command::Validate) => {
            let settings = sidecar_settings(&config)?;
            print_out(&describe(&settings))?;
        }
        Some(Command::Schemas { dir }) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in baker_mq::schemas::all() {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// The sidecar's settings, checked as a start would check them.
fn sidecar_settings(config: &Config) -> anyhow::Result<baker_mq::config::Settings> {
    let settings = config.resolve(&AdapterRegistry::builtin())?;
    if settings.directory_rules.tls.is_some() {
        anyhow::bail!(
            "key `directory_tls_cert_file`: a sidecar serves the directory only for itself, on \
             loopback, over HTTP; give the certificate to `baker-mq directory`, and the sidecars \
             --directory https://HOST:PORT"
        );
    }
    Ok(settings)
}

/// What a sidecar with `settings` would run, for `baker-mq validate`.
fn describe(settings: &baker_mq::config::Settings) -> String {
    let mut text = String::from("configuration OK\n");
    if settings.router {
        text.push_str(&format!(
            "router: {} ingress on {} (prefix {}, queue group {})\n",
            settings.adapter,
            baker_adapter_api::redact_url(&settings.broker),
            settings.ingress.prefix,
            settings.ingress.queue_group
        ));
    }
    for registered in &settings.registrations {
        let record = &registered.record;
        text.push_str(&format!(
            "registers {}/{}: {} {} {}\n",
            record.service,
            record.id,
            record.endpoint.adapter,
            record.endpoint.broker,
            record.endpoint.inbox
        ));
    }
    text.push_str(&format!("directory: {}\n", settings.directory.url()));
    text.push_str(&format!("admin API: {}\n", settings.admin.0));
    text
}

/// Writes `text` to standard output; a reader that went away (`| head`) is
/// not an error.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn main() -> ExitCode {
    match start(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baker-mq: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the configuration, then runs the chosen role on a runtime of the
/// configured size.
fn start(cli: Cli) -> anyhow::Result<()> {
    // One rustls crypto provider for every client, before any TLS config.
    baker_adapter_api::tls::install_crypto_provider();
    let mut options = cli.options.clone();
    if let Some(Command::Directory { listen: Some(addr) }) = &cli.command {
        options.listen = Some(*addr);
    }
    let config = Config::load(options, cli.config.as_deref())?;
    let ca_file = config.http_ca_file()?;
    baker_mq::http_tls::configure(ca_file.as_deref())?;
    let threads = config.worker_threads()?;
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(cli, config))
}
