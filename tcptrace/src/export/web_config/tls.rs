//! The rustls server configuration a web config file's `tls_server_config` asks for: its
//! certificate and key, client certificate verification, protocol versions; and the errors,
//! field by field, for what it cannot or should not do.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{ClientAuth, TlsFile, WebConfigError};

pub(super) fn tls_config(
    dir: &Path,
    t: TlsFile,
    field: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<(ServerConfig, ClientAuth), WebConfigError> {
    let f = |name: &str| format!("tls_server_config.{name}");
    for (name, given) in [
        ("cert", t.cert.is_some()),
        ("key", t.key.is_some()),
        ("client_ca", t.client_ca.is_some()),
    ] {
        if given {
            return Err(field(
                &f(name),
                format!(
                    "inline PEM is not supported: put it in a file and give {name}_file instead"
                ),
            ));
        }
    }
    for (name, given) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        (
            "prefer_server_cipher_suites",
            t.prefer_server_cipher_suites.is_some(),
        ),
    ] {
        if given {
            return Err(field(
                &f(name),
                "not supported: tcptrace uses rustls' defaults, which offer only modern AEAD \
                 suites and curves; remove it"
                    .into(),
            ));
        }
    }
    if t.client_allowed_sans.is_some() {
        return Err(field(
            &f("client_allowed_sans"),
            "not supported: give client_ca_file a CA that signs only the clients to admit; \
             remove it"
                .into(),
        ));
    }
    let (Some(cert_file), Some(key_file)) = (&t.cert_file, &t.key_file) else {
        let missing = if t.cert_file.is_none() {
            "cert_file"
        } else {
            "key_file"
        };
        return Err(field(
            &f(missing),
            "missing: TLS needs both cert_file (the server certificate chain, PEM) and \
             key_file (its private key, PEM)"
                .into(),
        ));
    };
    let client_auth = match t.client_auth_type.as_deref() {
        None | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::Require,
        Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(field(
                &f("client_auth_type"),
                format!(
                    "{other} accepts client certificates without verifying them, which \
                     authenticates nobody: use RequireAndVerifyClientCert (or \
                     VerifyClientCertIfGiven) with client_ca_file"
                ),
            ));
        }
        Some(other) => {
            return Err(field(
                &f("client_auth_type"),
                format!(
                    "{other:?} is not one of NoClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    match (client_auth, &t.client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(field(
                &f("client_ca_file"),
                "given, but client_auth_type is NoClientCert, so it would not be used: set \
                 client_auth_type: RequireAndVerifyClientCert"
                    .into(),
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::Require, None) => {
            return Err(field(
                &f("client_ca_file"),
                "missing: verifying client certificates needs the CA that signs them (PEM)".into(),
            ));
        }
        _ => {}
    }
    let protocols = versions(
        t.min_version.as_deref(),
        t.max_version.as_deref(),
        &|name, problem| field(&f(name), problem),
    )?;
    let cert_path = dir.join(cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            field(
                &f("cert_file"),
                format!("{}: {e} (a PEM file of certificates)", cert_path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(field(
            &f("cert_file"),
            format!(
                "{}: no CERTIFICATE in it (a PEM file of certificates)",
                cert_path.display()
            ),
        ));
    }
    let key_path = dir.join(key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        field(
            &f("key_file"),
            format!(
                "{}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                key_path.display()
            ),
        )
    })?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocols)
        .map_err(|e| field(&f("min_version"), e.to_string()))?;
    let builder = match (client_auth, &t.client_ca_file) {
        (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let ca_path = dir.join(ca_file);
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    field(
                        &f("client_ca_file"),
                        format!("{}: {e} (a PEM file of CA certificates)", ca_path.display()),
                    )
                })?;
            for ca in cas {
                roots.add(ca).map_err(|e| {
                    field(&f("client_ca_file"), format!("{}: {e}", ca_path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(field(
                    &f("client_ca_file"),
                    format!("{}: no CERTIFICATE in it", ca_path.display()),
                ));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if auth != ClientAuth::Require {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| field(&f("client_ca_file"), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        field(
            &f("key_file"),
            format!(
                "{} does not go with {}: {e}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, client_auth))
}

/// The protocol versions between `min` and `max` (exporter-toolkit's names), TLS12 to TLS13 by
/// default.
fn versions(
    min: Option<&str>,
    max: Option<&str>,
    field: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, WebConfigError> {
    let rank = |name: &str, v: &str| match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(field(
            name,
            format!(
                "{v} is not supported (it is insecure, and rustls has neither 1.0 nor 1.1): use TLS12 or TLS13"
            ),
        )),
        other => Err(field(
            name,
            format!("{other:?} is not a TLS version: use TLS12 or TLS13"),
        )),
    };
    let lo = min
        .map(|v| rank("min_version", v))
        .transpose()?
        .unwrap_or(12);
    let hi = max
        .map(|v| rank("max_version", v))
        .transpose()?
        .unwrap_or(13);
    if lo > hi {
        return Err(field(
            "min_version",
            "is above max_version: no protocol version is left".into(),
        ));
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(n, _)| (lo..=hi).contains(n))
            .map(|(_, v)| v)
            .collect(),
    )
}
