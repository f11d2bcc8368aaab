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
/// It reads the nova.conf of a compute host (pass it with --config-file, several
/// times to layer files: later files override earlier ones, as with oslo.config).
#[derive(Parser)]
#[command(name = "nova-docker", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the compute service: consume Nova's compute RPC for this host, register
    /// the host with nova-conductor and Placement, and run instances as containers.
    /// Exits 0 after a graceful shutdown on SIGTERM or SIGINT.
    Serve {
        /// A nova.conf-style file; repeat to layer files (later ones win).
        #[arg(long = "config-file", required = true)]
        config_files: Vec<PathBuf>,
    },
    /// Check RabbitMQ, nova-conductor, Placement, Glance, Neutron and Docker:
    /// reachability, credentials and privileges. Exits non-zero on any failure.
    Check {
        #[arg(long = "config-file", required = true)]
        config_files: Vec<PathBuf>,
    },
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
        #[arg(long = "config-file", required = true)]
        config_files: Vec<PathBuf>,
    },
    /// Glance image GLANCE_ID streamed into `docker load`, to pre-seed this host.
    Fetch {
        glance_id: String,
        #[arg(long = "config-file", required = true)]
        config_files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the sample configuration (etc/nova-docker.conf.sample).
    Sample,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nova-docker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nova-docker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config_files } => {
            let settings = nova_docker::config::Settings::load(&config_files)?;
            nova_docker::logging::init(settings.debug, settings.log_json);
            let launch = nova_docker::service::Launch { config_files, force_debug: false };
            nova_docker::service::serve(settings, launch).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config_files } => {
            let settings = nova_docker::config::Settings::load(&config_files)?;
            let ok = nova_docker::check::run(&settings).await;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Image(ImageCommand::Import { image, name, visibility, properties, config_files }) => {
            let settings = nova_docker::config::Settings::load(&config_files)?;
            nova_docker::logging::init(settings.debug, false);
            let id = nova_docker::image::cli::import(&settings, &image, name, visibility, &properties).await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(ImageCommand::Fetch { glance_id, config_files }) => {
            let settings = nova_docker::config::Settings::load(&config_files)?;
            nova_docker::logging::init(settings.debug, false);
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
