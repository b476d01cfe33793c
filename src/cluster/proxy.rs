//! Which proxy reaches the API server, chosen as kubectl (Go's net/http) chooses it: the
//! kubeconfig's `proxy-url`; else `HTTPS_PROXY` for an https server or `HTTP_PROXY` for an http
//! one (upper or lower case), unless `NO_PROXY` covers the server or the server is loopback.

use std::net::IpAddr;

/// The proxy for `server`, or `None` to connect directly. `env` reads a variable.
pub fn choose(
    server: &http::Uri,
    kubeconfig_proxy: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<http::Uri>, String> {
    let parse = |text: &str| {
        text.parse::<http::Uri>()
            .map_err(|e| format!("invalid proxy URL {text:?}: {e}"))
    };
    if let Some(url) = kubeconfig_proxy.filter(|u| !u.is_empty()) {
        return parse(url).map(Some);
    }
    let pick = |names: [&str; 2]| {
        names
            .into_iter()
            .find_map(|n| env(n).filter(|v| !v.is_empty()))
    };
    let from_env = if server.scheme_str() == Some("http") {
        pick(["HTTP_PROXY", "http_proxy"])
    } else {
        pick(["HTTPS_PROXY", "https_proxy"])
    };
    let Some(url) = from_env else {
        return Ok(None);
    };
    let host = server.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = server.port_u16();
    if is_loopback(host) {
        return Ok(None);
    }
    if let Some(list) = pick(["NO_PROXY", "no_proxy"]) {
        if no_proxy_covers(&list, host, port) {
            return Ok(None);
        }
    }
    // Go takes "host:port" without a scheme as an http proxy.
    let url = if url.contains("://") {
        url
    } else {
        format!("http://{url}")
    };
    parse(&url).map(Some)
}

/// Go never proxies a request to localhost or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `NO_PROXY` list covers the host: `*`, an IP, a CIDR, or a domain (`example.com`
/// covers it and its subdomains, `.example.com` the subdomains), each with an optional port.
pub fn no_proxy_covers(list: &str, host: &str, port: Option<u16>) -> bool {
    let host = host.to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            if let Some((net, bits)) = entry.split_once('/') {
                return match (ip, net.parse::<IpAddr>(), bits.parse::<u32>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_network(ip, net, bits),
                    _ => false,
                };
            }
            let (name, entry_port) = split_port(&entry);
            if entry_port.is_some() && entry_port != port {
                return false;
            }
            if let (Some(ip), Ok(other)) = (ip, name.trim_matches(['[', ']']).parse::<IpAddr>()) {
                return ip == other;
            }
            match name.strip_prefix('.') {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == name || host.ends_with(&format!(".{name}")),
            }
        })
}

fn split_port(entry: &str) -> (&str, Option<u16>) {
    // An IPv6 address without brackets has colons of its own.
    if entry.matches(':').count() > 1 && !entry.starts_with('[') {
        return (entry, None);
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => (name, port.parse().ok()),
        _ => (entry, None),
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn kubeconfig_first_then_the_scheme_s_variable() {
        let https: http::Uri = "https://api.example.com:6443".parse().unwrap();
        let http_server: http::Uri = "http://api.example.com:8080".parse().unwrap();
        let vars = [("https_proxy", "http://p1:3128"), ("HTTP_PROXY", "p2:3128")];
        let chosen = |server: &http::Uri, kc: Option<&str>| {
            choose(server, kc, env(&vars))
                .unwrap()
                .map(|u| u.to_string())
        };
        assert_eq!(chosen(&https, None).as_deref(), Some("http://p1:3128/"));
        assert_eq!(
            chosen(&http_server, None).as_deref(),
            Some("http://p2:3128/")
        );
        assert_eq!(
            chosen(&https, Some("socks5://s:1080")).as_deref(),
            Some("socks5://s:1080/")
        );
        assert_eq!(choose(&https, None, env(&[])).unwrap(), None);
        let loopback: http::Uri = "https://127.0.0.1:6443".parse().unwrap();
        assert_eq!(choose(&loopback, None, env(&vars)).unwrap(), None);
        assert!(choose(&https, Some("http://bad host"), env(&[])).is_err());
    }

    #[test]
    fn no_proxy_matches_as_go_does() {
        let covers = |list: &str, host: &str| no_proxy_covers(list, host, Some(6443));
        assert!(covers("*", "api.example.com"));
        assert!(covers("example.com", "example.com"));
        assert!(covers("example.com", "api.example.com"));
        assert!(!covers(".example.com", "example.com"));
        assert!(covers(".example.com", "api.example.com"));
        assert!(!covers("ample.com", "api.example.com"));
        assert!(covers("10.0.0.0/8", "10.1.2.3"));
        assert!(!covers("10.0.0.0/8", "11.1.2.3"));
        assert!(covers("fd00::/8", "fd00::1"));
        assert!(covers("api.example.com:6443", "api.example.com"));
        assert!(!covers("api.example.com:443", "api.example.com"));
        assert!(covers(" foo.org , 192.168.1.5", "192.168.1.5"));
        let vars = [
            ("HTTPS_PROXY", "http://p:3128"),
            ("no_proxy", ".example.com"),
        ];
        let server: http::Uri = "https://api.example.com".parse().unwrap();
        assert_eq!(choose(&server, None, env(&vars)).unwrap(), None);
    }
}
