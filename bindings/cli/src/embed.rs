//! `attune embed TEXT...`

use attune::{Encoder, Error};

use crate::Cli;

pub fn run(cli: &Cli, texts: &[String]) -> Result<(), Error> {
    let encoder = cli.load_encoder()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&refs)?;
    if cli.json {
        let rows: Vec<_> = texts
            .iter()
            .zip(embeddings.rows())
            .map(|(text, vector)| serde_json::json!({ "text": text, "embedding": vector }))
            .collect();
        let document = serde_json::json!({
            "model": encoder.manifest().id,
            "fingerprint": encoder.fingerprint(),
            "dim": encoder.dim(),
            "embeddings": rows,
        });
        println!("{document}");
    } else {
        for (text, vector) in texts.iter().zip(embeddings.rows()) {
            let shown: Vec<String> = vector.iter().map(|x| format!("{x:.5}")).collect();
            println!("{text}\t[{}]", shown.join(", "));
        }
    }
    Ok(())
}
