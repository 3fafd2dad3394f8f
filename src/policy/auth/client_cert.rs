//! Client certificates as credentials: a certificate verified by a listener with
//! `tls.client_auth` names a consumer by its subject or one of its alternative names.

use super::{Identity, Reject, Verification};
use crate::tls::client_auth::{normalise_subject, PeerCert};
use std::collections::HashMap;
use std::sync::Arc;

pub const PROVIDER: &str = "client_cert";

#[derive(Default)]
pub struct ClientCerts {
    by_subject: HashMap<String, Arc<Identity>>,
    by_san: HashMap<String, Arc<Identity>>,
}

impl ClientCerts {
    /// Index one consumer's certificate; `false` when another consumer has it already.
    pub fn add(&mut self, subject: Option<&str>, san: Option<&str>, id: &Arc<Identity>) -> bool {
        let mut fresh = true;
        if let Some(s) = subject {
            fresh &= self
                .by_subject
                .insert(normalise_subject(s), id.clone())
                .is_none();
        }
        if let Some(s) = san {
            fresh &= self.by_san.insert(s.to_string(), id.clone()).is_none();
        }
        fresh
    }

    pub fn authenticate(&self, cert: Option<&PeerCert>) -> Verification {
        let Some(cert) = cert else {
            return Verification::Absent;
        };
        let found = self
            .by_subject
            .get(&cert.subject)
            .or_else(|| cert.sans.iter().find_map(|s| self.by_san.get(s)));
        match found {
            Some(id) => Verification::Accepted(id.clone()),
            None => Verification::Rejected(Reject::UnknownCertificate),
        }
    }
}
