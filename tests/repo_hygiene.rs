//! No private key is ever committed: every tracked file (`git ls-files`), as staged and as on
//! disk, is searched for a PEM private-key block. Nothing is skipped, not even this file, which
//! therefore builds the marker at run time instead of spelling it out.

use std::path::Path;
use std::process::Command;

fn marker() -> regex::bytes::Regex {
    let dashes = "-".repeat(5);
    regex::bytes::Regex::new(&format!(
        "{dashes}BEGIN [A-Z0-9 ]*PRIVATE[ ]KEY([ ]BLOCK)?{dashes}"
    ))
    .unwrap()
}

fn git(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Tracked paths in `repo` whose staged blob or working-tree file holds a private-key block.
fn tracked_private_keys(repo: &Path) -> (usize, Vec<String>) {
    let marker = marker();
    let listing = git(repo, &["ls-files", "-s", "-z"]);
    let mut found = Vec::new();
    let mut checked = 0;
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        // "<mode> <object> <stage>\t<path>"
        let entry = String::from_utf8_lossy(entry);
        let (meta, path) = entry.split_once('\t').expect("ls-files -s format");
        let object = meta.split(' ').nth(1).expect("an object id");
        let mode = meta.split(' ').next().expect("a mode");
        checked += 1;
        let staged = if mode == "160000" {
            Vec::new() // a submodule's commit, not file content
        } else {
            git(repo, &["cat-file", "blob", object])
        };
        let on_disk = std::fs::read(repo.join(path)).unwrap_or_default();
        if marker.is_match(&staged) || marker.is_match(&on_disk) {
            found.push(path.to_owned());
        }
    }
    (checked, found)
}

#[test]
fn no_tracked_file_holds_a_private_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (checked, found) = tracked_private_keys(repo);
    assert!(
        checked > 50,
        "only {checked} tracked files: is this a git checkout?"
    );
    assert!(
        found.is_empty(),
        "private key material is tracked in: {found:?}. Remove it from git (and rotate the key)."
    );
}

#[test]
fn the_check_finds_a_key_that_is_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q"]);
    std::fs::write(repo.join("README.md"), "nothing secret\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::create_dir(repo.join("certs")).unwrap();
    std::fs::write(repo.join("certs/tls.key"), &key).unwrap();
    // an RSA-style label, staged only: the working-tree copy is already gone
    let label = ["PRIVATE", "KEY"].join(" ");
    let rsa_label = key.replace(&format!("BEGIN {label}"), &format!("BEGIN RSA {label}"));
    std::fs::write(repo.join("old.pem"), rsa_label).unwrap();
    git(repo, &["add", "README.md", "certs/tls.key", "old.pem"]);
    std::fs::remove_file(repo.join("old.pem")).unwrap();
    let (checked, mut found) = tracked_private_keys(repo);
    found.sort();
    assert_eq!(checked, 3);
    assert_eq!(found, ["certs/tls.key", "old.pem"]);
}
