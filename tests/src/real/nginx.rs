//! nginx in the real-server tier: configuration generators for the origin,
//! the CDN edge and the carrier's middleboxes, and [`Nginx`], one running
//! `nginx` process per role.
//!
//! Each process gets its own directory: the generated `nginx.conf`, the pid
//! file, the error log, the temp paths and its access log (nginx's default
//! `combined` format, which `vantage-agent witness --access-log` follows).
//! nginx runs in the foreground (`daemon off;`) as a single process
//! (`master_process off;`), so the lab's [`ChildProcess`] owns it and kills
//! it when the case ends. The configuration is checked with `nginx -t`
//! first (an error is reported at once, with nginx's own words), then the
//! server is ready when every address it listens on accepts a connection.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::pki::{CertFiles, LabPki};
use super::{
    BLOCK_PAGE_PORT, BLOCK_TITLE, CARRIER_IP, DEAD_UPSTREAM, EDGEONE_TIMEOUT, ORIGIN_TITLE,
    PULL_IP, REDIRECT_PORT, REDIRECT_TO, SITE,
};
use crate::process::ChildProcess;

/// What one origin server (one address of the origin) does.
#[derive(Debug, Clone, PartialEq)]
pub enum OriginMode {
    /// A static page titled [`ORIGIN_TITLE`], on port 80 and on 443 with a
    /// certificate from the private CA.
    Healthy,
    /// `return 503;` (nginx's own error page).
    Status503,
    /// `return 444;`: nginx closes the connection without a reply.
    Close444,
    /// Not listening at all (the web server is stopped).
    Stopped,
    /// `proxy_pass` to a slow application (`upstream`), with a
    /// `proxy_read_timeout` long enough to wait for it.
    SlowUpstream {
        /// The application behind nginx.
        upstream: SocketAddr,
    },
    /// `limit_req` per client address (1 r/s, burst 20, `nodelay`),
    /// answering 429 over the limit: a region's single requests of one
    /// campaign (about a dozen) fit in the burst, its 20 concurrent ones do
    /// not. (A faster rate refills the bucket while a burst's TLS
    /// handshakes are still being made, and nothing is limited.)
    LimitReq,
    /// `limit_conn` of 10 connections per client address, answering 503
    /// over the limit, in front of an application that takes its time
    /// (`upstream`), so that concurrent requests overlap.
    LimitConn {
        /// The application behind nginx.
        upstream: SocketAddr,
    },
    /// A WAF rule on a CDN pull header:
    /// `if ($http_eo_connecting_ip) { return 403; }`.
    WafPullHeader,
    /// An allowlist: `allow` each of these client addresses, `deny all`
    /// (which answers 403 to everyone else, the edge's pull IP included).
    Allowlist(Vec<IpAddr>),
    /// Port 443 presents a self-signed certificate for the site.
    SelfSignedCert,
    /// Port 443 presents a certificate from the CA for another name.
    WrongNameCert,
    /// Port 443 speaks plain HTTP (a `listen 443;` without `ssl`).
    PlainOn443,
}

/// One origin address and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginMember {
    /// Its address (ports 80 and 443).
    pub ip: Ipv4Addr,
    /// What it does.
    pub mode: OriginMode,
}

/// The CDN edge: its nodes and where it pulls from.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSetup {
    /// Its addresses; a broken node pulls from [`DEAD_UPSTREAM`] instead of
    /// the origin (a misconfigured node: it answers 521).
    pub nodes: Vec<(Ipv4Addr, bool)>,
    /// The origin group it pulls from (nginx balances and fails over).
    pub origins: Vec<Ipv4Addr>,
    /// Pull over HTTPS (port 443, verifying the origin's certificate
    /// against the private CA) instead of HTTP (port 80): the URL's scheme.
    pub https_pull: bool,
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    process: ChildProcess,
    dir: PathBuf,
    listens: Vec<SocketAddr>,
}

/// nginx's main context and the start of its `http` block, with every
/// path inside `dir`.
fn preamble(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log notice;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 default_type text/html;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n\
         \x20 proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp/scgi;\n\
         \x20 access_log {d}/access.log combined;\n"
    )
}

fn ssl(cert: &CertFiles) -> String {
    format!(
        "    ssl_certificate {};\n    ssl_certificate_key {};\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// The origin's `nginx.conf`: one `server` per member that listens.
pub fn origin_conf(dir: &Path, pki: &LabPki, members: &[OriginMember]) -> String {
    let mut conf = preamble(dir);
    conf.push_str(
        "  limit_req_zone $binary_remote_addr zone=perip:1m rate=1r/s;\n\
         \x20 limit_conn_zone $binary_remote_addr zone=perconn:1m;\n",
    );
    let root = dir.join("html");
    for member in members {
        let ip = member.ip;
        let location = match &member.mode {
            OriginMode::Stopped => continue,
            OriginMode::Status503 => "return 503;".to_string(),
            OriginMode::Close444 => "return 444;".to_string(),
            OriginMode::SlowUpstream { upstream } => format!(
                "proxy_pass http://{upstream}; proxy_set_header Host $host; proxy_read_timeout 120s;"
            ),
            OriginMode::LimitReq => {
                "limit_req zone=perip burst=20 nodelay; limit_req_status 429; try_files /index.html =404;"
                    .to_string()
            }
            OriginMode::LimitConn { upstream } => format!(
                "limit_conn perconn 10; limit_conn_status 503; proxy_pass http://{upstream}; proxy_set_header Host $host;"
            ),
            _ => "try_files /index.html =404;".to_string(),
        };
        let tls_listen = if member.mode == OriginMode::PlainOn443 {
            format!("listen {ip}:443;")
        } else {
            format!("listen {ip}:443 ssl;")
        };
        let cert = match member.mode {
            OriginMode::SelfSignedCert => &pki.self_signed,
            OriginMode::WrongNameCert => &pki.wrong_name,
            _ => &pki.site,
        };
        let _ = write!(
            conf,
            "  server {{\n    listen {ip}:80;\n    {tls_listen}\n    server_name {SITE};\n{}    root {};\n",
            ssl(cert),
            root.display()
        );
        match &member.mode {
            OriginMode::WafPullHeader => {
                conf.push_str("    if ($http_eo_connecting_ip) { return 403; }\n");
            }
            OriginMode::Allowlist(allowed) => {
                for ip in allowed {
                    let _ = writeln!(conf, "    allow {ip};");
                }
                conf.push_str("    deny all;\n");
            }
            _ => {}
        }
        let _ = write!(conf, "    location / {{ {location} }}\n  }}\n");
    }
    conf.push_str("}\n");
    conf
}

/// The addresses the origin listens on (for readiness).
pub fn origin_listens(members: &[OriginMember]) -> Vec<SocketAddr> {
    members
        .iter()
        .filter(|m| m.mode != OriginMode::Stopped)
        .flat_map(|m| [SocketAddr::from((m.ip, 80)), SocketAddr::from((m.ip, 443))])
        .collect()
}

/// The healthy page of the origin.
pub fn origin_page() -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>{ORIGIN_TITLE}</title></head>\n\
         <body><h1>{ORIGIN_TITLE}</h1><p>Everything for your test needs.</p></body></html>\n"
    )
}

/// The edge's `nginx.conf`: a reverse proxy that pulls like EdgeOne — the
/// profile's pull headers (`EO-Connecting-IP`, `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `CDN-Loop: TencentEdgeOne; loops=1`,
/// `EO-LOG-UUID`), from [`PULL_IP`], with the profile's 15 s
/// origin-response timeout — and answers like it: its request id in an
/// `EO-LOG-UUID` response header on every answer, and 52x codes when the
/// pull fails.
///
/// The 52x mapping uses what nginx knows about the failed pull: a pull
/// whose connection never completed (`$upstream_connect_time` is `-`) is
/// 521 (refused), one that connected and then got nothing usable is 520; a
/// timeout before the connection completed is 522, after it 524. What nginx
/// cannot tell apart (measured): a reset from an empty reply (both 520),
/// and a refused HTTPS pull from a failed TLS handshake or an origin
/// certificate that does not verify — for nginx the TLS handshake is part
/// of connecting, and `$upstream_bytes_received` is 0 in all three — so
/// this edge answers 521 where EdgeOne answers 525 or 526.
pub fn edge_conf(dir: &Path, pki: &LabPki, edge: &EdgeSetup) -> String {
    let mut conf = preamble(dir);
    let port = if edge.https_pull { 443 } else { 80 };
    let scheme = if edge.https_pull { "https" } else { "http" };
    conf.push_str("  upstream origin_pull {\n");
    for origin in &edge.origins {
        let _ = writeln!(conf, "    server {origin}:{port};");
    }
    conf.push_str("  }\n");
    let timeout = EDGEONE_TIMEOUT.as_secs();
    for (ip, broken) in &edge.nodes {
        let upstream = if *broken {
            format!("{DEAD_UPSTREAM}:{port}")
        } else {
            "origin_pull".to_string()
        };
        let _ = write!(
            conf,
            "  server {{\n\
             \x20   listen {ip}:80;\n\
             \x20   listen {ip}:443 ssl;\n\
             \x20   server_name {SITE};\n\
             {ssl}\
             \x20   add_header EO-LOG-UUID $request_id always;\n\
             \x20   error_page 502 = @bad_gateway;\n\
             \x20   error_page 504 = @gateway_timeout;\n\
             \x20   location / {{\n\
             \x20     proxy_pass {scheme}://{upstream};\n\
             \x20     proxy_bind {PULL_IP};\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n\
             \x20     proxy_set_header Host $host;\n\
             \x20     proxy_set_header EO-Connecting-IP $remote_addr;\n\
             \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20     proxy_set_header CDN-Loop \"TencentEdgeOne; loops=1\";\n\
             \x20     proxy_set_header EO-LOG-UUID $request_id;\n\
             \x20     proxy_connect_timeout 10s;\n\
             \x20     proxy_send_timeout {timeout}s;\n\
             \x20     proxy_read_timeout {timeout}s;\n\
             \x20     proxy_ssl_server_name on;\n\
             \x20     proxy_ssl_name {SITE};\n\
             \x20     proxy_ssl_verify on;\n\
             \x20     proxy_ssl_trusted_certificate {ca};\n\
             \x20   }}\n\
             \x20   location @bad_gateway {{\n\
             \x20     if ($upstream_connect_time = \"-\") {{ return 521 \"<html><head><title>521 Origin refused the connection</title></head></html>\\n\"; }}\n\
             \x20     return 520 \"<html><head><title>520 Origin returned an empty or unknown reply</title></head></html>\\n\";\n\
             \x20   }}\n\
             \x20   location @gateway_timeout {{\n\
             \x20     if ($upstream_connect_time = \"-\") {{ return 522 \"<html><head><title>522 Origin connection timed out</title></head></html>\\n\"; }}\n\
             \x20     return 524 \"<html><head><title>524 Origin response timeout</title></head></html>\\n\";\n\
             \x20   }}\n\
             \x20 }}\n",
            ssl = ssl(&pki.site),
            ca = pki.ca.display(),
        );
    }
    conf.push_str("}\n");
    conf
}

/// The addresses the edge listens on.
pub fn edge_listens(edge: &EdgeSetup) -> Vec<SocketAddr> {
    edge.nodes
        .iter()
        .flat_map(|(ip, _)| [SocketAddr::from((*ip, 80)), SocketAddr::from((*ip, 443))])
        .collect()
}

/// The carrier's `nginx.conf` on [`CARRIER_IP`]: the injector's block page
/// (port [`BLOCK_PAGE_PORT`], `200` titled [`BLOCK_TITLE`]) and redirect
/// (port [`REDIRECT_PORT`], `302` to [`REDIRECT_TO`]), and the TLS
/// middlebox (port 443): it terminates TLS with its own self-signed
/// certificate and relays to `origin` over a second TLS connection it does
/// not verify, as an intercepting proxy does.
pub fn carrier_conf(dir: &Path, pki: &LabPki, origin: Ipv4Addr) -> String {
    let mut conf = preamble(dir);
    let _ = write!(
        conf,
        "  server {{\n\
         \x20   listen {CARRIER_IP}:{BLOCK_PAGE_PORT};\n\
         \x20   location / {{ return 200 \"<html><head><title>{BLOCK_TITLE}</title></head><body>This site is blocked by order of the operator.</body></html>\\n\"; }}\n\
         \x20 }}\n\
         \x20 server {{\n\
         \x20   listen {CARRIER_IP}:{REDIRECT_PORT};\n\
         \x20   location / {{ return 302 {REDIRECT_TO}; }}\n\
         \x20 }}\n\
         \x20 server {{\n\
         \x20   listen {CARRIER_IP}:443 ssl;\n\
         {ssl}\
         \x20   location / {{\n\
         \x20     proxy_pass https://{origin}:443;\n\
         \x20     proxy_bind {CARRIER_IP};\n\
         \x20     proxy_set_header Host $host;\n\
         \x20     proxy_ssl_server_name on;\n\
         \x20     proxy_ssl_name {SITE};\n\
         \x20     proxy_ssl_verify off;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        ssl = ssl(&pki.middlebox),
    );
    conf
}

/// The addresses the carrier's nginx listens on.
pub fn carrier_listens() -> Vec<SocketAddr> {
    [BLOCK_PAGE_PORT, REDIRECT_PORT, 443]
        .into_iter()
        .map(|port| SocketAddr::from((CARRIER_IP, port)))
        .collect()
}

impl Nginx {
    /// Writes `conf` (and the origin's page) into `dir`, checks it with
    /// `nginx -t`, starts nginx and waits until every address of `listens`
    /// accepts connections.
    pub async fn start(
        role: &str,
        dir: &Path,
        conf: &str,
        listens: Vec<SocketAddr>,
    ) -> anyhow::Result<Nginx> {
        for sub in ["tmp", "html"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("html/index.html"), origin_page())?;
        // The access log exists from the start, so the witness can follow
        // it even when nothing is ever logged (a stopped origin).
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("access.log"))?;
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let prefix = dir.display().to_string();
        let conf_arg = conf_path.display().to_string();
        let check = tokio::process::Command::new("nginx")
            .args(["-t", "-q", "-p", &prefix, "-c", &conf_arg])
            .output()
            .await
            .context("running nginx -t")?;
        if !check.status.success() {
            bail!(
                "nginx ({role}) refuses its configuration: {}\n{conf}",
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        let args: Vec<String> = ["-p", &prefix, "-c", &conf_arg]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let process =
            ChildProcess::spawn(&format!("nginx ({role})"), &PathBuf::from("nginx"), &args)?;
        let nginx = Nginx {
            process,
            dir: dir.to_path_buf(),
            listens,
        };
        for addr in &nginx.listens {
            if let Err(e) = super::wait_tcp(*addr, super::READY).await {
                bail!(
                    "nginx ({role}) is not ready: {e:#}; its error log:\n{}\n{}",
                    nginx.error_log(),
                    nginx.process.output()
                );
            }
        }
        Ok(nginx)
    }

    /// The access log (nginx's `combined` format).
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// The error log's contents.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The access log's lines.
    pub fn access_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Where it listens.
    pub fn listens(&self) -> &[SocketAddr] {
        &self.listens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (tempfile::TempDir, LabPki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = LabPki::generate(dir.path()).unwrap();
        (dir, pki)
    }

    #[test]
    fn the_edge_sends_the_edgeone_pull_headers_from_the_pull_ip() {
        let (dir, pki) = pki();
        let conf = edge_conf(
            dir.path(),
            &pki,
            &EdgeSetup {
                nodes: vec![(super::super::EDGE_A, false), (super::super::EDGE_B, true)],
                origins: vec![super::super::ORIGIN_A],
                https_pull: false,
            },
        );
        for needle in [
            "proxy_bind 127.0.0.30;",
            "proxy_set_header EO-Connecting-IP $remote_addr;",
            "proxy_set_header CDN-Loop \"TencentEdgeOne; loops=1\";",
            "proxy_set_header EO-LOG-UUID $request_id;",
            "add_header EO-LOG-UUID $request_id always;",
            "proxy_read_timeout 15s;",
            "proxy_pass http://127.0.0.29:80;",
            "server 127.0.0.10:80;",
        ] {
            assert!(conf.contains(needle), "{needle} in\n{conf}");
        }
    }

    #[test]
    fn a_stopped_member_does_not_listen_and_the_waf_rule_is_on_the_pull_header() {
        let (dir, pki) = pki();
        let members = [
            OriginMember {
                ip: super::super::ORIGIN_A,
                mode: OriginMode::WafPullHeader,
            },
            OriginMember {
                ip: super::super::ORIGIN_B,
                mode: OriginMode::Stopped,
            },
        ];
        let conf = origin_conf(dir.path(), &pki, &members);
        assert!(conf.contains("if ($http_eo_connecting_ip) { return 403; }"));
        assert!(!conf.contains("127.0.0.11"));
        assert_eq!(origin_listens(&members).len(), 2);
    }
}
