//! `attune-bench ranking`: does feedback improve search for a user?
//!
//! Documents are CLINC150 utterances (the `val` split, 3,000 texts in 150
//! intents); queries are `test` utterances. Each simulated user has a hidden
//! taste, a random direction `p` in the embedding space. A document's utility
//! for a query is its relevance (1 when it has the query's intent) plus
//! `TASTE · (p · d)`. While training, the user searches, sees the top 10,
//! clicks the most useful and skips the rest (10 feedback events). NDCG@10
//! by utility is measured on held-out queries after 0, 10, 50 and 200 events,
//! beside plain cosine ranking, through the public `Personalizer` API.

use std::path::PathBuf;

use attune::{Error, NewDocument, NewFeedback, Personalizer, PersonalizerConfig, Signal};
use serde::Deserialize;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct RankingBenchArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 5)]
    users: u64,
    /// Held-out queries per measurement.
    #[arg(long, default_value_t = 150)]
    queries: usize,
    /// Weight of the hidden taste against relevance.
    #[arg(long, default_value_t = 1.0)]
    taste: f32,
    /// `taste`: a hidden direction in embedding space; `habits`: for each of
    /// 30 intents the user always wants one particular document, and asks
    /// again in other words.
    #[arg(long, default_value = "taste")]
    scenario: String,
}

#[derive(Deserialize)]
struct Clinc {
    val: Vec<(String, String)>,
    test: Vec<(String, String)>,
}

const CHECKPOINTS: [usize; 4] = [0, 10, 50, 200];
const SHOWN: usize = 10;

pub fn run(cli: &Cli, args: &RankingBenchArgs) -> Result<(), Error> {
    let text = std::fs::read_to_string(&args.data).map_err(|e| {
        Error::InvalidInput(format!("{}: {e} (--data names CLINC150's data_full.json)", args.data.display()))
    })?;
    let clinc: Clinc = serde_json::from_str(&text).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!("attune-ranking-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Storage(e.to_string()))?;
    let outcome = simulate(cli, args, &clinc, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = outcome?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"users": args.users, "queries": args.queries, "taste": args.taste, "scenario": args.scenario, "results": rows})
        );
    } else {
        let what =
            if args.scenario == "habits" { "habits".to_string() } else { format!("taste weight {}", args.taste) };
        println!("NDCG@10 over {} users × {} held-out queries ({what})", args.users, args.queries);
        for row in rows {
            println!(
                "after {:>3} feedback events: personalised {:.4}, plain cosine {:.4}",
                row["events"],
                row["personalised_ndcg"].as_f64().unwrap_or(0.0),
                row["plain_ndcg"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn simulate(
    cli: &Cli,
    args: &RankingBenchArgs,
    clinc: &Clinc,
    dir: &std::path::Path,
) -> Result<Vec<serde_json::Value>, Error> {
    let mut sums = vec![0.0f64; CHECKPOINTS.len()];
    let documents: Vec<NewDocument> = clinc
        .val
        .iter()
        .enumerate()
        .map(|(i, (text, _))| NewDocument { key: i.to_string(), text: text.clone(), metadata: None })
        .collect();
    for user in 0..args.users {
        let p = Personalizer::open(&PersonalizerConfig {
            database: dir.join(format!("user-{user}.db")),
            model_dir: cli.model_dir()?,
            encoder: cli.encoder_options(),
            encryption_key: None,
        })?;
        p.add_documents("docs", &documents)?;
        let texts: Vec<&str> = clinc.val.iter().map(|(t, _)| t.as_str()).collect();
        let vectors = attune::Encoder::embed(&*p.encoder(), &texts)?;
        // A user's hidden taste: a reproducible random unit direction.
        let taste = crate::search::unit_rows(1, vectors.dim(), user + 1);
        let affinity: Vec<f32> = vectors.rows().map(|d| d.iter().zip(&taste).map(|(a, b)| a * b).sum()).collect();
        let habits = args.scenario == "habits";
        let favourite = |intent: &str| -> Option<usize> {
            let docs: Vec<usize> = (0..clinc.val.len()).filter(|&i| clinc.val[i].1 == intent).collect();
            let pick =
                intent.bytes().fold(user as usize * 31 + 7, |h, b| h.wrapping_mul(131).wrapping_add(usize::from(b)));
            docs.get(pick % docs.len().max(1)).copied()
        };
        let utility = |query_intent: &str, key: &str| -> f32 {
            let i: usize = key.parse().unwrap_or(0);
            let relevant = if clinc.val[i].1 == query_intent { 1.0 } else { 0.0 };
            if habits {
                relevant + if favourite(query_intent) == Some(i) { 2.0 } else { 0.0 }
            } else {
                relevant + args.taste * affinity[i]
            }
        };
        // Training queries and held-out queries are disjoint test utterances;
        // with habits, both of the user's 30 intents.
        let offset = (user as usize * 997) % clinc.test.len();
        let pool: Vec<&(String, String)> = if habits {
            let mut intents: Vec<&str> = clinc.val.iter().map(|(_, i)| i.as_str()).collect();
            intents.sort_unstable();
            intents.dedup();
            let mine: Vec<&str> = (0..30).map(|j| intents[(user as usize * 37 + j * 5) % intents.len()]).collect();
            clinc.test.iter().filter(|(_, i)| mine.contains(&i.as_str())).collect()
        } else {
            clinc.test.iter().collect()
        };
        // A stride through the pool mixes intents (CLINC150 lists them in runs).
        let query = |j: usize| pool[((offset + j) * 7_919) % pool.len()];
        let (train_from, held_from) = if habits { (0, pool.len() / 2) } else { (0, 1_000) };
        let held_out: Vec<&(String, String)> = (0..args.queries).map(|j| query(held_from + j)).collect();
        let mut next_training = train_from;
        let mut events = 0;
        for (slot, &checkpoint) in CHECKPOINTS.iter().enumerate() {
            while events < checkpoint {
                let (text, intent) = query(next_training);
                next_training += 1;
                let shown = p.search("docs", text, SHOWN)?;
                let best = shown
                    .iter()
                    .max_by(|a, b| utility(intent, &a.key).total_cmp(&utility(intent, &b.key)))
                    .map(|hit| hit.key.clone());
                for hit in &shown {
                    let signal = if Some(&hit.key) == best.as_ref() { Signal::Click } else { Signal::Skip };
                    let feedback = NewFeedback {
                        query: Some(text.clone()),
                        document_key: hit.key.clone(),
                        signal,
                        created_at: None,
                    };
                    p.record_feedback("docs", &feedback)?;
                    events += 1;
                }
            }
            for (text, intent) in &held_out {
                let personal = p.search("docs", text, SHOWN)?;
                let gains: Vec<f32> = personal.iter().map(|h| utility(intent, &h.key)).collect();
                let ideal = if habits {
                    let relevant = clinc.val.iter().filter(|(_, i)| i == intent).count();
                    let mut gains = vec![3.0];
                    gains.extend(std::iter::repeat_n(1.0, relevant.saturating_sub(1)));
                    gains.resize(SHOWN, 0.0);
                    gains
                } else {
                    ideal_gains(clinc, &affinity, intent, args.taste)
                };
                sums[slot] += ndcg(&gains, &ideal);
            }
        }
    }
    // Without feedback search is the plain cosine ranking (a test holds it
    // to that), so the 0-event score is the plain baseline.
    let total = (args.users as usize * args.queries) as f64;
    let plain = sums[0] / total;
    Ok(CHECKPOINTS
        .iter()
        .zip(&sums)
        .map(|(events, personal)| serde_json::json!({"events": events, "personalised_ndcg": personal / total, "plain_ndcg": plain}))
        .collect())
}

/// The best possible top 10 gains for a query intent.
fn ideal_gains(clinc: &Clinc, affinity: &[f32], intent: &str, taste: f32) -> Vec<f32> {
    let mut all: Vec<f32> =
        clinc.val.iter().zip(affinity).map(|((_, i), a)| if i == intent { 1.0 } else { 0.0 } + taste * a).collect();
    all.sort_by(|a, b| b.total_cmp(a));
    all.truncate(SHOWN);
    all
}

/// NDCG with gains shifted to be non-negative (tastes can be negative).
fn ndcg(gains: &[f32], ideal: &[f32]) -> f64 {
    let floor = ideal.iter().chain(gains).copied().fold(f32::INFINITY, f32::min).min(0.0);
    let dcg =
        |g: &[f32]| -> f64 { g.iter().enumerate().map(|(i, &x)| f64::from(x - floor) / ((i + 2) as f64).log2()).sum() };
    let best = dcg(ideal);
    if best <= 0.0 { 0.0 } else { dcg(gains) / best }
}
