//! Makes a large synthetic catalog for the list benchmark (`bench/catalog.py`), through the
//! store's own code (`Store::insert_images`: records, sort index and blob references written
//! as an API create would, 10,000 per transaction), on a stopped server's data directory.
//!
//! Usage: `cargo run --release --example catalog -- DATA_DIR COUNT [TEMPLATE_IMAGE_ID]`
//!
//! With a template (an active image already in the directory), 95 % of the images are active
//! and share its data; without one, all are queued. The rest of each image, from a seeded
//! generator, is shaped like a CI farm's catalog:
//!
//! - owner `project-0` … `project-99` (1 % each); visibility 5 % public, 5 % community,
//!   20 % shared, 70 % private; status 95 % active, 5 % queued (with a template);
//! - name `ci-<n>`, unique, except every 1,000th, which is `ubuntu-24.04` (0.1 %);
//! - tags `nightly` (50 %) and `branch-0` … `branch-49` (2 % each);
//! - properties `os_distro` (10 values, 10 % each), `os_version`, `architecture` (`x86_64`
//!   80 %, `aarch64` 20 %) and `hw_disk_bus = virtio` (10 %);
//! - `created_at` one second apart, ending now.
//!
//! Prints one JSON object: images inserted, seconds taken, and seconds to count the catalog's
//! running totals afresh (as the upgrade to schema 11 does).

use std::collections::BTreeMap;
use std::time::Instant;

use ocellus::store::{ImageId, ImageRecord, ImageStatus, Store, Visibility};

const BATCH: usize = 10_000;
const DISTROS: [&str; 10] = [
    "ubuntu", "debian", "fedora", "centos", "rocky", "alma", "alpine", "arch", "opensuse", "cirros",
];

/// xorshift64: reproducible attributes without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: catalog DATA_DIR COUNT [TEMPLATE_IMAGE_ID]");
        std::process::exit(2);
    }
    let data_dir = std::path::Path::new(&args[1]);
    let count: usize = args[2].parse().expect("COUNT is a number");
    let store = Store::open_metadata(data_dir).expect("the data directory opens");
    let template = args.get(3).map(|id| {
        let id = ImageId::parse(id).expect("TEMPLATE_IMAGE_ID is an image id");
        let record = store
            .image(id)
            .expect("the catalog reads")
            .expect("the template image exists");
        record.data.expect("the template image has data")
    });
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    let first = now - count as i64 * 1_000_000;
    let started = Instant::now();
    let mut inserted = 0;
    let mut batch = Vec::with_capacity(BATCH);
    for index in 0..count {
        let visibility = match random.below(100) {
            0..5 => Visibility::Public,
            5..10 => Visibility::Community,
            10..30 => Visibility::Shared,
            _ => Visibility::Private,
        };
        let active = template.is_some() && random.below(100) >= 5;
        let mut tags = Vec::new();
        if random.below(2) == 0 {
            tags.push("nightly".to_owned());
        }
        tags.push(format!("branch-{}", random.below(50)));
        let mut properties = BTreeMap::new();
        let distro = DISTROS[random.below(10) as usize];
        properties.insert("os_distro".to_owned(), distro.to_owned());
        properties.insert(
            "os_version".to_owned(),
            format!("{}", 10 + random.below(15)),
        );
        let architecture = if random.below(5) == 0 {
            "aarch64"
        } else {
            "x86_64"
        };
        properties.insert("architecture".to_owned(), architecture.to_owned());
        if random.below(10) == 0 {
            properties.insert("hw_disk_bus".to_owned(), "virtio".to_owned());
        }
        let created_at = first + index as i64 * 1_000_000;
        batch.push(ImageRecord {
            id: ImageId::random(),
            name: Some(if index % 1000 == 999 {
                "ubuntu-24.04".to_owned()
            } else {
                format!("ci-{index:08}")
            }),
            status: if active {
                ImageStatus::Active
            } else {
                ImageStatus::Queued
            },
            visibility,
            protected: false,
            os_hidden: false,
            owner: Some(format!("project-{}", random.below(100))),
            disk_format: Some("qcow2".to_owned()),
            container_format: Some("bare".to_owned()),
            min_ram: 0,
            min_disk: 0,
            data: if active { template.clone() } else { None },
            created_at,
            updated_at: created_at,
            tags,
            properties,
        });
        if batch.len() == BATCH {
            inserted += store.insert_images(&batch).expect("a batch commits");
            batch.clear();
        }
    }
    inserted += store.insert_images(&batch).expect("a batch commits");
    let made = started.elapsed().as_secs_f64();
    // What the upgrade to schema 11 and `check --repair` do: count the totals from every record.
    let counting = std::time::Instant::now();
    store.recount_totals().expect("the totals are counted");
    println!(
        "{{\"inserted\": {inserted}, \"seconds\": {made:.2}, \"count_totals_seconds\": {:.2}}}",
        counting.elapsed().as_secs_f64()
    );
}
