//! `make images` (scripts/images.sh) without a real builder: with none on PATH it fails with a
//! message that says what it tried; with a stand-in `podman` that records its arguments it builds
//! the controller and both dataplane variants from the right files and targets, and prints how to
//! push them and the Helm values. The images' pinned server-everything matches the tests' pin.

use std::path::{Path, PathBuf};
use std::process::Command;

use reflow_e2e::harness::SERVER_EVERYTHING_SPEC;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A PATH holding only the tools the script needs (bash, sed) and, optionally, a fake builder.
fn bin_dir(name: &str, fake: Option<&str>) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for tool in ["bash", "sed", "dirname", "cat"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, dir.join(tool)).expect("symlink");
    }
    if let Some(builder) = fake {
        let log = dir.join("calls.log");
        let script = format!("#!/bin/bash\necho \"$*\" >> {}\n", log.display());
        let path = dir.join(builder);
        std::fs::write(&path, script).expect("fake");
        let mut perms = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod");
    }
    dir
}

fn images(path: &Path) -> std::process::Output {
    Command::new(path.join("bash"))
        .arg(root().join("scripts/images.sh"))
        .env_clear()
        .env("PATH", path)
        .env("TAG", "9.9.9")
        .env("REGISTRY", "registry.example/team")
        .output()
        .expect("run images.sh")
}

#[test]
fn without_a_builder_make_images_fails_and_says_what_it_tried() {
    let dir = bin_dir("images-none", None);
    let out = images(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no OCI image builder found")
            && stderr.contains("podman")
            && stderr.contains("buildah"),
        "{stderr}"
    );
}

#[test]
fn with_podman_it_builds_three_images_and_prints_push_and_helm_values() {
    let dir = bin_dir("images-podman", Some("podman"));
    let out = images(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(dir.join("calls.log")).expect("podman was called");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            "build -f images/controller.Dockerfile --target runtime -t registry.example/team/reflow-controller:9.9.9 .",
            "build -f images/dataplane.Dockerfile --target runtime -t registry.example/team/reflow-dataplane:9.9.9 .",
            "build -f images/dataplane.Dockerfile --target stdio -t registry.example/team/reflow-dataplane:9.9.9-stdio .",
        ]
    );
    for line in [
        "podman push registry.example/team/reflow-controller:9.9.9",
        "podman push registry.example/team/reflow-dataplane:9.9.9-stdio",
        "--set controller.image.repository=registry.example/team/reflow-controller --set controller.image.tag=9.9.9",
        "--set dataplane.image.tag=9.9.9-stdio",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // Every --target the script asks for is a stage of its Dockerfile.
    for (file, target) in [
        ("controller", "runtime"),
        ("dataplane", "runtime"),
        ("dataplane", "stdio"),
    ] {
        let text = std::fs::read_to_string(root().join(format!("images/{file}.Dockerfile")))
            .expect("dockerfile");
        assert!(
            text.lines()
                .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
            "{file}.Dockerfile has no stage {target}"
        );
    }
}

#[test]
fn the_stdio_image_carries_the_server_everything_the_tests_pin() {
    let text = std::fs::read_to_string(root().join("images/dataplane.Dockerfile")).expect("file");
    assert!(text.contains(&format!(
        "npm install -g --no-audit --no-fund {SERVER_EVERYTHING_SPEC}"
    )));
}
