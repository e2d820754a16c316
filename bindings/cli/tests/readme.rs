//! The README's command-line sample, run line by line as a user would type
//! it, on the committed tiny model.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of the `sh` block after the README's `<!-- sample: cli -->` marker.
fn sample_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("the README is readable");
    let after = readme.split("<!-- sample: cli -->").nth(1).expect("the README marks its CLI sample");
    let block = after.trim_start().strip_prefix("```sh\n").expect("an sh block follows the marker");
    let block = &block[..block.find("```").expect("the block ends")];
    block.lines().filter(|line| !line.trim().is_empty()).map(str::to_string).collect()
}

/// Words of a command line: separated by spaces, double quotes group.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    assert!(!quoted, "an unbalanced quote in: {line}");
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attune-cli-readme-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(line: &str, dir: &Path) -> String {
    let words = words(line);
    assert_eq!(words[0], "attune", "a sample line runs attune: {line}");
    let output = Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(&words[1..])
        .current_dir(dir)
        .env("ATTUNE_MODEL", repository().join("models/tiny"))
        .output()
        .expect("the attune binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "`{line}` failed: {stderr}");
    String::from_utf8(output.stdout).expect("output is UTF-8")
}

#[test]
fn every_line_of_the_readme_sample_runs_and_the_forgotten_label_is_gone() {
    let lines = sample_lines();
    assert!(lines.len() >= 5, "the sample is a walk through the product");
    let dir = scratch("sample");
    let outputs: Vec<String> = lines.iter().map(|line| run(line, &dir)).collect();
    let predicted = lines.iter().zip(&outputs).filter(|(line, _)| line.contains(" predict "));
    for (line, output) in predicted {
        assert!(output.contains("weather") || output.contains("music"), "`{line}` printed: {output}");
    }
    let export = std::fs::read_to_string(dir.join("my-data.json")).expect("the sample exports the data");
    assert!(export.contains("will it rain tomorrow"), "the export holds the kept examples");
    assert!(!export.contains("play some jazz"), "the export holds a forgotten example");
}
