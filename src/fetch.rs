//! The web-download fetcher: fetches an http(s) URL for an import without opening a way into
//! the server's own network (SSRF).
//!
//! The rules apply to the addresses actually connected to. A URL naming an address (in any
//! spelling the URL parser accepts: `2130706433`, `0177.0.0.1`, `0x7f.1`, `[::ffff:127.0.0.1]`
//! all parse to the same address) is checked before the request; a host name is resolved by
//! our resolver, which hands reqwest only the addresses that pass, so no second lookup can
//! swap in another (DNS rebinding). Every redirect is checked again (scheme, port, address)
//! and their number is bounded. Denied by default: loopback, private, link-local (and so the
//! cloud metadata address 169.254.169.254), carrier-grade NAT, multicast, unspecified,
//! broadcast, documentation and reserved ranges, and IPv6 forms that embed an IPv4 address
//! (mapped, compatible, NAT64, 6to4, Teredo). Only http and https, only the allowed ports
//! (80 and 443 by default). `web_download_allow` (CIDRs or host names) opens those addresses
//! or hosts, on any port, for labs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest whole transfer.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// An entry of `web_download_allow`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    Net(IpNet),
    Host(String),
}

impl std::str::FromStr for Allowed {
    type Err = String;

    fn from_str(text: &str) -> Result<Allowed, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Allowed::Net(net));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(Allowed::Net(IpNet::from(address)));
        }
        let valid = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
        if valid {
            Ok(Allowed::Host(text.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{text:?} is neither a CIDR, an address nor a host name"
            ))
        }
    }
}

/// What web-download may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub allow: Vec<Allowed>,
    pub ports: Vec<u16>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            allow: Vec::new(),
            ports: vec![80, 443],
        }
    }
}

impl Rules {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow
            .iter()
            .any(|entry| matches!(entry, Allowed::Host(name) if *name == host))
    }

    fn address_allowed(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.allow
            .iter()
            .any(|entry| matches!(entry, Allowed::Net(net) if net.contains(&address)))
    }

    /// Whether `address` may be connected to for `host` on `port`.
    fn permits(&self, host: &str, address: IpAddr, port: u16) -> bool {
        if self.host_allowed(host) || self.address_allowed(address) {
            return true;
        }
        self.ports.contains(&port) && !denied(address)
    }

    /// Checks what can be checked of a URL without a lookup: scheme, port, and the address
    /// if the host is one.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the scheme {} is not http or https", url.scheme()));
        }
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => {
                if self.host_allowed(name) || self.ports.contains(&port) {
                    return Ok(());
                }
                return Err(format!("port {port} is not allowed"));
            }
            Some(url::Host::Ipv4(address)) => IpAddr::V4(address),
            Some(url::Host::Ipv6(address)) => IpAddr::V6(address),
            None => return Err("the URL has no host".into()),
        };
        if self.permits("", host, port) {
            Ok(())
        } else {
            Err(format!("{host} port {port} is not allowed"))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => address,
        },
        v4 => v4,
    }
}

/// Whether an address is one web-download never reaches by default.
pub fn denied(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn denied_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT (and Alibaba's metadata)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn denied_v6(address: Ipv6Addr) -> bool {
    let segments = address.segments();
    address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 among them)
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local
        || address.to_ipv4_mapped().is_some() // ::ffff:a.b.c.d
        || (segments[..6].iter().all(|segment| *segment == 0)) // ::a.b.c.d (compatible)
        || (segments[0] == 0x64 && segments[1] == 0xff9b) // NAT64
        || segments[0] == 0x2002 // 6to4
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
        || (segments[0] == 0x2001 && segments[1] == 0xdb8) // documentation
        || (segments[0] == 0x100 && segments[1..4].iter().all(|s| *s == 0)) // discard
}

/// Resolves host names and keeps only the addresses the rules permit on the URL's port.
struct FilteringResolver {
    rules: Arc<Rules>,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // reqwest asks for the name alone; the port is checked per address by the
            // connector below (the port in the URL, which `check_url` already vetted), so the
            // resolver applies the address rules for the most permissive allowed port and
            // `permits` per address.
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| {
                    rules.host_allowed(&host)
                        || rules.address_allowed(address.ip())
                        || !denied(address.ip())
                })
                .collect();
            if kept.is_empty() {
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to addresses web-download may not reach"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The web-download client.
#[derive(Clone)]
pub struct Fetcher {
    rules: Arc<Rules>,
    client: reqwest::Client,
    /// The same, following no redirects: for requests that carry credentials (`send`).
    direct: reqwest::Client,
}

/// An answer to `Fetcher::send`, whatever its status.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub fetched: Fetched,
}

/// A response being fetched.
pub struct Fetched {
    /// `Content-Length`, when the server sent one.
    pub length: Option<u64>,
    /// `ETag` and `Last-Modified`, when the server sent them.
    pub validators: Validators,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
}

impl Fetcher {
    pub fn new(rules: Rules) -> Result<Fetcher, String> {
        let rules = Arc::new(rules);
        let redirect_rules = rules.clone();
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(FilteringResolver {
                rules: rules.clone(),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match redirect_rules.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(format!("redirect refused: {reason}")),
                }
            }))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(IDLE_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            .user_agent(concat!("ocellus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| error.to_string())?;
        let direct = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(FilteringResolver {
                rules: rules.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(IDLE_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            .user_agent(concat!("ocellus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Fetcher {
            rules,
            client,
            direct,
        })
    }

    /// Sends a request with `headers` (credentials), under the same rules, and returns the
    /// answer whatever its status. Redirects within the same origin keep the headers; a GET
    /// redirected to another origin (a presigned download URL) is followed without them, so a
    /// token never leaves for a host it was not meant for.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        headers: &[(&'static str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            self.rules.check_url(&url)?;
            let mut request = self.direct.request(method.clone(), url.clone());
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let response = request.send().await.map_err(describe)?;
            if let Some(remote) = response.remote_addr()
                && let Some(host) = response.url().host_str()
            {
                let port = response.url().port_or_known_default().unwrap_or(0);
                if !self.rules.permits(host, remote.ip(), port) {
                    return Err(format!("{} is not allowed", remote.ip()));
                }
            }
            if response.status().is_redirection()
                && let Some(location) = response.headers().get(reqwest::header::LOCATION)
            {
                let target = location
                    .to_str()
                    .ok()
                    .and_then(|location| url.join(location).ok())
                    .ok_or("a redirect without a usable Location")?;
                self.rules
                    .check_url(&target)
                    .map_err(|reason| format!("redirect refused: {reason}"))?;
                if target.origin() == url.origin() {
                    url = target;
                    continue;
                }
                if method != reqwest::Method::GET {
                    return Err(format!("{url} redirected a {method} elsewhere"));
                }
                let fetched = self.get(target).await?;
                return Ok(Answer {
                    status: reqwest::StatusCode::OK,
                    headers: reqwest::header::HeaderMap::new(),
                    fetched,
                });
            }
            let status = response.status();
            let headers = response.headers().clone();
            let length = response.content_length();
            let body = response
                .bytes_stream()
                .map(|item| item.map_err(describe))
                .boxed();
            return Ok(Answer {
                status,
                headers,
                fetched: Fetched {
                    length,
                    validators: Validators::default(),
                    body,
                },
            });
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    /// Parses and checks a URL before an import is accepted (Glance answers 400 when this
    /// fails).
    pub fn check(&self, uri: &str) -> Result<Url, String> {
        let url = Url::parse(uri).map_err(|error| error.to_string())?;
        self.rules.check_url(&url)?;
        Ok(url)
    }

    /// Starts fetching `url`; the body streams as it arrives.
    pub async fn get(&self, url: Url) -> Result<Fetched, String> {
        match self
            .get_conditional(url.clone(), &Validators::default())
            .await?
        {
            Conditional::Fetched(fetched) => Ok(fetched),
            Conditional::NotModified => Err(format!("{url} answered 304 unasked")),
        }
    }

    /// Like `get`, but asks for the body only if it changed since `validators` were seen.
    pub async fn get_conditional(
        &self,
        url: Url,
        validators: &Validators,
    ) -> Result<Conditional, String> {
        self.rules.check_url(&url)?;
        let mut request = self.client.get(url.clone());
        if let Some(etag) = &validators.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &validators.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
        let response = request.send().await.map_err(describe)?;
        // The port of the address connected to is checked for names too: `check_url` saw the
        // first URL's, the redirect policy every later one's.
        if let Some(remote) = response.remote_addr()
            && let Some(host) = response.url().host_str()
        {
            let port = response.url().port_or_known_default().unwrap_or(0);
            if !self.rules.permits(host, remote.ip(), port) {
                return Err(format!("{} is not allowed", remote.ip()));
            }
        }
        if response.status() == reqwest::StatusCode::NOT_MODIFIED
            && (validators.etag.is_some() || validators.last_modified.is_some())
        {
            return Ok(Conditional::NotModified);
        }
        if !response.status().is_success() {
            return Err(format!("{} answered {}", response.url(), response.status()));
        }
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        };
        let length = response.content_length();
        let body = response
            .bytes_stream()
            .map(|item| item.map_err(describe))
            .boxed();
        Ok(Conditional::Fetched(Fetched {
            length,
            validators,
            body,
        }))
    }

    /// Fetches a small document whole (a listing, a digest file, a signature), refusing more
    /// than `limit` bytes.
    pub async fn get_small(
        &self,
        url: Url,
        validators: &Validators,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, Validators)>, String> {
        let mut fetched = match self.get_conditional(url.clone(), validators).await? {
            Conditional::NotModified => return Ok(None),
            Conditional::Fetched(fetched) => fetched,
        };
        if fetched.length.is_some_and(|length| length > limit as u64) {
            return Err(format!("{url} is larger than {limit} bytes"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = fetched.body.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > limit {
                return Err(format!("{url} is larger than {limit} bytes"));
            }
        }
        if fetched
            .length
            .is_some_and(|length| length != bytes.len() as u64)
        {
            return Err(format!("{url} ended after {} bytes", bytes.len()));
        }
        Ok(Some((bytes, fetched.validators)))
    }

    /// Sends a request as it came (method, headers, streamed body) under the same rules, and
    /// returns the answer whatever its status; redirects are returned, not followed. For an
    /// edge cache passing a client's write on to its upstream.
    pub async fn relay(
        &self,
        method: reqwest::Method,
        url: Url,
        headers: reqwest::header::HeaderMap,
        body: reqwest::Body,
    ) -> Result<Answer, String> {
        self.rules.check_url(&url)?;
        let response = self
            .direct
            .request(method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        if let Some(remote) = response.remote_addr()
            && let Some(host) = response.url().host_str()
        {
            let port = response.url().port_or_known_default().unwrap_or(0);
            if !self.rules.permits(host, remote.ip(), port) {
                return Err(format!("{} is not allowed", remote.ip()));
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let length = response.content_length();
        let body = response
            .bytes_stream()
            .map(|item| item.map_err(describe))
            .boxed();
        Ok(Answer {
            status,
            headers,
            fetched: Fetched {
                length,
                validators: Validators::default(),
                body,
            },
        })
    }

    /// Reads a whole body of at most `limit` bytes.
    pub async fn read_small(fetched: &mut Fetched, limit: usize) -> Result<Vec<u8>, String> {
        if fetched.length.is_some_and(|length| length > limit as u64) {
            return Err(format!("an answer larger than {limit} bytes"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = fetched.body.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > limit {
                return Err(format!("an answer larger than {limit} bytes"));
            }
        }
        Ok(bytes)
    }

    /// The rules this fetcher applies.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// What a server said identifies a version of a document, for a conditional request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A conditional request's answer.
pub enum Conditional {
    NotModified,
    Fetched(Fetched),
}

/// A reqwest error with its causes, which hold the useful part.
fn describe(error: reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(uri: &str) -> bool {
        let url = Url::parse(uri).unwrap();
        Rules::default().check_url(&url).is_err()
    }

    #[test]
    fn every_spelling_of_a_denied_address_is_refused() {
        for uri in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://100.100.100.200/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
        ] {
            assert!(refused(uri), "{uri} should be refused");
        }
        assert!(refused("ftp://example.org/x"));
        assert!(refused("file:///etc/passwd"));
        assert!(refused("http://93.184.215.14:8080/"));
        assert!(!refused("http://93.184.215.14/"));
        assert!(!refused(
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/"
        ));
        assert!(!refused("https://cloud-images.example.org/x.img"));
        assert!(refused("https://cloud-images.example.org:8443/x.img"));
    }

    #[test]
    fn the_allowlist_opens_its_addresses_and_hosts_on_any_port() {
        let rules = Rules {
            allow: vec![
                "127.0.0.1/32".parse().unwrap(),
                "mirror.lab".parse().unwrap(),
            ],
            ..Rules::default()
        };
        let check = |uri: &str| rules.check_url(&Url::parse(uri).unwrap());
        assert!(check("http://127.0.0.1:8080/x").is_ok());
        assert!(check("http://2130706433:8080/x").is_ok());
        assert!(check("http://127.0.0.2:8080/x").is_err());
        assert!(check("http://mirror.lab:9000/x").is_ok());
        assert!(check("http://other.lab:9000/x").is_err());
        assert!("not a host!".parse::<Allowed>().is_err());
    }
}
