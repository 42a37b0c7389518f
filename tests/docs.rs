//! The documentation stays usable from a clone: every relative link and every file path it quotes exists in the
//! repository, and the README's minimal configuration passes `mqtt-lb check`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages a reader of a clone is sent to.
fn pages() -> Vec<PathBuf> {
    let root = repo();
    let mut pages = vec![root.join("README.md"), root.join("certs/README.md")];
    for dir in ["docs", "bench"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}/: {e}"))
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .collect();
        found.sort();
        pages.extend(found);
    }
    pages
}

/// The text outside fenced code blocks (commands and configuration examples name files on the reader's machine).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Markdown links `[text](target)` as (file, fragment); external and in-page links left out.
fn links(text: &str) -> Vec<(String, Option<String>)> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let (target, fragment) = match rest[..end].trim().split_once('#') {
            Some((target, fragment)) => (target, Some(fragment.to_string())),
            None => (rest[..end].trim(), None),
        };
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external {
            targets.push((target.to_string(), fragment));
        }
    }
    targets
}

/// The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces to `-`.
fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Inline code spans that look like a path to a file of the repository: a `/` inside, a known extension, no
/// placeholder (`<target>`), not absolute (those name files of the installed system).
fn quoted_paths(text: &str) -> Vec<String> {
    const EXTENSIONS: [&str; 10] =
        [".md", ".rs", ".yaml", ".yml", ".json", ".sh", ".toml", ".service", ".conf", ".cfg"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|span| span.contains('/') && !span.starts_with('/') && !span.contains(char::is_whitespace))
        .filter(|span| !span.contains(['<', '*', '{', '$', ':', '=']))
        .filter(|span| EXTENSIONS.iter().any(|ext| span.ends_with(ext)))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_relative_link_and_quoted_path_resolves_inside_the_repository() {
    let root = repo().canonicalize().expect("the repository folder");
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let text = prose(&text);
        let dir = page.parent().expect("a page is in a folder");
        let name = page.strip_prefix(repo()).unwrap_or(&page).display().to_string();
        let inside = |path: &Path| path.canonicalize().is_ok_and(|path| path.starts_with(&root));
        // A link resolves from the page's folder, as on GitHub and in editors; a #fragment names a heading there.
        for (target, fragment) in links(&text) {
            let file = dir.join(&target);
            if !inside(&file) {
                broken.push(format!("{name}: link ({target})"));
            } else if let Some(fragment) = fragment {
                let page = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&prose(&page)).contains(&fragment) {
                    broken.push(format!("{name}: link ({target}#{fragment}): no such heading"));
                }
            }
        }
        // A quoted path may be written from the page's folder or from the repository root; `../` only the first.
        for path in quoted_paths(&text) {
            let from_root = !path.starts_with("../") && inside(&root.join(&path));
            if !inside(&dir.join(&path)) && !from_root {
                broken.push(format!("{name}: `{path}`"));
            }
        }
    }
    assert!(broken.is_empty(), "links and paths that do not resolve inside the repository:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_sees_links_and_paths_outside_the_repository() {
    let text = prose(
        "see [design](../shared/DESIGN.md#top), `../shared/x.cfg`, [web](https://example.org)\n```\n`a/b.md`\n```\n",
    );
    assert_eq!(links(&text), [("../shared/DESIGN.md".to_string(), Some("top".to_string()))]);
    assert_eq!(quoted_paths(&text), ["../shared/x.cfg"]);
    assert_eq!(
        anchors("# Operating it\n## Placement: rendezvous hashing\n"),
        ["operating-it", "placement-rendezvous-hashing"]
    );
}

#[test]
fn the_readme_minimal_configuration_passes_check() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme.find("```yaml\n").expect("README.md has a ```yaml block: the minimal configuration") + 8;
    let len = readme[start..].find("```").expect("the yaml block ends");
    let yaml = &readme[start..start + len];
    let lines = yaml.lines().count();
    assert!(lines <= 16, "the minimal configuration stays minimal ({lines} lines)");

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("certs")).expect("certs/");
    // The README's configuration names certs/server.crt and certs/server.key, relative to the file.
    let _pki = TestPki::new(&dir.path().join("certs"));
    let config = dir.path().join("minimal.yaml");
    std::fs::write(&config, yaml).expect("write minimal.yaml");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().expect("run mqtt-lb check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "README.md's minimal configuration fails `mqtt-lb check`:\n{yaml}\n{text}");
}
