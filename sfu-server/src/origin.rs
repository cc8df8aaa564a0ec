//! Which web pages may use the server: the `Origin` rule of `/ws` and
//! WHIP/WHEP, and the proxy headers development mode refuses.
//!
//! Browsers send `Origin` with every WebSocket handshake and every
//! cross-origin `POST`, and a page cannot forge it. Tokens, not cookies,
//! admit clients, so a foreign page gains nothing it could not do with the
//! token itself; except in development mode, where no token is needed:
//! there any page the developer visits could otherwise join the local
//! server. So development mode admits pages from loopback origins
//! (`http://localhost:…`, `http://127.0.0.1:…`, `http://[::1]:…`) and the
//! configured `allowed_origins` only. A page of another name is refused even
//! when that name resolves to 127.0.0.1: that is DNS rebinding, where the
//! page and the server look same-origin to the browser. Requests without
//! `Origin` come from programs, not from pages a browser was led to, and
//! pass. In production `allowed_origins`, when set, is the list of pages
//! that may use the server.
//!
//! A reverse proxy on the same host makes every client look like loopback,
//! which would open development mode to the world: a request that carries
//! `Forwarded` or `X-Forwarded-For` is refused there.

use axum::http::HeaderMap;

/// Why a request's origin is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    /// The page's origin is neither loopback (development mode) nor listed.
    NotAllowed,
    /// Development mode, reached through a proxy.
    Proxied,
}

/// Whether `s` is a serialized origin: `scheme://host[:port]`, nothing
/// after (no path, not even `/`), a host without spaces or `@`.
pub fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok
        && host_of(authority).is_some()
        && !authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
}

/// The host of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`),
/// lower-cased, `None` when empty or the port is not a number.
fn host_of(authority: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (v6, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || p.parse::<u16>().is_err()) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Whether `origin` is a page served from this machine's loopback: an http
/// or https origin whose host is `localhost` (or under `.localhost`, which
/// RFC 6761 reserves for loopback), `127.0.0.0/8` or `::1`.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !is_origin(origin) || !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return false;
    }
    let Some(host) = host_of(authority) else {
        return false;
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request came through a proxy that says so.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers.contains_key("forwarded") || headers.contains_key("x-forwarded-for")
}

/// The rule of the module documentation: `origin` is the request's
/// `Origin` header (`None`: absent or not text).
pub fn check(
    origin: Option<&str>,
    proxied: bool,
    dev_mode: bool,
    allowed: &[String],
) -> Result<(), OriginRefusal> {
    if dev_mode && proxied {
        return Err(OriginRefusal::Proxied);
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    let listed = allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    let ok = if dev_mode {
        listed || is_loopback_origin(origin)
    } else {
        listed || allowed.is_empty()
    };
    if ok {
        Ok(())
    } else {
        Err(OriginRefusal::NotAllowed)
    }
}

/// [`check`] on a request's headers.
pub fn check_headers(
    headers: &HeaderMap,
    dev_mode: bool,
    allowed: &[String],
) -> Result<(), OriginRefusal> {
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    check(origin, is_proxied(headers), dev_mode, allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for good in [
            "http://localhost:8080",
            "https://app.example.org",
            "http://[::1]:3000",
            "app-x+y.z://host",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "",
            "null",
            "*",
            "localhost:8080",
            "http://",
            "http://host/",
            "http://host/path",
            "http://user@host",
            "http://host:",
            "http://host:99999",
            "http://host:x",
            "http://[::1",
            "http://ho st",
            "1http://host",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn loopback_origins() {
        for lo in [
            "http://localhost:8080",
            "http://LOCALHOST",
            "https://app.localhost:3000",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(lo), "{lo}");
        }
        for not in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://10.0.0.1:8080",
            "http://[::2]",
            "file://localhost",
            "null",
            "http://localhost/",
        ] {
            assert!(!is_loopback_origin(not), "{not}");
        }
    }

    #[test]
    fn development_mode_admits_loopback_pages_and_programs_only() {
        let none: &[String] = &[];
        assert_eq!(check(None, false, true, none), Ok(()));
        assert_eq!(
            check(Some("http://localhost:8080"), false, true, none),
            Ok(())
        );
        // A page the developer visits, and a rebinding name for 127.0.0.1.
        for foreign in [
            "https://evil.example",
            "http://rebind.evil.example:8080",
            "null",
        ] {
            assert_eq!(
                check(Some(foreign), false, true, none),
                Err(OriginRefusal::NotAllowed),
                "{foreign}"
            );
        }
        let listed = ["https://sfu.test:18443".to_owned()];
        assert_eq!(
            check(Some("https://sfu.test:18443"), false, true, &listed),
            Ok(())
        );
        // Behind a proxy every client is loopback: refused, origin or not.
        assert_eq!(check(None, true, true, none), Err(OriginRefusal::Proxied));
        assert_eq!(
            check(Some("http://localhost"), true, true, &listed),
            Err(OriginRefusal::Proxied)
        );
    }

    #[test]
    fn production_admits_any_page_unless_a_list_is_set() {
        let none: &[String] = &[];
        assert_eq!(check(Some("https://a.example"), true, false, none), Ok(()));
        let listed = ["https://app.example.org".to_owned()];
        assert_eq!(
            check(Some("HTTPS://APP.EXAMPLE.ORG"), false, false, &listed),
            Ok(())
        );
        assert_eq!(
            check(Some("https://a.example"), false, false, &listed),
            Err(OriginRefusal::NotAllowed)
        );
        // Loopback pages are not special in production.
        assert_eq!(
            check(Some("http://localhost"), false, false, &listed),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(check(None, false, false, &listed), Ok(()));
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        assert!(!is_proxied(&h));
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert!(is_proxied(&h));
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
        assert!(is_proxied(&h));
        let mut h = HeaderMap::new();
        h.insert(
            "origin",
            axum::http::HeaderValue::from_bytes(b"http://\xff").unwrap(),
        );
        assert_eq!(check_headers(&h, true, &[]), Err(OriginRefusal::NotAllowed));
    }
}
