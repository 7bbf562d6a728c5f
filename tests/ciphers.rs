//! Every SSH cipher the tool offers through the patched libssh2 (which encrypts runs of
//! blocks in one call) carries a multi-MB set byte-identically both ways: the nightly copy
//! up, `fetch` back down. Sizes are odd on purpose: the last block of a packet is partial.

mod common;

use common::*;
use std::process::Command;

const OFFERED: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "chacha20-poly1305@openssh.com",
];

#[test]
fn every_offered_cipher_copies_and_fetches_byte_identically() {
    for cipher in OFFERED {
        let mut fx = Fixture::new();
        fx.server_extra = format!("ciphers = {cipher}");
        fx.write_ini();
        let data_name = "cvp.20240101020010.tgz";
        let images_name = "cvp.eosimages.20240101020010.tgz";
        let data = fx.seed(data_name, 9 * 1024 * 1024 + 12_345);
        let images = fx.seed(images_name, 3 * 1024 * 1024 + 7);

        let run = fx.run(&["--no-backup", "-v"]);
        assert_eq!(run.code, 0, "{cipher}: {}", run.all_output());
        assert!(
            run.all_output().contains(&format!("(cipher {cipher})")),
            "{cipher} was not the one negotiated: {}",
            run.all_output()
        );
        assert!(std::fs::read(fx.dest.join(data_name)).expect("remote data") == data);
        assert!(std::fs::read(fx.dest.join(images_name)).expect("remote images") == images);

        let back = fx.root.path().join("back");
        let mut fetch = Command::new(bin());
        fetch
            .args(["fetch", "--ini"])
            .arg(&fx.ini)
            .args(["latest", "--to"])
            .arg(&back)
            .env_remove("CVP_BACKUP_COPY_INI");
        let fetched = run_captured(&mut fetch, fx.root.path());
        assert_eq!(fetched.code, 0, "{cipher}: {}", fetched.all_output());
        assert!(
            std::fs::read(back.join(data_name)).expect("fetched data") == data,
            "{cipher}: the data differs after the round trip"
        );
        assert!(
            std::fs::read(back.join(images_name)).expect("fetched images") == images,
            "{cipher}: the images differ after the round trip"
        );
    }
}
