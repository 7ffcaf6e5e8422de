//! Certificates for the real-server tier, written as PEM files for nginx:
//! a private CA that the agents trust (`vantage-agent run --cacert`, as they
//! would trust a public CA), the origin's and the edge's certificates from
//! it, and the bad ones — a self-signed certificate for the site, a
//! certificate from the CA for another name, and the carrier middlebox's own
//! self-signed certificate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// Every certificate a case may need.
#[derive(Debug, Clone)]
pub struct LabPki {
    /// The private CA's certificate (what the agents and the edge trust).
    pub ca: PathBuf,
    /// For the site, from the CA (the origin's and the edge's).
    pub site: CertFiles,
    /// For the site, self-signed (an origin with a bad certificate).
    pub self_signed: CertFiles,
    /// From the CA, but for [`super::OTHER_SITE`] only (wrong name).
    pub wrong_name: CertFiles,
    /// The carrier middlebox's own certificate for the site, self-signed by
    /// "Carrier Security Gateway".
    pub middlebox: CertFiles,
}

impl LabPki {
    /// Generates all of them into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<LabPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vantage real-lab private CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).context("writing the CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |name: &str, host: &str, issuer: Option<&Issuer<'_, KeyPair>>, cn: &str| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![host.to_string()])?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = match issuer {
                Some(issuer) => params.signed_by(&key, issuer)?,
                None => params.self_signed(&key)?,
            };
            let files = CertFiles {
                cert: dir.join(format!("{name}.crt")),
                key: dir.join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, cert.pem())?;
            std::fs::write(&files.key, key.serialize_pem())?;
            anyhow::Ok(files)
        };
        Ok(LabPki {
            site: leaf("site", super::SITE, Some(&issuer), super::SITE)?,
            self_signed: leaf("self-signed", super::SITE, None, super::SITE)?,
            wrong_name: leaf(
                "wrong-name",
                super::OTHER_SITE,
                Some(&issuer),
                super::OTHER_SITE,
            )?,
            middlebox: leaf("middlebox", super::SITE, None, "Carrier Security Gateway")?,
            ca,
        })
    }
}
