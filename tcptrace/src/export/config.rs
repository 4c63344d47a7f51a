//! The exporter's settings: defaults, then the config file (TOML), then command-line flags.
//!
//! ```toml
//! # /etc/tcptrace/serve.toml
//! listen = "127.0.0.1:9977"   # address:port of the HTTP endpoint
//! top_pids = 20               # processes with their own series; the rest sum into pid="other"
//! top_peers = 20              # peers (and port-pressure destinations) with their own series
//! top_ports = 20              # local ports with their own series
//! max_connections = 16        # concurrent HTTP connections; more are closed at once
//! ```
//!
//! Every key is optional; unknown keys are errors, so a typo is never silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::current::Cardinality;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9977";
/// Series per family are bounded by this, whatever the file or flags say.
pub const MAX_TOP: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub limits: Cardinality,
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            limits: Cardinality::default(),
            max_connections: 16,
        }
    }
}

/// The file's contents: every key optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    top_pids: Option<usize>,
    top_peers: Option<usize>,
    top_ports: Option<usize>,
    max_connections: Option<usize>,
}

/// What the command line set (None: not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub top_pids: Option<usize>,
    pub top_peers: Option<usize>,
    pub top_ports: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: listen = {value:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9977 or [::1]:9977)")]
    Listen { path: PathBuf, value: String },
    #[error("{what} = {value} is out of range: use 0 to {max}")]
    Range {
        what: &'static str,
        value: usize,
        max: usize,
    },
}

impl ServeConfig {
    /// Defaults, overlaid with the file (if any), overlaid with the flags.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<ServeConfig, ConfigError> {
        let mut cfg = ServeConfig::default();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            cfg.apply_file(path, &text)?;
        }
        if let Some(l) = flags.listen {
            cfg.listen = l;
        }
        set(&mut cfg.limits.top_pids, flags.top_pids);
        set(&mut cfg.limits.top_peers, flags.top_peers);
        set(&mut cfg.limits.top_ports, flags.top_ports);
        cfg.check()?;
        Ok(cfg)
    }

    fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_string(),
        })?;
        if let Some(l) = f.listen {
            self.listen = l.parse().map_err(|_| ConfigError::Listen {
                path: path.to_owned(),
                value: l.clone(),
            })?;
        }
        set(&mut self.limits.top_pids, f.top_pids);
        set(&mut self.limits.top_peers, f.top_peers);
        set(&mut self.limits.top_ports, f.top_ports);
        set(&mut self.max_connections, f.max_connections);
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        for (what, value, max) in [
            ("top_pids", self.limits.top_pids, MAX_TOP),
            ("top_peers", self.limits.top_peers, MAX_TOP),
            ("top_ports", self.limits.top_ports, MAX_TOP),
            ("max_connections", self.max_connections, 1024),
        ] {
            if value > max {
                return Err(ConfigError::Range { what, value, max });
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Range {
                what: "max_connections",
                value: 0,
                max: 1024,
            });
        }
        Ok(())
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (PathBuf, impl Drop) {
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let p = std::env::temp_dir().join(format!(
            "tcptrace-serve-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        (p.clone(), Rm(p))
    }

    #[test]
    fn defaults_bind_loopback() {
        let c = ServeConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9977".parse().unwrap());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.limits, Cardinality::default());
    }

    #[test]
    fn file_then_flags() {
        let (p, _rm) = write("listen = \"[::1]:9100\"\ntop_pids = 5\ntop_ports = 7\n");
        let c = ServeConfig::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.listen, "[::1]:9100".parse().unwrap());
        assert_eq!(
            (c.limits.top_pids, c.limits.top_peers, c.limits.top_ports),
            (5, 20, 7)
        );
        let flags = Overrides {
            listen: Some("127.0.0.2:1".parse().unwrap()),
            top_pids: Some(3),
            ..Overrides::default()
        };
        let c = ServeConfig::load(Some(&p), &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.2:1".parse().unwrap());
        assert_eq!(c.limits.top_pids, 3);
        assert_eq!(c.limits.top_ports, 7);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let (p, _rm) = write("top_pid = 5\n");
        let e = ServeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("unknown field `top_pid`"), "{e}");
        let (p, _rm) = write("listen = \"localhost\"\n");
        let e = ServeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Listen { .. }), "{e}");
        let (p, _rm) = write("top_peers = 100000\n");
        let e = ServeConfig::load(Some(&p), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("top_peers = 100000"), "{e}");
        let e = ServeConfig::load(
            Some(Path::new("/nonexistent/x.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
