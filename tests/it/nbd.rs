//! The NBD export, read by the real clients: `qemu-img` (qemu-utils) and libnbd's `nbdinfo`
//! and `nbdcopy` (libnbd-bin); plus a few requests no well-behaved client sends, written by
//! hand from the protocol document.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use ocellus::config::{AuthMode, Config};
use ocellus::nbd::proto;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Server, random_bytes};
use crate::keys_support::{create_key, read_bootstrap_key, write_test_certificates};

/// Runs a client tool to completion.
async fn tool(program: &str, args: &[&str]) -> Output {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "{program} must be installed (apt-get install qemu-utils libnbd-bin): {error}"
                )
            })
    })
    .await
    .unwrap()
}

/// `qemu-img convert` of an NBD export to a raw file.
async fn qemu_convert(from: &str, to: &str) -> Output {
    tool("qemu-img", &["convert", "-f", "raw", "-O", "raw", from, to]).await
}

fn ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Uploads `bytes` as a new image and returns its id.
async fn upload(server: &Server, bytes: Vec<u8>, disk_format: &str, token: Option<&str>) -> String {
    let mut request = server
        .request(Method::POST, "/v2/images")
        .json(&json!({"name": "nbd", "disk_format": disk_format, "container_format": "bare"}));
    if let Some(token) = token {
        request = request.header("X-Auth-Token", token);
    }
    let (status, image) = server.json(request).await;
    assert_eq!(status, StatusCode::CREATED, "{image}");
    let id = image["id"].as_str().unwrap().to_owned();
    let mut request = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes);
    if let Some(token) = token {
        request = request.header("X-Auth-Token", token);
    }
    let status = request.send().await.unwrap().status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    id
}

/// A disk with data, a long zero stretch and more data; 512-byte aligned, as disks are.
fn sparse_disk() -> Vec<u8> {
    let mut disk = random_bytes(1 << 20, 11);
    disk.resize(4 << 20, 0);
    disk.extend(random_bytes(100 * 1024, 12));
    disk
}

fn uri(address: SocketAddr, export: &str) -> String {
    format!("nbd://{address}/{export}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_read_every_byte_and_skip_the_holes() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse_disk();
    let id = upload(&server, disk.clone(), "raw", None).await;
    let export = uri(address, &id);

    let info = tool("nbdinfo", &["--json", &export]).await;
    ok(&info, "nbdinfo");
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let described = &info["exports"][0];
    assert_eq!(described["export-size"], json!(disk.len()));
    assert_eq!(described["is_read_only"], json!(true));
    assert_eq!(described["can_multi_conn"], json!(true));
    assert_eq!(info["protocol"], json!("newstyle-fixed"));

    // The zero stretch is reported from the extent map recorded at upload.
    let map = tool("nbdinfo", &["--map", "--json", &export]).await;
    ok(&map, "nbdinfo --map");
    let map: Value = serde_json::from_slice(&map.stdout).unwrap();
    let extents: Vec<(u64, u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .map(|extent| {
            (
                extent["offset"].as_u64().unwrap(),
                extent["length"].as_u64().unwrap(),
                extent["type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![
            (0, 1 << 20, 0),
            (1 << 20, 3 << 20, 3),
            (4 << 20, 100 * 1024, 0)
        ]
    );
    let (status, json_map) = server
        .json(server.request(Method::GET, &format!("/ocellus/v1/images/{id}/extents")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_map["recorded"], json!(true));
    assert_eq!(json_map["zero_bytes"], json!(3 << 20));
    assert_eq!(
        json_map["extents"][1],
        json!({"offset": 1 << 20, "length": 3 << 20, "zero": true})
    );

    let copied = dir.path().join("nbdcopy.raw");
    ok(
        &tool("nbdcopy", &[&export, copied.to_str().unwrap()]).await,
        "nbdcopy",
    );
    assert!(std::fs::read(&copied).unwrap() == disk, "nbdcopy bytes");
    let converted = dir.path().join("qemu.raw");
    ok(
        &qemu_convert(&export, converted.to_str().unwrap()).await,
        "qemu-img convert",
    );
    assert!(std::fs::read(&converted).unwrap() == disk, "qemu-img bytes");
    // Both skipped the hole: their files are sparse there.
    for file in [&copied, &converted] {
        let allocated = allocated_bytes(file);
        assert!(
            allocated < 2 << 20,
            "{} has {allocated} bytes allocated",
            file.display()
        );
    }
    let qemu_info = tool("qemu-img", &["info", "--output=json", &export]).await;
    ok(&qemu_info, "qemu-img info");
    let qemu_info: Value = serde_json::from_slice(&qemu_info.stdout).unwrap();
    assert_eq!(qemu_info["virtual-size"], json!(disk.len()));

    // Lab mode lists exports; an unknown one is refused.
    let list = tool(
        "nbdinfo",
        &["--list", "--json", &format!("nbd://{address}")],
    )
    .await;
    ok(&list, "nbdinfo --list");
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
    let unknown = tool(
        "nbdinfo",
        &[&uri(address, "00000000-0000-4000-8000-000000000000")],
    )
    .await;
    assert!(!unknown.status.success());
    let read = server.metrics().await.get("ocellus_nbd_read_bytes_total");
    assert!(read >= f64::from(2 << 20), "nbd bytes read: {read}");
}

/// Bytes a file has on disk (`du`), not its length.
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_images_have_a_raw_view_over_nbd_and_http() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let dir = tempfile::tempdir().unwrap();
    // A 16 MiB guest: 1 MiB of compressible data, 512 KiB of noise, zeros after.
    let mut guest: Vec<u8> = (0..1 << 20).map(|index| (index / 4096) as u8).collect();
    guest.extend(random_bytes(512 * 1024, 13));
    guest.resize(16 << 20, 0);
    let raw = dir.path().join("guest.raw");
    std::fs::write(&raw, &guest).unwrap();
    for (label, options) in [
        ("plain", vec![]),
        ("zlib", vec!["-c"]),
        ("zstd", vec!["-c", "-o", "compression_type=zstd"]),
    ] {
        let image = dir.path().join(format!("{label}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(options);
        args.extend([raw.to_str().unwrap(), image.to_str().unwrap()]);
        ok(&tool("qemu-img", &args).await, "qemu-img convert to qcow2");
        let stored = std::fs::read(&image).unwrap();
        let id = upload(&server, stored.clone(), "qcow2", None).await;

        // The export of the stored bytes is the qcow2 file, which qemu-img reads as qcow2.
        let out = dir.path().join(format!("{label}.stored"));
        ok(
            &tool("nbdcopy", &[&uri(address, &id), out.to_str().unwrap()]).await,
            "nbdcopy of the stored bytes",
        );
        assert!(
            std::fs::read(&out).unwrap() == stored,
            "{label}: stored bytes"
        );

        // The raw view is the guest disk, as qemu-img's own conversion writes it.
        let view = uri(address, &format!("{id}:raw"));
        let out = dir.path().join(format!("{label}.raw"));
        ok(
            &qemu_convert(&view, out.to_str().unwrap()).await,
            "qemu-img convert of the raw view",
        );
        assert!(
            std::fs::read(&out).unwrap() == guest,
            "{label}: raw view via qemu-img"
        );
        let copied = dir.path().join(format!("{label}.nbdcopy"));
        ok(
            &tool("nbdcopy", &[&view, copied.to_str().unwrap()]).await,
            "nbdcopy of the raw view",
        );
        assert!(
            std::fs::read(&copied).unwrap() == guest,
            "{label}: raw view via nbdcopy"
        );
        assert!(
            allocated_bytes(&copied) < 4 << 20,
            "{label}: the zeros were skipped"
        );

        // And over HTTP, whole and ranged.
        let response = server
            .request(Method::GET, &format!("/ocellus/v1/images/{id}/raw"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.content_length(), Some(guest.len() as u64));
        assert!(response.bytes().await.unwrap() == guest, "{label}: /raw");
        let response = server
            .request(Method::GET, &format!("/ocellus/v1/images/{id}/raw"))
            .header("Range", "bytes=1048000-1049999")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            response.headers()["content-range"],
            &format!("bytes 1048000-1049999/{}", guest.len())
        );
        assert!(response.bytes().await.unwrap()[..] == guest[1_048_000..1_050_000]);
        let (status, map) = server
            .json(server.request(
                Method::GET,
                &format!("/ocellus/v1/images/{id}/extents?view=raw"),
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(map["size"], json!(16 << 20));
        let data = map["data_bytes"].as_u64().unwrap();
        assert!(
            ((3 << 19)..(2 << 20)).contains(&data),
            "{label}: {data} data bytes in {map}"
        );
    }
    // A raw image has no :raw export (its stored bytes are its disk), and /raw of it is the
    // stored bytes.
    let id = upload(&server, random_bytes(8192, 3), "raw", None).await;
    assert!(
        !tool("nbdinfo", &[&uri(address, &format!("{id}:raw"))])
            .await
            .status
            .success()
    );
    let (status, body) = server
        .json(server.request(
            Method::GET,
            &format!("/ocellus/v1/images/{id}/extents?view=raw"),
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let response = server
        .request(Method::GET, &format!("/ocellus/v1/images/{id}/raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap()[..] == random_bytes(8192, 3)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_stored_byte_gives_the_client_eio_not_data() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(2 << 20, 21);
    let id = upload(&server, bytes.clone(), "raw", None).await;
    let blob = server.blob_files().pop().unwrap();
    let mut tampered = bytes.clone();
    tampered[1_500_000] ^= 0x01;
    std::fs::write(&blob, &tampered).unwrap();

    let out = dir.path().join("copy");
    let copy = tool("nbdcopy", &[&uri(address, &id), out.to_str().unwrap()]).await;
    assert!(
        !copy.status.success(),
        "nbdcopy of a damaged image must fail"
    );
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    let convert = qemu_convert(&uri(address, &id), out.to_str().unwrap()).await;
    assert!(
        !convert.status.success(),
        "qemu-img convert of a damaged image must fail"
    );

    // Request by request: the damaged range answers EIO, the rest is served.
    let mut client = Client::go(address, &id).await.unwrap();
    assert_eq!(
        client.read(0, 65536).await.unwrap(),
        Ok(bytes[..65536].to_vec())
    );
    assert_eq!(
        client.read(1_490_000, 20_000).await.unwrap(),
        Err(proto::EIO)
    );
    assert_eq!(
        client.read(1 << 20, 4096).await.unwrap(),
        Ok(bytes[1 << 20..(1 << 20) + 4096].to_vec())
    );
    let failures = server
        .metrics()
        .await
        .get("ocellus_nbd_read_failures_total");
    assert!(failures >= 2.0, "{failures} failed reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_protocol_get_its_errors() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let bytes = random_bytes(100_000, 31);
    let id = upload(&server, bytes.clone(), "raw", None).await;

    // Options: unknown export, unknown option, STARTTLS without TLS, LIST with data.
    let mut client = Client::handshake(address).await.unwrap();
    assert_eq!(
        client
            .go_reply("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap(),
        proto::REP_ERR_UNKNOWN
    );
    assert_eq!(
        client.go_reply("not an id").await.unwrap(),
        proto::REP_ERR_UNKNOWN
    );
    assert_eq!(client.option(99, &[]).await.unwrap(), proto::REP_ERR_UNSUP);
    assert_eq!(
        client.option(proto::OPT_STARTTLS, &[]).await.unwrap(),
        proto::REP_ERR_POLICY
    );
    assert_eq!(
        client.option(proto::OPT_LIST, b"x").await.unwrap(),
        proto::REP_ERR_INVALID
    );
    assert_eq!(client.go_reply(&id).await.unwrap(), proto::REP_ACK);

    // Transmission: writes refused, ranges checked, reads served, a bad magic ends it.
    assert_eq!(client.write(0, &[1; 512]).await.unwrap(), proto::EPERM);
    assert_eq!(
        client.command(proto::CMD_TRIM, 0, 512).await.unwrap(),
        proto::EPERM
    );
    assert_eq!(client.read(99_999, 2).await.unwrap(), Err(proto::EINVAL));
    assert_eq!(client.read(0, 0).await.unwrap(), Err(proto::EINVAL));
    assert_eq!(
        client.read(u64::MAX - 1, 4).await.unwrap(),
        Err(proto::EINVAL)
    );
    assert_eq!(
        client
            .command(proto::CMD_BLOCK_STATUS, 0, 512)
            .await
            .unwrap(),
        proto::EINVAL
    );
    assert_eq!(client.command(42, 0, 512).await.unwrap(), proto::EINVAL);
    assert_eq!(
        client.read(99_000, 1000).await.unwrap(),
        Ok(bytes[99_000..].to_vec())
    );
    client.stream.write_all(&[0u8; 28]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.stream.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "a bad magic closes the connection"
    );
    // The image is unchanged after it all.
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_a_capability_is_needed_and_revoking_the_key_ends_it() {
    let server = Server::start_with(|config: &mut Config| config.auth = AuthMode::Keys).await;
    let address = server.start_nbd().await;
    let admin = read_bootstrap_key(&server.data_dir());
    let disk = sparse_disk();
    let id = upload(&server, disk.clone(), "raw", Some(&admin)).await;
    let member = create_key(&server, &admin, "admin", "member", "runner", None).await;
    let member_key = member["key"].as_str().unwrap().to_owned();
    let capability = |key: String, body: Value| {
        let request = server
            .request(Method::POST, &format!("/ocellus/v1/images/{id}/nbd"))
            .header("X-Auth-Token", key)
            .json(&body);
        server.json(request)
    };
    let (status, granted) = capability(member_key.clone(), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{granted}");
    let granted_uri = granted["uri"].as_str().unwrap().to_owned();
    assert!(granted_uri.starts_with(&format!("nbd://127.0.0.1:{}/{id}@", address.port())));
    let info = tool("nbdinfo", &["--json", &granted_uri]).await;
    ok(&info, "nbdinfo with a capability");
    let copied = tempfile::NamedTempFile::new().unwrap();
    ok(
        &tool("nbdcopy", &[&granted_uri, copied.path().to_str().unwrap()]).await,
        "nbdcopy with a capability",
    );
    assert!(std::fs::read(copied.path()).unwrap() == disk);

    // Missing, wrong, for another image, expired: all refused alike.
    let export = granted["export"].as_str().unwrap().to_owned();
    let other = upload(&server, random_bytes(4096, 5), "raw", Some(&admin)).await;
    let mut wrong = export.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let borrowed = export.replace(&id, &other);
    let (_, short) = capability(member_key.clone(), json!({"expires_in": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = short["export"].as_str().unwrap().to_owned();
    for refused in [id.clone(), wrong, borrowed, expired] {
        let mut client = Client::handshake(address).await.unwrap();
        assert_eq!(
            client.go_reply(&refused).await.unwrap(),
            proto::REP_ERR_UNKNOWN,
            "{refused}"
        );
        assert!(
            !tool("nbdinfo", &[&uri(address, &refused)])
                .await
                .status
                .success()
        );
    }
    // No listing with keys.
    let mut client = Client::handshake(address).await.unwrap();
    assert_eq!(
        client.option(proto::OPT_LIST, &[]).await.unwrap(),
        proto::REP_ERR_POLICY
    );

    // The same rules as a download: another project's key gets 404, bad lifetimes 400.
    let outsider = create_key(&server, &admin, "elsewhere", "member", "outsider", None).await;
    let (status, _) = capability(outsider["key"].as_str().unwrap().to_owned(), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = capability(member_key.clone(), json!({"expires_in": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .json(server.request(Method::POST, &format!("/ocellus/v1/images/{id}/nbd")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoking the key: new connections are refused, and an open one ends.
    let mut open = Client::go(address, &export).await.unwrap();
    assert_eq!(open.read(0, 512).await.unwrap(), Ok(disk[..512].to_vec()));
    let key_id = member["id"].as_str().unwrap();
    let status = server
        .request(Method::DELETE, &format!("/ocellus/v1/keys/{key_id}"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut client = Client::handshake(address).await.unwrap();
    assert_eq!(
        client.go_reply(&export).await.unwrap(),
        proto::REP_ERR_UNKNOWN
    );
    tokio::time::sleep(ocellus::nbd::ACCESS_RECHECK + std::time::Duration::from_millis(200)).await;
    assert!(
        open.read(0, 512).await.is_err(),
        "the open connection must end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_configured_plain_connections_are_refused() {
    let lab = Server::start().await;
    let disk = sparse_disk();
    let id = upload(&lab, disk.clone(), "raw", None).await;
    let dir = lab.stop().await;
    let pki = write_test_certificates(dir.path());
    let certificates = dir.path().join("client-pki");
    std::fs::create_dir_all(&certificates).unwrap();
    std::fs::write(certificates.join("ca-cert.pem"), &pki.ca_pem).unwrap();
    let server = Server::start_in(dir, |config| config.tls = Some(pki.files)).await;
    let address = server.start_nbd().await;

    let plain = tool("nbdinfo", &[&uri(address, &id)]).await;
    assert!(
        !plain.status.success(),
        "a plain connection must be refused"
    );
    let mut client = Client::handshake(address).await.unwrap();
    assert_eq!(client.go_reply(&id).await.unwrap(), proto::REP_ERR_TLS_REQD);
    assert_eq!(
        client.option(proto::OPT_LIST, &[]).await.unwrap(),
        proto::REP_ERR_TLS_REQD
    );

    let secure = format!(
        "nbds://localhost:{}/{id}?tls-certificates={}",
        address.port(),
        certificates.display()
    );
    let info = tool("nbdinfo", &["--json", &secure]).await;
    ok(&info, "nbdinfo over TLS");
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["TLS"], json!(true));
    let copied = tempfile::NamedTempFile::new().unwrap();
    ok(
        &tool("nbdcopy", &[&secure, copied.path().to_str().unwrap()]).await,
        "nbdcopy over TLS",
    );
    assert!(std::fs::read(copied.path()).unwrap() == disk);
    // QEMU's own TLS client, as the README tells users to set it up.
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        certificates.display()
    );
    let options = format!(
        "driver=nbd,host=localhost,port={},export={id},tls-creds=tls0",
        address.port()
    );
    let converted = tempfile::NamedTempFile::new().unwrap();
    ok(
        &tool(
            "qemu-img",
            &[
                "convert",
                "--object",
                &object,
                "--image-opts",
                &options,
                "-O",
                "raw",
                converted.path().to_str().unwrap(),
            ],
        )
        .await,
        "qemu-img over TLS",
    );
    assert!(std::fs::read(converted.path()).unwrap() == disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_closed() {
    let server = Server::start_with(|config: &mut Config| {
        config.nbd.max_connections = 1;
        config.nbd.idle_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let address = server.start_nbd().await;
    let bytes = random_bytes(10_000, 41);
    let id = upload(&server, bytes.clone(), "raw", None).await;
    let mut first = Client::go(address, &id).await.unwrap();
    assert_eq!(first.read(0, 100).await.unwrap(), Ok(bytes[..100].to_vec()));
    // A second connection is closed before the greeting.
    let mut second = TcpStream::connect(address).await.unwrap();
    let mut greeting = Vec::new();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        second.read_to_end(&mut greeting),
    )
    .await;
    assert!(matches!(refused, Ok(Ok(0))), "over the cap: {greeting:?}");
    // The first goes quiet past the idle timeout and is closed; its slot frees.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        first.read(0, 100).await.is_err(),
        "an idle connection is closed"
    );
    let mut third = Client::go(address, &id).await.unwrap();
    assert_eq!(
        third.read(100, 100).await.unwrap(),
        Ok(bytes[100..200].to_vec())
    );
}

/// A qcow2 image whose mapping takes more than one bounded walk to describe (512-byte
/// clusters, one data cluster in every 32 KiB L2 span of a 64 MiB disk): `/extents` pages
/// through it with `next_offset`, and NBD block status answers in parts that `nbdinfo`
/// joins; both give every data cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_mappings_are_described_in_bounded_parts() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let dir = tempfile::tempdir().unwrap();
    let mut guest = vec![0u8; 64 << 20];
    for (index, span) in guest.chunks_mut(32 * 1024).enumerate() {
        span[..512].fill((index % 250 + 1) as u8);
    }
    let raw = dir.path().join("guest.raw");
    std::fs::write(&raw, &guest).unwrap();
    let image = dir.path().join("guest.qcow2");
    ok(
        &tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=512",
                raw.to_str().unwrap(),
                image.to_str().unwrap(),
            ],
        )
        .await,
        "qemu-img convert",
    );
    let id = upload(&server, std::fs::read(&image).unwrap(), "qcow2", None).await;
    // What QEMU itself says is allocated (qemu-img writes whole 4 KiB runs), as data runs.
    let map = tool(
        "qemu-img",
        &["map", "--output=json", image.to_str().unwrap()],
    )
    .await;
    ok(&map, "qemu-img map");
    let mut expected: Vec<(u64, u64)> = Vec::new();
    for entry in serde_json::from_slice::<Value>(&map.stdout)
        .unwrap()
        .as_array()
        .unwrap()
    {
        if entry["data"] != json!(true) {
            continue;
        }
        let (start, length) = (
            entry["start"].as_u64().unwrap(),
            entry["length"].as_u64().unwrap(),
        );
        match expected.last_mut() {
            Some((at, run)) if *at + *run == start => *run += length,
            _ => expected.push((start, length)),
        }
    }
    assert_eq!(expected.len(), 2048, "one data run per 32 KiB span");

    let mut data = Vec::new();
    let mut offset = Some(0u64);
    let mut answers = 0;
    while let Some(at) = offset {
        let (status, page) = server
            .json(server.request(
                Method::GET,
                &format!("/ocellus/v1/images/{id}/extents?view=raw&offset={at}"),
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for extent in page["extents"].as_array().unwrap() {
            if extent["zero"] == json!(false) {
                data.push((
                    extent["offset"].as_u64().unwrap(),
                    extent["length"].as_u64().unwrap(),
                ));
            }
        }
        offset = page["next_offset"].as_u64();
        answers += 1;
        assert!(answers < 100, "paging must end");
    }
    assert!(answers > 1, "one walk cannot describe this image");
    assert_eq!(data, expected);
    let (status, _) = server
        .json(server.request(
            Method::GET,
            &format!(
                "/ocellus/v1/images/{id}/extents?view=raw&offset={}",
                (64u64 << 20) + 1
            ),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let map = tool(
        "nbdinfo",
        &["--map", "--json", &uri(address, &format!("{id}:raw"))],
    )
    .await;
    ok(&map, "nbdinfo --map of the raw view");
    let map: Value = serde_json::from_slice(&map.stdout).unwrap();
    let nbd_data: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|extent| extent["type"] == json!(0))
        .map(|extent| {
            (
                extent["offset"].as_u64().unwrap(),
                extent["length"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(nbd_data, expected);
}

/// A client that asks for much and reads nothing holds at most its connection's share of
/// the read buffers: another client is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_cannot_starve_the_others() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let bytes = random_bytes(32 << 20, 51);
    let id = upload(&server, bytes.clone(), "raw", None).await;
    let mut greedy = Client::go(address, &id).await.unwrap();
    // Sixteen 32 MiB reads (512 MiB, twice the whole budget), none of them read back.
    for _ in 0..16 {
        greedy.cookie += 1;
        let mut out = Vec::new();
        out.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&proto::CMD_READ.to_be_bytes());
        out.extend_from_slice(&greedy.cookie.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&(32u32 << 20).to_be_bytes());
        greedy.stream.write_all(&out).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut other = Client::go(address, &id).await.unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), other.read(4096, 4096))
        .await
        .expect("another client is served while the greedy one stalls");
    assert_eq!(read.unwrap(), Ok(bytes[4096..8192].to_vec()));
}

/// An open connection ends once its image is deleted (checked every `ACCESS_RECHECK` as
/// requests come), even in lab mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_ends_when_its_image_goes() {
    let server = Server::start().await;
    let address = server.start_nbd().await;
    let bytes = random_bytes(100_000, 61);
    let id = upload(&server, bytes.clone(), "raw", None).await;
    let mut client = Client::go(address, &id).await.unwrap();
    assert_eq!(
        client.read(0, 100).await.unwrap(),
        Ok(bytes[..100].to_vec())
    );
    assert_eq!(server.delete(&id).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(ocellus::nbd::ACCESS_RECHECK + std::time::Duration::from_millis(200)).await;
    assert!(
        client.read(0, 100).await.is_err(),
        "the connection must end"
    );
}

/// A minimal NBD client for the requests real clients never send.
struct Client {
    stream: TcpStream,
    cookie: u64,
}

impl Client {
    /// Connects and negotiates fixed newstyle (no zeroes), stopping before any option.
    async fn handshake(address: SocketAddr) -> std::io::Result<Client> {
        let mut stream = TcpStream::connect(address).await?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).await?;
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        stream
            .write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes())
            .await?;
        Ok(Client { stream, cookie: 0 })
    }

    /// Connects and opens `export` with simple replies.
    async fn go(address: SocketAddr, export: &str) -> std::io::Result<Client> {
        let mut client = Client::handshake(address).await?;
        assert_eq!(client.go_reply(export).await?, proto::REP_ACK, "{export}");
        Ok(client)
    }

    /// Sends an option and returns its last reply's type (the ACK or the error).
    async fn option(&mut self, option: u32, data: &[u8]) -> std::io::Result<u32> {
        let mut out = Vec::new();
        out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        self.stream.write_all(&out).await?;
        loop {
            let mut head = [0u8; 20];
            self.stream.read_exact(&mut head).await?;
            assert_eq!(&head[..8], &proto::REPLY_MAGIC.to_be_bytes());
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let length = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut payload = vec![0u8; length as usize];
            self.stream.read_exact(&mut payload).await?;
            if kind == proto::REP_ACK || kind & (1 << 31) != 0 {
                return Ok(kind);
            }
        }
    }

    /// `NBD_OPT_GO` for `name`; the final reply's type.
    async fn go_reply(&mut self, name: &str) -> std::io::Result<u32> {
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(proto::OPT_GO, &data).await
    }

    async fn send(
        &mut self,
        kind: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> std::io::Result<(u32, u64)> {
        self.cookie += 1;
        let mut out = Vec::new();
        out.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(payload);
        self.stream.write_all(&out).await?;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).await?;
        assert_eq!(&reply[..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(reply[8..].try_into().unwrap());
        Ok((error, cookie))
    }

    async fn command(&mut self, kind: u16, offset: u64, length: u32) -> std::io::Result<u32> {
        let (error, cookie) = self.send(kind, offset, length, &[]).await?;
        assert_eq!(cookie, self.cookie);
        Ok(error)
    }

    async fn write(&mut self, offset: u64, payload: &[u8]) -> std::io::Result<u32> {
        let (error, _) = self
            .send(proto::CMD_WRITE, offset, payload.len() as u32, payload)
            .await?;
        Ok(error)
    }

    async fn read(&mut self, offset: u64, length: u32) -> std::io::Result<Result<Vec<u8>, u32>> {
        let (error, _) = self.send(proto::CMD_READ, offset, length, &[]).await?;
        if error != 0 {
            return Ok(Err(error));
        }
        let mut data = vec![0u8; length as usize];
        self.stream.read_exact(&mut data).await?;
        Ok(Ok(data))
    }
}
