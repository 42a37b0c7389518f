//! The deployment examples without Kubernetes, checked by the tools that will read them: the systemd unit by
//! `systemd-analyze verify` and `systemd-analyze security` (exposure level at most 2.0, "OK"), the keepalived
//! example by `keepalived -t`. Tools missing: skipped, or failed under `MQTT_LB_REQUIRE_TOOLS=1`.

mod tools;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tools::{find_tool, repo};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

fn output(tool: &Path, args: &[&str], file: &Path) -> (Output, String) {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// The unit with its ExecStart pointing at the binary under test (verify checks that the command exists).
fn unit_copy(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("mqtt-lb.service");
    std::fs::write(&path, text.replace("/usr/local/bin/mqtt-lb", BIN)).expect("write unit");
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) = find_tool(
        "systemd-analyze",
        "MQTT_LB_SYSTEMD_ANALYZE",
        &["/usr/bin/systemd-analyze"],
        "run scripts/install-deps.sh",
    ) else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("deploy/systemd/mqtt-lb.service")).expect("the unit");
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
    ] {
        assert!(text.lines().any(|l| l.trim() == line), "the unit lacks {line}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_copy(dir.path(), &text);
    let (out, said) = output(&analyze, &["verify"], &unit);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let (out, said) = output(&analyze, &["security", "--offline=true", "--threshold=20"], &unit);
    assert!(out.status.success(), "exposure above 2.0: {said}");
    assert!(said.contains("Overall exposure level for mqtt-lb.service"), "{said}");

    // The checks bite: a misspelt directive is reported, a unit without the hardening is refused.
    let typo = unit_copy(dir.path(), &text.replace("DynamicUser=yes", "DynamicUsr=yes"));
    let (_, said) = output(&analyze, &["verify"], &typo);
    assert!(said.contains("DynamicUsr"), "verify missed a typo: {said}");
    let bare = unit_copy(dir.path(), "[Service]\nExecStart=/usr/local/bin/mqtt-lb run\n");
    let (out, _) = output(&analyze, &["security", "--offline=true", "--threshold=20"], &bare);
    assert!(!out.status.success(), "an unhardened unit passed the exposure threshold");
}

#[test]
fn keepalived_example_passes_its_config_test() {
    let Some(keepalived) =
        find_tool("keepalived", "MQTT_LB_KEEPALIVED", &["/usr/sbin/keepalived"], "run scripts/install-deps.sh")
    else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("deploy/keepalived/keepalived.conf")).expect("keepalived.conf");
    assert!(text.contains("http://127.0.0.1:9100/readyz"), "the check must ask mqtt-lb's /readyz");
    // keepalived -t checks that the script user exists: the example's dedicated user is created at install time,
    // so the test uses `nobody`.
    assert!(text.contains("script_user keepalived_script"));
    let dir = tempfile::tempdir().expect("temp dir");
    let test = |body: &str| {
        let path = dir.path().join("keepalived.conf");
        std::fs::write(&path, body.replace("script_user keepalived_script", "script_user nobody")).expect("write");
        let (out, said) = output(&keepalived, &["-t", "-f"], &path);
        // keepalived 2.2 ends a successful config test by sending itself SIGTERM; errors exit with status 5.
        let passed = (out.status.success() || out.status.signal() == Some(15)) && said.trim().is_empty();
        (passed, said)
    };
    let (passed, said) = test(&text);
    assert!(passed, "keepalived -t: {said}");
    let (passed, said) = test(&text.replace("track_script {", "track_scrpt {"));
    assert!(!passed && said.contains("track_scrpt"), "keepalived -t missed a typo: {said}");
    let (passed, _) = test(&text.replace("vrrp_script mqtt_lb_ready", "vrrp_script other_name"));
    assert!(!passed, "keepalived -t missed a track_script naming no vrrp_script");
}
