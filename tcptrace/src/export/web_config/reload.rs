//! A running exporter's web configuration: read again when the file or a certificate it names
//! changes, checked at each new connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{WebConfig, WebConfigError};

/// When each watched file last changed (modification time, size, inode).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// The web configuration of a running exporter: checked at start-up, and read again at a new
/// connection when the file or a certificate it names has changed since. A file that turned
/// bad refuses connections (and says why in the log) rather than serving with stale users or
/// certificates.
pub struct WebConfigSource {
    path: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    files: Vec<PathBuf>,
    stamp: Stamp,
    config: Result<Arc<WebConfig>, String>,
}

impl WebConfigSource {
    /// Loads the file; an error here stops `serve` from starting. Returns the configuration
    /// read, too (for the start-up notice).
    pub fn load(path: &Path) -> Result<(WebConfigSource, Arc<WebConfig>), WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let files = WebConfig::watched(path, &text);
        let stamp = stamp(&files);
        let config = Arc::new(WebConfig::parse(path, &text)?);
        let source = WebConfigSource {
            path: path.to_owned(),
            current: Mutex::new(Loaded {
                files,
                stamp,
                config: Ok(config.clone()),
            }),
        };
        Ok((source, config))
    }

    /// The configuration to serve the next connection with.
    pub fn current(&self) -> Result<Arc<WebConfig>, String> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&cur.files);
        if now != cur.stamp {
            // Stamped before reading: a change made while reading is seen next time.
            let read = std::fs::read_to_string(&self.path).map_err(|source| WebConfigError::Read {
                path: self.path.clone(),
                source,
            });
            let files = match &read {
                Ok(text) => WebConfig::watched(&self.path, text),
                Err(_) => cur.files.clone(),
            };
            cur.stamp = if files == cur.files {
                now
            } else {
                stamp(&files)
            };
            cur.files = files;
            cur.config = read
                .and_then(|text| WebConfig::parse(&self.path, &text))
                .map(Arc::new)
                .map_err(|e| e.to_string());
            match &cur.config {
                Ok(_) => log::info!("{}: read again after a change", self.path.display()),
                Err(e) => log::error!("{e}; refusing connections until it is fixed"),
            }
        }
        cur.config.clone()
    }
}
