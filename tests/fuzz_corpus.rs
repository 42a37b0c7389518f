//! The fuzz targets' checks (`fuzz/src/lib.rs`) on their seed corpus, on the stable toolchain and without libFuzzer:
//! a fast smoke run of what `scripts/fuzz.sh` fuzzes for minutes. Also writes the seed corpus for that script
//! (`MQTT_LB_FUZZ_CORPUS=dir cargo test --test fuzz_corpus -- write_seed_corpus`) and replays the committed
//! reproducers of everything fuzzing found (`fuzz/regressions/<target>/`).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::path::{Path, PathBuf};

use fuzz_checks::{run, seeds, TARGETS};
use mqtt_lb::mqtt::{parse_connect, ProtocolVersion};
use tokio::io::AsyncReadExt;

#[test]
fn every_seed_passes_its_targets_checks() {
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(seeds.len() >= 4, "{target}: only {} seeds", seeds.len());
        for seed in &seeds {
            assert!(run(target, seed), "no target {target}");
        }
    }
}

/// The seeds are what they claim: real encoders' output that mqtt-lb accepts (else the fuzzer would start from
/// refusals and rarely reach the deeper code).
#[test]
fn seeds_reach_past_validation() {
    let connects = seeds("connect");
    let versions: Vec<ProtocolVersion> = connects
        .iter()
        .map(|c| parse_connect(c).unwrap_or_else(|e| panic!("seed {c:02x?} refused: {e}")).version)
        .collect();
    for v in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        assert!(versions.contains(&v), "no {v:?} seed");
    }

    let origin = Path::new("/nonexistent/config.yaml");
    let configs = seeds("config");
    let loaded = configs.iter().filter(|c| mqtt_lb::config::parse(std::str::from_utf8(c).unwrap(), origin).is_ok());
    let errors: Vec<String> = configs
        .iter()
        .filter_map(|c| mqtt_lb::config::parse(std::str::from_utf8(c).unwrap(), origin).err().map(|e| e.to_string()))
        .collect();
    assert_eq!(loaded.count(), 2, "the two seeds without TLS files load: {errors:?}");

    for seed in seeds("proxy_protocol").iter().filter(|s| s.starts_with(b"PROXY TCP")) {
        assert!(mqtt_lb::proxy_protocol::parse_v1(&seed[..seed.iter().position(|b| *b == b'\n').unwrap() + 1]).is_ok());
    }

    // The first three WebSocket seeds upgrade and carry a whole CONNECT.
    let policy = fuzz_checks::fuzz_policy();
    for seed in seeds("websocket").iter().take(3) {
        let io = fuzz_checks::Scripted::new(seed[1..].to_vec(), usize::from(seed[0]));
        let got = fuzz_checks::block_on(async {
            let mut ws = mqtt_lb::transport::ws::accept(io, &policy).await.expect("the seed's upgrade is accepted");
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = ws.read(&mut buf).await {
                out.extend_from_slice(&buf[..n]);
            }
            out
        });
        assert!(parse_connect(&got).is_ok(), "the frames carry one CONNECT: {got:02x?}");
    }
}

/// Writes each target's seeds to `$MQTT_LB_FUZZ_CORPUS/<target>/` (for `scripts/fuzz.sh`); does nothing without it.
#[test]
fn write_seed_corpus() {
    let Some(dir) = std::env::var_os("MQTT_LB_FUZZ_CORPUS").map(PathBuf::from) else { return };
    for target in TARGETS {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).expect("create the corpus directory");
        for (i, seed) in seeds(target).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i:03}")), seed).expect("write a seed");
        }
    }
}

/// Inputs the fuzzer once crashed on (fixed since), kept as `fuzz/regressions/<target>/<name>`.
#[test]
fn regressions_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for target in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let input = std::fs::read(&path).expect("read a regression input");
            run(target, &input);
        }
    }
}

/// YAML aliases that would expand to 9^10 nodes ("billion laughs") are refused at once, not expanded: serde-saphyr's
/// budget (50,000 alias events by default) and the typed fields stop it.
#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    let mut text =
        String::from("listeners:\n  - &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(",");
        text.push_str(&format!("  - &a{i} [{refs}]\n"));
    }
    text.push_str("backends: [{ name: b, servers: [*a9] }]\n");
    let start = std::time::Instant::now();
    let result = mqtt_lb::config::parse(&text, Path::new("/nonexistent/bomb.yaml"));
    assert!(result.is_err(), "an alias bomb is not a configuration");
    assert!(start.elapsed() < std::time::Duration::from_secs(1), "took {:?}", start.elapsed());
    fuzz_checks::config(text.as_bytes());
}
