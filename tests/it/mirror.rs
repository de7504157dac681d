//! The mirror, end to end against vendor-shaped fixture sites on loopback: signed digests
//! (binary, armored and clearsigned OpenPGP; GNU, BSD and sidecar digests), version discovery,
//! atomic publication, keep and hide_old, failures that keep nothing, the commands.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::common::Server;
use super::ops::ocellus;
use super::vendor::{Gpg, Vendor, qcow2, sha256_hex, sha512_hex};

/// A catalog and keyring in a directory of their own.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(keys: &[&str], catalog: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join("keys/vendor.asc"),
            Gpg::shared().export(keys),
        )
        .unwrap();
        std::fs::write(dir.path().join("mirror.toml"), catalog).unwrap();
        Setup { dir }
    }

    fn catalog(&self) -> PathBuf {
        self.dir.path().join("mirror.toml")
    }

    fn rewrite(&self, catalog: &str) {
        std::fs::write(self.catalog(), catalog).unwrap();
    }

    async fn server(&self) -> Server {
        self.server_with(|_| {}).await
    }

    async fn server_with(&self, adjust: impl FnOnce(&mut ocellus::config::Config)) -> Server {
        let catalog = self.catalog();
        Server::start_with(move |config| {
            config.mirror_catalog = Some(catalog);
            config.mirror_refresher = false;
            adjust(config);
        })
        .await
    }
}

async fn sync(server: &Server, source: &str) -> Value {
    let (status, body) = server
        .json(
            server
                .request(Method::POST, "/ocellus/v1/mirror/sync")
                .json(&json!({"sources": [source]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reports"][0].clone()
}

async fn named(server: &Server, name: &str) -> Vec<Value> {
    let (status, body) = server
        .json(server.request(Method::GET, &format!("/v2/images?name={}", urlencode(name))))
        .await;
    assert_eq!(status, StatusCode::OK);
    body["images"].as_array().unwrap().clone()
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn all_of(server: &Server, source: &str) -> Vec<Value> {
    let (_, body) = server
        .json(server.request(Method::GET, "/v2/images?limit=100&os_hidden=true"))
        .await;
    let (_, visible) = server
        .json(server.request(Method::GET, "/v2/images?limit=100"))
        .await;
    let mut images: Vec<Value> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .chain(visible["images"].as_array().unwrap())
        .filter(|image| image["ocellus_mirror_source"] == source)
        .cloned()
        .collect();
    images.sort_by_key(|image| image["id"].as_str().unwrap().to_owned());
    images.dedup_by_key(|image| image["id"].clone());
    images
}

/// An Ubuntu-like tree: dated directories with `SHA256SUMS` and a binary `SHA256SUMS.gpg`.
fn ubuntu_version(vendor: &Vendor, work: &Path, date: &str, seed: u64) -> Vec<u8> {
    let gpg = Gpg::shared();
    let image = qcow2(work, seed);
    let sums = format!(
        "{}  noble-server-cloudimg-amd64.img\n{}  noble-server-cloudimg-arm64.img\n",
        sha256_hex(&image),
        sha256_hex(b"other architecture")
    );
    let dir = format!("ubuntu/release-{date}/");
    vendor.put(
        &format!("{dir}noble-server-cloudimg-amd64.img"),
        image.clone(),
    );
    vendor.put(&format!("{dir}SHA256SUMS"), sums.clone());
    vendor.put(
        &format!("{dir}SHA256SUMS.gpg"),
        gpg.detach(&gpg.ed25519, sums.as_bytes()),
    );
    image
}

fn ubuntu_catalog(vendor: &Vendor, extra: &str) -> String {
    ubuntu_catalog_signed(vendor, extra, &[&Gpg::shared().ed25519])
}

fn ubuntu_catalog_signed(vendor: &Vendor, extra: &str, signers: &[&str]) -> String {
    format!(
        r#"
[[source]]
name = "ubuntu-24.04"
kind = "sums"
base_url = "{}/ubuntu/"
dirs = 'release-(\d{{8}}(?:\.\d+)?)'
file = 'noble-server-cloudimg-amd64\.img'
sums = "SHA256SUMS"
signature = {{ detached = "SHA256SUMS.gpg" }}
keyring = "vendor.asc"
signers = {:?}
allow_insecure_http = true
allow_hosts = ["127.0.0.1/32"]
properties = {{ os_distro = "ubuntu", os_version = "24.04" }}
tags = ["ubuntu"]
{extra}
"#,
        vendor.base, signers
    )
}

#[tokio::test]
async fn an_ubuntu_like_source_is_mirrored_renamed_kept_and_not_fetched_twice() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let first = ubuntu_version(&vendor, work.path(), "20240101", 1);
    let setup = Setup::new(
        &[&gpg.ed25519, &gpg.stranger],
        &ubuntu_catalog(&vendor, "hide_old = true\nkeep = 3"),
    );
    let server = setup.server().await;

    let report = sync(&server, "ubuntu-24.04").await;
    assert_eq!(report["outcome"], "published", "{report}");
    assert_eq!(report["version"], "20240101");
    let images = named(&server, "ubuntu-24.04").await;
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image["status"], "active");
    assert_eq!(image["visibility"], "public");
    assert_eq!(image["os_distro"], "ubuntu");
    assert_eq!(image["ocellus_mirror_version"], "20240101");
    assert_eq!(
        image["ocellus_mirror_trust"],
        format!("openpgp:{}", gpg.ed25519)
    );
    assert_eq!(
        image["ocellus_mirror_digest"],
        format!("sha256:{}", sha256_hex(&first))
    );
    assert_eq!(image["os_hash_value"], sha512_hex(&first));
    assert!(image["virtual_size"].as_u64().unwrap() > 0);
    let mut tags: Vec<&str> = image["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| tag.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["latest", "ubuntu"]);
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(server.download(&id).await.1, first);

    // Nothing new: the digest file answers 304 and no image byte moves.
    let path = "ubuntu/release-20240101/noble-server-cloudimg-amd64.img";
    assert_eq!(vendor.hits(path), 1);
    let report = sync(&server, "ubuntu-24.04").await;
    assert_eq!(report["outcome"], "up_to_date", "{report}");
    assert_eq!(report["bytes"], 0);
    assert_eq!(vendor.hits(path), 1);
    assert_eq!(vendor.not_modified(), 1);

    // The mirror's properties are its own.
    let (status, _) = server
        .patch(
            &id,
            json!([{"op": "replace", "path": "/ocellus_mirror_version", "value": "x"}]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // v1's purge of properties leaves them too.
    let status = server
        .request(Method::PUT, &format!("/v1/images/{id}"))
        .header("x-image-meta-property-note", "mine")
        .header("x-glance-registry-purge-props", "true")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["note"], "mine");
    assert_eq!(shown["ocellus_mirror_source"], "ubuntu-24.04", "{shown}");

    // Newer versions: the name moves in one step while a client keeps listing it.
    let lister = {
        let client = server.client.clone();
        let url = server.url("/v2/images?name=ubuntu-24.04");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                assert_eq!(body["images"].as_array().unwrap().len(), 1, "{body}");
                seen += 1;
            }
            seen
        });
        (stop, task)
    };
    let mut bytes = vec![first];
    // The last is a rebuild with the same bytes in a new directory: a version of its own (its
    // digest file is the same, so an answer cached for the old directory must not count).
    for (date, seed) in [("20240201", 2), ("20240301.1", 3), ("20240401", 3)] {
        bytes.push(ubuntu_version(&vendor, work.path(), date, seed));
        let report = sync(&server, "ubuntu-24.04").await;
        assert_eq!(report["outcome"], "published", "{report}");
        assert_eq!(report["version"], date);
    }
    lister.0.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(lister.1.await.unwrap() > 0);

    let images = all_of(&server, "ubuntu-24.04").await;
    let mut names: Vec<(String, bool, bool)> = images
        .iter()
        .map(|image| {
            (
                image["name"].as_str().unwrap().to_owned(),
                image["os_hidden"].as_bool().unwrap(),
                image["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|tag| tag == "latest"),
            )
        })
        .collect();
    names.sort();
    // keep = 3: the oldest version is gone; the older two are renamed and hidden.
    assert_eq!(
        names,
        [
            ("ubuntu-24.04".to_owned(), false, true),
            ("ubuntu-24.04 (20240201)".to_owned(), true, false),
            ("ubuntu-24.04 (20240301.1)".to_owned(), true, false),
        ]
    );
    assert_eq!(
        server
            .status(Method::GET, &format!("/v2/images/{id}"))
            .await,
        StatusCode::NOT_FOUND
    );
    let latest = named(&server, "ubuntu-24.04").await;
    assert_eq!(latest.len(), 1);
    let latest_id = latest[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.download(&latest_id).await.1, bytes[3]);

    // Another appliance syncing the same catalog gets the same ids.
    let other = setup.server().await;
    assert_eq!(sync(&other, "ubuntu-24.04").await["outcome"], "published");
    assert_eq!(
        named(&other, "ubuntu-24.04").await[0]["id"],
        latest_id.as_str()
    );
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn fedora_alma_debian_alpine_and_cirros_shapes_are_mirrored() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let base = &vendor.base;

    // Fedora: a clearsigned BSD `CHECKSUM` (RSA), the version in the file name.
    let fedora = qcow2(work.path(), 11);
    let old_fedora = qcow2(work.path(), 12);
    let checksum = format!(
        "# Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2: {} bytes\nSHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {}\n# Fedora-Cloud-Base-Generic-41-1.10.x86_64.qcow2: {} bytes\nSHA256 (Fedora-Cloud-Base-Generic-41-1.10.x86_64.qcow2) = {}\n",
        old_fedora.len(),
        sha256_hex(&old_fedora),
        fedora.len(),
        sha256_hex(&fedora)
    );
    vendor.put(
        "fedora/Fedora-Cloud-Base-Generic-41-1.10.x86_64.qcow2",
        fedora.clone(),
    );
    vendor.put(
        "fedora/Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2",
        old_fedora,
    );
    vendor.put(
        "fedora/Fedora-Cloud-41-1.10-x86_64-CHECKSUM",
        gpg.clearsign(&gpg.rsa, checksum.as_bytes()),
    );

    // AlmaLinux: `CHECKSUM` with an armored detached `CHECKSUM.asc`.
    let alma = qcow2(work.path(), 13);
    let alma_sums = format!(
        "SHA256 (AlmaLinux-9-GenericCloud-9.5-20241120.x86_64.qcow2) = {}\n",
        sha256_hex(&alma)
    );
    vendor.put(
        "alma/AlmaLinux-9-GenericCloud-9.5-20241120.x86_64.qcow2",
        alma.clone(),
    );
    vendor.put("alma/CHECKSUM", alma_sums.clone());
    vendor.put(
        "alma/CHECKSUM.asc",
        gpg.detach_armored(&gpg.rsa, alma_sums.as_bytes(), "SHA512"),
    );

    // Debian: dated directories with `SHA512SUMS`, unsigned here.
    let debian = qcow2(work.path(), 14);
    vendor.put(
        "debian/20241110-1927/debian-12-generic-amd64-20241110-1927.qcow2",
        debian.clone(),
    );
    vendor.put(
        "debian/20241110-1927/SHA512SUMS",
        format!(
            "{}  debian-12-generic-amd64-20241110-1927.qcow2\n",
            sha512_hex(&debian)
        ),
    );
    vendor.put("debian/20240901-1000/SHA512SUMS", "");

    // Alpine: a `.sha512` sidecar beside each file, found through the listing.
    let alpine = qcow2(work.path(), 15);
    let alpine_name = "nocloud_alpine-3.20.3-x86_64-bios-cloudinit-r0.qcow2";
    vendor.put(&format!("alpine/{alpine_name}"), alpine.clone());
    vendor.put(
        &format!("alpine/{alpine_name}.sha512"),
        format!("{}  {alpine_name}\n", sha512_hex(&alpine)),
    );
    vendor.put(
        "alpine/nocloud_alpine-3.20.2-x86_64-bios-cloudinit-r0.qcow2",
        b"older".to_vec(),
    );

    // CirrOS: `version/released` names the directory.
    let cirros = qcow2(work.path(), 16);
    vendor.put("cirros/version/released", "0.6.10\n");
    vendor.put(
        "cirros/0.6.10/cirros-0.6.10-x86_64-disk.img",
        cirros.clone(),
    );
    vendor.put(
        "cirros/0.6.10/SHA256SUMS",
        format!("{}  cirros-0.6.10-x86_64-disk.img\n", sha256_hex(&cirros)),
    );

    let common = "allow_insecure_http = true\nallow_hosts = [\"127.0.0.1\"]\n";
    let catalog = format!(
        r#"
[[source]]
name = "fedora-41"
kind = "sums"
base_url = "{base}/fedora/"
file = 'Fedora-Cloud-Base-Generic-(?P<version>41-[0-9.]+)\.x86_64\.qcow2'
sums = "Fedora-Cloud-41-1.10-x86_64-CHECKSUM"
signature = {{ clearsigned = true }}
keyring = "vendor.asc"
signers = ["{rsa}"]
{common}
[[source]]
name = "alma-9"
kind = "sums"
base_url = "{base}/alma"
file = 'AlmaLinux-9-GenericCloud-(?P<version>[0-9.]+-[0-9]+)\.x86_64\.qcow2'
sums = "CHECKSUM"
signature = {{ detached = "CHECKSUM.asc" }}
keyring = "vendor.asc"
signers = ["{rsa}"]
{common}
[[source]]
name = "debian-12"
kind = "sums"
base_url = "{base}/debian/"
dirs = '(\d{{8}}-\d{{4}})'
file = 'debian-12-generic-amd64-.*\.qcow2'
sums = "SHA512SUMS"
signature = {{ none = "a test of unsigned digests" }}
{common}
[[source]]
name = "alpine-3.20"
kind = "sums"
base_url = "{base}/alpine/"
file = 'nocloud_alpine-(?P<version>3\.20\.\d+)-x86_64-bios-cloudinit-r0\.qcow2'
sums = "{{file}}.sha512"
signature = {{ none = "Alpine signs only its ISO releases" }}
{common}
[[source]]
name = "cirros"
kind = "sums"
base_url = "{base}/cirros/"
version_file = "version/released"
file = 'cirros-[0-9.]+-x86_64-disk\.img'
sums = "SHA256SUMS"
signature = {{ none = "CirrOS publishes no signatures" }}
{common}
"#,
        rsa = gpg.rsa
    );
    let setup = Setup::new(&[&gpg.rsa], &catalog);
    let server = setup.server().await;
    for (name, version, bytes, trust) in [
        (
            "fedora-41",
            "41-1.10",
            &fedora,
            format!("openpgp:{}", gpg.rsa),
        ),
        (
            "alma-9",
            "9.5-20241120",
            &alma,
            format!("openpgp:{}", gpg.rsa),
        ),
        (
            "debian-12",
            "20241110-1927",
            &debian,
            "http-sums".to_owned(),
        ),
        ("alpine-3.20", "3.20.3", &alpine, "http-sums".to_owned()),
        ("cirros", "0.6.10", &cirros, "http-sums".to_owned()),
    ] {
        let report = sync(&server, name).await;
        assert_eq!(report["outcome"], "published", "{name}: {report}");
        assert_eq!(report["version"], version, "{name}");
        let images = named(&server, name).await;
        assert_eq!(images.len(), 1, "{name}");
        assert_eq!(images[0]["ocellus_mirror_trust"], trust.as_str(), "{name}");
        let id = images[0]["id"].as_str().unwrap();
        assert_eq!(&server.download(id).await.1, bytes, "{name}");
    }
    server.stop().await;
}

/// One source and a fixture tree to break in different ways.
async fn broken_case(
    prepare: impl FnOnce(&Vendor, &Path),
    extra: &str,
    keys: &[&str],
) -> (Value, Server, Vendor, Setup) {
    broken_case_signed(prepare, extra, keys, &[&Gpg::shared().ed25519]).await
}

async fn broken_case_signed(
    prepare: impl FnOnce(&Vendor, &Path),
    extra: &str,
    keys: &[&str],
    signers: &[&str],
) -> (Value, Server, Vendor, Setup) {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 21);
    prepare(&vendor, work.path());
    let keys = if keys.is_empty() {
        vec![
            gpg.ed25519.as_str(),
            gpg.stranger.as_str(),
            gpg.expired.as_str(),
            gpg.rsa.as_str(),
            gpg.weak.as_str(),
        ]
    } else {
        keys.to_vec()
    };
    let setup = Setup::new(&keys, &ubuntu_catalog_signed(&vendor, extra, signers));
    let server = setup.server().await;
    let report = sync(&server, "ubuntu-24.04").await;
    (report, server, vendor, setup)
}

async fn assert_nothing_kept(server: &Server, report: &Value, reason: &str) {
    assert_eq!(report["outcome"], "failed", "{report}");
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "{message:?} should say {reason:?}"
    );
    assert!(all_of(server, "ubuntu-24.04").await.is_empty());
    assert!(server.blob_files().is_empty(), "{:?}", server.blob_files());
    assert!(server.temp_files().is_empty(), "{:?}", server.temp_files());
}

const DIR: &str = "ubuntu/release-20240101/";

#[tokio::test]
async fn tampered_bytes_or_digests_keep_nothing() {
    let (report, server, ..) = broken_case(
        |vendor, _| {
            let path = format!("{DIR}noble-server-cloudimg-amd64.img");
            let mut bytes = vendor.get(&path);
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            vendor.put(&path, bytes);
        },
        "",
        &[],
    )
    .await;
    assert_nothing_kept(&server, &report, "the signed digest file says").await;
    server.stop().await;

    let (report, server, ..) = broken_case(
        |vendor, _| {
            let path = format!("{DIR}SHA256SUMS");
            let mut sums = vendor.get(&path);
            sums[0] = if sums[0] == b'a' { b'b' } else { b'a' };
            vendor.put(&path, sums);
        },
        "",
        &[],
    )
    .await;
    assert_nothing_kept(&server, &report, "bad signature").await;
    server.stop().await;
}

#[tokio::test]
async fn signatures_that_vouch_for_nothing_are_refused() {
    let gpg = Gpg::shared();
    let sums_path = format!("{DIR}SHA256SUMS");
    let sig_path = format!("{DIR}SHA256SUMS.gpg");
    type Break<'a> = Box<dyn Fn(&Vendor) + 'a>;
    let cases: Vec<(Break, &str)> = vec![
        (
            Box::new(|vendor: &Vendor| vendor.fail(&sig_path, 404)),
            "404",
        ),
        (
            Box::new(|vendor: &Vendor| {
                let sums = vendor.get(&sums_path);
                vendor.put(&sig_path, gpg.detach(&gpg.stranger, &sums));
            }),
            "not among the signers",
        ),
        (
            Box::new(|vendor: &Vendor| {
                let sums = vendor.get(&sums_path);
                vendor.put(&sig_path, gpg.detach_armored(&gpg.rsa, &sums, "SHA1"));
            }),
            "hashed with SHA1 is refused",
        ),
        (
            Box::new(|vendor: &Vendor| {
                let sums = vendor.get(&sums_path);
                vendor.put(&sig_path, gpg.detach(&gpg.expired, &sums));
            }),
            "has expired",
        ),
        (
            Box::new(|vendor: &Vendor| {
                let sums = vendor.get(&sums_path);
                vendor.put(&sig_path, gpg.detach_from_the_future(&gpg.ed25519, &sums));
            }),
            "made in the future",
        ),
        (
            Box::new(|vendor: &Vendor| {
                let sums = vendor.get(&sums_path);
                vendor.put(&sig_path, gpg.detach(&gpg.weak, &sums));
            }),
            "RSA of 1024 bits",
        ),
    ];
    let signers = [
        gpg.ed25519.as_str(),
        gpg.rsa.as_str(),
        gpg.expired.as_str(),
        gpg.weak.as_str(),
    ];
    for (prepare, reason) in cases {
        let (report, server, ..) =
            broken_case_signed(|vendor, _| prepare(vendor), "", &[], &signers).await;
        assert_nothing_kept(&server, &report, reason).await;
        server.stop().await;
    }
    // A key missing from the keyring altogether.
    let (report, server, ..) = broken_case(
        |vendor, _| {
            let sums = vendor.get(&sums_path);
            vendor.put(&sig_path, gpg.detach(&gpg.rsa, &sums));
        },
        "",
        &[&gpg.ed25519],
    )
    .await;
    assert_nothing_kept(&server, &report, "not in the keyring").await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_formats_size_caps_broken_transfers_and_denied_redirects_keep_nothing() {
    let image = format!("{DIR}noble-server-cloudimg-amd64.img");
    // Bytes that are not the declared format.
    let (report, server, ..) = broken_case(|_, _| {}, "disk_format = \"vmdk\"", &[]).await;
    assert_nothing_kept(&server, &report, "does not match stream data qcow2").await;
    server.stop().await;
    // Larger than the source may bring: refused before any byte is stored.
    let (report, server, ..) = broken_case(|_, _| {}, "max_size = 1000", &[]).await;
    assert_nothing_kept(&server, &report, "more than the 1000 allowed").await;
    server.stop().await;
    // The transfer breaks off.
    let (report, server, vendor, _setup) =
        broken_case(|vendor, _| vendor.truncate(&image, 4096), "", &[]).await;
    assert_nothing_kept(&server, &report, "").await;
    // It heals: the next sync gets it, and the backoff resets.
    vendor.heal(&image);
    assert_eq!(sync(&server, "ubuntu-24.04").await["outcome"], "published");
    server.stop().await;
    // The vendor fails.
    let (report, server, ..) = broken_case(
        |vendor, _| vendor.fail(&format!("{DIR}SHA256SUMS"), 500),
        "",
        &[],
    )
    .await;
    assert_nothing_kept(&server, &report, "500").await;
    server.stop().await;
    // A redirect to an address the fetcher must not reach.
    let (report, server, ..) = broken_case(
        |vendor, _| vendor.redirect(&image, "http://169.254.169.254/latest/meta-data/"),
        "",
        &[],
    )
    .await;
    assert_nothing_kept(&server, &report, "redirect refused").await;
    server.stop().await;
}

#[tokio::test]
async fn a_decimal_address_is_not_the_host_name_allowed() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 31);
    let image = format!("{DIR}noble-server-cloudimg-amd64.img");
    // 2130706433 is 127.0.0.1; only the name localhost is allowed.
    vendor.redirect(
        &image,
        &format!("http://2130706433:{}/{image}x", vendor.port),
    );
    vendor.put(&format!("{image}x"), vendor.get(&image));
    let catalog = ubuntu_catalog(&vendor, "")
        .replace("127.0.0.1:", "localhost:")
        .replace("[\"127.0.0.1/32\"]", "[\"localhost\"]");
    let setup = Setup::new(&[&gpg.ed25519], &catalog);
    let server = setup.server().await;
    let report = sync(&server, "ubuntu-24.04").await;
    assert_nothing_kept(&server, &report, "redirect refused").await;
    vendor.heal(&image);
    assert_eq!(sync(&server, "ubuntu-24.04").await["outcome"], "published");
    server.stop().await;
}

#[tokio::test]
async fn failures_back_off_and_the_backoff_survives_a_restart() {
    let (report, server, vendor, setup) = broken_case(
        |vendor, _| vendor.fail(&format!("{DIR}SHA256SUMS"), 503),
        "",
        &[],
    )
    .await;
    assert_eq!(report["outcome"], "failed");
    let (_, status) = server
        .json(server.request(Method::GET, "/ocellus/v1/mirror"))
        .await;
    let state = &status["sources"][0]["state"];
    assert_eq!(state["failures"], 1);
    let wait = state["next_run"].as_i64().unwrap() - state["last_attempt"].as_i64().unwrap();
    assert_eq!(wait, 60, "{state}");
    assert!(state["last_error"].as_str().unwrap().contains("503"));
    assert_eq!(sync(&server, "ubuntu-24.04").await["outcome"], "failed");
    let dir = server.stop().await;

    let catalog = setup.catalog();
    let server = Server::start_in(dir, move |config| {
        config.mirror_catalog = Some(catalog);
        config.mirror_refresher = false;
    })
    .await;
    let (_, status) = server
        .json(server.request(Method::GET, "/ocellus/v1/mirror"))
        .await;
    let state = &status["sources"][0]["state"];
    assert_eq!(state["failures"], 2, "{state}");
    let wait = state["next_run"].as_i64().unwrap() - state["last_attempt"].as_i64().unwrap();
    assert_eq!(wait, 120, "{state}");
    vendor.heal(&format!("{DIR}SHA256SUMS"));
    assert_eq!(sync(&server, "ubuntu-24.04").await["outcome"], "published");
    let (_, status) = server
        .json(server.request(Method::GET, "/ocellus/v1/mirror"))
        .await;
    assert_eq!(status["sources"][0]["state"]["failures"], 0);
    assert!(status["sources"][0]["state"]["last_error"].is_null());
    server.stop().await;
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

#[tokio::test]
async fn the_commands_check_plan_sync_and_report_on_a_stopped_server() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let bytes = ubuntu_version(&vendor, work.path(), "20240101", 41);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let catalog = setup.catalog().to_string_lossy().into_owned();
    let data = work.path().join("data").to_string_lossy().into_owned();

    let (code, out, err) = ocellus(args(&["mirror", "check", "--catalog", &catalog])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ubuntu-24.04"), "{out}");

    let (code, out, err) = ocellus(args(&[
        "mirror",
        "plan",
        "--catalog",
        &catalog,
        "--data-dir",
        &data,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would be downloaded") && out.contains(&sha256_hex(&bytes)),
        "{out}"
    );
    assert_eq!(
        vendor.hits(&format!("{DIR}noble-server-cloudimg-amd64.img")),
        0
    );

    let (code, out, err) = ocellus(args(&[
        "mirror",
        "sync",
        "--catalog",
        &catalog,
        "--data-dir",
        &data,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ubuntu-24.04: published version 20240101"),
        "{out}"
    );

    let (code, out, err) = ocellus(args(&[
        "mirror",
        "status",
        "--catalog",
        &catalog,
        "--data-dir",
        &data,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ubuntu-24.04: version 20240101") && out.contains("[latest]"),
        "{out}"
    );

    // A mistake is refused with its line, before anything is fetched.
    setup.rewrite(&ubuntu_catalog(&vendor, "").replace("dirs = '", "dirs = '(("));
    let (code, _, err) = ocellus(args(&["mirror", "check", "--catalog", &catalog])).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("mirror.toml:6: dirs is not a valid pattern"),
        "{err}"
    );
    setup.rewrite(&ubuntu_catalog(&vendor, "").replace(&gpg.ed25519, &gpg.rsa));
    let (code, _, err) = ocellus(args(&["mirror", "check", "--catalog", &catalog])).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("mirror.toml:11: signer") && err.contains("is not a primary key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_sync_killed_mid_download_leaves_no_image_and_no_blob() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 51);
    let image = format!("{DIR}noble-server-cloudimg-amd64.img");
    vendor.stall(&image, 64 * 1024);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let data = work.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args(["mirror", "sync", "--catalog"])
        .arg(setup.catalog())
        .arg("--data-dir")
        .arg(&data)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if vendor.hits(&image) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(vendor.hits(&image), 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // The next start finds no image and cleans what the download left.
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::rename(&data, dir.path().join("data")).unwrap();
    let server = Server::start_in(dir, |_| {}).await;
    assert!(all_of(&server, "ubuntu-24.04").await.is_empty());
    assert!(server.blob_files().is_empty(), "{:?}", server.blob_files());
    assert!(server.temp_files().is_empty(), "{:?}", server.temp_files());
    server.stop().await;
}

#[tokio::test]
async fn the_refresher_syncs_by_itself_and_counts_in_the_metrics() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 61);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let catalog = setup.catalog();
    let server = Server::start_with(move |config| config.mirror_catalog = Some(catalog)).await;
    for _ in 0..500 {
        if !named(&server, "ubuntu-24.04").await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(named(&server, "ubuntu-24.04").await.len(), 1);
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.get(r#"ocellus_mirror_syncs_total{source="ubuntu-24.04",outcome="published"}"#),
        1.0
    );
    metrics.get(r#"ocellus_mirror_fetched_bytes_total{source="ubuntu-24.04"}"#);
    server.stop().await;
}

#[tokio::test]
async fn bundles_carry_images_offline_and_are_checked_again_on_import() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, "keep = 3"));
    let catalog = setup.catalog().to_string_lossy().into_owned();
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let (origin, bundle) = (path("origin"), path("bundle"));
    for (date, seed) in [("20240101", 71), ("20240201", 72)] {
        ubuntu_version(&vendor, work.path(), date, seed);
        let (code, out, err) = ocellus(args(&[
            "mirror",
            "sync",
            "--catalog",
            &catalog,
            "--data-dir",
            &origin,
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = ocellus(args(&[
        "mirror",
        "verify",
        "--catalog",
        &catalog,
        "--data-dir",
        &origin,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 image(s), 0 failed") && out.contains("sha256 matches"),
        "{out}"
    );
    let (code, out, err) = ocellus(args(&[
        "mirror",
        "export",
        "--out",
        &bundle,
        "--data-dir",
        &origin,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("bundle/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["images"].as_array().unwrap().len(), 2);

    // Offline: the vendor is gone. The import checks the signatures with local keys.
    drop(vendor);
    let copy = path("copy");
    let import = |target: String, extra: Vec<&str>| {
        let mut list = vec![
            "mirror",
            "import",
            bundle.as_str(),
            "--catalog",
            catalog.as_str(),
        ];
        list.extend(["--data-dir", target.as_str()]);
        list.extend(extra);
        ocellus(args(&list))
    };
    let (code, out, err) = import(copy.clone(), vec![]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 image(s), 0 failed"), "{out}");
    // Idempotent.
    let (code, out, _) = import(copy.clone(), vec![]).await;
    assert_eq!(code, 0);
    assert_eq!(out.matches("already here").count(), 2, "{out}");

    let listing = |dir: String| async move {
        let moved = tempfile::TempDir::new().unwrap();
        std::fs::rename(&dir, moved.path().join("data")).unwrap();
        let server = Server::start_in(moved, |_| {}).await;
        let mut images: Vec<(String, String, String, String)> = all_of(&server, "ubuntu-24.04")
            .await
            .iter()
            .map(|image| {
                (
                    image["id"].as_str().unwrap().to_owned(),
                    image["name"].as_str().unwrap().to_owned(),
                    image["os_hash_value"].as_str().unwrap().to_owned(),
                    image["ocellus_mirror_digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        images.sort();
        let dir_back = server.stop().await;
        std::fs::rename(dir_back.path().join("data"), &dir).unwrap();
        images
    };
    let there = listing(origin.clone()).await;
    assert_eq!(there.len(), 2);
    assert_eq!(listing(copy.clone()).await, there);

    // A flipped byte in one blob fails that image only.
    let blob = manifest["images"][0]["blake3"].as_str().unwrap();
    let blob_path = work.path().join("bundle/blobs").join(blob);
    let mut bytes = std::fs::read(&blob_path).unwrap();
    bytes[4096] ^= 0x20;
    std::fs::write(&blob_path, bytes).unwrap();
    let (code, out, _) = import(path("flipped"), vec![]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("2 image(s), 1 failed") && out.contains("not the ones the manifest names"),
        "{out}"
    );

    // A signer other than the one required.
    let (code, out, _) = import(path("strict"), vec!["--require-signer", &gpg.rsa]).await;
    assert_eq!(code, 1);
    assert!(out.contains("not by the required"), "{out}");
}

#[tokio::test]
async fn an_upstream_glance_is_copied_page_by_page_kept_in_step_and_its_deletions_hidden() {
    use super::keys_support::{split_key, start_keys_server};
    let (upstream, admin) = start_keys_server(0).await;
    let work = tempfile::tempdir().unwrap();
    let mut made = Vec::new();
    for index in 0..5u64 {
        let bytes = qcow2(work.path(), 80 + index);
        let (status, image) = upstream
            .json(
                upstream
                    .request(Method::POST, "/v2/images")
                    .header("X-Auth-Token", &admin)
                    .json(&json!({
                        "name": format!("golden-{index}"),
                        "disk_format": "qcow2",
                        "container_format": "bare",
                        "visibility": "public",
                        "hw_disk_bus": "virtio",
                        "os_distro": "cirros",
                        "owner_note": "not copied",
                        "tags": ["golden"],
                    })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{image}");
        let id = image["id"].as_str().unwrap().to_owned();
        let status = upstream
            .request(Method::PUT, &format!("/v2/images/{id}/file"))
            .header("X-Auth-Token", &admin)
            .header("Content-Type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NO_CONTENT);
        made.push((id, bytes));
    }
    let (key_id, secret) = split_key(&admin);
    std::fs::write(work.path().join("upstream.secret"), format!("{secret}\n")).unwrap();
    let catalog = format!(
        r#"
[[source]]
name = "lab-glance"
kind = "glance"
base_url = "{base}"
auth = {{ keystone = "{base}/v3", application_credential_id = "{key_id}", application_credential_secret_file = "{secret}" }}
filters = {{ visibility = "public", limit = "2" }}
delete_grace = "1s"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
"#,
        base = upstream.base,
        secret = work.path().join("upstream.secret").display(),
    );
    let setup = Setup::new(&[], &catalog);
    let edge = setup.server().await;

    let report = sync(&edge, "lab-glance").await;
    assert_eq!(report["outcome"], "published", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("5 upstream image(s): 5 copied"),
        "{report}"
    );
    for (id, bytes) in &made {
        let (status, image) = edge.show(id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(image["hw_disk_bus"], "virtio");
        assert_eq!(image["os_distro"], "cirros");
        assert!(image.get("owner_note").is_none(), "{image}");
        assert_eq!(image["ocellus_mirror_source"], "lab-glance");
        assert_eq!(image["os_hash_value"], sha512_hex(bytes));
        assert_eq!(&edge.download(id).await.1, bytes);
    }

    // Nothing new: no bytes move.
    let report = sync(&edge, "lab-glance").await;
    assert_eq!(report["outcome"], "up_to_date", "{report}");
    assert_eq!(report["bytes"], 0);

    // A rename upstream reaches the copy; a deletion hides it once the grace is over.
    let (first, _) = &made[0];
    let (status, _) = upstream
        .json(
            upstream
                .request(Method::PATCH, &format!("/v2/images/{first}"))
                .header("X-Auth-Token", &admin)
                .header(
                    "Content-Type",
                    "application/openstack-images-v2.1-json-patch",
                )
                .json(&json!([{"op": "replace", "path": "/name", "value": "golden-renamed"}])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (gone, _) = &made[1];
    let status = upstream
        .request(Method::DELETE, &format!("/v2/images/{gone}"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let report = sync(&edge, "lab-glance").await;
    assert_eq!(report["outcome"], "up_to_date", "{report}");
    assert_eq!(edge.show(first).await.1["name"], "golden-renamed");
    assert_eq!(edge.show(gone).await.1["os_hidden"], false);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let report = sync(&edge, "lab-glance").await;
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("1 hidden or deleted"),
        "{report}"
    );
    assert_eq!(edge.show(gone).await.1["os_hidden"], true);

    edge.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_simplestreams_source_follows_its_clearsigned_index() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let old = qcow2(work.path(), 91);
    let new = qcow2(work.path(), 92);
    let item = |path: &str, bytes: &[u8]| {
        json!({"ftype": "disk1.img", "path": path, "sha256": sha256_hex(bytes),
               "size": bytes.len(), "md5": "0123"})
    };
    let old_path = "server/releases/noble/release-20240401/ubuntu-24.04-server-cloudimg-amd64.img";
    let new_path = "server/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img";
    vendor.put(old_path, old.clone());
    vendor.put(new_path, new.clone());
    let products = json!({
        "content_id": "com.ubuntu.cloud:released:download",
        "format": "products:1.0",
        "products": {
            "com.ubuntu.cloud:server:24.04:amd64": {"arch": "amd64", "versions": {
                "20240401": {"items": {"disk1.img": item(old_path, &old)}},
                "20240423": {"items": {"disk1.img": item(new_path, &new),
                                        "root.tar.xz": {"ftype": "root.tar.xz", "path": "x", "sha256": sha256_hex(b"x")}}},
            }},
            "com.ubuntu.cloud:server:24.04:arm64": {"arch": "arm64", "versions": {}},
        }
    });
    let index = json!({"format": "index:1.0", "index": {
        "com.ubuntu.cloud:released:download": {
            "datatype": "image-downloads", "format": "products:1.0",
            "path": "streams/v1/com.ubuntu.cloud:released:download.sjson",
            "products": ["com.ubuntu.cloud:server:24.04:amd64"]}}});
    let sign = |value: &Value| {
        gpg.clearsign(
            &gpg.rsa,
            serde_json::to_string_pretty(value).unwrap().as_bytes(),
        )
    };
    vendor.put("streams/v1/index.sjson", sign(&index));
    vendor.put(
        "streams/v1/com.ubuntu.cloud:released:download.sjson",
        sign(&products),
    );
    let catalog = format!(
        r#"
[[source]]
name = "ubuntu-noble"
kind = "simplestreams"
base_url = "{}/"
content_id = "com.ubuntu.cloud:released:download"
product = 'com\.ubuntu\.cloud:server:24\.04:amd64'
signature = {{ clearsigned = true }}
keyring = "vendor.asc"
signers = ["{}"]
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
"#,
        vendor.base, gpg.rsa
    );
    let setup = Setup::new(&[&gpg.rsa], &catalog);
    let server = setup.server().await;
    let report = sync(&server, "ubuntu-noble").await;
    assert_eq!(report["outcome"], "published", "{report}");
    assert_eq!(report["version"], "20240423");
    let images = named(&server, "ubuntu-noble").await;
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0]["ocellus_mirror_trust"],
        format!("openpgp:{}", gpg.rsa)
    );
    let id = images[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(server.download(&id).await.1, new);
    assert_eq!(sync(&server, "ubuntu-noble").await["outcome"], "up_to_date");
    let (_, verified) = server
        .json(
            server
                .request(Method::POST, "/ocellus/v1/mirror/verify")
                .json(&json!({"sources": ["ubuntu-noble"]})),
        )
        .await;
    assert_eq!(verified["images"][0]["ok"], true, "{verified}");

    // A products document changed after signing is refused, and nothing changes.
    let mut tampered =
        String::from_utf8(vendor.get("streams/v1/com.ubuntu.cloud:released:download.sjson"))
            .unwrap();
    tampered = tampered.replace("20240423", "20240424");
    vendor.put(
        "streams/v1/com.ubuntu.cloud:released:download.sjson",
        tampered,
    );
    let report = sync(&server, "ubuntu-noble").await;
    assert_eq!(report["outcome"], "failed", "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("signature"),
        "{report}"
    );
    assert_eq!(named(&server, "ubuntu-noble").await[0]["id"], id.as_str());
    server.stop().await;
}

#[tokio::test]
async fn the_owners_quota_and_the_free_space_are_admitted_before_a_download() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 101);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let server = setup
        .server_with(|config| config.store.quotas.image_size_total = Some(100_000))
        .await;
    let report = sync(&server, "ubuntu-24.04").await;
    assert_nothing_kept(&server, &report, "image_size_total").await;
    server.stop().await;
    // More than the free space above the reserve.
    let server = setup
        .server_with(|config| config.store.min_free_space = Some(u64::MAX / 4))
        .await;
    let report = sync(&server, "ubuntu-24.04").await;
    assert_nothing_kept(&server, &report, "no room").await;
    server.stop().await;
}

/// An edge catalog in front of the Glance at `base`; `edge` adds to the `[edge]` table.
fn edge_catalog(base: &str, edge: &str) -> String {
    format!(
        r#"
mode = "edge"

[edge]
source = "site"
{edge}

[[source]]
name = "site"
kind = "glance"
base_url = "{base}"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
"#
    )
}

/// GETs of image files the upstream answered 200, from its own metrics.
async fn file_downloads(upstream: &Server) -> u64 {
    let counted = upstream.metrics().await.sum(|sample| {
        sample.starts_with("ocellus_http_requests_total{")
            && sample.contains(r#"method="GET""#)
            && sample.contains(r#"route="/v2/images/{image_id}/file""#)
            && sample.contains(r#"status="200""#)
    });
    counted as u64
}

#[tokio::test]
async fn edges_fetch_once_keep_nothing_broken_evict_under_their_cap_and_follow_the_upstream() {
    use super::vendor::Proxy;
    let upstream = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for (index, tags) in [
        (0u64, vec![]),
        (1, vec![]),
        (2, vec!["golden"]),
        (3, vec![]),
    ] {
        let bytes = qcow2(work.path(), 110 + index);
        let image = upstream
            .create(
                json!({"name": format!("runner-{index}"), "disk_format": "qcow2",
                           "container_format": "bare", "visibility": "public", "tags": tags}),
            )
            .await;
        let id = image["id"].as_str().unwrap().to_owned();
        assert_eq!(
            upstream.upload(&id, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        images.push((id, bytes));
    }
    let size = images[0].1.len() as u64;
    let proxy = Proxy::start(&upstream.base).await;
    let catalog = format!(
        r#"
mode = "edge"

[edge]
source = "site"
cache_max_bytes = {cap}
pin_tags = ["golden"]
reconcile = "1s"

[[source]]
name = "site"
kind = "glance"
base_url = "{base}"
filters = {{ limit = "3" }}
follow_deletes = true
delete_grace = "1s"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
"#,
        cap = size * 2 + size / 2,
        base = proxy.base,
    );
    let setup = Setup::new(&[], &catalog);
    let edge_a = setup.server().await;
    let edge_b = setup.server().await;
    for edge in [&edge_a, &edge_b] {
        let report = sync(edge, "site").await;
        assert_eq!(report["outcome"], "published", "{report}");
    }
    // The catalog is there before any byte: sizes and hashes as the upstream states them.
    let (id, bytes) = &images[0];
    let (_, shown) = edge_a.show(id).await;
    assert_eq!(shown["size"], bytes.len());
    assert_eq!(shown["os_hash_value"], sha512_hex(bytes));
    assert_eq!(shown["checksum"], upstream.show(id).await.1["checksum"]);
    assert!(edge_a.blob_files().is_empty());

    // Sixteen runners at once: one upstream fetch, sixteen right answers.
    let before = file_downloads(&upstream).await;
    let mut runners = Vec::new();
    for _ in 0..16 {
        let client = edge_a.client.clone();
        let url = edge_a.url(&format!("/v2/images/{id}/file"));
        runners.push(tokio::spawn(async move {
            let response = client.get(&url).send().await.unwrap();
            (response.status(), response.bytes().await.unwrap().to_vec())
        }));
    }
    for runner in runners {
        let (status, body) = runner.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body == *bytes, "a runner got {} bytes", body.len());
    }
    assert_eq!(file_downloads(&upstream).await - before, 1);
    assert_eq!(edge_a.download(id).await.1, *bytes);
    assert_eq!(file_downloads(&upstream).await - before, 1);
    // The other edge fetches for itself.
    assert_eq!(edge_b.download(id).await.1, *bytes);
    assert_eq!(file_downloads(&upstream).await - before, 2);

    // Writes go to the upstream, not here.
    let (status, body) = edge_a
        .json(
            edge_a
                .request(Method::POST, "/v2/images")
                .json(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(edge_a.delete(id).await, StatusCode::FORBIDDEN);

    // The upstream breaks off mid-transfer: a broken download, nothing kept, and a retry works.
    let (broken, broken_bytes) = &images[3];
    let path = format!("/v2/images/{broken}/file");
    proxy.cut(&path, 100_000);
    let blobs = edge_a.blob_files().len();
    let response = edge_a.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.bytes().await.is_err(),
        "the transfer must not end cleanly"
    );
    super::common::eventually(async || edge_a.temp_files().is_empty()).await;
    assert_eq!(edge_a.blob_files().len(), blobs);
    assert!(edge_a.show(broken).await.1["status"] == "active");
    // Every byte arrives but one is wrong: the check at the end fails, and the client never
    // sees a clean end (the last chunk is held back for the verdict).
    proxy.flip(&path);
    let response = edge_a.request(Method::GET, &path).send().await.unwrap();
    assert!(
        response.bytes().await.is_err(),
        "a changed byte must not end cleanly"
    );
    super::common::eventually(async || edge_a.temp_files().is_empty()).await;
    assert_eq!(edge_a.blob_files().len(), blobs);
    proxy.heal(&path);
    assert_eq!(edge_a.download(broken).await.1, *broken_bytes);

    // Under the cap: the pinned image stays, the least recently used one goes.
    let (pinned, pinned_bytes) = &images[2];
    assert_eq!(edge_a.download(pinned).await.1, *pinned_bytes);
    let (other, other_bytes) = &images[1];
    assert_eq!(edge_a.download(other).await.1, *other_bytes);
    super::common::eventually(async || edge_a.blob_files().len() <= 2).await;
    let (_, status) = edge_a
        .json(edge_a.request(Method::GET, "/ocellus/v1/mirror"))
        .await;
    assert!(
        status["edge"]["evictions"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status["edge"]["cached_bytes"].as_u64().unwrap() <= size * 2 + size / 2,
        "{status}"
    );
    edge_a.metrics().await.get("ocellus_edge_hits_total");
    // An evicted image is fetched again when asked for.
    assert_eq!(edge_a.download(id).await.1, *bytes);

    // Catalog changes and deletions reach the edges.
    let (status, _) = upstream
        .patch(
            other,
            json!([{"op": "replace", "path": "/name", "value": "runner-renamed"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.delete(pinned).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sync(&edge_b, "site").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sync(&edge_b, "site").await;
    assert_eq!(edge_b.show(other).await.1["name"], "runner-renamed");
    assert_eq!(edge_b.show(pinned).await.0, StatusCode::NOT_FOUND);

    edge_a.stop().await;
    edge_b.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_pinned_digest_vouches_for_one_exact_build() {
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let image = qcow2(work.path(), 121);
    vendor.put("cirros/version/released", "0.6.3\n");
    vendor.put("cirros/0.6.3/cirros-0.6.3-x86_64-disk.img", image.clone());
    vendor.put(
        "cirros/0.6.3/SHA256SUMS",
        format!("{}  cirros-0.6.3-x86_64-disk.img\n", sha256_hex(&image)),
    );
    let catalog = |pin: &str| {
        format!(
            r#"
[[source]]
name = "cirros"
kind = "sums"
base_url = "{}/cirros/"
version_file = "version/released"
file = 'cirros-[0-9.]+-x86_64-disk\.img'
sums = "SHA256SUMS"
signature = {{ none = "CirrOS publishes no signatures" }}
pin = "sha256:{pin}"
allow_insecure_http = true
allow_hosts = ["127.0.0.1"]
"#,
            vendor.base
        )
    };
    let setup = Setup::new(&[], &catalog(&"0".repeat(64)));
    let server = setup.server().await;
    let report = sync(&server, "cirros").await;
    assert_eq!(report["outcome"], "failed", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("not the pinned"),
        "{report}"
    );
    setup.rewrite(&catalog(&sha256_hex(&image)));
    let report = sync(&server, "cirros").await;
    assert_eq!(report["outcome"], "published", "{report}");
    assert_eq!(
        named(&server, "cirros").await[0]["ocellus_mirror_trust"],
        "pinned"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_edge_told_to_forward_writes_passes_them_to_its_upstream() {
    let upstream = Server::start().await;
    let setup = Setup::new(&[], &edge_catalog(&upstream.base, "writes = \"forward\""));
    let edge = setup.server().await;
    let (status, image) = edge
        .json(edge.request(Method::POST, "/v2/images").json(&json!({
            "name": "made-at-the-edge", "disk_format": "qcow2",
            "container_format": "bare", "visibility": "public"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{image}");
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(upstream.show(&id).await.1["name"], "made-at-the-edge");
    let work = tempfile::tempdir().unwrap();
    let bytes = qcow2(work.path(), 131);
    assert_eq!(
        edge.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(upstream.download(&id).await.1, bytes);
    // The edge refreshes its catalog after a forwarded write, and serves the new image.
    super::common::eventually(async || edge.show(&id).await.0 == StatusCode::OK).await;
    assert_eq!(edge.download(&id).await.1, bytes);
    // An upstream's refusal comes back as it was.
    let (status, _) = edge
        .json(
            edge.request(Method::POST, "/v2/images")
                .json(&json!({"name": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    edge.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn bundles_move_through_running_servers() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    let bytes = ubuntu_version(&vendor, work.path(), "20240101", 141);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let origin = setup.server().await;
    assert_eq!(sync(&origin, "ubuntu-24.04").await["outcome"], "published");
    let bundle = work.path().join("bundle").to_string_lossy().into_owned();
    let (code, out, err) = ocellus(args(&[
        "mirror",
        "export",
        "--out",
        &bundle,
        "--url",
        &origin.base,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 image(s), 0 failed"), "{out}");
    // Nothing is left staged in the server's data directory.
    let staged = std::fs::read_dir(origin.data_dir().join("backups"))
        .unwrap()
        .count();
    assert_eq!(staged, 0);

    let copy = setup.server().await;
    let (code, out, err) = ocellus(args(&["mirror", "import", &bundle, "--url", &copy.base])).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = named(&origin, "ubuntu-24.04").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(copy.download(&id).await.1, bytes);
    origin.stop().await;
    copy.stop().await;
}

#[tokio::test]
async fn shutdown_cuts_a_refresher_download_and_keeps_nothing() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 151);
    let image = format!("{DIR}noble-server-cloudimg-amd64.img");
    vendor.stall(&image, 64 * 1024);
    let setup = Setup::new(&[&gpg.ed25519], &ubuntu_catalog(&vendor, ""));
    let catalog = setup.catalog();
    let server = Server::start_with(move |config| config.mirror_catalog = Some(catalog)).await;
    for _ in 0..500 {
        if vendor.hits(&image) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(vendor.hits(&image), 1, "the refresher started the download");
    // The download waits on the vendor forever; the shutdown must not.
    let dir = tokio::time::timeout(std::time::Duration::from_secs(20), server.stop())
        .await
        .expect("the server stopped while the refresher was downloading");
    let server = Server::start_in(dir, |_| {}).await;
    assert!(all_of(&server, "ubuntu-24.04").await.is_empty());
    assert!(server.blob_files().is_empty(), "{:?}", server.blob_files());
    assert!(server.temp_files().is_empty(), "{:?}", server.temp_files());
    server.stop().await;
}

#[tokio::test]
async fn clients_that_join_a_young_fetch_read_it_as_it_arrives() {
    use super::vendor::Proxy;
    let upstream = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let bytes = qcow2(work.path(), 161);
    let image = upstream
        .create(
            json!({"name": "held", "disk_format": "qcow2", "container_format": "bare",
                       "visibility": "public"}),
        )
        .await;
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(
        upstream.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let proxy = Proxy::start(&upstream.base).await;
    let setup = Setup::new(&[], &edge_catalog(&proxy.base, ""));
    let edge = setup.server().await;
    assert_eq!(sync(&edge, "site").await["outcome"], "published");
    let path = format!("/v2/images/{id}/file");
    proxy.hold(&path, 96 * 1024);
    let before = file_downloads(&upstream).await;
    // The first client starts the fetch, which the upstream then holds after 96 KiB.
    let mut first = edge.request(Method::GET, &path).send().await.unwrap();
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), first.chunk())
        .await
        .expect("the first client gets bytes while the fetch runs")
        .unwrap()
        .unwrap();
    assert!(!head.is_empty());
    // A second client arrives while the fetch is held: it reads from the first byte at once,
    // without waiting for the end.
    let mut second = edge.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let early = tokio::time::timeout(std::time::Duration::from_secs(5), second.chunk())
        .await
        .expect("a client joining a young fetch streams it")
        .unwrap()
        .unwrap();
    assert_eq!(early[..], bytes[..early.len()]);
    proxy.open();
    let mut one = head.to_vec();
    while let Some(chunk) = first.chunk().await.unwrap() {
        one.extend_from_slice(&chunk);
    }
    let mut two = early.to_vec();
    while let Some(chunk) = second.chunk().await.unwrap() {
        two.extend_from_slice(&chunk);
    }
    assert!(one == bytes && two == bytes);
    assert_eq!(file_downloads(&upstream).await - before, 1);
    edge.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn a_signed_manifest_is_required_when_its_signer_is_named() {
    let gpg = Gpg::shared();
    let vendor = Vendor::start().await;
    let work = tempfile::tempdir().unwrap();
    ubuntu_version(&vendor, work.path(), "20240101", 171);
    let setup = Setup::new(&[&gpg.ed25519, &gpg.rsa], &ubuntu_catalog(&vendor, ""));
    let catalog = setup.catalog().to_string_lossy().into_owned();
    let keyring = setup
        .dir
        .path()
        .join("keys/vendor.asc")
        .to_string_lossy()
        .into_owned();
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let (origin, bundle) = (path("origin"), path("bundle"));
    let (code, out, err) = ocellus(args(&[
        "mirror",
        "sync",
        "--catalog",
        &catalog,
        "--data-dir",
        &origin,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(work.path().join("signing.key"), gpg.export_secret(&gpg.rsa)).unwrap();
    let key = path("signing.key");
    let (code, out, err) = ocellus(args(&[
        "mirror",
        "export",
        "--out",
        &bundle,
        "--sign-key",
        &key,
        "--data-dir",
        &origin,
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(work.path().join("bundle/manifest.json.asc").exists());
    let import = |target: String, signer: String| {
        let list = vec![
            "mirror".to_owned(),
            "import".to_owned(),
            bundle.clone(),
            "--catalog".to_owned(),
            catalog.clone(),
            "--data-dir".to_owned(),
            target,
            "--manifest-signer".to_owned(),
            signer,
            "--manifest-keyring".to_owned(),
            keyring.clone(),
        ];
        ocellus(list)
    };
    let (code, out, err) = import(path("good"), gpg.rsa.clone()).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 image(s), 0 failed"), "{out}");
    // Another signer than the one named, or a manifest changed after signing: nothing at all.
    let (code, _, err) = import(path("other"), gpg.ed25519.clone()).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the manifest's signature"), "{err}");
    let manifest = work.path().join("bundle/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"visibility\": \"public\"", "\"visibility\": \"shared\""),
    )
    .unwrap();
    let (code, _, err) = import(path("changed"), gpg.rsa.clone()).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the manifest's signature"), "{err}");
    assert!(
        !work.path().join("changed").join("ocellus.redb").exists() || {
            let moved = tempfile::TempDir::new().unwrap();
            std::fs::rename(work.path().join("changed"), moved.path().join("data")).unwrap();
            let server = Server::start_in(moved, |_| {}).await;
            let empty = all_of(&server, "ubuntu-24.04").await.is_empty();
            server.stop().await;
            empty
        }
    );
}
