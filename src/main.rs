//! `nova-docker`: the command line.
//!
//! - `serve`: run as the nova-compute service of this host;
//! - `check`: test every dependency and say plainly what is wrong;
//! - `image import` / `image fetch`: move `docker save` archives into and out of Glance;
//! - `config sample`: print every option with its default and help.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A nova-compute that runs OpenStack Nova instances as Docker containers.
///
/// It reads the nova.conf of a compute host, as oslo services do: --config-file
/// (repeatable, later files win) and --config-dir (its *.conf files in name
/// order), anywhere on the command line, in the order given; with neither,
/// /etc/nova/nova.conf then /etc/nova/nova-docker.conf, those that exist.
#[derive(Parser)]
#[command(name = "nova-docker", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A nova.conf-style file; repeat to layer files (later ones win).
    #[arg(long = "config-file", global = true, value_name = "PATH")]
    config_files: Vec<PathBuf>,
    /// A directory whose *.conf files are read in name order, where it stands
    /// among the --config-file options.
    #[arg(long = "config-dir", global = true, value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Log at debug level, whatever [DEFAULT] debug says.
    #[arg(long, global = true)]
    debug: bool,
    /// Append the log to this file instead of stderr.
    #[arg(long = "log-file", global = true, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the compute service: consume Nova's compute RPC for this host, register
    /// the host with nova-conductor and Placement, and run instances as containers.
    /// Exits 0 after a graceful shutdown on SIGTERM or SIGINT.
    Serve,
    /// Check RabbitMQ, nova-conductor, Placement, Glance, Neutron and Docker:
    /// reachability, credentials and privileges. Exits non-zero on any failure.
    Check,
    /// Move images between Docker and Glance.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// `docker save IMAGE`, streamed into a new Glance image (container_format
    /// docker, disk_format raw). Prints progress on a terminal and, last, the
    /// Glance image id.
    Import {
        /// Docker image reference (name:tag or id).
        image: String,
        /// Glance image name (default: the Docker reference).
        #[arg(long)]
        name: Option<String>,
        /// Glance visibility: public, private, shared or community.
        #[arg(long)]
        visibility: Option<String>,
        /// Image property key=value (repeatable), e.g. os_command_line="sleep 1d".
        #[arg(long = "property")]
        properties: Vec<String>,
        /// Do not set hypervisor_type=docker on the image (set by default, so
        /// that Nova's ImagePropertiesFilter keeps it off libvirt hosts).
        #[arg(long = "no-hypervisor-type")]
        no_hypervisor_type: bool,
    },
    /// Glance image GLANCE_ID streamed into `docker load`, to pre-seed this host.
    Fetch { glance_id: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the sample configuration (etc/nova-docker.conf.sample).
    Sample,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config_files = match nova_docker::cli::config_files(&matches) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("nova-docker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nova-docker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, config_files));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nova-docker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config_files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let load = || -> anyhow::Result<nova_docker::config::Settings> {
        if config_files.is_empty() {
            anyhow::bail!("no configuration file: pass --config-file or --config-dir, or create /etc/nova/nova.conf");
        }
        Ok(nova_docker::config::Settings::load(&config_files)?)
    };
    // The service logs as [DEFAULT] says (--log-file and --debug win); the
    // one-shot commands log to stderr (or --log-file) as text.
    let service_log = |settings: &nova_docker::config::Settings| {
        let file = match &cli.log_file {
            Some(f) => nova_docker::logging::log_file_path(Some(f), settings.log_dir.as_deref()),
            None => settings.log_file.clone(),
        };
        nova_docker::logging::init(&nova_docker::logging::LogSettings {
            debug: settings.debug || cli.debug,
            json: settings.log_json,
            file,
            journal: settings.use_journal,
        })
    };
    let log = |settings: &nova_docker::config::Settings| {
        nova_docker::logging::init(&nova_docker::logging::LogSettings {
            debug: settings.debug || cli.debug,
            json: false,
            file: cli.log_file.clone(),
            journal: false,
        })
    };
    match cli.command {
        Command::Serve => {
            let settings = load()?;
            service_log(&settings)?;
            tracing::debug!(files = ?config_files, "configuration files read");
            let launch = nova_docker::service::Launch { config_files, force_debug: cli.debug };
            nova_docker::service::serve(settings, launch).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let settings = load()?;
            let ok = nova_docker::check::run(&settings).await;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Image(ImageCommand::Import { image, name, visibility, properties, no_hypervisor_type }) => {
            let settings = load()?;
            log(&settings)?;
            let id =
                nova_docker::image::cli::import(&settings, &image, name, visibility, &properties, !no_hypervisor_type)
                    .await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Fetch { glance_id }) => {
            let settings = load()?;
            log(&settings)?;
            let loaded = nova_docker::image::cli::fetch(&settings, &glance_id).await?;
            println!("{loaded}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Sample) => {
            print!("{}", nova_docker::config::options::sample());
            Ok(ExitCode::SUCCESS)
        }
    }
}
