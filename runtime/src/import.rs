//! Labelled examples from files: CSV with a header row, or JSON Lines.
//!
//! A file is checked whole before anything is stored: if any line is
//! malformed, the import is refused and every bad line is reported with its
//! number, so a user never ends up with half a file.

use std::io::BufRead;
use std::path::Path;

use crate::error::{Error, Result};
use crate::store::NewExample;

/// File formats the importers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    JsonLines,
}

impl ImportFormat {
    /// From a file's extension: `.csv`, or `.jsonl`/`.ndjson`.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(ImportFormat::Csv),
            Some("jsonl" | "ndjson") => Ok(ImportFormat::JsonLines),
            _ => Err(Error::InvalidInput(format!("{}: say --format csv or jsonl", path.display()))),
        }
    }
}

/// Which columns (CSV) or fields (JSON Lines) hold the text and the label.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text: "text".into(), label: "label".into() }
    }
}

/// At most this many bad lines are listed in one error.
const REPORTED_LINES: usize = 20;

/// Reads every `(text, label)` pair of `reader`, or refuses the file.
pub fn read_labelled(reader: impl BufRead, format: ImportFormat, columns: &Columns) -> Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    let mut bad: Vec<String> = Vec::new();
    let mut note = |line: u64, reason: String| {
        if bad.len() < REPORTED_LINES {
            bad.push(format!("line {line}: {reason}"));
        }
    };
    match format {
        ImportFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
            let header = csv.headers().map_err(|e| Error::InvalidInput(format!("line 1: {e}")))?.clone();
            let find = |name: &str| {
                header.iter().position(|h| h.trim() == name).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "line 1: no column {name:?} (columns: {})",
                        header.iter().collect::<Vec<_>>().join(", ")
                    ))
                })
            };
            let (text_at, label_at) = (find(&columns.text)?, find(&columns.label)?);
            for record in csv.records() {
                match record {
                    Ok(record) => {
                        let line = record.position().map_or(0, |p| p.line());
                        match (record.get(text_at), record.get(label_at)) {
                            (Some(text), Some(label)) => check(text, label, line, &mut rows, &mut note),
                            _ => note(line, format!("{} fields, the header has {}", record.len(), header.len())),
                        }
                    }
                    Err(error) => note(error.position().map_or(0, |p| p.line()), error.to_string()),
                }
            }
        }
        ImportFormat::JsonLines => {
            for (index, line) in reader.lines().enumerate() {
                let number = index as u64 + 1;
                let line = line.map_err(|e| Error::InvalidInput(format!("line {number}: {e}")))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(value) => match (value.get(&columns.text).and_then(|v| v.as_str()), value.get(&columns.label)) {
                        (Some(text), Some(label)) => {
                            let label = label.as_str().map(str::to_string).unwrap_or_else(|| label.to_string());
                            check(text, &label, number, &mut rows, &mut note);
                        }
                        _ => note(number, format!("needs a string {:?} and a {:?}", columns.text, columns.label)),
                    },
                    Err(error) => note(number, format!("not JSON: {error}")),
                }
            }
        }
    }
    if !bad.is_empty() {
        return Err(Error::InvalidInput(format!("the file was not imported: {}", bad.join("; "))));
    }
    if rows.is_empty() {
        return Err(Error::InvalidInput("the file holds no examples".into()));
    }
    Ok(rows)
}

fn check(text: &str, label: &str, line: u64, rows: &mut Vec<(String, String)>, note: &mut impl FnMut(u64, String)) {
    let example = NewExample::new(text, label.trim());
    match example.validate() {
        Ok(()) => rows.push((example.text, example.label)),
        Err(error) => note(line, error.to_string()),
    }
}

/// Reads a file by path; the format from `format` or the extension.
pub fn read_labelled_file(
    path: &Path,
    format: Option<ImportFormat>,
    columns: &Columns,
) -> Result<Vec<(String, String)>> {
    let format = match format {
        Some(format) => format,
        None => ImportFormat::from_path(path)?,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_labelled(std::io::BufReader::new(file), format, columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<(String, String)>> {
        read_labelled(text.as_bytes(), ImportFormat::Csv, &Columns::default())
    }

    fn jsonl(text: &str) -> Result<Vec<(String, String)>> {
        read_labelled(text.as_bytes(), ImportFormat::JsonLines, &Columns::default())
    }

    #[test]
    fn reads_quoted_csv_and_json_lines() {
        let rows =
            csv("id,text,label\n1,\"Dinner, at 8?\",personal\n2,\"She said \"\"hi\"\"\nthen left\",work\n").unwrap();
        assert_eq!(
            rows,
            [
                ("Dinner, at 8?".to_string(), "personal".to_string()),
                ("She said \"hi\"\nthen left".into(), "work".into())
            ]
        );
        let rows =
            jsonl("{\"text\": \"pay the bill\", \"label\": \"bills\"}\n\n{\"text\": \"x\", \"label\": 3}\n").unwrap();
        assert_eq!(rows, [("pay the bill".to_string(), "bills".to_string()), ("x".into(), "3".into())]);
    }

    #[test]
    fn a_bad_line_refuses_the_file_and_names_every_bad_line() {
        let error = csv("text,label\nfine,a\n,empty\nshort\nalso fine,b\n").unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("line 4") && error.contains("not imported"), "{error}");
        let error = jsonl("{\"text\":\"a\",\"label\":\"b\"}\n{oops\n{\"text\":\"a\"}\n").unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("line 3"), "{error}");
    }

    #[test]
    fn missing_columns_empty_files_and_unknown_extensions() {
        assert!(csv("words,label\nx,y\n").unwrap_err().to_string().contains("no column \"text\""));
        assert!(csv("text,label\n").unwrap_err().to_string().contains("no examples"));
        assert!(jsonl("").is_err());
        assert!(ImportFormat::from_path(Path::new("data.xlsx")).is_err());
        assert_eq!(ImportFormat::from_path(Path::new("a.JSONL")).unwrap(), ImportFormat::JsonLines);
        let columns = Columns { text: "utterance".into(), label: "intent".into() };
        let rows = read_labelled("utterance,intent\nhi,greet\n".as_bytes(), ImportFormat::Csv, &columns).unwrap();
        assert_eq!(rows.len(), 1);
    }
}
