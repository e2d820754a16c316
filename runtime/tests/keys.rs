//! Key material does not outlive the store: after an encrypted store is
//! closed, the passphrase appears nowhere in this process's memory (read
//! through /proc/self/mem), while the store is open the same scan finds it.
//! Its own test binary, so no other test's memory is in the way.

#![cfg(all(feature = "encryption", target_os = "linux"))]

use std::io::{Read, Seek, SeekFrom};

use attune::{EncryptionKey, NewExample, Store, StoreOptions};

/// The scan looks for `masked ^ MASK`, so the plain passphrase never exists
/// in this test's own memory outside the key it builds.
const MASK: u8 = 0x5a;
const LENGTH: usize = 40;
const PIECE: usize = 16;

/// A random passphrase, unmasked straight into the string the key takes over.
fn passphrase(masked: &[u8]) -> String {
    let mut secret = String::with_capacity(LENGTH);
    for byte in masked {
        secret.push(char::from(byte ^ MASK));
    }
    secret
}

/// Occurrences of any 16-byte piece of the unmasked needle in every readable
/// mapping of this process. Pieces, because a freed copy loses its first
/// bytes to the allocator's bookkeeping but keeps the rest.
fn occurrences(masked: &[u8]) -> usize {
    let pieces: Vec<&[u8]> = (0..=masked.len() - PIECE).step_by(PIECE / 2).map(|i| &masked[i..i + PIECE]).collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut memory = std::fs::File::open("/proc/self/mem").unwrap();
    let mut found = 0;
    let mut buffer = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else { continue };
        if !permissions.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        buffer.resize((end - start) as usize, 0);
        if memory.seek(SeekFrom::Start(start)).is_err() || memory.read_exact(&mut buffer).is_err() {
            continue;
        }
        for piece in &pieces {
            found += buffer.windows(PIECE).filter(|w| w.iter().zip(*piece).all(|(b, m)| b ^ MASK == *m)).count();
        }
    }
    found
}

#[test]
fn the_passphrase_is_wiped_from_memory_when_the_store_closes() {
    let dir = std::env::temp_dir().join(format!("attune-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut state = seed ^ u64::from(std::process::id());
    let masked: Vec<u8> = (0..LENGTH)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(state >> 33) as usize % 62] ^ MASK
        })
        .collect();

    let options = StoreOptions {
        encryption_key: Some(EncryptionKey::passphrase(passphrase(&masked)).unwrap()),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.join("user.db"), &options).unwrap();
    drop(options);
    let task = store.ensure_task("t").unwrap();
    store.add_examples(task, &[NewExample::new("something private", "a")]).unwrap();
    store.examples(task).unwrap();
    let while_open = occurrences(&masked);
    assert!(while_open > 0, "the scan must find the key while the store uses it");

    drop(store);
    let after_close = occurrences(&masked);
    eprintln!("passphrase copies in memory: {while_open} while open, {after_close} after close");
    assert_eq!(after_close, 0, "key material left in memory after the store closed");
    let _ = std::fs::remove_dir_all(&dir);
}
