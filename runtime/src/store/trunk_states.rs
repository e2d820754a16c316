//! The trunk-state cache: for tasks that adapt the backbone's top layers,
//! each example's token states below those layers, so the trunk runs once
//! per text and model. Keyed by (text hash, model fingerprint, layer count)
//! like the feature cache; stored as f16 (`[tokens, width]`, 2 bytes a
//! value). Only texts of examples are kept: a state whose text no example
//! holds any more goes with that example (`rights::drop_unreferenced_features`),
//! and the cache refuses texts that are no example's.

use half::f16;
use rusqlite::OptionalExtension;

use super::{Store, text_hash};
use crate::error::{Error, Result};

/// No backbone Attune runs takes more tokens than this; larger is damage.
const MOST_TOKENS: usize = 8192;
const MOST_WIDTH: usize = 8192;

/// One text's cached states.
#[derive(Debug, Clone, PartialEq)]
pub struct TrunkStateRows {
    pub tokens: usize,
    pub width: usize,
    /// Row-major `[tokens, width]`.
    pub values: Vec<f32>,
}

/// Which trunk the states came from.
#[derive(Debug, Clone, Copy)]
pub struct TrunkKey<'a> {
    pub fingerprint: &'a str,
    /// Layers above the trunk (the adapted ones).
    pub layers: usize,
}

impl Store {
    /// Cached states of `texts`, `None` where missing.
    pub fn cached_trunk_states(&self, key: TrunkKey<'_>, texts: &[&str]) -> Result<Vec<Option<TrunkStateRows>>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT tokens, width, states FROM trunk_states
                  WHERE text_hash = ?1 AND fingerprint = ?2 AND layers = ?3",
            )?;
            texts
                .iter()
                .map(|text| {
                    let row = statement
                        .query_row((&text_hash(text)[..], key.fingerprint, key.layers as i64), |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Vec<u8>>(2)?))
                        })
                        .optional()?;
                    row.map(|(tokens, width, bytes)| decode(tokens, width, &bytes)).transpose()
                })
                .collect()
        })
    }

    /// Stores states for texts that are examples of some task (others are
    /// skipped); returns how many were stored.
    pub fn cache_trunk_states(&self, key: TrunkKey<'_>, entries: &[(&str, &TrunkStateRows)]) -> Result<u64> {
        if key.fingerprint.is_empty() || key.layers == 0 {
            return Err(Error::InvalidInput("trunk states need a fingerprint and a layer count".into()));
        }
        for (_, rows) in entries {
            check(rows)?;
        }
        self.write(|tx| {
            let mut statement = tx.prepare_cached(
                "INSERT INTO trunk_states (fingerprint, layers, text_hash, tokens, width, states)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM examples WHERE text_hash = ?3)
                 ON CONFLICT (text_hash, fingerprint, layers) DO UPDATE SET tokens = excluded.tokens,
                     width = excluded.width, states = excluded.states",
            )?;
            let mut stored = 0;
            for (text, rows) in entries {
                let bytes: Vec<u8> = rows.values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
                let hash = text_hash(text);
                let (tokens, width) = (rows.tokens as i64, rows.width as i64);
                stored += statement.execute(rusqlite::params![
                    key.fingerprint,
                    key.layers as i64,
                    &hash[..],
                    tokens,
                    width,
                    bytes
                ])? as u64;
            }
            Ok(stored)
        })
    }

    /// How many texts have cached states, and their bytes.
    pub fn trunk_state_size(&self) -> Result<(u64, u64)> {
        self.read(|tx| {
            Ok(tx.query_row("SELECT count(*), coalesce(sum(length(states)), 0) FROM trunk_states", [], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
            })?)
        })
    }

    /// Removes the states of every model but `keep` (after a model upgrade).
    pub fn drop_trunk_states_except(&self, keep: &str) -> Result<u64> {
        self.write(|tx| Ok(tx.execute("DELETE FROM trunk_states WHERE fingerprint != ?1", [keep])? as u64))
    }
}

fn check(rows: &TrunkStateRows) -> Result<()> {
    if rows.tokens == 0 || rows.width == 0 || rows.tokens > MOST_TOKENS || rows.width > MOST_WIDTH {
        return Err(Error::InvalidInput(format!("trunk states of {} tokens × {} values", rows.tokens, rows.width)));
    }
    if rows.values.len() != rows.tokens * rows.width {
        return Err(Error::InvalidInput(format!(
            "{} values for {} tokens × {}",
            rows.values.len(),
            rows.tokens,
            rows.width
        )));
    }
    if rows.values.iter().any(|v| !v.is_finite() || v.abs() > f32::from(f16::MAX)) {
        return Err(Error::InvalidInput("trunk states hold NaN, infinity or values beyond f16".into()));
    }
    Ok(())
}

fn decode(tokens: i64, width: i64, bytes: &[u8]) -> Result<TrunkStateRows> {
    let corrupt = || Error::DatabaseUnreadable("cached trunk states do not match their recorded size".into());
    let (tokens, width) =
        (usize::try_from(tokens).map_err(|_| corrupt())?, usize::try_from(width).map_err(|_| corrupt())?);
    if tokens == 0 || width == 0 || tokens > MOST_TOKENS || width > MOST_WIDTH || bytes.len() != tokens * width * 2 {
        return Err(corrupt());
    }
    let values = bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    Ok(TrunkStateRows { tokens, width, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewExample, StoreOptions};

    fn store() -> Store {
        let dir = crate::model::tests::tempdir("trunkstates");
        let store = Store::open(&dir.join("user.db"), &StoreOptions::default()).unwrap();
        let task = store.ensure_task("task").unwrap();
        store.add_examples(task, &[NewExample::new("an example", "a")]).unwrap();
        store
    }

    const KEY: TrunkKey<'static> = TrunkKey { fingerprint: "model", layers: 2 };

    fn rows(tokens: usize, width: usize) -> TrunkStateRows {
        TrunkStateRows { tokens, width, values: (0..tokens * width).map(|i| i as f32 * 0.25 - 3.0).collect() }
    }

    #[test]
    fn examples_states_round_trip_in_f16_and_others_are_not_kept() {
        let store = store();
        let states = rows(3, 4);
        let stored = store.cache_trunk_states(KEY, &[("an example", &states), ("a document", &states)]).unwrap();
        assert_eq!(stored, 1, "only an example's text is kept");
        let cached = store.cached_trunk_states(KEY, &["an example", "a document"]).unwrap();
        assert_eq!(cached, [Some(states), None]);
        let other = TrunkKey { layers: 1, ..KEY };
        assert_eq!(store.cached_trunk_states(other, &["an example"]).unwrap(), [None]);
        assert_eq!(store.trunk_state_size().unwrap(), (1, 24));
        assert_eq!(store.drop_trunk_states_except("another model").unwrap(), 1);
        assert_eq!(store.trunk_state_size().unwrap(), (0, 0));
    }

    #[test]
    fn refuses_states_it_could_not_give_back() {
        let store = store();
        let mut bad = rows(2, 2);
        bad.values[1] = f32::NAN;
        let huge = TrunkStateRows { values: vec![1e6; 4], ..rows(2, 2) };
        let short = TrunkStateRows { values: vec![0.0; 3], ..rows(2, 2) };
        for states in [bad, huge, short, rows(0, 4)] {
            let error = store.cache_trunk_states(KEY, &[("an example", &states)]).unwrap_err();
            assert!(matches!(error, Error::InvalidInput(_)), "{error}");
        }
        assert_eq!(store.trunk_state_size().unwrap(), (0, 0));
    }

    #[test]
    fn a_damaged_blob_is_a_typed_error() {
        assert!(matches!(decode(3, 4, &[0; 23]), Err(Error::DatabaseUnreadable(_))));
        assert!(matches!(decode(-1, 4, &[]), Err(Error::DatabaseUnreadable(_))));
        assert!(matches!(decode(1 << 40, 1 << 40, &[]), Err(Error::DatabaseUnreadable(_))));
        assert_eq!(decode(1, 1, &[0, 0x3c]).unwrap().values, [1.0]);
    }
}
