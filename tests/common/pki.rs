//! A throw-away PKI for TLS tests, made with the `openssl` crate: a CA, a server certificate for
//! 127.0.0.1 and localhost, and a client certificate, as PEM files in a directory.
//!
//! Shared by the integration tests (`common::pki`) and the crate's unit tests (included with
//! `#[path]`), so it uses nothing but `std` and `openssl`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// The PEM files of one PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server's certificate (SAN 127.0.0.1, localhost), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's key (PKCS#8).
    pub server_key: PathBuf,
    /// A client certificate (for mutual TLS), signed by the CA.
    pub client_cert: PathBuf,
    /// The client's key, in the traditional EC form (`BEGIN EC PRIVATE KEY`), not PKCS#8.
    pub client_key: PathBuf,
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

enum Kind<'a> {
    Ca,
    Server(&'a X509),
    Client(&'a X509),
}

fn cert(cn: &str, key: &PKey<Private>, kind: Kind<'_>, signer: &PKey<Private>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(7).unwrap())
        .unwrap();
    match kind {
        Kind::Ca => {
            b.set_issuer_name(&name).unwrap();
            let bc = BasicConstraints::new().critical().ca().build().unwrap();
            b.append_extension(bc).unwrap();
            let ku = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap();
            b.append_extension(ku).unwrap();
        }
        Kind::Server(ca) | Kind::Client(ca) => {
            b.set_issuer_name(ca.subject_name()).unwrap();
            b.append_extension(BasicConstraints::new().build().unwrap())
                .unwrap();
            let ku = KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap();
            b.append_extension(ku).unwrap();
            if let Kind::Server(_) = kind {
                let eku = ExtendedKeyUsage::new().server_auth().build().unwrap();
                b.append_extension(eku).unwrap();
                let san = SubjectAlternativeName::new()
                    .ip("127.0.0.1")
                    .dns("localhost")
                    .build(&b.x509v3_context(Some(ca), None))
                    .unwrap();
                b.append_extension(san).unwrap();
            } else {
                let eku = ExtendedKeyUsage::new().client_auth().build().unwrap();
                b.append_extension(eku).unwrap();
            }
        }
    }
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// Makes a new CA with a server and a client certificate into `dir` (files named after
/// `prefix`); two calls make two CAs that trust nothing of each other.
pub fn generate(dir: &Path, prefix: &str) -> Pki {
    let ca_key = key();
    let ca = cert(&format!("{prefix} test CA"), &ca_key, Kind::Ca, &ca_key);
    let server_key = key();
    let server = cert("127.0.0.1", &server_key, Kind::Server(&ca), &ca_key);
    let client_key = key();
    let client = cert("kgate test client", &client_key, Kind::Client(&ca), &ca_key);
    let write = |name: &str, pem: Vec<u8>| {
        let path = dir.join(format!("{prefix}-{name}"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.to_pem().unwrap()),
        server_cert: write("server.pem", server.to_pem().unwrap()),
        server_key: write("server.key", server_key.private_key_to_pem_pkcs8().unwrap()),
        client_cert: write("client.pem", client.to_pem().unwrap()),
        client_key: write(
            "client.key",
            client_key.ec_key().unwrap().private_key_to_pem().unwrap(),
        ),
    }
}
