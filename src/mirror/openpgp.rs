//! OpenPGP signatures over vendor digest files, judged by our policy.
//!
//! The `pgp` crate parses keys and signatures and does the cryptography; whether a signature
//! vouches for anything is decided here, more strictly than the crate alone would:
//! - the digest is SHA-2 or SHA-3 (the crate also accepts SHA-1, MD5 and RIPEMD-160);
//! - the signing key is RSA of at least 2048 bits, Ed25519, or ECDSA on P-256, P-384 or
//!   P-521;
//! - the issuer is the primary key of a pinned fingerprint (`signers`), or a subkey bound to
//!   one by a valid binding signature that grants signing, with a valid back-signature;
//! - neither that key nor its primary is revoked or expired, the signature has not expired, and
//!   it was made no more than five minutes in the future.
//!
//! One signature that passes is enough (Ubuntu signs with two keys); when none does, the
//! error says why each failed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType};
use pgp::ser::Serialize;
use pgp::types::{EcdsaPublicParams, EddsaLegacyPublicParams, KeyDetails, PublicParams, Tag};

/// The largest keyring or signature parsed.
pub const MAX_DOCUMENT: usize = 1 << 20;
/// The largest clearsigned document parsed (simplestreams product files run to megabytes).
pub const MAX_SIGNED_DOCUMENT: usize = 64 << 20;
/// How far in the future a signature may claim to be made (clock skew).
const FUTURE_SKEW: Duration = Duration::from_secs(300);
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: u16 = 2048;

/// The public keys of a keyring file.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.fingerprints()).finish()
    }
}

/// Uppercase hex of a key's fingerprint.
pub fn fingerprint(key: &impl KeyDetails) -> String {
    format!("{:X}", key.fingerprint())
}

/// A fingerprint as given by a person (spaces, `0x`, any case) in our spelling.
pub fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !matches!(hex.len(), 40 | 64) || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a key fingerprint (40 or 64 hex digits)"
        ));
    }
    Ok(hex)
}

impl Keyring {
    /// Reads keys, ASCII-armored or binary, several per file.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, String> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(format!("larger than {MAX_DOCUMENT} bytes"));
        }
        let armored = bytes
            .windows(10)
            .take(4096)
            .any(|window| window == b"-----BEGIN");
        let keys: Vec<SignedPublicKey> = if armored {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|error| error.to_string())?
                .0
                .collect::<Result<_, _>>()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|error| error.to_string())?
                .collect::<Result<_, _>>()
        }
        .map_err(|error| error.to_string())?;
        if keys.is_empty() {
            return Err("holds no public key".into());
        }
        Ok(Keyring { keys })
    }

    pub fn load(path: &std::path::Path) -> Result<Keyring, String> {
        let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
        Keyring::parse(&bytes).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// The primary keys' fingerprints.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| fingerprint(&key.primary_key))
            .collect()
    }

    pub fn contains(&self, fingerprint_hex: &str) -> bool {
        self.fingerprints()
            .iter()
            .any(|known| known == fingerprint_hex)
    }
}

/// Checks a detached signature (binary or armored) over `data`; returns the fingerprint of the
/// pinned primary key it was made under.
pub fn verify_detached(
    keyring: &Keyring,
    signers: &[String],
    data: &[u8],
    signature: &[u8],
    now: SystemTime,
) -> Result<String, String> {
    if signature.len() > MAX_DOCUMENT {
        return Err(format!("the signature is larger than {MAX_DOCUMENT} bytes"));
    }
    let armored = signature.starts_with(b"-----BEGIN");
    let signatures: Vec<DetachedSignature> = if armored {
        DetachedSignature::from_armor_many(signature)
            .map_err(|error| format!("unreadable signature: {error}"))?
            .0
            .collect::<Result<_, _>>()
    } else {
        DetachedSignature::from_bytes_many(signature)
            .map_err(|error| format!("unreadable signature: {error}"))?
            .collect::<Result<_, _>>()
    }
    .map_err(|error| format!("unreadable signature: {error}"))?;
    let signatures: Vec<Signature> = signatures.into_iter().map(|one| one.signature).collect();
    first_valid(keyring, signers, &signatures, data, now)
}

/// Checks a clearsigned document; returns its signed text (dash-escaping undone, with the line
/// ends that were signed) and the pinned primary key's fingerprint.
pub fn verify_clearsigned(
    keyring: &Keyring,
    signers: &[String],
    document: &[u8],
    now: SystemTime,
) -> Result<(String, String), String> {
    if document.len() > MAX_SIGNED_DOCUMENT {
        return Err(format!(
            "the document is larger than {MAX_SIGNED_DOCUMENT} bytes"
        ));
    }
    let text = std::str::from_utf8(document).map_err(|_| "the document is not UTF-8")?;
    let (message, _) = CleartextSignedMessage::from_string(text)
        .map_err(|error| format!("not a clearsigned document: {error}"))?;
    let signed = message.signed_text();
    let signer = first_valid(
        keyring,
        signers,
        message.signatures(),
        signed.as_bytes(),
        now,
    )?;
    Ok((signed, signer))
}

/// Signs `data` with the primary key of an armored, unprotected secret key (SHA-256); returns
/// the armored detached signature. For a bundle's manifest.
pub fn sign_detached(secret_key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    if secret_key.len() > MAX_DOCUMENT {
        return Err(format!(
            "the secret key is larger than {MAX_DOCUMENT} bytes"
        ));
    }
    let (key, _) = pgp::composed::SignedSecretKey::from_armor_single(secret_key)
        .map_err(|error| format!("not an armored secret key: {error}"))?;
    let signature = DetachedSignature::sign_binary_data(
        rand::rngs::OsRng,
        &key.primary_key,
        &pgp::types::Password::empty(),
        HashAlgorithm::Sha256,
        data,
    )
    .map_err(|error| format!("signing: {error}"))?;
    signature
        .to_armored_bytes(pgp::composed::ArmorOptions::default())
        .map_err(|error| error.to_string())
}

fn first_valid(
    keyring: &Keyring,
    signers: &[String],
    signatures: &[Signature],
    data: &[u8],
    now: SystemTime,
) -> Result<String, String> {
    if signatures.is_empty() {
        return Err("no signature".into());
    }
    let mut reasons = Vec::new();
    for signature in signatures {
        match judge(keyring, signers, signature, data, now) {
            Ok(signer) => return Ok(signer),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(reasons.join("; "))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

fn secs(seconds: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(seconds))
}

/// Whether a time plus an expiration (`None` or zero: never) has passed.
fn expired(start: SystemTime, lifetime: Option<u32>, now: SystemTime) -> bool {
    match lifetime {
        Some(seconds) if seconds > 0 => start + Duration::from_secs(u64::from(seconds)) <= now,
        _ => false,
    }
}

fn judge(
    keyring: &Keyring,
    signers: &[String],
    signature: &Signature,
    data: &[u8],
    now: SystemTime,
) -> Result<String, String> {
    match signature.typ() {
        Some(SignatureType::Binary | SignatureType::Text) => {}
        other => return Err(format!("a {other:?} signature does not sign a document")),
    }
    match signature.hash_alg() {
        Some(
            HashAlgorithm::Sha224
            | HashAlgorithm::Sha256
            | HashAlgorithm::Sha384
            | HashAlgorithm::Sha512
            | HashAlgorithm::Sha3_256
            | HashAlgorithm::Sha3_512,
        ) => {}
        Some(other) => return Err(format!("a signature hashed with {other} is refused")),
        None => return Err("a signature of an unknown version".into()),
    }
    let created = signature
        .created()
        .map(|at| secs(at.as_secs()))
        .ok_or("a signature without a creation time")?;
    if created > now + FUTURE_SKEW {
        return Err("a signature made in the future".into());
    }
    if expired(
        created,
        signature.signature_expiration_time().map(|d| d.as_secs()),
        now,
    ) {
        return Err("an expired signature".into());
    }
    let issuers: Vec<String> = signature
        .issuer_fingerprint()
        .iter()
        .map(|fpr| format!("{fpr:X}"))
        .collect();
    let key_ids: Vec<String> = signature
        .issuer_key_id()
        .iter()
        .map(|id| hex_upper(id.as_ref()))
        .collect();
    let named = |key: &dyn KeyDetails| {
        let fpr = format!("{:X}", key.fingerprint());
        let id = hex_upper(key.legacy_key_id().as_ref());
        issuers.contains(&fpr) || (issuers.is_empty() && key_ids.contains(&id))
    };
    for key in &keyring.keys {
        let primary = &key.primary_key;
        if !named(primary) && !key.public_subkeys.iter().any(|sub| named(&sub.key)) {
            continue;
        }
        let pinned = fingerprint(primary);
        if !signers.contains(&pinned) {
            return Err(format!(
                "signed by {pinned}, which is in the keyring but not among the signers"
            ));
        }
        primary_usable(key, now)?;
        if named(primary) {
            key_policy(primary.public_params(), &pinned)?;
            if secs(primary.created_at().as_secs()) > created {
                return Err(format!("a signature older than its key {pinned}"));
            }
            signature
                .verify(primary, data)
                .map_err(|error| format!("a bad signature by {pinned}: {error}"))?;
            return Ok(pinned);
        }
        for sub in &key.public_subkeys {
            if !named(&sub.key) {
                continue;
            }
            let sub_fpr = fingerprint(&sub.key);
            subkey_usable(key, sub, now)?;
            key_policy(sub.key.public_params(), &sub_fpr)?;
            if secs(sub.key.created_at().as_secs()) > created {
                return Err(format!("a signature older than its key {sub_fpr}"));
            }
            signature
                .verify(&sub.key, data)
                .map_err(|error| format!("a bad signature by {sub_fpr}: {error}"))?;
            return Ok(pinned);
        }
    }
    let named = issuers
        .first()
        .or(key_ids.first())
        .cloned()
        .unwrap_or_default();
    Err(format!("signed by {named}, which is not in the keyring"))
}

/// The algorithm and size rules for a key that signs.
fn key_policy(params: &PublicParams, fpr: &str) -> Result<(), String> {
    match params {
        PublicParams::RSA(rsa) => {
            let bytes = rsa
                .to_bytes()
                .map_err(|error| format!("key {fpr}: {error}"))?;
            let bits = u16::from_be_bytes([
                bytes.first().copied().unwrap_or(0),
                bytes.get(1).copied().unwrap_or(0),
            ]);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "key {fpr} is RSA of {bits} bits; at least {MIN_RSA_BITS} are needed"
                ));
            }
            Ok(())
        }
        PublicParams::Ed25519(_)
        | PublicParams::EdDSALegacy(EddsaLegacyPublicParams::Ed25519 { .. }) => Ok(()),
        PublicParams::ECDSA(
            EcdsaPublicParams::P256 { .. }
            | EcdsaPublicParams::P384 { .. }
            | EcdsaPublicParams::P521 { .. },
        ) => Ok(()),
        _ => Err(format!(
            "key {fpr} uses an algorithm that is refused (only RSA, Ed25519 and ECDSA P-256 and up)"
        )),
    }
}

/// The primary key is not revoked, and its newest valid self-signature does not say it has
/// expired.
fn primary_usable(key: &SignedPublicKey, now: SystemTime) -> Result<(), String> {
    let primary = &key.primary_key;
    let fpr = fingerprint(primary);
    let revoked = key.details.revocation_signatures.iter().any(|revocation| {
        revocation.typ() == Some(SignatureType::KeyRevocation)
            && revocation.verify_key(primary).is_ok()
    });
    if revoked {
        return Err(format!("key {fpr} is revoked"));
    }
    let mut newest: Option<&Signature> = None;
    for user in &key.details.users {
        for certification in &user.signatures {
            let valid = certification
                .verify_certification(primary, Tag::UserId, &user.id)
                .is_ok();
            if valid && certification.created() > newest.and_then(|sig| sig.created()) {
                newest = Some(certification);
            }
        }
    }
    for direct in &key.details.direct_signatures {
        if direct.verify_key(primary).is_ok()
            && direct.created() > newest.and_then(|sig| sig.created())
        {
            newest = Some(direct);
        }
    }
    let newest = newest.ok_or_else(|| format!("key {fpr} has no valid self-signature"))?;
    if expired(
        secs(primary.created_at().as_secs()),
        newest.key_expiration_time().map(|d| d.as_secs()),
        now,
    ) {
        return Err(format!("key {fpr} has expired"));
    }
    Ok(())
}

/// The subkey is bound to its primary for signing (with a valid back-signature), not revoked
/// and not expired.
fn subkey_usable(
    key: &SignedPublicKey,
    sub: &pgp::composed::SignedPublicSubKey,
    now: SystemTime,
) -> Result<(), String> {
    let primary = &key.primary_key;
    let fpr = fingerprint(&sub.key);
    let mut binding: Option<&Signature> = None;
    for signature in &sub.signatures {
        match signature.typ() {
            Some(SignatureType::SubkeyRevocation)
                if signature.verify_subkey_binding(primary, &sub.key).is_ok() =>
            {
                return Err(format!("subkey {fpr} is revoked"));
            }
            Some(SignatureType::SubkeyBinding) => {
                let valid = signature.verify_subkey_binding(primary, &sub.key).is_ok()
                    && signature.key_flags().sign()
                    && signature.embedded_signature().is_some_and(|back| {
                        back.verify_primary_key_binding(&sub.key, primary).is_ok()
                    });
                if valid && signature.created() > binding.and_then(|sig| sig.created()) {
                    binding = Some(signature);
                }
            }
            _ => {}
        }
    }
    let binding =
        binding.ok_or_else(|| format!("subkey {fpr} is not bound to its primary for signing"))?;
    if expired(
        secs(sub.key.created_at().as_secs()),
        binding.key_expiration_time().map(|d| d.as_secs()),
        now,
    ) {
        return Err(format!("subkey {fpr} has expired"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized_or_refused() {
        assert_eq!(
            normalize_fingerprint("0x8439 38df 228d 22f7 b374 2bc0 d94a a3f0 efe2 1092").unwrap(),
            "843938DF228D22F7B3742BC0D94AA3F0EFE21092"
        );
        assert!(normalize_fingerprint("D94AA3F0EFE21092").is_err());
        assert!(normalize_fingerprint(&"g".repeat(40)).is_err());
    }

    #[test]
    fn garbage_is_no_keyring_and_no_signature() {
        assert!(Keyring::parse(b"").is_err());
        assert!(Keyring::parse(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n").is_err());
        assert!(Keyring::parse(&[0x99; 64]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics_the_parsers(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Keyring::parse(&bytes);
            let keyring = Keyring { keys: Vec::new() };
            let now = SystemTime::now();
            let _ = verify_detached(&keyring, &[], b"data", &bytes, now);
            let _ = verify_clearsigned(&keyring, &[], &bytes, now);
            let mut armored = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n".to_vec();
            armored.extend_from_slice(&bytes);
            let _ = verify_clearsigned(&keyring, &[], &armored, now);
        }
    }
}
