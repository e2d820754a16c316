//! The feature cache: the encoder's vector for a text, keyed by (model
//! fingerprint, text hash), so each text is embedded once per model.

use half::f16;
use rusqlite::OptionalExtension;

use super::{Store, text_hash};
use crate::error::{Error, Result};

/// How cached vectors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VectorEncoding {
    /// 4 bytes per value, exact.
    #[default]
    F32,
    /// 2 bytes per value; about 3 decimal digits, enough for unit vectors.
    F16,
}

impl VectorEncoding {
    fn code(self) -> i64 {
        match self {
            VectorEncoding::F32 => 0,
            VectorEncoding::F16 => 1,
        }
    }

    fn encode(self, vector: &[f32]) -> Vec<u8> {
        match self {
            VectorEncoding::F32 => vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
            VectorEncoding::F16 => vector.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        }
    }
}

fn decode(code: i64, dim: usize, bytes: &[u8]) -> Result<Vec<f32>> {
    let corrupt = || Error::DatabaseUnreadable("a cached vector does not match its recorded size".into());
    match code {
        0 if bytes.len() == dim * 4 => {
            Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        1 if bytes.len() == dim * 2 => {
            Ok(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        _ => Err(corrupt()),
    }
}

impl Store {
    /// Cached vectors for `texts` under `fingerprint`, `None` where missing.
    pub fn cached_features(&self, fingerprint: &str, texts: &[&str]) -> Result<Vec<Option<Vec<f32>>>> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT dim, encoding, vector FROM features WHERE fingerprint = ?1 AND text_hash = ?2",
            )?;
            texts
                .iter()
                .map(|text| {
                    let hash = text_hash(text);
                    let row = statement
                        .query_row((fingerprint, &hash[..]), |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Vec<u8>>(2)?))
                        })
                        .optional()?;
                    row.map(|(dim, code, bytes)| decode(code, dim as usize, &bytes)).transpose()
                })
                .collect()
        })
    }

    /// Stores vectors for texts under `fingerprint`, replacing older ones.
    /// Every vector must have the same width and finite values.
    pub fn cache_features(
        &self,
        fingerprint: &str,
        entries: &[(&str, &[f32])],
        encoding: VectorEncoding,
    ) -> Result<()> {
        let Some(dim) = entries.first().map(|(_, v)| v.len()) else { return Ok(()) };
        if dim == 0 || fingerprint.is_empty() {
            return Err(Error::InvalidInput("a cached vector needs a width and a fingerprint".into()));
        }
        for (_, vector) in entries {
            if vector.len() != dim {
                return Err(Error::InvalidInput(format!("vectors of widths {dim} and {} in one call", vector.len())));
            }
            if vector.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidInput("a vector holds NaN or infinity".into()));
            }
        }
        self.write(|tx| {
            let mut statement = tx.prepare_cached(
                "INSERT INTO features (fingerprint, text_hash, dim, encoding, vector) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (text_hash, fingerprint) DO UPDATE SET dim = excluded.dim,
                     encoding = excluded.encoding, vector = excluded.vector",
            )?;
            for (text, vector) in entries {
                let hash = text_hash(text);
                statement.execute((fingerprint, &hash[..], dim as i64, encoding.code(), encoding.encode(vector)))?;
            }
            Ok(())
        })
    }

    /// Fingerprints in the cache with their vector counts.
    pub fn feature_fingerprints(&self) -> Result<Vec<(String, u64)>> {
        self.read(|tx| {
            let mut statement = tx.prepare("SELECT fingerprint, count(*) FROM features GROUP BY fingerprint")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Removes vectors of every model but `keep` (after a model upgrade).
    pub fn drop_features_except(&self, keep: &str) -> Result<u64> {
        self.write(|tx| Ok(tx.execute("DELETE FROM features WHERE fingerprint != ?1", [keep])? as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let vector = [0.25f32, -0.5, 0.123_456_7, 1.0];
        let exact = decode(0, 4, &VectorEncoding::F32.encode(&vector)).unwrap();
        assert_eq!(exact, vector);
        let half = decode(1, 4, &VectorEncoding::F16.encode(&vector)).unwrap();
        assert!(half.iter().zip(vector).all(|(a, b)| (a - b).abs() < 1e-3));
        assert!(decode(0, 5, &VectorEncoding::F32.encode(&vector)).is_err());
    }
}
