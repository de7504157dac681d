//! Writes a throwaway certificate authority and a server certificate signed by it, for tests
//! that run ocellus over HTTPS (tests/clients/run.sh).
//!
//! `cargo run --quiet --example test_cert -- OUT_DIR` creates OUT_DIR if needed and writes:
//!
//! - `ca.pem`: the CA certificate, the trust root the clients get (`--cacert`, `OS_CACERT`);
//! - `server.pem`: the server certificate for `localhost` and `127.0.0.1`, signed by the CA
//!   (`tls_cert`);
//! - `server.key`: the server's private key as PKCS#8 PEM, readable by the owner only
//!   (`tls_key`).
//!
//! The keys are ECDSA P-256. The certificates are valid from a day ago, so that clocks that
//! disagree a little do not matter, for 30 days. The CA's key exists only in memory: nothing
//! else can ever be signed by it.

use std::error::Error;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The names the server certificate is valid for; an IP address becomes an IP SAN.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: test_cert OUT_DIR");
        return ExitCode::from(2);
    };
    match write_certificates(Path::new(&out_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("test_cert: {error}");
            ExitCode::FAILURE
        }
    }
}

fn write_certificates(out_dir: &Path) -> Result<(), Box<dyn Error>> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - Duration::days(1);
    let not_after = now + Duration::days(30);

    // The CA: may sign end-entity certificates only (path length 0).
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ocellus test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // The server: a TLS server certificate that names its issuer's key, as strict verifiers
    // (Python's VERIFY_X509_STRICT, for one) require.
    let mut server_params = CertificateParams::new(SERVER_NAMES.map(str::to_owned))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAMES[0]);
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    std::fs::create_dir_all(out_dir)
        .map_err(|error| format!("cannot create {}: {error}", out_dir.display()))?;
    write_file(&out_dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    write_file(&out_dir.join("server.pem"), &server_cert.pem(), 0o644)?;
    write_file(
        &out_dir.join("server.key"),
        &server_key.serialize_pem(),
        0o600,
    )?;
    Ok(())
}

/// Replaces `path` with `contents`; a new file gets `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}
