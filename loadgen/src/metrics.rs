//! `--metrics-url`: scrapes a Prometheus text endpoint before and after the run (plain
//! HTTP/1.1 GET over std's TcpStream, bounded in time and size) and reports what changed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);
const BODY_MAX: usize = 16 << 20;

/// `http://host:port/path` → samples `name{labels}` → value.
pub fn scrape(url: &str) -> Result<BTreeMap<String, f64>, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("cannot connect to {hostport}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    s.take(BODY_MAX as u64).read_to_end(&mut raw).map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{url}: malformed HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{url}: {status}"));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(parse(&dechunk(body)));
    }
    Ok(parse(body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Prometheus text format samples (comments skipped, timestamps ignored).
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        // The value follows the series (which may contain spaces inside quoted labels).
        let series_end = match line.rfind('}') {
            Some(i) => i + 1,
            None => line.find(' ').unwrap_or(line.len()),
        };
        let (series, rest) = line.split_at(series_end);
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            m.insert(series.trim().to_string(), v);
        }
    }
    m
}

/// Series whose value changed (after − before; new series count from 0).
pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_diffs() {
        let a = parse("# HELP x y\nx_total 3\ny{model=\"a b\",v=\"1\"} 2.5 1700000000\n");
        assert_eq!(a["x_total"], 3.0);
        assert_eq!(a["y{model=\"a b\",v=\"1\"}"], 2.5);
        let b = parse("x_total 5\ny{model=\"a b\",v=\"1\"} 2.5\nz 1\n");
        let d = delta(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d["x_total"], 2.0);
        assert_eq!(d["z"], 1.0);
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
