//! Vendor digest files: what `SHA256SUMS`, `CHECKSUM`, `SHA512SUMS` and `*.sha512` sidecars
//! say the published files hash to.
//!
//! Three shapes are read, mixed freely within one document:
//! - GNU coreutils: `<hex>  <name>` (text mode) or `<hex> *<name>` (binary mode);
//! - BSD tags: `SHA256 (<name>) = <hex>`, as Fedora and AlmaLinux publish;
//! - a bare sidecar holding only `<hex>`, which names the file it sits beside.
//!
//! Blank lines and `#` comments are skipped (Fedora writes `# <name>: <size> bytes`). The
//! algorithm comes from the BSD tag, else from the document's name (`SHA512SUMS`, `.sha256`),
//! else from the digest's length. MD5 and SHA-1 are refused: they vouch for nothing. A
//! clearsigned wrapper is removed by the OpenPGP check before this parser sees the text, so
//! that no digest is used before its signature is checked.

use std::fmt;

/// The largest digest document read (Ubuntu's biggest SHA256SUMS is a few KiB).
pub const MAX_DOCUMENT: usize = 1 << 20;
/// The longest line read.
const MAX_LINE: usize = 4096;
/// The most entries kept from one document.
const MAX_ENTRIES: usize = 10_000;

/// A digest algorithm a vendor may vouch with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The name in BSD tags and in `ocellus_mirror_digest` (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Hex digits of a digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha224 => 56,
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_tag(tag: &str) -> Result<Algorithm, String> {
        match tag.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA224" => Ok(Algorithm::Sha224),
            "SHA256" => Ok(Algorithm::Sha256),
            "SHA384" => Ok(Algorithm::Sha384),
            "SHA512" => Ok(Algorithm::Sha512),
            "MD5" | "SHA1" => Err(format!("{tag} digests are refused: they vouch for nothing")),
            _ => Err(format!("unknown digest algorithm {tag:?}")),
        }
    }

    /// The algorithm a document's name announces (`SHA256SUMS`, `x.img.sha512`), if any.
    pub fn from_document_name(name: &str) -> Option<Algorithm> {
        let upper = name.rsplit('/').next().unwrap_or(name).to_ascii_uppercase();
        [
            ("SHA224", Algorithm::Sha224),
            ("SHA256", Algorithm::Sha256),
            ("SHA384", Algorithm::Sha384),
            ("SHA512", Algorithm::Sha512),
        ]
        .into_iter()
        .find(|(tag, _)| upper.contains(tag))
        .map(|(_, algorithm)| algorithm)
    }

    fn from_length(hex: &str) -> Result<Algorithm, String> {
        match hex.len() {
            56 => Ok(Algorithm::Sha224),
            64 => Ok(Algorithm::Sha256),
            96 => Ok(Algorithm::Sha384),
            128 => Ok(Algorithm::Sha512),
            32 | 40 => Err("an MD5 or SHA-1 digest is refused: it vouches for nothing".into()),
            other => Err(format!("a digest of {other} hex digits fits no algorithm")),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// One file and the digest a document gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub algorithm: Algorithm,
    /// Lowercase hex.
    pub hex: String,
}

/// Reads a digest document. `document` is its name (for the algorithm), `sidecar_for` the file
/// a bare sidecar digest belongs to. A line that is not a digest line is an error: a vendor
/// changing its format should stop the mirror, not make it guess.
pub fn parse(text: &str, document: &str, sidecar_for: Option<&str>) -> Result<Vec<Entry>, String> {
    if text.len() > MAX_DOCUMENT {
        return Err(format!("{document} is larger than {MAX_DOCUMENT} bytes"));
    }
    let named = Algorithm::from_document_name(document);
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = |message: String| format!("{document} line {}: {message}", number + 1);
        if line.len() > MAX_LINE {
            return Err(at(format!("longer than {MAX_LINE} bytes")));
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = parse_line(line, named, sidecar_for).map_err(at)?;
        if entries.len() == MAX_ENTRIES {
            return Err(format!("{document} lists more than {MAX_ENTRIES} files"));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_line(
    line: &str,
    named: Option<Algorithm>,
    sidecar_for: Option<&str>,
) -> Result<Entry, String> {
    // BSD: `SHA256 (name) = hex`.
    if let Some((head, hex)) = line.rsplit_once(") = ")
        && let Some((tag, name)) = head.split_once(" (")
        && !tag.contains(char::is_whitespace)
    {
        let algorithm = Algorithm::from_tag(tag)?;
        return entry(name, algorithm, hex.trim());
    }
    // GNU: `hex  name` or `hex *name`; a sidecar may hold only `hex`.
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((hex, rest)) => {
            let rest = rest.trim_start();
            (hex, rest.strip_prefix('*').unwrap_or(rest))
        }
        None => match sidecar_for {
            Some(file) => (line, file),
            None => return Err("a digest without a file name".into()),
        },
    };
    if !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err("neither a GNU, a BSD nor a sidecar digest line".into());
    }
    let by_length = Algorithm::from_length(hex)?;
    let algorithm = match named {
        Some(named) if named != by_length => {
            return Err(format!(
                "a digest of {} hex digits in a {named} document",
                hex.len()
            ));
        }
        _ => by_length,
    };
    entry(name, algorithm, hex)
}

fn entry(name: &str, algorithm: Algorithm, hex: &str) -> Result<Entry, String> {
    let name = name.strip_prefix("./").unwrap_or(name);
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(format!("{name:?} is not a file name"));
    }
    if hex.len() != algorithm.hex_len() || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(format!("{hex:?} is not a {algorithm} digest"));
    }
    Ok(Entry {
        name: name.to_owned(),
        algorithm,
        hex: hex.to_ascii_lowercase(),
    })
}

/// The one entry for `name`; two different digests for it are an error.
pub fn find<'a>(entries: &'a [Entry], name: &str) -> Result<Option<&'a Entry>, String> {
    let mut found: Option<&Entry> = None;
    for entry in entries.iter().filter(|entry| entry.name == name) {
        match found {
            Some(earlier) if earlier.algorithm == entry.algorithm && earlier.hex != entry.hex => {
                return Err(format!("{name} is listed twice with different digests"));
            }
            // The stronger of two algorithms is used.
            Some(earlier) if earlier.algorithm.hex_len() >= entry.algorithm.hex_len() => {}
            _ => found = Some(entry),
        }
    }
    Ok(found)
}

/// A running hash in a vendor's algorithm.
pub enum Hasher {
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        use sha2::Digest;
        match algorithm {
            Algorithm::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Sha224(hasher) => hasher.update(bytes),
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Sha384(hasher) => hasher.update(bytes),
            Hasher::Sha512(hasher) => hasher.update(bytes),
        }
    }

    /// Lowercase hex of the digest.
    pub fn finish_hex(self) -> String {
        use sha2::Digest;
        let bytes = match self {
            Hasher::Sha224(hasher) => hasher.finalize().to_vec(),
            Hasher::Sha256(hasher) => hasher.finalize().to_vec(),
            Hasher::Sha384(hasher) => hasher.finalize().to_vec(),
            Hasher::Sha512(hasher) => hasher.finalize().to_vec(),
        };
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A256: &str = "6205ae0c524b4d1816dbd3573ce29b5c44ed26c9fbc874fbe48c41c89dd0bac2";

    #[test]
    fn gnu_bsd_and_sidecar_lines_are_read() {
        let gnu = format!("{A256}  a.img\n{} *b.img\n\n", A256.to_uppercase());
        let entries = parse(&gnu, "SHA256SUMS", None).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "b.img");
        assert_eq!(entries[1].hex, A256);
        let bsd = format!("# Fedora.qcow2: 469303808 bytes\nSHA256 (Fedora.qcow2) = {A256}\n");
        let entries = parse(&bsd, "CHECKSUM", None).unwrap();
        assert_eq!(entries[0].name, "Fedora.qcow2");
        assert_eq!(entries[0].algorithm, Algorithm::Sha256);
        let sidecar = parse(&format!("{A256}\n"), "x.img.sha256", Some("x.img")).unwrap();
        assert_eq!(sidecar[0].name, "x.img");
        let long = "ab".repeat(64);
        let entries = parse(&format!("{long}  ./d.qcow2\n"), "SHA512SUMS", None).unwrap();
        assert_eq!(
            (entries[0].name.as_str(), entries[0].algorithm),
            ("d.qcow2", Algorithm::Sha512)
        );
    }

    #[test]
    fn weak_or_malformed_digests_are_refused() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e  a.img\n";
        assert!(
            parse(md5, "MD5SUMS", None)
                .unwrap_err()
                .contains("vouches for nothing")
        );
        assert!(
            parse(
                &format!("SHA1 (a) = {}\n", "a".repeat(40)),
                "CHECKSUM",
                None
            )
            .is_err()
        );
        assert!(parse(&format!("{A256}  a.img\n"), "SHA512SUMS", None).is_err());
        assert!(parse("zz  a.img\n", "SHA256SUMS", None).is_err());
        assert!(parse(&format!("{A256}  ../etc/passwd\n"), "SHA256SUMS", None).is_err());
        assert!(parse(&format!("{A256}\n"), "SHA256SUMS", None).is_err());
        assert!(parse(&"#".repeat(MAX_DOCUMENT + 1), "SHA256SUMS", None).is_err());
        let twice = format!("{A256}  a\n{}  a\n", "1".repeat(64));
        let entries = parse(&twice, "SHA256SUMS", None).unwrap();
        assert!(find(&entries, "a").is_err());
        assert!(find(&entries, "b").unwrap().is_none());
    }

    #[test]
    fn the_hasher_matches_known_values() {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(b"abc");
        assert_eq!(
            hasher.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_document_panics_the_parser(text in "(?s).{0,400}", name in "[A-Za-z0-9.]{0,12}") {
            let _ = parse(&text, &name, Some("x"));
            let _ = parse(&text, &name, None);
        }
    }
}
