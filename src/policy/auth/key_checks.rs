//! Keys that RFC 7518 forbids, or that can never verify a token, are refused before use:
//! RSA under 2048 bits (§3.3) or with an unusable exponent, HMAC secrets shorter than the
//! hash output (§3.2), EC points off their curve, JWKs not meant for verifying, private keys
//! given where a public key belongs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations};
use jsonwebtoken::Algorithm;
use rsa::traits::PublicKeyParts;

pub const MIN_RSA_BITS: usize = 2048;

/// The shortest HMAC secret for `alg` (the hash output's length), 0 for other algorithms.
pub fn min_hmac_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 0,
    }
}

/// A PEM document that holds a private key, which can never verify.
pub fn is_private_pem(pem: &[u8]) -> bool {
    pem.windows(16).any(|w| w == b"PRIVATE KEY-----")
}

/// An RSA public key in PEM form is strong enough; `Ok` for keys of other types.
pub fn check_rsa_pem(pem: &[u8]) -> Result<(), String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let Ok(text) = std::str::from_utf8(pem) else {
        return Ok(());
    };
    let key =
        rsa::PublicKey::from_public_key_pem(text).or_else(|_| rsa::PublicKey::from_pkcs1_pem(text));
    match key {
        Ok(k) => check_rsa_parts(&k.n_bytes(), &k.e_bytes()),
        Err(_) if text.contains("RSA PUBLIC KEY") => Err("not a usable RSA public key".into()),
        Err(_) => Ok(()),
    }
}

/// Modulus and exponent (big-endian bytes) of an RSA key: at least 2048 bits, an odd
/// exponent of at least 3.
fn check_rsa_parts(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_zeros(n);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits is too short (RFC 7518 §3.3: at least {MIN_RSA_BITS})"
        ));
    }
    let e = strip_zeros(e);
    let small = e.len() == 1 && e[0] < 3;
    if e.is_empty() || small || e.last().is_some_and(|b| b % 2 == 0) {
        return Err("the RSA exponent is not an odd number of at least 3".into());
    }
    Ok(())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn b64(field: &str, v: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|_| format!("its {field} is not base64url"))
}

/// A JWK that may verify tokens: meant for it, and with sound parameters.
pub fn check_jwk(jwk: &Jwk) -> Result<(), String> {
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err("its key_ops do not include verify".into());
        }
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => check_rsa_parts(&b64("n", &p.n)?, &b64("e", &p.e)?),
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (b64("x", &p.x)?, b64("y", &p.y)?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let on_curve = match p.curve {
                EllipticCurve::P256 => p256::PublicKey::from_sec1_bytes(&point).is_ok(),
                EllipticCurve::P384 => p384::PublicKey::from_sec1_bytes(&point).is_ok(),
                _ => return Err(format!("curve {:?} is not supported", p.curve)),
            };
            if on_curve {
                Ok(())
            } else {
                Err(format!("its point is not on curve {:?}", p.curve))
            }
        }
        AlgorithmParameters::OctetKey(p) => {
            let secret = b64("k", &p.value)?;
            if secret.len() < 32 {
                return Err("an HMAC key needs at least 32 bytes".into());
            }
            Ok(())
        }
        AlgorithmParameters::OctetKeyPair(_) => Ok(()),
        _ => Err("its key type is not supported".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_parts() {
        let n2048 = vec![0x80; 256];
        assert!(check_rsa_parts(&n2048, &[1, 0, 1]).is_ok());
        assert!(
            check_rsa_parts(&[0x80; 128], &[1, 0, 1]).is_err(),
            "1024 bits"
        );
        assert!(check_rsa_parts(&n2048, &[1]).is_err(), "e = 1");
        assert!(check_rsa_parts(&n2048, &[4]).is_err(), "even e");
        // 2047 bits: the top byte has one bit less.
        let mut n2047 = vec![0xff; 256];
        n2047[0] = 0x7f;
        assert!(check_rsa_parts(&n2047, &[3]).is_err());
    }

    #[test]
    fn private_pem() {
        assert!(is_private_pem(b"-----BEGIN PRIVATE KEY-----\nMII"));
        assert!(is_private_pem(b"-----BEGIN RSA PRIVATE KEY-----\nMII"));
        assert!(!is_private_pem(b"-----BEGIN PUBLIC KEY-----\nMII"));
    }
}
