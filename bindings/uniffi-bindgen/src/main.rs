//! `uniffi-bindgen generate --library <libattune_ffi> --language kotlin|swift|python --out-dir DIR`
//! (library mode): the same uniffi version as the library, so the generated
//! code always matches the scaffolding.

fn main() {
    uniffi::uniffi_bindgen_main()
}
