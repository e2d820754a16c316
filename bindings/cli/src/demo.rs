//! `attune demo`: one person's messages sorted into their folders, from
//! zero-shot to a trained head; search over their notes; reply suggestions;
//! and forgetting. The data set is written for this project.

use std::time::Instant;

use attune::{
    Error, Forget, NewDocument, NewExample, NewFeedback, Personalizer, PersonalizerConfig, QuietTraining, Signal,
    TrainOptions,
};

use crate::Cli;

/// (folder, description of the folder, messages). The first eight messages
/// of each folder are for training, the rest are held out for scoring.
const FOLDERS: [(&str, &str, [&str; 12]); 5] = [
    (
        "family",
        "messages from my family: mum, dad, my sister and the kids",
        [
            "Mum says Sunday lunch is at one, bring the salad",
            "Can you pick up Leo from football practice at six?",
            "Dad's birthday is next week, shall we chip in for a gift?",
            "Grandma is asking when we are visiting again",
            "The kids want pancakes for breakfast tomorrow",
            "My sister is moving house on Saturday and needs help with boxes",
            "Don't forget Mia's school play on Thursday evening",
            "Uncle Tom sent photos from the wedding",
            "Mum wants to know if you are coming for Christmas",
            "Leo lost his front tooth today!",
            "Can you call your dad back, he has a question about the car",
            "Family dinner moved to Friday because of Mia's recital",
        ],
    ),
    (
        "work",
        "work messages: colleagues, meetings, projects and deadlines",
        [
            "The quarterly review moved to Tuesday at ten",
            "Please send me the slides before the client call",
            "Can we push the release by one day? QA found a blocker",
            "Reminder: timesheets are due by Friday noon",
            "The new hire starts Monday, can you show her around?",
            "Budget approval came through for the analytics project",
            "Stand-up is cancelled today, post your updates in the channel",
            "Could you review my pull request when you have a minute?",
            "The board wants the revenue forecast by end of month",
            "Client meeting rescheduled to Wednesday afternoon",
            "Please update the project plan with the new milestones",
            "Your performance review is scheduled for next Thursday",
        ],
    ),
    (
        "bills",
        "bills and payments: invoices, rent, utilities, bank and subscriptions",
        [
            "Your electricity bill of 84.20 is due on the 15th",
            "Rent payment received, thank you",
            "Your card ending 4421 was charged 12.99 for your streaming subscription",
            "Invoice 2291 from the plumber: 160 due within 30 days",
            "Your phone plan will renew on the 3rd at 25 per month",
            "Water bill available: 41.75 for the last quarter",
            "Payment failed: please update your card for the gym membership",
            "Your credit card statement is ready, minimum payment 35",
            "Internet bill overdue, a late fee will apply after Monday",
            "Car insurance renewal quote: 540 for the year",
            "Direct debit for council tax will be taken on the 1st",
            "Your bank transfer of 250 to the landlord was completed",
        ],
    ),
    (
        "travel",
        "travel plans: flights, trains, hotels, bookings and trips",
        [
            "Your flight to Lisbon departs at 07:40 from gate B12",
            "Hotel booking confirmed: two nights in Porto",
            "Train tickets to Edinburgh are attached, seats 23 and 24",
            "Check in online now for your flight tomorrow",
            "Your rental car pickup is at 2pm at the airport",
            "Passport renewal appointment on the 9th at the consulate",
            "The ferry to the island leaves every two hours",
            "Boarding pass for seat 14C is ready in the app",
            "Your flight has been delayed by 45 minutes",
            "Don't forget travel adapters for the trip to Japan",
            "Your Airbnb host shared the door code for Friday",
            "Bus from the airport to the city centre takes 40 minutes",
        ],
    ),
    (
        "health",
        "health: doctor and dentist appointments, prescriptions and fitness",
        [
            "Your dentist appointment is on Monday at 9:30",
            "Prescription ready for collection at the pharmacy",
            "Blood test results are normal, no action needed",
            "Physio session moved to Thursday at 5pm",
            "Time for your annual eye test, book online",
            "Your flu vaccination is due this autumn",
            "You walked 12,000 steps today, nice work",
            "The clinic called to confirm your check-up next week",
            "Remember to take your antibiotics twice a day",
            "Yoga class tonight is cancelled, see you Saturday",
            "Your GP has sent a referral to the dermatologist",
            "Sleep report: 7 hours 40 minutes last night",
        ],
    ),
];

const NOTES: [(&str, &str); 10] = [
    ("n1", "Wi-Fi password for the cabin is lakeside2024"),
    ("n2", "Gift ideas for Dad: fishing reel, a book about jazz, good coffee"),
    ("n3", "Recipe: lemon risotto with peas and parmesan, 25 minutes"),
    ("n4", "Car service due at 60,000 km, garage on Mill Street"),
    ("n5", "Book recommendations from Anna: The Overstory, Piranesi"),
    ("n6", "Kids' shoe sizes: Leo 31, Mia 28"),
    ("n7", "Passport numbers and expiry dates are in the blue folder"),
    ("n8", "Ideas for the garden: raised beds, tomatoes, a bench under the apple tree"),
    ("n9", "Parking at the airport: long stay car park C is cheapest"),
    ("n10", "Password manager recovery codes are in the safe"),
];

const REPLIES: [(&str, &str); 6] = [
    ("r1", "On my way, see you in ten minutes!"),
    ("r2", "Sorry, I'm running late, start without me"),
    ("r3", "Thanks so much, that's really kind of you"),
    ("r4", "Sounds good, see you then"),
    ("r5", "Can we move it to tomorrow? Today is packed"),
    ("r6", "Happy birthday! Hope you have a wonderful day"),
];

pub fn run(cli: &Cli) -> Result<(), Error> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("attune-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Storage(e.to_string()))?;
    let outcome = walk(cli, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    println!(
        "\ndemo finished in {:.1} s; nothing left the machine, and its database is deleted",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn walk(cli: &Cli, dir: &std::path::Path) -> Result<(), Error> {
    let loading = Instant::now();
    let p = Personalizer::open(&PersonalizerConfig {
        database: dir.join("demo.db"),
        model_dir: crate::model_dir::resolve(cli.model.as_deref())?,
        encoder: cli.encoder_options(),
        encryption_key: None,
    })?;
    println!("model {} on {} loaded in {} ms", p.encoder().model_id(), cli.backend, loading.elapsed().as_millis());
    let task = "inbox";
    let held_out: Vec<(String, String)> = FOLDERS
        .iter()
        .flat_map(|(folder, _, messages)| messages[8..].iter().map(move |m| (m.to_string(), folder.to_string())))
        .collect();

    println!("\n1. Zero-shot: the folders are only described in words");
    for (folder, description, _) in FOLDERS {
        p.describe_label(task, folder, description)?;
    }
    score(&p, task, &held_out)?;

    println!("\n2. Two examples per folder: prototypes");
    add(&p, task, 0..2)?;
    score(&p, task, &held_out)?;

    println!("\n3. Eight examples per folder, then a trained head");
    add(&p, task, 2..8)?;
    let trained = p.train(task, &TrainOptions::default(), &QuietTraining)?;
    println!(
        "   trained {} in {} ms ({}); {}",
        trained.report.chosen,
        trained.report.train_ms,
        trained.report.validation_method,
        if trained.promotion.promote { "promoted" } else { "kept as candidate" }
    );
    score(&p, task, &held_out)?;
    let (predictions, _) =
        p.predict(task, &["Flight to Rome boards at gate 22", "Quarterly invoice for the cleaning service"], 2)?;
    for (text, prediction) in
        ["Flight to Rome boards at gate 22", "Quarterly invoice for the cleaning service"].iter().zip(&predictions)
    {
        let top: Vec<String> = prediction.top.iter().map(|s| format!("{} {:.2}", s.label, s.probability)).collect();
        println!("   {text:?} → {}", top.join(", "));
    }

    println!("\n4. Search over my notes (embedded once, cached), then personalised by feedback");
    p.add_documents("notes", &documents(&NOTES))?;
    let query = "passwords";
    let show = |label: &str, hits: &[attune::SearchHit]| {
        let shown: Vec<String> = hits.iter().map(|h| format!("{:.2} {}", h.score, h.text)).collect();
        println!("   {label} {query:?}:\n     {}", shown.join("\n     "));
    };
    let before = p.search("notes", query, 3)?;
    show("before feedback,", &before);
    // This user always opens the Wi-Fi note and skips the others.
    for _ in 0..3 {
        for hit in &before {
            let signal = if hit.key == "n1" { Signal::Click } else { Signal::Skip };
            let event =
                NewFeedback { query: Some(query.into()), document_key: hit.key.clone(), signal, created_at: None };
            p.record_feedback("notes", &event)?;
        }
    }
    show("after 9 feedback events,", &p.search("notes", query, 3)?);

    println!("\n5. Reply suggestions: my saved replies, ranked for an incoming message");
    p.add_documents("replies", &documents(&REPLIES))?;
    for incoming in ["Where are you? We're all at the restaurant", "It's my birthday today!"] {
        let hits = p.search("replies", incoming, 2)?;
        let shown: Vec<String> = hits.iter().map(|h| format!("{:?}", h.text)).collect();
        println!("   {incoming:?} → {}", shown.join(" or "));
        if let Some(chosen) = hits.first() {
            p.record_feedback(
                "replies",
                &NewFeedback {
                    query: Some(incoming.into()),
                    document_key: chosen.key.clone(),
                    signal: Signal::Click,
                    created_at: None,
                },
            )?;
        }
    }

    println!("\n6. Forget the health folder: examples, vectors and the heads trained on them");
    let forgotten = p.forget(Some(task), &Forget::Label("health".into()))?;
    println!(
        "   forgot {} examples and {} cached vectors; {} head(s) erased; retrained on what remains",
        forgotten.forgotten.examples, forgotten.forgotten.vectors, forgotten.forgotten.heads_invalidated
    );
    let labels: Vec<String> = p.labels(task)?.into_iter().map(|l| l.label).collect();
    println!("   folders now: {}", labels.join(", "));
    let (after, _) = p.predict(task, &["Your dentist appointment is on Monday"], 1)?;
    println!("   \"Your dentist appointment is on Monday\" → {} (health is gone)", after[0].top[0].label);
    Ok(())
}

fn documents(pairs: &[(&str, &str)]) -> Vec<NewDocument> {
    pairs
        .iter()
        .map(|(key, text)| NewDocument { key: key.to_string(), text: text.to_string(), metadata: None })
        .collect()
}

fn add(p: &Personalizer, task: &str, range: std::ops::Range<usize>) -> Result<(), Error> {
    let examples: Vec<NewExample> = FOLDERS
        .iter()
        .flat_map(|(folder, _, messages)| messages[range.clone()].iter().map(move |m| NewExample::new(*m, *folder)))
        .collect();
    p.add_examples(task, &examples)?;
    Ok(())
}

fn score(p: &Personalizer, task: &str, held_out: &[(String, String)]) -> Result<(), Error> {
    let texts: Vec<&str> = held_out.iter().map(|(t, _)| t.as_str()).collect();
    let (_, source) = p.predict(task, &texts[..1], 1)?;
    let metrics = p.evaluate(task, held_out)?;
    println!("   {source:?}: accuracy {:.0}% on {} held-out messages", metrics.accuracy * 100.0, metrics.n);
    Ok(())
}
