//! Every relative link in README.md and docs/*.md points to a file that exists, and every
//! `#anchor` (in the same file or another one) to a heading of that file, with GitHub's anchor
//! rules. Links outside code spans and code blocks only; web links are not followed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file in docs/.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The lines of `markdown` outside fenced code blocks (the fences themselves left out).
fn unfenced_lines(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            let fence = line.trim_start().starts_with("```");
            fenced ^= fence;
            !fence && !fenced
        })
        .collect()
}

/// The text of `markdown` outside fenced code blocks and inline code spans, one line each.
fn prose_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in unfenced_lines(markdown) {
        let mut prose = String::new();
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(piece);
            }
        }
        lines.push(prose);
    }
    lines
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped (but `-` and `_`), spaces to
/// `-`; a repeated anchor gets `-1`, `-2`…
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in unfenced_lines(markdown) {
        if !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// The targets of `[text](target)` links and `[label]: target` definitions in `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(markdown) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(at) = trimmed.find("]: ") {
                targets.push(trimmed[at + 3..].trim().to_string());
            }
        }
    }
    targets
}

/// Problems with the relative links of `file`, as `file: target: what`.
fn broken_links(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut problems = Vec::new();
    for target in link_targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let linked = if path.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap().join(path)
        };
        if !linked.exists() {
            problems.push(format!("{}: {target}: no such file", file.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            if linked.extension().is_some_and(|e| e == "md")
                && !anchors(&std::fs::read_to_string(&linked).unwrap()).contains(anchor)
            {
                problems.push(format!("{}: {target}: no such heading", file.display()));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = documents();
    assert!(files.len() > 5, "README.md and docs/*.md: {files:?}");
    let problems: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

/// The checker itself: it finds a missing file and a missing heading, and passes good links.
#[test]
fn the_link_checker_finds_broken_links() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.md"),
        "# Other\n## Stored images (`response_format=url`)\n",
    )
    .unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Page\n[ok](other.md) [ok](other.md#stored-images-response_formaturl) [ok](#page)\n\
         [bad](missing.md) [bad](other.md#nowhere) `[code](not-checked.md)`\n\
         ```\n[fenced](not-checked-either.md)\n```\n[ref]: gone.md\n[web](https://example.com/x.md)\n",
    )
    .unwrap();
    let problems = broken_links(&page);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].ends_with("missing.md: no such file"), "{problems:?}");
    assert!(
        problems[1].ends_with("other.md#nowhere: no such heading"),
        "{problems:?}"
    );
    assert!(problems[2].ends_with("gone.md: no such file"), "{problems:?}");
}
