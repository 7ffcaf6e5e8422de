//! How the CLI finds and talks to a coordinator: `--coordinator` /
//! `VANTAGE_COORDINATOR`, else the endpoint file in the data dir
//! (`--data-dir` / `VANTAGE_DATA_DIR` / `./vantage-data`); the CA and the
//! admin credential come from the data dir (or `VANTAGE_CA_FILE` /
//! `VANTAGE_ADMIN_TOKEN`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use vantage_proto::pb::control_service_client::ControlServiceClient;
use vantage_support::env::Env;
use vantage_support::tls::{ca_client_config, TlsConnector};

use crate::server::{Endpoint, ADMIN_TOKEN_FILE, CA_FILE, ENDPOINT_FILE};

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "vantage-data";

/// Where the coordinator is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// The coordinator CA, PEM.
    pub ca_pem: String,
    /// The admin credential.
    pub admin_token: String,
}

/// The data dir from the flag, the environment, or the default.
pub fn data_dir(flag: Option<PathBuf>, env: &dyn Env) -> PathBuf {
    flag.or_else(|| env.var("VANTAGE_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The `--database` of `serve`, from the flag or `VANTAGE_DATABASE`, parsed
/// (so a bad URL fails before anything is opened or bound); `None` is the
/// default, SQLite in the data dir.
pub fn database(
    flag: Option<String>,
    env: &dyn Env,
) -> anyhow::Result<Option<crate::store::Database>> {
    let (text, source) = match flag {
        Some(text) => (text, "--database"),
        None => match env.var("VANTAGE_DATABASE") {
            Some(text) => (text, "VANTAGE_DATABASE"),
            None => return Ok(None),
        },
    };
    crate::store::Database::parse(&text)
        .map(Some)
        .with_context(|| format!("{source}: cannot use {text:?}"))
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} {}: is this the coordinator's data dir? (set --data-dir or VANTAGE_DATA_DIR)",
            path.display()
        )
    })
}

impl Target {
    /// Resolves the target as DESIGN §6 describes.
    pub fn discover(
        coordinator: Option<String>,
        data_dir: &Path,
        env: &dyn Env,
    ) -> anyhow::Result<Target> {
        let addr = match coordinator.or_else(|| env.var("VANTAGE_COORDINATOR")) {
            Some(url) => {
                let trimmed = url
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
                vantage_support::addr::split_host_port(&trimmed)
                    .with_context(|| format!("--coordinator {url:?}"))?;
                trimmed
            }
            None => {
                let path = data_dir.join(ENDPOINT_FILE);
                let text = read(&path, "coordinator endpoint file").context(
                    "no coordinator found (start `vantage serve`, or pass --coordinator)",
                )?;
                let endpoint: Endpoint = serde_json::from_str(&text)
                    .with_context(|| format!("{} is damaged", path.display()))?;
                endpoint.grpc
            }
        };
        let ca_pem = match env.var("VANTAGE_CA_FILE") {
            Some(path) => read(Path::new(&path), "CA certificate (VANTAGE_CA_FILE)")?,
            None => read(&data_dir.join(CA_FILE), "coordinator CA certificate")?,
        };
        let admin_token = match env.var("VANTAGE_ADMIN_TOKEN") {
            Some(token) => token,
            None => read(&data_dir.join(ADMIN_TOKEN_FILE), "admin credential")?
                .trim()
                .to_string(),
        };
        Ok(Target {
            addr,
            ca_pem,
            admin_token,
        })
    }
}

/// Adds the admin credential to every call.
#[derive(Clone)]
pub struct AdminAuth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AdminAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A control-service client with the admin credential attached.
pub type ControlClient = ControlServiceClient<InterceptedService<Channel, AdminAuth>>;

/// Connects to the coordinator's control service.
pub fn connect(target: &Target) -> anyhow::Result<ControlClient> {
    let config = ca_client_config(&target.ca_pem).context("coordinator CA certificate")?;
    let channel = TlsConnector::new(&target.addr, config, None)?.channel(Duration::from_secs(5))?;
    let value: MetadataValue<_> = format!("Bearer {}", target.admin_token)
        .parse()
        .context("the admin credential has characters that cannot travel in a header")?;
    Ok(ControlServiceClient::with_interceptor(
        channel,
        AdminAuth(value),
    ))
}
