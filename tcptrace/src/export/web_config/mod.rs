//! `serve --web.config.file`: TLS and basic authentication for the exporter, configured as
//! every Prometheus exporter is (the exporter-toolkit web configuration file,
//! <https://prometheus.io/docs/prometheus/latest/configuration/https/>), so the same file and
//! the same habits work here:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/tcptrace/tls.crt
//!   key_file: /etc/tcptrace/tls.key
//!   # Optional: only clients with a certificate signed by this CA get in.
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: /etc/tcptrace/client-ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...   # bcrypt hash: htpasswd -nBC 10 "" | tr -d ':\n'
//! ```
//!
//! What rustls cannot or should not do is refused with the key named, never ignored: TLS 1.0
//! and 1.1, Go's cipher suite and curve names, client certificates requested but not verified.
//! The file (and the certificates it names) is read again when any of them changes, checked at
//! each new connection, so certificates can be rotated without a restart.

mod reload;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use serde::Deserialize;

pub use reload::WebConfigSource;

/// The file as written. Every key of exporter-toolkit's format is known, so that the ones
/// tcptrace does not support get an error that says so rather than "unknown field".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<serde_yaml_ng::Value>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

/// How clients must present certificates (exporter-toolkit's `client_auth_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default).
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but one that is given must be
    /// signed by `client_ca_file`.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`.
    Require,
}

/// The web configuration, checked and ready to serve with.
pub struct WebConfig {
    /// `Some` when `tls_server_config` is given: the exporter speaks HTTPS only.
    pub tls: Option<Arc<ServerConfig>>,
    pub client_auth: ClientAuth,
    /// User name -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read the web config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {field}: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl WebConfig {
    /// Reads and checks the file and everything it names.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        WebConfig::parse(path, &text)
    }

    /// Checks `text` as the file at `path` (relative file names are relative to its folder,
    /// as exporter-toolkit reads them).
    pub fn parse(path: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Syntax {
                path: path.to_owned(),
                message: syntax_message(&e),
            })?
        };
        let field = |field: &str, problem: String| WebConfigError::Field {
            path: path.to_owned(),
            field: field.to_string(),
            problem,
        };
        if file.http_server_config.is_some() {
            return Err(field(
                "http_server_config",
                "not supported: tcptrace serves HTTP/1.1 and sets no extra headers; remove \
                 this section"
                    .into(),
            ));
        }
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(field(
                    &format!("basic_auth_users.{user}"),
                    "a user name cannot contain ':' (basic authentication separates the name \
                     from the password with it)"
                        .into(),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(field(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash (it starts with $2y$, $2b$ or $2a$ and is 60 characters \
                     long): store the hash, never the password; make one with \
                     `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                        .into(),
                ));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let (tls, client_auth) = match file.tls_server_config {
            Some(t) => {
                let (config, auth) = tls::tls_config(dir, t, &field)?;
                (Some(Arc::new(config)), auth)
            }
            None => (None, ClientAuth::None),
        };
        Ok(WebConfig {
            tls,
            client_auth,
            users,
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The files whose change means the configuration must be read again.
    fn watched(path: &Path, text: &str) -> Vec<PathBuf> {
        let mut files = vec![path.to_owned()];
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Ok(File {
            tls_server_config: Some(t),
            ..
        }) = serde_yaml_ng::from_str::<File>(text)
        {
            for p in [t.cert_file, t.key_file, t.client_ca_file]
                .into_iter()
                .flatten()
            {
                files.push(dir.join(p));
            }
        }
        files
    }
}

/// serde_yaml_ng's message, with the fix for the usual mistake.
fn syntax_message(e: &serde_yaml_ng::Error) -> String {
    let m = e.to_string();
    if m.contains("unknown field") {
        format!(
            "{m}. tcptrace reads exporter-toolkit's web configuration: tls_server_config \
             (cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version) \
             and basic_auth_users"
        )
    } else {
        m
    }
}

/// What `serve` says at start-up about where it serves and who can read it.
pub fn notices(addr: std::net::SocketAddr, web: Option<&WebConfig>) -> Vec<String> {
    let scheme = web.map_or("http", WebConfig::scheme);
    let mut out = vec![format!(
        "serving {scheme}://{addr}/metrics, /report.json and /healthz"
    )];
    let Some(w) = web else {
        if !addr.ip().is_loopback() {
            out.push(format!(
                "{addr} is not a loopback address: anyone who can reach it can read the process \
                 names, ports and peers in the metrics (--web.config.file adds TLS and basic \
                 authentication)"
            ));
        }
        return out;
    };
    let mut how = Vec::new();
    if w.tls.is_some() {
        how.push(match w.client_auth {
            ClientAuth::None => "TLS",
            ClientAuth::VerifyIfGiven => "TLS (client certificates verified when given)",
            ClientAuth::Require => "TLS with verified client certificates",
        });
    }
    if !w.users.is_empty() {
        how.push("basic authentication");
    }
    if how.is_empty() {
        how.push("no TLS and no authentication (the web config file sets neither)");
    }
    out.push(format!("{}; /healthz is open to all", how.join(", ")));
    if w.tls.is_none() && !w.users.is_empty() {
        out.push(
            "basic authentication without TLS sends passwords in clear text: add \
             tls_server_config"
                .into(),
        );
    }
    if !addr.ip().is_loopback() && w.users.is_empty() && w.client_auth != ClientAuth::Require {
        out.push(format!(
            "{addr} is not a loopback address and the web config file authenticates no one: \
             anyone who can reach it can read the metrics"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error for `yaml`, as `serve` prints it.
    fn error(yaml: &str) -> String {
        WebConfig::parse(Path::new("/etc/tcptrace/web.yml"), yaml)
            .unwrap_err()
            .to_string()
    }

    const TLS: &str = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n";

    #[test]
    fn an_empty_file_turns_nothing_on() {
        let w = WebConfig::parse(Path::new("/etc/web.yml"), "# nothing\n").unwrap();
        assert!(w.tls.is_none() && w.users.is_empty());
        assert_eq!(w.scheme(), "http");
    }

    #[test]
    fn each_bad_setting_is_named_with_its_fix() {
        for (yaml, needles) in [
            (
                "basic_auth_users:\n  alice: hunter2\n".to_string(),
                &["/etc/tcptrace/web.yml: basic_auth_users.alice: not a bcrypt hash", "htpasswd"][..],
            ),
            (
                "basic_auth_users:\n  'a:b': '$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi'\n".into(),
                &["basic_auth_users.a:b", "cannot contain ':'"],
            ),
            (
                "tls_server_confg:\n  cert_file: x\n".into(),
                &["unknown field `tls_server_confg`", "tls_server_config (cert_file"],
            ),
            (
                "http_server_config:\n  http2: false\n".into(),
                &["http_server_config: not supported", "remove this section"],
            ),
            (
                "tls_server_config:\n  key_file: tls.key\n".into(),
                &["tls_server_config.cert_file: missing"],
            ),
            (
                format!("{TLS}  min_version: TLS11\n"),
                &["tls_server_config.min_version: TLS11 is not supported", "use TLS12 or TLS13"],
            ),
            (
                format!("{TLS}  min_version: TLS13\n  max_version: TLS12\n"),
                &["tls_server_config.min_version: is above max_version"],
            ),
            (
                format!("{TLS}  client_auth_type: RequireAnyClientCert\n"),
                &["client_auth_type: RequireAnyClientCert accepts client certificates without verifying", "RequireAndVerifyClientCert"],
            ),
            (
                format!("{TLS}  client_auth_type: Sometimes\n"),
                &["client_auth_type: \"Sometimes\" is not one of"],
            ),
            (
                format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n"),
                &["tls_server_config.client_ca_file: missing"],
            ),
            (
                format!("{TLS}  client_ca_file: ca.crt\n"),
                &["tls_server_config.client_ca_file: given, but client_auth_type is NoClientCert"],
            ),
            (
                format!("{TLS}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
                &["tls_server_config.cipher_suites: not supported", "remove it"],
            ),
            (
                "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n".into(),
                &["tls_server_config.cert: inline PEM is not supported", "cert_file"],
            ),
            (
                // Relative to the file's folder.
                TLS.to_string(),
                &["tls_server_config.cert_file: /etc/tcptrace/tls.crt:"],
            ),
        ] {
            let e = error(&yaml);
            for n in needles {
                assert!(e.contains(n), "{yaml}\n-> {e}\nmissing: {n}");
            }
        }
    }

    #[test]
    fn exposure_is_stated_at_start_up() {
        let open: std::net::SocketAddr = "0.0.0.0:9977".parse().unwrap();
        let n = notices(open, None);
        assert!(
            n[0].starts_with("serving http://0.0.0.0:9977/metrics"),
            "{n:?}"
        );
        assert!(n[1].contains("--web.config.file adds TLS"), "{n:?}");
        let users = WebConfig::parse(
            Path::new("/w.yml"),
            "basic_auth_users:\n  u: '$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi'\n",
        )
        .unwrap();
        let n = notices(open, Some(&users));
        assert!(
            n.iter().any(|l| l.contains("passwords in clear text")),
            "{n:?}"
        );
        assert!(notices("127.0.0.1:9977".parse().unwrap(), None).len() == 1);
    }
}
