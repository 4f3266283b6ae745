//! `ward health`: the container's health probe, with no shell or curl in the image. One GET to the
//! admin port's `/healthz` (or `/readyz`) with a deadline; exit 0 on a 200, 1 on anything else.
//! It only reads: it never changes what it probes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The admin address to probe, `HOST:PORT` or `http://HOST:PORT`. An unspecified address
    /// (`0.0.0.0`, `[::]`) means this host's loopback, so the proxy's own `--admin-listen`
    /// value works here too.
    #[arg(
        long,
        env = "WARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9901",
        value_name = "URL-or-ADDR"
    )]
    pub admin: String,
    /// Probe `/readyz` (policy loaded, upstream reachable, not draining) instead of `/healthz`.
    #[arg(long)]
    pub ready: bool,
    /// Deadline for the whole probe: connect, request, status line.
    #[arg(long, default_value = "2s", value_parser = crate::settings::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "--admin {0:?}: expected HOST:PORT or http://HOST:PORT (the admin port speaks plain HTTP)"
    )]
    Target(String),
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: cannot connect")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: HTTP error")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: answered {status}")]
    Unhealthy { url: String, status: StatusCode },
}

/// Where a probe goes: `host:port` (as given, for the Host header) and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
    pub path: &'static str,
}

impl Target {
    pub fn parse(admin: &str, ready: bool) -> Result<Target, HealthError> {
        let bad = || HealthError::Target(admin.to_owned());
        let rest = admin.trim();
        if rest.starts_with("https://") {
            return Err(bad());
        }
        let rest = rest.strip_prefix("http://").unwrap_or(rest);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            return Err(bad());
        }
        let uri: http::uri::Authority = authority.parse().map_err(|_| bad())?;
        if uri.port_u16().is_none() || uri.host().is_empty() {
            return Err(bad());
        }
        Ok(Target {
            authority: authority.to_owned(),
            path: if ready { "/readyz" } else { "/healthz" },
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// Probes once: `Ok(200)`, or why not.
pub async fn probe(args: &HealthArgs) -> Result<StatusCode, HealthError> {
    let target = Target::parse(&args.admin, args.ready)?;
    let url = target.url();
    match tokio::time::timeout(args.timeout, get(&target)).await {
        Ok(Ok(status)) if status == StatusCode::OK => Ok(status),
        Ok(Ok(status)) => Err(HealthError::Unhealthy { url, status }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HealthError::Timeout {
            url,
            timeout: args.timeout,
        }),
    }
}

async fn get(target: &Target) -> Result<StatusCode, HealthError> {
    let url = target.url();
    let addr = resolve(&target.authority).await?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| HealthError::Connect {
            url: url.clone(),
            source,
        })?;
    let http_err = |source| HealthError::Http {
        url: url.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(http_err)?;
    let conn = tokio::spawn(conn);
    let req = Request::get(target.path)
        .header(header::HOST, &target.authority)
        .header(header::USER_AGENT, "ward-health")
        .body(Empty::<Bytes>::new())
        .expect("a GET with a static path and a parsed authority is a valid request");
    let status = sender.send_request(req).await.map_err(http_err)?.status();
    conn.abort();
    Ok(status)
}

/// The first address of `authority`; unspecified addresses become loopback.
async fn resolve(authority: &str) -> Result<SocketAddr, HealthError> {
    let addr = match authority.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(authority)
            .await
            .map_err(|source| HealthError::Resolve {
                host: authority.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| HealthError::Resolve {
                host: authority.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?,
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_an_address_or_an_http_url() {
        let t = Target::parse("127.0.0.1:9901", false).unwrap();
        assert_eq!(t.url(), "http://127.0.0.1:9901/healthz");
        let t = Target::parse("http://localhost:9901/", true).unwrap();
        assert_eq!(t.url(), "http://localhost:9901/readyz");
        let t = Target::parse("[::]:9901", false).unwrap();
        assert_eq!(t.authority, "[::]:9901");
        for bad in [
            "https://127.0.0.1:9901",
            "127.0.0.1",
            "http://127.0.0.1:9901/metrics",
            "",
            ":9901",
        ] {
            assert!(Target::parse(bad, false).is_err(), "{bad}");
        }
    }
}
