//! The address clients are told to send RTP to.
//!
//! A pod cannot see the address the outside world reaches it at: on a
//! node with a public address the pod sees a private one, behind a
//! per-pod load balancer it sees its pod IP. So the address can come from
//! a directory of one file per key (a mounted ConfigMap: node name ->
//! the node's external address, or pod name -> its load balancer's
//! address), looked up by this instance's key (its node or pod name, from
//! the downward API). A file holds `host` or `host:port`.

use std::path::Path;

use relaymesh_config::join_host_port;

/// Where clients send RTP: `host:port`.
///
/// `mapped` is the content of this instance's file in the address
/// directory, if it has one; otherwise `public_host` and `public_port`
/// (or the port the socket bound, `bound_port`) apply.
pub(crate) fn media_addr(mapped: Option<&str>, public_host: &str, public_port: Option<u16>, bound_port: u16) -> String {
    let port = public_port.unwrap_or(bound_port);
    match mapped.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) if has_port(m) => m.to_owned(),
        Some(host) => join_host_port(host, port),
        None => join_host_port(public_host, port),
    }
}

/// `host:port`, `[v6]:port` carry a port; `host`, `v6` and `[v6]` do not.
fn has_port(addr: &str) -> bool {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once("]:").is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    }
    matches!(addr.split_once(':'), Some((_, p)) if !p.contains(':') && p.parse::<u16>().is_ok())
}

/// This instance's entry in the address directory: `Ok(None)` when the
/// directory has no file for `key`. A key that is not a plain file name is
/// refused, so it cannot point outside the directory.
pub(crate) fn lookup(dir: &Path, key: &str) -> std::io::Result<Option<String>> {
    if key.is_empty() || key.starts_with('.') || key.contains(['/', '\\']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("media address key {key:?} is not a file name"),
        ));
    }
    match std::fs::read_to_string(dir.join(key)) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_host_takes_the_public_or_bound_port() {
        assert_eq!(
            media_addr(Some("203.0.113.7\n"), "10.0.0.5", None, 5004),
            "203.0.113.7:5004"
        );
        assert_eq!(
            media_addr(Some("203.0.113.7"), "10.0.0.5", Some(31000), 5004),
            "203.0.113.7:31000"
        );
        assert_eq!(media_addr(Some("2001:db8::7"), "x", None, 5004), "[2001:db8::7]:5004");
    }

    #[test]
    fn a_mapped_address_with_a_port_is_used_as_is() {
        assert_eq!(
            media_addr(Some("relay-0.example.com:31004"), "x", Some(1), 5004),
            "relay-0.example.com:31004"
        );
        assert_eq!(
            media_addr(Some("[2001:db8::7]:31004"), "x", None, 5004),
            "[2001:db8::7]:31004"
        );
    }

    #[test]
    fn without_a_mapping_the_public_host_applies() {
        assert_eq!(media_addr(None, "10.0.0.5", None, 5004), "10.0.0.5:5004");
        assert_eq!(media_addr(Some("  "), "10.0.0.5", Some(7), 5004), "10.0.0.5:7");
    }

    #[test]
    fn lookup_reads_the_key_file_and_refuses_paths() {
        let dir = std::env::temp_dir().join(format!("relaymesh-advertise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node-a"), "198.51.100.1\n").unwrap();
        assert_eq!(lookup(&dir, "node-a").unwrap().as_deref(), Some("198.51.100.1"));
        assert_eq!(lookup(&dir, "node-b").unwrap(), None);
        assert!(lookup(&dir, "../etc").is_err());
        assert!(lookup(&dir, "a/b").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
