//! What a node writes about itself, and a channel's lease, as they are
//! stored in Redis; parsed without trusting them.

use std::fmt;
use std::net::SocketAddr;

/// Longest record accepted (a node's record is a few hundred bytes).
const MAX_RECORD_BYTES: usize = 16 * 1024;

/// A node of the fleet, as it describes itself (JSON in Redis). Fields a
/// newer version adds are ignored (a fleet is upgraded node by node).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Its node id (distinct across the fleet).
    pub id: u16,
    /// Its region (`"eu-west"`…): users land on nodes of theirs.
    pub region: String,
    /// It may be a channel's core.
    pub core: bool,
    /// It may be an edge.
    pub edge: bool,
    /// Where clients reach its signaling (`https://sfu-3.example.org`).
    pub url: String,
    /// Its media (UDP) addresses, one per worker.
    pub media: Vec<SocketAddr>,
    /// (core) where edges dial it.
    pub cluster: Option<SocketAddr>,
    /// It refuses new members (shutting down).
    pub draining: bool,
    /// Members it carries.
    pub members: u64,
    /// Channels it carries.
    pub channels: u64,
    /// The CPU it used over its last refresh, in cores (1.5: one and a half
    /// cores busy); 0 in records that do not say.
    #[serde(default)]
    pub cpu: f64,
}

/// Why a stored record was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Longer than any record a node writes.
    #[error("the record is {0} bytes, over {MAX_RECORD_BYTES}")]
    TooLong(usize),
    /// Not the JSON a node writes.
    #[error("the record does not parse: {0}")]
    Malformed(String),
}

impl NodeRecord {
    /// The record as stored.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and addresses always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored record, checked: its URL is sent to clients (redirects),
    /// so it must be an `http(s)://` URL without spaces or control
    /// characters, and its region a plain name.
    pub fn parse(bytes: &[u8]) -> Result<NodeRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let r: NodeRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let url_ok = (r.url.starts_with("http://") || r.url.starts_with("https://"))
            && !r.url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !url_ok {
            return Err(RecordError::Malformed(format!("url {:?}", r.url)));
        }
        if !crate::config::is_region(&r.region) {
            return Err(RecordError::Malformed(format!("region {:?}", r.region)));
        }
        if !(0.0..=f64::from(u16::MAX)).contains(&r.cpu) {
            return Err(RecordError::Malformed(format!("cpu {}", r.cpu)));
        }
        Ok(r)
    }
}

/// A channel's core: the node that holds it, and the epoch of the claim
/// (higher is newer; see the module documentation of [`crate::fleet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    /// The node.
    pub node: u16,
    /// The claim's epoch, from 1.
    pub epoch: u64,
}

/// Why a stored lease was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the lease {0:?} is not node:epoch")]
pub struct LeaseError(pub String);

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.epoch)
    }
}

impl Lease {
    /// A stored lease (`node:epoch`), checked.
    pub fn parse(bytes: &[u8]) -> Result<Lease, LeaseError> {
        let bad = || LeaseError(String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into());
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let (node, epoch) = text.split_once(':').ok_or_else(bad)?;
        let node = node.parse().map_err(|_| bad())?;
        let epoch = epoch.parse().map_err(|_| bad())?;
        if epoch == 0 {
            return Err(bad());
        }
        Ok(Lease { node, epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NodeRecord {
        NodeRecord {
            id: 3,
            region: "eu-west".into(),
            core: true,
            edge: true,
            url: "https://sfu-3.example.org".into(),
            media: vec!["203.0.113.3:3478".parse().unwrap()],
            cluster: Some("203.0.113.3:7000".parse().unwrap()),
            draining: false,
            members: 120,
            channels: 4,
            cpu: 1.25,
        }
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let r = record();
        assert_eq!(NodeRecord::parse(r.to_json().as_bytes()), Ok(r));
        for bad in [
            &b""[..],
            b"{}",
            b"null",
            b"\xff\xfe",
            br#"{"id":70000,"region":"x","core":true,"edge":true,"url":"u","media":[],"cluster":null,"draining":false,"members":0,"channels":0}"#,
        ] {
            assert!(matches!(
                NodeRecord::parse(bad),
                Err(RecordError::Malformed(_))
            ));
        }
        for (field, bad) in [
            ("url", "javascript:alert(1)"),
            ("url", "https://ok.example.org\r\nSet-Cookie: x"),
            ("region", "eu west"),
            ("cpu", "-1"),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
            v[field] = match bad.parse::<f64>() {
                Ok(n) => n.into(),
                Err(_) => bad.into(),
            };
            assert!(
                matches!(
                    NodeRecord::parse(v.to_string().as_bytes()),
                    Err(RecordError::Malformed(_))
                ),
                "{field} {bad:?}"
            );
        }
        let newer = record()
            .to_json()
            .replace("\"id\"", "\"added_later\":[1],\"id\"");
        assert_eq!(
            NodeRecord::parse(newer.as_bytes()),
            Ok(record()),
            "a newer node's fields are ignored"
        );
        let older = record().to_json().replace(",\"cpu\":1.25", "");
        assert_eq!(
            NodeRecord::parse(older.as_bytes()).map(|r| r.cpu),
            Ok(0.0),
            "an older node's record has no cpu"
        );
        let long = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            NodeRecord::parse(&long),
            Err(RecordError::TooLong(MAX_RECORD_BYTES + 1))
        );
    }

    /// The fuzz target's seeds stay valid as the format changes.
    #[test]
    fn the_fuzz_seeds_parse() {
        let seeds = "/../fuzz/seeds/fleet_record/";
        let read = |name: &str| {
            std::fs::read(format!("{}{seeds}{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        assert!(NodeRecord::parse(&read("record.json")).is_ok());
        assert!(NodeRecord::parse(&read("edge.json")).is_ok());
        assert_eq!(
            Lease::parse(&read("lease")),
            Ok(Lease { node: 7, epoch: 42 })
        );
    }

    #[test]
    fn leases_parse_strictly() {
        let l = Lease { node: 7, epoch: 42 };
        assert_eq!(Lease::parse(l.to_string().as_bytes()), Ok(l));
        for bad in [
            &b""[..],
            b"7",
            b"7:",
            b":4",
            b"7:0",
            b"70000:1",
            b"7:-1",
            b"7:1:2",
            b"\xff:1",
        ] {
            assert!(Lease::parse(bad).is_err(), "{bad:?}");
        }
    }
}
